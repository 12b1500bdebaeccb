//! The llama.cpp backend (through `llama-cpp-2`): GGUF models, memory-mapped.

use std::num::NonZeroU32;
use std::sync::OnceLock;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;

use super::SamplingParams;
use super::backend::{Backend, BatchToken, Decoder, DecoderShape};
use crate::files::ModelFiles;
use crate::gguf_check;
use crate::template::ChatTemplate;
use crate::{Error, Result};

/// Bundle path suffix of GGUF weights.
const GGUF: &str = ".gguf";

/// A GGUF model loaded by llama.cpp.
pub struct LlamaCpp {
    model: LlamaModel,
    architecture: String,
    training_context: usize,
}

impl std::fmt::Debug for LlamaCpp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaCpp")
            .field("architecture", &self.architecture)
            .field("training_context", &self.training_context)
            .finish_non_exhaustive()
    }
}

/// llama.cpp's process-wide state, initialised once.
pub(crate) fn runtime() -> Result<&'static LlamaBackend> {
    static RUNTIME: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            // llama.cpp's log goes to `tracing`; without a subscriber it is silent.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Inference(format!("llama.cpp did not initialise: {e}")))
}

impl LlamaCpp {
    /// Loads the model's one GGUF file after checking that its hyperparameters are consistent,
    /// and builds its chat template in the sandbox (if it has one).
    pub(super) fn load(files: &ModelFiles) -> Result<(Self, Option<ChatTemplate>)> {
        Self::load_with(files, &LlamaModelParams::default())
    }

    /// The vocabulary and chat template alone: tokenises, but cannot decode.
    pub(super) fn load_vocabulary(files: &ModelFiles) -> Result<(Self, Option<ChatTemplate>)> {
        Self::load_with(files, &LlamaModelParams::default().with_vocab_only(true))
    }

    fn load_with(
        files: &ModelFiles,
        params: &LlamaModelParams,
    ) -> Result<(Self, Option<ChatTemplate>)> {
        let label = files.label();
        let mut ggufs = files.ending_with(GGUF);
        let (_, path) = ggufs
            .next()
            .ok_or_else(|| Error::model(label, "has no .gguf file"))?;
        if ggufs.next().is_some() {
            return Err(Error::model(
                label,
                "has more than one .gguf file; split GGUF models are not supported",
            ));
        }
        let facts = gguf_check::check(label, path)?;
        let model = LlamaModel::load_from_file(runtime()?, path, params)
            .map_err(|e| {
                Error::model(
                    label,
                    format!("llama.cpp could not load it ({e}); its tensors do not match what a {} model needs", facts.architecture),
                )
            })?;
        let backend = Self {
            model,
            architecture: facts.architecture,
            training_context: facts.context_length as usize,
        };
        let template = match &facts.chat_template {
            Some(source) => {
                let vocab = backend.model.vocab();
                let text = |token| backend.piece_text(token);
                Some(
                    ChatTemplate::new(source, &text(vocab.bos().0), &text(vocab.eos().0))
                        .map_err(|e| Error::model(label, e.to_string()))?,
                )
            }
            None => None,
        };
        Ok((backend, template))
    }

    fn piece_text(&self, token: i32) -> String {
        let mut bytes = Vec::new();
        self.append_piece(token, true, &mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Backend for LlamaCpp {
    type Decoder<'m> = LlamaDecoder<'m>;

    fn architecture(&self) -> &str {
        &self.architecture
    }

    fn training_context(&self) -> usize {
        self.training_context
    }

    fn vocabulary(&self) -> usize {
        self.model.vocab().n_tokens().max(0) as usize
    }

    fn tokenize(&self, text: &str, special: bool) -> Vec<i32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, special)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    fn append_piece(&self, token: i32, special: bool, out: &mut Vec<u8>) {
        self.model
            .vocab()
            .token_to_piece_into(LlamaToken(token), out, special, None);
    }

    fn prompt_start(&self) -> Option<i32> {
        let vocab = self.model.vocab();
        vocab.should_add_bos().then(|| vocab.bos().0)
    }

    fn ends_turn(&self, token: i32) -> bool {
        self.model.vocab().is_eog(LlamaToken(token))
    }

    fn decoder(&self, shape: &DecoderShape) -> std::result::Result<LlamaDecoder<'_>, String> {
        let runtime = runtime().map_err(|e| e.to_string())?;
        let total = u32::try_from(shape.context_per_slot * shape.slots)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or("context too large")?;
        let threads = i32::try_from(shape.threads).map_err(|_| "too many threads")?;
        let batch = u32::try_from(shape.batch_tokens).map_err(|_| "batch too large")?;
        // Each sequence gets its own KV-cache stream and flash attention skips masked cells,
        // so a sequence's arithmetic does not depend on what else shares its batch: the same
        // seed gives the same tokens alone or among fifteen others.
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(total))
            .with_n_seq_max(shape.slots as u32)
            .with_kv_unified(false)
            .with_n_batch(batch)
            .with_n_ubatch(batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED);
        let context = self
            .model
            .new_context(runtime, params)
            .map_err(|e| format!("llama.cpp could not create a context: {e}"))?;
        Ok(LlamaDecoder {
            model: &self.model,
            context,
            batch: LlamaBatch::new(shape.batch_tokens, 1),
            vocabulary: self.model.vocab().n_tokens(),
        })
    }
}

