//! Participant credentials: signed tokens.
//!
//! Registering a participant (issuer, aggregator, operator) issues a credential: a token
//! `cl1.<payload>.<signature>` whose payload (base64url JSON) names the credential id, the
//! participant, its role and the expiry, signed with the platform's Ed25519 key. Any service
//! verifies a token with the platform's public key alone — no shared secret to leak, no call to
//! the registry on the hot path — and then checks the credential id against the registry view,
//! so a revoked credential stops working as soon as the revocation is read.
//!
//! The signing key can be rotated: tokens carry the key id (`kid`), and verifiers accept every
//! key in their set.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Token prefix and format version.
pub const TOKEN_PREFIX: &str = "cl1";
/// Longest token accepted, in bytes; anything longer is refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 2048;

/// What a participant is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Issuer,
    Aggregator,
    Operator,
}

/// The signed content of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Credential id (revocable).
    pub cid: String,
    /// Participant id.
    pub sub: String,
    pub role: Role,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// Signing key id.
    pub kid: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a cardlink token")]
    Malformed,
    #[error("signed with an unknown key")]
    UnknownKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("expired")]
    Expired,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "CREDENTIAL_MALFORMED",
            Self::UnknownKey | Self::BadSignature => "CREDENTIAL_INVALID",
            Self::Expired => "CREDENTIAL_EXPIRED",
        }
    }
}

/// What is wrong with a configured key (the signing seed, a trusted public key, a secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is empty")]
    Empty,
    #[error("not base64url (letters, digits, `-` and `_`, no padding): {0}")]
    NotBase64(String),
    #[error("{actual} bytes where {expected} are needed")]
    WrongLength { expected: usize, actual: usize },
    #[error("a trusted key is `kid:base64url-public-key`; this one has no `:` (make one with `cardlink keys public`)")]
    MissingKeyId,
    #[error("the key id is empty")]
    EmptyKeyId,
    #[error("not an Ed25519 public key")]
    NotAPublicKey,
}

/// Decodes `text` (base64url, no padding; surrounding white space ignored) into exactly `N`
/// bytes.
fn key_bytes<const N: usize>(text: &str) -> Result<[u8; N], KeyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    let bytes = B64.decode(text).map_err(|e| KeyError::NotBase64(e.to_string()))?;
    let actual = bytes.len();
    bytes.try_into().map_err(|_| KeyError::WrongLength { expected: N, actual })
}

/// A new random 32-byte signing seed, as configuration holds it (base64url).
pub fn generate_seed() -> String {
    B64.encode(rand::random::<[u8; 32]>())
}

/// A new random secret of `bytes` bytes, as configuration holds it (base64url).
pub fn generate_secret(bytes: usize) -> String {
    let secret: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    B64.encode(secret)
}

/// Issues tokens. Held only by the registry.
pub struct TokenSigner {
    kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(kid: &str, seed: [u8; 32]) -> Self {
        Self { kid: kid.to_owned(), key: SigningKey::from_bytes(&seed) }
    }

    /// A fresh random key (development, tests).
    pub fn generate(kid: &str) -> Self {
        Self::from_seed(kid, rand::random())
    }

    /// A signer from a base64url seed, as configuration holds it.
    pub fn from_base64_seed(kid: &str, seed: &str) -> Result<Self, KeyError> {
        if kid.trim().is_empty() {
            return Err(KeyError::EmptyKeyId);
        }
        Ok(Self::from_seed(kid.trim(), key_bytes::<32>(seed)?))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, for verifiers.
    pub fn public_key(&self) -> PublicKey {
        PublicKey { kid: self.kid.clone(), key: self.key.verifying_key() }
    }

    /// A standard JWT (compact JWS, `alg` EdDSA, with this key's `kid`) over `claims`: what an
    /// OpenID Provider accepts as a `private_key_jwt` client assertion, or what the demo
    /// provider issues as an ID token.
    pub fn sign_jwt(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": self.kid });
        let signed = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let signature = B64.encode(self.key.sign(signed.as_bytes()).to_bytes());
        format!("{signed}.{signature}")
    }

    /// The public key as a JSON Web Key (RFC 8037: `kty` OKP, `crv` Ed25519), for a JWKS.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": B64.encode(self.key.verifying_key().as_bytes()),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        })
    }

