//! The registry's rules. Every change: check who may make it, publish the entity's new state
//! (Kafka acknowledged, `acks=all`), apply it to this process's view at once (read-your-writes),
//! and write an audit event.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use cardlink_api::{ApiError, Reason};
use cardlink_auth::{Role, TokenSigner};
use cardlink_bus::{BusError, Producer};
use cardlink_events::registry::{
    AggregatorEntity, AggregatorStatus, ConnectionEntity, ConnectionStatus, CredentialEntity, Entity, IssuerEntity,
    IssuerLogin, ParticipantRole, RegistryEvent, Scope,
};
use cardlink_events::{ActorType, AuditEvent, AuditOutcome, RecordType};
use cardlink_views::follow::Followed;
use cardlink_views::registry::RegistryView;
use chrono::{DateTime, Utc};

use cardlink_authn::Caller;

/// Default lifetime of an issued credential.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{kind} {id} is not registered")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id} is already registered")]
    AlreadyExists { kind: &'static str, id: String },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: &'static str },
    #[error("redirect_uris: {uri:?} {error}")]
    RedirectUri { uri: String, error: cardlink_events::registry::RedirectUriError },
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl ApiError for RegistryError {
    fn reason(&self) -> Reason {
        match self {
            Self::Forbidden(_) => Reason::Forbidden,
            Self::NotFound { .. } => Reason::NotFound,
            Self::AlreadyExists { .. } => Reason::AlreadyExists,
            Self::Invalid { .. } => Reason::InvalidArgument,
            Self::RedirectUri { .. } => Reason::InvalidRedirectUri,
            Self::Bus(_) => Reason::BusUnavailable,
        }
    }
}

/// A credential as handed to its participant, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCredential {
    pub credential_id: String,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Participant ids: lowercase letters, digits and hyphens, 2–63 characters, starting with a
/// letter or digit. No `/`, so Kafka keys `issuer_id/account_ref` stay unambiguous.
pub fn valid_id(id: &str) -> bool {
    cardlink_events::registry::is_plain_id(id)
}

/// A provider the consent page can reach safely: an https issuer URL (http only on the local
/// machine, for development) without query or fragment, as OpenID Connect Discovery requires.
/// Every URI of `uris` can be registered, and there are not too many.
fn check_redirect_uris(uris: &[String]) -> Result<(), RegistryError> {
    use cardlink_events::registry::{MAX_REDIRECT_URIS, check_redirect_uri};
    if uris.len() > MAX_REDIRECT_URIS {
        return Err(RegistryError::Invalid { field: "redirect_uris", message: "at most 20" });
    }
    for uri in uris {
        check_redirect_uri(uri).map_err(|error| RegistryError::RedirectUri { uri: uri.clone(), error })?;
    }
    Ok(())
}

fn check_login(login: &IssuerLogin) -> Result<(), RegistryError> {
    let invalid = |field, message| Err(RegistryError::Invalid { field, message });
    let Ok(url) = url::Url::parse(&login.issuer_url) else {
        return invalid("login.issuer_url", "not a URL");
    };
    let local = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if !(url.scheme() == "https" || (url.scheme() == "http" && local)) {
        return invalid("login.issuer_url", "must be https (http only on localhost)");
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return invalid("login.issuer_url", "must have no query, fragment or user");
    }
    if login.client_id.is_empty() || login.client_id.len() > 255 {
        return invalid("login.client_id", "1-255 characters");
    }
    let claim_ok = (1..=128).contains(&login.account_claim.len())
        && login.account_claim.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if !claim_ok {
        return invalid("login.account_claim", "1-128 printable ASCII characters");
    }
    Ok(())
}

fn actor(caller: &Caller) -> (ActorType, &str) {
    let t = match caller.role {
        Role::Issuer => ActorType::Issuer,
        Role::Aggregator => ActorType::Aggregator,
        Role::Operator => ActorType::Operator,
    };
    (t, caller.participant_id.as_str())
}

fn is_operator(caller: &Caller) -> bool {
    caller.role == Role::Operator
}

#[derive(Clone, Debug)]
pub struct Registry {
    producer: Producer,
    view: Followed<RegistryView>,
    signer: Arc<TokenSigner>,
    credential_ttl: Duration,
}

