//! Throughput of the embedded engine, for `scripts/bench-engine.sh` (which runs llama.cpp's
//! llama-bench and onnxruntime beside it on the same files and threads).
//!
//!   engine_bench chat MODEL.gguf THREADS PROMPT_TOKENS GEN_TOKENS [STREAMS,...]
//!   engine_bench turns MODEL.gguf THREADS TURNS SAID_TOKENS ANSWER_TOKENS
//!   engine_bench embed MODEL_DIR THREADS BATCH SENTENCES_FILE ROUNDS
//!
//! Prints one JSON object per measurement.

#![expect(clippy::print_stdout, clippy::unwrap_used, reason = "a benchmark tool")]

use std::time::{Duration, Instant};

use airlock_engine::embed::EmbeddingConfig;
use airlock_engine::{
    ChatConfig, ChatModel, EmbeddingModel, Event, GenerateParams, ModelFiles, SamplingParams,
};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("chat") => chat(&args[1..]),
        Some("turns") => turns(&args[1..]),
        Some("embed") => embed(&args[1..]),
        _ => {
            eprintln!(
                "usage: engine_bench chat MODEL THREADS PROMPT GEN [STREAMS] | turns MODEL THREADS TURNS SAID ANSWER | embed DIR THREADS BATCH FILE ROUNDS"
            );
            return std::process::ExitCode::from(2);
        }
    }
    std::process::ExitCode::SUCCESS
}

/// A prompt of `n` ordinary tokens (what llama-bench feeds: arbitrary ids, no template).
fn prompt(model: &ChatModel, n: usize, salt: usize) -> Vec<i32> {
    let text = (0..n)
        .map(|i| format!(" w{}", (i * 7919 + salt * 104_729) % 997))
        .collect::<String>();
    let mut ids = model.tokenize(&text, false);
    ids.truncate(n);
    ids
}

