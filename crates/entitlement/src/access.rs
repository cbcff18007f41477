//! The access record: which aggregator received which kinds of data about which member, when.
//!
//! Every delivery handed to a stream is tallied per (consent, kind of data). Every
//! [`FLUSH_EVERY`], and when the service stops, the tallies go to the audit topic as
//! `subscription.deliver` records — one per consent and kind per period rather than one per
//! event, so the trail stays proportionate while naming what Japan's APPI asks of a provision to a
//! third party: recipient, member, data items, consent, and when. The consent service reads them
//! back into each member's access history.
//!
//! A flush that fails (the bus is unreachable) keeps its tallies for the next one: nothing is
//! dropped, and the map stays bounded by the number of live (consent, kind) pairs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cardlink_api::v1;
use cardlink_bus::{BusError, Producer};
use cardlink_events::registry::Scope;
use cardlink_events::{ActorType, AuditEvent, AuditOutcome};
use cardlink_views::consent::ConsentView;
use cardlink_views::follow::Followed;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};

/// How often the tallies are written to the audit topic.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);
/// Tallies held before a flush is started early.
pub const FLUSH_AT: usize = 10_000;
/// The audit action of a tally.
pub const ACTION: &str = "subscription.deliver";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tally {
    count: i64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.count += other.count;
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

/// Tallies per consent, one slot per kind of data ([`Scope`] order): a delivery finds its entry
/// by the consent id it already carries, without building a key.
type Tallies = HashMap<String, [Option<Tally>; 3]>;

fn slot(item: Scope) -> usize {
    match item {
        Scope::Transactions => 0,
        Scope::MerchantDetail => 1,
        Scope::Statements => 2,
    }
}

/// Every (consent, kind, tally) held.
fn entries(tallies: Tallies) -> impl Iterator<Item = (String, Scope, Tally)> {
    tallies.into_iter().flat_map(|(consent, slots)| {
        Scope::ALL.into_iter().zip(slots).filter_map(move |(item, t)| t.map(|t| (consent.clone(), item, t)))
    })
}

/// The audit records of `tallies`: one per consent and tally, naming every kind of data that has
/// that same tally — a transaction delivered with its merchant counts once for both kinds, so the
/// two make one record rather than two.
fn records(tallies: Tallies) -> impl Iterator<Item = (String, Vec<Scope>, Tally)> {
    tallies.into_iter().flat_map(|(consent, slots)| {
        let mut grouped: Vec<(Vec<Scope>, Tally)> = Vec::with_capacity(slots.len());
        for (item, tally) in Scope::ALL.into_iter().zip(slots) {
            let Some(tally) = tally else { continue };
            match grouped.iter_mut().find(|(_, t)| *t == tally) {
                Some((items, _)) => items.push(item),
                None => grouped.push((vec![item], tally)),
            }
        }
        grouped.into_iter().map(move |(items, tally)| (consent.clone(), items, tally))
    })
}

fn add(tallies: &mut Tallies, consent_id: String, item: Scope, tally: Tally) {
    merge_into(tallies.entry(consent_id).or_default(), item, tally);
}

fn merge_into(slots: &mut [Option<Tally>; 3], item: Scope, tally: Tally) {
    match &mut slots[slot(item)] {
        Some(t) => t.merge(tally),
        empty => *empty = Some(tally),
    }
}

/// Deliveries not yet written to the audit topic; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct AccessLog {
    tallies: Arc<Mutex<Tallies>>,
    full: Arc<Notify>,
}

/// The kinds of data a delivery carries.
fn data_items(delivery: &v1::Delivery) -> &'static [Scope] {
    match &delivery.event {
        Some(v1::delivery::Event::Transaction(t)) if t.merchant.is_some() => {
            &[Scope::Transactions, Scope::MerchantDetail]
        }
        Some(v1::delivery::Event::Transaction(_)) => &[Scope::Transactions],
        Some(v1::delivery::Event::Statement(_)) => &[Scope::Statements],
        // Consent notices tell the aggregator about its own consent: no member data.
        Some(v1::delivery::Event::ConsentChange(_)) | None => &[],
    }
}