impl Registry {
    pub fn new(
        producer: Producer,
        view: Followed<RegistryView>,
        signer: Arc<TokenSigner>,
        credential_ttl: Duration,
    ) -> Self {
        Self { producer, view, signer, credential_ttl }
    }

    pub fn view(&self) -> &Followed<RegistryView> {
        &self.view
    }

    async fn publish(
        &self,
        actor: (ActorType, &str),
        entity: Entity,
        action: &str,
        resource: String,
    ) -> Result<(), RegistryError> {
        let event = RegistryEvent::new(actor.0, actor.1, entity);
        let delivered = self
            .producer
            .publish_record(RecordType::RegistryEvent, &event.key(), &event.event_id.to_string(), &event)
            .await?;
        // Read-your-writes: apply at once; the follower's later read of the same offset is a no-op.
        self.view.view.write().unwrap_or_else(PoisonError::into_inner).apply_at(&event, delivered.offset);
        let audit = AuditEvent::now(actor.0, actor.1, action, &resource, AuditOutcome::Succeeded);
        if let Err(e) = self.producer.publish_audit(&audit).await {
            tracing::error!(error = %e, action, "could not write audit event");
        }
        Ok(())
    }

    async fn issue_credential(
        &self,
        actor: (ActorType, &str),
        participant: &str,
        role: Role,
    ) -> Result<IssuedCredential, RegistryError> {
        let now = Utc::now();
        let expires_at = now + chrono::TimeDelta::from_std(self.credential_ttl).unwrap_or(chrono::TimeDelta::days(365));
        let (credential_id, token) = self.signer.issue(participant, role, now, expires_at);
        let entity = CredentialEntity {
            credential_id: credential_id.clone(),
            role: match role {
                Role::Issuer => ParticipantRole::Issuer,
                Role::Aggregator => ParticipantRole::Aggregator,
                Role::Operator => ParticipantRole::Operator,
            },
            participant_id: participant.to_owned(),
            issued_at: now,
            expires_at,
            revoked_at: None,
        };
        self.publish(actor, Entity::Credential(entity), "credential.issue", format!("credential/{credential_id}"))
            .await?;
        Ok(IssuedCredential { credential_id, token, expires_at })
    }

    /// Issues an operator credential. Only trusted start-up code calls this (there is no caller
    /// to check): `cardlink dev`, tests, and the operator's own bootstrap command.
    pub async fn bootstrap_operator(&self, operator_id: &str) -> Result<IssuedCredential, RegistryError> {
        self.issue_credential((ActorType::System, "bootstrap"), operator_id, Role::Operator).await
    }

    pub async fn register_issuer(
        &self,
        caller: &Caller,
        issuer: IssuerEntity,
    ) -> Result<(IssuerEntity, IssuedCredential), RegistryError> {
        if !is_operator(caller) {
            return Err(RegistryError::Forbidden("only the platform operator registers issuers"));
        }
        if !valid_id(&issuer.issuer_id) {
            return Err(RegistryError::Invalid {
                field: "issuer_id",
                message: "2-63 lowercase letters, digits or hyphens",
            });
        }
        if issuer.name.trim().is_empty() {
            return Err(RegistryError::Invalid { field: "name", message: "required" });
        }
        if issuer.annual_volume_jpy < 0 {
            return Err(RegistryError::Invalid { field: "annual_volume_jpy", message: "cannot be negative" });
        }
        if let Some(kind) = self.view.read(|v| registered_as(v, &issuer.issuer_id)) {
            return Err(RegistryError::AlreadyExists { kind, id: issuer.issuer_id });
        }
        let resource = format!("issuer/{}", issuer.issuer_id);
        self.publish(actor(caller), Entity::Issuer(issuer.clone()), "registry.issuer.register", resource).await?;
        let credential = self.issue_credential(actor(caller), &issuer.issuer_id, Role::Issuer).await?;
        Ok((issuer, credential))
    }

