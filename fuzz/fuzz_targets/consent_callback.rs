//! Any bytes as the browser's request to the CLI's loopback listener: a clear answer (the code,
//! the error, or why not), never a panic.
#![no_main]

use cardlink_client::loopback::parse_callback;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_callback(data, "expected-state");
});
