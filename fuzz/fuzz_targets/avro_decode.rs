//! Any bytes as a value read from the bus: decoding must fail cleanly or succeed, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cardlink_events::decode(data);
});
