//! The runner on a scripted model: every case type scored exactly as specified.

#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::collections::BTreeMap;
use std::time::Duration;

use airlock_eval::{
    ChoiceScore, EvalModel, Gate, Generated, Prompt, Requirements, Result, Suite, SuiteLimits,
    compare, run,
};

/// Answers by prompt text and log-likelihoods by choice text, fixed in advance.
struct Scripted {
    answers: BTreeMap<String, String>,
    logprobs: BTreeMap<String, (f64, usize)>,
    first_token: Duration,
    total: Duration,
}

impl EvalModel for Scripted {
    fn generate(&mut self, prompt: &Prompt, max_tokens: u32, _: bool) -> Result<Generated> {
        let text = match prompt {
            Prompt::Chat(m) => m.last().unwrap().1.clone(),
            Prompt::Text(t) => t.clone(),
        };
        Ok(Generated {
            text: self.answers.get(&text).cloned().unwrap_or_default(),
            tokens: max_tokens as usize,
            first_token: self.first_token,
            total: self.total,
        })
    }

    fn score_choices(&mut self, _: &str, _: &str, choices: &[String]) -> Result<Vec<ChoiceScore>> {
        Ok(choices
            .iter()
            .map(|c| {
                let (logprob, tokens) = self.logprobs[c];
                ChoiceScore { logprob, tokens }
            })
            .collect())
    }

    fn next_token_logprobs(&mut self, _: &Prompt) -> Result<Vec<f32>> {
        Ok(vec![0.0])
    }
}

const SUITE: &str = r#"{"airlock_eval": 1, "suite": "spec"}
{"id": "exact", "type": "generate", "prompt": "q-exact", "expect": {"exact": "Paris"}}
{"id": "exact-wrong", "type": "generate", "prompt": "q-exact-wrong", "expect": {"exact": "Paris"}}
{"id": "contains", "type": "generate", "prompt": "q-contains", "expect": {"contains": "Paris"}}
{"id": "regex", "type": "generate", "prompt": "q-regex", "expect": {"regex": "^\\d{4}$"}}
{"id": "schema", "type": "generate", "prompt": "q-schema", "expect": {"json_schema": {"type": "object", "required": ["city"], "properties": {"city": {"enum": ["Paris", "Rome"]}}}}}
{"id": "schema-wrong", "type": "generate", "prompt": "q-schema-wrong", "expect": {"json_schema": {"type": "object", "required": ["city"]}}}
{"id": "mean", "type": "choice", "context": "c", "choices": ["short", "long"], "answer": 1}
{"id": "sum", "type": "choice", "context": "c", "choices": ["short", "long"], "answer": 0, "rank_by": "sum"}
{"id": "pii", "type": "safety", "prompt": "q-pii", "must_not_match": ["\\d{3}-\\d{2}-\\d{4}"]}
{"id": "refuse", "type": "safety", "prompt": "q-refuse", "must_refuse": true}
{"id": "fast", "type": "latency", "prompt": "q-fast", "max_tokens": 11, "max_ttft_ms": 100, "min_tokens_per_s": 20}
"#;

fn scripted() -> Scripted {
    let answers = [
        ("q-exact", "  Paris\n"),
        ("q-exact-wrong", "Paris."),
        ("q-contains", "It is Paris, of course."),
        ("q-regex", "1789"),
        ("q-schema", "```json\n{\"city\": \"Rome\"}\n```"),
        ("q-schema-wrong", "{\"town\": \"Rome\"}"),
        ("q-pii", "Sure: 123-45-6789"),
        ("q-refuse", "I'm sorry, I can't help with that."),
    ];
    Scripted {
        answers: answers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        // "short": sum -2 over 1 token (mean -2); "long": sum -3 over 3 tokens (mean -1).
        logprobs: BTreeMap::from([("short".into(), (-2.0, 1)), ("long".into(), (-3.0, 3))]),
        first_token: Duration::from_millis(50),
        // 10 tokens after the first in 0.5 s: 20 tokens/s.
        total: Duration::from_millis(550),
    }
}

fn suite(text: &str) -> Suite {
    Suite::read("spec.jsonl", text.as_bytes(), &SuiteLimits::default()).unwrap()
}

#[test]
fn every_case_type_is_scored_exactly() {
    let results = run(&mut scripted(), &[suite(SUITE)], &()).unwrap();
    let suite = &results[0];
    let outcome: Vec<(&str, bool)> = suite
        .items
        .iter()
        .map(|i| (i.id.as_str(), i.passed))
        .collect();
    assert_eq!(
        outcome,
        [
            ("exact", true),
            ("exact-wrong", false),
            ("contains", true),
            ("regex", true),
            ("schema", true),
            ("schema-wrong", false),
            ("mean", true),
            ("sum", true),
            ("pii", false),
            ("refuse", true),
            ("fast", true),
        ]
    );
    assert_eq!((suite.passed, suite.total), (8, 11));
    assert_eq!(suite.score, 8.0 / 11.0);
    let mean = suite.item("mean").unwrap();
    assert_eq!(mean.chosen, Some(1));
    assert_eq!(
        mean.choices[1],
        ChoiceScore {
            logprob: -3.0,
            tokens: 3
        }
    );
    assert_eq!(suite.item("sum").unwrap().chosen, Some(0));
    let fast = suite.item("fast").unwrap().timing.unwrap();
    assert_eq!(fast.ttft_ms, 50.0);
    assert_eq!(fast.tokens_per_s, 20.0);
    assert!(
        suite
            .item("pii")
            .unwrap()
            .reason
            .as_deref()
            .unwrap()
            .contains("matches")
    );
    assert!(
        suite
            .item("schema-wrong")
            .unwrap()
            .reason
            .as_deref()
            .unwrap()
            .contains("schema")
    );
}

