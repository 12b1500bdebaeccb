//! The continuous-batching scheduler, driven through the public [`Backend`] trait by a
//! second backend: a scripted "echo" model whose decoder checks every batch it is given.
//!
//! The echo model reads a prompt `BOS text |` and answers `text` over and over; a `#` in the
//! text ends its turn there. Its next token depends on the whole history of its sequence, so
//! a token fed to the wrong sequence or at the wrong position changes the answer, and its
//! decoder refuses any batch that skips or repeats a position or overfills the batch.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "the test backend's helpers: a broken expectation is a failed test"
)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_engine::{
    Backend, BatchToken, ChatConfig, ChatModel, Completion, Decoder, DecoderShape, Error, Event,
    FinishReason, GenerateParams, Generation, SamplingParams,
};

const END: i32 = 256;
const BOS: i32 = 257;
const VOCABULARY: usize = 258;

/// What the echo decoder saw, for the tests to read.
#[derive(Debug, Default, Clone)]
struct Seen {
    decodes: usize,
    /// Most distinct sequences in one batch.
    widest: usize,
    /// Batches that fed one sequence's prompt beside another's generated token.
    mixed: usize,
    largest_batch: usize,
    /// Tokens decoded, over all batches.
    tokens: usize,
    forgotten: Vec<usize>,
}

#[derive(Debug, Default)]
struct Controls {
    seen: Mutex<Seen>,
    /// Pause in every decode, so tests can act while generations run.
    step_micros: AtomicU64,
    /// The next decode fails, as a runtime whose device went away would.
    fail_next: AtomicBool,
    /// The decoder cannot cut a sequence short, as a recurrent model's cannot.
    refuse_cuts: AtomicBool,
    /// The decoder cannot copy one sequence into another.
    refuse_shares: AtomicBool,
    /// Held by a test, every decode waits for it.
    gate: Mutex<()>,
    /// Decodes begun, counted before the gate.
    decodes_begun: AtomicUsize,
}

#[derive(Debug)]
struct Echo {
    training_context: usize,
    /// Decoders for more slots than this cannot be made.
    max_slots: usize,
    controls: Arc<Controls>,
}

impl Controls {
    /// A copy of what the decoder has seen so far.
    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

impl Echo {
    fn new(training_context: usize) -> (Self, Arc<Controls>) {
        let controls = Arc::new(Controls::default());
        let echo = Self {
            training_context,
            max_slots: 64,
            controls: Arc::clone(&controls),
        };
        (echo, controls)
    }
}

/// The echo model's choice after `history`.
fn echo_next(history: &[i32]) -> i32 {
    let Some(bar) = history.iter().position(|&t| t == i32::from(b'|')) else {
        return END;
    };
    let text = &history[1..bar];
    if text.is_empty() {
        return END;
    }
    let next = text[(history.len() - bar - 1) % text.len()];
    if next == i32::from(b'#') { END } else { next }
}

impl Backend for Echo {
    type Decoder<'m> = EchoDecoder;

    fn architecture(&self) -> &str {
        "echo"
    }

    fn training_context(&self) -> usize {
        self.training_context
    }

    fn vocabulary(&self) -> usize {
        VOCABULARY
    }

    fn tokenize(&self, text: &str, _special: bool) -> Vec<i32> {
        text.bytes().map(i32::from).collect()
    }

    fn append_piece(&self, token: i32, special: bool, out: &mut Vec<u8>) {
        match u8::try_from(token) {
            Ok(byte) => out.push(byte),
            Err(_) if special => {
                out.extend_from_slice(if token == END { b"<end>" } else { b"<bos>" })
            }
            Err(_) => {}
        }
    }

    fn prompt_start(&self) -> Option<i32> {
        Some(BOS)
    }

    fn ends_turn(&self, token: i32) -> bool {
        token == END
    }

    fn decoder(&self, shape: &DecoderShape) -> Result<EchoDecoder, String> {
        if shape.slots > self.max_slots {
            return Err(format!(
                "{} slots asked for, {} fit",
                shape.slots, self.max_slots
            ));
        }
        Ok(EchoDecoder {
            shape: *shape,
            histories: vec![Vec::new(); shape.slots],
            logits: Vec::new(),
            controls: Arc::clone(&self.controls),
        })
    }
}

#[derive(Debug)]
struct EchoDecoder {
    shape: DecoderShape,
    histories: Vec<Vec<i32>>,
    /// Logits of the last batch, by batch index, where asked for.
    logits: Vec<Option<Vec<f32>>>,
    controls: Arc<Controls>,
}

/// A seeded sampler: half the time the model's choice, half a seeded random letter.
#[derive(Debug)]
struct Dice(u64);

impl Decoder for EchoDecoder {
    type Sampler = Dice;

