//! Prometheus text exposition: requests, latency histograms, tokens, queue depth.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use airlock_engine::EngineState;

use crate::models::ServedModel;

/// Latency bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters since startup.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    audit_failures: AtomicU64,
}

impl Metrics {
    /// Counts one finished request.
    pub fn record(&self, route: &str, status: u16, latency: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((route.to_owned(), status))
            .or_default() += 1;
        let seconds = latency.as_secs_f64();
        let mut latency = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        let h = latency.entry(route.to_owned()).or_default();
        for (n, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[n] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// Counts tokens of one generation; `cached` of its `prompt` tokens came from a kept cache.
    pub fn tokens(&self, prompt: usize, completion: usize, cached: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion as u64, Ordering::Relaxed);
        self.cached_tokens
            .fetch_add(cached as u64, Ordering::Relaxed);
    }

    /// Counts an audit entry the log could not take.
    pub fn audit_failure(&self) {
        self.audit_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text, with each model's queue and running counts read now.
    pub fn render<'a>(&self, models: impl Iterator<Item = &'a ServedModel>) -> String {
        let mut out = String::new();
        out.push_str("# HELP airlock_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE airlock_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "airlock_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP airlock_request_duration_seconds Time to the end of the response.\n");
        out.push_str("# TYPE airlock_request_duration_seconds histogram\n");
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for (bound, count) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "airlock_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "airlock_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "airlock_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "airlock_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP airlock_tokens_total Tokens processed, by kind.\n");
        out.push_str("# TYPE airlock_tokens_total counter\n");
        let _ = writeln!(
            out,
            "airlock_tokens_total{{kind=\"prompt\"}} {}",
            self.prompt_tokens.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "airlock_tokens_total{{kind=\"completion\"}} {}",
            self.completion_tokens.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "airlock_cached_prompt_tokens_total",
            "Prompt tokens read from a caller's kept cache instead of decoded (counted in airlock_tokens_total{kind=\"prompt\"} too).",
            &self.cached_tokens,
        );
        counter(
            &mut out,
            "airlock_audit_failures_total",
            "Audit entries the log could not take (each is also an error in the server log).",
            &self.audit_failures,
        );
        out.push_str("# HELP airlock_queue_depth Requests waiting for a model.\n");
        out.push_str("# TYPE airlock_queue_depth gauge\n");
        let mut running = String::new();
        let mut batches = String::new();
        let mut up = String::new();
        let mut restarts = String::new();
        for model in models {
            let status = model.status();
            let _ = writeln!(
                out,
                "airlock_queue_depth{{model=\"{}\"}} {}",
                model.alias, status.queued
            );
            let _ = writeln!(
                running,
                "airlock_running{{model=\"{}\"}} {}",
                model.alias, status.running
            );
            let kind = status.kind.as_str();
            let ready = u8::from(status.state == EngineState::Ready);
            let _ = writeln!(
                up,
                "airlock_engine_up{{model=\"{}\",engine=\"{kind}\"}} {ready}",
                model.alias
            );
            let _ = writeln!(
                restarts,
                "airlock_engine_restarts_total{{model=\"{}\",engine=\"{kind}\"}} {}",
                model.alias, status.restarts
            );
            if let Some(n) = status.batches {
                let _ = writeln!(
                    batches,
                    "airlock_embedding_batches_total{{model=\"{}\"}} {n}",
                    model.alias
                );
            }
        }
        out.push_str("# HELP airlock_running Requests a model is running now.\n");
        out.push_str("# TYPE airlock_running gauge\n");
        out.push_str(&running);
        out.push_str(
            "# HELP airlock_embedding_batches_total Model calls that answered embedding requests (waiting requests share one).\n",
        );
        out.push_str("# TYPE airlock_embedding_batches_total counter\n");
        out.push_str(&batches);
        out.push_str(
            "# HELP airlock_engine_up Whether a model's engine takes requests (1) or is starting, restarting or failed (0).\n",
        );
        out.push_str("# TYPE airlock_engine_up gauge\n");
        out.push_str(&up);
        out.push_str(
            "# HELP airlock_engine_restarts_total Times a model's engine process was started again after going down.\n",
        );
        out.push_str("# TYPE airlock_engine_restarts_total counter\n");
        out.push_str(&restarts);
        out.push_str(
            "# HELP airlock_egress_refused_total Network attempts the kernel refused in this process and the engine processes it started.\n",
        );
        out.push_str("# TYPE airlock_egress_refused_total counter\n");
        let _ = writeln!(
            out,
            "airlock_egress_refused_total {}",
            airlock_confine::blocked_total()
        );
        out.push_str(
            "# HELP airlock_egress_total Connections the egress allow-list let through and attempts the kernel refused, by destination (at most 256 told apart; the rest under \"other\").\n",
        );
        out.push_str("# TYPE airlock_egress_total counter\n");
        for (destination, decision, count) in airlock_confine::egress_by_destination() {
            let _ = writeln!(
                out,
                "airlock_egress_total{{destination=\"{}\",decision=\"{decision}\"}} {count}",
                label_value(&destination)
            );
        }
        out
    }
}

/// `text` as a Prometheus label value: backslash, quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes an unlabelled counter with its help and type lines.
fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.record("/v1/models", 200, Duration::from_micros(500));
        metrics.record("/v1/models", 200, Duration::from_millis(30));
        let text = metrics.render(std::iter::empty());
        assert!(text.contains("route=\"/v1/models\",le=\"0.001\"} 1\n"));
        assert!(text.contains("route=\"/v1/models\",le=\"0.05\"} 2\n"));
        assert!(text.contains("route=\"/v1/models\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("airlock_requests_total{route=\"/v1/models\",status=\"200\"} 2\n"));
    }
}
