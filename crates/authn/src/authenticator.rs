//! Checking a presented credential: signature and expiry, then the registry's word on it.

use std::sync::Arc;

use cardlink_auth::{Claims, Role, TokenVerifier};
use cardlink_events::registry::AggregatorStatus;
use cardlink_views::follow::Followed;
use cardlink_views::registry::RegistryView;
use chrono::{DateTime, Utc};

use crate::{AuthError, BootstrapIssuerKeys, Caller, bearer};

/// What a bootstrap issuer key's [`Caller::credential_id`] starts with.
const BOOTSTRAP_PREFIX: &str = "bootstrap:";

/// Turns a presented credential into a [`Caller`]; cheap to clone, shared by every call.
#[derive(Clone, Debug)]
pub struct Authenticator {
    verifier: TokenVerifier,
    registry: Followed<RegistryView>,
    bootstrap: Option<Arc<BootstrapIssuerKeys>>,
}

impl Authenticator {
    /// Registry credentials: signed by one of the platform's keys in `verifier`, known and
    /// unrevoked in `registry`.
    pub fn new(verifier: TokenVerifier, registry: Followed<RegistryView>) -> Self {
        Self { verifier, registry, bootstrap: None }
    }

    /// Also accepts configured issuer keys (the bootstrap option; see [`BootstrapIssuerKeys`]).
    pub fn with_bootstrap_issuer_keys(mut self, keys: Arc<BootstrapIssuerKeys>) -> Self {
        self.bootstrap = (!keys.is_empty()).then_some(keys);
        self
    }

    /// Checks an `authorization` value (`Bearer <token>`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        self.authenticate_token(bearer(authorization)?)
    }

    /// Checks a bare token (without the `Bearer ` scheme).
    pub fn authenticate_token(&self, token: &str) -> Result<Caller, AuthError> {
        self.authenticate_at(token, Utc::now())
    }

    /// Whether `caller`'s credential still stands now: not revoked, not expired, the participant
    /// not suspended (for streams, which outlive the check at their start). Bootstrap issuer keys
    /// cannot be revoked through the registry: they stand.
    pub fn still_stands(&self, caller: &Caller) -> Result<(), AuthError> {
        if caller.credential_id.starts_with(BOOTSTRAP_PREFIX) {
            return Ok(());
        }
        let now = Utc::now();
        self.registry.read(|r| {
            if r.credential(&caller.credential_id).is_some_and(|c| c.expires_at <= now) {
                return Err(AuthError::Token(cardlink_auth::TokenError::Expired));
            }
            registry_says(r, &caller.credential_id, &caller.participant_id, caller.role, now)
        })
    }

    fn authenticate_at(&self, token: &str, now: DateTime<Utc>) -> Result<Caller, AuthError> {
        let is_token = token.strip_prefix(cardlink_auth::TOKEN_PREFIX).is_some_and(|rest| rest.starts_with('.'));
        if !is_token && let Some(keys) = &self.bootstrap {
            let issuer = keys.issuer_of(token).ok_or(AuthError::UnknownKey)?;
            return Ok(Caller {
                participant_id: issuer.to_owned(),
                role: Role::Issuer,
                credential_id: format!("{BOOTSTRAP_PREFIX}{issuer}"),
            });
        }
        let Claims { cid, sub, role, .. } = self.verifier.verify(token, now).map_err(AuthError::Token)?;
        self.registry.read(|r| registry_says(r, &cid, &sub, role, now))?;
        Ok(Caller { participant_id: sub, role, credential_id: cid })
    }
}