    fn sampler(&self, params: &SamplingParams, grammar: Option<&str>) -> Result<Dice, String> {
        match grammar {
            Some("unparseable") => return Err("the grammar does not parse".into()),
            Some(_) => {}
            None => assert!(params.temperature > 0.0 || params.repetition_penalty != 1.0),
        }
        Ok(Dice(u64::from(params.seed.unwrap_or(7)) | 1))
    }

    fn decode(&mut self, batch: &[BatchToken]) -> Result<(), String> {
        self.controls.decodes_begun.fetch_add(1, Ordering::Relaxed);
        drop(self.controls.gate.lock().unwrap());
        std::thread::sleep(Duration::from_micros(
            self.controls.step_micros.load(Ordering::Relaxed),
        ));
        if self.controls.fail_next.swap(false, Ordering::Relaxed) {
            return Err("the device went away".into());
        }
        if batch.len() > self.shape.batch_tokens {
            return Err(format!(
                "{} tokens in a batch of {}",
                batch.len(),
                self.shape.batch_tokens
            ));
        }
        self.logits.clear();
        let mut sequences = BTreeSet::new();
        let (mut prompt_tokens, mut answer_tokens) = (false, false);
        for t in batch {
            let history = self
                .histories
                .get_mut(t.seq)
                .ok_or_else(|| format!("sequence {} of {}", t.seq, self.shape.slots))?;
            if t.position != history.len() {
                return Err(format!(
                    "sequence {} fed position {} after {} tokens",
                    t.seq,
                    t.position,
                    history.len()
                ));
            }
            if t.position + 1 > self.shape.context_per_slot {
                return Err(format!("sequence {} overflows its context", t.seq));
            }
            let in_prompt = !history.contains(&i32::from(b'|')) || t.token == i32::from(b'|');
            prompt_tokens |= in_prompt;
            answer_tokens |= !in_prompt;
            history.push(t.token);
            sequences.insert(t.seq);
            self.logits.push(t.logits.then(|| {
                let mut row = vec![0.0; VOCABULARY];
                row[echo_next(history) as usize] = 1.0;
                row
            }));
        }
        let mut seen = self.controls.seen.lock().unwrap();
        seen.decodes += 1;
        seen.widest = seen.widest.max(sequences.len());
        seen.largest_batch = seen.largest_batch.max(batch.len());
        seen.tokens += batch.len();
        seen.mixed += usize::from(prompt_tokens && answer_tokens);
        Ok(())
    }

    fn logits(&self, index: usize) -> &[f32] {
        self.logits[index]
            .as_deref()
            .expect("logits only where the batch asked for them")
    }

    fn sample(&mut self, dice: &mut Dice, index: usize) -> Result<i32, String> {
        dice.0 ^= dice.0 << 13;
        dice.0 ^= dice.0 >> 7;
        dice.0 ^= dice.0 << 17;
        Ok(if dice.0.is_multiple_of(2) {
            let row = self.logits(index);
            row.iter().position(|&l| l == 1.0).unwrap() as i32
        } else {
            i32::from(b'a') + (dice.0 % 26) as i32
        })
    }

    fn forget(&mut self, seq: usize) {
        self.histories[seq].clear();
        self.controls.seen.lock().unwrap().forgotten.push(seq);
    }

    fn truncate(&mut self, seq: usize, len: usize) -> bool {
        let history = &mut self.histories[seq];
        assert!(
            len <= history.len(),
            "sequence {seq} cut to {len} of its {} tokens",
            history.len()
        );
        if len > 0 && self.controls.refuse_cuts.load(Ordering::Relaxed) {
            self.forget(seq);
            return false;
        }
        history.truncate(len);
        true
    }

