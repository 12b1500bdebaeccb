//! In-process inference on the isolated side, and the interface every engine implements.
//!
//! The server talks to engines only through [`ChatEngine`] and [`Embedder`] ([`interface`]):
//! one checked [`ChatRequest`] in, a stream of [`ChatEvent`]s with usage out. The embedded
//! engine implements both here; engine processes (llama-server, vLLM) do in `airlock-upstream`.
//!
//! Chat models run with continuous batching ([`chat`]) on a [`Backend`]: GGUF files on
//! llama.cpp (through `llama-cpp-2`, [`LlamaCpp`]), or any other runtime that implements the
//! trait. Embedding models are safetensors BERT-family models run by a small Rust
//! implementation ([`embed`]). Both load only from [`ModelFiles`] the registry has
//! re-verified, and both treat everything in a model file as untrusted: hyperparameters are
//! checked before llama.cpp sees them, chat templates run in a sandbox ([`template`]).

pub mod chat;
pub mod constraint;
pub mod embed;
mod error;
pub mod files;
mod gguf_check;
pub mod interface;
pub mod quantize;
pub mod template;
pub mod text;

pub use chat::{
    Backend, BatchToken, ChatConfig, ChatModel, Completion, ContinuationScore, Decoder,
    DecoderShape, Event, FinishReason, GenerateParams, Generation, LlamaCpp, Prompter,
    SamplingParams, Scorer, Usage,
};
pub use constraint::{Constraint, OutputFormat, SchemaError, SchemaLimits, rebase_references};
pub use embed::{EmbeddingEngine, EmbeddingModel};
pub use error::{Error, ErrorKind, Result};
pub use files::ModelFiles;
pub use interface::{
    BoxFuture, ChatEngine, ChatEvent, ChatParams, ChatRequest, ChatStream, Embedder, Ending,
    EngineKind, EngineState, EngineStatus, Logprob, MAX_TOP_LOGPROBS, Param, Prompt, RequestLimits,
    TokenLogprobs,
};
pub use template::{ChatTemplate, Message, Role};
