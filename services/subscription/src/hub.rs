//! The hub: one shared read of the bus, many subscription streams.
//!
//! One reader per process tails the event topics. For each record it decodes the event once,
//! looks up the consent view once (by the record's key, `issuer_id/account_ref`), and hands a
//! projected delivery to each stream of each entitled aggregator — so the work per event grows
//! with the entitled streams, not with the connected ones.
//!
//! Each stream has a bounded queue ([`STREAM_BUFFER`]). A stream whose queue is full is ended
//! with [`Outgoing::FellBehind`]: the client resumes from the last cursor it received and loses
//! nothing, and no slow client ever holds up the reader or the other streams.
//!
//! A stream that starts from a cursor first registers (so live events from that moment are
//! queued), notes the hub's position at registration, and reads the gap between its cursor and
//! that position with its own short-lived reader; then it drains the queued live events. Every
//! event is delivered once per stream in partition order, with no gap at the hand-over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use cardlink_api::v1;
use cardlink_bus::{BusError, Consumer, Record, StartAt, Topic};
use cardlink_events::Event;
use cardlink_views::consent::ConsentView;
use cardlink_views::follow::Followed;
use chrono::Utc;
use tokio::sync::{mpsc, watch};

use crate::cursor::{Cursor, Stream as CursorStream};
use crate::metrics::Origin;
use crate::projection::project_for;

/// Deliveries queued per stream before it counts as fallen behind.
pub const STREAM_BUFFER: usize = 1024;

/// What a stream receives.
#[derive(Debug)]
pub enum Outgoing {
    /// One delivery, the cursor just after it, and where its record came from (none for
    /// consent changes). Boxed: a queue allocates its slots in blocks up front, and an idle
    /// stream should not hold a block of full-size deliveries (680 bytes each, 48 boxed).
    Delivery { delivery: Box<v1::Delivery>, cursor: String, origin: Option<Arc<Origin>> },
    /// The stream's queue overflowed; resume from the last cursor.
    FellBehind,
}

/// Which events a stream wants.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub transactions: bool,
    pub statements: bool,
    /// Consent changes (granted, revoked, expired) of the aggregator's consents.
    pub consents: bool,
    /// Empty: every issuer.
    pub issuers: Vec<String>,
}

impl Filters {
    pub fn all() -> Self {
        Self { transactions: true, statements: true, consents: true, issuers: Vec::new() }
    }

    fn wants(&self, event: &Event) -> bool {
        let kind = match event {
            Event::Transaction(_) => self.transactions,
            Event::Statement(_) => self.statements,
        };
        kind && (self.issuers.is_empty() || self.issuers.iter().any(|i| i == event.issuer_id()))
    }
}

fn cursor_stream(topic: Topic) -> Option<CursorStream> {
    match topic {
        Topic::Transactions => Some(CursorStream::Transactions),
        Topic::Statements => Some(CursorStream::Statements),
        _ => None,
    }
}

struct Slot {
    id: u64,
    filters: Filters,
    tx: mpsc::Sender<Outgoing>,
    /// The stream's position when it registered (its start, moved up to the hub's position
    /// then). From there on the hub passes the stream every record it reads, so the stream's
    /// current position is this merged with the hub's: computed when a cursor is handed out,
    /// not kept up to date per record — a record costs nothing for streams it is not for.
    base: Cursor,
}

impl Slot {
    /// The stream's position now: past every record the hub has read.
    fn cursor(&self, hub_position: &HashMap<(Topic, i32), i64>) -> Cursor {
        let mut cursor = self.base.clone();
        advance_to(&mut cursor, hub_position);
        cursor
    }
}

/// Moves `cursor` past everything before `position` (next offsets per partition).
fn advance_to(cursor: &mut Cursor, position: &HashMap<(Topic, i32), i64>) {
    for ((topic, partition), next) in position {
        if let Some(stream) = cursor_stream(*topic)
            && *next > 0
        {
            cursor.advance(stream, *partition, next - 1);
        }
    }
}

#[derive(Default)]
struct Shared {
    by_aggregator: HashMap<String, Vec<Slot>>,
    /// Next offset per (topic, partition) of the hub's reader.
    position: HashMap<(Topic, i32), i64>,
    /// Event records read per issuer since the process started (the live view).
    events_in: HashMap<String, u64>,
}