    fn share(&mut self, from: usize, to: usize, len: usize) -> bool {
        assert!(
            len <= self.histories[from].len(),
            "sequence {from} shares {len} of its {} tokens",
            self.histories[from].len()
        );
        if self.controls.refuse_shares.load(Ordering::Relaxed) {
            self.forget(to);
            return false;
        }
        self.histories[to] = self.histories[from][..len].to_vec();
        true
    }
}

fn start(config: ChatConfig, training_context: usize) -> (ChatModel<Echo>, Arc<Controls>) {
    let (echo, controls) = Echo::new(training_context);
    let model = ChatModel::start("echo:1", echo, None, &config).unwrap();
    (model, controls)
}

fn config(slots: usize) -> ChatConfig {
    ChatConfig {
        threads: 1,
        slots,
        context_per_slot: None,
        queue: 64,
        batch_tokens: 512,
    }
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens: Some(max_tokens),
        sampling: SamplingParams::greedy(),
        ..GenerateParams::default()
    }
}

/// The greedy answer to `text`, up to `max_tokens`.
fn answer(model: &ChatModel<Echo>, text: &str, max_tokens: usize) -> String {
    model
        .generate(model.text_prompt(text), greedy(max_tokens))
        .unwrap()
        .collect_blocking()
        .unwrap()
        .text
}

/// A generation of thousands of tokens, once its first token has come.
fn running_long(model: &ChatModel<Echo>, text: &str) -> Generation {
    let mut generation = model
        .generate(model.text_prompt(text), greedy(4000))
        .unwrap();
    assert!(matches!(
        generation.next_blocking(),
        Some(Ok(Event::Token { .. }))
    ));
    generation
}

/// Waits (at most 10 s) until `done` holds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_generation_streams_its_answer_and_ends_at_the_end_of_turn_with_its_usage() {
    let (model, _) = start(config(1), 256);
    let prompt = model.text_prompt("hi#|");
    assert_eq!(prompt[0], BOS);
    let mut generation = model.generate(prompt, greedy(50)).unwrap();
    let mut streamed = Vec::new();
    let done = loop {
        match generation.next_blocking().unwrap().unwrap() {
            Event::Token { id, text, .. } => streamed.push((id, text)),
            done @ Event::Done { .. } => break done,
        }
    };
    assert_eq!(
        streamed,
        [(i32::from(b'h'), "h".into()), (i32::from(b'i'), "i".into())]
    );
    let Event::Done {
        text,
        reason,
        stop_sequence,
        usage,
    } = done
    else {
        unreachable!()
    };
    assert_eq!(
        (text.as_str(), reason, stop_sequence),
        ("", FinishReason::Stop, None)
    );
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 2));
    assert!(generation.next_blocking().is_none());
    assert_eq!(model.info().architecture, "echo");
}

#[test]
fn max_tokens_and_a_full_context_both_end_with_length_and_oversized_requests_are_refused() {
    let (model, _) = start(config(1), 16);
    let out = model
        .generate(model.text_prompt("abc|"), greedy(5))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(
        (out.text.as_str(), out.reason),
        ("abcab", Some(FinishReason::Length))
    );

    // 11 prompt tokens in a 16-token context: the answer runs until the context is full.
    let unbounded = GenerateParams {
        max_tokens: None,
        ..greedy(0)
    };
    let out = model
        .generate(model.text_prompt("abcdefghi|"), unbounded)
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(
        (out.text.as_str(), out.reason),
        ("abcde", Some(FinishReason::Length))
    );
    assert_eq!(out.usage.prompt_tokens + out.usage.completion_tokens, 16);

    let refused = model
        .generate(model.text_prompt("abcdefghi|"), greedy(6))
        .unwrap_err();
    assert!(
        matches!(
            refused,
            Error::ContextLength {
                prompt: 11,
                requested: 6,
                context: 16
            }
        ),
        "{refused}"
    );
    let bad_token = model.generate(vec![BOS, 258], greedy(1)).unwrap_err();
    assert_eq!(
        bad_token.to_string(),
        "token 258 is outside the 258-token vocabulary"
    );
}

#[test]
fn a_stop_sequence_spanning_tokens_ends_the_answer_and_none_of_it_is_ever_streamed() {
    let (model, _) = start(config(1), 256);
    let params = GenerateParams {
        stop: vec!["o w".into(), "never".into()],
        ..greedy(100)
    };
    let mut generation = model
        .generate(model.text_prompt("hello world|"), params)
        .unwrap();
    let mut streamed = String::new();
    loop {
        match generation.next_blocking().unwrap().unwrap() {
            Event::Token { text, .. } => streamed.push_str(&text),
            Event::Done {
                text,
                reason,
                stop_sequence,
                usage,
            } => {
                streamed.push_str(&text);
                assert_eq!(reason, FinishReason::Stop);
                assert_eq!(stop_sequence.as_deref(), Some("o w"));
                // "hello w" is seven tokens; the stop sequence ends with the seventh.
                assert_eq!(usage.completion_tokens, 7);
                break;
            }
        }
    }
    assert_eq!(streamed, "hell");
}

