//! Signature and statement decoding: no panic, and an accepted statement re-encodes to
//! canonical bytes that decode to the same statement (decode -> encode round trip).
#![no_main]

use airlock_bundle::signature::SigstoreBundle;
use airlock_bundle::{Limits, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = SigstoreBundle::parse(data, &limits);
    if let Ok(m) = Manifest::parse(data.to_vec(), &limits) {
        let canonical = m
            .statement
            .canonical_bytes()
            .expect("an accepted statement encodes");
        let again = Manifest::parse(canonical.clone(), &limits).expect("canonical bytes decode");
        assert_eq!(
            again.statement.canonical_bytes().expect("encodes"),
            canonical
        );
    }
});