impl Shared {
    /// Removes a stream whose queue overflowed; it learns it fell behind once it drains.
    fn drop_fallen(&mut self, aggregator_id: &str, id: u64) {
        let Some(slots) = self.by_aggregator.get_mut(aggregator_id) else { return };
        if let Some(i) = slots.iter().position(|s| s.id == id) {
            let tx = slots.swap_remove(i).tx;
            tokio::spawn(async move {
                let _ = tx.send(Outgoing::FellBehind).await;
            });
        }
    }
}

/// The shared reader's state; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<RwLock<Shared>>,
    consents: Followed<ConsentView>,
    secret: Arc<[u8]>,
    next_id: Arc<AtomicU64>,
    /// Set when the shared reader has stopped for good (an error retrying cannot fix): no
    /// stream would get anything more, so the replica is no longer ready.
    reader_stopped: Arc<AtomicBool>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// A registered stream: its queue, and where the hub was when it registered.
#[derive(Debug)]
pub struct Registration {
    pub id: u64,
    pub rx: mpsc::Receiver<Outgoing>,
    /// Next offset per (topic, partition) the hub will hand this stream live.
    pub live_from: HashMap<(Topic, i32), i64>,
}

impl Hub {
    /// `secret` keys both the account pseudonyms and the cursors.
    pub fn new(consents: Followed<ConsentView>, secret: Arc<[u8]>) -> Self {
        Self {
            shared: Arc::default(),
            consents,
            secret,
            next_id: Arc::new(AtomicU64::new(1)),
            reader_stopped: Arc::default(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Shared> {
        self.shared.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a stream for `aggregator_id`. Live events from this moment are queued for it; the
    /// caller delivers what lies between `start` and `live_from` first (see [`catch_up`]).
    pub fn register(&self, aggregator_id: &str, filters: Filters, start: &Cursor) -> Registration {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut shared = self.write();
        let live_from = shared.position.clone();
        // Live deliveries are forwarded only after the catch-up, so their cursors may already
        // cover everything before `live_from`.
        let mut base = start.clone();
        advance_to(&mut base, &live_from);
        shared.by_aggregator.entry(aggregator_id.to_owned()).or_default().push(Slot { id, filters, tx, base });
        Registration { id, rx, live_from }
    }

    pub fn unregister(&self, aggregator_id: &str, id: u64) {
        let mut shared = self.write();
        if let Some(slots) = shared.by_aggregator.get_mut(aggregator_id) {
            slots.retain(|s| s.id != id);
            if slots.is_empty() {
                shared.by_aggregator.remove(aggregator_id);
            }
        }
    }

    /// Waits until the consent view reflects every change written up to [`REVOCATION_BOUND`]
    /// ago. Normally immediate; while the view lags (its follower is slow or cut off from the
    /// bus), deliveries pause rather than go out on stale consents.
    pub async fn wait_until_fresh(&self, shutdown: &mut watch::Receiver<bool>) {
        let mut warned = false;
        loop {
            let fresh = self.consents.watermark.borrow().fresh_as_of;
            if fresh.is_some_and(|at| at.elapsed() <= REVOCATION_BOUND) {
                return;
            }
            if !warned {
                tracing::warn!("consent view is behind the revocation bound; deliveries paused");
                warned = true;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
            }
        }
    }

    /// Whether the shared reader stopped with an error: the service serves nothing more.
    pub fn reader_stopped(&self) -> bool {
        self.reader_stopped.load(Ordering::Relaxed)
    }

    /// Whether the shared reader has positioned itself on the event topics.
    pub fn is_reading(&self) -> bool {
        !self.shared.read().unwrap_or_else(PoisonError::into_inner).position.is_empty()
    }

    /// Connected streams of one aggregator.
    pub fn streams_of(&self, aggregator_id: &str) -> usize {
        self.shared.read().unwrap_or_else(PoisonError::into_inner).by_aggregator.get(aggregator_id).map_or(0, Vec::len)
    }

    /// Connected streams per aggregator.
    pub fn streams_per_aggregator(&self) -> Vec<(String, usize)> {
        let shared = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        shared.by_aggregator.iter().filter(|(_, s)| !s.is_empty()).map(|(a, s)| (a.clone(), s.len())).collect()
    }

    /// Event records read per issuer since the process started.
    pub fn events_in(&self) -> Vec<(String, u64)> {
        let shared = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = shared.events_in.iter().map(|(k, v)| (k.clone(), *v)).collect();
        out.sort();
        out
    }

    /// Connected streams.
    pub fn streams(&self) -> usize {
        self.shared.read().unwrap_or_else(PoisonError::into_inner).by_aggregator.values().map(Vec::len).sum()
    }

    /// Hands one record to every entitled stream. Called by the reader, in partition order.
    pub fn dispatch(&self, record: &Record) {
        if cursor_stream(record.topic).is_none() {
            return;
        }
        // The record's key names its account: the consent view says who may have it before
        // anything is decoded, so a record for nobody costs a lookup, not a decode.
        let key = record.key_str().unwrap_or_default();
        let grants = self.consents.read(|v| v.grants(key).to_vec());
        let now = Utc::now();
        // Made on the first delivery only: most records of a busy bus go to nobody.
        let mut origin: Option<Arc<Origin>> = None;
        let mut shared = self.write();
        let Shared { by_aggregator, position, events_in } = &mut *shared;
        position.insert((record.topic, record.partition), record.offset + 1);
        if let Some(issuer) = record.issuer_id() {
            match events_in.get_mut(issuer) {
                Some(n) => *n += 1,
                None => {
                    events_in.insert(issuer.to_owned(), 1);
                }
            }
        }
        // Decided under the lock that registration takes, so a stream registering now either
        // sees this record live or in its catch-up, never neither.
        if !grants.iter().any(|g| by_aggregator.contains_key(&*g.aggregator_id)) {
            return;
        }
        let Ok(event) = &cardlink_events::decode(&record.payload) else { return };
        // Only the aggregators the account's grants name are visited: the work per record grows
        // with its entitled streams, not with the connected ones.
        let mut fallen = Vec::new();
        for (i, grant) in grants.iter().enumerate() {
            let aggregator = &*grant.aggregator_id;
            if grants[..i].iter().any(|g| &*g.aggregator_id == aggregator) {
                continue; // this aggregator was served by its first grant
            }
            let Some(slots) = by_aggregator.get_mut(aggregator) else { continue };
            // One projection per entitled aggregator (its first grant that covers the event),
            // shared by all of its streams.
            let Some(mut delivery) = project_for(event, &grants[i..], aggregator, &self.secret, now) else {
                continue;
            };
            delivery.published_at = published_at(record);
            for slot in slots.iter_mut() {
                if !slot.filters.wants(event) {
                    continue;
                }
                let origin = Arc::clone(origin.get_or_insert_with(|| Arc::new(origin_of(record))));
                let out = Outgoing::Delivery {
                    delivery: Box::new(delivery.clone()),
                    cursor: slot.cursor(position).encode(&self.secret),
                    origin: Some(origin),
                };
                if slot.tx.try_send(out).is_err() {
                    fallen.push((aggregator.to_owned(), slot.id));
                }
            }
        }
        for (aggregator, id) in fallen {
            shared.drop_fallen(&aggregator, id);
        }
    }

    /// Tells the aggregator's streams that one of its consents changed. Consent changes are live
    /// notices (not covered by cursors); `ConsentService.ListConsents` is the state to resume from.
    pub fn notify_consent(&self, consent: &cardlink_events::consent::ConsentEvent) {
        if consent.status == cardlink_events::consent::ConsentStatus::Requested {
            return;
        }
        let mut shared = self.write();
        let Shared { by_aggregator, position, .. } = &mut *shared;
        let Some(slots) = by_aggregator.get(&consent.aggregator_id) else { return };
        let message = cardlink_consent::grpc::consent_message(consent, Some(&self.secret));
        let delivery = v1::Delivery {
            event: Some(v1::delivery::Event::ConsentChange(v1::ConsentChange { consent: Some(message) })),
            consent_id: consent.consent_id.clone(),
            published_at: None,
        };
        let mut fallen = Vec::new();
        for slot in slots.iter().filter(|s| s.filters.consents) {
            let out = Outgoing::Delivery {
                delivery: Box::new(delivery.clone()),
                cursor: slot.cursor(position).encode(&self.secret),
                origin: None,
            };
            if slot.tx.try_send(out).is_err() {
                fallen.push(slot.id);
            }
        }
        for id in fallen {
            shared.drop_fallen(&consent.aggregator_id, id);
        }
    }

    /// The current cursor of a registered stream (for heartbeats).
    pub fn cursor(&self, aggregator_id: &str, id: u64) -> Option<String> {
        let shared = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        let slot = shared.by_aggregator.get(aggregator_id)?.iter().find(|s| s.id == id)?;
        Some(slot.cursor(&shared.position).encode(&self.secret))
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    pub fn consents(&self) -> &Followed<ConsentView> {
        &self.consents
    }
}

/// When the record was published (its Kafka timestamp), for `Delivery.published_at`.
fn published_at(record: &Record) -> Option<prost_types::Timestamp> {
    record.timestamp_ms.and_then(chrono::DateTime::from_timestamp_millis).map(cardlink_api::convert::timestamp)
}

/// Where `record` came from, for its delivery span and latency.
fn origin_of(record: &Record) -> Origin {
    Origin {
        parent: cardlink_telemetry::propagation::from_traceparent(record.headers.traceparent.as_deref()),
        published_ms: record.timestamp_ms,
        topic: record.topic,
        partition: record.partition,
        offset: record.offset,
    }
}

/// The shared reader: tails the event topics from their ends and dispatches every record. An
/// error it returns marks the hub as stopped ([`Hub::reader_stopped`]), which readiness reports.
pub async fn run_reader(hub: Hub, consumer: Consumer, shutdown: watch::Receiver<bool>) -> Result<(), BusError> {
    let read = read_and_dispatch(&hub, consumer, shutdown).await;
    if read.is_err() {
        hub.reader_stopped.store(true, Ordering::Relaxed);
    }
    read
}

async fn read_and_dispatch(hub: &Hub, consumer: Consumer, mut shutdown: watch::Receiver<bool>) -> Result<(), BusError> {
    let mut positions = Vec::new();
    for topic in [Topic::Transactions, Topic::Statements] {
        let partitions = consumer.partition_count(topic).await?;
        for p in 0..partitions {
            let (_, end) = consumer.watermarks(topic, p).await?;
            hub.write().position.insert((topic, p), end);
            positions.push((topic, p, StartAt::Offset(end)));
        }
    }
    consumer.assign(&positions)?;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            record = consumer.recv_retrying("hub reader") => {
                let record = record?;
                hub.wait_until_fresh(&mut shutdown).await;
                hub.dispatch(&record);
            }
        }
    }
}

/// The revocation bound: no event is handed to a stream on a consent view older than this.
/// Once `RevokeConsent` has returned, no replica delivers under that consent later than this
/// after (plus the time to put one message on the wire).
pub const REVOCATION_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error(
        "the cursor points before what the bus still retains ({topic:?} partition {partition}: {wanted} < {oldest}); start again from the earliest retained events"
    )]
    OutOfRange { topic: Topic, partition: i32, wanted: i64, oldest: i64 },
    #[error(
        "the cursor points past the end of {topic:?} partition {partition} (which ends at {end}): the topic was recreated or the cursor belongs to another deployment; start again from the earliest retained events"
    )]
    AheadOfBus { topic: Topic, partition: i32, end: i64 },
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("the stream was closed")]
    Closed,
}