/// Sixteen requests on four slots: greedy and seeded, short and long prompts. Each must
/// equal its run alone, and they must really have shared decode batches.
#[test]
fn sixteen_generations_on_four_slots_share_batches_and_each_equals_its_single_run() {
    let requests: Vec<(String, GenerateParams)> = (0..16)
        .map(|i| {
            let text = format!("{}{i}|", "request-".repeat(1 + i % 5));
            let sampling = if i % 3 == 0 {
                SamplingParams::greedy()
            } else {
                SamplingParams {
                    temperature: 0.8,
                    seed: Some(100 + i as u32),
                    ..SamplingParams::default()
                }
            };
            let params = GenerateParams {
                max_tokens: Some(20 + 3 * i),
                sampling,
                ..GenerateParams::default()
            };
            (text, params)
        })
        .collect();

    let (alone, _) = start(config(1), 512);
    let expected: Vec<_> = requests
        .iter()
        .map(|(text, params)| {
            alone
                .generate(alone.text_prompt(text), params.clone())
                .unwrap()
                .collect_blocking()
                .unwrap()
        })
        .collect();

    let (model, controls) = start(config(4), 512);
    let generations: Vec<_> = requests
        .iter()
        .map(|(text, params)| {
            model
                .generate(model.text_prompt(text), params.clone())
                .unwrap()
        })
        .collect();
    let together: Vec<_> = generations
        .into_iter()
        .map(|g| g.collect_blocking().unwrap())
        .collect();
    for (i, (got, want)) in together.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "request {i}");
    }
    assert_ne!(expected[1].tokens, expected[2].tokens, "seeds differ");

    // A generation's last event goes out just before its slot is released.
    wait_until("every slot is released", || model.running() == 0);
    let seen = controls.seen();
    let tokens: usize = together.iter().map(|c| c.usage.completion_tokens).sum();
    assert_eq!(seen.widest, 4, "{seen:?}");
    assert!(seen.mixed > 0, "new prompts join running decodes: {seen:?}");
    assert!(
        seen.decodes < tokens / 2,
        "{} decodes for {tokens} tokens",
        seen.decodes
    );
    assert_eq!(seen.forgotten.len(), 16);
    assert_eq!((model.running(), model.queued()), (0, 0));
}

#[test]
fn prompts_longer_than_a_batch_are_fed_in_chunks_beside_running_generations() {
    let (model, controls) = start(
        ChatConfig {
            batch_tokens: 8,
            ..config(2)
        },
        512,
    );
    let long = format!("{}|", "0123456789".repeat(10));
    let running = model
        .generate(model.text_prompt("ab|"), greedy(60))
        .unwrap();
    let chunked = model
        .generate(model.text_prompt(&long), greedy(12))
        .unwrap();
    assert_eq!(running.collect_blocking().unwrap().text, "ab".repeat(30));
    assert_eq!(chunked.collect_blocking().unwrap().text, "012345678901");
    let seen = controls.seen();
    assert_eq!(seen.largest_batch, 8, "{seen:?}");
}

#[test]
fn a_full_queue_refuses_at_once_with_busy_and_takes_requests_again_once_it_drains() {
    let (model, controls) = start(
        ChatConfig {
            queue: 2,
            ..config(1)
        },
        4096,
    );
    controls.step_micros.store(2000, Ordering::Relaxed);
    let long = model
        .generate(model.text_prompt("x|"), greedy(4000))
        .unwrap();
    wait_until("the first generation runs", || model.running() == 1);
    let waiting: Vec<_> = (0..2)
        .map(|_| model.generate(model.text_prompt("y|"), greedy(3)).unwrap())
        .collect();
    let busy = model
        .generate(model.text_prompt("z|"), greedy(3))
        .unwrap_err();
    assert!(
        matches!(
            busy,
            Error::Busy {
                running: 1,
                queued: 2
            }
        ),
        "{busy}"
    );

    drop(long);
    controls.step_micros.store(0, Ordering::Relaxed);
    for generation in waiting {
        assert_eq!(generation.collect_blocking().unwrap().text, "yyy");
    }
    assert_eq!(answer(&model, "z|", 3), "zzz");
}

