//! The consent rules, as a pure state machine.
//!
//! [`ConsentBook`] holds every consent's latest state and turns requests into the next state,
//! or a typed error. It does no I/O: the service publishes each returned [`ConsentEvent`] to the
//! compacted consent topic and applies it to the book once Kafka has it, so the book and every
//! [`cardlink_views::consent::ConsentView`] built from the topic agree (checked by property
//! tests).
//!
//! ```text
//!             approve              revoke
//! REQUESTED ──────────► ACTIVE ──────────► REVOKED
//!     │  deny               │ expires_at
//!     ▼                     ▼
//!   DENIED               EXPIRED         (REQUESTED also ends: revoke, or not decided in time)
//! ```
//!
//! Rules: a request needs an active connection between issuer and aggregator whose scopes cover
//! the requested ones; granted scopes are a non-empty subset of the requested; merchant detail
//! needs transactions; duration is at most [`MAX_DURATION_DAYS`]; the one-time code lives
//! [`CODE_TTL`], is single-use and PKCE-bound; only the consent's member (through its issuer), its
//! issuer or its aggregator may revoke it.

use std::collections::{HashMap, HashSet};

use cardlink_api::{ApiError, Reason};
use cardlink_events::ActorType;
use cardlink_events::EventId;
use cardlink_events::consent::{ConsentEvent, ConsentStatus};
use cardlink_events::registry::Scope;
use chrono::{DateTime, TimeDelta, Utc};

use crate::pkce;

/// The longest consent, in days (the cap the docs state).
pub const MAX_DURATION_DAYS: i32 = 365;
/// The most history a consent may cover: 24 months, what CDR requires and Plaid allows at most.
pub const MAX_HISTORY_DAYS: i32 = 730;
/// How long a one-time code can be exchanged.
pub const CODE_TTL: TimeDelta = TimeDelta::seconds(60);
/// How long a request waits for the member's decision.
pub const REQUEST_TTL: TimeDelta = TimeDelta::minutes(30);
/// Longest `state` an aggregator may have echoed back, in bytes (it is kept with the consent).
pub const MAX_STATE_BYTES: usize = 512;
/// Longest purpose, in characters.
pub const MAX_PURPOSE_CHARS: usize = 200;
/// Undecided requests one aggregator may hold at once. Every request is kept on the compacted
/// consent topic and in every replica's memory; a request ends when the member decides or after
/// [`REQUEST_TTL`]. (Each replica counts what it has read, so concurrent requests on several
/// replicas can pass the bound by a few.)
pub const MAX_PENDING_REQUESTS_PER_AGGREGATOR: usize = 10_000;

/// Who is acting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    Aggregator(String),
    Issuer(String),
    /// A member, authenticated by their issuer.
    Member {
        issuer_id: String,
        member_ref: String,
    },
    Operator(String),
    System,
}

