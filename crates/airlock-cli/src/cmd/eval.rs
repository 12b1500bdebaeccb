//! `airlock eval` and `airlock quantize`: the eval runner on the embedded engine, and
//! derived (quantised) bundles compared with their parents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use airlock_bundle::manifest::{Derivation, SIGNATURE_FILE};
use airlock_bundle::pack::{SBOM_FILE, SUMS_FILE};
use airlock_bundle::{Bundle, Limits, PackOptions};
use airlock_engine::quantize::{QuantType, quantize as quantize_gguf};
use airlock_engine::{
    ChatConfig, ChatModel, Event, GenerateParams, LlamaCpp, Message, ModelFiles, Role,
    SamplingParams, Scorer,
};
use airlock_eval::{
    ChoiceRequest, ChoiceScore, Comparison, EVAL_RECORD_TYPE, EngineRef, EvalModel, EvalRecord,
    Gate, Generated, Machine, ModelRef, Prompt, RunProgress, Suite, SuiteLimits, Violation,
};
use airlock_registry::{Reference, records};
use anyhow::{Context as _, bail};
use serde_json::json;

use crate::cli::{EvalArgs, QuantizeArgs};
use crate::output::{self, Bars};

/// Prompts compared between a derived model and its parent for the KL divergence: enough to
/// measure, bounded so the parent's distributions held in memory stay small.
const MAX_DIVERGENCE_PROMPTS: usize = 256;

/// A model to evaluate: its label, digest, files and quantisation.
struct Target {
    name: String,
    version: String,
    digest: String,
    quantization: Option<String>,
    files: ModelFiles,
}