/// Why a cursor's offset cannot be resumed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Retention already deleted the events after the cursor.
    BeforeOldest,
    /// The partition ends before the cursor: the topic was recreated, or the cursor is from
    /// another cluster. Waiting for offsets to grow back would silently skip events.
    AfterEnd,
}

/// The offset to resume a partition from, given the cursor's next offset (`None`: the cursor
/// never saw the partition) and the partition's retained range `low..high`.
pub fn resume_offset(next: Option<i64>, low: i64, high: i64) -> Result<i64, Bound> {
    match next {
        // A partition the cursor never saw: from the start of what is retained.
        None => Ok(low),
        Some(next) if next < low => Err(Bound::BeforeOldest),
        Some(next) if next > high => Err(Bound::AfterEnd),
        Some(next) => Ok(next),
    }
}

/// How long a cursor ahead of a partition's reported end is given to become valid.
pub const AHEAD_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Where a stream starts.
#[derive(Clone, Debug)]
pub enum Start {
    /// Only events from now on.
    Live,
    /// Everything still retained that the aggregator's consents cover.
    Earliest,
    /// Right after this cursor.
    After(Cursor),
}

/// Delivers, on `tx`, the entitled events between the stream's start and the hub position
/// `until` (exclusive), reading with `consumer` (the stream's own, short-lived reader).
pub async fn catch_up(
    hub: &Hub,
    consumer: &Consumer,
    aggregator_id: &str,
    filters: &Filters,
    start: &Start,
    until: &HashMap<(Topic, i32), i64>,
    tx: &mpsc::Sender<Outgoing>,
) -> Result<(), CatchUpError> {
    let mut cursor = match start {
        Start::After(c) => c.clone(),
        _ => Cursor::new(aggregator_id),
    };
    let mut assignment = Vec::new();
    let mut remaining: HashMap<(Topic, i32), i64> = HashMap::new();
    for (&(topic, partition), &end) in until {
        let Some(stream) = cursor_stream(topic) else { continue };
        let (low, reported_end) = consumer.watermarks(topic, partition).await?;
        // The partition's end is at least what this process's shared reader has already read:
        // a reported end can trail it (a new leader, a lagging replica, a broker's stale answer).
        let mut high = reported_end.max(end);
        if let Start::After(c) = start {
            // Still ahead: give the bus a moment before calling the cursor impossible.
            let deadline = tokio::time::Instant::now() + AHEAD_GRACE;
            while c.next(stream, partition).is_some_and(|next| next > high) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                high = high.max(consumer.watermarks(topic, partition).await?.1);
            }
        }
        let from = match start {
            Start::Live => continue,
            Start::Earliest => low,
            Start::After(c) => {
                let next = c.next(stream, partition);
                resume_offset(next, low, high).map_err(|bound| match bound {
                    Bound::BeforeOldest => {
                        CatchUpError::OutOfRange { topic, partition, wanted: next.unwrap_or(low), oldest: low }
                    }
                    Bound::AfterEnd => CatchUpError::AheadOfBus { topic, partition, end: high },
                })?
            }
        };
        if from < end {
            assignment.push((topic, partition, StartAt::Offset(from)));
            remaining.insert((topic, partition), end);
        }
    }
    if remaining.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    while !remaining.is_empty() {
        let record = consumer.recv().await?;
        let key = (record.topic, record.partition);
        let Some(&end) = remaining.get(&key) else { continue };
        if record.offset >= end {
            remaining.remove(&key);
            continue;
        }
        if let Some(stream) = cursor_stream(record.topic) {
            cursor.advance(stream, record.partition, record.offset);
        }
        if record.offset + 1 >= end {
            remaining.remove(&key);
        }
        let Ok(event) = cardlink_events::decode(&record.payload) else { continue };
        if !filters.wants(&event) {
            continue;
        }
        let record_key = record.key_str().unwrap_or_default();
        let now = Utc::now();
        let delivery =
            hub.consents.read(|v| project_for(&event, v.grants(record_key), aggregator_id, &hub.secret, now));
        if let Some(mut delivery) = delivery {
            delivery.published_at = published_at(&record);
            let out = Outgoing::Delivery {
                delivery: Box::new(delivery),
                cursor: cursor.encode(&hub.secret),
                origin: Some(Arc::new(origin_of(&record))),
            };
            tx.send(out).await.map_err(|_| CatchUpError::Closed)?;
        }
    }
    Ok(())
}

