//! Who is calling: an issuer, identified by the bearer credential in `authorization` metadata.
//!
//! [`Authenticator`] is the seam. [`RegistryIssuers`] accepts the signed, rotatable, revocable
//! credentials the registry issues (an issuer's own, not an aggregator's); [`StaticIssuerKeys`]
//! holds configured keys for deployments without a registry. [`AnyOf`] accepts either. Static
//! keys are kept only as SHA-256 digests and looked up by digest, so the comparison leaks
//! nothing useful about a key through timing, and a memory dump holds no usable key.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// An authenticated issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerIdentity {
    pub issuer_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential: send `authorization: Bearer <issuer key>`")]
    Missing,
    #[error("malformed authorization metadata: expected `Bearer <issuer key>`")]
    Malformed,
    #[error("unknown or revoked credential")]
    Unknown,
    #[error("this credential is not an issuer's")]
    NotAnIssuer,
}

impl AuthError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "CREDENTIAL_MISSING",
            Self::Malformed => "CREDENTIAL_MALFORMED",
            Self::Unknown => "CREDENTIAL_UNKNOWN",
            Self::NotAnIssuer => "NOT_AN_ISSUER",
        }
    }
}

/// Credentials issued by the registry: signature, expiry and revocation checked; issuers only.
#[derive(Debug, Clone)]
pub struct RegistryIssuers(pub cardlink_registry::caller::CallerAuth);

impl Authenticator for RegistryIssuers {
    fn authenticate(&self, credential: &str) -> Result<IssuerIdentity, AuthError> {
        let caller = self.0.authenticate_token(credential).map_err(|_| AuthError::Unknown)?;
        if caller.role != cardlink_auth::Role::Issuer {
            return Err(AuthError::NotAnIssuer);
        }
        Ok(IssuerIdentity { issuer_id: caller.participant_id })
    }
}

/// Accepts a credential any of several authenticators accepts (e.g. registry credentials and,
/// during a migration, configured keys).
#[derive(Debug)]
pub struct AnyOf(pub Vec<std::sync::Arc<dyn Authenticator>>);

impl Authenticator for AnyOf {
    fn authenticate(&self, credential: &str) -> Result<IssuerIdentity, AuthError> {
        let mut last = AuthError::Unknown;
        for auth in &self.0 {
            match auth.authenticate(credential) {
                Ok(identity) => return Ok(identity),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Turns a presented credential into an issuer identity.
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    fn authenticate(&self, credential: &str) -> Result<IssuerIdentity, AuthError>;
}

/// Reads the bearer credential out of an `authorization` value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

/// Configured issuer keys (`issuer_id=key` pairs).
pub struct StaticIssuerKeys {
    by_digest: HashMap<[u8; 32], String>,
}

impl std::fmt::Debug for StaticIssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys or digests.
        f.debug_struct("StaticIssuerKeys").field("issuers", &self.by_digest.len()).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyConfigError {
    #[error("issuer key entry #{0} is not `issuer_id=key`")]
    Shape(usize),
    #[error("issuer key for {0} is shorter than 16 characters")]
    TooShort(String),
    #[error("two issuers share one key ({0} and {1})")]
    Shared(String, String),
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl StaticIssuerKeys {
    /// Minimum key length: keys are secrets, not passwords to remember.
    pub const MIN_KEY_CHARS: usize = 16;

    pub fn new<I, S>(entries: I) -> Result<Self, KeyConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut by_digest = HashMap::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let (issuer, key) = entry.as_ref().split_once('=').ok_or(KeyConfigError::Shape(i))?;
            let (issuer, key) = (issuer.trim(), key.trim());
            if issuer.is_empty() {
                return Err(KeyConfigError::Shape(i));
            }
            if key.chars().count() < Self::MIN_KEY_CHARS {
                return Err(KeyConfigError::TooShort(issuer.to_owned()));
            }
            if let Some(other) = by_digest.insert(digest(key), issuer.to_owned()) {
                return Err(KeyConfigError::Shared(other, issuer.to_owned()));
            }
        }
        Ok(Self { by_digest })
    }
}

impl Authenticator for StaticIssuerKeys {
    fn authenticate(&self, credential: &str) -> Result<IssuerIdentity, AuthError> {
        self.by_digest
            .get(&digest(credential))
            .map(|issuer_id| IssuerIdentity { issuer_id: issuer_id.clone() })
            .ok_or(AuthError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_identify_their_issuer_only() {
        let keys = StaticIssuerKeys::new(["iss-a=key-a-0123456789abcdef", "iss-b=key-b-0123456789abcdef"]).unwrap();
        assert_eq!(keys.authenticate("key-a-0123456789abcdef").unwrap().issuer_id, "iss-a");
        assert_eq!(keys.authenticate("key-b-0123456789abcdef").unwrap().issuer_id, "iss-b");
        assert_eq!(keys.authenticate("key-c-0123456789abcdef"), Err(AuthError::Unknown));
        assert!(!format!("{keys:?}").contains("key-a"));
    }

    #[test]
    fn bad_key_config_is_refused() {
        assert!(matches!(StaticIssuerKeys::new(["iss-a"]), Err(KeyConfigError::Shape(0))));
        assert!(matches!(StaticIssuerKeys::new(["iss-a=short"]), Err(KeyConfigError::TooShort(_))));
        assert!(matches!(
            StaticIssuerKeys::new(["a=0123456789abcdefg", "b=0123456789abcdefg"]),
            Err(KeyConfigError::Shared(..))
        ));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Malformed));
        assert_eq!(bearer(Some("Bearer")), Err(AuthError::Malformed));
    }
}
