//! `policy.toml` is edited by hand: any text must give a policy or an error, never a panic.
#![no_main]

use airlock_registry::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Policy::parse(std::path::Path::new("policy.toml"), data);
});