impl AccessLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tallies> {
        self.tallies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes one delivery handed to a stream.
    pub fn record(&self, delivery: &v1::Delivery) {
        let items = data_items(delivery);
        if items.is_empty() {
            return;
        }
        let now = Utc::now();
        let one = Tally { count: 1, first: now, last: now };
        let mut tallies = self.lock();
        let slots = match tallies.get_mut(delivery.consent_id.as_str()) {
            Some(slots) => slots,
            None => tallies.entry(delivery.consent_id.clone()).or_default(),
        };
        for item in items {
            merge_into(slots, *item, one);
        }
        if tallies.len() >= FLUSH_AT {
            self.full.notify_one();
        }
    }

    fn take(&self) -> Tallies {
        std::mem::take(&mut *self.lock())
    }

    fn put_back(&self, unwritten: Tallies) {
        let mut tallies = self.lock();
        for (consent, item, tally) in entries(unwritten) {
            add(&mut tallies, consent, item, tally);
        }
    }

    /// Writes the tallies to the audit topic, [`FLUSH_CONCURRENCY`] records in flight at a
    /// time; what could not be written stays for the next time.
    pub async fn flush(&self, consents: &Followed<ConsentView>, producer: &Producer) -> Result<usize, BusError> {
        use futures::StreamExt as _;
        let writes = records(self.take()).map(|(consent_id, items, tally)| {
            let record = consents.read(|v| audit_record(v, &consent_id, &items, tally));
            async move {
                let written = producer.publish_audit(&record).await;
                (consent_id, items, tally, written)
            }
        });
        let results: Vec<_> = futures::stream::iter(writes).buffer_unordered(FLUSH_CONCURRENCY).collect().await;
        let mut unwritten = Tallies::new();
        let mut written = 0;
        let mut failure = None;
        for (consent_id, items, tally, result) in results {
            match result {
                Ok(_) => written += 1,
                Err(e) => {
                    for item in items {
                        add(&mut unwritten, consent_id.clone(), item, tally);
                    }
                    failure = Some(e);
                }
            }
        }
        self.put_back(unwritten);
        failure.map_or(Ok(written), Err)
    }
}

/// Audit records a flush has in flight at once: each waits for the broker's acknowledgement, and
/// one at a time would take longer than [`FLUSH_EVERY`] once many consents are in use.
pub const FLUSH_CONCURRENCY: usize = 256;

fn audit_record(view: &ConsentView, consent_id: &str, items: &[Scope], tally: Tally) -> AuditEvent {
    let consent = view.consent(consent_id);
    let aggregator = consent.map_or("", |c| c.aggregator_id());
    let mut record = AuditEvent::now(
        ActorType::Aggregator,
        aggregator,
        ACTION,
        &format!("consent/{consent_id}"),
        AuditOutcome::Succeeded,
    );
    record.occurred_at = tally.last;
    record.period_start = Some(tally.first);
    record.count = tally.count;
    record.consent_id = Some(consent_id.to_owned());
    record.data_items = items.iter().map(|item| item.as_str().to_owned()).collect();
    if let Some(c) = consent {
        record.issuer_id = Some(c.issuer_id().to_owned());
        record.aggregator_id = Some(c.aggregator_id().to_owned());
        record.member_ref = c.member_ref().map(str::to_owned);
    }
    record
}

