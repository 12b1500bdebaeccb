//! A rules file is written by hand: any text gives rules or an error, never a panic.
#![no_main]

use airlock_rag::Classes;
use airlock_rag::rules::Rules;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(rules) = Rules::parse(text, &Classes::default()) {
            let _ = rules.classify("docs/a.md", &[("space".into(), "HR".into())]);
        }
    }
});