/// The registry's word on a credential: known and unrevoked for that participant, and the
/// participant (an aggregator) not suspended. Asked at each call and, for streams, while they run.
fn registry_says(
    r: &RegistryView,
    cid: &str,
    participant: &str,
    role: Role,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    if !r.credential_valid(cid, participant, now) {
        return Err(AuthError::Revoked);
    }
    if role == Role::Aggregator && r.aggregator(participant).is_some_and(|a| a.status == AggregatorStatus::Suspended) {
        return Err(AuthError::Suspended);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use cardlink_auth::TokenSigner;
    use cardlink_events::ActorType;
    use cardlink_events::registry::{AggregatorEntity, CredentialEntity, Entity, ParticipantRole, RegistryEvent};
    use chrono::TimeDelta;

    use super::*;

    struct World {
        signer: TokenSigner,
        view: Arc<RwLock<RegistryView>>,
        auth: Authenticator,
    }

    fn world() -> World {
        let signer = TokenSigner::generate("k1");
        let view = Arc::new(RwLock::new(RegistryView::new()));
        let followed =
            Followed { view: Arc::clone(&view), watermark: tokio::sync::watch::channel(Default::default()).1 };
        let auth = Authenticator::new(TokenVerifier::new([signer.public_key()]), followed).with_bootstrap_issuer_keys(
            Arc::new(BootstrapIssuerKeys::new(["iss-boot=boot-key-0123456789abcdef"]).unwrap()),
        );
        World { signer, view, auth }
    }

    impl World {
        fn apply(&self, entity: Entity) {
            self.view.write().unwrap().apply(&RegistryEvent::new(ActorType::Operator, "op", entity));
        }

        /// A registered credential for `participant`; returns its token.
        fn credential(&self, participant: &str, role: Role, revoked: bool) -> String {
            let now = Utc::now();
            let expires_at = now + TimeDelta::days(1);
            let (cid, token) = self.signer.issue(participant, role, now, expires_at);
            self.apply(Entity::Credential(CredentialEntity {
                credential_id: cid,
                participant_id: participant.into(),
                role: match role {
                    Role::Issuer => ParticipantRole::Issuer,
                    Role::Aggregator => ParticipantRole::Aggregator,
                    Role::Operator => ParticipantRole::Operator,
                },
                issued_at: now,
                expires_at,
                revoked_at: revoked.then_some(now),
            }));
            token
        }

        fn aggregator(&self, id: &str, status: AggregatorStatus) {
            self.apply(Entity::Aggregator(AggregatorEntity {
                aggregator_id: id.into(),
                name: id.into(),
                registration_number: "R-1".into(),
                contact: "ops@example.invalid".into(),
                status,
                redirect_uris: Vec::new(),
            }));
        }
    }

    #[test]
    fn a_registered_credential_names_its_participant_and_role() {
        let w = world();
        let token = w.credential("agg-x", Role::Aggregator, false);
        w.aggregator("agg-x", AggregatorStatus::Active);
        let caller = w.auth.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!((caller.participant_id.as_str(), caller.role), ("agg-x", Role::Aggregator));
    }

    #[test]
    fn revoked_unknown_expired_and_foreign_credentials_are_refused_with_their_reason() {
        let w = world();
        let revoked = w.credential("iss-a", Role::Issuer, true);
        assert_eq!(w.auth.authenticate_token(&revoked), Err(AuthError::Revoked));
        let now = Utc::now();
        let (_, unregistered) = w.signer.issue("iss-a", Role::Issuer, now, now + TimeDelta::days(1));
        assert_eq!(w.auth.authenticate_token(&unregistered), Err(AuthError::Revoked));
        let (_, expired) = w.signer.issue("iss-a", Role::Issuer, now - TimeDelta::days(2), now - TimeDelta::days(1));
        assert_eq!(w.auth.authenticate_token(&expired), Err(AuthError::Token(cardlink_auth::TokenError::Expired)));
        let (_, foreign) = TokenSigner::generate("k1").issue("iss-a", Role::Issuer, now, now + TimeDelta::days(1));
        assert_eq!(w.auth.authenticate_token(&foreign), Err(AuthError::Token(cardlink_auth::TokenError::BadSignature)));
        assert_eq!(w.auth.authenticate(None), Err(AuthError::Missing));
    }

    #[test]
    fn a_callers_standing_follows_revocation_suspension_and_never_lapses_for_bootstrap_keys() {
        let w = world();
        let token = w.credential("agg-x", Role::Aggregator, false);
        w.aggregator("agg-x", AggregatorStatus::Active);
        let caller = w.auth.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(w.auth.still_stands(&caller), Ok(()));
        w.aggregator("agg-x", AggregatorStatus::Suspended);
        assert_eq!(w.auth.still_stands(&caller), Err(AuthError::Suspended));
        w.aggregator("agg-x", AggregatorStatus::Active);
        let mut revoked = w.view.read().unwrap().credential(&caller.credential_id).unwrap().clone();
        revoked.revoked_at = Some(Utc::now());
        w.apply(Entity::Credential(revoked.clone()));
        assert_eq!(w.auth.still_stands(&caller), Err(AuthError::Revoked));
        let expired = CredentialEntity { revoked_at: None, expires_at: Utc::now() - TimeDelta::seconds(1), ..revoked };
        w.apply(Entity::Credential(expired));
        assert_eq!(w.auth.still_stands(&caller), Err(AuthError::Token(cardlink_auth::TokenError::Expired)));

        let boot = w.auth.authenticate(Some("Bearer boot-key-0123456789abcdef")).unwrap();
        assert_eq!(w.auth.still_stands(&boot), Ok(()));
    }

    #[test]
    fn a_suspended_aggregator_is_refused_until_reactivated() {
        let w = world();
        let token = w.credential("agg-x", Role::Aggregator, false);
        w.aggregator("agg-x", AggregatorStatus::Suspended);
        assert_eq!(w.auth.authenticate_token(&token), Err(AuthError::Suspended));
        w.aggregator("agg-x", AggregatorStatus::Active);
        assert!(w.auth.authenticate_token(&token).is_ok());
    }

    #[test]
    fn bootstrap_keys_are_issuers_and_nothing_else_gets_in_through_them() {
        let w = world();
        let caller = w.auth.authenticate_token("boot-key-0123456789abcdef").unwrap();
        assert_eq!((caller.participant_id.as_str(), caller.role), ("iss-boot", Role::Issuer));
        assert_eq!(w.auth.authenticate_token("another-key-0123456789"), Err(AuthError::UnknownKey));
        // Without bootstrap keys, a non-token is malformed rather than unknown.
        let plain = Authenticator::new(TokenVerifier::default(), w.auth.registry.clone());
        assert_eq!(
            plain.authenticate_token("boot-key-0123456789abcdef"),
            Err(AuthError::Token(cardlink_auth::TokenError::Malformed))
        );
    }
}
