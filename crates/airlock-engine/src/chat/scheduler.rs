//! The worker thread: continuous batching over a [`Backend`]'s sequence slots.
//!
//! Every step it admits queued requests into free slots, builds one batch holding the next
//! token of every running generation plus as much of the new prompts as fits, decodes it, and
//! samples each sequence with its own sampler.
//!
//! A finished generation that names a cache scope leaves its tokens in its slot's cache. A
//! later request of the same scope whose prompt begins with them (the next turn of the
//! conversation) is admitted into that slot and decodes only the rest of its prompt.
//!
//! Requests of one scope that run at the same time with the same prompt start (the answers
//! of one `n` request, one system prompt sent by many) decode that start once: a later one
//! waits until an earlier one has decoded it, then copies it into its own slot. One with the
//! very same prompt, admitted while the first is still decoding it, takes the whole prompt
//! and the logits of the step that decoded its last token, so it is exactly what it would
//! have decoded itself: the only sharing a seeded request takes part in.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use super::backend::{Backend, BatchToken, Decoder, DecoderShape};
use super::{Event, FinishReason, Job, Load, Usage};
use crate::Error;
use crate::interface::{Logprob, TokenLogprobs};
use crate::text::{Release, TextStream};

/// Fewest prompt tokens worth copying from another running generation rather than decoding:
/// a runtime may copy a slot's whole cache to share any part of it (llama.cpp does).
const LEAST_SHARED: usize = 32;

/// A generation occupying a sequence slot.
struct Slot<S> {
    seq: usize,
    /// Admission order: names the generation, whichever slot it holds.
    id: u64,
    /// Waiting for a running generation to decode the prompt start they share.
    follows: Option<Follow>,
    job: Job,
    /// `None`: plain greedy, an argmax the scheduler takes itself.
    sampler: Option<S>,
    /// Prompt tokens already in the cache.
    fed: usize,
    /// Of those, the ones kept from the slot's previous generation.
    reused: usize,
    /// Generated tokens fed back, in order: with the prompt, what the cache holds.
    answer: Vec<i32>,
    /// The token to feed next once the prompt is in.
    next: Option<i32>,
    /// Index of this slot's logits in the current batch.
    logits_at: Option<usize>,
    generated: usize,
    text: TextStream,
}

impl<S> Slot<S> {
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
                cached_tokens: self.reused,
            },
        }));
    }
}

/// A prompt start to copy from another generation once that one has decoded it.
#[derive(Debug, Clone, Copy)]
struct Follow {
    /// The generation's [`Slot::id`].
    source: u64,
    /// Tokens shared.
    len: usize,
    /// The whole prompt, with the logits of the step that decodes its last token.
    whole: bool,
}

/// What a free slot's cache still holds from the generation that last ran in it.
#[derive(Debug, Default)]
struct Kept {
    /// The finished generation's cache scope; only requests of the same scope reuse it.
    scope: String,
    /// Its prompt and fed-back answer; empty when the cache is empty.
    tokens: Vec<i32>,
    /// The step it finished at: the longest unused is given up first.
    finished_at: u64,
}

/// The slots in use and free, with the decoder that holds their caches.
struct Slots<'m, B: Backend + 'm> {
    decoder: B::Decoder<'m>,
    // Handing out the lowest empty slot and feeding sequences in id order matters to
    // llama.cpp: it splits a batch over per-sequence caches into one compute per run of
    // consecutive sequence ids, so this keeps a whole decode step in one compute whenever no
    // kept cache is being reused.
    free: BTreeSet<usize>,
    /// By sequence id; meaningful for free slots.
    kept: Vec<Kept>,
    running: Vec<Slot<<B::Decoder<'m> as Decoder>::Sampler>>,
    /// Decode steps so far.
    step: u64,
    /// Generations admitted so far.
    admitted: u64,
}

