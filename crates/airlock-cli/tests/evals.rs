//! Quality gates: `airlock eval` on SmolLM2, quantised derived bundles compared with their
//! parent, the connected side's gate and the isolated side's eval requirements.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::registry::Site;
use crate::support::*;

fn suites_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../airlock-eval/tests/data")
}

/// SmolLM2 packed as `smollm2:1.0.0` with the knowledge suite (24 multiple-choice items).
fn smollm2_bundle(ws: &Workspace) -> PathBuf {
    smollm2_bundle_with(ws, "smollm2.airlock", &[])
}

/// [`smollm2_bundle`] written to `out`, with more `pack` arguments.
fn smollm2_bundle_with(ws: &Workspace, out: &str, extra: &[&str]) -> PathBuf {
    let gguf = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bundle = ws.path(out);
    run(airlock()
        .arg("pack")
        .arg(&gguf)
        .args([
            "--name",
            "smollm2",
            "--version",
            "1.0.0",
            "--license",
            "Apache-2.0",
        ])
        .args(extra)
        .arg("--evals")
        .arg(suites_dir())
        .arg("--key")
        .arg(ws.key("publisher"))
        .arg("-o")
        .arg(&bundle))
    .ok();
    bundle
}

// Every run here uses one thread: the test harness runs tests side by side, and llama.cpp's
// OpenMP threads spin while waiting for each other, so two-thread runs on a busy two-core
// machine take several times longer. Results must also come from the same thread count to be
// compared item by item.

fn quantize(ws: &Workspace, bundle: &Path, kind: &str, extra: &[&str]) -> Run {
    run(airlock()
        .arg("quantize")
        .arg(bundle)
        .args(["--type", kind, "--threads", "1", "--json", "--key"])
        .arg(ws.key("publisher"))
        .arg("-o")
        .arg(ws.path(&format!("smollm2-{kind}.airlock")))
        .args(extra))
}

fn eval_json(bundle: &Path) -> Value {
    run(airlock()
        .arg("eval")
        .arg(bundle)
        .args(["--threads", "1", "--json"]))
    .ok()
    .json()
}

/// What several tests need and is slow to make once per test: SmolLM2 with its suite, and
/// its Q2_K quantisation as the next version of the same model (`smollm2:1.1.0`), with the
/// comparison `quantize --json` printed.
struct Shared {
    ws: Workspace,
    parent: PathBuf,
    q2k: PathBuf,
    q2k_made: Value,
}

fn shared() -> &'static Shared {
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let ws = Workspace::new_in(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("evals"));
        let parent = smollm2_bundle(&ws);
        let q2k_made = quantize(
            &ws,
            &parent,
            "Q2_K",
            &["--name", "smollm2", "--version", "1.1.0"],
        )
        .ok()
        .json();
        let q2k = ws.path("smollm2-Q2_K.airlock");
        Shared {
            ws,
            parent,
            q2k,
            q2k_made,
        }
    })
}

impl Shared {
    /// The items the parent passes and Q2_K fails (found by running them).
    fn regressed(&self) -> Vec<String> {
        let regressed: Vec<String> = self.q2k_made["comparison"]["suites"][0]["regressed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert!(
            !regressed.is_empty(),
            "Q2_K regresses nothing on this suite: {}",
            self.q2k_made
        );
        regressed
    }

    /// Copies both bundles into `site`, co-signed by its publisher, and imports them.
    fn import_into(&self, site: &Site) {
        for (bundle, name) in [(&self.parent, "p.airlock"), (&self.q2k, "q.airlock")] {
            let copy = site.ws.path(name);
            std::fs::copy(bundle, &copy).unwrap();
            site.ws.cosign(&copy, "publisher").ok();
            site.cmd(&["import", copy.to_str().unwrap()]).ok();
        }
    }
}

