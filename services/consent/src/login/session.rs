//! What a sign-in carries from its start to the provider's callback, and the nonces already used.
//!
//! The consent service keeps no session state (any replica may serve the callback): the
//! [`Pending`] sign-in travels in an HttpOnly cookie, MAC'd with the service's secret, bound to
//! the `state` the provider sends back. It holds the PKCE verifier, which is the browser's own
//! secret in this flow (it never appears in a URL).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// What the cookie is sealed for (a page ticket cannot pass for it).
const SEAL_PURPOSE: &str = "sign-in";
/// The cookie that carries a [`Pending`] sign-in.
pub const SESSION_COOKIE: &str = "cardlink_signin";
/// How long a member has at the provider before the sign-in must start again.
pub const SIGN_IN_TTL_SECS: i64 = 600;
/// Nonces remembered against replay: more than the sign-ins any replica sees in
/// [`SIGN_IN_TTL_SECS`]; when full, the oldest are forgotten first.
const MAX_REMEMBERED_NONCES: usize = 100_000;

/// What the member signs in for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// To decide on this consent request.
    Consent(String),
    /// To see and revoke their consents.
    MemberPage,
}

/// A sign-in waiting for the provider's callback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub issuer_id: String,
    pub purpose: Purpose,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Pending {
    pub fn new(issuer_id: &str, purpose: Purpose, state: &str, nonce: &str, verifier: &str) -> Self {
        Self {
            issuer_id: issuer_id.to_owned(),
            purpose,
            state: state.to_owned(),
            nonce: nonce.to_owned(),
            verifier: verifier.to_owned(),
            expires_at: chrono::Utc::now().timestamp() + SIGN_IN_TTL_SECS,
        }
    }

    /// The cookie value ([`cardlink_auth::seal`]ed JSON).
    pub fn seal(&self, secret: &[u8]) -> String {
        // Serialising a struct of strings and integers cannot fail.
        cardlink_auth::seal(secret, SEAL_PURPOSE, &serde_json::to_vec(self).unwrap_or_default())
    }

    /// The sign-in sealed in `cookie`, if genuine and not expired.
    pub fn open(secret: &[u8], cookie: &str) -> Option<Self> {
        let pending: Self = serde_json::from_slice(&cardlink_auth::unseal(secret, SEAL_PURPOSE, cookie)?).ok()?;
        (chrono::Utc::now().timestamp() < pending.expires_at).then_some(pending)
    }
}

/// Nonces of completed sign-ins until they expire: a nonce completes one sign-in only.
#[derive(Debug, Default)]
pub struct UsedNonces {
    by_nonce: HashMap<String, i64>,
    by_expiry: BTreeMap<(i64, String), ()>,
}

impl UsedNonces {
    /// Records `nonce`; false if it was used before.
    pub fn first_use(&mut self, nonce: &str, expires_at: i64) -> bool {
        let now = chrono::Utc::now().timestamp();
        while let Some(((at, n), ())) = self.by_expiry.first_key_value() {
            if *at > now && self.by_nonce.len() < MAX_REMEMBERED_NONCES {
                break;
            }
            let key = (*at, n.clone());
            self.by_expiry.remove(&key);
            self.by_nonce.remove(&key.1);
        }
        if self.by_nonce.contains_key(nonce) {
            return false;
        }
        self.by_nonce.insert(nonce.to_owned(), expires_at);
        self.by_expiry.insert((expires_at, nonce.to_owned()), ());
        true
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    use super::*;

    #[test]
    fn a_sealed_sign_in_opens_only_with_its_secret_and_unchanged() {
        let pending = Pending::new("iss-a", Purpose::Consent("c-1".into()), "st", "no", "ver");
        let sealed = pending.seal(b"secret");
        assert_eq!(Pending::open(b"secret", &sealed), Some(pending.clone()));
        assert_eq!(Pending::open(b"other", &sealed), None);
        let (payload, mac) = sealed.split_once('.').unwrap();
        let mut forged = pending.clone();
        forged.purpose = Purpose::MemberPage;
        let forged_payload = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert_ne!(forged_payload, payload);
        assert_eq!(Pending::open(b"secret", &format!("{forged_payload}.{mac}")), None);
        assert_eq!(Pending::open(b"secret", "garbage"), None);
        let expired = Pending { expires_at: 0, ..pending };
        assert_eq!(Pending::open(b"secret", &expired.seal(b"secret")), None);
    }

    proptest::proptest! {
        /// Any cookie a browser sends opens only if this service sealed it.
        #[test]
        fn a_cookie_opens_only_if_sealed_here(cookie in ".{0,200}") {
            proptest::prop_assert_eq!(Pending::open(b"secret", &cookie), None);
        }
    }

    #[test]
    fn a_nonce_completes_one_sign_in() {
        let mut used = UsedNonces::default();
        let later = chrono::Utc::now().timestamp() + 60;
        assert!(used.first_use("n1", later));
        assert!(!used.first_use("n1", later));
        assert!(used.first_use("n2", later));
        // Expired entries are forgotten (their sign-ins can no longer complete anyway).
        assert!(used.first_use("old", 0));
        assert!(used.first_use("n3", later));
        assert!(!used.by_nonce.contains_key("old"));
    }
}
