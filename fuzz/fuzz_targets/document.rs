//! Documents to ingest come from anywhere: whatever their bytes, a parser returns items within
//! its limits or an error, never a panic or a runaway. The first byte picks the format. PDF is
//! not here: its library panics on malformed files, which the worker process contains.
#![no_main]

use airlock_rag::parse::{Format, ParseLimits, parse};
use libfuzzer_sys::fuzz_target;

const FORMATS: [Format; 5] = [
    Format::Text,
    Format::Markdown,
    Format::Html,
    Format::Docx,
    Format::Json,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let limits = ParseLimits {
        max_text_bytes: 1 << 16,
        max_nesting: 64,
        max_unpacked_bytes: 1 << 20,
        ..ParseLimits::default()
    };
    if let Ok(items) = parse(bytes, FORMATS[usize::from(pick) % FORMATS.len()], &limits) {
        for item in items {
            assert!(item.parsed.text_len() <= limits.max_text_bytes);
        }
    }
});
