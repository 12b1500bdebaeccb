//! The result record: what ran, where, on which model, and every item's result. Signed as a
//! DSSE envelope by whoever ran it; canonical JSON, so two runs of the same suites on the same
//! model and engine give the same bytes apart from `time`, the latency items' `timing`, and
//! the signature.

use serde::{Deserialize, Serialize};

use crate::run::SuiteResult;

/// DSSE payload type of an eval record.
pub const EVAL_RECORD_TYPE: &str = "application/vnd.airlock.eval-record.v1+json";

/// One eval run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalRecord {
    /// Record format, 1.
    pub format: u32,
    /// The model evaluated.
    pub model: ModelRef,
    /// The engine that ran it.
    pub engine: EngineRef,
    /// The machine it ran on.
    pub machine: Machine,
    /// Key id (hex) of the key that signed the record; `None` for an unsigned record.
    #[serde(default)]
    pub key: Option<String>,
    /// RFC 3339 UTC time the run finished.
    pub time: String,
    /// Every suite's results.
    pub suites: Vec<SuiteResult>,
}

/// The model a record is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `sha256:<hex>` of the bundle.
    pub digest: String,
    /// Quantisation label from the bundle (e.g. `Q4_K_M`).
    #[serde(default)]
    pub quantization: Option<String>,
}

/// The engine that produced a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineRef {
    /// e.g. `embedded`.
    pub name: String,
    /// airlock's version.
    pub version: String,
    /// The inference runtime (e.g. `llama.cpp`).
    pub runtime: String,
    /// CPU threads it decoded with.
    pub threads: usize,
}

/// Where a record was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Host name.
    pub host: String,
    /// CPU architecture.
    pub arch: String,
    /// Operating system.
    pub os: String,
    /// CPUs the process may use.
    pub cpus: usize,
}

impl EvalRecord {
    /// The result of suite `name`.
    pub fn suite(&self, name: &str) -> Option<&SuiteResult> {
        self.suites.iter().find(|s| s.name == name)
    }

    /// Each suite's `name passed/total`, comma-separated: the audit log's summary of a run.
    pub fn scores_summary(&self) -> String {
        let scores: Vec<String> = self
            .suites
            .iter()
            .map(|s| format!("{} {}/{}", s.name, s.passed, s.total))
            .collect();
        scores.join(", ")
    }

    /// Every failed item as `suite/id`, comma-separated (empty when all passed).
    pub fn failed_summary(&self) -> String {
        let failed: Vec<String> = self
            .suites
            .iter()
            .flat_map(|s| {
                s.items
                    .iter()
                    .filter(|i| !i.passed)
                    .map(move |i| format!("{}/{}", s.name, i.id))
            })
            .collect();
        failed.join(", ")
    }

    /// Canonical JSON bytes (sorted keys, no whitespace): what is signed and compared.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serialising plain data cannot fail.
        serde_json_canonical(self)
    }
}

fn serde_json_canonical<T: Serialize>(value: &T) -> Vec<u8> {
    // serde_json's map is ordered (BTreeMap) unless `preserve_order` is on, so a round trip
    // through Value sorts every object's keys.
    let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&value).unwrap_or_default()
}
