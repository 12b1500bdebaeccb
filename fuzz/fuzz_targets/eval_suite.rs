//! Eval suites arrive inside bundles from the other side of the gap: any bytes must give a
//! suite or an error (with every pattern and schema compiled within its limits), never a panic.
#![no_main]

use airlock_eval::{Suite, SuiteLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Suite::read("fuzz.jsonl", data, &SuiteLimits::default());
});
