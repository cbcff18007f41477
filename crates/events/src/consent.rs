//! Consent records: a member's permission for one aggregator to receive some kinds of data
//! about some of their accounts at one issuer, for a limited time.
//!
//! Each change is the consent's full new state on the compacted consent topic, keyed by the
//! consent id. [`ConsentEvent::is_active_at`] is the one definition of "this consent allows
//! delivery now" that every service uses.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{ActorType, EventId};
use crate::registry::{Scope, ScopeSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsentStatus {
    /// Asked for by the aggregator; the member has not decided.
    Requested,
    Active,
    Denied,
    Revoked,
    Expired,
}

impl ConsentStatus {
    /// Whether no further change can happen.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Denied | Self::Revoked | Self::Expired)
    }

    /// Whether a state read after one with this status replaces it: see [`ConsentEvent::replaces`],
    /// for readers that keep only the status.
    pub fn is_replaceable(self) -> bool {
        !self.is_final()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentEvent {
    pub event_id: EventId,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub occurred_at: DateTime<Utc>,
    pub actor_type: ActorType,
    pub actor_id: String,
    pub consent_id: String,
    pub issuer_id: String,
    pub aggregator_id: String,
    pub member_ref: Option<String>,
    pub account_refs: Vec<String>,
    pub requested_scopes: Vec<Scope>,
    pub scopes: Vec<Scope>,
    pub status: ConsentStatus,
    pub purpose: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub duration_days: i32,
    /// Days before the grant the consent also covers (history); 0 for consents written before
    /// schema v2.
    #[serde(default)]
    pub history_days: i32,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "chrono::serde::ts_microseconds_option")]
    pub granted_at: Option<DateTime<Utc>>,
    #[serde(with = "chrono::serde::ts_microseconds_option")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(with = "chrono::serde::ts_microseconds_option")]
    pub ended_at: Option<DateTime<Utc>>,
    pub code_hash: Option<String>,
    #[serde(with = "chrono::serde::ts_microseconds_option")]
    pub code_expires_at: Option<DateTime<Utc>>,
    pub code_redeemed: bool,
}

impl ConsentEvent {
    /// Whether this state, read after `current` on the consent topic, replaces it. A final state
    /// is never replaced: a change decided on a replica that had not yet read the revocation,
    /// denial or expiry loses, whatever order the replicas' writes reach the log in. Every
    /// reader of the topic (consent books, consent views) applies this one rule.
    pub fn replaces(&self, current: &ConsentEvent) -> bool {
        current.status.is_replaceable()
    }

    /// Whether the consent allows delivery at `now`: active and not past its expiry.
    pub fn is_active_at(&self, now: DateTime<Utc>) -> bool {
        self.status == ConsentStatus::Active && self.expires_at.is_some_and(|e| now < e)
    }

    /// The instant from which events may be provided under the consent: its grant, less the
    /// history it covers. `None` until granted.
    pub fn data_from(&self) -> Option<DateTime<Utc>> {
        self.granted_at.map(|g| g - chrono::TimeDelta::days(i64::from(self.history_days.max(0))))
    }

    pub fn covers(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// What deciding on delivery needs of this state, borrowed.
    pub fn terms(&self) -> ConsentTerms<'_> {
        ConsentTerms {
            consent_id: &self.consent_id,
            issuer_id: &self.issuer_id,
            aggregator_id: &self.aggregator_id,
            member_ref: self.member_ref.as_deref(),
            account_refs: self.account_refs.iter().map(String::as_str).collect(),
            scopes: ScopeSet::of(&self.scopes),
            status: self.status,
            history_days: self.history_days,
            granted_at_micros: self.granted_at.map(|t| t.timestamp_micros()),
            expires_at_micros: self.expires_at.map(|t| t.timestamp_micros()),
        }
    }
}

/// What deciding on delivery needs of one consent's state — who, which accounts, which scopes,
/// which window — borrowed from a [`ConsentEvent`] or straight from a record's bytes
/// ([`crate::codec::with_consent_terms`]): a replica rebuilding its consent view from ten million
/// records reads these, not the full state with its purpose, redirect URI and PKCE challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentTerms<'a> {
    pub consent_id: &'a str,
    pub issuer_id: &'a str,
    pub aggregator_id: &'a str,
    pub member_ref: Option<&'a str>,
    pub account_refs: Vec<&'a str>,
    /// Granted (not requested) scopes.
    pub scopes: ScopeSet,
    pub status: ConsentStatus,
    pub history_days: i32,
    /// Microseconds since the epoch.
    pub granted_at_micros: Option<i64>,
    pub expires_at_micros: Option<i64>,
}
