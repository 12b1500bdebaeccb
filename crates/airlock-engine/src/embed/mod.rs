//! Sentence embeddings from safetensors BERT-family models (all-MiniLM-L6-v2 and kin).
//!
//! The layout is Hugging Face's sentence-transformers one: `config.json` (the BERT
//! hyperparameters), `model.safetensors`, `tokenizer.json`, `modules.json` (whether a
//! `Normalize` module follows), `1_Pooling/config.json` (how token vectors become one) and
//! `sentence_bert_config.json` (`max_seq_length`). Texts are tokenised with the `tokenizers`
//! crate from `tokenizer.json`, run through [`bert::Bert`], pooled and normalised as those
//! files say.

mod batcher;
mod bert;
mod math;
mod weights;

use std::path::Path;

use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use crate::files::ModelFiles;
use crate::{Error, Result};

pub use batcher::EmbeddingEngine;
pub use bert::BertConfig;

/// How an embedding model is run.
#[derive(Debug, Clone)]
pub struct EmbeddingConfig {
    /// CPU threads.
    pub threads: usize,
    /// Most texts in one call.
    pub max_batch: usize,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_batch: 256,
        }
    }
}

/// How token vectors become one sentence vector (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Average of the token vectors.
    Mean,
    /// The first (`[CLS]`) token's vector.
    Cls,
    /// Element-wise maximum over the tokens.
    Max,
}

/// Embeddings of a batch of texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens processed (the usage count APIs report).
    pub tokens: usize,
    /// Tokens of each text, in order; they sum to `tokens`.
    pub text_tokens: Vec<usize>,
}

/// What the engine knows about a loaded embedding model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EmbeddingModelInfo {
    /// Which model.
    pub label: String,
    /// Length of each vector.
    pub dimension: usize,
    /// Tokens per text beyond which text is cut.
    pub max_tokens: usize,
    /// Pooling.
    pub pooling: Pooling,
    /// Whether vectors are L2-normalised.
    pub normalized: bool,
}

/// A loaded embedding model.
pub struct EmbeddingModel {
    info: EmbeddingModelInfo,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation, for counting how long a text is.
    counter: Tokenizer,
    bert: bert::Bert,
    threads: rayon::ThreadPool,
    max_batch: usize,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
}

/// Configuration files are small; anything larger is not one.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// `tokenizer.json` files of real models are a few MiB.
const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

fn read_small(label: &str, path: &Path, limit: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    if meta.len() > limit {
        return Err(Error::model(
            label,
            format!(
                "{} is {} bytes; the limit is {limit}",
                path.display(),
                meta.len()
            ),
        ));
    }
    std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })
}

fn json_file<T: for<'de> Deserialize<'de>>(files: &ModelFiles, name: &str) -> Result<Option<T>> {
    let label = files.label();
    let Some(path) = files.get(name) else {
        return Ok(None);
    };
    let bytes = read_small(label, path, MAX_CONFIG_BYTES)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::model(label, format!("{name}: {e}")))
}

