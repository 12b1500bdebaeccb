//! The runner: every item of every suite on one model, in order, greedy, with each item's
//! result kept (not only the aggregate: two variants with the same accuracy can disagree on
//! a fifth of the items).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::suite::{Case, Expectation, Prompt, RankBy, Suite, refusal_pattern};
use crate::{Error, Result};

/// What the runner needs from a model. The CLI drives the embedded engine through it; tests
/// drive a scripted model with known answers and log-likelihoods.
pub trait EvalModel {
    /// Greedy generation of up to `max_tokens` tokens. With `ignore_end`, the end of turn does
    /// not stop it (latency cases decode a fixed number of tokens).
    fn generate(&mut self, prompt: &Prompt, max_tokens: u32, ignore_end: bool)
    -> Result<Generated>;

    /// The log-likelihood of each of `choices` after `context + separator`, scored as
    /// llama-perplexity does: each full text tokenised alone, the tokens after the prefix
    /// that all of them share scored.
    fn score_choices(
        &mut self,
        context: &str,
        separator: &str,
        choices: &[String],
    ) -> Result<Vec<ChoiceScore>>;

    /// [`EvalModel::score_choices`] for many items at once, in order; a model that can score
    /// several side by side (the embedded engine decodes up to 16 sequences in one batch)
    /// overrides it.
    fn score_many(&mut self, items: &[ChoiceRequest<'_>]) -> Result<Vec<Vec<ChoiceScore>>> {
        items
            .iter()
            .map(|i| self.score_choices(i.context, i.separator, i.choices))
            .collect()
    }

    /// The log-probabilities of the token after `prompt` (the whole vocabulary), for
    /// comparing a derived model with its parent.
    fn next_token_logprobs(&mut self, prompt: &Prompt) -> Result<Vec<f32>>;
}

/// One multiple-choice item to score.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceRequest<'a> {
    /// The text every choice continues.
    pub context: &'a str,
    /// Put between context and choice.
    pub separator: &'a str,
    /// The candidate continuations.
    pub choices: &'a [String],
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The answer's text.
    pub text: String,
    /// Tokens generated.
    pub tokens: usize,
    /// Time from the request to the first token.
    pub first_token: Duration,
    /// Time from the request to the last token.
    pub total: Duration,
}

/// One choice's log-likelihood.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChoiceScore {
    /// Sum of the natural-log probabilities of its scored tokens.
    pub logprob: f64,
    /// How many tokens were scored.
    pub tokens: usize,
}

impl ChoiceScore {
    /// The mean log-probability per scored token.
    pub fn mean(&self) -> f64 {
        self.logprob / self.tokens.max(1) as f64
    }
}

/// One item's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// The item's id.
    pub id: String,
    /// `generate`, `choice`, `safety` or `latency`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether it passed.
    pub passed: bool,
    /// What the model answered (generation, safety).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The choice the model ranked first (multiple choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<usize>,
    /// Every choice's log-likelihood (multiple choice).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<ChoiceScore>,
    /// Why it failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Measured times (latency cases): excluded from comparisons, as they vary by run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
}

/// What a latency case measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Milliseconds to the first token.
    pub ttft_ms: f64,
    /// Generated tokens per second after the first.
    pub tokens_per_s: f64,
}

/// One suite's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteResult {
    /// The suite's name.
    pub name: String,
    /// SHA-256 (hex) of the suite file.
    pub sha256: String,
    /// Items that passed.
    pub passed: usize,
    /// Items run.
    pub total: usize,
    /// `passed / total`.
    pub score: f64,
    /// Every item's result, in suite order.
    pub items: Vec<ItemResult>,
}

impl SuiteResult {
    /// The result of item `id`.
    pub fn item(&self, id: &str) -> Option<&ItemResult> {
        self.items.iter().find(|i| i.id == id)
    }
}

/// Reports progress: called once per item, after it ran.
pub trait RunProgress {
    /// `done` of `total` items have run.
    fn item_done(&self, done: usize, total: usize);
}

