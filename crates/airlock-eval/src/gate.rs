//! Comparing a model with its parent (or with the version tagged now), and the gates that
//! refuse on regression: on the connected side before a derived bundle is signed, on the
//! isolated side before a version is approved or tagged.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::record::EvalRecord;
use crate::run::{ItemResult, SuiteResult};

/// How one suite's results moved between a baseline and a candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteComparison {
    /// Suite name.
    pub name: String,
    /// The baseline's score.
    pub baseline_score: f64,
    /// The candidate's score.
    pub candidate_score: f64,
    /// Items compared (latency items are not: their results vary by run).
    pub compared: usize,
    /// Fraction of compared items on which both gave the same answer (same generated text,
    /// same choice ranked first).
    pub agreement: f64,
    /// Items the baseline passed and the candidate failed.
    pub regressed: Vec<String>,
    /// Items the baseline failed and the candidate passed.
    pub improved: Vec<String>,
}

/// How far a candidate's next-token distributions are from its baseline's on the suites'
/// prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    /// Prompts compared.
    pub prompts: usize,
    /// Mean KL divergence KL(baseline ‖ candidate), in nats.
    pub mean_kld: f64,
    /// Largest KL divergence of one prompt.
    pub max_kld: f64,
    /// Fraction of prompts whose most likely next token is the same.
    pub same_top_token: f64,
}

/// A candidate compared with its baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Per suite, for the suites both ran (matched by name and file digest).
    pub suites: Vec<SuiteComparison>,
    /// Next-token divergence, where measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divergence: Option<Divergence>,
}

/// Compares the suites both `baseline` and `candidate` ran on the same suite file.
pub fn compare(baseline: &[SuiteResult], candidate: &[SuiteResult]) -> Comparison {
    let suites = candidate
        .iter()
        .filter_map(|c| {
            let b = baseline
                .iter()
                .find(|b| b.name == c.name && b.sha256 == c.sha256)?;
            Some(compare_suite(b, c))
        })
        .collect();
    Comparison {
        suites,
        divergence: None,
    }
}

fn compare_suite(baseline: &SuiteResult, candidate: &SuiteResult) -> SuiteComparison {
    let mut compared = 0;
    let mut agreeing = 0;
    let mut regressed = Vec::new();
    let mut improved = Vec::new();
    for c in &candidate.items {
        let Some(b) = baseline.item(&c.id) else {
            continue;
        };
        if c.kind == "latency" {
            continue;
        }
        compared += 1;
        if same_answer(b, c) {
            agreeing += 1;
        }
        match (b.passed, c.passed) {
            (true, false) => regressed.push(c.id.clone()),
            (false, true) => improved.push(c.id.clone()),
            _ => {}
        }
    }
    SuiteComparison {
        name: candidate.name.clone(),
        baseline_score: baseline.score,
        candidate_score: candidate.score,
        compared,
        agreement: if compared == 0 {
            1.0
        } else {
            agreeing as f64 / compared as f64
        },
        regressed,
        improved,
    }
}

fn same_answer(a: &ItemResult, b: &ItemResult) -> bool {
    a.passed == b.passed && a.chosen == b.chosen && a.output == b.output
}