/// Positions `consumer` at the current end of the consent topic, by explicit offsets (so nothing
/// written after this returns is missed); then [`run_consent_notifier`] follows from there.
pub async fn position_consent_notifier(consumer: &Consumer) -> Result<(), BusError> {
    let partitions = consumer.partition_count(Topic::Consents).await?;
    let mut positions = Vec::new();
    for p in 0..partitions {
        let (_, end) = consumer.watermarks(Topic::Consents, p).await?;
        positions.push((Topic::Consents, p, StartAt::Offset(end)));
    }
    consumer.assign(&positions)
}

/// Tells streams about their consents' changes, following the consent topic.
pub async fn run_consent_notifier(
    hub: Hub,
    consumer: Consumer,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            record = consumer.recv_retrying("consent notices") => {
                let record = record?;
                match cardlink_events::decode_record(&record.payload, cardlink_events::RecordType::ConsentEvent) {
                    Ok(consent) => hub.notify_consent(&consent),
                    Err(e) => tracing::warn!(error = %e, offset = record.offset, "consent record not understood; no notice sent"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn a_cursor_resumes_exactly_where_it_points_or_is_refused(
            low in 0i64..1_000,
            len in 0i64..1_000,
            next in proptest::option::of(-10i64..2_100),
        ) {
            let high = low + len;
            match (next, resume_offset(next, low, high)) {
                (None, Ok(from)) => prop_assert_eq!(from, low),
                (Some(n), Ok(from)) => prop_assert!(from == n && (low..=high).contains(&n)),
                (Some(n), Err(Bound::BeforeOldest)) => prop_assert!(n < low),
                (Some(n), Err(Bound::AfterEnd)) => prop_assert!(n > high),
                (None, Err(e)) => prop_assert!(false, "no cursor position, yet {:?}", e),
            }
        }
    }
}
