//! Chat models with continuous batching.
//!
//! [`ChatModel`] owns one worker thread (module `scheduler`) that interleaves every running
//! generation in shared decode batches and admits new requests between steps. Requests wait in
//! a bounded queue; when it is full, [`ChatModel::generate`] refuses at once with
//! [`Error::Busy`] rather than letting memory grow. The worker drives a [`Backend`]: llama.cpp
//! ([`LlamaCpp`]) for GGUF models, or any other runtime that implements the trait.

mod backend;
pub(crate) mod llama;
mod scheduler;
mod score;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use futures_core::Stream;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

pub use backend::{Backend, BatchToken, Decoder, DecoderShape};
pub use llama::{LlamaCpp, LlamaDecoder, LlamaSampling};
pub use score::{ContinuationScore, MAX_SEQUENCES, Scorer, log_softmax};

use crate::files::ModelFiles;
use crate::interface::{
    BoxFuture, ChatEngine, ChatEvent, ChatRequest, ChatStream, Ending, EngineKind, EngineStatus,
    Param, Prompt, TokenLogprobs,
};
use crate::template::{ChatTemplate, Message, Segment};
use crate::{Error, Result};

/// How a chat model is run.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// CPU threads for decoding.
    pub threads: usize,
    /// Generations that run at once, each in its own sequence slot.
    pub slots: usize,
    /// Tokens one sequence may hold (prompt and answer). `None`: the model's training
    /// context, at most 4096.
    pub context_per_slot: Option<usize>,
    /// Requests that may wait for a slot before new ones are refused as busy.
    pub queue: usize,
    /// Most tokens decoded in one step (prompt chunks and running sequences together).
    pub batch_tokens: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            slots: 1,
            context_per_slot: None,
            queue: 64,
            batch_tokens: 512,
        }
    }
}

/// How to choose tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 chooses the most likely token every time (greedy).
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to this (1: off).
    pub top_p: f32,
    /// Keep only this many most likely tokens (0: off).
    pub top_k: u32,
    /// Drop tokens less likely than this fraction of the most likely one (0: off).
    pub min_p: f32,
    /// Penalise tokens seen in the last 64 (1: off).
    pub repetition_penalty: f32,
    /// Same seed, same prompt, same parameters: same answer. `None`: a random seed.
    pub seed: Option<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Refuses values outside their meaningful ranges, naming the parameter.
    pub fn check(&self) -> Result<()> {
        let bad = |param: Param, v: f32, range: &str| {
            Err(Error::Invalid {
                param,
                reason: format!("is {v}; it must be {range}"),
            })
        };
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad(Param::Temperature, self.temperature, "0 to 2");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(Param::TopP, self.top_p, "above 0 and at most 1");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(Param::MinP, self.min_p, "0 to 1");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            return bad(
                Param::RepetitionPenalty,
                self.repetition_penalty,
                "above 0 and at most 10",
            );
        }
        Ok(())
    }

    /// Whether this is plain greedy decoding, which needs no sampler: the scheduler takes the
    /// argmax over the logits itself, without copying the vocabulary into a candidate array
    /// every step.
    fn is_plain_greedy(&self) -> bool {
        self.temperature == 0.0 && self.repetition_penalty == 1.0
    }
}

/// What to generate.
#[derive(Debug, Clone, Default)]
pub struct GenerateParams {
    /// Most tokens to generate. `None`: until the model stops or the context is full.
    pub max_tokens: Option<usize>,
    /// Text that ends the answer when it appears (not included in it).
    pub stop: Vec<String>,
    /// Token choice.
    pub sampling: SamplingParams,
    /// Keep generating past end-of-turn tokens (for benchmarks that need an exact length).
    pub ignore_eos: bool,
    /// Who may reuse this generation's cache. A later request with the same scope whose
    /// prompt begins with the same tokens (the next turn of a conversation, a retry) skips
    /// decoding them, and requests of one scope running together with the same prompt (the
    /// answers of one `n` request) decode it once. Requests reuse only their own scope's
    /// caches, so one caller cannot learn from response times what another has asked.
    /// `None`: nothing is kept, and nothing is reused or shared.
    ///
    /// A seeded answer must be reproducible from its seed, and llama.cpp's arithmetic differs
    /// in the last bits between prompt chunks of different sizes, so a reused cache could
    /// change it (greedy answers hold in practice). A seeded generation therefore reuses no
    /// kept cache, and shares a prompt only whole, taking the logits of the very step that
    /// decoded it: exactly what it would have decoded itself.
    pub cache_scope: Option<String>,
    /// A grammar (llama.cpp GBNF, root rule `root`) every token must keep the answer within;
    /// the answer ends when the grammar is complete (see [`crate::Constraint`]).
    pub grammar: Option<Arc<str>>,
    /// Report each token's log-probability with this many most likely alternatives.
    pub logprobs: Option<usize>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model ended its turn or a stop sequence appeared.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

/// Token counts of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens not decoded because their cache was kept from an earlier generation in
    /// the same [`GenerateParams::cache_scope`]; part of `prompt_tokens`.
    pub cached_tokens: usize,
}

