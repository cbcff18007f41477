//! Idempotency: one (issuer id, event id) is written to the bus at most once within the window.
//!
//! The index lives in memory and is rebuilt from the bus itself: at start, a follower reads the
//! event topics from `now - window` (by timestamp) and keeps tailing them, so every replica of
//! the ingest service also learns what the others published. The service reports ready only
//! once the follower has caught up with the end of the topics as they were at start, so a
//! restarted replica never accepts a retry of something already on the bus.
//!
//! Ids are kept per issuer, so one issuer's ids can never mark another's as duplicates.
//! A claim in progress is `InFlight`: a concurrent call with the same id is told to retry rather
//! than told "duplicate" for a record whose publish might still fail; a call settles all its
//! claims under one lock once Kafka has answered for every record.
//!
//! Memory: about 40 bytes per remembered event (a 16-byte id, a 4-byte hour, hash-table
//! overhead); see `docs/issuers.md` for sizing. Retries are exactly-once only within the
//! window (default 7 days); events are delivered at-least-once downstream, so consumers
//! de-duplicate on `event_id` as well.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cardlink_bus::{BusError, Consumer, RecordRef, StartAt, Topic};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

/// Default idempotency window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often expired ids are dropped.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// The outcome of claiming an id for publishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not seen: the caller publishes it, then calls `commit` or `release`.
    New,
    /// Already on the bus.
    Duplicate,
    /// Another call is publishing it right now.
    InFlight,
}

#[derive(Debug, Default)]
struct IssuerIds {
    /// Event id -> hour (since the epoch) it was published.
    seen: HashMap<Uuid, u32>,
    in_flight: HashSet<Uuid>,
}

/// The in-memory idempotency index.
#[derive(Debug)]
pub struct DedupIndex {
    issuers: Mutex<HashMap<String, IssuerIds>>,
    window: Duration,
}

fn hour(at: DateTime<Utc>) -> u32 {
    u32::try_from(at.timestamp().max(0) / 3600).unwrap_or(u32::MAX)
}

