//! Consistency checks on a GGUF file's hyperparameters, before llama.cpp sees it.
//!
//! A file can be well formed (the bundle's validator checked its layout) and still describe a
//! model that cannot exist: head counts that do not divide, a vocabulary whose size disagrees
//! with the embedding matrix, layers that are missing. llama.cpp asserts on some of these and
//! would take the process down, so they are refused here with the reason.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use airlock_bundle::Limits;
use airlock_bundle::inspect::gguf::{GgufInfo, validate};

use crate::{Error, Result};

const MAX_LAYERS: u64 = 4096;
const MAX_HEADS: u64 = 4096;
const MAX_EMBEDDING: u64 = 1 << 20;
const MAX_CONTEXT: u64 = 1 << 24;

/// What the engine needs to know about a GGUF model before loading it.
#[derive(Debug, Clone)]
pub(crate) struct GgufFacts {
    pub(crate) architecture: String,
    pub(crate) context_length: u64,
    pub(crate) chat_template: Option<String>,
}

/// Reads `path`'s header and checks that its hyperparameters describe a consistent model.
pub(crate) fn check(model: &str, path: &Path) -> Result<GgufFacts> {
    let file = File::open(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let len = file
        .metadata()
        .map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?
        .len();
    let info = validate(model, &mut BufReader::new(file), len, &Limits::default())
        .map_err(|e| Error::model(model, e.to_string()))?;
    consistent(model, &info)
}

pub(crate) fn consistent(model: &str, info: &GgufInfo) -> Result<GgufFacts> {
    let bad = |reason: String| Error::model(model, reason);
    let arch = info
        .architecture
        .clone()
        .ok_or_else(|| bad("GGUF has no general.architecture".into()))?;
    let int = |key: &str| info.integers.get(&format!("{arch}.{key}")).copied();
    let require = |key: &str, max: u64| -> Result<u64> {
        match int(key) {
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(v) => Err(bad(format!("{arch}.{key} is {v}; it must be 1 to {max}"))),
            None => Err(bad(format!("GGUF has no {arch}.{key}"))),
        }
    };
    let layers = require("block_count", MAX_LAYERS)?;
    let embedding = require("embedding_length", MAX_EMBEDDING)?;
    let context_length = require("context_length", MAX_CONTEXT)?;
    // Per-layer head counts arrive as arrays; llama.cpp checks those itself.
    if info
        .array_lengths
        .contains_key(&format!("{arch}.attention.head_count"))
    {
        return Ok(GgufFacts {
            architecture: arch,
            context_length,
            chat_template: info.chat_template.clone(),
        });
    }
    let heads = require("attention.head_count", MAX_HEADS)?;
    let kv_heads = match int("attention.head_count_kv") {
        Some(v) if (1..=heads).contains(&v) => v,
        Some(v) => {
            return Err(bad(format!(
                "{arch}.attention.head_count_kv is {v}; it must be 1 to head_count ({heads})"
            )));
        }
        None => heads,
    };
    if heads % kv_heads != 0 {
        return Err(bad(format!(
            "{arch}.attention.head_count ({heads}) is not a multiple of head_count_kv ({kv_heads})"
        )));
    }
    if int("attention.key_length").is_none() && embedding % heads != 0 {
        return Err(bad(format!(
            "{arch}.embedding_length ({embedding}) is not a multiple of attention.head_count ({heads})"
        )));
    }
    let vocab = info
        .array_lengths
        .get("tokenizer.ggml.tokens")
        .copied()
        .filter(|&n| n > 0)
        .ok_or_else(|| bad("GGUF has no tokenizer.ggml.tokens".into()))?;
    for key in ["tokenizer.ggml.scores", "tokenizer.ggml.token_type"] {
        if let Some(&n) = info.array_lengths.get(key)
            && n != vocab
        {
            return Err(bad(format!(
                "{key} has {n} entries but the vocabulary has {vocab}"
            )));
        }
    }
    for (key, &id) in &info.integers {
        if key.starts_with("tokenizer.ggml.") && key.ends_with("_token_id") && id >= vocab {
            return Err(bad(format!(
                "{key} is {id}, outside the {vocab}-token vocabulary"
            )));
        }
    }
    if let Some(shape) = info.tensor_shapes.get("token_embd.weight")
        && shape.as_slice() != [embedding, vocab]
    {
        return Err(bad(format!(
            "token_embd.weight is {shape:?} but embedding_length x vocabulary is [{embedding}, {vocab}]"
        )));
    }
    let mut seen = vec![false; layers as usize];
    for name in info.tensor_shapes.keys() {
        let Some(rest) = name.strip_prefix("blk.") else {
            continue;
        };
        let index = rest.split('.').next().and_then(|i| i.parse::<u64>().ok());
        match index {
            Some(i) if i < layers => seen[i as usize] = true,
            _ => {
                return Err(bad(format!(
                    "tensor {name} does not belong to any of the {layers} layers"
                )));
            }
        }
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(bad(format!(
            "{arch}.block_count is {layers} but layer {missing} has no tensors"
        )));
    }
    Ok(GgufFacts {
        architecture: arch,
        context_length,
        chat_template: info.chat_template.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn llama() -> GgufInfo {
        let mut info = GgufInfo {
            architecture: Some("llama".into()),
            ..GgufInfo::default()
        };
        for (k, v) in [
            ("llama.block_count", 2),
            ("llama.embedding_length", 64),
            ("llama.context_length", 512),
            ("llama.attention.head_count", 4),
            ("llama.attention.head_count_kv", 2),
            ("tokenizer.ggml.eos_token_id", 2),
        ] {
            info.integers.insert(k.into(), v);
        }
        info.array_lengths
            .insert("tokenizer.ggml.tokens".into(), 100);
        info.tensor_shapes = BTreeMap::from([
            ("token_embd.weight".into(), vec![64, 100]),
            ("blk.0.attn_q.weight".into(), vec![64, 64]),
            ("blk.1.attn_q.weight".into(), vec![64, 64]),
        ]);
        info
    }

    fn refusal(edit: impl FnOnce(&mut GgufInfo)) -> String {
        let mut info = llama();
        edit(&mut info);
        consistent("m", &info).unwrap_err().to_string()
    }

    #[test]
    fn a_consistent_model_passes() {
        let facts = consistent("m", &llama()).unwrap();
        assert_eq!(facts.architecture, "llama");
        assert_eq!(facts.context_length, 512);
    }

    #[test]
    fn inconsistent_hyperparameters_are_refused_with_the_reason() {
        let int = |k: &'static str, v: u64| {
            move |i: &mut GgufInfo| {
                i.integers.insert(k.into(), v);
            }
        };
        for (edit, expect) in [
            (
                Box::new(int("llama.attention.head_count", 5)) as Box<dyn FnOnce(&mut GgufInfo)>,
                "not a multiple of head_count_kv",
            ),
            (
                Box::new(int("llama.attention.head_count_kv", 3)),
                "not a multiple of head_count_kv",
            ),
            (
                Box::new(int("llama.attention.head_count_kv", 8)),
                "must be 1 to head_count",
            ),
            (
                Box::new(|i: &mut GgufInfo| {
                    i.integers.insert("llama.attention.head_count".into(), 6);
                    i.integers.insert("llama.attention.head_count_kv".into(), 6);
                }),
                "embedding_length (64) is not a multiple",
            ),
            (
                Box::new(int("llama.attention.head_count", 0)),
                "must be 1 to",
            ),
            (
                Box::new(int("llama.block_count", 3)),
                "layer 2 has no tensors",
            ),
            (Box::new(int("llama.block_count", 1)), "does not belong"),
            (
                Box::new(int("llama.embedding_length", 32)),
                "token_embd.weight",
            ),
            (
                Box::new(int("tokenizer.ggml.eos_token_id", 100)),
                "outside the 100-token vocabulary",
            ),
            (
                Box::new(|i: &mut GgufInfo| {
                    i.integers.remove("llama.context_length");
                }),
                "no llama.context_length",
            ),
            (
                Box::new(|i: &mut GgufInfo| {
                    i.array_lengths.insert("tokenizer.ggml.scores".into(), 99);
                }),
                "99 entries",
            ),
        ] {
            let err = refusal(edit);
            assert!(err.contains(expect), "{err} should mention {expect}");
        }
    }
}
