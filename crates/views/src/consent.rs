//! The consent view: which aggregators may receive which data of which account, now.
//!
//! Built for the subscription hot path: [`ConsentView::grants`] takes the event's Kafka key
//! (`issuer_id/account_ref`, already in hand) and returns a slice — no allocation, one hash
//! lookup. A grant is small: the consent and aggregator ids are shared `Arc<str>`s, scopes a
//! bitmask, times plain integers. Expiry needs no background work: a grant carries its expiry
//! and [`Grant::allows`] checks it against the clock.

use std::collections::HashMap;
use std::sync::Arc;

use cardlink_events::consent::{ConsentEvent, ConsentStatus};
use cardlink_events::registry::Scope;
use chrono::{DateTime, Utc};

/// A set of scopes as a bitmask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(u8);

impl ScopeSet {
    fn bit(scope: Scope) -> u8 {
        match scope {
            Scope::Transactions => 1,
            Scope::MerchantDetail => 2,
            Scope::Statements => 4,
        }
    }

    pub fn of(scopes: &[Scope]) -> Self {
        Self(scopes.iter().fold(0, |acc, s| acc | Self::bit(*s)))
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & Self::bit(scope) != 0
    }

    pub fn is_subset_of(self, other: ScopeSet) -> bool {
        self.0 & !other.0 == 0
    }
}

/// One active consent of one account, as the hot path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub consent_id: Arc<str>,
    pub aggregator_id: Arc<str>,
    pub scopes: ScopeSet,
    /// Events that occurred before this instant are not covered (microseconds since the epoch).
    pub data_from_micros: i64,
    /// The consent ends at this instant (microseconds since the epoch).
    pub expires_at_micros: i64,
}

impl Grant {
    /// Whether, at `now`, this grant lets `scope` data of an event that occurred at
    /// `occurred_micros` through.
    pub fn allows(&self, scope: Scope, occurred_micros: i64, now_micros: i64) -> bool {
        now_micros < self.expires_at_micros && occurred_micros >= self.data_from_micros && self.scopes.contains(scope)
    }
}

/// The consent view.
#[derive(Debug, Default)]
pub struct ConsentView {
    /// `issuer_id/account_ref` → active grants.
    by_account: HashMap<Box<str>, Vec<Grant>>,
    /// Every consent's latest state.
    consents: HashMap<Arc<str>, ConsentEvent>,
    /// Interned aggregator ids.
    aggregators: HashMap<Box<str>, Arc<str>>,
    /// Grants (account × consent) held per aggregator, so "has this aggregator anything at
    /// all?" needs no scan.
    grants_per_aggregator: HashMap<Arc<str>, usize>,
}

fn account_key(issuer_id: &str, account_ref: &str) -> Box<str> {
    cardlink_events::codec::partition_key(issuer_id, account_ref).into_boxed_str()
}

fn micros(t: Option<DateTime<Utc>>) -> i64 {
    t.map_or(i64::MIN, |t| t.timestamp_micros())
}