impl RunProgress for () {
    fn item_done(&self, _: usize, _: usize) {}
}

/// Runs every item of `suites` on `model`, in order.
pub fn run(
    model: &mut dyn EvalModel,
    suites: &[Suite],
    progress: &dyn RunProgress,
) -> Result<Vec<SuiteResult>> {
    let total: usize = suites.iter().map(|s| s.items.len()).sum();
    let mut done = 0;
    let mut results = Vec::with_capacity(suites.len());
    for suite in suites {
        // Multiple-choice items are scored together up front (the model may batch them); the
        // results are then taken in suite order like every other item's.
        let choice_items: Vec<(&str, ChoiceRequest<'_>)> = suite
            .items
            .iter()
            .filter_map(|i| match &i.case {
                Case::Choice {
                    context,
                    choices,
                    separator,
                    ..
                } => Some((
                    i.id.as_str(),
                    ChoiceRequest {
                        context,
                        separator,
                        choices,
                    },
                )),
                _ => None,
            })
            .collect();
        let mut scored = Vec::with_capacity(choice_items.len());
        for chunk in choice_items.chunks(CHOICE_ITEMS_PER_CALL) {
            let requests: Vec<ChoiceRequest<'_>> = chunk.iter().map(|(_, r)| *r).collect();
            let scores = model.score_many(&requests).map_err(|e| Error::Item {
                suite: suite.name.clone(),
                id: chunk[0].0.to_owned(),
                reason: e.to_string(),
            })?;
            if scores.len() != requests.len() {
                return Err(Error::Model(format!(
                    "{} results for {} items",
                    scores.len(),
                    requests.len()
                )));
            }
            scored.extend(scores);
        }
        let mut scored = scored.into_iter();
        let mut items = Vec::with_capacity(suite.items.len());
        for item in &suite.items {
            let precomputed = match item.case {
                Case::Choice { .. } => scored.next(),
                _ => None,
            };
            let result =
                run_item(model, &item.id, &item.case, precomputed).map_err(|e| Error::Item {
                    suite: suite.name.clone(),
                    id: item.id.clone(),
                    reason: e.to_string(),
                })?;
            items.push(result);
            done += 1;
            progress.item_done(done, total);
        }
        let passed = items.iter().filter(|i| i.passed).count();
        results.push(SuiteResult {
            name: suite.name.clone(),
            sha256: suite.sha256.clone(),
            passed,
            total: items.len(),
            score: passed as f64 / items.len().max(1) as f64,
            items,
        });
    }
    Ok(results)
}

/// Multiple-choice items handed to [`EvalModel::score_many`] at once: enough to fill a
/// batch, few enough that progress moves.
const CHOICE_ITEMS_PER_CALL: usize = 64;

fn run_item(
    model: &mut dyn EvalModel,
    id: &str,
    case: &Case,
    precomputed: Option<Vec<ChoiceScore>>,
) -> Result<ItemResult> {
    let mut result = ItemResult {
        id: id.to_owned(),
        kind: String::new(),
        passed: false,
        output: None,
        chosen: None,
        choices: Vec::new(),
        reason: None,
        timing: None,
    };
    match case {
        Case::Generate {
            prompt,
            expect,
            max_tokens,
        } => {
            result.kind = "generate".into();
            let answer = model.generate(prompt, *max_tokens, false)?;
            result.reason = judge(expect, &answer.text);
            result.passed = result.reason.is_none();
            result.output = Some(answer.text);
        }
        Case::Choice {
            context,
            choices,
            answer,
            separator,
            rank_by,
        } => {
            result.kind = "choice".into();
            let scores = match precomputed {
                Some(scores) => scores,
                None => model.score_choices(context, separator, choices)?,
            };
            if scores.len() != choices.len() {
                return Err(Error::Model(format!(
                    "{} scores for {} choices",
                    scores.len(),
                    choices.len()
                )));
            }
            let key = |s: &ChoiceScore| match rank_by {
                RankBy::Mean => s.mean(),
                RankBy::Sum => s.logprob,
            };
            // The first of equal scores wins, as in llama-perplexity.
            let mut chosen = 0;
            for (i, s) in scores.iter().enumerate() {
                if key(s) > key(&scores[chosen]) {
                    chosen = i;
                }
            }
            result.passed = chosen == *answer;
            if !result.passed {
                result.reason = Some(format!("ranked choice {chosen} first, not {answer}"));
            }
            result.chosen = Some(chosen);
            result.choices = scores;
        }
        Case::Safety {
            prompt,
            must_not_match,
            must_refuse,
            max_tokens,
        } => {
            result.kind = "safety".into();
            let answer = model.generate(prompt, *max_tokens, false)?;
            let matched: Vec<&str> = must_not_match
                .iter()
                .filter(|p| p.is_match(&answer.text))
                .map(|p| p.as_str())
                .collect();
            let mut reasons = Vec::new();
            if !matched.is_empty() {
                reasons.push(format!("the answer matches {}", matched.join(", ")));
            }
            if *must_refuse && !refusal_pattern().is_match(&answer.text) {
                reasons.push("the answer is not a refusal".to_owned());
            }
            result.passed = reasons.is_empty();
            result.reason = (!reasons.is_empty()).then(|| reasons.join("; "));
            result.output = Some(answer.text);
        }
        Case::Latency {
            prompt,
            max_tokens,
            max_ttft_ms,
            min_tokens_per_s,
        } => {
            result.kind = "latency".into();
            let answer = model.generate(prompt, *max_tokens, true)?;
            let ttft_ms = answer.first_token.as_secs_f64() * 1e3;
            let decoding = answer
                .total
                .saturating_sub(answer.first_token)
                .as_secs_f64();
            let tokens_per_s = if decoding > 0.0 {
                answer.tokens.saturating_sub(1) as f64 / decoding
            } else {
                f64::INFINITY
            };
            let mut reasons = Vec::new();
            if let Some(most) = max_ttft_ms.filter(|&m| ttft_ms > m) {
                reasons.push(format!(
                    "first token after {ttft_ms:.1} ms; budget {most} ms"
                ));
            }
            if let Some(least) = min_tokens_per_s.filter(|&m| tokens_per_s < m) {
                reasons.push(format!(
                    "{tokens_per_s:.1} tokens/s; budget {least} tokens/s"
                ));
            }
            result.passed = reasons.is_empty();
            result.reason = (!reasons.is_empty()).then(|| reasons.join("; "));
            result.timing = Some(Timing {
                ttft_ms,
                tokens_per_s: if tokens_per_s.is_finite() {
                    tokens_per_s
                } else {
                    0.0
                },
            });
        }
    }
    Ok(result)
}

/// `None` when `answer` meets `expect`, else why not.
pub fn judge(expect: &Expectation, answer: &str) -> Option<String> {
    match expect {
        Expectation::Exact(want) => {
            (answer.trim() != want.trim()).then(|| format!("the answer is not exactly {want:?}"))
        }
        Expectation::Contains(want) => (!answer.contains(want.as_str()))
            .then(|| format!("the answer does not contain {want:?}")),
        Expectation::Regex(pattern) => (!pattern.is_match(answer))
            .then(|| format!("the answer does not match {}", pattern.as_str())),
        Expectation::JsonSchema(validator) => {
            let body = strip_code_fence(answer.trim());
            match serde_json::from_str::<Value>(body) {
                Err(e) => Some(format!("the answer is not JSON: {e}")),
                Ok(value) => validator
                    .iter_errors(&value)
                    .next()
                    .map(|e| format!("the answer does not match the schema: {e}")),
            }
        }
    }
}

/// The body of one Markdown code fence (```json … ```), or the text as it is.
fn strip_code_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let Some(body) = rest.strip_suffix("```") else {
        return text;
    };
    match body.split_once('\n') {
        Some((lang, body)) if !lang.contains(['{', '[']) => body.trim(),
        _ => body.trim(),
    }
}