pub(crate) fn eval(
    args: EvalArgs,
    data: Option<PathBuf>,
    limits: &Limits,
) -> anyhow::Result<ExitCode> {
    let key = args
        .key
        .as_deref()
        .map(super::load_private_key)
        .transpose()?;
    let threads = threads(args.threads);
    // A bundle on disk is unpacked (hash-checked) into a temporary directory; a registry
    // version is loaded from its re-hashed blobs.
    let unpacked;
    let (target, mut registry, reference) = if Path::new(&args.target).exists() {
        unpacked = Unpacked::new(Path::new(&args.target), limits)?;
        (unpacked.target()?, None, None)
    } else {
        let data = data
            .or_else(airlock_registry::default_data_dir)
            .context("no data directory: pass --data DIR or set AIRLOCK_DATA")?;
        let registry = super::open_registry(&data)?;
        let reference = Reference::parse(&args.target)?;
        // Only an approver's record counts on this side; say so before the run, not after.
        if let Some(key) = &key {
            let id = key.public().id().to_hex();
            if registry.policy().approver(&id).is_none() {
                bail!(
                    "key {id} is not a trusted approver in policy.toml; records of registry versions are signed by approvers"
                );
            }
        }
        let model = registry.open_for_eval(&reference)?;
        if model.kind != "llm" {
            bail!(
                "{}:{} is not a chat model; only chat models have eval suites that run",
                model.name,
                model.version
            );
        }
        let target = Target {
            quantization: None,
            files: super::run::files(&model),
            name: model.name,
            version: model.version,
            digest: model.digest,
        };
        (target, Some(registry), Some(reference))
    };
    let suites = load_suites(&target.files, &args.suites)?;
    let started = Instant::now();
    let (results, _) = run_suites(&target.files, &suites, threads, false)?;
    let mut record = EvalRecord {
        format: 1,
        model: ModelRef {
            name: target.name.clone(),
            version: target.version.clone(),
            digest: target.digest.clone(),
            quantization: target.quantization.clone(),
        },
        engine: engine_ref(threads),
        machine: machine(),
        key: key.as_ref().map(|k| k.public().id().to_hex()),
        time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        suites: results,
    };
    record.suites.sort_by(|a, b| a.name.cmp(&b.name));
    let envelope = key
        .as_ref()
        .map(|k| records::sign(&record, EVAL_RECORD_TYPE, k))
        .transpose()?;
    let stored = match (&mut registry, &reference, &envelope) {
        (Some(registry), Some(reference), Some(envelope)) => Some(
            registry
                .add_eval_record(reference, envelope)
                .with_context(|| format!("cannot store the eval record of {}", args.target))?,
        ),
        (Some(registry), Some(reference), None) => {
            registry.audit_unsigned_eval(reference, &record)?;
            None
        }
        _ => None,
    };
    if let Some(out) = &args.output {
        let bytes = match &envelope {
            Some(e) => e.clone().into_bytes(),
            None => serde_json::to_vec_pretty(&record)?,
        };
        airlock_bundle::durable::write_atomic(out, &bytes)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if args.json {
        output::json(&json!({
            "ok": true,
            "record": record,
            "signed": envelope.is_some(),
            "stored_record_sha256": stored,
            "seconds": started.elapsed().as_secs_f64(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = format!(
        "eval {}:{} ({}) on {} thread(s), {:.1} s\n",
        target.name,
        target.version,
        target.digest,
        threads,
        started.elapsed().as_secs_f64()
    );
    for suite in &record.suites {
        text.push_str(&format!(
            "  {:<24} {:>4}/{:<4} {:.3}\n",
            suite.name, suite.passed, suite.total, suite.score
        ));
        for item in suite.items.iter().filter(|i| !i.passed) {
            text.push_str(&format!(
                "    failed {}: {}\n",
                item.id,
                item.reason.as_deref().unwrap_or("")
            ));
        }
    }
    match (&envelope, &stored) {
        (Some(_), Some(sha)) => {
            text.push_str(&format!("  record signed and stored (sha256:{sha})\n"))
        }
        (Some(_), None) => text.push_str("  record signed\n"),
        _ => text.push_str("  record not signed (pass --key to sign it)\n"),
    }
    output::out(&text)?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn quantize(args: QuantizeArgs, limits: &Limits) -> anyhow::Result<ExitCode> {
    let kind = QuantType::parse(&args.kind)?;
    let key = super::load_private_key(&args.key)?;
    let gate = match &args.gate_policy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(Gate::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)
        }
        None => args.gate.then(Gate::default),
    };
    let threads = threads(args.threads);
    let parent = Unpacked::new(&args.bundle, limits)?;
    let parent_target = parent.target()?;
    let info = parent.info.clone();
    let (gguf_path, parent_gguf) = {
        let mut ggufs = parent
            .manifest_paths
            .iter()
            .filter(|p| p.to_ascii_lowercase().ends_with(".gguf"));
        let (Some(one), None) = (ggufs.next(), ggufs.next()) else {
            bail!(
                "{} must hold exactly one .gguf file to be quantised",
                args.bundle.display()
            );
        };
        (one.clone(), parent.dir.path().join(one))
    };
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", info.name, kind.name().to_ascii_lowercase()));

    // The derived bundle's source: the parent's files, its weights replaced.
    let source = tempfile::Builder::new()
        .prefix("airlock-quantize-")
        .tempdir()
        .context("cannot make a temporary directory")?;
    let new_gguf_name = format!("{name}.{}.gguf", kind.name());
    let started = Instant::now();
    quantize_gguf(
        &parent_gguf,
        &source.path().join(&new_gguf_name),
        kind,
        threads,
    )?;
    let quantize_seconds = started.elapsed().as_secs_f64();
    for path in &parent.manifest_paths {
        if *path == gguf_path || [SBOM_FILE, SUMS_FILE, SIGNATURE_FILE].contains(&path.as_str()) {
            continue;
        }
        let dest = source.path().join(path);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(parent.dir.path().join(path), &dest)
            .with_context(|| format!("cannot copy {path}"))?;
    }
    let version = args.version.clone().unwrap_or_else(|| info.version.clone());
    let child_files = ModelFiles::directory(format!("{name}:{version}"), source.path())?;

    // Both models on the parent's suites: scores, per-item agreement, next-token divergence.
    let suites = load_suites(&parent_target.files, &[])?;
    let bars = Bars::new();
    let (parent_results, parent_dists) = run_suites(&parent_target.files, &suites, threads, true)?;
    let (child_results, child_dists) = run_suites(&child_files, &suites, threads, true)?;
    let mut comparison = airlock_eval::compare(&parent_results, &child_results);
    comparison.divergence = Some(airlock_eval::divergence(&parent_dists, &child_dists));
    let violations: Vec<Violation> = gate
        .as_ref()
        .map(|g| g.check(&comparison))
        .unwrap_or_default();
    let parent_bytes = std::fs::metadata(&parent_gguf)?.len();
    let child_bytes = std::fs::metadata(source.path().join(&new_gguf_name))?.len();
    let summary = json!({
        "parent": parent_target.digest,
        "type": kind.name(),
        "parent_weights_bytes": parent_bytes,
        "weights_bytes": child_bytes,
        "size_ratio": child_bytes as f64 / parent_bytes.max(1) as f64,
        "quantize_seconds": quantize_seconds,
        "comparison": comparison,
        "parent_results": parent_results,
        "results": child_results,
    });
    if !violations.is_empty() {
        let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
        let refusal = airlock_registry::Error::refused(
            "eval_gate",
            format!(
                "{name} ({}) was not signed; it regressed against its parent: {}",
                kind.name(),
                list.join("; ")
            ),
        );
        return output::json_failure(args.json, refusal.into());
    }

    let opts = PackOptions {
        name: name.clone(),
        version: version.clone(),
        kind: Some(info.kind.clone()),
        license: info.license.clone(),
        source: info.source.clone(),
        revision: info.revision.clone(),
        card: None,
        evals: None,
        eval_results: BTreeMap::new(),
        parent: Some(parent_target.digest.clone()),
        derivation: Some(Derivation {
            method: "quantize".into(),
            quantization: kind.name().into(),
            parent_quantization: info.model.quantization.clone(),
            parent_weights_bytes: parent_bytes,
            weights_bytes: child_bytes,
            comparison: Some(serde_json::to_value(&comparison)?),
        }),
        source_date_epoch: super::pack::source_date_epoch()?,
    };
    let report = airlock_bundle::pack(source.path(), &opts, &[key], &args.output, limits, &bars)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if args.json {
        let mut v = summary;
        v["ok"] = json!(true);
        v["digest"] = json!(format!("sha256:{}", report.digest));
        v["bundle"] = json!(args.output.display().to_string());
        v["bundle_size"] = json!(report.bundle_size);
        output::json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = format!(
        "quantised {}:{} ({}) to {} in {:.1} s\n  weights {} → {} bytes ({:.3}×)\n",
        info.name,
        info.version,
        parent_target.digest,
        kind.name(),
        quantize_seconds,
        parent_bytes,
        child_bytes,
        child_bytes as f64 / parent_bytes.max(1) as f64
    );
    text.push_str(&comparison_text(&comparison));
    text.push_str(&format!(
        "wrote {} sha256:{} ({name}:{version}, parent {})\n",
        args.output.display(),
        report.digest,
        parent_target.digest
    ));
    output::out(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// `pack --run-evals`: each suite in `evals` run on the model at `src` (a GGUF file or a
/// directory holding one), keyed by the path it will have in the bundle.
pub(crate) fn pack_time_scores(
    src: &Path,
    evals: Option<&Path>,
    threads: Option<usize>,
) -> anyhow::Result<BTreeMap<String, airlock_bundle::manifest::EvalScore>> {
    let evals = evals.context("--run-evals needs --evals DIR")?;
    let threads = self::threads(threads);
    let model = if src.is_dir() {
        ModelFiles::directory("source", src)?
    } else {
        let name = src
            .file_name()
            .and_then(|n| n.to_str())
            .context("the source file name is not UTF-8")?;
        ModelFiles::single("source", name, src)
    };
    let mut paths = Vec::new();
    let mut suites = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(evals)
        .with_context(|| format!("cannot read {}", evals.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".jsonl") {
            continue;
        }
        let path = format!("evals/{name}");
        let file = std::fs::File::open(entry.path())
            .with_context(|| format!("cannot open {}", entry.path().display()))?;
        suites.push(Suite::read(&path, file, &SuiteLimits::default())?);
        paths.push(path);
    }
    if suites.is_empty() {
        bail!("{} holds no eval suites (*.jsonl)", evals.display());
    }
    let (results, _) = run_suites(&model, &suites, threads, false)?;
    let engine = format!(
        "airlock {} embedded llama.cpp, {threads} threads",
        env!("CARGO_PKG_VERSION")
    );
    Ok(paths
        .into_iter()
        .zip(results)
        .map(|(path, r)| {
            let score = airlock_bundle::manifest::EvalScore {
                suite: r.name.clone(),
                passed: r.passed as u64,
                total: r.total as u64,
                score: r.score,
                failed: r
                    .items
                    .iter()
                    .filter(|i| !i.passed)
                    .map(|i| i.id.clone())
                    .collect(),
                engine: engine.clone(),
            };
            (path, score)
        })
        .collect())
}

fn comparison_text(comparison: &Comparison) -> String {
    let mut text = String::new();
    for s in &comparison.suites {
        text.push_str(&format!(
            "  suite {:<20} parent {:.3}  derived {:.3}  agreement {:.3}  regressed {}\n",
            s.name,
            s.baseline_score,
            s.candidate_score,
            s.agreement,
            if s.regressed.is_empty() {
                "none".to_owned()
            } else {
                s.regressed.join(", ")
            }
        ));
    }
    if let Some(d) = &comparison.divergence {
        text.push_str(&format!(
            "  next-token KL divergence on {} prompts: mean {:.4}, max {:.4}; same top token {:.1} %\n",
            d.prompts,
            d.mean_kld,
            d.max_kld,
            d.same_top_token * 100.0
        ));
    }
    text
}

fn threads(given: Option<usize>) -> usize {
    given
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1)
}

fn engine_ref(threads: usize) -> EngineRef {
    EngineRef {
        name: "embedded".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        runtime: "llama.cpp".into(),
        threads,
    }
}

fn machine() -> Machine {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    Machine {
        host,
        arch: std::env::consts::ARCH.into(),
        os: std::env::consts::OS.into(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// The suites under `evals/` (only those named in `only`, when it is not empty).
fn load_suites(files: &ModelFiles, only: &[String]) -> anyhow::Result<Vec<Suite>> {
    let limits = SuiteLimits::default();
    let mut suites = Vec::new();
    for (path, file) in files
        .iter()
        .filter(|(p, _)| p.starts_with("evals/") && p.ends_with(".jsonl"))
    {
        let reader = std::fs::File::open(file).with_context(|| format!("cannot open {path}"))?;
        let suite = Suite::read(path, reader, &limits)?;
        if only.is_empty() || only.contains(&suite.name) {
            suites.push(suite);
        }
    }
    for name in only {
        if !suites.iter().any(|s| &s.name == name) {
            bail!("{} has no eval suite named {name}", files.label());
        }
    }
    if suites.is_empty() {
        bail!("{} carries no eval suites (evals/*.jsonl)", files.label());
    }
    suites.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(suites)
}

/// Runs `suites` on the model in `files`; with `distributions`, also returns the next-token
/// log-probabilities after each of the suites' prompts (up to [`MAX_DIVERGENCE_PROMPTS`]).
fn run_suites(
    files: &ModelFiles,
    suites: &[Suite],
    threads: usize,
    distributions: bool,
) -> anyhow::Result<(Vec<airlock_eval::SuiteResult>, Vec<Vec<f32>>)> {
    let config = ChatConfig {
        threads,
        ..ChatConfig::default()
    };
    let model = ChatModel::load(files, &config)?;
    let (sequences, context) = scoring_shape(&model, suites);
    let scorer = model.scorer(sequences, context, threads)?;
    let mut engine = EngineEval {
        model: &model,
        scorer,
    };
    let progress = ItemBar::new(suites.iter().map(|s| s.items.len()).sum());
    let results = airlock_eval::run(&mut engine, suites, &progress)?;
    progress.finish();
    let mut dists = Vec::new();
    if distributions {
        for prompt in suites
            .iter()
            .flat_map(|s| s.items.iter())
            .filter_map(|i| prompt_of(&i.case))
            .take(MAX_DIVERGENCE_PROMPTS)
        {
            dists.push(engine.next_token_logprobs(&prompt)?);
        }
    }
    Ok((results, dists))
}

/// The prompt an item's answer follows, for comparing next-token distributions.
fn prompt_of(case: &airlock_eval::Case) -> Option<Prompt> {
    use airlock_eval::Case;
    match case {
        Case::Generate { prompt, .. }
        | Case::Safety { prompt, .. }
        | Case::Latency { prompt, .. } => Some(prompt.clone()),
        Case::Choice { context, .. } => Some(Prompt::Text(context.clone())),
    }
}

/// How many sequences and tokens the scorer needs for the suites' multiple-choice items.
fn scoring_shape(model: &ChatModel, suites: &[Suite]) -> (usize, usize) {
    let mut sequences = 1;
    let mut context = 64;
    for case in suites.iter().flat_map(|s| s.items.iter()).map(|i| &i.case) {
        match case {
            airlock_eval::Case::Choice {
                context: text,
                choices,
                separator,
                ..
            } => {
                // Items are scored side by side: as many slots as the scorer takes.
                sequences = sequences
                    .max(choices.len())
                    .max(airlock_engine::chat::MAX_SEQUENCES);
                for choice in choices {
                    let n = model
                        .text_prompt(&format!("{text}{separator}{choice}"))
                        .len();
                    context = context.max(n + 1);
                }
            }
            airlock_eval::Case::Generate { prompt, .. }
            | airlock_eval::Case::Safety { prompt, .. }
            | airlock_eval::Case::Latency { prompt, .. } => {
                if let Ok(tokens) = prompt_tokens(model, prompt) {
                    context = context.max(tokens.len() + 1);
                }
            }
        }
    }
    (sequences, context.next_multiple_of(64))
}

fn prompt_tokens(model: &ChatModel, prompt: &Prompt) -> anyhow::Result<Vec<i32>> {
    Ok(match prompt {
        Prompt::Text(text) => model.text_prompt(text),
        Prompt::Chat(messages) => {
            let messages: Vec<Message> = messages
                .iter()
                .map(|(role, content)| {
                    let role = match role.as_str() {
                        "system" => Role::System,
                        "assistant" => Role::Assistant,
                        _ => Role::User,
                    };
                    Message::new(role, content.clone())
                })
                .collect();
            model.chat_prompt(&messages)?
        }
    })
}

/// The embedded engine as the eval runner sees it: generation through the model's scheduler,
/// log-likelihoods through a scorer beside it.
struct EngineEval<'m> {
    model: &'m ChatModel,
    scorer: Scorer<'m, LlamaCpp>,
}

impl EvalModel for EngineEval<'_> {
    fn generate(
        &mut self,
        prompt: &Prompt,
        max_tokens: u32,
        ignore_end: bool,
    ) -> airlock_eval::Result<Generated> {
        let fail = |e: &dyn std::fmt::Display| airlock_eval::Error::Model(e.to_string());
        let tokens = prompt_tokens(self.model, prompt).map_err(|e| fail(&e))?;
        let started = Instant::now();
        let mut generation = self
            .model
            .generate(
                tokens,
                GenerateParams {
                    max_tokens: Some(max_tokens as usize),
                    sampling: SamplingParams::greedy(),
                    ignore_eos: ignore_end,
                    ..GenerateParams::default()
                },
            )
            .map_err(|e| fail(&e))?;
        let mut first_token = None;
        let mut answer = String::new();
        while let Some(event) = generation.next_blocking() {
            match event.map_err(|e| fail(&e))? {
                Event::Token { text, .. } => {
                    first_token.get_or_insert_with(|| started.elapsed());
                    answer.push_str(&text);
                }
                // The text held back until the end (a possible stop sequence) comes last.
                Event::Done { text, usage, .. } => {
                    let total = started.elapsed();
                    answer.push_str(&text);
                    return Ok(Generated {
                        text: answer,
                        tokens: usage.completion_tokens,
                        first_token: first_token.unwrap_or(total),
                        total,
                    });
                }
            }
        }
        Err(airlock_eval::Error::Model(
            "the generation ended without finishing".into(),
        ))
    }

    fn score_choices(
        &mut self,
        context: &str,
        separator: &str,
        choices: &[String],
    ) -> airlock_eval::Result<Vec<ChoiceScore>> {
        let item = ChoiceRequest {
            context,
            separator,
            choices,
        };
        Ok(self.score_many(&[item])?.pop().unwrap_or_default())
    }

    fn score_many(
        &mut self,
        items: &[ChoiceRequest<'_>],
    ) -> airlock_eval::Result<Vec<Vec<ChoiceScore>>> {
        // As llama-perplexity: each full text tokenised alone, the tokens after the prefix
        // all of an item's choices share scored. Every item's sequences go to the scorer
        // together, which decodes as many side by side as it has slots.
        let mut sequences: Vec<(Vec<i32>, usize)> = Vec::new();
        for item in items {
            let tokens: Vec<Vec<i32>> = item
                .choices
                .iter()
                .map(|c| {
                    self.model
                        .text_prompt(&format!("{}{}{c}", item.context, item.separator))
                })
                .collect();
            let shortest = tokens.iter().map(Vec::len).min().unwrap_or(0);
            let common = (0..shortest)
                .take_while(|&i| tokens.iter().all(|s| s[i] == tokens[0][i]))
                .count();
            if common == 0 || common == shortest {
                return Err(airlock_eval::Error::Model(
                    "the choices must share the context's first token and differ after it".into(),
                ));
            }
            sequences.extend(tokens.into_iter().map(|t| (t, common)));
        }
        let requests: Vec<(&[i32], usize)> = sequences
            .iter()
            .map(|(t, from)| (t.as_slice(), *from))
            .collect();
        let mut scores = self
            .scorer
            .score_each(&requests)
            .map_err(|e| airlock_eval::Error::Model(e.to_string()))?
            .into_iter()
            .map(|s| ChoiceScore {
                logprob: s.logprob,
                tokens: s.tokens,
            });
        Ok(items
            .iter()
            .map(|item| scores.by_ref().take(item.choices.len()).collect())
            .collect())
    }

    fn next_token_logprobs(&mut self, prompt: &Prompt) -> airlock_eval::Result<Vec<f32>> {
        let tokens = prompt_tokens(self.model, prompt)
            .map_err(|e| airlock_eval::Error::Model(e.to_string()))?;
        self.scorer
            .next_token_logprobs(&tokens)
            .map_err(|e| airlock_eval::Error::Model(e.to_string()))
    }
}

/// A progress bar over items, on the terminal only.
struct ItemBar(Option<indicatif::ProgressBar>);

impl ItemBar {
    fn new(total: usize) -> Self {
        use std::io::IsTerminal as _;
        Self(std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("  eval {bar:30} {pos}/{len} items")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        }))
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl RunProgress for ItemBar {
    fn item_done(&self, done: usize, _total: usize) {
        if let Some(bar) = &self.0 {
            bar.set_position(done as u64);
        }
    }
}

/// A bundle unpacked (every file hash-checked against its signed manifest) into a temporary
/// directory.
struct Unpacked {
    dir: tempfile::TempDir,
    info: airlock_bundle::manifest::AirlockPredicate,
    digest: String,
    manifest_paths: Vec<String>,
}

impl Unpacked {
    fn new(path: &Path, limits: &Limits) -> anyhow::Result<Self> {
        let bundle = Bundle::open(path, limits)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let verified = bundle
            .verify_integrity_only(limits, &airlock_bundle::NoProgress)
            .with_context(|| format!("{} does not match its signed manifest", path.display()))?;
        let info = verified
            .manifest
            .airlock()
            .cloned()
            .context("the bundle has no airlock predicate")?;
        let dir = tempfile::Builder::new()
            .prefix("airlock-eval-")
            .tempdir()
            .context("cannot make a temporary directory")?;
        bundle.extract(&verified.manifest, dir.path(), &airlock_bundle::NoProgress)?;
        Ok(Self {
            dir,
            info,
            digest: format!("sha256:{}", verified.manifest.digest),
            manifest_paths: verified
                .manifest
                .files
                .keys()
                .map(|p| p.to_string())
                .collect(),
        })
    }

    fn target(&self) -> anyhow::Result<Target> {
        let mut files = BTreeMap::new();
        for path in &self.manifest_paths {
            files.insert(path.clone(), self.dir.path().join(path));
        }
        Ok(Target {
            name: self.info.name.clone(),
            version: self.info.version.clone(),
            digest: self.digest.clone(),
            quantization: self.info.model.quantization.clone(),
            files: ModelFiles::new(format!("{}:{}", self.info.name, self.info.version), files),
        })
    }
}