    pub async fn register_aggregator(
        &self,
        caller: &Caller,
        aggregator: AggregatorEntity,
    ) -> Result<(AggregatorEntity, IssuedCredential), RegistryError> {
        if !is_operator(caller) {
            return Err(RegistryError::Forbidden("only the platform operator registers aggregators"));
        }
        if !valid_id(&aggregator.aggregator_id) {
            return Err(RegistryError::Invalid {
                field: "aggregator_id",
                message: "2-63 lowercase letters, digits or hyphens",
            });
        }
        if aggregator.name.trim().is_empty() {
            return Err(RegistryError::Invalid { field: "name", message: "required" });
        }
        if aggregator.registration_number.trim().is_empty() {
            return Err(RegistryError::Invalid {
                field: "registration_number",
                message: "the 電子決済等代行業 registration number is required",
            });
        }
        check_redirect_uris(&aggregator.redirect_uris)?;
        if let Some(kind) = self.view.read(|v| registered_as(v, &aggregator.aggregator_id)) {
            return Err(RegistryError::AlreadyExists { kind, id: aggregator.aggregator_id });
        }
        let aggregator = AggregatorEntity { status: AggregatorStatus::Active, ..aggregator };
        let resource = format!("aggregator/{}", aggregator.aggregator_id);
        self.publish(actor(caller), Entity::Aggregator(aggregator.clone()), "registry.aggregator.register", resource)
            .await?;
        let credential = self.issue_credential(actor(caller), &aggregator.aggregator_id, Role::Aggregator).await?;
        Ok((aggregator, credential))
    }

    /// Registers where `issuer_id`'s members sign in. The issuer itself or the operator.
    pub async fn set_issuer_login(
        &self,
        caller: &Caller,
        issuer_id: &str,
        login: IssuerLogin,
    ) -> Result<IssuerEntity, RegistryError> {
        let own = caller.role == Role::Issuer && caller.participant_id == issuer_id;
        if !(own || is_operator(caller)) {
            return Err(RegistryError::Forbidden("an issuer sets only its own login provider"));
        }
        check_login(&login)?;
        let current = self
            .view
            .read(|v| v.issuer(issuer_id).cloned())
            .ok_or_else(|| RegistryError::NotFound { kind: "issuer", id: issuer_id.to_owned() })?;
        let next = IssuerEntity { login: Some(login), ..current };
        self.publish(
            actor(caller),
            Entity::Issuer(next.clone()),
            "registry.issuer.login",
            format!("issuer/{issuer_id}"),
        )
        .await?;
        Ok(next)
    }

    /// Replaces the aggregator's redirect URIs (the operator, or the aggregator itself).
    pub async fn set_redirect_uris(
        &self,
        caller: &Caller,
        aggregator_id: &str,
        redirect_uris: Vec<String>,
    ) -> Result<AggregatorEntity, RegistryError> {
        let own = caller.role == Role::Aggregator && caller.participant_id == aggregator_id;
        if !(own || is_operator(caller)) {
            return Err(RegistryError::Forbidden("an aggregator sets only its own redirect URIs"));
        }
        check_redirect_uris(&redirect_uris)?;
        let current = self
            .view
            .read(|v| v.aggregator(aggregator_id).cloned())
            .ok_or_else(|| RegistryError::NotFound { kind: "aggregator", id: aggregator_id.to_owned() })?;
        let next = AggregatorEntity { redirect_uris, ..current };
        self.publish(
            actor(caller),
            Entity::Aggregator(next.clone()),
            "registry.aggregator.redirect_uris",
            format!("aggregator/{aggregator_id}"),
        )
        .await?;
        Ok(next)
    }

    pub async fn set_aggregator_status(
        &self,
        caller: &Caller,
        aggregator_id: &str,
        status: AggregatorStatus,
    ) -> Result<AggregatorEntity, RegistryError> {
        if !is_operator(caller) {
            return Err(RegistryError::Forbidden("only the platform operator suspends or reinstates aggregators"));
        }
        let current = self
            .view
            .read(|v| v.aggregator(aggregator_id).cloned())
            .ok_or_else(|| RegistryError::NotFound { kind: "aggregator", id: aggregator_id.to_owned() })?;
        let next = AggregatorEntity { status, ..current };
        self.publish(
            actor(caller),
            Entity::Aggregator(next.clone()),
            "registry.aggregator.status",
            format!("aggregator/{aggregator_id}"),
        )
        .await?;
        Ok(next)
    }

