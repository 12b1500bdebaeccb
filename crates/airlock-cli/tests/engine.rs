//! `airlock run` and `airlock embed`: only approved, re-verified registry versions, with the
//! real default models (fetched by `scripts/fetch-models.sh`).

use std::path::{Path, PathBuf};

use airlock_testkit::gguf::MetaValue;
use airlock_testkit::gguf_edit::rewrite;

use crate::registry::Site;
use crate::support::{Run, airlock, assert_failed_with, models_dir, run};

const QUESTION: &str = "What is the capital of France? Answer with one word.";

fn smollm2() -> PathBuf {
    models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Packs `src` as `name` 1.0.0 with the publisher key and imports it; returns the reference.
pub fn pack_and_import(site: &Site, src: &Path, name: &str, extra: &[&str]) -> String {
    pack_and_import_version(site, src, name, "1.0.0", extra)
}

/// Packs `src` as `name:version`, signed by the publisher, and imports it; returns the ref.
pub fn pack_and_import_version(
    site: &Site,
    src: &Path,
    name: &str,
    version: &str,
    extra: &[&str],
) -> String {
    let bundle = site.ws.path(&format!("{name}-{version}.airlock"));
    run(airlock()
        .arg("pack")
        .arg(src)
        .args([
            "--name",
            name,
            "--version",
            version,
            "--license",
            "Apache-2.0",
            "--key",
        ])
        .arg(site.ws.key("publisher"))
        .arg("-o")
        .arg(&bundle)
        .args(extra))
    .ok();
    site.import(&bundle).ok();
    format!("{name}:{version}")
}

fn ask(site: &Site, reference: &str, extra: &[&str]) -> Run {
    site.cmd(&[&["run", reference, QUESTION], extra].concat())
}

#[test]
fn run_answers_paris_only_from_an_approved_version() {
    let site = Site::new();
    let reference = pack_and_import(&site, &smollm2(), "smollm2", &[]);

    let quarantined = ask(&site, &reference, &[]);
    assert_failed_with(&quarantined, "only approved versions can be used");

    site.approve(&reference, "approver").ok();
    site.cmd(&["tag", &reference, "prod"]).ok();
    let answer = ask(&site, "smollm2:prod", &[]).ok();
    assert!(answer.stdout.contains("Paris"), "{}", answer.stdout);

    let json = ask(&site, "smollm2:prod", &["--json", "--max-tokens", "32"])
        .ok()
        .json();
    assert!(json["text"].as_str().unwrap().contains("Paris"));
    assert_eq!(json["finish_reason"], "stop");
    assert!(json["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    assert!(json["digest"].as_str().unwrap().starts_with("sha256:"));

    let log = site
        .cmd(&["audit", "tail", "-n", "20", "--json"])
        .ok()
        .stdout;
    assert!(log.contains("\"load\""), "loading is audited: {log}");
}

#[test]
fn a_blob_altered_after_import_is_refused_at_load() {
    let site = Site::new();
    let reference = pack_and_import(&site, &smollm2(), "smollm2", &[]);
    site.approve(&reference, "approver").ok();
    let blob = site.blob_path(&reference, "SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::set_permissions(&blob, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    crate::support::flip_byte(&blob, 1 << 20);
    assert_failed_with(&ask(&site, &reference, &[]), "has been altered on disk");
}

#[test]
fn a_signed_and_approved_but_hostile_model_is_a_one_line_error() {
    let site = Site::new();
    let dir = site.ws.path("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, edits, expect) in [
        (
            "loops",
            vec![("tokenizer.chat_template", MetaValue::Str("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}".into()))],
            "instruction budget",
        ),
        ("heads", vec![("llama.attention.head_count", MetaValue::U32(7))], "is not a multiple of head_count_kv"),
    ] {
        let gguf = dir.join(format!("{name}.gguf"));
        rewrite(&smollm2(), &gguf, &edits).unwrap();
        let reference = pack_and_import(&site, &gguf, name, &[]);
        site.approve(&reference, "approver").ok();
        let failed = ask(&site, &reference, &[]);
        assert_failed_with(&failed, expect);
        assert!(failed.stderr.contains(&format!("model {reference}")), "{}", failed.stderr);
    }
}

#[test]
fn embed_prints_normalised_vectors_and_refuses_the_wrong_kind() {
    let site = Site::new();
    let src = models_dir().join("all-minilm-l6-v2");
    let reference = pack_and_import(&site, &src, "minilm", &["--kind", "embedding"]);
    site.approve(&reference, "approver").ok();
    let json = site
        .cmd(&[
            "embed",
            &reference,
            "hello world",
            "The cat sits outside.",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(json["dimension"], 384);
    let vectors = json["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    let first: Vec<f64> = vectors[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    // sentence-transformers' all-MiniLM-L6-v2 embedding of "hello world" begins so.
    for (got, want) in first.iter().zip([-0.034477, 0.031023, 0.006735, 0.026109]) {
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
    let wrong = ask(&site, &reference, &[]);
    assert_eq!(wrong.code, 2, "a usage error: {}", wrong.stderr);
    assert!(
        wrong
            .stderr
            .contains("is an embedding model; use `airlock embed`"),
        "{}",
        wrong.stderr
    );
}
