//! The tar reader must refuse or accept any bytes without panicking, and every entry it
//! accepts must lie inside the archive.
#![no_main]

use std::io::Cursor;

use airlock_bundle::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok(entries) = airlock_bundle::tar::index(&mut Cursor::new(data), len, &Limits::default())
    {
        for e in entries {
            assert!(e.data_offset + e.size <= len);
        }
    }
});