/// Flushes every [`FLUSH_EVERY`] (sooner when the log fills) and once more when `stop` turns true.
pub async fn run_flusher(
    log: AccessLog,
    consents: Followed<ConsentView>,
    producer: Producer,
    mut stop: watch::Receiver<bool>,
) -> Result<(), BusError> {
    loop {
        let stopping = tokio::select! {
            _ = stop.wait_for(|s| *s) => true,
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
            _ = log.full.notified() => false,
        };
        match log.flush(&consents, &producer).await {
            Ok(_) => {}
            Err(e) if stopping => return Err(e),
            Err(e) => tracing::warn!(error = %e, "access records not written yet; retrying at the next flush"),
        }
        if stopping {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(consent: &str, merchant: bool) -> v1::Delivery {
        let transaction = v1::CardTransaction { merchant: merchant.then(v1::Merchant::default), ..Default::default() };
        v1::Delivery {
            event: Some(v1::delivery::Event::Transaction(transaction)),
            consent_id: consent.to_owned(),
            published_at: None,
            version: 0,
            from_history: false,
        }
    }

    #[test]
    fn deliveries_are_tallied_per_consent_and_kind_of_data() {
        let log = AccessLog::default();
        log.record(&delivery("c-1", true));
        log.record(&delivery("c-1", false));
        log.record(&delivery("c-2", false));
        let statement = v1::Delivery {
            event: Some(v1::delivery::Event::Statement(v1::Statement::default())),
            consent_id: "c-2".into(),
            published_at: None,
            version: 0,
            from_history: false,
        };
        log.record(&statement);
        let notice = v1::Delivery {
            event: Some(v1::delivery::Event::ConsentChange(v1::ConsentChange::default())),
            consent_id: "c-2".into(),
            published_at: None,
            version: 0,
            from_history: false,
        };
        log.record(&notice);
        let tallies: Vec<_> = entries(log.take()).collect();
        let count = |c: &str, s: Scope| tallies.iter().find(|(id, i, _)| id == c && *i == s).map(|(_, _, t)| t.count);
        assert_eq!(count("c-1", Scope::Transactions), Some(2));
        assert_eq!(count("c-1", Scope::MerchantDetail), Some(1));
        assert_eq!(count("c-2", Scope::Transactions), Some(1));
        assert_eq!(count("c-2", Scope::Statements), Some(1));
        assert_eq!(tallies.len(), 4, "consent notices carry no member data");
        assert!(log.take().is_empty());
    }

    #[test]
    fn kinds_of_data_delivered_together_make_one_record() {
        let log = AccessLog::default();
        log.record(&delivery("c-1", true));
        log.record(&delivery("c-1", true));
        log.record(&delivery("c-2", true));
        log.record(&delivery("c-2", false));
        let mut records: Vec<_> = records(log.take()).map(|(c, items, t)| (c, items, t.count)).collect();
        records.sort_by_key(|(c, items, _)| (c.clone(), format!("{items:?}")));
        assert_eq!(
            records,
            [
                ("c-1".to_owned(), vec![Scope::Transactions, Scope::MerchantDetail], 2),
                ("c-2".to_owned(), vec![Scope::MerchantDetail], 1),
                ("c-2".to_owned(), vec![Scope::Transactions], 2),
            ]
        );
    }

    #[test]
    fn tallies_put_back_after_a_failed_write_merge_with_new_ones() {
        let log = AccessLog::default();
        log.record(&delivery("c-1", false));
        let unwritten = log.take();
        log.record(&delivery("c-1", false));
        log.put_back(unwritten);
        let tallies = log.take();
        let t = tallies["c-1"][slot(Scope::Transactions)].unwrap();
        assert_eq!(t.count, 2);
        assert!(t.first <= t.last);
    }

    #[test]
    fn an_audit_record_names_recipient_member_items_and_consent() {
        let mut view = ConsentView::new();
        let granted = Utc::now() - chrono::TimeDelta::days(1);
        view.apply(cardlink_events::samples::active_consent(
            "c-1",
            "iss-a",
            "agg-x",
            &["acct-1"],
            &[Scope::Transactions],
            granted,
            Utc::now() + chrono::TimeDelta::days(30),
        ));
        let now = Utc::now();
        let r = audit_record(&view, "c-1", &[Scope::Transactions], Tally { count: 7, first: granted, last: now });
        assert_eq!(r.action, ACTION);
        assert_eq!(
            (r.aggregator_id.as_deref(), r.issuer_id.as_deref(), r.member_ref.as_deref()),
            (Some("agg-x"), Some("iss-a"), Some("m-001"))
        );
        assert_eq!((r.count, r.period_start, r.occurred_at), (7, Some(granted), now));
        assert_eq!(r.data_items, ["TRANSACTIONS"]);
    }
}