impl ConsentView {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the next state of one consent read from the topic, unless the consent already
    /// ended ([`ConsentEvent::replaces`]).
    pub fn apply(&mut self, event: ConsentEvent) {
        let id: Arc<str> = match self.consents.get_key_value(event.consent_id.as_str()) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(event.consent_id.as_str()),
        };
        if let Some(old) = self.consents.get(&id) {
            if !event.replaces(old) {
                return;
            }
            for account in &old.account_refs {
                let key = account_key(&old.issuer_id, account);
                if let Some(grants) = self.by_account.get_mut(&key) {
                    let before = grants.len();
                    grants.retain(|g| g.consent_id != id);
                    let removed = before - grants.len();
                    if removed > 0
                        && let Some(n) = self.grants_per_aggregator.get_mut(old.aggregator_id.as_str())
                    {
                        *n = n.saturating_sub(removed);
                        if *n == 0 {
                            self.grants_per_aggregator.remove(old.aggregator_id.as_str());
                        }
                    }
                    if grants.is_empty() {
                        self.by_account.remove(&key);
                    }
                }
            }
        }
        if event.status == ConsentStatus::Active {
            let aggregator = match self.aggregators.get(event.aggregator_id.as_str()) {
                Some(a) => Arc::clone(a),
                None => {
                    let a: Arc<str> = Arc::from(event.aggregator_id.as_str());
                    self.aggregators.insert(event.aggregator_id.clone().into_boxed_str(), Arc::clone(&a));
                    a
                }
            };
            let grant = Grant {
                consent_id: Arc::clone(&id),
                aggregator_id: aggregator,
                scopes: ScopeSet::of(&event.scopes),
                data_from_micros: micros(event.data_from()),
                expires_at_micros: event.expires_at.map_or(i64::MIN, |t| t.timestamp_micros()),
            };
            for account in &event.account_refs {
                let grants = self.by_account.entry(account_key(&event.issuer_id, account)).or_default();
                grants.push(grant.clone());
                grants.shrink_to_fit();
                *self.grants_per_aggregator.entry(Arc::clone(&grant.aggregator_id)).or_default() += 1;
            }
        }
        self.consents.insert(id, event);
    }

    /// The active grants of the account with this Kafka key (`issuer_id/account_ref`).
    /// Expiry is the caller's check ([`Grant::allows`]), against its clock.
    pub fn grants(&self, account_key: &str) -> &[Grant] {
        self.by_account.get(account_key).map_or(&[], Vec::as_slice)
    }

    pub fn consent(&self, consent_id: &str) -> Option<&ConsentEvent> {
        self.consents.get(consent_id)
    }

    /// Every consent's latest state.
    pub fn consents(&self) -> impl Iterator<Item = &ConsentEvent> {
        self.consents.values()
    }

    /// Consents that allow delivery at `now`.
    pub fn active_at(&self, now: DateTime<Utc>) -> impl Iterator<Item = &ConsentEvent> {
        self.consents.values().filter(move |c| c.is_active_at(now))
    }

    /// Whether `aggregator_id` holds any grant (some may have expired since: the check is for
    /// skipping work that would find nothing, never for letting data through).
    pub fn has_grants(&self, aggregator_id: &str) -> bool {
        self.grants_per_aggregator.contains_key(aggregator_id)
    }

    /// Accounts with at least one active grant.
    pub fn accounts_with_grants(&self) -> usize {
        self.by_account.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_sets() {
        let s = ScopeSet::of(&[Scope::Transactions, Scope::Statements]);
        assert!(s.contains(Scope::Transactions) && s.contains(Scope::Statements) && !s.contains(Scope::MerchantDetail));
        assert!(ScopeSet::of(&[Scope::Transactions]).is_subset_of(s));
        assert!(!ScopeSet::of(&[Scope::MerchantDetail]).is_subset_of(s));
    }

    #[test]
    fn a_grant_allows_only_its_scopes_window_and_lifetime() {
        let g = Grant {
            consent_id: Arc::from("c"),
            aggregator_id: Arc::from("a"),
            scopes: ScopeSet::of(&[Scope::Transactions]),
            data_from_micros: 100,
            expires_at_micros: 1_000,
        };
        assert!(g.allows(Scope::Transactions, 100, 999));
        assert!(!g.allows(Scope::Statements, 100, 999), "scope not granted");
        assert!(!g.allows(Scope::Transactions, 99, 999), "before the data window");
        assert!(!g.allows(Scope::Transactions, 500, 1_000), "expired");
    }

    #[test]
    fn a_grants_data_window_reaches_back_the_history_the_member_agreed_to() {
        let granted = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 6, 1, 0, 0, 0).single().unwrap_or_default();
        let until = granted + chrono::TimeDelta::days(90);
        let scopes = [Scope::Transactions];
        let mut event =
            cardlink_events::samples::active_consent("c-1", "iss-a", "agg-x", &["acct-1"], &scopes, granted, until);
        let mut view = ConsentView::new();
        view.apply(event.clone());
        assert_eq!(view.grants("iss-a/acct-1")[0].data_from_micros, granted.timestamp_micros(), "no history");
        event.history_days = 365;
        event.event_id = cardlink_events::EventId::random();
        let mut view = ConsentView::new();
        view.apply(event);
        let year_before = granted - chrono::TimeDelta::days(365);
        assert_eq!(view.grants("iss-a/acct-1")[0].data_from_micros, year_before.timestamp_micros());
    }
}
