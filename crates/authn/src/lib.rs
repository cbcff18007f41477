//! Who is calling: the one authentication path every cardlink service uses.
//!
//! A gRPC service is wrapped in [`AuthLayer`] (a tonic interceptor), which reads the
//! `authorization` metadata once per call — before the request body is read, so an unknown
//! caller costs no buffering — and checks it with the [`Authenticator`]:
//!
//! 1. the token's signature and expiry against the platform's public keys (`cardlink_auth`);
//! 2. that the registry view still knows the credential, for that participant, unrevoked;
//! 3. that the participant is not suspended.
//!
//! The handler receives a typed [`Caller`] ([`caller`]) and asks it for the role it needs
//! ([`Caller::require`]). Every failure is one [`AuthError`] with a stable reason
//! (`cardlink_api::Reason`), the same at every service.
//!
//! A stream outlives that check: [`Standing`] checks its caller again while it runs, and ends it
//! when the credential no longer stands or the stream reaches its maximum age.
//!
//! Configured issuer keys ([`BootstrapIssuerKeys`]) are an explicit bootstrap option for
//! deployments whose issuers have no registry credential yet; they cannot be rotated or revoked
//! through the registry.

mod authenticator;
mod bootstrap;
mod grpc;
mod standing;

pub use authenticator::Authenticator;
pub use bootstrap::{BootstrapIssuerKeys, KeyConfigError};
pub use cardlink_auth::Role;
pub use grpc::{AuthLayer, caller, caller_as};
pub use standing::{STANDING_CHECK_EVERY, Standing};

use cardlink_api::{ApiError, Reason};
use cardlink_auth::TokenError;

/// An authenticated participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub participant_id: String,
    pub role: Role,
    /// The credential it presented (a registry credential id, or `bootstrap:<issuer>`).
    pub credential_id: String,
}

impl Caller {
    /// The caller, if it has `role`; otherwise the error that names the role the call needs.
    pub fn require(&self, role: Role) -> Result<&Self, AuthError> {
        if self.role == role { Ok(self) } else { Err(AuthError::WrongRole(role)) }
    }
}

/// Why a caller was not let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential: send `authorization: Bearer <token>`")]
    Missing,
    #[error("malformed authorization metadata: expected `Bearer <token>`")]
    Malformed,
    #[error("credential: {0}")]
    Token(TokenError),
    #[error("not a credential this deployment issued or configured")]
    UnknownKey,
    #[error("the credential was revoked or is unknown to the registry")]
    Revoked,
    #[error("the participant is suspended")]
    Suspended,
    #[error("{}", match .0 {
        Role::Issuer => "only a card issuer may make this call",
        Role::Aggregator => "only an aggregator may make this call",
        Role::Operator => "only an operator may make this call",
    })]
    WrongRole(Role),
}

impl ApiError for AuthError {
    fn reason(&self) -> Reason {
        match self {
            Self::Missing => Reason::CredentialMissing,
            Self::Malformed | Self::Token(TokenError::Malformed) => Reason::CredentialMalformed,
            Self::Token(TokenError::UnknownKey | TokenError::BadSignature) | Self::UnknownKey => {
                Reason::CredentialInvalid
            }
            Self::Token(TokenError::Expired) => Reason::CredentialExpired,
            Self::Revoked => Reason::CredentialRevoked,
            Self::Suspended => Reason::ParticipantSuspended,
            Self::WrongRole(Role::Issuer) => Reason::IssuersOnly,
            Self::WrongRole(Role::Aggregator) => Reason::AggregatorsOnly,
            Self::WrongRole(Role::Operator) => Reason::Forbidden,
        }
    }
}

/// Reads the bearer token out of an `authorization` value (`Bearer <token>`, any case).
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Malformed));
        assert_eq!(bearer(Some("Bearer")), Err(AuthError::Malformed));
        assert_eq!(bearer(Some("Bearer ")), Err(AuthError::Malformed));
    }

    #[test]
    fn every_failure_has_an_unauthenticated_or_permission_reason() {
        use tonic::Code;
        let all = [
            AuthError::Missing,
            AuthError::Malformed,
            AuthError::Token(TokenError::Malformed),
            AuthError::Token(TokenError::UnknownKey),
            AuthError::Token(TokenError::BadSignature),
            AuthError::Token(TokenError::Expired),
            AuthError::UnknownKey,
            AuthError::Revoked,
            AuthError::Suspended,
            AuthError::WrongRole(Role::Issuer),
            AuthError::WrongRole(Role::Aggregator),
            AuthError::WrongRole(Role::Operator),
        ];
        for e in all {
            let code = e.reason().code();
            assert!(matches!(code, Code::Unauthenticated | Code::PermissionDenied), "{e:?}: {code:?}");
        }
        assert_eq!(AuthError::Token(TokenError::Expired).reason(), Reason::CredentialExpired);
        assert_eq!(AuthError::WrongRole(Role::Issuer).reason(), Reason::IssuersOnly);
    }

    #[test]
    fn require_names_the_role_the_call_needs() {
        let c = Caller { participant_id: "agg-x".into(), role: Role::Aggregator, credential_id: "c1".into() };
        assert!(c.require(Role::Aggregator).is_ok());
        assert_eq!(c.require(Role::Issuer), Err(AuthError::WrongRole(Role::Issuer)));
    }
}