    pub async fn enable_connection(
        &self,
        caller: &Caller,
        issuer_id: &str,
        aggregator_id: &str,
        scopes: Vec<Scope>,
    ) -> Result<ConnectionEntity, RegistryError> {
        let own = caller.role == Role::Issuer && caller.participant_id == issuer_id;
        if !(own || is_operator(caller)) {
            return Err(RegistryError::Forbidden("an issuer manages only its own connections"));
        }
        if self.view.read(|v| v.issuer(issuer_id).is_none()) {
            return Err(RegistryError::NotFound { kind: "issuer", id: issuer_id.to_owned() });
        }
        match self.view.read(|v| v.aggregator(aggregator_id).map(|a| a.status)) {
            None => return Err(RegistryError::NotFound { kind: "aggregator", id: aggregator_id.to_owned() }),
            Some(AggregatorStatus::Suspended) => return Err(RegistryError::Forbidden("the aggregator is suspended")),
            Some(AggregatorStatus::Active) => {}
        }
        let mut scopes = scopes;
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(RegistryError::Invalid { field: "scopes", message: "enable at least one scope" });
        }
        let connection = ConnectionEntity {
            issuer_id: issuer_id.to_owned(),
            aggregator_id: aggregator_id.to_owned(),
            scopes,
            status: ConnectionStatus::Active,
            reason: None,
        };
        let resource = format!("connection/{issuer_id}/{aggregator_id}");
        self.publish(actor(caller), Entity::Connection(connection.clone()), "registry.connection.enable", resource)
            .await?;
        Ok(connection)
    }

    pub async fn suspend_connection(
        &self,
        caller: &Caller,
        issuer_id: &str,
        aggregator_id: &str,
        reason: &str,
    ) -> Result<ConnectionEntity, RegistryError> {
        let party = (caller.role == Role::Issuer && caller.participant_id == issuer_id)
            || (caller.role == Role::Aggregator && caller.participant_id == aggregator_id);
        if !(party || is_operator(caller)) {
            return Err(RegistryError::Forbidden(
                "only the issuer, the aggregator or the operator suspends a connection",
            ));
        }
        let current = self.view.read(|v| v.connection(issuer_id, aggregator_id).cloned()).ok_or_else(|| {
            RegistryError::NotFound { kind: "connection", id: format!("{issuer_id}/{aggregator_id}") }
        })?;
        let next = ConnectionEntity {
            status: ConnectionStatus::Suspended,
            reason: (!reason.trim().is_empty()).then(|| reason.trim().to_owned()),
            ..current
        };
        let resource = format!("connection/{issuer_id}/{aggregator_id}");
        self.publish(actor(caller), Entity::Connection(next.clone()), "registry.connection.suspend", resource).await?;
        Ok(next)
    }

    /// The public transparency list: connections, optionally of one issuer, optionally active only.
    pub fn list_connections(&self, issuer_id: Option<&str>, active_only: bool) -> Vec<ConnectionEntity> {
        let mut list: Vec<ConnectionEntity> = self.view.read(|v| {
            v.connections()
                .filter(|c| issuer_id.is_none_or(|i| c.issuer_id == i))
                .filter(|c| !active_only || v.is_connected(&c.issuer_id, &c.aggregator_id))
                .cloned()
                .collect()
        });
        list.sort_by(|a, b| (&a.issuer_id, &a.aggregator_id).cmp(&(&b.issuer_id, &b.aggregator_id)));
        list
    }

    /// Issues a new credential for `participant_id`; the old ones stay valid until revoked, so
    /// the participant can switch over without downtime.
    pub async fn rotate_credential(
        &self,
        caller: &Caller,
        participant_id: &str,
    ) -> Result<IssuedCredential, RegistryError> {
        if !(caller.participant_id == participant_id || is_operator(caller)) {
            return Err(RegistryError::Forbidden("a participant rotates only its own credentials"));
        }
        let role = self.view.read(|v| rotation_role(v, caller, participant_id))?;
        self.issue_credential(actor(caller), participant_id, role).await
    }

    /// Revokes a credential at once.
    pub async fn revoke_credential(&self, caller: &Caller, credential_id: &str) -> Result<(), RegistryError> {
        let current = self
            .view
            .read(|v| v.credential(credential_id).cloned())
            .ok_or_else(|| RegistryError::NotFound { kind: "credential", id: credential_id.to_owned() })?;
        if !(current.participant_id == caller.participant_id || is_operator(caller)) {
            return Err(RegistryError::Forbidden("a participant revokes only its own credentials"));
        }
        if current.revoked_at.is_some() {
            return Ok(());
        }
        let next = CredentialEntity { revoked_at: Some(Utc::now()), ..current };
        self.publish(
            actor(caller),
            Entity::Credential(next),
            "credential.revoke",
            format!("credential/{credential_id}"),
        )
        .await
    }
}