/// KL(p ‖ q) of two log-probability vectors over the same vocabulary, in nats.
pub fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(&lp, &lq)| {
            let prob = f64::from(lp).exp();
            if prob == 0.0 {
                0.0
            } else {
                prob * (f64::from(lp) - f64::from(lq))
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// Summarises per-prompt distributions of a baseline and a candidate (same prompts, same
/// order).
pub fn divergence(baseline: &[Vec<f32>], candidate: &[Vec<f32>]) -> Divergence {
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    };
    let klds: Vec<f64> = baseline
        .iter()
        .zip(candidate)
        .map(|(p, q)| kl_divergence(p, q))
        .collect();
    let same = baseline
        .iter()
        .zip(candidate)
        .filter(|(p, q)| argmax(p) == argmax(q))
        .count();
    let n = klds.len();
    Divergence {
        prompts: n,
        mean_kld: if n == 0 {
            0.0
        } else {
            klds.iter().sum::<f64>() / n as f64
        },
        max_kld: klds.iter().copied().fold(0.0, f64::max),
        same_top_token: if n == 0 { 1.0 } else { same as f64 / n as f64 },
    }
}

/// One broken threshold, with the items that broke it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// The suite, where the threshold is per suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    /// What was broken, in words.
    pub what: String,
    /// The items that regressed or failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(suite) = &self.suite {
            write!(f, "suite {suite}: ")?;
        }
        write!(f, "{}", self.what)?;
        if !self.items.is_empty() {
            const SHOWN: usize = 20;
            let shown: Vec<&str> = self.items.iter().take(SHOWN).map(String::as_str).collect();
            write!(f, " ({}", shown.join(", "))?;
            if self.items.len() > SHOWN {
                write!(f, ", and {} more", self.items.len() - SHOWN)?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// Thresholds one suite (or every suite) must keep against the baseline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionLimits {
    /// Most items that may go from passing to failing (default 0).
    #[serde(default)]
    pub max_regressed_items: Option<usize>,
    /// Most the score may fall (e.g. 0.02 for two points).
    #[serde(default)]
    pub max_score_drop: Option<f64>,
    /// Least per-item agreement with the baseline (0 to 1).
    #[serde(default)]
    pub min_agreement: Option<f64>,
}

/// The connected side's gate on a derived variant (`quantize --gate`, `--gate-policy FILE`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Limits for every suite.
    #[serde(default, flatten)]
    pub all: RegressionLimits,
    /// Most mean KL divergence from the parent, in nats.
    #[serde(default)]
    pub max_mean_kld: Option<f64>,
    /// Per-suite limits, replacing `all`'s where given.
    #[serde(default)]
    pub suites: BTreeMap<String, RegressionLimits>,
}

/// A gate file: `[gate]` with the fields of [`Gate`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GateFile {
    gate: Gate,
}

impl Gate {
    /// Reads `[gate]` from TOML text.
    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        let file: GateFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        file.gate.check_values()?;
        Ok(file.gate)
    }

    fn check_values(&self) -> std::result::Result<(), String> {
        for limits in std::iter::once(&self.all).chain(self.suites.values()) {
            limits.check_values()?;
        }
        if self.max_mean_kld.is_some_and(|v| !v.is_finite() || v < 0.0) {
            return Err("max_mean_kld must be a number ≥ 0".into());
        }
        Ok(())
    }

    /// Every threshold `comparison` breaks.
    pub fn check(&self, comparison: &Comparison) -> Vec<Violation> {
        let mut violations = Vec::new();
        for suite in &comparison.suites {
            let limits = self.suites.get(&suite.name).unwrap_or(&self.all);
            violations.extend(limits.check(suite));
        }
        if let (Some(most), Some(d)) = (self.max_mean_kld, &comparison.divergence)
            && d.mean_kld > most
        {
            violations.push(Violation {
                suite: None,
                what: format!("mean KL divergence {:.4} exceeds {most}", d.mean_kld),
                items: Vec::new(),
            });
        }
        violations
    }
}

impl RegressionLimits {
    fn check_values(&self) -> std::result::Result<(), String> {
        if self
            .max_score_drop
            .is_some_and(|v| !(0.0..=1.0).contains(&v))
        {
            return Err("max_score_drop must be 0 to 1".into());
        }
        if self
            .min_agreement
            .is_some_and(|v| !(0.0..=1.0).contains(&v))
        {
            return Err("min_agreement must be 0 to 1".into());
        }
        Ok(())
    }

