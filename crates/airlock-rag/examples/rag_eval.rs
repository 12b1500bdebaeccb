//! Retrieval quality and latency of a collection, run by `scripts/eval-rag.sh`.
//!
//! `rag_eval DATA COLLECTION MODEL_DIR QUESTIONS [THREADS]` opens the collection (as searches
//! do), embeds each question of QUESTIONS (JSON lines `{"query", "document"}`, the document
//! being the file name that answers it) with the embedding model in MODEL_DIR, and prints one
//! JSON object: nDCG@10 and recall@10 by document for the dense ranking alone, BM25 alone, and
//! fused at several keyword weights; the approximate index's recall@10 against exact search;
//! and search latency (p50, p95) of the default fusion, the query's embedding not counted.

#![expect(clippy::print_stdout, reason = "a benchmark prints its report")]
#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use std::path::Path;
use std::time::Instant;

use airlock_engine::embed::EmbeddingConfig;
use airlock_engine::{EmbeddingEngine, EmbeddingModel, ModelFiles};
use airlock_rag::{Clearance, Collection, Weights, block_on};
use serde_json::{Value, json};

/// The documents of a ranking, first occurrence kept, as file names.
fn documents(hits: &[airlock_rag::Hit]) -> Vec<String> {
    let mut seen = Vec::new();
    for hit in hits {
        let name = hit
            .chunk
            .document
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_owned();
        if !seen.contains(&name) {
            seen.push(name);
        }
    }
    seen
}

/// nDCG@10 and recall@10 of one relevant document in `ranked`.
fn score(ranked: &[String], relevant: &str) -> (f64, f64) {
    match ranked.iter().take(10).position(|d| d == relevant) {
        Some(i) => (1.0 / ((i + 2) as f64).log2(), 1.0),
        None => (0.0, 0.0),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (data, name, model_dir, questions) = (&args[1], &args[2], &args[3], &args[4]);
    let threads = args.get(5).and_then(|t| t.parse().ok()).unwrap_or(1);
    let collection = Collection::open(Path::new(data), name).unwrap();
    let files = ModelFiles::directory("embedding", Path::new(model_dir)).unwrap();
    let config = EmbeddingConfig {
        threads,
        ..EmbeddingConfig::default()
    };
    let model = EmbeddingModel::load(&files, &config).unwrap();
    let engine = EmbeddingEngine::start(model, 64, 256).unwrap();
    let top = collection.classes().names().last().unwrap().clone();
    let clearance = Clearance::new(collection.classes(), &top, vec![]).unwrap();
    let questions: Vec<Value> = std::fs::read_to_string(questions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rankings: Vec<(&str, Weights)> = vec![
        (
            "dense",
            Weights {
                dense: 1.0,
                keyword: 0.0,
                ..Weights::default()
            },
        ),
        (
            "bm25",
            Weights {
                dense: 0.0,
                keyword: 1.0,
                ..Weights::default()
            },
        ),
        (
            "hybrid 0.1",
            Weights {
                keyword: 0.1,
                ..Weights::default()
            },
        ),
        (
            "hybrid 0.2",
            Weights {
                keyword: 0.2,
                ..Weights::default()
            },
        ),
        ("hybrid 0.3 (default)", Weights::default()),
        (
            "hybrid 0.5",
            Weights {
                keyword: 0.5,
                ..Weights::default()
            },
        ),
        (
            "hybrid 1.0",
            Weights {
                keyword: 1.0,
                ..Weights::default()
            },
        ),
    ];
    let mut totals = vec![(0.0, 0.0); rankings.len()];
    let mut ann_recall = 0.0;
    let mut latencies = Vec::new();
    let mut embed_ms = Vec::new();
    for q in &questions {
        let query = q["query"].as_str().unwrap();
        let relevant = q["document"].as_str().unwrap();
        let started = Instant::now();
        let vector = block_on(Collection::embed_query(&engine, query)).unwrap();
        embed_ms.push(started.elapsed().as_secs_f64() * 1e3);
        for (total, (_, weights)) in totals.iter_mut().zip(&rankings) {
            let hits = collection
                .search(query, &vector, &clearance, 10, weights)
                .unwrap();
            let (ndcg, recall) = score(&documents(&hits), relevant);
            total.0 += ndcg;
            total.1 += recall;
        }
        let started = Instant::now();
        collection
            .search(query, &vector, &clearance, 10, &Weights::default())
            .unwrap();
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        let exact = collection.exact_dense(&vector, &clearance, 10).unwrap();
        let approximate = collection
            .approximate_dense(&vector, &clearance, 10)
            .unwrap();
        let found = approximate.iter().filter(|id| exact.contains(id)).count();
        ann_recall += found as f64 / exact.len().max(1) as f64;
    }
    let n = questions.len() as f64;
    latencies.sort_by(f64::total_cmp);
    embed_ms.sort_by(f64::total_cmp);
    let by_ranking: serde_json::Map<String, Value> = rankings
        .iter()
        .zip(&totals)
        .map(|((name, _), (ndcg, recall))| {
            (
                (*name).to_owned(),
                json!({"ndcg_at_10": ndcg / n, "recall_at_10": recall / n}),
            )
        })
        .collect();
    let info = collection.info().unwrap();
    println!(
        "{}",
        json!({
            "questions": questions.len(),
            "documents": info.documents,
            "chunks": info.chunks,
            "rankings": by_ranking,
            "ann_recall_at_10": ann_recall / n,
            "search_ms": {"p50": percentile(&latencies, 0.5), "p95": percentile(&latencies, 0.95)},
            "embed_query_ms": {"p50": percentile(&embed_ms, 0.5), "p95": percentile(&embed_ms, 0.95)},
            "collection_bytes": info.bytes,
        })
    );
}