impl DedupIndex {
    pub fn new(window: Duration) -> Self {
        Self { issuers: Mutex::new(HashMap::new()), window }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, IssuerIds>) -> T) -> T {
        // A panic while holding the lock cannot leave the maps inconsistent (every update is a
        // single insert or remove), so a poisoned lock is still usable.
        let mut guard = self.issuers.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    pub fn claim(&self, issuer: &str, id: Uuid) -> Claim {
        self.with(|issuers| {
            let ids = issuers.entry(issuer.to_owned()).or_default();
            if ids.seen.contains_key(&id) {
                Claim::Duplicate
            } else if !ids.in_flight.insert(id) {
                Claim::InFlight
            } else {
                Claim::New
            }
        })
    }

    /// Settles a call's claims at once: each id published (`true`, committed at `at`) or not
    /// (released, so a later call may try again).
    pub fn settle(&self, issuer: &str, ids: impl IntoIterator<Item = (Uuid, bool)>, at: DateTime<Utc>) {
        let at = hour(at);
        self.with(|issuers| {
            let ids_of = issuers.entry(issuer.to_owned()).or_default();
            for (id, published) in ids {
                ids_of.in_flight.remove(&id);
                if published {
                    ids_of.seen.insert(id, at);
                }
            }
        });
    }

    /// An id seen on the bus (by the follower).
    pub fn observe(&self, issuer: &str, id: Uuid, at: DateTime<Utc>) {
        self.with(|issuers| {
            // Most records are of issuers already known: no key to allocate for them.
            if let Some(ids) = issuers.get_mut(issuer) {
                ids.seen.entry(id).or_insert_with(|| hour(at));
                return;
            }
            issuers.entry(issuer.to_owned()).or_default().seen.insert(id, hour(at));
        });
    }

    /// Drops ids older than the window.
    pub fn sweep(&self, now: DateTime<Utc>) -> usize {
        let window_hours = u32::try_from(self.window.as_secs().div_ceil(3600)).unwrap_or(u32::MAX);
        let oldest = hour(now).saturating_sub(window_hours);
        self.with(|issuers| {
            let mut dropped = 0;
            for ids in issuers.values_mut() {
                let before = ids.seen.len();
                ids.seen.retain(|_, h| *h >= oldest);
                dropped += before - ids.seen.len();
            }
            issuers.retain(|_, ids| !ids.seen.is_empty() || !ids.in_flight.is_empty());
            dropped
        })
    }

    pub fn len(&self) -> usize {
        self.with(|issuers| issuers.values().map(|ids| ids.seen.len()).sum())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The (issuer, event id) of a record on an event topic, from its key and headers.
fn identify<'a>(record: &'a RecordRef<'_>) -> Option<(&'a str, Uuid)> {
    let id = Uuid::parse_str(record.header(cardlink_bus::headers::EVENT_ID)?).ok()?;
    Some((record.issuer_id()?, id))
}

/// Reads the event topics from `now - window` into `index` and keeps following them. Sends
/// `true` on `caught_up` once the topics' ends as of the start have been read. Runs until
/// `shutdown` changes or the bus fails.
pub async fn follow(
    index: Arc<DedupIndex>,
    consumer: Consumer,
    caught_up: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let since = Utc::now() - chrono::TimeDelta::from_std(index.window()).unwrap_or(chrono::TimeDelta::MAX);
    let mut positions = Vec::new();
    // Per (topic, partition): the offset we must reach to be caught up.
    let mut pending: HashMap<(Topic, i32), i64> = HashMap::new();
    for topic in [Topic::Transactions, Topic::Statements] {
        for (partition, start) in consumer.offsets_for_time(topic, since.timestamp_millis()).await? {
            let (_, end) = consumer.watermarks(topic, partition).await?;
            if end > start {
                pending.insert((topic, partition), end);
            }
            positions.push((topic, partition, StartAt::Offset(start)));
        }
    }
    consumer.assign(&positions)?;
    if pending.is_empty() {
        caught_up.send_replace(true);
    }
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = sweep.tick() => {
                let dropped = index.sweep(Utc::now());
                tracing::debug!(dropped, remembered = index.len(), "idempotency index swept");
            }
            record = consumer.recv_ref_retrying("idempotency index") => {
                let record = record?;
                let at = record.timestamp_ms().and_then(DateTime::from_timestamp_millis).unwrap_or_else(Utc::now);
                match identify(&record) {
                    Some((issuer, id)) => index.observe(issuer, id, at),
                    None => tracing::warn!(topic = ?record.topic(), partition = record.partition(), offset = record.offset(),
                        "event record without key or event-id header; not indexed for idempotency"),
                }
                let (topic, partition) = (record.topic(), record.partition());
                if let Some(end) = pending.get(&(topic, partition))
                    && record.offset() + 1 >= *end
                {
                    pending.remove(&(topic, partition));
                    if pending.is_empty() {
                        tracing::info!(remembered = index.len(), "idempotency index caught up with the bus");
                        caught_up.send_replace(true);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn claim_commit_then_duplicate() {
        let index = DedupIndex::new(DEFAULT_WINDOW);
        assert_eq!(index.claim("a", id(1)), Claim::New);
        assert_eq!(index.claim("a", id(1)), Claim::InFlight);
        index.settle("a", [(id(1), true)], Utc::now());
        assert_eq!(index.claim("a", id(1)), Claim::Duplicate);
    }

    #[test]
    fn release_lets_a_retry_through() {
        let index = DedupIndex::new(DEFAULT_WINDOW);
        assert_eq!(index.claim("a", id(1)), Claim::New);
        index.settle("a", [(id(1), false)], Utc::now());
        assert_eq!(index.claim("a", id(1)), Claim::New);
    }

    #[test]
    fn issuers_do_not_share_ids() {
        let index = DedupIndex::new(DEFAULT_WINDOW);
        index.observe("a", id(7), Utc::now());
        assert_eq!(index.claim("b", id(7)), Claim::New);
        assert_eq!(index.claim("a", id(7)), Claim::Duplicate);
    }

    #[test]
    fn sweep_forgets_only_what_left_the_window() {
        let index = DedupIndex::new(Duration::from_secs(24 * 3600));
        let now = Utc::now();
        index.observe("a", id(1), now - chrono::TimeDelta::hours(30));
        index.observe("a", id(2), now - chrono::TimeDelta::hours(2));
        assert_eq!(index.sweep(now), 1);
        assert_eq!(index.claim("a", id(1)), Claim::New);
        assert_eq!(index.claim("a", id(2)), Claim::Duplicate);
    }
}