#[test]
fn quantised_variants_are_signed_bundles_naming_their_parent_type_and_comparison() {
    let shared = shared();
    let ws = &shared.ws;
    let parent_digest = ws.verify(&shared.parent, &[]).ok().json()["digest"].clone();
    let mut made = vec![("Q2_K", shared.q2k_made.clone(), shared.q2k.clone())];
    for kind in ["Q8_0", "Q4_K_M"] {
        let json = quantize(ws, &shared.parent, kind, &[]).ok().json();
        made.push((kind, json, ws.path(&format!("smollm2-{kind}.airlock"))));
    }
    let mut kld = std::collections::BTreeMap::new();
    for (kind, made, derived) in &made {
        ws.verify(derived, &[]).ok();
        let info = run(airlock().arg("inspect").arg(derived).arg("--json"))
            .ok()
            .json();
        assert_eq!(info["parent"], parent_digest, "{kind}");
        let name = if *kind == "Q2_K" {
            "smollm2".to_owned()
        } else {
            format!("smollm2-{}", kind.to_lowercase())
        };
        assert_eq!(info["name"], name);
        assert_eq!(info["model"]["quantization"], *kind);
        assert_eq!(info["derivation"]["quantization"], *kind);
        assert_eq!(info["derivation"]["parent_quantization"], "Q4_1");
        assert_eq!(info["evals"][0]["path"], "evals/choice.jsonl");
        let comparison = &info["derivation"]["comparison"];
        assert_eq!(comparison, &made["comparison"]);
        let divergence = &comparison["divergence"];
        assert!(divergence["prompts"].as_u64().unwrap() >= 24);
        assert!(divergence["mean_kld"].as_f64().unwrap() > 0.0);
        kld.insert(*kind, divergence["mean_kld"].as_f64().unwrap());
        let suite = &comparison["suites"][0];
        assert_eq!(suite["name"], "knowledge");
        assert_eq!(suite["compared"], 24);
        // The figures the issue asks to see, printed with the test's output.
        eprintln!(
            "{kind}: size ratio {:.3}, mean KLD {:.4}, same top token {:.3}, score {} -> {}, agreement {:.3}",
            made["size_ratio"].as_f64().unwrap(),
            divergence["mean_kld"].as_f64().unwrap(),
            divergence["same_top_token"].as_f64().unwrap(),
            suite["baseline_score"],
            suite["candidate_score"],
            suite["agreement"].as_f64().unwrap()
        );
    }
    // Coarser quantisation drifts further from the parent.
    assert!(
        kld["Q8_0"] < kld["Q4_K_M"] && kld["Q4_K_M"] < kld["Q2_K"],
        "{kld:?}"
    );

    // The isolated side imports and approves them like any bundle.
    let site = Site::new();
    let copy = site.ws.path("q8.airlock");
    std::fs::copy(ws.path("smollm2-Q8_0.airlock"), &copy).unwrap();
    // The site trusts its own publisher key; co-sign with it so the import verifies.
    site.ws.cosign(&copy, "publisher").ok();
    site.cmd(&["import", copy.to_str().unwrap()]).ok();
    let approver = site.ws.key("approver");
    site.cmd(&[
        "approve",
        "smollm2-q8_0:1.0.0",
        "--key",
        approver.to_str().unwrap(),
    ])
    .ok();
}

#[test]
fn the_gate_refuses_to_sign_a_regressing_quantisation_naming_its_items_and_a_looser_threshold_lets_it_through()
 {
    let shared = shared();
    let regressed = shared.regressed();
    let ws = Workspace::new();
    let out = ws.path("gated.airlock");
    let gated = |extra: &[&str]| {
        run(airlock()
            .arg("quantize")
            .arg(&shared.parent)
            .args(["--type", "Q2_K", "--threads", "1", "--json", "--key"])
            .arg(ws.key("publisher"))
            .arg("-o")
            .arg(&out)
            .args(extra))
    };

    let refused = gated(&["--gate"]);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert_eq!(
        refused.stderr.trim_end().lines().count(),
        1,
        "{}",
        refused.stderr
    );
    for id in &regressed {
        assert!(
            refused.stderr.contains(id.as_str()),
            "{id} not named: {}",
            refused.stderr
        );
    }
    assert_eq!(refused.json()["kind"], "eval_gate");
    assert!(
        !out.exists(),
        "nothing is signed or written when the gate refuses"
    );

    let policy = ws.path("gate.toml");
    std::fs::write(
        &policy,
        format!(
            "[gate]\nmax_regressed_items = {}\nmax_mean_kld = 5.0\n",
            regressed.len()
        ),
    )
    .unwrap();
    gated(&["--gate-policy", policy.to_str().unwrap()]).ok();
    ws.verify(&out, &[]).ok();

    std::fs::write(&policy, "[gate]\nmax_regresed_items = 1\n").unwrap();
    let typo = gated(&["--gate-policy", policy.to_str().unwrap()]);
    assert_eq!(typo.code, 2, "a malformed gate file is a usage error");
    assert!(
        typo.stderr.contains("max_regresed_items"),
        "{}",
        typo.stderr
    );
}