impl Actor {
    /// The actor as audit records name it: its type and id.
    pub(crate) fn audit(&self) -> (ActorType, String) {
        match self {
            Self::Aggregator(id) => (ActorType::Aggregator, id.clone()),
            Self::Issuer(id) => (ActorType::Issuer, id.clone()),
            Self::Member { issuer_id, member_ref } => (ActorType::Member, format!("{issuer_id}/{member_ref}")),
            Self::Operator(id) => (ActorType::Operator, id.clone()),
            Self::System => (ActorType::System, "cardlink".to_owned()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    #[error("no such consent")]
    NotFound,
    #[error("this consent belongs to another participant")]
    NotYours,
    #[error("the consent is {0:?}; this change needs another state")]
    WrongState(ConsentStatus),
    #[error("issuer {issuer} has no active connection with aggregator {aggregator}")]
    NotConnected { issuer: String, aggregator: String },
    #[error("scope {0} is not enabled on this connection")]
    ScopeNotConnected(&'static str),
    #[error("scopes: {0}")]
    InvalidScopes(&'static str),
    #[error("duration must be 1 to {MAX_DURATION_DAYS} days")]
    InvalidDuration,
    #[error("history_days must be 0 to {MAX_HISTORY_DAYS}")]
    InvalidHistoryDays,
    #[error("redirect_uri must be one the aggregator registered (exactly; a loopback http URI with any port)")]
    InvalidRedirect,
    #[error("state must be at most {MAX_STATE_BYTES} bytes, without control characters")]
    InvalidState,
    #[error(
        "the aggregator already has {MAX_PENDING_REQUESTS_PER_AGGREGATOR} undecided requests; each ends when decided or after 30 minutes"
    )]
    TooManyPending,
    #[error("code_challenge must be an S256 PKCE challenge (43 base64url characters)")]
    InvalidChallenge,
    #[error("purpose is required and at most {MAX_PURPOSE_CHARS} characters")]
    InvalidPurpose,
    #[error("choose at least one account")]
    NoAccounts,
    /// Unknown, already used or expired: deliberately one error, so it tells an attacker nothing.
    #[error("the code is invalid, expired or already used")]
    InvalidCode,
    #[error("the PKCE verifier does not match the challenge")]
    PkceMismatch,
    #[error("the redirect_uri differs from the request's")]
    RedirectMismatch,
}

impl ApiError for ConsentError {
    fn reason(&self) -> Reason {
        match self {
            Self::NotFound => Reason::ConsentNotFound,
            Self::NotYours => Reason::NotYourConsent,
            Self::WrongState(_) => Reason::WrongConsentState,
            Self::NotConnected { .. } => Reason::NotConnected,
            Self::ScopeNotConnected(_) => Reason::ScopeNotConnected,
            Self::InvalidScopes(_) => Reason::InvalidScopes,
            Self::InvalidDuration => Reason::InvalidDuration,
            Self::InvalidHistoryDays => Reason::InvalidHistoryDays,
            Self::InvalidRedirect => Reason::InvalidRedirectUri,
            Self::InvalidState => Reason::InvalidState,
            Self::TooManyPending => Reason::TooManyPendingRequests,
            Self::InvalidChallenge => Reason::InvalidCodeChallenge,
            Self::InvalidPurpose => Reason::InvalidPurpose,
            Self::NoAccounts => Reason::NoAccounts,
            Self::InvalidCode => Reason::InvalidCode,
            Self::PkceMismatch => Reason::PkceMismatch,
            Self::RedirectMismatch => Reason::RedirectUriMismatch,
        }
    }
}

/// What the registry says about one issuer–aggregator pair, for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionGrant {
    pub active: bool,
    pub scopes: Vec<Scope>,
    /// The aggregator's registered redirect URIs.
    pub redirect_uris: Vec<String>,
}

/// An aggregator's consent request.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub issuer_id: String,
    pub scopes: Vec<Scope>,
    pub duration_days: i32,
    /// Days before the grant the consent also covers.
    pub history_days: i32,
    pub purpose: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub state: Option<String>,
}

/// The member's decision at the issuer.
#[derive(Clone, Debug)]
pub struct Approval {
    pub member_ref: String,
    pub account_refs: Vec<String>,
    pub scopes: Vec<Scope>,
}

/// Every consent's latest state.
#[derive(Debug, Default, Clone)]
pub struct ConsentBook {
    consents: HashMap<String, ConsentEvent>,
    by_code: HashMap<String, String>,
    /// Offset on the consent topic of each consent's last record read, so reading a record
    /// again changes nothing.
    offsets: HashMap<String, i64>,
    /// The first state on the topic that redeemed each consent's code: (offset, event id).
    /// Log order decides which of two concurrent exchanges won.
    redemptions: HashMap<String, (i64, EventId)>,
    /// Consents whose last record on the topic lost to their final state (see [`Self::repairs`]).
    refused_last: HashSet<String>,
    /// Undecided requests per aggregator.
    pending: HashMap<String, usize>,
}

fn validate_scopes(scopes: &[Scope]) -> Result<(), ConsentError> {
    if scopes.is_empty() {
        return Err(ConsentError::InvalidScopes("at least one scope"));
    }
    if scopes.contains(&Scope::MerchantDetail) && !scopes.contains(&Scope::Transactions) {
        return Err(ConsentError::InvalidScopes("MERCHANT_DETAIL needs TRANSACTIONS"));
    }
    Ok(())
}

fn sorted_unique(scopes: &[Scope]) -> Vec<Scope> {
    let mut s = scopes.to_vec();
    s.sort();
    s.dedup();
    s
}

impl ConsentBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// The event that first redeemed `consent_id`'s code on the topic, as far as read.
    pub fn first_redemption(&self, consent_id: &str) -> Option<EventId> {
        self.redemptions.get(consent_id).map(|(_, id)| *id)
    }