    /// Signs a token for `participant` valid until `expires_at`; returns (credential id, token).
    pub fn issue(
        &self,
        participant: &str,
        role: Role,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> (String, String) {
        let claims = Claims {
            cid: uuid::Uuid::new_v4().to_string(),
            sub: participant.to_owned(),
            role,
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            kid: self.kid.clone(),
        };
        // Serialising a struct of strings and integers cannot fail.
        let payload = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{TOKEN_PREFIX}.{payload}");
        let signature = B64.encode(self.key.sign(signed.as_bytes()).to_bytes());
        (claims.cid, format!("{signed}.{signature}"))
    }
}

/// A verifying key with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// `kid:base64url(key)`, the form configuration holds.
    pub fn to_config(&self) -> String {
        format!("{}:{}", self.kid, B64.encode(self.key.as_bytes()))
    }

    pub fn from_config(text: &str) -> Result<Self, KeyError> {
        let (kid, key) = text.trim().split_once(':').ok_or(KeyError::MissingKeyId)?;
        if kid.trim().is_empty() {
            return Err(KeyError::EmptyKeyId);
        }
        let key = VerifyingKey::from_bytes(&key_bytes::<32>(key)?).map_err(|_| KeyError::NotAPublicKey)?;
        Ok(Self { kid: kid.trim().to_owned(), key })
    }
}

/// Verifies tokens against a set of platform keys.
#[derive(Clone, Debug, Default)]
pub struct TokenVerifier {
    keys: HashMap<String, VerifyingKey>,
}