#[test]
fn approve_and_tag_need_a_fresh_eval_record_meeting_policy_and_every_refusal_is_audited() {
    let shared = shared();
    let site = Site::new();
    shared.import_into(&site);
    let suite = &shared.q2k_made["comparison"]["suites"][0];
    let parent_score = suite["baseline_score"].as_f64().unwrap();
    let q2k_score = suite["candidate_score"].as_f64().unwrap();
    // A bar Q2_K does not reach (its score may equal its parent's: items regress and others
    // improve, which is why the regression limits compare item by item).
    let above_q2k = q2k_score + 0.01;
    let policy = site.data.join("policy.toml");
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str(&format!(
        "\n[evals]\nrequired = true\nmax_age_hours = 1\n\n[evals.min_score]\nknowledge = {parent_score}\n"
    ));
    std::fs::write(&policy, &text).unwrap();
    let approver = site.ws.key("approver");
    let approver = approver.to_str().unwrap();

    // No record yet: refused, naming what to run.
    let refused = site.cmd(&["approve", "smollm2:1.0.0", "--key", approver, "--json"]);
    assert_refused(&refused, "eval_missing");
    assert!(
        refused.stderr.contains("airlock eval smollm2:1.0.0"),
        "{}",
        refused.stderr
    );

    // A run without a key keeps no record but is audited; a key that is not an approver's is
    // refused before anything runs.
    site.cmd(&["eval", "smollm2:1.0.0", "--threads", "1"]).ok();
    let last = site.audit_tail(1);
    assert_eq!(last[0]["action"], "eval");
    assert_eq!(last[0]["details"]["signed"], "false");
    assert!(
        last[0]["details"]["scores"]
            .as_str()
            .unwrap()
            .starts_with("knowledge ")
    );
    let publisher = site.ws.key("publisher");
    let refused = site.cmd(&[
        "eval",
        "smollm2:1.0.0",
        "--key",
        publisher.to_str().unwrap(),
    ]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("not a trusted approver"),
        "{}",
        refused.stderr
    );

    // A record signed by the approver, made here: stored, audited, shown.
    let evaluated = site
        .cmd(&[
            "eval",
            "smollm2:1.0.0",
            "--key",
            approver,
            "--threads",
            "1",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(evaluated["record"]["model"]["name"], "smollm2");
    let shown = site.cmd(&["show", "smollm2:1.0.0", "--json"]).ok().json();
    assert_eq!(shown["evals"][0]["trusted"], true);
    site.cmd(&["approve", "smollm2:1.0.0", "--key", approver])
        .ok();
    site.cmd(&["tag", "smollm2:1.0.0", "prod"]).ok();

    // Q2_K scores below the minimum: approve refuses, naming the items it failed.
    std::fs::write(
        &policy,
        text.replace(
            &format!("knowledge = {parent_score}"),
            &format!("knowledge = {above_q2k}"),
        ),
    )
    .unwrap();
    site.cmd(&["eval", "smollm2:1.1.0", "--key", approver, "--threads", "1"])
        .ok();
    let refused = site.cmd(&["approve", "smollm2:1.1.0", "--key", approver, "--json"]);
    assert_refused(&refused, "eval_gate");
    assert!(
        refused.stderr.contains("suite knowledge: score"),
        "{}",
        refused.stderr
    );
    for id in shared.regressed() {
        assert!(refused.stderr.contains(&id), "{id}: {}", refused.stderr);
    }
    assert!(
        refused.stderr.contains(&format!("below {above_q2k}")),
        "{}",
        refused.stderr
    );
    let entries = site.audit_tail(12);
    let refusal = entries
        .iter()
        .rev()
        .find(|e| e["action"] == "approve")
        .unwrap();
    assert_eq!(refusal["outcome"], "refused");
    assert_eq!(refusal["details"]["rule"], "eval_gate");
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "eval" && e["outcome"] == "ok")
    );

    // A threshold that allows it lets it through, audited as an approval.
    std::fs::write(
        &policy,
        text.replace(
            &format!("knowledge = {parent_score}"),
            &format!("knowledge = {q2k_score}"),
        ),
    )
    .unwrap();
    site.cmd(&["approve", "smollm2:1.1.0", "--key", approver])
        .ok();
    let last = site.audit_tail(1);
    assert_eq!(last[0]["action"], "approve");
    assert_eq!(last[0]["outcome"], "ok");
    site.cmd(&["audit", "verify"]).ok();
}

