//! Volume headers come off removable media: decoding must never panic, and a header that
//! decodes must encode back to the same 512 bytes.
#![no_main]

use airlock_bundle::volume::{HEADER_LEN, VolumeHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = VolumeHeader::decode(data) {
        assert_eq!(&header.encode()[..], &data[..HEADER_LEN as usize]);
    }
});
