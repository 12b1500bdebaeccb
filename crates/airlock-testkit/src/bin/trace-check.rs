//! `trace-check [--allow ADDRESS:PORT]... FILE...`: the network-silence verdict on strace
//! output files. With `--allow`, connects to those destinations (a run's egress allow-list)
//! pass. Prints each violation as `FILE:LINE: reason` and exits 1 if there is any, 0 if all
//! are silent, 2 if a file cannot be read or an argument is wrong.

use std::net::SocketAddr;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut allowed: Vec<SocketAddr> = Vec::new();
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--allow" {
            match args.next().map(|a| a.parse()) {
                Some(Ok(address)) => allowed.push(address),
                _ => {
                    eprintln!("trace-check: --allow takes ADDRESS:PORT");
                    return ExitCode::from(2);
                }
            }
        } else {
            paths.push(arg);
        }
    }
    let mut found = 0usize;
    for path in &paths {
        let trace = match std::fs::read_to_string(path) {
            Ok(trace) => trace,
            Err(error) => {
                eprintln!("trace-check: cannot read {path}: {error}");
                return ExitCode::from(2);
            }
        };
        for v in airlock_testkit::strace::violations_allowing(&trace, &allowed) {
            found += 1;
            eprintln!("{path}:{}: {}\n    {}", v.line, v.reason, v.text);
        }
    }
    eprintln!("trace-check: {} traces, {found} violations", paths.len());
    if found == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