#[test]
fn a_new_version_that_regresses_items_against_the_tagged_one_is_refused_naming_them() {
    let shared = shared();
    let regressed = shared.regressed();
    let site = Site::new();
    shared.import_into(&site);
    let policy = site.data.join("policy.toml");
    let base = std::fs::read_to_string(&policy).unwrap();
    let require = |allowed: usize| {
        std::fs::write(
            &policy,
            format!(
                "{base}\n[evals]\nrequired = true\n\n[evals.regression]\nmax_regressed_items = {allowed}\n"
            ),
        )
        .unwrap();
    };
    require(0);
    let approver = site.ws.key("approver");
    let approver = approver.to_str().unwrap();
    for version in ["smollm2:1.0.0", "smollm2:1.1.0"] {
        site.cmd(&["eval", version, "--key", approver, "--threads", "1"])
            .ok();
    }
    site.cmd(&["approve", "smollm2:1.0.0", "--key", approver])
        .ok();
    site.cmd(&["tag", "smollm2:1.0.0", "prod"]).ok();

    let refused = site.cmd(&["approve", "smollm2:1.1.0", "--key", approver, "--json"]);
    assert_refused(&refused, "eval_gate");
    assert!(
        refused.stderr.contains("against smollm2:1.0.0"),
        "{}",
        refused.stderr
    );
    for id in &regressed {
        assert!(
            refused.stderr.contains(id.as_str()),
            "{id}: {}",
            refused.stderr
        );
    }

    require(regressed.len());
    site.cmd(&["approve", "smollm2:1.1.0", "--key", approver])
        .ok();
    // Tightened again: moving the tag to it is refused the same way, and audited.
    require(0);
    let refused = site.cmd(&["tag", "smollm2:1.1.0", "prod"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(regressed[0].as_str()),
        "{}",
        refused.stderr
    );
    let last = site.audit_tail(1);
    assert_eq!(last[0]["action"], "tag");
    assert_eq!(last[0]["outcome"], "refused");
    assert_eq!(last[0]["details"]["rule"], "eval_gate");
    require(regressed.len());
    site.cmd(&["tag", "smollm2:1.1.0", "prod"]).ok();
}

#[test]
fn multiple_choice_loglikelihoods_equal_llama_perplexity_on_the_same_items() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../airlock-eval/tests/golden/smollm2-choice.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let model = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model_sha = sha256_hex(&model);
    assert_eq!(
        golden["provenance"]["model_sha256"], model_sha,
        "the golden file was made from another model file"
    );
    let record = eval_json(&shared().parent)["record"].clone();
    let items = record["suites"][0]["items"].as_array().unwrap();
    let expected = golden["items"].as_array().unwrap();
    assert_eq!(items.len(), expected.len());
    let mut worst = 0f64;
    for (ours, theirs) in items.iter().zip(expected) {
        assert_eq!(ours["id"], theirs["id"]);
        let ours = ours["choices"].as_array().unwrap();
        let theirs = theirs["choices"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (o, t) in ours.iter().zip(theirs) {
            assert_eq!(o["tokens"], t["tokens"], "the same tokens are scored");
            let mean = o["logprob"].as_f64().unwrap() / o["tokens"].as_f64().unwrap();
            let diff = (mean - t["mean_logprob"].as_f64().unwrap()).abs();
            worst = worst.max(diff);
        }
    }
    eprintln!("largest difference from llama-perplexity: {worst:.2e}");
    assert!(worst < 1e-3, "largest difference {worst}");
}

#[test]
fn two_runs_give_identical_records_apart_from_time_and_signature() {
    let bundle = &shared().parent;
    let strip = |mut v: Value| {
        let record = v["record"].take();
        let mut record = record;
        record["time"] = Value::Null;
        serde_json::to_vec(&record).unwrap()
    };
    let first = strip(eval_json(bundle));
    let second = strip(eval_json(bundle));
    assert_eq!(
        String::from_utf8(first).unwrap(),
        String::from_utf8(second).unwrap()
    );
}

fn sha256_hex(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn pack_can_run_the_suites_and_sign_their_scores_into_the_predicate() {
    let ws = Workspace::new();
    let gguf = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bundle = smollm2_bundle_with(&ws, "scored.airlock", &["--run-evals", "--threads", "1"]);
    let info = run(airlock().arg("inspect").arg(&bundle).arg("--json"))
        .ok()
        .json();
    let recorded = &info["evals"][0]["result"];
    let measured = &eval_json(&bundle)["record"]["suites"][0];
    assert_eq!(recorded["suite"], "knowledge");
    assert_eq!(recorded["passed"], measured["passed"]);
    assert_eq!(recorded["total"], 24);
    let failed: Vec<&Value> = measured["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["passed"] == false)
        .map(|i| &i["id"])
        .collect();
    assert_eq!(
        recorded["failed"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        failed
    );
    // Without --evals there is nothing to run.
    let refused = run(airlock()
        .arg("pack")
        .arg(&gguf)
        .args(["--name", "x", "--version", "1.0.0", "--run-evals", "--key"])
        .arg(ws.key("publisher")));
    assert_eq!(refused.code, 2, "{}", refused.stderr);
}
