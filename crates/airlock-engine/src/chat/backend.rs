//! What the scheduler needs from an inference runtime.
//!
//! [`ChatModel`](super::ChatModel) owns everything a runtime should not have to know: the
//! bounded queue, sequence slots, continuous batching, stop sequences, streaming, cancellation
//! and finish reasons. A runtime only tokenises, decodes batches of tokens into logits and
//! samples. llama.cpp is the one shipped ([`LlamaCpp`](super::LlamaCpp)); another plugs in by
//! implementing [`Backend`] and [`Decoder`] and starting with [`ChatModel::start`](super::ChatModel::start).

use super::SamplingParams;

/// A loaded model: its vocabulary, and decoding state on demand.
///
/// Shared between the API side (tokenising prompts, rendering pieces) and the worker thread
/// (decoding), hence `Send + Sync`.
pub trait Backend: Send + Sync + 'static {
    /// Decoding state: the KV cache of every sequence slot and the runtime's scratch space.
    /// It lives on the worker thread and may borrow the model.
    type Decoder<'m>: Decoder
    where
        Self: 'm;

    /// The model family, e.g. `llama` (GGUF's `general.architecture`).
    fn architecture(&self) -> &str;

    /// The context length the model was trained with.
    fn training_context(&self) -> usize;

    /// How many token ids there are; every id is below this.
    fn vocabulary(&self) -> usize;

    /// The tokens of `text`. With `special`, control-token text such as `<|im_start|>` becomes
    /// the control token; without, it is plain text.
    fn tokenize(&self, text: &str, special: bool) -> Vec<i32>;

    /// Appends the bytes of `token` to `out` (control tokens as their text when `special`).
    /// Bytes rather than text: one token may hold part of a UTF-8 character.
    fn append_piece(&self, token: i32, special: bool, out: &mut Vec<u8>);

    /// The token every prompt must begin with, if the model wants one.
    fn prompt_start(&self) -> Option<i32>;

    /// Whether `token` ends the model's turn (end of sequence, end of turn).
    fn ends_turn(&self, token: i32) -> bool;

    /// Decoding state for `shape.slots` sequences of up to `shape.context_per_slot` tokens.
    /// The error is the runtime's own account of why it could not be made.
    fn decoder(&self, shape: &DecoderShape) -> Result<Self::Decoder<'_>, String>;
}

/// The decoding state the scheduler asks a backend for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderShape {
    /// Sequences decoded side by side; sequence ids are `0..slots`.
    pub slots: usize,
    /// Tokens one sequence may hold.
    pub context_per_slot: usize,
    /// Most tokens in one batch; never fewer than `slots`.
    pub batch_tokens: usize,
    /// CPU threads the runtime may use; at least 1.
    pub threads: usize,
}

/// One token of a decode batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchToken {
    /// The token id.
    pub token: i32,
    /// Its position in its sequence. Each sequence is fed positions 0, 1, 2, … in order and
    /// without gaps, until [`Decoder::forget`] empties it or [`Decoder::truncate`] cuts it.
    pub position: usize,
    /// The sequence slot it extends, below [`DecoderShape::slots`].
    pub seq: usize,
    /// Whether the scheduler will read the logits that follow this token.
    pub logits: bool,
}

/// Decoding state for a fixed set of sequence slots, used by one thread.
pub trait Decoder {
    /// A generation's own token chooser (its random state, its repetition window).
    type Sampler;

    /// A sampler for `params`, keeping every token within `grammar` if one is given (llama.cpp
    /// GBNF, root rule `root`). Never asked for plain greedy decoding without a grammar: the
    /// scheduler takes the argmax of [`Decoder::logits`] itself. The error says why the
    /// grammar was not accepted.
    fn sampler(
        &self,
        params: &SamplingParams,
        grammar: Option<&str>,
    ) -> Result<Self::Sampler, String>;

    /// Runs one batch (at most [`DecoderShape::batch_tokens`] tokens, each sequence's in
    /// position order). The error is the runtime's own account; the scheduler then fails every
    /// running generation and forgets their sequences.
    fn decode(&mut self, batch: &[BatchToken]) -> Result<(), String>;

    /// The logits after the `index`th token of the last batch, which asked for them.
    fn logits(&self, index: usize) -> &[f32];

    /// Chooses the token after the `index`th token of the last batch, which asked for logits.
    /// The error says why no token could be chosen (a grammar that allows none).
    fn sample(&mut self, sampler: &mut Self::Sampler, index: usize) -> Result<i32, String>;

    /// Empties sequence `seq`; its slot is next fed from position 0.
    fn forget(&mut self, seq: usize);

    /// Keeps the first `len` tokens of sequence `seq` and drops the rest, so that it is next
    /// fed from position `len`. Returns `false` if the runtime cannot cut a sequence there;
    /// it has then been emptied. A runtime that cannot cut sequences at all keeps this
    /// default, and the scheduler never reuses a cache on it.
    fn truncate(&mut self, seq: usize, len: usize) -> bool {
        self.forget(seq);
        len == 0
    }

    /// Makes sequence `to` hold the first `len` tokens of sequence `from` (which holds at
    /// least that many) in place of its own, so that `to` is next fed from position `len`:
    /// requests with the same prompt decode it once. Returns `false` if the runtime cannot
    /// copy a sequence; `to` has then been emptied. A runtime that cannot keeps this default,
    /// and every sequence decodes its own prompt.
    fn share(&mut self, from: usize, to: usize, len: usize) -> bool {
        let _ = (from, len);
        self.forget(to);
        false
    }
}