    /// Every limit `suite` breaks; regressed items are allowed only as far as
    /// `max_regressed_items` says (0 when unset).
    pub fn check(&self, suite: &SuiteComparison) -> Vec<Violation> {
        let mut violations = Vec::new();
        let allowed = self.max_regressed_items.unwrap_or(0);
        if suite.regressed.len() > allowed {
            violations.push(Violation {
                suite: Some(suite.name.clone()),
                what: format!(
                    "{} item(s) regressed (at most {allowed} allowed)",
                    suite.regressed.len()
                ),
                items: suite.regressed.clone(),
            });
        }
        if let Some(most) = self.max_score_drop {
            let drop = suite.baseline_score - suite.candidate_score;
            if drop > most + 1e-12 {
                violations.push(Violation {
                    suite: Some(suite.name.clone()),
                    what: format!(
                        "score fell {:.3} → {:.3} (at most {most} allowed)",
                        suite.baseline_score, suite.candidate_score
                    ),
                    items: suite.regressed.clone(),
                });
            }
        }
        if let Some(least) = self.min_agreement
            && suite.agreement + 1e-12 < least
        {
            violations.push(Violation {
                suite: Some(suite.name.clone()),
                what: format!(
                    "agreement with the baseline is {:.3} (at least {least} required)",
                    suite.agreement
                ),
                items: Vec::new(),
            });
        }
        violations
    }
}

/// The isolated side's requirements (`[evals]` in policy.toml).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Whether approve and tag need a fresh eval record made on this side.
    #[serde(default)]
    pub required: bool,
    /// How old (hours) a record may be to count as fresh (default 168, a week).
    #[serde(default)]
    pub max_age_hours: Option<u64>,
    /// Least score per suite; a suite named here must have run.
    #[serde(default)]
    pub min_score: BTreeMap<String, f64>,
    /// Regression limits against the version the tag points at now.
    #[serde(default)]
    pub regression: Option<RegressionLimits>,
    /// Latency budget every latency item must meet: most milliseconds to the first token.
    #[serde(default)]
    pub max_ttft_ms: Option<f64>,
    /// Latency budget: fewest tokens per second.
    #[serde(default)]
    pub min_tokens_per_s: Option<f64>,
}

impl Requirements {
    /// Refuses values that cannot mean anything.
    pub fn check_values(&self) -> std::result::Result<(), String> {
        for (suite, score) in &self.min_score {
            if !(0.0..=1.0).contains(score) {
                return Err(format!("evals.min_score.{suite} must be 0 to 1"));
            }
        }
        if let Some(r) = &self.regression {
            r.check_values()?;
        }
        for (what, v) in [
            ("max_ttft_ms", self.max_ttft_ms),
            ("min_tokens_per_s", self.min_tokens_per_s),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v <= 0.0) {
                return Err(format!("evals.{what} must be a positive number"));
            }
        }
        Ok(())
    }

    /// Hours a record stays fresh.
    pub fn max_age_hours(&self) -> u64 {
        self.max_age_hours.unwrap_or(168)
    }

    /// Every requirement `record` breaks; `baseline` is the record of the version tagged now
    /// (none when nothing is tagged yet).
    pub fn check(&self, record: &EvalRecord, baseline: Option<&EvalRecord>) -> Vec<Violation> {
        let mut violations = Vec::new();
        for (name, least) in &self.min_score {
            match record.suite(name) {
                None => violations.push(Violation {
                    suite: Some(name.clone()),
                    what: "was not run".into(),
                    items: Vec::new(),
                }),
                Some(s) if s.score + 1e-12 < *least => violations.push(Violation {
                    suite: Some(name.clone()),
                    what: format!("score {:.3} is below {least}", s.score),
                    items: s
                        .items
                        .iter()
                        .filter(|i| !i.passed)
                        .map(|i| i.id.clone())
                        .collect(),
                }),
                Some(_) => {}
            }
        }
        if let (Some(limits), Some(baseline)) = (&self.regression, baseline) {
            for suite in compare(&baseline.suites, &record.suites).suites {
                violations.extend(limits.check(&suite));
            }
        }
        for suite in &record.suites {
            let slow: Vec<String> = suite
                .items
                .iter()
                .filter(|i| {
                    i.timing.is_some_and(|t| {
                        self.max_ttft_ms.is_some_and(|m| t.ttft_ms > m)
                            || self.min_tokens_per_s.is_some_and(|m| t.tokens_per_s < m)
                    })
                })
                .map(|i| i.id.clone())
                .collect();
            if !slow.is_empty() {
                violations.push(Violation {
                    suite: Some(suite.name.clone()),
                    what: "over the latency budget".into(),
                    items: slow,
                });
            }
        }
        violations
    }
}
