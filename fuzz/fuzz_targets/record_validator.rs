//! Any bytes as a protobuf IngestRecord, through validation and the PAN guard: no panic, and an
//! accepted record always encodes to Avro.
#![no_main]

use cardlink_api::v1::IngestRecord;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = IngestRecord::decode(data) else { return };
    if let Ok(event) = cardlink_ingest::validate::validate_record("iss-fuzz", &record) {
        cardlink_events::encode(&event).expect("a validated event always encodes");
    }
});
