# shellcheck shell=bash
# A registry for the serving benchmarks: `bench_registry AIRLOCK WORK MODEL...` creates a
# publisher and an approver key in WORK/keys, a registry in $AIRLOCK_DATA, and packs, imports,
# approves and tags prod each default model named (`smollm2`, `all-minilm-l6-v2`, from the
# cache scripts/fetch-models.sh fills); then prints a new API key.
bench_registry() {
  local airlock="$1" work="$2" model src kind
  shift 2
  local models="${AIRLOCK_CACHE:-$HOME/.cache/airlock}/models"
  "$airlock" keygen -o "$work/keys" --name publisher >/dev/null
  "$airlock" keygen -o "$work/keys" --name approver >/dev/null
  "$airlock" init >/dev/null
  "$airlock" trust add --publisher "$work/keys/publisher.pub" >/dev/null
  "$airlock" trust add --approver "$work/keys/approver.pub" >/dev/null
  for model in "$@"; do
    case "$model" in
      smollm2) src="$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" kind=llm ;;
      all-minilm-l6-v2) src="$models/all-minilm-l6-v2" kind=embedding ;;
      *) echo "bench_registry: unknown model $model" >&2; return 2 ;;
    esac
    "$airlock" pack "$src" --name "$model" --version 1.0.0 --kind "$kind" --license Apache-2.0 \
      --key "$work/keys/publisher.key" -o "$work/$model.airlock" >/dev/null 2>&1
    "$airlock" import "$work/$model.airlock" >/dev/null
    "$airlock" approve "$model:1.0.0" --key "$work/keys/approver.key" >/dev/null
    "$airlock" tag "$model:1.0.0" prod >/dev/null
  done
  "$airlock" keys create --name bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}