impl EmbeddingModel {
    /// Loads a sentence-transformers model from its files.
    pub fn load(files: &ModelFiles, config: &EmbeddingConfig) -> Result<Self> {
        let label = files.label().to_owned();
        let bert_config: BertConfig = json_file(files, "config.json")?
            .ok_or_else(|| Error::model(&label, "has no config.json"))?;
        bert_config.check(&label)?;
        let pooling = match json_file::<PoolingConfig>(files, "1_Pooling/config.json")? {
            None => Pooling::Mean,
            Some(p) if p.pooling_mode_mean_sqrt_len_tokens => {
                return Err(Error::model(
                    &label,
                    "mean_sqrt_len pooling is not supported",
                ));
            }
            Some(p) => match (
                p.pooling_mode_mean_tokens,
                p.pooling_mode_cls_token,
                p.pooling_mode_max_tokens,
            ) {
                (true, false, false) => Pooling::Mean,
                (false, true, false) => Pooling::Cls,
                (false, false, true) => Pooling::Max,
                _ => {
                    return Err(Error::model(
                        &label,
                        "1_Pooling/config.json must choose exactly one of mean, cls and max pooling",
                    ));
                }
            },
        };
        let normalized = json_file::<Vec<Module>>(files, "modules.json")?
            .is_some_and(|modules| modules.iter().any(|m| m.kind.ends_with(".Normalize")));
        let max_tokens = json_file::<SentenceBertConfig>(files, "sentence_bert_config.json")?
            .and_then(|c| c.max_seq_length)
            .unwrap_or(bert_config.max_position_embeddings)
            .min(bert_config.max_position_embeddings);
        let tokenizer_path = files
            .get("tokenizer.json")
            .ok_or_else(|| Error::model(&label, "has no tokenizer.json"))?;
        let tokenizer_bytes = read_small(&label, tokenizer_path, MAX_TOKENIZER_BYTES)?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
            .map_err(|e| Error::model(&label, format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        let mut counter = tokenizer.clone();
        counter
            .with_truncation(None)
            .map_err(|e| Error::model(&label, format!("tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| Error::model(&label, format!("tokenizer.json: {e}")))?;
        if tokenizer.get_vocab_size(true) > bert_config.vocab_size {
            return Err(Error::model(
                &label,
                format!(
                    "tokenizer.json has {} tokens but config.json's vocab_size is {}",
                    tokenizer.get_vocab_size(true),
                    bert_config.vocab_size
                ),
            ));
        }
        let weights_path = files
            .get("model.safetensors")
            .ok_or_else(|| Error::model(&label, "has no model.safetensors"))?;
        let bert = bert::Bert::load(&label, &bert_config, weights_path)?;
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads.max(1))
            .thread_name(|i| format!("airlock-embed-{i}"))
            .build()
            .map_err(|e| Error::Inference(format!("cannot start embedding threads: {e}")))?;
        Ok(Self {
            info: EmbeddingModelInfo {
                label,
                dimension: bert_config.hidden_size,
                max_tokens,
                pooling,
                normalized,
            },
            tokenizer,
            counter,
            bert,
            threads,
            max_batch: config.max_batch.max(1),
        })
    }

    /// What was loaded.
    pub fn info(&self) -> &EmbeddingModelInfo {
        &self.info
    }

    /// Token ids of each text, with `[CLS]`/`[SEP]` and truncation, as the model sees them.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Request(format!("cannot tokenise: {e}")))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// How many tokens the model would read of `text` (`[CLS]`/`[SEP]` included) if it were
    /// not cut at [`EmbeddingModelInfo::max_tokens`].
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        self.counter
            .encode(text, true)
            .map(|e| e.get_ids().len())
            .map_err(|e| Error::Request(format!("cannot tokenise: {e}")))
    }

    /// The text of `ids`, special tokens left out (BERT tokenizers normalise: lower case,
    /// accents stripped, so this is not always the original text).
    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::Request(format!("cannot decode: {e}")))
    }

    /// Embeds `texts`, one vector each.
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        if texts.is_empty() {
            return Err(Error::Request("no input to embed".into()));
        }
        if texts.len() > self.max_batch {
            return Err(Error::Request(format!(
                "{} inputs; at most {} in one request",
                texts.len(),
                self.max_batch
            )));
        }
        let ids = self.tokenize(texts)?;
        if let Some(i) = ids.iter().position(Vec::is_empty) {
            return Err(Error::Request(format!("input {i} has no tokens")));
        }
        let text_tokens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let tokens = text_tokens.iter().sum();
        let vectors = self.threads.install(|| {
            let hidden = self.bert.forward(&ids);
            pool(
                &hidden,
                &ids,
                self.info.dimension,
                self.info.pooling,
                self.info.normalized,
            )
        });
        Ok(Embeddings {
            vectors,
            tokens,
            text_tokens,
        })
    }
}

/// Pools each sequence's rows of `hidden` (sequences packed one after another).
fn pool(
    hidden: &[f32],
    ids: &[Vec<u32>],
    dim: usize,
    pooling: Pooling,
    normalize: bool,
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(ids.len());
    let mut row = 0;
    for seq in ids {
        let rows = &hidden[row * dim..(row + seq.len()) * dim];
        row += seq.len();
        let mut v = match pooling {
            Pooling::Cls => rows[..dim].to_vec(),
            Pooling::Mean => {
                let mut acc = vec![0f32; dim];
                for r in rows.chunks_exact(dim) {
                    for (a, x) in acc.iter_mut().zip(r) {
                        *a += x;
                    }
                }
                let n = seq.len() as f32;
                acc.iter_mut().for_each(|a| *a /= n);
                acc
            }
            Pooling::Max => {
                let mut acc = vec![f32::NEG_INFINITY; dim];
                for r in rows.chunks_exact(dim) {
                    for (a, x) in acc.iter_mut().zip(r) {
                        *a = a.max(*x);
                    }
                }
                acc
            }
        };
        if normalize {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
        }
        out.push(v);
    }
    out
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb).max(1e-30)) as f32
}
