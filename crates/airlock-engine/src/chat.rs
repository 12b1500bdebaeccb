//! GGUF chat models on llama.cpp, with continuous batching.
//!
//! One worker thread owns the llama.cpp context. Every step it admits queued requests into
//! free sequence slots, builds one batch holding the next token of every running generation
//! plus as much of the new prompts as fits, decodes it, and samples each sequence from its
//! own sampler. Requests wait in a bounded queue; when it is full, [`ChatModel::generate`]
//! refuses at once with [`Error::Busy`] rather than letting memory grow.
//!
//! Each sequence has its own KV-cache stream (`kv_unified = false`) and flash attention skips
//! masked cells, so a sequence's arithmetic does not depend on what else shares its batch:
//! the same seed gives the same tokens alone or among fifteen others.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::files::ModelFiles;
use crate::gguf_check;
use crate::template::{ChatTemplate, Message, Segment};
use crate::text::{Release, TextStream};
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

    /// Refuses values outside their meaningful ranges.
    pub fn check(&self) -> Result<()> {
        let bad = |what: &str, v: f32, range: &str| {
            Err(Error::Request(format!("{what} is {v}; it must be {range}")))
        };
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad("temperature", self.temperature, "0 to 2");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "above 0 and at most 1");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "0 to 1");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty,
                "above 0 and at most 10",
            );
        }
        Ok(())
    }

    /// The llama.cpp sampler chain, or `None` for plain greedy decoding, which the worker does
    /// itself: an argmax over the logits, without copying the vocabulary into a candidate
    /// array every step.
    fn sampler(&self, vocabulary: i32) -> Option<LlamaSampler> {
        if self.temperature == 0.0 && self.repetition_penalty == 1.0 {
            return None;
        }
        Some(self.sampler_chain(vocabulary))
    }

    fn sampler_chain(&self, vocabulary: i32) -> LlamaSampler {
        let mut chain = Vec::new();
        if self.repetition_penalty != 1.0 {
            chain.push(LlamaSampler::penalties(
                vocabulary,
                64,
                self.repetition_penalty,
                0.0,
                0.0,
            ));
        }
        if self.temperature == 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if self.top_k > 0 {
                chain.push(LlamaSampler::top_k(self.top_k.min(i32::MAX as u32) as i32));
            }
            if self.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(self.top_p, 1));
            }
            if self.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(self.min_p, 1));
            }
            chain.push(LlamaSampler::temp(self.temperature));
            chain.push(LlamaSampler::dist(self.seed.unwrap_or_else(random_seed)));
        }
        LlamaSampler::chain_simple(chain)
    }
}