    pub fn get(&self, consent_id: &str) -> Option<&ConsentEvent> {
        self.consents.get(consent_id)
    }

    pub fn all(&self) -> impl Iterator<Item = &ConsentEvent> {
        self.consents.values()
    }

    /// Records the state the topic holds at `offset`, unless a later one is already applied.
    pub fn apply_at(&mut self, event: ConsentEvent, offset: i64) {
        if self.offsets.get(&event.consent_id).is_some_and(|seen| *seen >= offset) {
            return;
        }
        self.offsets.insert(event.consent_id.clone(), offset);
        if event.code_redeemed && self.consents.get(&event.consent_id).is_none_or(|c| event.replaces(c)) {
            self.redemptions.entry(event.consent_id.clone()).or_insert((offset, event.event_id));
        }
        self.apply(event);
    }

    /// Records the next state read from the topic (in log order), unless the consent already
    /// ended ([`ConsentEvent::replaces`]). A refused state is remembered as the topic's last
    /// word on that consent until a copy of the final state follows it ([`Self::repairs`]).
    pub fn apply(&mut self, event: ConsentEvent) {
        if let Some(current) = self.consents.get(&event.consent_id)
            && !event.replaces(current)
        {
            if current.event_id == event.event_id {
                self.refused_last.remove(&event.consent_id);
            } else {
                self.refused_last.insert(event.consent_id.clone());
            }
            return;
        }
        self.refused_last.remove(&event.consent_id);
        if let Some(hash) = &event.code_hash {
            self.by_code.insert(hash.clone(), event.consent_id.clone());
        }
        let was_pending = self.consents.get(&event.consent_id).is_some_and(|c| c.status == ConsentStatus::Requested);
        let is_pending = event.status == ConsentStatus::Requested;
        if is_pending && !was_pending {
            *self.pending.entry(event.aggregator_id.clone()).or_default() += 1;
        } else if was_pending
            && !is_pending
            && let Some(n) = self.pending.get_mut(&event.aggregator_id)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pending.remove(&event.aggregator_id);
            }
        }
        self.consents.insert(event.consent_id.clone(), event);
    }

    /// Final states to write again because the topic's last record of their consent is a
    /// change that lost to them. Compaction keeps only a key's last record; without the copy,
    /// a replica rebuilding from the compacted topic would see the losing change instead of
    /// the final state. (The compacted topics keep superseded records for
    /// `min.compaction.lag.ms`, an hour, which leaves the sweep ample time.)
    pub fn repairs(&self) -> Vec<ConsentEvent> {
        let mut ids: Vec<&String> = self.refused_last.iter().collect();
        ids.sort();
        ids.into_iter().filter_map(|id| self.consents.get(id)).cloned().collect()
    }

    fn next(&self, base: &ConsentEvent, actor: &Actor, now: DateTime<Utc>) -> ConsentEvent {
        let (actor_type, actor_id) = actor.audit();
        ConsentEvent { event_id: EventId::random(), occurred_at: now, actor_type, actor_id, ..base.clone() }
    }

    /// The aggregator asks for consent.
    pub fn request(
        &self,
        aggregator_id: &str,
        request: NewRequest,
        connection: Option<&ConnectionGrant>,
        now: DateTime<Utc>,
    ) -> Result<ConsentEvent, ConsentError> {
        let not_connected =
            || ConsentError::NotConnected { issuer: request.issuer_id.clone(), aggregator: aggregator_id.to_owned() };
        let connection = connection.filter(|c| c.active).ok_or_else(not_connected)?;
        validate_scopes(&request.scopes)?;
        for scope in &request.scopes {
            if !connection.scopes.contains(scope) {
                return Err(ConsentError::ScopeNotConnected(scope.as_str()));
            }
        }
        if !(1..=MAX_DURATION_DAYS).contains(&request.duration_days) {
            return Err(ConsentError::InvalidDuration);
        }
        if !(0..=MAX_HISTORY_DAYS).contains(&request.history_days) {
            return Err(ConsentError::InvalidHistoryDays);
        }
        if !cardlink_events::registry::redirect_uri_allowed(&connection.redirect_uris, &request.redirect_uri) {
            return Err(ConsentError::InvalidRedirect);
        }
        if request.state.as_ref().is_some_and(|s| s.len() > MAX_STATE_BYTES || s.chars().any(char::is_control)) {
            return Err(ConsentError::InvalidState);
        }
        if !pkce::challenge_is_well_formed(&request.code_challenge) {
            return Err(ConsentError::InvalidChallenge);
        }
        let purpose = request.purpose.trim();
        if purpose.is_empty() || purpose.chars().count() > MAX_PURPOSE_CHARS {
            return Err(ConsentError::InvalidPurpose);
        }
        if self.pending.get(aggregator_id).is_some_and(|n| *n >= MAX_PENDING_REQUESTS_PER_AGGREGATOR) {
            return Err(ConsentError::TooManyPending);
        }
        let (actor_type, actor_id) = Actor::Aggregator(aggregator_id.to_owned()).audit();
        Ok(ConsentEvent {
            event_id: EventId::random(),
            occurred_at: now,
            actor_type,
            actor_id,
            consent_id: format!("cns_{}", uuid::Uuid::new_v4().simple()),
            issuer_id: request.issuer_id,
            aggregator_id: aggregator_id.to_owned(),
            member_ref: None,
            account_refs: Vec::new(),
            requested_scopes: sorted_unique(&request.scopes),
            scopes: Vec::new(),
            status: ConsentStatus::Requested,
            purpose: purpose.to_owned(),
            redirect_uri: request.redirect_uri,
            state: request.state,
            code_challenge: request.code_challenge,
            duration_days: request.duration_days,
            history_days: request.history_days,
            created_at: now,
            granted_at: None,
            // Until decided, the request itself expires.
            expires_at: Some(now + REQUEST_TTL),
            ended_at: None,
            code_hash: None,
            code_expires_at: None,
            code_redeemed: false,
        })
    }

    /// The member approves at their issuer. Returns the new state and the one-time code (shown
    /// once, in the redirect to the aggregator).
    pub fn approve(
        &self,
        issuer_id: &str,
        consent_id: &str,
        approval: Approval,
        now: DateTime<Utc>,
    ) -> Result<(ConsentEvent, String), ConsentError> {
        let current = self.consents.get(consent_id).ok_or(ConsentError::NotFound)?;
        if current.issuer_id != issuer_id {
            return Err(ConsentError::NotYours);
        }
        if current.status != ConsentStatus::Requested || current.expires_at.is_some_and(|e| now >= e) {
            return Err(ConsentError::WrongState(current.status));
        }
        let scopes = sorted_unique(&approval.scopes);
        validate_scopes(&scopes)?;
        if !scopes.iter().all(|s| current.requested_scopes.contains(s)) {
            return Err(ConsentError::InvalidScopes("granted scopes must be among the requested ones"));
        }
        let mut accounts = approval.account_refs.clone();
        accounts.sort();
        accounts.dedup();
        if accounts.is_empty() || approval.member_ref.trim().is_empty() {
            return Err(ConsentError::NoAccounts);
        }
        let code = pkce::new_code();
        let actor = Actor::Member { issuer_id: issuer_id.to_owned(), member_ref: approval.member_ref.clone() };
        let mut next = self.next(current, &actor, now);
        next.status = ConsentStatus::Active;
        next.member_ref = Some(approval.member_ref);
        next.account_refs = accounts;
        next.scopes = scopes;
        next.granted_at = Some(now);
        next.expires_at = Some(now + TimeDelta::days(i64::from(current.duration_days)));
        next.code_hash = Some(pkce::code_hash(&code));
        next.code_expires_at = Some(now + CODE_TTL);
        Ok((next, code))
    }

    /// The member denies at their issuer.
    pub fn deny(
        &self,
        issuer_id: &str,
        consent_id: &str,
        member_ref: &str,
        now: DateTime<Utc>,
    ) -> Result<ConsentEvent, ConsentError> {
        let current = self.consents.get(consent_id).ok_or(ConsentError::NotFound)?;
        if current.issuer_id != issuer_id {
            return Err(ConsentError::NotYours);
        }
        if current.status != ConsentStatus::Requested {
            return Err(ConsentError::WrongState(current.status));
        }
        let actor = Actor::Member { issuer_id: issuer_id.to_owned(), member_ref: member_ref.to_owned() };
        let mut next = self.next(current, &actor, now);
        next.status = ConsentStatus::Denied;
        next.member_ref = Some(member_ref.to_owned());
        next.ended_at = Some(now);
        Ok(next)
    }

    /// The aggregator exchanges the one-time code for the consent.
    pub fn exchange(
        &self,
        aggregator_id: &str,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        now: DateTime<Utc>,
    ) -> Result<ConsentEvent, ConsentError> {
        let consent_id = self.by_code.get(&pkce::code_hash(code)).ok_or(ConsentError::InvalidCode)?;
        let current = self.consents.get(consent_id).ok_or(ConsentError::InvalidCode)?;
        if current.aggregator_id != aggregator_id {
            // Someone else's code: as unknown, so codes cannot be probed across aggregators.
            return Err(ConsentError::InvalidCode);
        }
        if current.code_redeemed
            || current.code_expires_at.is_none_or(|e| now >= e)
            || current.status != ConsentStatus::Active
        {
            return Err(ConsentError::InvalidCode);
        }
        if current.redirect_uri != redirect_uri {
            return Err(ConsentError::RedirectMismatch);
        }
        if !pkce::verify(verifier, &current.code_challenge) {
            return Err(ConsentError::PkceMismatch);
        }
        let mut next = self.next(current, &Actor::Aggregator(aggregator_id.to_owned()), now);
        next.code_redeemed = true;
        Ok(next)
    }

    /// Ends a consent (or an undecided request) now.
    pub fn revoke(&self, actor: &Actor, consent_id: &str, now: DateTime<Utc>) -> Result<ConsentEvent, ConsentError> {
        let current = self.consents.get(consent_id).ok_or(ConsentError::NotFound)?;
        let allowed = match actor {
            Actor::Aggregator(id) => *id == current.aggregator_id,
            Actor::Issuer(id) => *id == current.issuer_id,
            Actor::Member { issuer_id, member_ref } => {
                *issuer_id == current.issuer_id && current.member_ref.as_deref() == Some(member_ref.as_str())
            }
            Actor::Operator(_) | Actor::System => true,
        };
        if !allowed {
            return Err(ConsentError::NotYours);
        }
        if current.status.is_final() {
            return Err(ConsentError::WrongState(current.status));
        }
        let mut next = self.next(current, actor, now);
        next.status = ConsentStatus::Revoked;
        next.ended_at = Some(now);
        Ok(next)
    }

    /// Consents and requests whose time is up at `now`, as EXPIRED events.
    pub fn expire(&self, now: DateTime<Utc>) -> Vec<ConsentEvent> {
        let mut ids: Vec<&String> = self
            .consents
            .iter()
            .filter(|(_, c)| {
                matches!(c.status, ConsentStatus::Active | ConsentStatus::Requested)
                    && c.expires_at.is_some_and(|e| now >= e)
            })
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| self.consents.get(id))
            .map(|c| {
                let mut next = self.next(c, &Actor::System, now);
                next.status = ConsentStatus::Expired;
                next.ended_at = Some(now);
                next
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