fn random_seed() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

/// A llama.cpp context with one KV-cache stream per sequence slot.
pub struct LlamaDecoder<'m> {
    model: &'m LlamaModel,
    context: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    vocabulary: i32,
}

impl std::fmt::Debug for LlamaDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaDecoder").finish_non_exhaustive()
    }
}

/// One generation's token chooser: llama.cpp's sampler chain, and the grammar sampler of a
/// structured answer.
pub struct LlamaSampling {
    /// `None` for plain greedy decoding (the argmax).
    chain: Option<LlamaSampler>,
    grammar: Option<LlamaSampler>,
}

impl std::fmt::Debug for LlamaSampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaSampling")
            .field("grammar", &self.grammar.is_some())
            .finish_non_exhaustive()
    }
}

impl LlamaDecoder<'_> {
    fn chain(&self, params: &SamplingParams) -> Option<LlamaSampler> {
        if params.is_plain_greedy() {
            return None;
        }
        let mut chain = Vec::new();
        if params.repetition_penalty != 1.0 {
            chain.push(LlamaSampler::penalties(
                self.vocabulary,
                64,
                params.repetition_penalty,
                0.0,
                0.0,
            ));
        }
        if params.temperature == 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if params.top_k > 0 {
                chain.push(LlamaSampler::top_k(params.top_k.min(i32::MAX as u32) as i32));
            }
            if params.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(params.top_p, 1));
            }
            if params.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(params.min_p, 1));
            }
            chain.push(LlamaSampler::temp(params.temperature));
            chain.push(LlamaSampler::dist(params.seed.unwrap_or_else(random_seed)));
        }
        Some(LlamaSampler::chain_simple(chain))
    }

    /// The token the chain (or the argmax) picks from `candidates`, which the chain may
    /// reorder and cut.
    fn pick(chain: &mut Option<LlamaSampler>, candidates: &mut LlamaTokenDataArray) -> Option<i32> {
        match chain {
            Some(chain) => {
                chain.apply(candidates);
                candidates.selected_token().map(|t| t.0)
            }
            None => {
                let mut best: Option<&LlamaTokenData> = None;
                for candidate in &candidates.data {
                    if candidate.logit() > best.map_or(f32::NEG_INFINITY, |b| b.logit()) {
                        best = Some(candidate);
                    }
                }
                best.map(|b| b.id().0)
            }
        }
    }
}

fn all_candidates(logits: &[f32]) -> LlamaTokenDataArray {
    LlamaTokenDataArray::from_iter(
        logits
            .iter()
            .enumerate()
            .map(|(id, &logit)| LlamaTokenData::new(LlamaToken(id as i32), logit, 0.0)),
        false,
    )
}

/// The most likely token `grammar` allows (the first of equals, as the argmax takes): the
/// greedy choice under the grammar. The grammar is asked about the most likely tokens first,
/// in widening tiers, so that the whole vocabulary is checked only when no likely token fits.
fn best_allowed(grammar: &mut LlamaSampler, logits: &[f32]) -> Option<i32> {
    let by_likelihood = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let mut from = 0;
    for tier in [32, 512, usize::MAX] {
        let to = tier.min(ids.len());
        if from >= to {
            break;
        }
        // The tier's tokens are the next most likely ones, in any order.
        if to < ids.len() {
            ids[from..].select_nth_unstable_by(to - from - 1, by_likelihood);
        }
        let mut candidates = LlamaTokenDataArray::new(
            ids[from..to]
                .iter()
                .map(|&id| LlamaTokenData::new(LlamaToken(id as i32), logits[id as usize], 0.0))
                .collect(),
            false,
        );
        grammar.apply(&mut candidates);
        let best = candidates
            .data
            .iter()
            .filter(|t| t.logit() != f32::NEG_INFINITY)
            .map(|t| t.id().0 as u32)
            .min_by(by_likelihood);
        if let Some(id) = best {
            return Some(id as i32);
        }
        from = to;
    }
    None
}

