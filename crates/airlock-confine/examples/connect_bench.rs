//! What one allowed connection costs: `connect_bench sealed|open N` connects N times to a
//! listener of its own on loopback, either sealed with that listener as the allow-list's one
//! destination (each connect goes to the seal's listener, is recorded or, past the log's
//! bound per minute, counted, made by a connector and handed in) or not confined at all, and prints the latencies as one JSON line.
//! `scripts/bench-egress.sh` runs both in turns and prints the ratio.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use airlock_confine::{
    AllowList, Allowed, Attempt, Connection, EgressLog, Network, Paths, Policy, Summary,
};

/// Counts what the seal records, as a log that costs nothing would.
#[derive(Default)]
struct Counted(AtomicU64);

impl EgressLog for Counted {
    fn record(&self, _: &Attempt) {}
    fn allowed(&self, _: &Connection) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed);
        true
    }
    fn summarise(&self, _: &Summary) {}
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().expect("sealed or open");
    let n: usize = args.next().expect("N").parse().expect("N is a number");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let log = Arc::new(Counted::default());
    if mode == "sealed" {
        let allowed = Allowed::new(address.to_string().parse().unwrap(), "benchmark");
        airlock_confine::confine(
            &Policy {
                network: Network::Sealed,
                paths: Paths::default(),
                egress: AllowList::new(vec![allowed]).unwrap(),
            },
            log.clone(),
        )
        .unwrap();
    }
    for _ in 0..n / 10 {
        drop(TcpStream::connect(address).unwrap());
    }
    let mut micros: Vec<f64> = (0..n)
        .map(|_| {
            let start = Instant::now();
            let stream = TcpStream::connect(address).unwrap();
            let took = start.elapsed().as_secs_f64() * 1e6;
            drop(stream);
            took
        })
        .collect();
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    println!(
        "{{\"mode\": \"{mode}\", \"connects\": {n}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"recorded\": {}, \"counted\": {}}}",
        at(0.5),
        at(0.99),
        log.0.load(Ordering::Relaxed),
        airlock_confine::egress_by_destination()
            .iter()
            .filter(|(_, decision, _)| *decision == "allowed")
            .map(|(_, _, count)| count)
            .sum::<u64>()
    );
}