fn random_seed() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
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
                Event::Token { id, text } => {
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

struct Job {
    prompt: Vec<LlamaToken>,
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

/// A loaded GGUF chat model and the worker that runs it.
pub struct ChatModel {
    model: Arc<LlamaModel>,
    template: Option<ChatTemplate>,
    info: ChatModelInfo,
    jobs: Option<SyncSender<Job>>,
    load: Arc<Load>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ChatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// llama.cpp's process-wide state, initialised once.
fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp's log goes to `tracing`; without a subscriber it is silent.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Inference(format!("llama.cpp did not initialise: {e}")))
}

/// Bundle path suffix of GGUF weights.
const GGUF: &str = ".gguf";

impl ChatModel {
    /// Loads the model's one GGUF file (memory-mapped by llama.cpp), after checking that its
    /// hyperparameters are consistent and its chat template renders in the sandbox, and starts
    /// its worker.
    pub fn load(files: &ModelFiles, config: &ChatConfig) -> Result<Self> {
        let label = files.label().to_owned();
        let mut ggufs = files.ending_with(GGUF);
        let (_, path) = ggufs
            .next()
            .ok_or_else(|| Error::model(&label, "has no .gguf file"))?;
        if ggufs.next().is_some() {
            return Err(Error::model(
                &label,
                "has more than one .gguf file; split GGUF models are not supported",
            ));
        }
        if config.slots == 0 || config.slots > 256 {
            return Err(Error::Request(format!(
                "slots is {}; it must be 1 to 256",
                config.slots
            )));
        }
        let facts = gguf_check::check(&label, path)?;
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| {
                Error::model(
                    &label,
                    format!("llama.cpp could not load it ({e}); its tensors do not match what a {} model needs", facts.architecture),
                )
            })?;
        let model = Arc::new(model);
        let vocab = model.vocab();
        let token_text = |t: LlamaToken| {
            String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
        };
        let template = match &facts.chat_template {
            Some(source) => Some(
                ChatTemplate::new(source, &token_text(vocab.bos()), &token_text(vocab.eos()))
                    .map_err(|e| Error::model(&label, e.to_string()))?,
            ),
            None => None,
        };
        let training_context = facts.context_length as usize;
        let context_per_slot = config
            .context_per_slot
            .unwrap_or(training_context.min(4096))
            .min(training_context)
            .max(16);
        let info = ChatModelInfo {
            label: label.clone(),
            architecture: facts.architecture,
            context_per_slot,
            training_context,
            slots: config.slots,
            vocabulary: vocab.n_tokens().max(0) as usize,
        };
        let (jobs, queue) = sync_channel(config.queue);
        let load = Arc::new(Load::default());
        let (ready_tx, ready_rx) = sync_channel(1);
        let worker = {
            let model = Arc::clone(&model);
            let load = Arc::clone(&load);
            let config = config.clone();
            std::thread::Builder::new()
                .name(format!("airlock-engine {label}"))
                .spawn(move || worker(&model, &config, context_per_slot, &queue, &load, ready_tx))
                .map_err(|e| Error::Inference(format!("cannot start the worker thread: {e}")))?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = worker.join();
                return Err(Error::model(&label, e));
            }
            Err(_) => {
                let _ = worker.join();
                return Err(Error::model(&label, "the worker ended while starting"));
            }
        }
        Ok(Self {
            model,
            template,
            info,
            jobs: Some(jobs),
            load,
            worker: Some(worker),
        })
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
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, special)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// The text of `tokens` (control tokens rendered as their text when `special`).
    pub fn detokenize(&self, tokens: &[i32], special: bool) -> String {
        let vocab = self.model.vocab();
        let mut bytes = Vec::new();
        for &t in tokens {
            vocab.token_to_piece_into(LlamaToken(t), &mut bytes, special, None);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The prompt tokens of a conversation, rendered with the model's chat template and
    /// ending with the assistant's turn opened. Message content is tokenised as plain text.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<i32>> {
        if messages.is_empty() {
            return Err(Error::Request("the conversation has no messages".into()));
        }
        let template = self.template.as_ref().ok_or_else(|| {
            Error::model(
                &self.info.label,
                "has no chat template; use a plain text prompt",
            )
        })?;
        let segments = template.render(messages, true)?;
        let mut tokens = Vec::new();
        for segment in segments {
            match segment {
                Segment::Template(text) => tokens.extend(self.tokenize(&text, true)),
                Segment::Content(text) => tokens.extend(self.tokenize(&text, false)),
            }
        }
        // Templates that write the BOS token themselves must not get a second one.
        if let Some(&bos) = self.bos_if_wanted().first()
            && tokens.first() != Some(&bos)
        {
            tokens.insert(0, bos);
        }
        Ok(tokens)
    }

    /// The prompt tokens of plain text (no template; control-token text stays plain text).
    pub fn text_prompt(&self, text: &str) -> Vec<i32> {
        let mut tokens = self.bos_if_wanted();
        tokens.extend(self.tokenize(text, false));
        tokens
    }

    fn bos_if_wanted(&self) -> Vec<i32> {
        let vocab = self.model.vocab();
        if vocab.should_add_bos() {
            vec![vocab.bos().0]
        } else {
            Vec::new()
        }
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
            prompt: prompt.into_iter().map(LlamaToken).collect(),
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

impl Drop for ChatModel {
    fn drop(&mut self) {
        // Closing the queue ends the worker once its running generations are cancelled or done.
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// A generation occupying a sequence slot.
struct Slot {
    seq: i32,
    job: Job,
    sampler: Option<LlamaSampler>,
    /// Prompt tokens already in the KV cache.
    fed: usize,
    /// The token to feed next once the prompt is in.
    next: Option<LlamaToken>,
    /// Index of this slot's logits in the current batch.
    logits_at: Option<i32>,
    generated: usize,
    text: TextStream,
}

impl Slot {
    fn position(&self) -> usize {
        self.fed + self.generated.saturating_sub(1)
    }

    fn finish(&mut self, reason: FinishReason, stop_sequence: Option<String>) {
        let text = self.text.finish();
        let _ = self.job.events.send(Ok(Event::Done {
            text,
            reason,
            stop_sequence,
            usage: Usage {
                prompt_tokens: self.job.prompt.len(),
                completion_tokens: self.generated,
            },
        }));
    }
}

fn worker(
    model: &LlamaModel,
    config: &ChatConfig,
    context_per_slot: usize,
    queue: &Receiver<Job>,
    load: &Load,
    ready: SyncSender<std::result::Result<(), String>>,
) {
    let setup = || -> std::result::Result<LlamaContext<'_>, String> {
        let backend = backend().map_err(|e| e.to_string())?;
        let total = u32::try_from(context_per_slot * config.slots)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or("context too large")?;
        let threads = i32::try_from(config.threads.max(1)).unwrap_or(1);
        let batch = u32::try_from(config.batch_tokens.max(config.slots)).unwrap_or(512);
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(total))
            .with_n_seq_max(config.slots as u32)
            .with_kv_unified(false)
            .with_n_batch(batch)
            .with_n_ubatch(batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED);
        model
            .new_context(backend, params)
            .map_err(|e| format!("llama.cpp could not create a context: {e}"))
    };
    let mut ctx = match setup() {
        Ok(ctx) => {
            let _ = ready.send(Ok(()));
            ctx
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let vocab = model.vocab();
    let mut batch = LlamaBatch::new(config.batch_tokens.max(config.slots), 1);
    // llama.cpp splits a batch over separate per-sequence caches into one compute per run
    // of consecutive sequence ids (ascending). Handing out the lowest free id and feeding
    // sequences in id order keeps a whole decode step in one compute.
    let mut free: BTreeSet<i32> = (0..config.slots as i32).collect();
    let mut running: Vec<Slot> = Vec::with_capacity(config.slots);
    let mut piece = Vec::new();
    let mut closed = false;
    loop {
        // Admit waiting requests into free slots; wait only when nothing is running.
        while !closed && !free.is_empty() {
            let job = if running.is_empty() {
                match queue.recv() {
                    Ok(job) => job,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            } else {
                match queue.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            };
            load.queued.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                continue;
            }
            let Some(seq) = free.pop_first() else { break };
            load.running.fetch_add(1, Ordering::Relaxed);
            running.push(Slot {
                seq,
                sampler: job.params.sampling.sampler(vocab.n_tokens()),
                text: TextStream::new(&job.params.stop),
                job,
                fed: 0,
                next: None,
                logits_at: None,
                generated: 0,
            });
        }
        if running.is_empty() {
            if closed {
                return;
            }
            continue;
        }

        // Cancelled generations free their slot before the step.
        running.retain(|slot| {
            if slot.job.events.is_closed() {
                release(&mut ctx, &mut free, load, slot.seq);
                false
            } else {
                true
            }
        });

        // One batch: every decoding sequence's next token first, then prompt chunks.
        running.sort_unstable_by_key(|slot| slot.seq);
        batch.clear();
        let capacity = config.batch_tokens.max(config.slots);
        let mut add_failed = None;
        for slot in running.iter_mut() {
            slot.logits_at = None;
            if let Some(token) = slot.next {
                let at = batch.n_tokens();
                if let Err(e) = batch.add(token, slot.position() as i32, &[slot.seq], true) {
                    add_failed = Some(e.to_string());
                }
                slot.logits_at = Some(at);
            }
        }
        for slot in running.iter_mut() {
            if slot.next.is_some() {
                continue;
            }
            let room = capacity.saturating_sub(batch.n_tokens() as usize);
            let take = (slot.job.prompt.len() - slot.fed).min(room);
            for i in slot.fed..slot.fed + take {
                let last = i + 1 == slot.job.prompt.len();
                if last {
                    slot.logits_at = Some(batch.n_tokens());
                }
                if let Err(e) = batch.add(slot.job.prompt[i], i as i32, &[slot.seq], last) {
                    add_failed = Some(e.to_string());
                }
            }
            slot.fed += take;
        }
        let decoded = match add_failed {
            Some(e) => Err(e),
            None if batch.n_tokens() == 0 => Ok(()),
            None => ctx.decode(&mut batch).map_err(|e| e.to_string()),
        };
        if let Err(e) = decoded {
            for slot in running.drain(..) {
                let _ = slot.job.events.send(Err(Error::Inference(e.clone())));
                release(&mut ctx, &mut free, load, slot.seq);
            }
            continue;
        }

        // Sample every sequence that produced logits and stream what became visible.
        let mut finished = Vec::new();
        for (index, slot) in running.iter_mut().enumerate() {
            let Some(at) = slot.logits_at else { continue };
            let token = match &mut slot.sampler {
                Some(sampler) => sampler.sample(&ctx, at),
                None => LlamaToken(argmax(ctx.get_logits_ith(at))),
            };
            slot.generated += 1;
            if vocab.is_eog(token) && !slot.job.params.ignore_eos {
                slot.generated -= 1;
                slot.finish(FinishReason::Stop, None);
                finished.push(index);
                continue;
            }
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            let (text, stopped) = match slot.text.push(&piece) {
                Release::Text(t) => (t, None),
                Release::Stopped { text, stop } => (text, Some(stop)),
            };
            let _ = slot.job.events.send(Ok(Event::Token { id: token.0, text }));
            let at_limit = slot
                .job
                .params
                .max_tokens
                .is_some_and(|m| slot.generated >= m);
            let context_full = slot.fed + slot.generated >= context_per_slot;
            if let Some(stop) = stopped {
                slot.finish(FinishReason::Stop, Some(stop));
                finished.push(index);
            } else if at_limit || context_full {
                slot.finish(FinishReason::Length, None);
                finished.push(index);
            } else {
                slot.next = Some(token);
            }
        }
        for index in finished.into_iter().rev() {
            let slot = running.swap_remove(index);
            release(&mut ctx, &mut free, load, slot.seq);
        }
    }
}

/// The index of the first largest logit: what llama.cpp's greedy sampler picks.
fn argmax(logits: &[f32]) -> i32 {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    // A vocabulary index always fits: llama.cpp counts tokens in i32.
    best as i32
}

fn release(ctx: &mut LlamaContext<'_>, free: &mut BTreeSet<i32>, load: &Load, seq: i32) {
    // A sequence id is always a small non-negative slot number.
    let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
    free.insert(seq);
    load.running.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_picks_the_first_of_equal_largest_logits_as_llama_cpp_greedy_does() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[3.0]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1e30, -1e30]), 1);
    }

    #[test]
    fn only_plain_greedy_skips_the_sampler_chain() {
        assert!(SamplingParams::greedy().sampler(100).is_none());
        let penalised = SamplingParams {
            repetition_penalty: 1.1,
            ..SamplingParams::greedy()
        };
        assert!(penalised.sampler(100).is_some());
        assert!(SamplingParams::default().sampler(100).is_some());
    }
}
