//! The safetensors validator must never panic or allocate past its limits.
#![no_main]

use airlock_bundle::Limits;
use airlock_bundle::inspect::safetensors;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = safetensors::validate(
        "fuzz.safetensors",
        &mut &data[..],
        data.len() as u64,
        &Limits::default(),
    );
});
