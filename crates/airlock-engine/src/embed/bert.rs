//! The BERT encoder, as Hugging Face's `BertModel` computes it, on packed sequences.
//!
//! A batch is packed: every token of every text is one row of one matrix, with no padding,
//! so the dense layers (nearly all of the work) run as a single large matrix product over
//! exactly the tokens that exist. Only attention looks at sequence boundaries.

use std::path::Path;

use rayon::prelude::*;
use serde::Deserialize;

use super::math::{add_layer_norm, attention, gelu, linear};
use super::weights::Weights;
use crate::{Error, Result};

/// `config.json` of a BERT model (the fields the encoder needs).
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Must be `bert`.
    pub model_type: String,
    /// Width of every token vector.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Must be `gelu`.
    pub hidden_act: String,
    /// Longest sequence the position embeddings cover.
    pub max_position_embeddings: usize,
    /// Token-type embeddings (segment A/B).
    pub type_vocab_size: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Must be `absolute` when present.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

impl BertConfig {
    pub(super) fn check(&self, label: &str) -> Result<()> {
        let bad = |reason: String| Err(Error::model(label, format!("config.json: {reason}")));
        if self.model_type != "bert" {
            return bad(format!(
                "model_type {:?} is not supported (bert is)",
                self.model_type
            ));
        }
        if self.hidden_act != "gelu" {
            return bad(format!(
                "hidden_act {:?} is not supported (gelu is)",
                self.hidden_act
            ));
        }
        if self
            .position_embedding_type
            .as_deref()
            .is_some_and(|t| t != "absolute")
        {
            return bad("only absolute position embeddings are supported".into());
        }
        for (name, value, max) in [
            ("hidden_size", self.hidden_size, 16_384),
            ("num_hidden_layers", self.num_hidden_layers, 128),
            ("num_attention_heads", self.num_attention_heads, 256),
            ("intermediate_size", self.intermediate_size, 65_536),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                8_192,
            ),
            ("type_vocab_size", self.type_vocab_size, 16),
            ("vocab_size", self.vocab_size, 1 << 20),
        ] {
            if value == 0 || value > max {
                return bad(format!("{name} is {value}; it must be 1 to {max}"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size ({}) is not a multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return bad(format!(
                "layer_norm_eps {} is out of range",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }
}

struct Layer {
    q: Vec<f32>,
    q_bias: Vec<f32>,
    k: Vec<f32>,
    k_bias: Vec<f32>,
    v: Vec<f32>,
    v_bias: Vec<f32>,
    out: Vec<f32>,
    out_bias: Vec<f32>,
    attn_norm: (Vec<f32>, Vec<f32>),
    up: Vec<f32>,
    up_bias: Vec<f32>,
    down: Vec<f32>,
    down_bias: Vec<f32>,
    ffn_norm: (Vec<f32>, Vec<f32>),
}

/// A BERT encoder's weights.
pub(super) struct Bert {
    config: BertConfig,
    words: Vec<f32>,
    positions: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
}

impl Bert {
    pub(super) fn load(label: &str, config: &BertConfig, path: &Path) -> Result<Self> {
        let mut w = Weights::open(label, path)?;
        let h = config.hidden_size;
        let i = config.intermediate_size;
        // sentence-transformers saves the bare encoder; transformers checkpoints prefix it.
        let prefix = if w.has("embeddings.word_embeddings.weight") {
            ""
        } else {
            "bert."
        };
        let mut t = |name: &str, shape: &[usize]| w.tensor(&format!("{prefix}{name}"), shape);
        let words = t("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let positions = t(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let token_type = t(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let embed_norm = (
            t("embeddings.LayerNorm.weight", &[h])?,
            t("embeddings.LayerNorm.bias", &[h])?,
        );
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for n in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{n}.");
            let mut l = |name: &str, shape: &[usize]| t(&format!("{p}{name}"), shape);
            layers.push(Layer {
                q: l("attention.self.query.weight", &[h, h])?,
                q_bias: l("attention.self.query.bias", &[h])?,
                k: l("attention.self.key.weight", &[h, h])?,
                k_bias: l("attention.self.key.bias", &[h])?,
                v: l("attention.self.value.weight", &[h, h])?,
                v_bias: l("attention.self.value.bias", &[h])?,
                out: l("attention.output.dense.weight", &[h, h])?,
                out_bias: l("attention.output.dense.bias", &[h])?,
                attn_norm: (
                    l("attention.output.LayerNorm.weight", &[h])?,
                    l("attention.output.LayerNorm.bias", &[h])?,
                ),
                up: l("intermediate.dense.weight", &[i, h])?,
                up_bias: l("intermediate.dense.bias", &[i])?,
                down: l("output.dense.weight", &[h, i])?,
                down_bias: l("output.dense.bias", &[h])?,
                ffn_norm: (
                    l("output.LayerNorm.weight", &[h])?,
                    l("output.LayerNorm.bias", &[h])?,
                ),
            });
        }
        Ok(Self {
            config: config.clone(),
            words,
            positions,
            token_type,
            embed_norm,
            layers,
        })
    }

    /// The last hidden state of every token of every sequence, packed (`Σlen × hidden`).
    /// Every id must be below the vocabulary size and every sequence at most
    /// `max_position_embeddings` long (the tokenizer's truncation sees to both).
    pub(super) fn forward(&self, ids: &[Vec<u32>]) -> Vec<f32> {
        let h = self.config.hidden_size;
        let inter = self.config.intermediate_size;
        let heads = self.config.num_attention_heads;
        let eps = self.config.layer_norm_eps as f32;
        let rows: usize = ids.iter().map(Vec::len).sum();

        let mut x = vec![0f32; rows * h];
        let mut row = 0;
        for seq in ids {
            for (pos, &id) in seq.iter().enumerate() {
                let id = (id as usize).min(self.config.vocab_size - 1);
                let pos = pos.min(self.config.max_position_embeddings - 1);
                let dst = &mut x[row * h..(row + 1) * h];
                let word = &self.words[id * h..(id + 1) * h];
                let position = &self.positions[pos * h..(pos + 1) * h];
                for (((d, a), b), c) in dst
                    .iter_mut()
                    .zip(word)
                    .zip(position)
                    .zip(&self.token_type[..h])
                {
                    *d = a + b + c;
                }
                row += 1;
            }
        }
        add_layer_norm(&mut x, None, &self.embed_norm.0, &self.embed_norm.1, eps);

        let mut q = vec![0f32; rows * h];
        let mut k = vec![0f32; rows * h];
        let mut v = vec![0f32; rows * h];
        let mut ctx = vec![0f32; rows * h];
        let mut proj = vec![0f32; rows * h];
        let mut up = vec![0f32; rows * inter];
        for layer in &self.layers {
            linear(&mut q, &x, &layer.q, &layer.q_bias, h, h);
            linear(&mut k, &x, &layer.k, &layer.k_bias, h, h);
            linear(&mut v, &x, &layer.v, &layer.v_bias, h, h);
            // Each sequence's rows are contiguous: hand each to a thread.
            let mut parts = Vec::with_capacity(ids.len());
            let mut rest = ctx.as_mut_slice();
            let mut start = 0;
            for seq in ids {
                let (part, tail) = rest.split_at_mut(seq.len() * h);
                parts.push((start, seq.len(), part));
                rest = tail;
                start += seq.len() * h;
            }
            parts
                .into_par_iter()
                .for_each_init(Vec::new, |scores, (at, len, out)| {
                    let end = at + len * h;
                    attention(out, &q[at..end], &k[at..end], &v[at..end], h, heads, scores);
                });
            linear(&mut proj, &ctx, &layer.out, &layer.out_bias, h, h);
            add_layer_norm(
                &mut x,
                Some(&proj),
                &layer.attn_norm.0,
                &layer.attn_norm.1,
                eps,
            );
            linear(&mut up, &x, &layer.up, &layer.up_bias, h, inter);
            gelu(&mut up);
            linear(&mut proj, &up, &layer.down, &layer.down_bias, inter, h);
            add_layer_norm(
                &mut x,
                Some(&proj),
                &layer.ffn_norm.0,
                &layer.ffn_norm.1,
                eps,
            );
        }
        x
    }
}
