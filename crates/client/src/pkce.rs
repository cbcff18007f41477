//! PKCE (RFC 7636) with the S256 method: the aggregator keeps the verifier, sends the challenge
//! with the consent request, and proves it holds the verifier when it exchanges the code.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest as _, Sha256};

/// A verifier and its challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    /// A fresh verifier: 32 random bytes, base64url (43 characters, as RFC 7636 recommends).
    pub fn generate() -> Self {
        Self::from_verifier(B64.encode(rand::random::<[u8; 32]>()))
    }

    pub fn from_verifier(verifier: String) -> Self {
        let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
        Self { verifier, challenge }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_the_rfc_7636_s256_of_the_verifier() {
        // RFC 7636, appendix B.
        let p = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        assert_eq!(p.challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let fresh = Pkce::generate();
        assert_eq!(fresh.verifier.len(), 43);
        assert_ne!(fresh, Pkce::generate());
    }
}
