//! Each member's access history: which aggregator received which kinds of data, and when.
//!
//! Materialised from the `subscription.deliver` tallies on the audit topic (see the subscription
//! service's `access` module). Entries are merged per day (Asia/Tokyo), consent and kind of data,
//! so a member sees "家計簿アプリ received transactions 12 times on 11/24, 09:12–18:40" rather
//! than thousands of rows; each member keeps the latest [`MAX_ENTRIES_PER_MEMBER`] entries.

use std::collections::{BTreeMap, HashMap};

use cardlink_bus::RecordRef;
use cardlink_events::{AuditEvent, RecordType};
use chrono::{DateTime, NaiveDate, Utc};

use crate::follow::Materialize;

/// Entries kept per member: about a year of daily entries for three kinds of data.
pub const MAX_ENTRIES_PER_MEMBER: usize = 1_100;
/// The audit action that records a provision of data.
pub const DELIVER_ACTION: &str = "subscription.deliver";

/// Deliveries of one kind of data under one consent on one day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessEntry {
    pub day: NaiveDate,
    pub aggregator_id: String,
    pub consent_id: String,
    /// A scope name: TRANSACTIONS, MERCHANT_DETAIL or STATEMENTS.
    pub data_item: String,
    pub count: i64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

type EntryKey = (NaiveDate, String, String);

#[derive(Debug, Default)]
pub struct AccessHistory {
    /// (issuer, member) → entries by (day, consent, data item).
    by_member: HashMap<(String, String), BTreeMap<EntryKey, AccessEntry>>,
}

/// The calendar day in Asia/Tokyo (UTC+9, no daylight saving).
fn tokyo_day(at: DateTime<Utc>) -> NaiveDate {
    (at + chrono::TimeDelta::hours(9)).date_naive()
}

impl AccessHistory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one audit record; anything but a delivery tally is ignored.
    pub fn apply(&mut self, event: &AuditEvent) {
        if event.action != DELIVER_ACTION {
            return;
        }
        let (Some(issuer), Some(member), Some(consent)) = (&event.issuer_id, &event.member_ref, &event.consent_id)
        else {
            return;
        };
        let aggregator = event.aggregator_id.clone().unwrap_or_default();
        let first_at = event.period_start.unwrap_or(event.occurred_at);
        let entries = self.by_member.entry((issuer.clone(), member.clone())).or_default();
        for item in &event.data_items {
            let key = (tokyo_day(event.occurred_at), consent.clone(), item.clone());
            entries
                .entry(key)
                .and_modify(|e| {
                    e.count += event.count;
                    e.first_at = e.first_at.min(first_at);
                    e.last_at = e.last_at.max(event.occurred_at);
                })
                .or_insert_with(|| AccessEntry {
                    day: tokyo_day(event.occurred_at),
                    aggregator_id: aggregator.clone(),
                    consent_id: consent.clone(),
                    data_item: item.clone(),
                    count: event.count,
                    first_at,
                    last_at: event.occurred_at,
                });
        }
        while entries.len() > MAX_ENTRIES_PER_MEMBER {
            entries.pop_first();
        }
    }

    /// A member's history, newest day first.
    pub fn of_member(&self, issuer_id: &str, member_ref: &str) -> Vec<AccessEntry> {
        self.by_member
            .get(&(issuer_id.to_owned(), member_ref.to_owned()))
            .map(|entries| entries.values().rev().cloned().collect())
            .unwrap_or_default()
    }
}

impl Materialize for AccessHistory {
    type Decoded = AuditEvent;

    fn decode(record: &RecordRef<'_>) -> Option<AuditEvent> {
        cardlink_events::decode_record(record.payload(), RecordType::AuditEvent).ok()
    }

    fn apply(&mut self, event: AuditEvent, _offset: i64) -> bool {
        AccessHistory::apply(self, &event);
        true
    }
}

#[cfg(test)]
mod tests {
    use cardlink_events::{ActorType, AuditOutcome};
    use chrono::TimeZone;

    use super::*;

    fn tally(consent: &str, item: &str, count: i64, at: DateTime<Utc>) -> AuditEvent {
        let mut e =
            AuditEvent::now(ActorType::Aggregator, "agg-x", DELIVER_ACTION, "consent/x", AuditOutcome::Succeeded);
        e.issuer_id = Some("iss-a".into());
        e.aggregator_id = Some("agg-x".into());
        e.member_ref = Some("m-1".into());
        e.consent_id = Some(consent.into());
        e.data_items = vec![item.into()];
        e.count = count;
        e.period_start = Some(at - chrono::TimeDelta::seconds(10));
        e.occurred_at = at;
        e
    }

    #[test]
    fn tallies_merge_per_tokyo_day_consent_and_kind() {
        let mut h = AccessHistory::new();
        // 2026-11-24 23:30 UTC is already the 25th in Tokyo.
        let day1 = Utc.with_ymd_and_hms(2026, 11, 24, 1, 0, 0).single().unwrap();
        let day2 = Utc.with_ymd_and_hms(2026, 11, 24, 23, 30, 0).single().unwrap();
        h.apply(&tally("c-1", "TRANSACTIONS", 3, day1));
        h.apply(&tally("c-1", "TRANSACTIONS", 4, day1 + chrono::TimeDelta::hours(2)));
        h.apply(&tally("c-1", "STATEMENTS", 1, day1));
        h.apply(&tally("c-1", "TRANSACTIONS", 5, day2));
        let mut other = tally("c-1", "TRANSACTIONS", 9, day1);
        other.action = "consent.revoke".into();
        h.apply(&other);

        let entries = h.of_member("iss-a", "m-1");
        let summary: Vec<_> = entries.iter().map(|e| (e.day.to_string(), e.data_item.as_str(), e.count)).collect();
        assert_eq!(
            summary,
            [
                ("2026-11-25".into(), "TRANSACTIONS", 5),
                ("2026-11-24".into(), "TRANSACTIONS", 7),
                ("2026-11-24".into(), "STATEMENTS", 1)
            ]
        );
        assert_eq!(entries[1].last_at, day1 + chrono::TimeDelta::hours(2));
        assert!(h.of_member("iss-a", "m-2").is_empty());
        assert!(h.of_member("iss-b", "m-1").is_empty());
    }

    #[test]
    fn a_member_keeps_only_the_latest_entries() {
        let mut h = AccessHistory::new();
        let start = Utc.with_ymd_and_hms(2024, 1, 1, 3, 0, 0).single().unwrap();
        for d in 0..(MAX_ENTRIES_PER_MEMBER as i64 + 10) {
            h.apply(&tally("c-1", "TRANSACTIONS", 1, start + chrono::TimeDelta::days(d)));
        }
        let entries = h.of_member("iss-a", "m-1");
        assert_eq!(entries.len(), MAX_ENTRIES_PER_MEMBER);
        assert_eq!(entries.last().unwrap().day, tokyo_day(start + chrono::TimeDelta::days(10)));
    }
}