/// What `id` is already registered as, if anything: one id names one participant, whatever its
/// role, so that a credential and an audit record are never ambiguous.
fn registered_as(view: &RegistryView, id: &str) -> Option<&'static str> {
    if view.issuer(id).is_some() {
        Some("issuer")
    } else if view.aggregator(id).is_some() {
        Some("aggregator")
    } else {
        None
    }
}

/// The role of the credential a rotation issues. A participant rotating its own keeps the role of
/// the credential it called with — never one chosen by looking its id up, which an id registered
/// in two roles (before ids were exclusive) would make a way to change role. An operator rotating
/// another's gets the one role the id is registered in, or a refusal if it is ambiguous.
fn rotation_role(view: &RegistryView, caller: &Caller, participant_id: &str) -> Result<Role, RegistryError> {
    if caller.participant_id == participant_id {
        return Ok(caller.role);
    }
    match (view.issuer(participant_id).is_some(), view.aggregator(participant_id).is_some()) {
        (true, false) => Ok(Role::Issuer),
        (false, true) => Ok(Role::Aggregator),
        (true, true) => Err(RegistryError::Invalid {
            field: "participant_id",
            message: "names both an issuer and an aggregator; the participant rotates its own credential",
        }),
        (false, false) => Err(RegistryError::NotFound { kind: "participant", id: participant_id.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use cardlink_events::registry::RegistryEvent;

    use super::*;

    fn caller(id: &str, role: Role) -> Caller {
        Caller { participant_id: id.into(), role, credential_id: "c".into() }
    }

    fn view_with_both_roles(id: &str) -> RegistryView {
        let mut view = RegistryView::new();
        let issuer = IssuerEntity { issuer_id: id.into(), name: "I".into(), annual_volume_jpy: 1, login: None };
        let aggregator = AggregatorEntity {
            aggregator_id: id.into(),
            name: "A".into(),
            registration_number: "1".into(),
            contact: String::new(),
            status: AggregatorStatus::Active,
            redirect_uris: Vec::new(),
        };
        view.apply(&RegistryEvent::new(ActorType::Operator, "op", Entity::Issuer(issuer)));
        view.apply(&RegistryEvent::new(ActorType::Operator, "op", Entity::Aggregator(aggregator)));
        view
    }

    /// An aggregator whose id is also an issuer's (registered before ids were exclusive) must not
    /// get an issuer's credential by rotating its own: the role is the caller's.
    #[test]
    fn a_rotated_credential_keeps_the_role_of_the_callers_own() {
        let view = view_with_both_roles("dual");
        assert_eq!(rotation_role(&view, &caller("dual", Role::Aggregator), "dual").ok(), Some(Role::Aggregator));
        assert_eq!(rotation_role(&view, &caller("dual", Role::Issuer), "dual").ok(), Some(Role::Issuer));
        // The operator cannot tell which one is meant: refused rather than guessed.
        assert!(matches!(
            rotation_role(&view, &caller("op", Role::Operator), "dual"),
            Err(RegistryError::Invalid { field: "participant_id", .. })
        ));
        let mut single = RegistryView::new();
        let issuer = IssuerEntity { issuer_id: "iss-a".into(), name: "I".into(), annual_volume_jpy: 1, login: None };
        single.apply(&RegistryEvent::new(ActorType::Operator, "op", Entity::Issuer(issuer)));
        assert_eq!(rotation_role(&single, &caller("op", Role::Operator), "iss-a").ok(), Some(Role::Issuer));
        assert!(matches!(
            rotation_role(&single, &caller("op", Role::Operator), "nobody"),
            Err(RegistryError::NotFound { .. })
        ));
    }

    #[test]
    fn participant_ids() {
        for ok in ["iss-a", "jcb", "agg-moneyforward-2", "a1"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", "a", "Iss", "iss/a", "-iss", "iss_a", "発行者", &"a".repeat(64)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
