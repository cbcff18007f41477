//! The registry view: who the participants are, which connections are active, which
//! credentials still stand.

use std::collections::HashMap;

use cardlink_events::registry::{
    AggregatorEntity, AggregatorStatus, ConnectionEntity, ConnectionStatus, CredentialEntity, Entity, IssuerEntity,
    RegistryEvent,
};
use chrono::{DateTime, Utc};

#[derive(Debug, Default)]
pub struct RegistryView {
    issuers: HashMap<String, IssuerEntity>,
    aggregators: HashMap<String, AggregatorEntity>,
    connections: HashMap<(String, String), ConnectionEntity>,
    credentials: HashMap<String, CredentialEntity>,
    /// Offset on the registry topic of each entity's applied state (see `apply_at`).
    offsets: HashMap<String, i64>,
}

impl RegistryView {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the state the topic holds at `offset`, unless a later one of the same entity is
    /// already applied: a service applies its own writes at once and reads them back later.
    pub fn apply_at(&mut self, event: &RegistryEvent, offset: i64) -> bool {
        let key = event.key();
        if self.offsets.get(&key).is_some_and(|seen| *seen >= offset) {
            return true;
        }
        self.offsets.insert(key, offset);
        self.apply(event)
    }

    /// Applies the latest state of one entity. Events with no or several entities are ignored
    /// (and logged by the follower); the producer never writes them.
    pub fn apply(&mut self, event: &RegistryEvent) -> bool {
        match event.entity() {
            Some(Entity::Issuer(e)) => {
                self.issuers.insert(e.issuer_id.clone(), e);
            }
            Some(Entity::Aggregator(e)) => {
                self.aggregators.insert(e.aggregator_id.clone(), e);
            }
            Some(Entity::Connection(e)) => {
                self.connections.insert((e.issuer_id.clone(), e.aggregator_id.clone()), e);
            }
            Some(Entity::Credential(e)) => {
                self.credentials.insert(e.credential_id.clone(), e);
            }
            None => return false,
        }
        true
    }

    pub fn issuer(&self, id: &str) -> Option<&IssuerEntity> {
        self.issuers.get(id)
    }

    pub fn issuers(&self) -> impl Iterator<Item = &IssuerEntity> {
        self.issuers.values()
    }

    pub fn aggregator(&self, id: &str) -> Option<&AggregatorEntity> {
        self.aggregators.get(id)
    }

    pub fn aggregators(&self) -> impl Iterator<Item = &AggregatorEntity> {
        self.aggregators.values()
    }

    pub fn connection(&self, issuer_id: &str, aggregator_id: &str) -> Option<&ConnectionEntity> {
        self.connections.get(&(issuer_id.to_owned(), aggregator_id.to_owned()))
    }

    /// Whether data may flow from the issuer to the aggregator at all: the connection is active
    /// and the aggregator is not suspended.
    pub fn is_connected(&self, issuer_id: &str, aggregator_id: &str) -> bool {
        self.connection(issuer_id, aggregator_id).is_some_and(|c| c.status == ConnectionStatus::Active)
            && self.aggregator(aggregator_id).is_some_and(|a| a.status == AggregatorStatus::Active)
    }

    pub fn connections(&self) -> impl Iterator<Item = &ConnectionEntity> {
        self.connections.values()
    }

    pub fn credential(&self, id: &str) -> Option<&CredentialEntity> {
        self.credentials.get(id)
    }

    /// Whether a credential is known, for `participant`, not revoked and not expired at `now`.
    pub fn credential_valid(&self, credential_id: &str, participant: &str, now: DateTime<Utc>) -> bool {
        self.credentials
            .get(credential_id)
            .is_some_and(|c| c.participant_id == participant && c.revoked_at.is_none() && now < c.expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cardlink_events::ActorType;
    use cardlink_events::registry::Scope;

    fn connection(status: ConnectionStatus) -> RegistryEvent {
        RegistryEvent::new(
            ActorType::Issuer,
            "iss-a",
            Entity::Connection(ConnectionEntity {
                issuer_id: "iss-a".into(),
                aggregator_id: "agg-x".into(),
                scopes: vec![Scope::Transactions],
                status,
                reason: None,
            }),
        )
    }

    #[test]
    fn an_older_state_read_back_does_not_overwrite_a_newer_one() {
        let mut view = RegistryView::new();
        view.apply_at(&connection(ConnectionStatus::Active), 4);
        view.apply_at(&connection(ConnectionStatus::Suspended), 5);
        view.apply_at(&connection(ConnectionStatus::Active), 4);
        assert_eq!(view.connection("iss-a", "agg-x").map(|c| c.status), Some(ConnectionStatus::Suspended));
    }
}
