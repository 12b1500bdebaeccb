//! Checkpoint notes and note keys are parsed from files anyone could have edited: parsing
//! must never panic, and a body that parses must print back to the same text.
#![no_main]

use airlock_audit::{Checkpoint, NoteSigner, NoteVerifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = NoteVerifier::parse(text);
    let _ = NoteSigner::parse(text);
    if let Ok(signer) = NoteSigner::generate("fuzz") {
        let _ = signer.verifier().open(text);
    }
    if let Ok(checkpoint) = Checkpoint::parse_body(text)
        && text.lines().count() == 3
    {
        assert_eq!(checkpoint.body(), text);
    }
});
