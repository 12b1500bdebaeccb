//! Where the default models are: `scripts/fetch-models.sh` fills the cache.

#![allow(dead_code)]

use std::path::PathBuf;

use airlock_engine::{ChatConfig, ChatModel, EmbeddingModel, ModelFiles};

/// `$AIRLOCK_CACHE/models` (default `~/.cache/airlock/models`).
pub(crate) fn models_dir() -> PathBuf {
    std::env::var_os("AIRLOCK_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("AIRLOCK_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/airlock")
                })
                .join("models")
        })
}

pub(crate) fn smollm2_path() -> PathBuf {
    let path = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    path
}

pub(crate) fn smollm2(config: &ChatConfig) -> ChatModel {
    let files = ModelFiles::single(
        "smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        &smollm2_path(),
    );
    ChatModel::load(&files, config).expect("SmolLM2 loads")
}

pub(crate) fn minilm() -> EmbeddingModel {
    let dir = models_dir().join("all-minilm-l6-v2");
    let files = ModelFiles::directory("all-minilm-l6-v2", &dir).expect("model directory");
    EmbeddingModel::load(&files, &Default::default()).expect("MiniLM loads")
}

/// `crates/airlock-engine/tests/golden/NAME`.
pub(crate) fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}
