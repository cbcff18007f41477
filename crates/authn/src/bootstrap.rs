//! Configured issuer keys: the explicit bootstrap option for issuers without a registry credential.
//!
//! Keys are kept only as SHA-256 digests and looked up by digest, so the comparison leaks nothing
//! useful about a key through timing, and a memory dump holds no usable key. They cannot be
//! rotated or revoked through the registry: production issuers use registry credentials.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// Configured `issuer_id=key` pairs.
pub struct BootstrapIssuerKeys {
    by_digest: HashMap<[u8; 32], String>,
}

impl std::fmt::Debug for BootstrapIssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys or digests.
        f.debug_struct("BootstrapIssuerKeys").field("issuers", &self.by_digest.len()).finish()
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
    #[error("issuer key for {0} starts with `cl1.`, which is how registry credentials start")]
    LooksLikeToken(String),
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl BootstrapIssuerKeys {
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
            if key.starts_with(&format!("{}.", cardlink_auth::TOKEN_PREFIX)) {
                return Err(KeyConfigError::LooksLikeToken(issuer.to_owned()));
            }
            if let Some(other) = by_digest.insert(digest(key), issuer.to_owned()) {
                return Err(KeyConfigError::Shared(other, issuer.to_owned()));
            }
        }
        Ok(Self { by_digest })
    }

    /// The issuer a key belongs to.
    pub fn issuer_of(&self, key: &str) -> Option<&str> {
        self.by_digest.get(&digest(key)).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_identify_their_issuer_only() {
        let keys = BootstrapIssuerKeys::new(["iss-a=key-a-0123456789abcdef", "iss-b=key-b-0123456789abcdef"]).unwrap();
        assert_eq!(keys.issuer_of("key-a-0123456789abcdef"), Some("iss-a"));
        assert_eq!(keys.issuer_of("key-b-0123456789abcdef"), Some("iss-b"));
        assert_eq!(keys.issuer_of("key-c-0123456789abcdef"), None);
        assert!(!format!("{keys:?}").contains("key-a"));
    }

    #[test]
    fn bad_key_config_is_refused() {
        assert!(matches!(BootstrapIssuerKeys::new(["iss-a"]), Err(KeyConfigError::Shape(0))));
        assert!(matches!(BootstrapIssuerKeys::new(["iss-a=short"]), Err(KeyConfigError::TooShort(_))));
        assert!(matches!(
            BootstrapIssuerKeys::new(["a=0123456789abcdefg", "b=0123456789abcdefg"]),
            Err(KeyConfigError::Shared(..))
        ));
        assert!(matches!(
            BootstrapIssuerKeys::new(["a=cl1.0123456789abcdefg"]),
            Err(KeyConfigError::LooksLikeToken(_))
        ));
    }
}
