//! Any bytes as a consent-topic record: reading its terms in place must never panic, and must
//! accept exactly what the full decode accepts, with the same terms.
#![no_main]

use cardlink_events::codec::with_consent_terms;
use cardlink_events::consent::ConsentEvent;
use cardlink_events::{RecordType, decode_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let in_place = with_consent_terms(data, |t| format!("{t:?}")).ok();
    let full = decode_record::<ConsentEvent>(data, RecordType::ConsentEvent).ok().map(|c| format!("{:?}", c.terms()));
    assert_eq!(in_place, full);
});
