//! `trace-check FILE...`: the network-silence verdict on strace output files. Prints each
//! violation as `FILE:LINE: reason` and exits 1 if there is any, 0 if all are silent, 2 if a
//! file cannot be read.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut found = 0usize;
    let mut files = 0usize;
    for path in std::env::args().skip(1) {
        let trace = match std::fs::read_to_string(&path) {
            Ok(trace) => trace,
            Err(error) => {
                eprintln!("trace-check: cannot read {path}: {error}");
                return ExitCode::from(2);
            }
        };
        files += 1;
        for v in airlock_testkit::strace::violations(&trace) {
            found += 1;
            eprintln!("{path}:{}: {}\n    {}", v.line, v.reason, v.text);
        }
    }
    eprintln!("trace-check: {files} traces, {found} violations");
    if found == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