/// One event of a streamed generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A token was generated; `text` is what became visible with it (possibly empty: part of
    /// a character, or text held back because it may begin a stop sequence).
    Token {
        /// The token id.
        id: i32,
        /// Newly visible text.
        text: String,
        /// Its log-probability, if asked for ([`GenerateParams::logprobs`]).
        logprobs: Option<Box<TokenLogprobs>>,
    },
    /// Generation ended; `text` is any text that was still held back.
    Done {
        /// Text released at the end.
        text: String,
        /// Why it ended.
        reason: FinishReason,
        /// The stop sequence that ended it, if one did.
        stop_sequence: Option<String>,
        /// Token counts.
        usage: Usage,
    },
}

/// A running generation. Read its events; drop it to cancel (the worker notices before its
/// next step and frees the slot).
#[derive(Debug)]
pub struct Generation {
    events: UnboundedReceiver<Result<Event>>,
}

impl Generation {
    /// The next event, waiting for it on this thread. `None` after `Done` or an error.
    pub fn next_blocking(&mut self) -> Option<Result<Event>> {
        self.events.blocking_recv()
    }

    /// The next event. `None` after `Done` or an error.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.events.recv().await
    }

    /// Runs to the end on this thread: the whole text, why it ended, the generated token ids
    /// and the token counts.
    pub fn collect_blocking(mut self) -> Result<Completion> {
        let mut out = Completion::default();
        while let Some(event) = self.next_blocking() {
            match event? {
                Event::Token { id, text, .. } => {
                    out.tokens.push(id);
                    out.text.push_str(&text);
                }
                Event::Done {
                    text,
                    reason,
                    usage,
                    ..
                } => {
                    out.text.push_str(&text);
                    out.reason = Some(reason);
                    out.usage = usage;
                    return Ok(out);
                }
            }
        }
        Err(Error::Stopped(
            "the generation ended without finishing".into(),
        ))
    }
}

/// A finished generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// The visible text.
    pub text: String,
    /// Every generated token id, in order.
    pub tokens: Vec<i32>,
    /// Why it ended.
    pub reason: Option<FinishReason>,
    /// Token counts.
    pub usage: Usage,
}

/// The tokens of a conversation rendered with `template`, ending with the assistant's turn
/// opened: template text may hold control tokens, message content is plain text.
fn chat_tokens<B: Backend>(
    backend: &B,
    template: Option<&ChatTemplate>,
    label: &str,
    messages: &[Message],
) -> Result<Vec<i32>> {
    if messages.is_empty() {
        return Err(Error::Request("the conversation has no messages".into()));
    }
    let template = template
        .ok_or_else(|| Error::model(label, "has no chat template; use a plain text prompt"))?;
    let segments = template.render(messages, true)?;
    let mut tokens = Vec::new();
    for segment in segments {
        match segment {
            Segment::Template(text) => tokens.extend(backend.tokenize(&text, true)),
            Segment::Content(text) => tokens.extend(backend.tokenize(&text, false)),
        }
    }
    // Templates that write the BOS token themselves must not get a second one.
    if let Some(start) = backend.prompt_start()
        && tokens.first() != Some(&start)
    {
        tokens.insert(0, start);
    }
    Ok(tokens)
}

/// The tokens of plain text, after the start token if the model wants one.
fn text_tokens<B: Backend>(backend: &B, text: &str) -> Vec<i32> {
    let mut tokens: Vec<i32> = backend.prompt_start().into_iter().collect();
    tokens.extend(backend.tokenize(text, false));
    tokens
}