impl TokenVerifier {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        Self { keys: keys.into_iter().map(|k| (k.kid, k.key)).collect() }
    }

    /// Checks format, signature and expiry. Revocation is the caller's check (registry view).
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(prefix), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if prefix != TOKEN_PREFIX {
            return Err(TokenError::Malformed);
        }
        let claims: Claims = serde_json::from_slice(&B64.decode(payload).map_err(|_| TokenError::Malformed)?)
            .map_err(|_| TokenError::Malformed)?;
        let key = self.keys.get(&claims.kid).ok_or(TokenError::UnknownKey)?;
        let signature: [u8; 64] =
            B64.decode(signature).map_err(|_| TokenError::Malformed)?.try_into().map_err(|_| TokenError::Malformed)?;
        let signed_len = prefix.len() + 1 + payload.len();
        key.verify(&token.as_bytes()[..signed_len], &Signature::from_bytes(&signature))
            .map_err(|_| TokenError::BadSignature)?;
        if claims.exp <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn setup() -> (TokenSigner, TokenVerifier) {
        let signer = TokenSigner::generate("k1");
        let verifier = TokenVerifier::new([signer.public_key()]);
        (signer, verifier)
    }

    #[test]
    fn issued_tokens_verify_and_carry_their_claims() {
        let (signer, verifier) = setup();
        let now = Utc::now();
        let (cid, token) = signer.issue("agg-x", Role::Aggregator, now, now + TimeDelta::days(90));
        let claims = verifier.verify(&token, now).unwrap();
        assert_eq!((claims.cid, claims.sub.as_str(), claims.role), (cid, "agg-x", Role::Aggregator));
    }

    #[test]
    fn a_sealed_value_opens_only_unchanged_with_its_secret_and_purpose() {
        let sealed = seal(b"secret", "ticket", b"payload");
        assert_eq!(unseal(b"secret", "ticket", &sealed).as_deref(), Some(&b"payload"[..]));
        assert_eq!(unseal(b"other", "ticket", &sealed), None);
        assert_eq!(unseal(b"secret", "sign-in", &sealed), None);
        let (_, mac) = sealed.split_once('.').unwrap();
        assert_eq!(unseal(b"secret", "ticket", &format!("{}.{mac}", B64.encode("payloaD"))), None);
        assert_eq!(unseal(b"secret", "ticket", "no-dot"), None);
    }

    #[test]
    fn a_signed_jwt_verifies_with_the_published_jwk() {
        let signer = TokenSigner::from_seed("client-1", [7; 32]);
        let jwt = signer.sign_jwt(&serde_json::json!({ "iss": "cardlink", "n": 1 }));
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
        assert_eq!((header["alg"].as_str(), header["kid"].as_str()), (Some("EdDSA"), Some("client-1")));
        let jwk = signer.public_jwk();
        let x: [u8; 32] = B64.decode(jwk["x"].as_str().unwrap()).unwrap().try_into().unwrap();
        let key = VerifyingKey::from_bytes(&x).unwrap();
        let signature = ed25519_dalek::Signature::from_slice(&B64.decode(parts[2]).unwrap()).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert!(key.verify_strict(signed.as_bytes(), &signature).is_ok());
        assert!(key.verify_strict(b"other", &signature).is_err());
    }

    #[test]
    fn tampering_with_any_part_fails() {
        let (signer, verifier) = setup();
        let now = Utc::now();
        let (_, token) = signer.issue("agg-x", Role::Aggregator, now, now + TimeDelta::days(1));
        // Change the role in the payload: re-encode claims claiming to be an operator.
        let payload = token.split('.').nth(1).unwrap();
        let mut claims: Claims = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
        claims.role = Role::Operator;
        let forged =
            format!("cl1.{}.{}", B64.encode(serde_json::to_vec(&claims).unwrap()), token.split('.').nth(2).unwrap());
        assert_eq!(verifier.verify(&forged, now), Err(TokenError::BadSignature));
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(verifier.verify(std::str::from_utf8(&flipped).unwrap(), now).is_err());
    }

    #[test]
    fn another_platform_key_is_not_trusted() {
        let (_, verifier) = setup();
        let other = TokenSigner::generate("k1");
        let now = Utc::now();
        let (_, token) = other.issue("iss-a", Role::Issuer, now, now + TimeDelta::days(1));
        assert_eq!(verifier.verify(&token, now), Err(TokenError::BadSignature));
        let stranger = TokenSigner::generate("k9");
        let (_, token) = stranger.issue("iss-a", Role::Issuer, now, now + TimeDelta::days(1));
        assert_eq!(verifier.verify(&token, now), Err(TokenError::UnknownKey));
    }

    #[test]
    fn expired_tokens_fail() {
        let (signer, verifier) = setup();
        let now = Utc::now();
        let (_, token) = signer.issue("iss-a", Role::Issuer, now - TimeDelta::days(2), now - TimeDelta::days(1));
        assert_eq!(verifier.verify(&token, now), Err(TokenError::Expired));
    }

    #[test]
    fn keys_round_trip_through_configuration() {
        let signer = TokenSigner::generate("2026-11");
        let public = PublicKey::from_config(&signer.public_key().to_config()).unwrap();
        assert_eq!(public, signer.public_key());
        assert_eq!(PublicKey::from_config("nokid"), Err(KeyError::MissingKeyId));
    }

    #[test]
    fn a_bad_key_says_what_is_wrong_with_it() {
        assert_eq!(TokenSigner::from_base64_seed("k1", "").unwrap_err(), KeyError::Empty);
        assert!(matches!(TokenSigner::from_base64_seed("k1", "not base64!"), Err(KeyError::NotBase64(_))));
        assert_eq!(
            TokenSigner::from_base64_seed("k1", &B64.encode([7u8; 16])).unwrap_err(),
            KeyError::WrongLength { expected: 32, actual: 16 }
        );
        assert_eq!(TokenSigner::from_base64_seed(" ", &generate_seed()).unwrap_err(), KeyError::EmptyKeyId);
        assert_eq!(PublicKey::from_config(":AAAA").unwrap_err(), KeyError::EmptyKeyId);
        assert_eq!(
            PublicKey::from_config(&format!("k1:{}", B64.encode([1u8; 31]))).unwrap_err(),
            KeyError::WrongLength { expected: 32, actual: 31 }
        );
        // A generated seed is a signer whose public key round-trips through configuration.
        let signer = TokenSigner::from_base64_seed("k1", &generate_seed()).unwrap();
        assert_eq!(PublicKey::from_config(&signer.public_key().to_config()).unwrap(), signer.public_key());
        assert_eq!(B64.decode(generate_secret(32)).unwrap().len(), 32);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_verifies(text in "\\PC{0,300}") {
            let (_, verifier) = setup();
            proptest::prop_assert!(verifier.verify(&text, Utc::now()).is_err());
        }
    }
}

/// Account ids as one aggregator sees them: a keyed hash of (aggregator, issuer, account), so
/// two aggregators cannot join their data on our ids, and the same account always looks the
/// same to one aggregator. `secret` is the deployment's pseudonym key (32+ random bytes).
pub fn account_pseudonym(secret: &[u8], aggregator_id: &str, issuer_id: &str, account_ref: &str) -> String {
    let mac =
        hmac_sha256(secret, &[aggregator_id.as_bytes(), b"\0", issuer_id.as_bytes(), b"\0", account_ref.as_bytes()]);
    format!("acc_{}", B64.encode(&mac[..18]))
}

/// The identifiers one aggregator sees instead of the issuer's: each a keyed hash (under the
/// deployment's pseudonym key) of the aggregator, the issuer and the issuer's identifier. Stable
/// for one aggregator — de-duplication on the event id, and linking a posting or refund to its
/// purchase through the transaction id, work as with the issuer's ids — and different for every
/// other aggregator, so two aggregators cannot join their data on them.
#[derive(Clone, Copy, Debug)]
pub struct Pseudonyms<'a> {
    secret: &'a [u8],
    aggregator_id: &'a str,
}