impl<B: Backend> Slots<'_, B> {
    /// A free slot for `job` and how many of its prompt tokens the slot's cache already
    /// holds; `None` if every slot is taken.
    ///
    /// A slot kept for the job's scope is reused when most of what it holds is the start of
    /// the prompt (a conversation's next turn, a retry). Otherwise an empty slot is taken,
    /// the lowest first, and failing that the one whose cache has gone unused longest,
    /// reusing what it shares with the prompt.
    fn take(&mut self, job: &Job) -> Option<(usize, usize)> {
        // At least the last prompt token is decoded, for the logits of the first answer token.
        let most = job.prompt.len() - 1;
        let shared = |kept: &Kept| match &job.params.cache_scope {
            Some(scope) if *scope == kept.scope && !seeded(job) => {
                common_prefix(&kept.tokens, &job.prompt).min(most)
            }
            _ => 0,
        };
        let best = self
            .free
            .iter()
            .map(|&seq| (shared(&self.kept[seq]), seq))
            .filter(|&(n, _)| n > 0)
            .max_by_key(|&(n, seq)| (n, std::cmp::Reverse(seq)));
        let empty = self
            .free
            .iter()
            .copied()
            .find(|&seq| self.kept[seq].tokens.is_empty());
        let oldest = || {
            self.free
                .iter()
                .copied()
                .min_by_key(|&seq| self.kept[seq].finished_at)
        };
        let seq = match (best, empty) {
            (Some((n, seq)), _) if 2 * n >= self.kept[seq].tokens.len() => seq,
            (_, Some(seq)) => seq,
            (_, None) => oldest()?,
        };
        self.free.remove(&seq);
        let kept = std::mem::take(&mut self.kept[seq]);
        let keep = shared(&kept);
        if keep == kept.tokens.len() {
            return Some((seq, keep));
        }
        let kept_all = self.decoder.truncate(seq, keep);
        Some((seq, if kept_all { keep } else { 0 }))
    }

    /// The running generation of `job`'s scope to copy `job`'s prompt from, if any: one
    /// still decoding the very same prompt, else (unless `job` must be reproducible) the one
    /// whose prompt begins as `job`'s does for the most tokens, if those are worth copying
    /// and more than `job`'s slot already holds.
    fn source_for(&self, job: &Job, held: usize) -> Option<Follow> {
        let scope = job.params.cache_scope.as_ref()?;
        let len = job.prompt.len();
        let mut best: Option<Follow> = None;
        for slot in &self.running {
            if slot.follows.is_some() || slot.job.params.cache_scope.as_ref() != Some(scope) {
                continue;
            }
            // A seeded request takes only logits its source computed from a prompt it decoded
            // whole itself, as the seeded request would have.
            let decodes_it_all = slot.reused == 0 || !seeded(job);
            if len >= LEAST_SHARED
                && slot.job.prompt == job.prompt
                && slot.fed < len
                && decodes_it_all
            {
                return Some(Follow {
                    source: slot.id,
                    len,
                    whole: true,
                });
            }
            // At least the last prompt token is decoded, for the first answer token's logits.
            let shared = common_prefix(&slot.job.prompt, &job.prompt).min(len - 1);
            if !seeded(job)
                && shared >= LEAST_SHARED
                && shared > held
                && best.is_none_or(|b| shared > b.len)
            {
                best = Some(Follow {
                    source: slot.id,
                    len: shared,
                    whole: false,
                });
            }
        }
        best
    }

    /// Before a step: gives each generation waiting for a prompt start that start once its
    /// source has decoded it. One whose source has ended decodes its prompt itself.
    fn share_prompt_starts(&mut self) {
        let Self {
            decoder, running, ..
        } = self;
        for index in 0..running.len() {
            let Some(follow) = running[index].follows else {
                continue;
            };
            let source = running
                .iter()
                .find(|slot| slot.id == follow.source)
                .map(|slot| (slot.seq, slot.fed));
            let slot = &mut running[index];
            match source {
                Some(_) if follow.whole => continue,
                Some((_, fed)) if fed < follow.len => continue,
                Some((from, _)) => {
                    let held = if decoder.share(from, slot.seq, follow.len) {
                        follow.len
                    } else {
                        0
                    };
                    slot.fed = held;
                    slot.reused = held;
                }
                None => {}
            }
            slot.follows = None;
        }
    }

    /// After a step's decode: gives each generation waiting for a whole prompt that prompt,
    /// and its source's logits for the first answer token, once the source has decoded it.
    fn share_whole_prompts(&mut self) {
        let Self {
            decoder, running, ..
        } = self;
        for index in 0..running.len() {
            let Some(follow) = running[index].follows.filter(|f| f.whole) else {
                continue;
            };
            let decoded = running
                .iter()
                .find(|slot| slot.id == follow.source)
                .filter(|slot| slot.next.is_none() && slot.fed == follow.len)
                .and_then(|slot| Some((slot.seq, slot.logits_at?)));
            let Some((from, logits_at)) = decoded else {
                continue;
            };
            let slot = &mut running[index];
            slot.follows = None;
            if decoder.share(from, slot.seq, follow.len) {
                slot.fed = follow.len;
                slot.reused = follow.len;
                slot.logits_at = Some(logits_at);
            } else {
                slot.fed = 0;
                slot.reused = 0;
            }
        }
    }

    /// Frees a cancelled or failed generation's slot, emptying its cache.
    fn release(&mut self, load: &Load, seq: usize) {
        self.decoder.forget(seq);
        self.kept[seq] = Kept::default();
        self.free.insert(seq);
        load.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// Frees a finished generation's slot, keeping its cache for its scope if it has one.
    fn retire(&mut self, load: &Load, slot: Slot<<B::Decoder<'_> as Decoder>::Sampler>) {
        let Some(scope) = slot.job.params.cache_scope else {
            return self.release(load, slot.seq);
        };
        let mut tokens = slot.job.prompt;
        tokens.extend_from_slice(&slot.answer);
        self.kept[slot.seq] = Kept {
            scope,
            tokens,
            finished_at: self.step,
        };
        self.free.insert(slot.seq);
        load.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether `job`'s answer must be reproducible from its seed (see
/// [`GenerateParams::cache_scope`](super::GenerateParams::cache_scope)).
fn seeded(job: &Job) -> bool {
    job.params.sampling.seed.is_some()
}

/// How many tokens `a` and `b` begin with in common.
fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Runs until the job queue closes and every running generation has ended. Reports on
/// `ready` whether the decoder could be made.
pub(super) fn run<B: Backend>(
    backend: &B,
    shape: DecoderShape,
    queue: &Receiver<Job>,
    load: &Load,
    ready: SyncSender<Result<(), String>>,
) {
    let decoder = match backend.decoder(&shape) {
        Ok(decoder) => {
            let _ = ready.send(Ok(()));
            decoder
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut slots = Slots::<B> {
        decoder,
        free: (0..shape.slots).collect(),
        kept: (0..shape.slots).map(|_| Kept::default()).collect(),
        running: Vec::with_capacity(shape.slots),
        step: 0,
        admitted: 0,
    };
    let capacity = shape.batch_tokens;
    let mut batch: Vec<BatchToken> = Vec::with_capacity(capacity);
    let mut piece = Vec::new();
    let mut closed = false;
    loop {
        // Admit waiting requests into free slots; wait only when nothing is running.
        while !closed && !slots.free.is_empty() {
            let job = if slots.running.is_empty() {
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
            let Some((seq, reused)) = slots.take(&job) else {
                break;
            };
            load.running.fetch_add(1, Ordering::Relaxed);
            let sampling = &job.params.sampling;
            let grammar = job.params.grammar.as_deref();
            let sampler = if sampling.is_plain_greedy() && grammar.is_none() {
                None
            } else {
                match slots.decoder.sampler(sampling, grammar) {
                    Ok(sampler) => Some(sampler),
                    Err(e) => {
                        let _ = job.events.send(Err(Error::Request(e)));
                        slots.release(load, seq);
                        continue;
                    }
                }
            };
            let follows = slots.source_for(&job, reused);
            slots.admitted += 1;
            slots.running.push(Slot {
                seq,
                id: slots.admitted,
                follows,
                sampler,
                text: TextStream::new(&job.params.stop),
                job,
                fed: reused,
                reused,
                answer: Vec::new(),
                next: None,
                logits_at: None,
                generated: 0,
            });
        }
        if slots.running.is_empty() {
            if closed {
                return;
            }
            continue;
        }

        // Cancelled generations free their slot before the step.
        let mut index = 0;
        while index < slots.running.len() {
            if slots.running[index].job.events.is_closed() {
                let slot = slots.running.swap_remove(index);
                slots.release(load, slot.seq);
            } else {
                index += 1;
            }
        }

        slots.share_prompt_starts();

        // One batch: every decoding sequence's next token first, then prompt chunks.
        slots.running.sort_unstable_by_key(|slot| slot.seq);
        batch.clear();
        for slot in slots.running.iter_mut() {
            slot.logits_at = None;
            if let Some(token) = slot.next {
                slot.answer.push(token);
                slot.logits_at = Some(batch.len());
                batch.push(BatchToken {
                    token,
                    position: slot.position(),
                    seq: slot.seq,
                    logits: true,
                });
            }
        }
        for slot in slots.running.iter_mut() {
            if slot.next.is_some() || slot.follows.is_some() {
                continue;
            }
            let take = (slot.job.prompt.len() - slot.fed).min(capacity - batch.len());
            for position in slot.fed..slot.fed + take {
                let last = position + 1 == slot.job.prompt.len();
                if last {
                    slot.logits_at = Some(batch.len());
                }
                batch.push(BatchToken {
                    token: slot.job.prompt[position],
                    position,
                    seq: slot.seq,
                    logits: last,
                });
            }
            slot.fed += take;
        }
        slots.step += 1;
        if let Err(e) = slots.decoder.decode(&batch) {
            for slot in std::mem::take(&mut slots.running) {
                let _ = slot.job.events.send(Err(Error::Inference(e.clone())));
                slots.release(load, slot.seq);
            }
            continue;
        }
        slots.share_whole_prompts();

        // Sample every sequence that produced logits and stream what became visible.
        let Slots {
            decoder, running, ..
        } = &mut slots;
        let mut finished = Vec::new();
        for (index, slot) in running.iter_mut().enumerate() {
            let Some(at) = slot.logits_at else { continue };
            let token = match &mut slot.sampler {
                Some(sampler) => match decoder.sample(sampler, at) {
                    Ok(token) => token,
                    Err(e) => {
                        let _ = slot.job.events.send(Err(Error::Inference(e)));
                        finished.push(index);
                        continue;
                    }
                },
                None => argmax(decoder.logits(at)),
            };
            slot.generated += 1;
            // A complete grammar allows nothing but the end of the turn.
            let constrained = slot.job.params.grammar.is_some();
            if backend.ends_turn(token) && (!slot.job.params.ignore_eos || constrained) {
                slot.generated -= 1;
                slot.finish(FinishReason::Stop, None);
                finished.push(index);
                continue;
            }
            let logprobs = slot
                .job
                .params
                .logprobs
                .map(|top| Box::new(token_logprobs(backend, decoder.logits(at), token, top)));
            piece.clear();
            backend.append_piece(token, false, &mut piece);
            let (text, stopped) = match slot.text.push(&piece) {
                Release::Text(t) => (t, None),
                Release::Stopped { text, stop } => (text, Some(stop)),
            };
            let _ = slot.job.events.send(Ok(Event::Token {
                id: token,
                text,
                logprobs,
            }));
            let at_limit = slot
                .job
                .params
                .max_tokens
                .is_some_and(|m| slot.generated >= m);
            let context_full = slot.fed + slot.generated >= shape.context_per_slot;
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
            let slot = slots.running.swap_remove(index);
            slots.retire(load, slot);
        }
    }
}

/// `token`'s log-probability under `logits` and the `top` most likely tokens' (most likely
/// first, the first of equals first), normalised in f64 as llama.cpp's server does.
fn token_logprobs<B: Backend>(
    backend: &B,
    logits: &[f32],
    token: i32,
    top: usize,
) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_sum = f64::from(max) + sum.ln();
    let logprob = |id: i32| Logprob {
        bytes: {
            let mut bytes = Vec::new();
            backend.append_piece(id, false, &mut bytes);
            bytes
        },
        logprob: (f64::from(logits[id as usize]) - log_sum) as f32,
    };
    let by_likelihood = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let top = top.min(ids.len());
    if top > 0 && top < ids.len() {
        ids.select_nth_unstable_by(top - 1, by_likelihood);
    }
    ids.truncate(top);
    ids.sort_unstable_by(by_likelihood);
    TokenLogprobs {
        chosen: logprob(token),
        top: ids.into_iter().map(|id| logprob(id as i32)).collect(),
    }
}

/// The index of the first largest logit: what llama.cpp's greedy sampler picks.
pub(super) fn argmax(logits: &[f32]) -> i32 {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    // A vocabulary index always fits: runtimes count tokens in i32.
    best as i32
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
}
