//! The announce is decoded before anything about the session is known: decoding must never
//! panic, and an announce that decodes must encode back to the same bytes.
#![no_main]

use airlock_transfer::announce::Announce;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(announce) = Announce::decode(data) {
        assert_eq!(announce.encode(), data);
        let _ = announce.geometry.blocks();
    }
});
