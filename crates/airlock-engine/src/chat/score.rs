//! Log-likelihoods of given text: what evals score multiple-choice items and quantised models
//! by. Scoring decodes with its own state beside the generation worker, so it never waits
//! behind (or slows) the requests the worker is answering.

use super::backend::{Backend, BatchToken, Decoder, DecoderShape};
use crate::{Error, Result};

/// Most sequences scored in one decode (the choices of one item).
pub const MAX_SEQUENCES: usize = 16;

/// The scored continuation of one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct ContinuationScore {
    /// Sum of the natural-log probabilities of the continuation's tokens, each given every
    /// token before it.
    pub logprob: f64,
    /// How many tokens were scored.
    pub tokens: usize,
    /// Whether every continuation token was the most likely one (greedy would produce it).
    pub greedy: bool,
}

/// Decoding state for scoring, borrowed from a loaded model.
pub struct Scorer<'m, B: Backend> {
    backend: &'m B,
    decoder: B::Decoder<'m>,
    shape: DecoderShape,
}

impl<B: Backend> std::fmt::Debug for Scorer<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl<'m, B: Backend> Scorer<'m, B> {
    /// Scoring state for up to `sequences` sequences at once (at most [`MAX_SEQUENCES`]) of
    /// up to `context` tokens each. The KV cache grows with both; ask for what the items need.
    pub fn new(backend: &'m B, sequences: usize, context: usize, threads: usize) -> Result<Self> {
        let context = context.clamp(16, backend.training_context().max(16));
        let shape = DecoderShape {
            slots: sequences.clamp(1, MAX_SEQUENCES),
            context_per_slot: context,
            batch_tokens: 512,
            threads: threads.max(1),
        };
        let decoder = backend.decoder(&shape).map_err(Error::Inference)?;
        Ok(Self {
            backend,
            decoder,
            shape,
        })
    }

    /// Tokens one sequence may hold.
    pub fn context(&self) -> usize {
        self.shape.context_per_slot
    }

    /// Scores every sequence's tokens from index `from` on (each given the tokens before it;
    /// `from` ≥ 1). The sequences are decoded side by side, each in its own slot.
    pub fn score(&mut self, sequences: &[Vec<i32>], from: usize) -> Result<Vec<ContinuationScore>> {
        let requests: Vec<(&[i32], usize)> =
            sequences.iter().map(|s| (s.as_slice(), from)).collect();
        self.score_each(&requests)
    }

    /// Scores each `(tokens, from)`: the tokens from index `from` on, each given the tokens
    /// before it. Up to [`Scorer::slots`] sequences are decoded side by side in one batch,
    /// each in its own slot, so many short items cost one decode rather than one each.
    pub fn score_each(&mut self, requests: &[(&[i32], usize)]) -> Result<Vec<ContinuationScore>> {
        let mut scores = vec![
            ContinuationScore {
                logprob: 0.0,
                tokens: 0,
                greedy: true,
            };
            requests.len()
        ];
        for (group, chunk) in requests.chunks(self.shape.slots).enumerate() {
            let offset = group * self.shape.slots;
            self.each_distribution(chunk, |seq, logprobs, next| {
                let score = &mut scores[offset + seq];
                let token = next as usize;
                score.logprob += f64::from(logprobs[token]);
                score.tokens += 1;
                let best = logprobs
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i);
                score.greedy &= best == Some(token);
            })?;
        }
        Ok(scores)
    }

    /// Sequences decoded side by side.
    pub fn slots(&self) -> usize {
        self.shape.slots
    }

    /// The log-probabilities of every token coming after all of `tokens`.
    pub fn next_token_logprobs(&mut self, tokens: &[i32]) -> Result<Vec<f32>> {
        let mut extended = tokens.to_vec();
        // A placeholder to be "predicted": its distribution is the one wanted.
        extended.push(0);
        let mut out = Vec::new();
        self.each_distribution(&[(&extended, tokens.len())], |_, logprobs, _| {
            out = logprobs.to_vec();
        })?;
        Ok(out)
    }

    /// Decodes each `(tokens, from)` in its own slot and calls `visit(index, log-probabilities,
    /// next token)` for each position whose next token is at index ≥ `from`, in order within
    /// each sequence.
    fn each_distribution(
        &mut self,
        requests: &[(&[i32], usize)],
        mut visit: impl FnMut(usize, &[f32], i32),
    ) -> Result<()> {
        if requests.len() > self.shape.slots {
            return Err(Error::Request(format!(
                "{} sequences to score; this scorer takes {} at once",
                requests.len(),
                self.shape.slots
            )));
        }
        let vocabulary = self.backend.vocabulary();
        for &(tokens, from) in requests {
            if from == 0 || from >= tokens.len() {
                return Err(Error::Request(format!(
                    "nothing to score: {} tokens, scoring from token {from}",
                    tokens.len()
                )));
            }
            if tokens.len() > self.shape.context_per_slot {
                return Err(Error::Request(format!(
                    "{} tokens to score; the scoring context holds {}",
                    tokens.len(),
                    self.shape.context_per_slot
                )));
            }
            if let Some(bad) = tokens.iter().find(|&&t| t < 0 || t as usize >= vocabulary) {
                return Err(Error::Request(format!(
                    "token {bad} is not in the vocabulary"
                )));
            }
        }
        // Every sequence but its last token is decoded; logits are read after each token
        // whose successor is scored.
        let mut pending: Vec<(BatchToken, i32)> = Vec::new();
        for (seq, &(tokens, from)) in requests.iter().enumerate() {
            self.decoder.forget(seq);
            for position in 0..tokens.len() - 1 {
                pending.push((
                    BatchToken {
                        token: tokens[position],
                        position,
                        seq,
                        logits: position + 1 >= from,
                    },
                    tokens[position + 1],
                ));
            }
        }
        let mut logprobs = vec![0f32; vocabulary];
        for chunk in pending.chunks(self.shape.batch_tokens) {
            let batch: Vec<BatchToken> = chunk.iter().map(|(t, _)| *t).collect();
            self.decoder.decode(&batch).map_err(Error::Inference)?;
            for (index, (token, next)) in chunk.iter().enumerate() {
                if token.logits {
                    log_softmax(self.decoder.logits(index), &mut logprobs);
                    visit(token.seq, &logprobs, *next);
                }
            }
        }
        for seq in 0..requests.len() {
            self.decoder.forget(seq);
        }
        Ok(())
    }
}

/// `out[i] = logits[i] - log(sum(exp(logits)))`, summed in f64 so that a 150k-entry
/// vocabulary loses no precision.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_sum = sum.ln() as f32 + max;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = l - log_sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_sums_to_one_and_keeps_order() {
        let logits = [1.0f32, 2.0, 3.0, -50.0];
        let mut out = [0f32; 4];
        log_softmax(&logits, &mut out);
        let total: f64 = out.iter().map(|&l| f64::from(l).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert!(out[2] > out[1] && out[1] > out[0] && out[0] > out[3]);
        // Shifting every logit changes nothing.
        let shifted: Vec<f32> = logits.iter().map(|l| l + 1000.0).collect();
        let mut again = [0f32; 4];
        log_softmax(&shifted, &mut again);
        for (a, b) in out.iter().zip(again) {
            assert!((a - b).abs() < 1e-4);
        }
    }
}
