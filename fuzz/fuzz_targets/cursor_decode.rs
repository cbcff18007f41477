//! Any text as an aggregator's cursor: no panic; whatever decodes re-encodes to a cursor that
//! decodes to the same positions (a forged cursor cannot decode at all without the secret).
#![no_main]

use cardlink_subscription::cursor::Cursor;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-sec";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cursor) = Cursor::decode(SECRET, text, "agg-fuzz") {
        let again = Cursor::decode(SECRET, &cursor.encode(SECRET), "agg-fuzz").expect("a decoded cursor re-encodes");
        assert!(again.positions().eq(cursor.positions()));
    }
});
