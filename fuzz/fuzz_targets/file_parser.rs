//! Any bytes, as lines of a file under each shipped mapping: the parser must never panic, and
//! every line is either skipped, a transaction, or a rejection.
#![no_main]

use cardlink_adapters::file::{Mapping, Parser};
use libfuzzer_sys::fuzz_target;

const MAPPINGS: [&str; 2] = [
    include_str!("../../crates/adapters/samples/core_export_sjis.toml"),
    include_str!("../../crates/adapters/samples/meisai_web_utf8.toml"),
];

fuzz_target!(|data: &[u8]| {
    for text in MAPPINGS {
        let Ok(mapping) = Mapping::parse(text) else { return };
        let mut parser = Parser::new(mapping, "iss-fuzz");
        for line in data.split(|b| *b == b'\n') {
            if parser.parse_line(line).is_err() {
                break;
            }
        }
    }
});