fn chat(args: &[String]) {
    let path = std::path::Path::new(&args[0]);
    let threads: usize = args[1].parse().unwrap();
    let prompt_tokens: usize = args[2].parse().unwrap();
    let gen_tokens: usize = args[3].parse().unwrap();
    // Without a list of concurrencies, only the single-stream rates are measured.
    let streams: Vec<usize> = args
        .get(4)
        .map(|list| list.split(',').map(|s| s.parse().unwrap()).collect())
        .unwrap_or_default();
    let max_streams = streams.iter().copied().max().unwrap_or(1);
    let files = ModelFiles::single("bench", "model.gguf", path);
    let config = ChatConfig {
        threads,
        slots: max_streams,
        context_per_slot: Some((prompt_tokens + gen_tokens + 16).next_multiple_of(256)),
        queue: max_streams,
        batch_tokens: 512,
    };
    let model = ChatModel::load(&files, &config).unwrap();
    let params = GenerateParams {
        max_tokens: Some(gen_tokens),
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..Default::default()
    };
    // Warm-up, then single-stream prefill and decode rates.
    model
        .generate(prompt(&model, prompt_tokens, 99), params.clone())
        .unwrap()
        .collect_blocking()
        .unwrap();
    let mut best_prefill = 0f64;
    let mut best_decode = 0f64;
    for round in 0..3 {
        let p = prompt(&model, prompt_tokens, round);
        let n_prompt = p.len();
        let start = Instant::now();
        let mut g = model.generate(p, params.clone()).unwrap();
        let mut first = None;
        let mut tokens = 0usize;
        while let Some(event) = g.next_blocking() {
            match event.unwrap() {
                Event::Token { .. } => {
                    tokens += 1;
                    first.get_or_insert_with(Instant::now);
                }
                Event::Done { .. } => break,
            }
        }
        let end = Instant::now();
        let first = first.unwrap();
        best_prefill = best_prefill.max(n_prompt as f64 / (first - start).as_secs_f64());
        best_decode = best_decode.max((tokens - 1) as f64 / (end - first).as_secs_f64());
    }
    println!(
        "{{\"kind\":\"single\",\"threads\":{threads},\"prompt_tokens\":{prompt_tokens},\"gen_tokens\":{gen_tokens},\"prefill_tok_s\":{best_prefill:.1},\"decode_tok_s\":{best_decode:.1}}}"
    );
    // Each concurrency twice, the faster counts (the same rule as the single stream's best
    // of three): a shared machine's noise only ever slows a run down. Besides the whole run,
    // the decode phase alone: from the moment the last stream has its first token (every
    // prompt is in) to the end, when all streams decode together.
    for &n in &streams {
        let mut best: Option<(usize, Duration, f64)> = None;
        for round in 0..2 {
            let start = Instant::now();
            let running: Vec<_> = (0..n)
                .map(|i| {
                    model
                        .generate(
                            prompt(&model, prompt_tokens, 1000 + 100 * round + i),
                            params.clone(),
                        )
                        .unwrap()
                })
                .collect();
            let token_times: Vec<Vec<Instant>> = std::thread::scope(|s| {
                let handles: Vec<_> = running
                    .into_iter()
                    .map(|mut g| {
                        s.spawn(move || {
                            let mut times = Vec::new();
                            while let Some(event) = g.next_blocking() {
                                match event.unwrap() {
                                    Event::Token { .. } => times.push(Instant::now()),
                                    Event::Done { .. } => break,
                                }
                            }
                            times
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let wall = start.elapsed();
            let generated = token_times.iter().map(Vec::len).sum();
            let all_decoding = token_times.iter().map(|t| t[0]).max().unwrap();
            let end = token_times.iter().filter_map(|t| t.last()).max().unwrap();
            let decoded = token_times
                .iter()
                .flatten()
                .filter(|t| **t > all_decoding)
                .count();
            let decode_rate = decoded as f64 / (*end - all_decoding).as_secs_f64();
            if best.is_none_or(|(_, b, _)| wall < b) {
                best = Some((generated, wall, decode_rate));
            }
        }
        let (generated, wall, decode_rate) = best.unwrap();
        println!(
            "{{\"kind\":\"aggregate\",\"streams\":{n},\"generated\":{generated},\"seconds\":{:.3},\"tok_s\":{:.1},\"decode_tok_s\":{decode_rate:.1}}}",
            wall.as_secs_f64(),
            generated as f64 / wall.as_secs_f64()
        );
    }
}

/// A conversation of `TURNS` turns, each adding `SAID_TOKENS` of the user's and an answer of
/// `ANSWER_TOKENS`: the time to the first token of every turn, when each turn reuses the cache
/// its previous turn left (a cache scope) and when it decodes the whole conversation again.
fn turns(args: &[String]) {
    let path = std::path::Path::new(&args[0]);
    let threads: usize = args[1].parse().unwrap();
    let turns: usize = args[2].parse().unwrap();
    let said: usize = args[3].parse().unwrap();
    let answer: usize = args[4].parse().unwrap();
    let files = ModelFiles::single("bench", "model.gguf", path);
    let config = ChatConfig {
        threads,
        slots: 1,
        context_per_slot: Some((turns * (said + answer) + 16).next_multiple_of(256)),
        queue: 1,
        batch_tokens: 512,
    };
    let model = ChatModel::load(&files, &config).unwrap();
    let first_token = |scope: Option<&str>| {
        let mut prompt = Vec::new();
        let mut times = Vec::new();
        for turn in 0..turns {
            prompt.extend(self::prompt(&model, said, turn));
            let params = GenerateParams {
                max_tokens: Some(answer),
                sampling: SamplingParams::greedy(),
                ignore_eos: true,
                cache_scope: scope.map(str::to_owned),
                ..Default::default()
            };
            let start = Instant::now();
            let mut generation = model.generate(prompt.clone(), params).unwrap();
            let mut first = None;
            while let Some(event) = generation.next_blocking() {
                match event.unwrap() {
                    Event::Token { id, .. } => {
                        first.get_or_insert_with(|| start.elapsed());
                        prompt.push(id);
                    }
                    Event::Done { .. } => break,
                }
            }
            times.push(first.unwrap().as_secs_f64());
        }
        (times, prompt.len())
    };
    // Warm-up, then the conversation afresh and reusing, twice each, the faster counting.
    first_token(None);
    let mut afresh = vec![f64::MAX; turns];
    let mut reused = vec![f64::MAX; turns];
    let mut length = 0;
    for round in 0..2 {
        let scope = format!("bench {round}");
        for (best, (times, len)) in [
            (&mut afresh, first_token(None)),
            (&mut reused, first_token(Some(&scope))),
        ] {
            length = len;
            for (best, time) in best.iter_mut().zip(times) {
                *best = best.min(time);
            }
        }
    }
    let list = |times: &[f64]| {
        times
            .iter()
            .map(|t| format!("{t:.3}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "{{\"kind\":\"turns\",\"turns\":{turns},\"said_tokens\":{said},\"answer_tokens\":{answer},\"final_tokens\":{length},\"first_token_s_afresh\":[{}],\"first_token_s_reused\":[{}]}}",
        list(&afresh),
        list(&reused)
    );
}

fn embed(args: &[String]) {
    let dir = std::path::Path::new(&args[0]);
    let threads: usize = args[1].parse().unwrap();
    let batch: usize = args[2].parse().unwrap();
    let sentences: Vec<String> = std::fs::read_to_string(&args[3])
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let rounds: usize = args[4].parse().unwrap();
    let files = ModelFiles::directory("bench", dir).unwrap();
    let model = EmbeddingModel::load(
        &files,
        &EmbeddingConfig {
            threads,
            max_batch: batch,
        },
    )
    .unwrap();
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    model.embed(&texts[..batch]).unwrap();
    let mut best = Duration::MAX;
    let mut tokens = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        tokens = 0;
        for chunk in texts.chunks(batch) {
            tokens += model.embed(chunk).unwrap().tokens;
        }
        best = best.min(start.elapsed());
    }
    println!(
        "{{\"kind\":\"embed\",\"threads\":{threads},\"batch\":{batch},\"sentences\":{},\"tokens_per_sentence\":{:.1},\"seconds\":{:.3},\"sentences_s\":{:.1}}}",
        texts.len(),
        tokens as f64 / texts.len() as f64,
        best.as_secs_f64(),
        texts.len() as f64 / best.as_secs_f64()
    );
}
