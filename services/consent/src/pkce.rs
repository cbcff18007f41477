//! PKCE (RFC 7636, method S256) and one-time authorisation codes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};

/// `base64url(SHA-256(verifier))`, the S256 challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    B64.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636: 43 to 128 characters of `[A-Za-z0-9-._~]`.
pub fn verifier_is_well_formed(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An S256 challenge is the base64url of 32 bytes: 43 characters.
pub fn challenge_is_well_formed(challenge: &str) -> bool {
    challenge.len() == 43 && B64.decode(challenge).is_ok_and(|b| b.len() == 32)
}

/// Whether `verifier` matches `challenge`, compared in constant time.
pub fn verify(verifier: &str, challenge_text: &str) -> bool {
    cardlink_auth::constant_time_eq(challenge(verifier).as_bytes(), challenge_text.as_bytes())
}

/// A fresh one-time code: 256 random bits, base64url.
pub fn new_code() -> String {
    B64.encode(rand::random::<[u8; 32]>())
}

/// What is stored of a code: its SHA-256, hex. The code itself is never stored.
pub fn code_hash(code: &str) -> String {
    Sha256::digest(code.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_example() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(challenge(verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(verify(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(!verify("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXx", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(verifier_is_well_formed(verifier));
        assert!(challenge_is_well_formed("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
    }

    #[test]
    fn codes_are_unique_and_only_their_hash_is_kept() {
        let (a, b) = (new_code(), new_code());
        assert_ne!(a, b);
        assert_eq!(code_hash(&a).len(), 64);
        assert!(!code_hash(&a).contains(&a));
    }
}