impl<'a> Pseudonyms<'a> {
    pub fn new(secret: &'a [u8], aggregator_id: &'a str) -> Self {
        Self { secret, aggregator_id }
    }

    /// An account id ([`account_pseudonym`]).
    pub fn account(&self, issuer_id: &str, account_ref: &str) -> String {
        account_pseudonym(self.secret, self.aggregator_id, issuer_id, account_ref)
    }

    /// An event id, still a UUID (version 8, RFC 9562), as the contract promises.
    pub fn event(&self, issuer_id: &str, event_id: &uuid::Uuid) -> String {
        let mac = self.mac(b"event", issuer_id, event_id.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&mac[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
    }

    /// A transaction id (`issuer_transaction_id`, and `original_transaction_id` so that it
    /// still names the same transaction). Empty stays empty.
    pub fn transaction(&self, issuer_id: &str, transaction_id: &str) -> String {
        self.labelled("txn_", b"transaction", issuer_id, transaction_id)
    }

    /// A statement id.
    pub fn statement(&self, issuer_id: &str, statement_id: &str) -> String {
        self.labelled("stm_", b"statement", issuer_id, statement_id)
    }

    fn labelled(&self, prefix: &str, label: &[u8], issuer_id: &str, id: &str) -> String {
        if id.is_empty() {
            return String::new();
        }
        format!("{prefix}{}", B64.encode(&self.mac(label, issuer_id, id.as_bytes())[..18]))
    }

    /// The label ends in a unit separator, which no participant id contains: these hashes can
    /// never equal an account pseudonym's, whose input starts with the aggregator id.
    fn mac(&self, label: &[u8], issuer_id: &str, id: &[u8]) -> [u8; 32] {
        hmac_sha256(
            self.secret,
            &[label, b"\x1f", self.aggregator_id.as_bytes(), b"\0", issuer_id.as_bytes(), b"\0", id],
        )
    }
}

/// Whether two byte strings are equal, taking the same time wherever they differ (for MACs,
/// digests and PKCE challenges). Different lengths compare unequal at once: lengths are public.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `payload` made tamper-evident with `secret` for one `purpose` (a value readable by whoever
/// holds it, e.g. a browser, but not changeable): base64url(payload) `.` base64url(HMAC). The
/// purpose keeps a value sealed for one use from being accepted for another.
pub fn seal(secret: &[u8], purpose: &str, payload: &[u8]) -> String {
    let mac = hmac_sha256(secret, &[purpose.as_bytes(), b"\n", payload]);
    format!("{}.{}", B64.encode(payload), B64.encode(mac))
}

/// The payload of a [`seal`]ed value, if it was sealed with `secret` for `purpose` and not
/// changed since.
pub fn unseal(secret: &[u8], purpose: &str, sealed: &str) -> Option<Vec<u8>> {
    let (payload, mac) = sealed.split_once('.')?;
    let payload = B64.decode(payload).ok()?;
    let expected = hmac_sha256(secret, &[purpose.as_bytes(), b"\n", &payload]);
    constant_time_eq(&B64.decode(mac).ok()?, &expected).then_some(payload)
}

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`.
pub fn hmac_sha256(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut key = [0u8; 64];
    if secret.len() > 64 {
        key[..32].copy_from_slice(&Sha256::digest(secret));
    } else {
        key[..secret.len()].copy_from_slice(secret);
    }
    let mut inner = Sha256::new();
    inner.update(key.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(key.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod pseudonym_tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_aggregator_and_differ_across_aggregators() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let a = account_pseudonym(secret, "agg-x", "iss-a", "acct-1");
        assert_eq!(a, account_pseudonym(secret, "agg-x", "iss-a", "acct-1"));
        assert_ne!(a, account_pseudonym(secret, "agg-y", "iss-a", "acct-1"));
        assert_ne!(a, account_pseudonym(secret, "agg-x", "iss-a", "acct-2"));
        assert_ne!(a, account_pseudonym(b"another-secret-another-secret-xx", "agg-x", "iss-a", "acct-1"));
        assert!(!a.contains("acct"));
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?" (split in parts).
        let mac = hmac_sha256(b"Jefe", &[b"what do ya ", b"want for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Test case 6: a key longer than the block is hashed first.
        let mac = hmac_sha256(&[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }
}
