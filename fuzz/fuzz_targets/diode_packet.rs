//! Diode datagrams arrive from a link anyone upstream may write to: opening one must never
//! panic, and a datagram that opens must seal back to the same bytes.
#![no_main]

use airlock_transfer::packet::{HEADER_LEN, Header, Kind, read_hash_table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = Header::open(data) {
        let mut again = data.to_vec();
        header.seal(&mut again);
        assert_eq!(again, data);
        if header.kind == Kind::Hashes {
            if let Some(entries) = read_hash_table(&data[HEADER_LEN..]) {
                let _ = entries.count();
            }
        }
    }
});