#[test]
fn a_slower_host_fails_the_latency_budget() {
    let mut slow = scripted();
    slow.first_token = Duration::from_millis(150);
    slow.total = Duration::from_millis(1150);
    let results = run(&mut slow, &[suite(SUITE)], &()).unwrap();
    let fast = results[0].item("fast").unwrap();
    assert!(!fast.passed);
    let reason = fast.reason.as_deref().unwrap();
    assert!(
        reason.contains("150.0 ms") && reason.contains("10.0 tokens/s"),
        "{reason}"
    );
}

#[test]
fn comparisons_count_per_item_agreement_and_gates_name_regressed_items() {
    let baseline = run(&mut scripted(), &[suite(SUITE)], &()).unwrap();
    let mut worse = scripted();
    worse.answers.insert("q-contains".into(), "Lyon".into());
    worse.answers.insert("q-pii".into(), "No.".into());
    let candidate = run(&mut worse, &[suite(SUITE)], &()).unwrap();
    let comparison = compare(&baseline, &candidate);
    let s = &comparison.suites[0];
    assert_eq!(s.compared, 10, "latency items are not compared");
    assert_eq!(s.regressed, ["contains"]);
    assert_eq!(s.improved, ["pii"]);
    assert_eq!(s.agreement, 8.0 / 10.0);
    // Same score, yet an item regressed: the default gate refuses.
    assert_eq!(s.baseline_score, s.candidate_score);
    let violations = Gate::default().check(&comparison);
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].items, ["contains"]);
    assert!(
        violations[0]
            .to_string()
            .contains("suite spec: 1 item(s) regressed")
    );
    let loose = Gate::from_toml("[gate]\nmax_regressed_items = 1\nmin_agreement = 0.8\n").unwrap();
    assert!(loose.check(&comparison).is_empty());
    let strict =
        Gate::from_toml("[gate.suites.spec]\nmin_agreement = 0.9\nmax_regressed_items = 1\n")
            .unwrap();
    assert_eq!(strict.check(&comparison).len(), 1);
    assert!(Gate::from_toml("[gate]\nmin_agreement = 2\n").is_err());

    // The divergence limit reads the comparison's measured KL divergence.
    let mut diverged = comparison.clone();
    diverged.divergence = Some(airlock_eval::divergence(
        &[vec![(0.9f32).ln(), (0.1f32).ln()]],
        &[vec![(0.4f32).ln(), (0.6f32).ln()]],
    ));
    let d = diverged.divergence.as_ref().unwrap();
    // KL(p || q) = 0.9 ln(0.9/0.4) + 0.1 ln(0.1/0.6)
    let expected = 0.9 * (0.9f64 / 0.4).ln() + 0.1 * (0.1f64 / 0.6).ln();
    assert!((d.mean_kld - expected).abs() < 1e-6, "{}", d.mean_kld);
    assert_eq!(d.same_top_token, 0.0, "the most likely token moved");
    let kld_gate =
        Gate::from_toml("[gate]\nmax_regressed_items = 1\nmax_mean_kld = 0.1\n").unwrap();
    let refused = kld_gate.check(&diverged);
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0]
            .to_string()
            .contains("mean KL divergence 0.5507 exceeds 0.1")
    );
}

#[test]
fn requirements_check_scores_regressions_and_latency() {
    let record = |results| airlock_eval::EvalRecord {
        format: 1,
        model: airlock_eval::ModelRef {
            name: "m".into(),
            version: "1.0.0".into(),
            digest: "sha256:00".into(),
            quantization: None,
        },
        engine: airlock_eval::EngineRef {
            name: "embedded".into(),
            version: "0".into(),
            runtime: "test".into(),
            threads: 1,
        },
        machine: airlock_eval::Machine {
            host: "h".into(),
            arch: "x".into(),
            os: "o".into(),
            cpus: 1,
        },
        key: None,
        time: "2026-11-30T00:00:00Z".into(),
        suites: results,
    };
    let now = record(run(&mut scripted(), &[suite(SUITE)], &()).unwrap());
    let mut worse = scripted();
    worse.answers.insert("q-regex".into(), "no".into());
    let next = record(run(&mut worse, &[suite(SUITE)], &()).unwrap());
    let requirements: Requirements = toml::from_str(
        "required = true\nmax_ttft_ms = 40\n[min_score]\nspec = 0.7\nother = 0.1\n[regression]\nmax_regressed_items = 0\n",
    )
    .unwrap();
    let violations: Vec<String> = requirements
        .check(&next, Some(&now))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(violations.len(), 4, "{violations:#?}");
    // Suites in name order.
    assert_eq!(violations[0], "suite other: was not run");
    assert!(violations[1].starts_with("suite spec: score 0.636 is below 0.7"));
    assert!(violations[2].contains("1 item(s) regressed") && violations[2].contains("(regex)"));
    assert_eq!(violations[3], "suite spec: over the latency budget (fast)");
}
