//! Who is calling: a participant, proven by a signed, unrevoked credential.

use cardlink_auth::{Claims, Role, TokenError, TokenVerifier};
use cardlink_views::follow::Followed;
use cardlink_views::registry::RegistryView;
use chrono::Utc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    #[error("no credential: send `authorization: Bearer <token>`")]
    Missing,
    #[error("credential: {0}")]
    Token(TokenError),
    #[error("the credential was revoked or is unknown to the registry")]
    Revoked,
}

impl CallerError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "CREDENTIAL_MISSING",
            Self::Token(e) => e.reason(),
            Self::Revoked => "CREDENTIAL_REVOKED",
        }
    }
}

/// An authenticated participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub participant_id: String,
    pub role: Role,
    pub credential_id: String,
}

/// Checks bearer tokens: signature and expiry by the platform key, revocation by the registry view.
#[derive(Clone, Debug)]
pub struct CallerAuth {
    verifier: TokenVerifier,
    registry: Followed<RegistryView>,
}

impl CallerAuth {
    pub fn new(verifier: TokenVerifier, registry: Followed<RegistryView>) -> Self {
        Self { verifier, registry }
    }

    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, CallerError> {
        let header = authorization.ok_or(CallerError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(CallerError::Token(TokenError::Malformed))?
            .trim();
        self.authenticate_token(token)
    }

    /// Checks a bare token (without the `Bearer ` scheme).
    pub fn authenticate_token(&self, token: &str) -> Result<Caller, CallerError> {
        let now = Utc::now();
        let Claims { cid, sub, role, .. } = self.verifier.verify(token, now).map_err(CallerError::Token)?;
        if !self.registry.read(|r| r.credential_valid(&cid, &sub, now)) {
            return Err(CallerError::Revoked);
        }
        Ok(Caller { participant_id: sub, role, credential_id: cid })
    }
}
