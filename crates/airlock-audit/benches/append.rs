//! Durable audit appends per second from concurrent writers, with group commit, beside the
//! same appends made one sync each (what a log without group commit pays), in the same run.
//!
//! `cargo bench -p airlock-audit --bench append [-- WRITERS SECONDS]` (defaults 8 and 3).
//! The log lives under `$AIRLOCK_BENCH_DIR` (default: the system temp dir), which should be
//! on the disk the registry uses, because the figure is bounded by its sync latency.

#![expect(clippy::print_stdout, clippy::unwrap_used, reason = "benchmark output")]

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airlock_audit::{AuditLog, Entry, LogView, NoteSigner, Outcome};

fn entry(writer: usize, n: u64) -> Entry {
    Entry::new(format!("key:{writer:064x}"), "request", Outcome::Ok)
        .subject(format!("sha256:{:064x}", n))
        .detail("endpoint", "/v1/chat/completions")
        .detail("tokens", 128)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let writers: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(8);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let base = std::env::var_os("AIRLOCK_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();

    let signer = NoteSigner::generate("bench").unwrap();
    let verifier = signer.verifier();
    let log = AuditLog::create(&dir.path().join("audit"), "bench/audit", signer).unwrap();
    let stop = AtomicBool::new(false);
    let appended = AtomicU64::new(0);
    let syncs_before = log.syncs();
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let (log, stop, appended) = (&log, &stop, &appended);
            s.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    log.append(entry(w, n)).unwrap();
                    n += 1;
                }
                appended.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed().as_secs_f64();
    let total = appended.load(Ordering::Relaxed);
    let syncs = log.syncs() - syncs_before;
    let grouped = total as f64 / elapsed;

    // Anchor: the same entries, each written and fdatasync'ed on its own, by one writer.
    let naive_path = dir.path().join("naive.log");
    let mut naive = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&naive_path)
        .unwrap();
    let line =
        serde_json::to_vec(&serde_json::json!({"actor": "key:0", "action": "request"})).unwrap();
    let naive_start = Instant::now();
    let mut naive_count = 0u64;
    while naive_start.elapsed() < Duration::from_secs(seconds.min(2)) {
        naive.write_all(&line).unwrap();
        naive.write_all(b"\n").unwrap();
        naive.sync_data().unwrap();
        naive_count += 1;
    }
    let naive_rate = naive_count as f64 / naive_start.elapsed().as_secs_f64();

    let verify_start = Instant::now();
    let view = LogView::load(&dir.path().join("audit"), &verifier).unwrap();
    assert_eq!(view.size(), total);
    let verify_secs = verify_start.elapsed().as_secs_f64();

    println!(
        "audit appends, {writers} writers, {seconds} s, durable (fdatasync) on {}",
        dir.path().display()
    );
    println!(
        "  group commit : {grouped:>10.0} appends/s  ({total} entries, {syncs} syncs, {:.1} entries/sync)",
        total as f64 / syncs.max(1) as f64
    );
    println!(
        "  one sync each: {naive_rate:>10.0} appends/s  (1 writer, plain write + fdatasync per line)"
    );
    println!("  ratio        : {:>10.1}x", grouped / naive_rate);
    println!(
        "  verify       : {:>10.0} entries/s  ({} checkpoints checked)",
        total as f64 / verify_secs,
        view.checkpoint_count()
    );
    println!(
        "RESULT audit_appends_per_s={grouped:.0} syncs={syncs} entries={total} naive_per_s={naive_rate:.0}"
    );
}
