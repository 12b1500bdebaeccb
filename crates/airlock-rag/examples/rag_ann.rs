//! The vector index at scale, run by `scripts/bench-rag.sh`.
//!
//! `rag_ann N QUERIES EXPANSIONS WORK_DIR` builds an index of N synthetic 384-dimension
//! vectors drawn like sentence embeddings (unit vectors scattered around a thousand topics),
//! saves it and memory-maps it as searches do, then runs QUERIES new vectors from the same
//! distribution on one thread at each candidate-list size of EXPANSIONS (comma-separated):
//! latency p50/p95 and recall@10 against exact search (over a hundred of the queries). Prints
//! one JSON object, with the build time (every core), the index file's size and the
//! process's memory: at its peak (building), and before and after mapping and searching.
//! Vectors are generated in batches and never all held, so the figures are the index's.

#![expect(clippy::print_stdout, reason = "a benchmark prints its report")]
#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use std::time::Instant;

use airlock_rag::internal::{VectorIndex, cosine};
use serde_json::json;

const DIMENSION: usize = 384;
const TOPICS: usize = 1000;
/// Spread around a topic: a point's cosine to its topic is about 0.6, as related sentences'
/// embeddings are.
const SPREAD: f32 = 0.07;

/// A small deterministic generator (SplitMix64) with normal deviates (Box-Muller).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn point(rng: &mut Rng, topics: &[Vec<f32>]) -> Vec<f32> {
    let topic = &topics[(rng.next() % topics.len() as u64) as usize];
    normalized(topic.iter().map(|t| t + SPREAD * rng.normal()).collect())
}

fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// A memory figure of /proc/self/status, MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The ten best (id, similarity) seen so far, best first.
fn keep_best(best: &mut Vec<(u64, f32)>, id: u64, similarity: f32) {
    if best.len() == 10 && best[9].1 >= similarity {
        return;
    }
    let at = best.partition_point(|(_, s)| *s >= similarity);
    best.insert(at, (id, similarity));
    best.truncate(10);
}

/// Vectors generated and inserted at a time: the whole set is never held in memory.
const BATCH: usize = 50_000;
/// Queries whose exact answers are computed (by brute force, as the vectors stream past).
const EXACT_QUERIES: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args[1].parse().unwrap();
    let queries: usize = args[2].parse().unwrap();
    let expansions: Vec<usize> = args[3].split(',').map(|e| e.parse().unwrap()).collect();
    let work = std::path::Path::new(&args[4]);
    let mut rng = Rng(20261129);
    let topics: Vec<Vec<f32>> = (0..TOPICS)
        .map(|_| normalized((0..DIMENSION).map(|_| rng.normal()).collect()))
        .collect();
    let queries: Vec<Vec<f32>> = (0..queries).map(|_| point(&mut rng, &topics)).collect();
    let mut exact: Vec<Vec<(u64, f32)>> = vec![Vec::new(); EXACT_QUERIES.min(queries.len())];
    let mut index = VectorIndex::new(DIMENSION).unwrap();
    let mut build_s = 0.0;
    let mut next_id = 1u64;
    while next_id <= n as u64 {
        let count = BATCH.min(n + 1 - next_id as usize);
        let batch: Vec<(u64, Vec<f32>)> = (0..count as u64)
            .map(|i| (next_id + i, point(&mut rng, &topics)))
            .collect();
        next_id += count as u64;
        for (best, q) in exact.iter_mut().zip(&queries) {
            for (id, v) in &batch {
                keep_best(best, *id, cosine(q, v));
            }
        }
        let items: Vec<(u64, &[f32])> = batch.iter().map(|(id, v)| (*id, v.as_slice())).collect();
        let started = Instant::now();
        index.upsert_all(&items).unwrap();
        build_s += started.elapsed().as_secs_f64();
    }
    let path = work.join("ann.usearch");
    index.save(&path).unwrap();
    drop(index);
    let file_bytes = std::fs::metadata(&path).unwrap().len();
    let rss_before = rss_mib();
    let mapped = VectorIndex::view(&path, DIMENSION).unwrap();
    let mut results = Vec::new();
    for &expansion in &expansions {
        mapped.set_expansion(expansion);
        // A warm-up pass maps the pages a search touches.
        for q in queries.iter().take(200) {
            mapped.search(q, 10, &|_| true).unwrap();
        }
        let mut latencies = Vec::with_capacity(queries.len());
        let mut found = 0usize;
        for (i, q) in queries.iter().enumerate() {
            let started = Instant::now();
            let hits = mapped.search(q, 10, &|_| true).unwrap();
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
            if let Some(truth) = exact.get(i) {
                found += hits
                    .iter()
                    .filter(|(id, _)| truth.iter().any(|(t, _)| t == id))
                    .count();
            }
        }
        latencies.sort_by(f64::total_cmp);
        results.push(json!({
            "expansion": expansion,
            "recall_at_10": found as f64 / (exact.len() * 10) as f64,
            "p50_ms": percentile(&latencies, 0.5),
            "p95_ms": percentile(&latencies, 0.95),
        }));
    }
    println!(
        "{}",
        json!({
            "vectors": n,
            "dimension": DIMENSION,
            "build_seconds": build_s,
            "build_threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "index_file_mib": file_bytes as f64 / (1 << 20) as f64,
            "rss_mib_peak": status_mib("VmHWM:"),
            "rss_mib_before_mapping": rss_before,
            "rss_mib_mapped_after_searches": status_mib("VmRSS:"),
            "searches": results,
        })
    );
}
