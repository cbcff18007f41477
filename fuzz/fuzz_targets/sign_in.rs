//! Any bytes as what a member's browser and a card company's provider send the consent page
//! during sign-in: the session cookie, and the claims listing the member's cards. A clear answer
//! (a sign-in, or why not), never a panic.
#![no_main]

use cardlink_consent::login::Pending;
use cardlink_consent::login::accounts::from_claims;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Pending::open(b"fuzz-secret-fuzz-secret-fuzz-sec", &String::from_utf8_lossy(data));
    if let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(data) {
        let _ = from_claims(&claims, "card_accounts");
    }
});