/// A GGUF model's tokeniser and chat template without its weights: turns a request's prompt
/// into exactly the tokens the embedded engine would decode, for engine processes that take
/// token ids (llama-server). Loading it maps the file's metadata, not its tensors.
pub struct Prompter {
    backend: LlamaCpp,
    template: Option<ChatTemplate>,
    label: String,
}

impl std::fmt::Debug for Prompter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prompter")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Prompter {
    /// Reads the vocabulary and chat template of the model's one GGUF file, after the same
    /// checks as a full load.
    pub fn load(files: &ModelFiles) -> Result<Self> {
        let (backend, template) = LlamaCpp::load_vocabulary(files)?;
        Ok(Self {
            backend,
            template,
            label: files.label().to_owned(),
        })
    }

    /// The tokens of `prompt`: a conversation through the chat template, or plain text.
    pub fn tokens(&self, prompt: &Prompt) -> Result<Vec<i32>> {
        match prompt {
            Prompt::Chat(messages) => {
                chat_tokens(&self.backend, self.template.as_ref(), &self.label, messages)
            }
            Prompt::Text(text) => Ok(text_tokens(&self.backend, text)),
        }
    }

    /// The context the model was trained with.
    pub fn training_context(&self) -> usize {
        self.backend.training_context()
    }
}

/// A [`Generation`] read as the interface's [`ChatEvent`]s: token ids dropped, empty text
/// skipped, text released at the end sent before the ending.
struct ChatEvents {
    generation: Generation,
    /// What follows the event just returned (a token's text after its log-probability, the
    /// ending after the last text).
    next: Option<ChatEvent>,
}

impl Stream for ChatEvents {
    type Item = Result<ChatEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(event) = self.next.take() {
            return Poll::Ready(Some(Ok(event)));
        }
        loop {
            let event = match self.generation.events.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(event))) => event,
            };
            match event {
                Event::Token {
                    text,
                    logprobs: Some(logprobs),
                    ..
                } => {
                    self.next = (!text.is_empty()).then_some(ChatEvent::Text(text));
                    return Poll::Ready(Some(Ok(ChatEvent::Logprobs(*logprobs))));
                }
                Event::Token { text, .. } if text.is_empty() => {}
                Event::Token { text, .. } => return Poll::Ready(Some(Ok(ChatEvent::Text(text)))),
                Event::Done {
                    text,
                    reason,
                    stop_sequence,
                    usage,
                } => {
                    let ending = Ending {
                        reason,
                        stop_sequence,
                        usage,
                    };
                    if text.is_empty() {
                        return Poll::Ready(Some(Ok(ChatEvent::Done(ending))));
                    }
                    self.next = Some(ChatEvent::Done(ending));
                    return Poll::Ready(Some(Ok(ChatEvent::Text(text))));
                }
            }
        }
    }
}

struct Job {
    prompt: Vec<i32>,
    params: GenerateParams,
    events: UnboundedSender<Result<Event>>,
}

/// Counters the API side reads without talking to the worker.
#[derive(Debug, Default)]
struct Load {
    running: AtomicUsize,
    queued: AtomicUsize,
}

/// What the engine knows about a loaded chat model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatModelInfo {
    /// Which model (e.g. `smollm2:1.0.0`).
    pub label: String,
    /// `general.architecture`.
    pub architecture: String,
    /// Tokens one sequence may hold.
    pub context_per_slot: usize,
    /// The context the model was trained with.
    pub training_context: usize,
    /// Generations that run at once.
    pub slots: usize,
    /// Vocabulary size.
    pub vocabulary: usize,
}

/// A loaded chat model and the worker that runs it. `B` is the runtime; llama.cpp unless
/// another backend was started with [`ChatModel::start`].
pub struct ChatModel<B: Backend = LlamaCpp> {
    backend: Arc<B>,
    template: Option<ChatTemplate>,
    info: ChatModelInfo,
    jobs: Option<SyncSender<Job>>,
    load: Arc<Load>,
    worker: Option<JoinHandle<()>>,
}

impl<B: Backend> std::fmt::Debug for ChatModel<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl ChatConfig {
    fn check(&self) -> Result<()> {
        let out_of = |what: &str, value: usize, most: usize| {
            Err(Error::Request(format!(
                "{what} is {value}; it must be 1 to {most}"
            )))
        };
        if self.slots == 0 || self.slots > 256 {
            return out_of("slots", self.slots, 256);
        }
        // Zero threads or a batch smaller than the slots are raised to the least that works;
        // beyond these bounds a runtime would refuse every decode, so refuse them here.
        if self.threads > 1024 {
            return out_of("threads", self.threads, 1024);
        }
        if self.batch_tokens > 65_536 {
            return out_of("batch_tokens", self.batch_tokens, 65_536);
        }
        Ok(())
    }
}