#[test]
fn a_dropped_generation_frees_its_slot_and_the_next_request_starts_from_an_empty_cache() {
    let (model, controls) = start(config(1), 4096);
    controls.step_micros.store(1000, Ordering::Relaxed);
    let long = running_long(&model, "x|");
    let before = controls.seen().decodes;
    drop(long);
    wait_until("the slot is free", || model.running() == 0);
    let seen = controls.seen();
    assert_eq!(seen.forgotten, [0]);
    // At most the step running when `before` was read and the one running at the drop.
    let after_drop = seen.decodes - before;
    assert!(after_drop <= 2, "{after_drop} steps after the drop");

    controls.step_micros.store(0, Ordering::Relaxed);
    assert_eq!(answer(&model, "ok#|", 10), "ok");
}

#[test]
fn a_failed_decode_fails_every_running_generation_and_the_model_keeps_serving() {
    let (model, controls) = start(config(2), 4096);
    controls.step_micros.store(1000, Ordering::Relaxed);
    let first = running_long(&model, "a|");
    let second = running_long(&model, "b|");
    controls.fail_next.store(true, Ordering::Relaxed);
    for mut generation in [first, second] {
        let failure = loop {
            match generation.next_blocking() {
                Some(Ok(Event::Token { .. })) => continue,
                other => break other,
            }
        };
        let message = failure.unwrap().unwrap_err().to_string();
        assert_eq!(message, "inference failed: the device went away");
        assert!(generation.next_blocking().is_none());
    }
    wait_until("both slots are free", || model.running() == 0);

    controls.step_micros.store(0, Ordering::Relaxed);
    assert_eq!(answer(&model, "c#|", 5), "c");
}

#[test]
fn a_backend_that_cannot_make_its_decoder_is_a_clear_load_error() {
    let (echo, _) = Echo::new(256);
    let error = ChatModel::start("echo:1", echo, None, &config(65)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "model echo:1: 65 slots asked for, 64 fit"
    );
}

