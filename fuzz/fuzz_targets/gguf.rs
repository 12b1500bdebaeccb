//! The GGUF validator must never panic or allocate past its limits.
#![no_main]

use airlock_bundle::Limits;
use airlock_bundle::inspect::gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gguf::validate(
        "fuzz.gguf",
        &mut &data[..],
        data.len() as u64,
        &Limits::default(),
    );
});
