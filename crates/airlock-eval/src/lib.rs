//! Evals: regression suites that travel inside bundles, and the gates built on them.
//!
//! A bundle's `evals/*.jsonl` are [`Suite`]s (generation, multiple-choice, safety and latency
//! cases; format in [`suite`]). [`run`] runs them on any [`EvalModel`] — greedy, in order,
//! every item's result kept — and the results become an [`EvalRecord`] that whoever ran it
//! signs. [`compare`] sets a derived variant (or a new version) against its baseline item by
//! item, and [`Gate`] and [`Requirements`] turn that into refusals naming the items that
//! regressed. This crate knows no engine: the CLI adapts the embedded one to [`EvalModel`].

mod error;
pub mod gate;
pub mod record;
pub mod run;
pub mod suite;

pub use error::{Error, Result};
pub use gate::{
    Comparison, Divergence, Gate, RegressionLimits, Requirements, SuiteComparison, Violation,
    compare, divergence, kl_divergence,
};
pub use record::{EVAL_RECORD_TYPE, EngineRef, EvalRecord, Machine, ModelRef};
pub use run::{
    ChoiceRequest, ChoiceScore, EvalModel, Generated, ItemResult, RunProgress, SuiteResult, Timing,
    judge, run,
};
pub use suite::{Case, Expectation, Item, Prompt, RankBy, Suite, SuiteLimits};