#[test]
fn a_configuration_no_runtime_could_take_is_refused_by_name() {
    let refused = |config: ChatConfig| {
        let (echo, _) = Echo::new(256);
        ChatModel::start("echo:1", echo, None, &config)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(refused(config(0)), "slots is 0; it must be 1 to 256");
    assert_eq!(refused(config(257)), "slots is 257; it must be 1 to 256");
    let too_many_threads = ChatConfig {
        threads: 5000,
        ..config(1)
    };
    assert_eq!(
        refused(too_many_threads),
        "threads is 5000; it must be 1 to 1024"
    );
    let huge_batch = ChatConfig {
        batch_tokens: 1 << 20,
        ..config(1)
    };
    assert_eq!(
        refused(huge_batch),
        "batch_tokens is 1048576; it must be 1 to 65536"
    );
}

/// A greedy generation of `max_tokens` from `prompt` whose cache is kept for `scope`.
fn scoped(model: &ChatModel<Echo>, prompt: &[i32], max_tokens: usize, scope: &str) -> Completion {
    let params = GenerateParams {
        cache_scope: Some(scope.into()),
        ..greedy(max_tokens)
    };
    model
        .generate(prompt.to_vec(), params)
        .unwrap()
        .collect_blocking()
        .unwrap()
}

/// A conversation's next prompt: the last prompt, its answer's tokens, then `said`.
fn next_turn(prompt: &[i32], answer: &Completion, said: &str) -> Vec<i32> {
    let mut next = prompt.to_vec();
    next.extend(&answer.tokens);
    next.extend(said.bytes().map(i32::from));
    next
}

/// The same generation on a fresh model, which has nothing to reuse.
fn cold(prompt: &[i32], max_tokens: usize) -> Completion {
    let (model, _) = start(config(1), 256);
    model
        .generate(prompt.to_vec(), greedy(max_tokens))
        .unwrap()
        .collect_blocking()
        .unwrap()
}

#[test]
fn the_next_turn_of_a_conversation_decodes_only_its_new_tokens_and_answers_as_if_cold() {
    let (model, controls) = start(config(2), 256);
    let first_prompt = model.text_prompt("abcd|");
    let first = scoped(&model, &first_prompt, 6, "alice");
    assert_eq!(
        (first.text.as_str(), first.usage.cached_tokens),
        ("abcdab", 0)
    );

    let second_prompt = next_turn(&first_prompt, &first, "xy");
    let before = controls.seen().tokens;
    let second = scoped(&model, &second_prompt, 5, "alice");
    // The cache holds the first prompt and the answer tokens fed back: all but the last.
    let cached = first_prompt.len() + first.tokens.len() - 1;
    assert_eq!(second.usage.cached_tokens, cached);
    assert_eq!(second.usage.prompt_tokens, second_prompt.len());
    assert_eq!(
        controls.seen().tokens - before,
        second_prompt.len() - cached + second.tokens.len() - 1,
        "only the new prompt tokens and the fed-back answer are decoded"
    );
    assert_eq!(
        second,
        Completion {
            usage: second.usage,
            ..cold(&second_prompt, 5)
        }
    );

    // A retry of the same prompt decodes only its last token.
    let retry = scoped(&model, &second_prompt, 5, "alice");
    assert_eq!(retry.usage.cached_tokens, second_prompt.len() - 1);
    assert_eq!(retry.tokens, second.tokens);
}

#[test]
fn a_cache_is_reused_only_by_requests_of_its_own_scope() {
    let (model, controls) = start(config(1), 256);
    let prompt = model.text_prompt("secret|");
    scoped(&model, &prompt, 3, "alice");
    let bob = scoped(&model, &prompt, 3, "bob");
    assert_eq!(
        bob.usage.cached_tokens, 0,
        "another scope's cache is not reused"
    );
    let forgotten = controls.seen().forgotten.len();
    let unscoped = model
        .generate(prompt.clone(), greedy(3))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(unscoped.usage.cached_tokens, 0);
    assert_eq!(unscoped.tokens, bob.tokens);
    // Without a scope nothing is kept: the slot is emptied once the generation finishes.
    wait_until("the unscoped generation's cache is emptied", || {
        controls.seen().forgotten.len() == forgotten + 1
    });
    let again = model
        .generate(prompt.clone(), greedy(3))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(again.usage.cached_tokens, 0);
}

#[test]
fn a_new_conversation_takes_an_empty_slot_and_the_longest_unused_cache_is_given_up_first() {
    let (model, _) = start(config(2), 256);
    let a = model.text_prompt("first|");
    let a1 = scoped(&model, &a, 4, "alice");
    // Sharing only the start token with the kept conversation, it leaves that cache alone.
    let b = model.text_prompt("second|");
    let b1 = scoped(&model, &b, 4, "alice");
    let a2 = scoped(&model, &next_turn(&a, &a1, "more"), 4, "alice");
    assert_eq!(a2.usage.cached_tokens, a.len() + 3);
    // Both slots are kept now; a third conversation gives up the one unused longest (b's).
    let c = model.text_prompt("third|");
    scoped(&model, &c, 4, "alice");
    let b2_prompt = next_turn(&b, &b1, "again");
    let b2 = scoped(&model, &b2_prompt, 4, "alice");
    assert!(
        b2.usage.cached_tokens <= 1,
        "only the start token can be left of b's cache"
    );
    assert_eq!(b2.tokens, cold(&b2_prompt, 4).tokens);
}

#[test]
fn a_cancelled_generation_leaves_nothing_to_reuse() {
    let (model, _) = start(config(1), 8192);
    let prompt = model.text_prompt("abc|");
    let params = GenerateParams {
        cache_scope: Some("alice".into()),
        ..greedy(4000)
    };
    let mut generation = model.generate(prompt.clone(), params).unwrap();
    assert!(matches!(
        generation.next_blocking(),
        Some(Ok(Event::Token { .. }))
    ));
    drop(generation);
    let after = scoped(&model, &prompt, 3, "alice");
    assert_eq!((after.text.as_str(), after.usage.cached_tokens), ("abc", 0));
}

#[test]
fn a_runtime_that_cannot_cut_a_sequence_short_starts_it_over() {
    let (model, controls) = start(config(1), 256);
    controls.refuse_cuts.store(true, Ordering::Relaxed);
    let prompt = model.text_prompt("abcdef|");
    let first = scoped(&model, &prompt, 4, "alice");
    // The same text with a different question needs the cache cut after the shared start.
    let other = model.text_prompt("abcxyz|");
    let answer = scoped(&model, &other, 4, "alice");
    assert_eq!(
        (answer.text.as_str(), answer.usage.cached_tokens),
        ("abcx", 0)
    );
    // A continuation needs no cut, so it still reuses the whole cache.
    let next = next_turn(&other, &answer, "!");
    let reused = scoped(&model, &next, 4, "alice");
    assert_eq!(reused.usage.cached_tokens, other.len() + 3);
    assert_eq!(first.text, "abcd");
}

/// Generations of `prompt`, one per entry of `params`, all started before any is read.
fn side_by_side(
    model: &ChatModel<Echo>,
    prompt: &[i32],
    params: impl IntoIterator<Item = GenerateParams>,
) -> Vec<Completion> {
    let generations: Vec<Generation> = params
        .into_iter()
        .map(|params| model.generate(prompt.to_vec(), params).unwrap())
        .collect();
    generations
        .into_iter()
        .map(|g| g.collect_blocking().unwrap())
        .collect()
}

/// Greedy generations in `scope`s.
fn in_scopes(scopes: &[&str], max_tokens: usize) -> Vec<GenerateParams> {
    scopes
        .iter()
        .map(|scope| GenerateParams {
            cache_scope: Some((*scope).into()),
            ..greedy(max_tokens)
        })
        .collect()
}

/// Like [`side_by_side`], but all admitted in the same step: they are queued while the worker
/// is held inside the decode of a short generation of another scope.
fn admitted_together(
    model: &ChatModel<Echo>,
    controls: &Controls,
    prompt: &[i32],
    params: Vec<GenerateParams>,
) -> Vec<Completion> {
    let gate = controls.gate.lock().unwrap();
    let begun = controls.decodes_begun.load(Ordering::Relaxed);
    let blocker = model
        .generate(model.text_prompt("x#|"), in_scopes(&["other"], 4).remove(0))
        .unwrap();
    wait_until("the worker is inside a decode", || {
        controls.decodes_begun.load(Ordering::Relaxed) > begun
    });
    let generations: Vec<Generation> = params
        .into_iter()
        .map(|params| model.generate(prompt.to_vec(), params).unwrap())
        .collect();
    drop(gate);
    assert_eq!(blocker.collect_blocking().unwrap().text, "x");
    generations
        .into_iter()
        .map(|g| g.collect_blocking().unwrap())
        .collect()
}

/// A prompt long enough to be worth sharing.
fn long_prompt(model: &ChatModel<Echo>) -> Vec<i32> {
    model.text_prompt(&format!("{}|", "the same system prompt, ".repeat(4)))
}

#[test]
fn requests_of_one_scope_admitted_together_with_the_same_prompt_decode_it_once() {
    let (model, controls) = start(config(5), 512);
    let prompt = long_prompt(&model);
    let max_tokens = 6;
    let answers = admitted_together(
        &model,
        &controls,
        &prompt,
        in_scopes(&["alice"; 4], max_tokens),
    );
    let cached: Vec<usize> = answers.iter().map(|a| a.usage.cached_tokens).collect();
    let len = prompt.len();
    assert_eq!(
        cached,
        [0, len, len, len],
        "the first decodes the prompt, the others take all of it and its last logits"
    );
    assert_eq!(
        controls.seen().tokens,
        5 + len + 4 * (max_tokens - 1),
        "the short generation, the prompt once, the fed-back answers"
    );
    let alone = cold(&prompt, max_tokens);
    for answer in &answers {
        assert_eq!(answer.tokens, alone.tokens);
        assert_eq!(answer.usage.prompt_tokens, len);
    }
}

#[test]
fn seeded_requests_share_only_a_whole_prompt_and_each_answers_as_alone() {
    let (model, controls) = start(config(4), 512);
    let prompt = long_prompt(&model);
    let seeded = |seed: u32| GenerateParams {
        cache_scope: Some("alice".into()),
        sampling: SamplingParams {
            temperature: 0.8,
            seed: Some(seed),
            ..SamplingParams::greedy()
        },
        ..greedy(8)
    };
    let answers = admitted_together(&model, &controls, &prompt, (1..=3).map(seeded).collect());
    let len = prompt.len();
    assert_eq!(
        answers
            .iter()
            .map(|a| a.usage.cached_tokens)
            .collect::<Vec<_>>(),
        [0, len, len]
    );
    for (seed, answer) in (1..=3).zip(&answers) {
        let alone = {
            let (fresh, _) = start(config(1), 512);
            fresh
                .generate(
                    prompt.clone(),
                    GenerateParams {
                        cache_scope: None,
                        ..seeded(seed)
                    },
                )
                .unwrap()
                .collect_blocking()
                .unwrap()
        };
        assert_eq!(answer.tokens, alone.tokens, "seed {seed}");
    }
    assert_ne!(answers[0].tokens, answers[1].tokens, "the seeds differ");

    // Once the prompt is decoded, a seeded request decodes it again (its kept cache and a
    // running copy would both give other logits for its last token); one without a seed
    // takes all but the last token from a generation still running.
    controls.step_micros.store(1000, Ordering::Relaxed);
    let mut running = model
        .generate(prompt.clone(), in_scopes(&["alice"], 400).remove(0))
        .unwrap();
    assert!(matches!(
        running.next_blocking(),
        Some(Ok(Event::Token { .. }))
    ));
    let again = side_by_side(&model, &prompt, [seeded(1)]);
    assert_eq!(again[0].usage.cached_tokens, 0);
    assert_eq!(again[0].tokens, answers[0].tokens);
    let unseeded = side_by_side(&model, &prompt, in_scopes(&["alice"], 4));
    assert_eq!(unseeded[0].usage.cached_tokens, len - 1);
    assert_eq!(unseeded[0].tokens, cold(&prompt, 4).tokens);
    // A prompt that only begins the same way shares that beginning.
    let mut other = prompt.clone();
    let tail = other.len() - 3;
    other.truncate(tail);
    other.extend(model.text_prompt("xyz|").into_iter().skip(1));
    let started = side_by_side(&model, &other, in_scopes(&["alice"], 4));
    assert_eq!(started[0].usage.cached_tokens, tail);
    assert_eq!(started[0].tokens, cold(&other, 4).tokens);
    drop(running);
}

#[test]
fn a_seeded_request_never_shares_a_prompt_its_source_did_not_decode_whole() {
    let (model, controls) = start(config(3), 512);
    let prompt = long_prompt(&model);
    // The first run leaves its cache kept; the next unseeded one reuses it, so its last
    // prompt token is decoded alone, unlike a seeded request's.
    side_by_side(&model, &prompt, in_scopes(&["alice"], 4));
    let seeded = GenerateParams {
        cache_scope: Some("alice".into()),
        sampling: SamplingParams {
            temperature: 0.8,
            seed: Some(5),
            ..SamplingParams::greedy()
        },
        ..greedy(4)
    };
    let mut params = in_scopes(&["alice"], 4);
    params.push(seeded);
    let answers = admitted_together(&model, &controls, &prompt, params);
    assert_eq!(answers[0].usage.cached_tokens, prompt.len() - 1);
    assert_eq!(
        answers[1].usage.cached_tokens, 0,
        "the seeded one decodes it itself"
    );
}

#[test]
fn a_prompt_is_shared_only_within_its_scope() {
    let (model, controls) = start(config(2), 512);
    controls.step_micros.store(2000, Ordering::Relaxed);
    let prompt = long_prompt(&model);
    let answers = side_by_side(&model, &prompt, in_scopes(&["alice", "bob"], 4));
    assert_eq!(
        answers
            .iter()
            .map(|a| a.usage.cached_tokens)
            .collect::<Vec<_>>(),
        [0, 0]
    );
    assert_eq!(answers[0].tokens, answers[1].tokens);
}

#[test]
fn a_runtime_that_cannot_copy_a_sequence_decodes_each_prompt_itself() {
    let (model, controls) = start(config(3), 512);
    controls.step_micros.store(2000, Ordering::Relaxed);
    controls.refuse_shares.store(true, Ordering::Relaxed);
    let prompt = long_prompt(&model);
    let answers = side_by_side(&model, &prompt, in_scopes(&["alice"; 3], 4));
    let alone = cold(&prompt, 4);
    for answer in &answers {
        assert_eq!(answer.usage.cached_tokens, 0);
        assert_eq!(answer.tokens, alone.tokens);
    }
}

#[test]
fn a_request_waiting_to_share_a_prompt_whose_source_is_cancelled_decodes_it_itself() {
    // Small batches make the first prompt take several steps, so the second waits on it.
    let (model, controls) = start(
        ChatConfig {
            batch_tokens: 8,
            ..config(2)
        },
        512,
    );
    controls.step_micros.store(3000, Ordering::Relaxed);
    let prompt = long_prompt(&model);
    let scoped_params = GenerateParams {
        cache_scope: Some("alice".into()),
        ..greedy(5)
    };
    let source = model
        .generate(prompt.clone(), scoped_params.clone())
        .unwrap();
    let waiting = model.generate(prompt.clone(), scoped_params).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    drop(source);
    let answer = waiting.collect_blocking().unwrap();
    assert_eq!(answer.tokens, cold(&prompt, 5).tokens);
}