impl Decoder for LlamaDecoder<'_> {
    type Sampler = LlamaSampling;

    fn sampler(
        &self,
        params: &SamplingParams,
        grammar: Option<&str>,
    ) -> std::result::Result<LlamaSampling, String> {
        let grammar = match grammar {
            Some(text) => Some(
                LlamaSampler::grammar(self.model, text, "root")
                    .map_err(|e| format!("llama.cpp did not accept the answer's grammar ({e})"))?,
            ),
            None => None,
        };
        Ok(LlamaSampling {
            chain: self.chain(params),
            grammar,
        })
    }

    fn decode(&mut self, batch: &[BatchToken]) -> std::result::Result<(), String> {
        self.batch.clear();
        for t in batch {
            // Positions and sequence ids are bounded by the context and slot count, which
            // llama.cpp itself counts in i32.
            self.batch
                .add(
                    LlamaToken(t.token),
                    t.position as i32,
                    &[t.seq as i32],
                    t.logits,
                )
                .map_err(|e| e.to_string())?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.context
            .decode(&mut self.batch)
            .map_err(|e| e.to_string())
    }

    fn logits(&self, index: usize) -> &[f32] {
        self.context.get_logits_ith(index as i32)
    }

    fn sample(
        &mut self,
        sampler: &mut LlamaSampling,
        index: usize,
    ) -> std::result::Result<i32, String> {
        let LlamaSampling { chain, grammar } = sampler;
        let Some(grammar) = grammar else {
            return Ok(match chain {
                Some(chain) => chain.sample(&self.context, index as i32).0,
                None => super::scheduler::argmax(self.logits(index)),
            });
        };
        // As llama-server does: pick without the grammar, and only when the grammar refuses
        // that token mask the whole vocabulary and pick again. Most tokens of a structured
        // answer are what the model would have chosen anyway, and checking one token against
        // the grammar costs far less than checking fifty thousand.
        let logits = self.context.get_logits_ith(index as i32);
        let mut picked = match chain {
            None => Some(super::scheduler::argmax(logits)),
            Some(_) => Self::pick(chain, &mut all_candidates(logits)),
        };
        if let Some(token) = picked {
            let mut one = LlamaTokenDataArray::new(
                vec![LlamaTokenData::new(LlamaToken(token), 0.0, 0.0)],
                false,
            );
            grammar.apply(&mut one);
            if one
                .data
                .first()
                .is_none_or(|t| t.logit() == f32::NEG_INFINITY)
            {
                picked = None;
            }
        }
        let token = match picked {
            Some(token) => token,
            None if chain.is_none() => {
                best_allowed(grammar, logits).ok_or("the answer's grammar allows no next token")?
            }
            None => {
                let mut candidates = all_candidates(logits);
                grammar.apply(&mut candidates);
                candidates.data.retain(|t| t.logit() != f32::NEG_INFINITY);
                Self::pick(chain, &mut candidates)
                    .ok_or("the answer's grammar allows no next token")?
            }
        };
        if let Some(chain) = chain {
            chain.accept(LlamaToken(token));
        }
        // The end of the turn finishes the answer; the grammar has no more to check.
        if !self.model.vocab().is_eog(LlamaToken(token)) {
            grammar
                .try_accept(LlamaToken(token))
                .map_err(|e| format!("the answer's grammar refused token {token}: {e}"))?;
        }
        Ok(token)
    }

    fn forget(&mut self, seq: usize) {
        let _ = self
            .context
            .clear_kv_cache_seq(Some(seq as u32), None, None);
    }

    fn truncate(&mut self, seq: usize, len: usize) -> bool {
        // Sequence ids and positions are bounded by the slot count and the context, both far
        // below u32::MAX. llama.cpp refuses a partial cut only for recurrent models' state.
        if len > 0
            && self
                .context
                .clear_kv_cache_seq(Some(seq as u32), Some(len as u32), None)
                .unwrap_or(false)
        {
            return true;
        }
        self.forget(seq);
        len == 0
    }

    fn share(&mut self, from: usize, to: usize, len: usize) -> bool {
        // Each sequence has a cache stream of its own, and llama.cpp copies between streams
        // only whole (the copy is made before the next decode); the copy is then cut to `len`.
        let copied = match (i32::try_from(from), i32::try_from(to)) {
            (Ok(from), Ok(to)) => self.context.copy_kv_cache_seq(from, to, None, None).is_ok(),
            _ => false,
        };
        if !copied {
            self.forget(to);
            return false;
        }
        self.truncate(to, len)
    }
}
