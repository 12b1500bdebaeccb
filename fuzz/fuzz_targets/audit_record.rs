//! An audit log line that parses as an entry must re-encode to exactly the same bytes.
#![no_main]

use airlock_audit::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = Record::parse_canonical(data) {
        assert_eq!(record.to_canonical().ok().as_deref(), Some(data));
    }
});