impl ChatModel<LlamaCpp> {
    /// Loads the model's one GGUF file (memory-mapped by llama.cpp), after checking that its
    /// hyperparameters are consistent and its chat template renders in the sandbox, and starts
    /// its worker.
    pub fn load(files: &ModelFiles, config: &ChatConfig) -> Result<Self> {
        // Refuse a bad configuration before the file is mapped; `start` checks it for every
        // backend.
        config.check()?;
        let (backend, template) = LlamaCpp::load(files)?;
        Self::start(files.label(), backend, template, config)
    }
}

impl<B: Backend> ChatModel<B> {
    /// Starts the worker for a loaded `backend`, labelled `label` in errors and
    /// [`ChatModelInfo`]. `template` renders conversations for [`ChatModel::chat_prompt`].
    pub fn start(
        label: &str,
        backend: B,
        template: Option<ChatTemplate>,
        config: &ChatConfig,
    ) -> Result<Self> {
        config.check()?;
        let training_context = backend.training_context();
        let context_per_slot = config
            .context_per_slot
            .unwrap_or(training_context.min(4096))
            .min(training_context)
            .max(16);
        let info = ChatModelInfo {
            label: label.to_owned(),
            architecture: backend.architecture().to_owned(),
            context_per_slot,
            training_context,
            slots: config.slots,
            vocabulary: backend.vocabulary(),
        };
        let shape = DecoderShape {
            slots: config.slots,
            context_per_slot,
            batch_tokens: config.batch_tokens.max(config.slots),
            threads: config.threads.max(1),
        };
        let backend = Arc::new(backend);
        let (jobs, queue) = sync_channel(config.queue);
        let load = Arc::new(Load::default());
        let (ready_tx, ready_rx) = sync_channel(1);
        let worker = {
            let backend = Arc::clone(&backend);
            let load = Arc::clone(&load);
            std::thread::Builder::new()
                .name(format!("airlock-engine {label}"))
                .spawn(move || scheduler::run(&*backend, shape, &queue, &load, ready_tx))
                .map_err(|e| Error::Inference(format!("cannot start the worker thread: {e}")))?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = worker.join();
                return Err(Error::model(label, e));
            }
            Err(_) => {
                let _ = worker.join();
                return Err(Error::model(label, "the worker ended while starting"));
            }
        }
        Ok(Self {
            backend,
            template,
            info,
            jobs: Some(jobs),
            load,
            worker: Some(worker),
        })
    }

    /// Scoring state on this model's weights, beside (not behind) the generation worker:
    /// up to `sequences` sequences of up to `context` tokens at once.
    pub fn scorer(
        &self,
        sequences: usize,
        context: usize,
        threads: usize,
    ) -> Result<Scorer<'_, B>> {
        Scorer::new(&*self.backend, sequences, context, threads)
    }

    /// The token every prompt must begin with, if the model wants one.
    pub fn prompt_start(&self) -> Option<i32> {
        self.backend.prompt_start()
    }

    /// What was loaded.
    pub fn info(&self) -> &ChatModelInfo {
        &self.info
    }

    /// Generations running now.
    pub fn running(&self) -> usize {
        self.load.running.load(Ordering::Relaxed)
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.load.queued.load(Ordering::Relaxed)
    }

    /// The chat template, if the model has one.
    pub fn template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// Tokenises `text`. With `special`, control-token text such as `<|im_start|>` becomes
    /// the control token; without, it is plain text.
    pub fn tokenize(&self, text: &str, special: bool) -> Vec<i32> {
        self.backend.tokenize(text, special)
    }

    /// The text of `tokens` (control tokens rendered as their text when `special`).
    pub fn detokenize(&self, tokens: &[i32], special: bool) -> String {
        let mut bytes = Vec::new();
        for &token in tokens {
            self.backend.append_piece(token, special, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The prompt tokens of a conversation, rendered with the model's chat template and
    /// ending with the assistant's turn opened. Message content is tokenised as plain text.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<i32>> {
        chat_tokens(
            &*self.backend,
            self.template.as_ref(),
            &self.info.label,
            messages,
        )
    }

    /// The prompt tokens of plain text (no template; control-token text stays plain text).
    pub fn text_prompt(&self, text: &str) -> Vec<i32> {
        text_tokens(&*self.backend, text)
    }

    /// Queues a generation from `prompt` tokens. Refuses at once if the prompt and
    /// `max_tokens` do not fit one sequence's context, or if the queue is full.
    pub fn generate(&self, prompt: Vec<i32>, params: GenerateParams) -> Result<Generation> {
        params.sampling.check()?;
        if prompt.is_empty() {
            return Err(Error::Request("the prompt is empty".into()));
        }
        let vocabulary = self.info.vocabulary as i32;
        if let Some(bad) = prompt.iter().find(|&&t| t < 0 || t >= vocabulary) {
            return Err(Error::Request(format!(
                "token {bad} is outside the {vocabulary}-token vocabulary"
            )));
        }
        if params.stop.len() > 16 || params.stop.iter().any(|s| s.len() > 256) {
            return Err(Error::Request(
                "at most 16 stop sequences of at most 256 bytes each".into(),
            ));
        }
        let context = self.info.context_per_slot;
        let requested = params.max_tokens.unwrap_or(1).max(1);
        if prompt.len() + requested > context {
            return Err(Error::ContextLength {
                prompt: prompt.len(),
                requested,
                context,
            });
        }
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Error::Stopped("shut down".into()))?;
        let (events, rx) = unbounded_channel();
        let job = Job {
            prompt,
            params,
            events,
        };
        self.load.queued.fetch_add(1, Ordering::Relaxed);
        match jobs.try_send(job) {
            Ok(()) => Ok(Generation { events: rx }),
            Err(TrySendError::Full(_)) => {
                self.load.queued.fetch_sub(1, Ordering::Relaxed);
                Err(Error::Busy {
                    running: self.running(),
                    queued: self.queued(),
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.load.queued.fetch_sub(1, Ordering::Relaxed);
                Err(Error::Stopped("the worker has ended".into()))
            }
        }
    }
}

impl<B: Backend> ChatModel<B> {
    /// Starts answering a checked request: renders and tokenises its prompt, fits the
    /// answer's length to the context, and queues it (see [`ChatModel::generate`]).
    pub fn answer(&self, request: ChatRequest) -> Result<ChatStream> {
        let prompt = match &request.prompt {
            Prompt::Chat(messages) => self.chat_prompt(messages)?,
            Prompt::Text(text) => self.text_prompt(text),
        };
        let prompt_tokens = prompt.len();
        let max_tokens = request.answer_tokens(prompt_tokens, self.info.context_per_slot);
        let generation = self.generate(
            prompt,
            GenerateParams {
                max_tokens: Some(max_tokens),
                stop: request.stop,
                sampling: request.sampling,
                ignore_eos: request.ignore_eos,
                cache_scope: request.cache_scope,
                grammar: request.constraint.map(|c| c.grammar().clone()),
                logprobs: request.logprobs,
            },
        )?;
        let events = ChatEvents {
            generation,
            next: None,
        };
        Ok(ChatStream::new(events, Some(prompt_tokens)))
    }
}

impl<B: Backend> ChatEngine for ChatModel<B> {
    fn start(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream>> {
        // Rendering and tokenising a prompt takes microseconds to a millisecond, less than a
        // hop to a blocking thread would cost.
        Box::pin(std::future::ready(self.answer(request)))
    }

    fn count_tokens(&self, prompt: &Prompt) -> Result<usize> {
        Ok(match prompt {
            Prompt::Chat(messages) => self.chat_prompt(messages)?.len(),
            Prompt::Text(text) => self.text_prompt(text).len(),
        })
    }

    fn status(&self) -> EngineStatus {
        EngineStatus::ready(EngineKind::Embedded, self.running(), self.queued())
    }
}

impl<B: Backend> Drop for ChatModel<B> {
    fn drop(&mut self) {
        // Closing the queue ends the worker once its running generations are cancelled or done.
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_greedy_skips_the_sampler_chain() {
        assert!(SamplingParams::greedy().is_plain_greedy());
        let penalised = SamplingParams {
            repetition_penalty: 1.1,
            ..SamplingParams::greedy()
        };
        assert!(!penalised.is_plain_greedy());
        assert!(!SamplingParams::default().is_plain_greedy());
    }
}
