//! Catch-up: a stream's own reader, from the stream's start up to where it joined the hub.
//!
//! A stream that starts from a cursor (or the earliest retained events) registers first (so live
//! events from that moment are queued for it), notes the hub's position at registration, and
//! reads the gap between its start and that position here, with its own short-lived Kafka
//! consumer; then it drains the queued live events. Every event is delivered once per stream in
//! partition order, with no gap at the hand-over.
//!
//! Readers are bounded per replica ([`MAX_CATCH_UP_READERS`]) and per aggregator
//! ([`MAX_CATCH_UP_READERS_PER_AGGREGATOR`]); the others wait their turn. A reader whose client
//! stops reading gives its place up after [`CATCH_UP_IDLE`] and goes on from where it stopped
//! once the client reads again; an aggregator without any consent is answered without a reading.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cardlink_bus::{BusConfig, BusError, Consumer, StartAt, Topic};
use chrono::Utc;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::cursor::{Cursor, EventTopic};
use crate::delivery::{Origin, Outgoing};
use crate::hub::Hub;
use crate::projection::project_for;
use crate::streams::Filters;

/// Catch-up readers (each its own Kafka consumer) running at once; others wait their turn.
pub const MAX_CATCH_UP_READERS: usize = 8;
/// Catch-up readers one aggregator's streams hold at once, so that one tenant's replays cannot
/// take every reader of the replica.
pub const MAX_CATCH_UP_READERS_PER_AGGREGATOR: usize = 2;
/// A reader whose client has taken nothing for this long gives its reader up until the client
/// reads again (then goes on from where it stopped).
pub const CATCH_UP_IDLE: Duration = Duration::from_millis(500);
/// Deliveries a catch-up reader reads ahead of what the client has taken.
pub const CATCH_UP_BUFFER: usize = 64;
/// How long a cursor ahead of a partition's reported end is given to become valid.
pub const AHEAD_GRACE: Duration = Duration::from_secs(3);

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
    #[error("the history store: {0}")]
    History(String),
    #[error(
        "the history store has not yet indexed {behind} records the bus held when this backfill started (waited {waited:?}): start the backfill again shortly"
    )]
    HistoryBehind { behind: u64, waited: Duration },
}

impl cardlink_api::ApiError for CatchUpError {
    fn reason(&self) -> cardlink_api::Reason {
        match self {
            Self::OutOfRange { .. } | Self::AheadOfBus { .. } => cardlink_api::Reason::CursorOutOfRange,
            Self::Bus(_) | Self::Closed => cardlink_api::Reason::BusUnavailable,
            Self::History(_) | Self::HistoryBehind { .. } => cardlink_api::Reason::HistoryUnavailable,
        }
    }
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

/// What a running catch-up reader hands its stream: its deliveries on `rx`, then how it ended.
#[derive(Debug)]
pub struct CatchUp {
    pub rx: mpsc::Receiver<Outgoing>,
    pub done: oneshot::Receiver<Result<(), CatchUpError>>,
}

/// How a reading of the gap ended.
#[derive(Debug)]
pub enum Ended {
    /// Every entitled event of the gap was handed over.
    Done,
    /// The client took nothing for the idle time: `pending` could not be handed over, and
    /// `cursor` covers it. The reader gives its place up and goes on from `cursor` later.
    Paused { cursor: Cursor, pending: Outgoing },
}

/// The readers of one replica: how many may run at once, in all and per aggregator.
#[derive(Clone, Debug)]
pub struct CatchUpReaders {
    bus: BusConfig,
    permits: Arc<Semaphore>,
    per_aggregator: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    records_read: Arc<AtomicU64>,
}

impl CatchUpReaders {
    pub fn new(bus: BusConfig) -> Self {
        Self {
            bus,
            permits: Arc::new(Semaphore::new(MAX_CATCH_UP_READERS)),
            per_aggregator: Arc::default(),
            records_read: Arc::default(),
        }
    }

    /// Readers running now.
    pub fn running(&self) -> usize {
        MAX_CATCH_UP_READERS.saturating_sub(self.permits.available_permits())
    }

    /// Records the readers have read from the bus, in all.
    pub fn records_read(&self) -> u64 {
        self.records_read.load(Ordering::Relaxed)
    }

    /// Starts a reader for a stream of `aggregator` that registered at `until` (a task of its
    /// own, once a permit is free). A client that leaves ends the reader at its next send.
    pub fn spawn(
        &self,
        hub: &Hub,
        aggregator: String,
        filters: Filters,
        start: Start,
        until: HashMap<(Topic, i32), i64>,
    ) -> CatchUp {
        let (tx, rx) = mpsc::channel(CATCH_UP_BUFFER);
        let (done_tx, done) = oneshot::channel();
        let (readers, hub) = (self.clone(), hub.clone());
        tokio::spawn(async move {
            let gap = Gap { aggregator_id: &aggregator, filters: &filters, start, until: &until };
            let result = readers.read(&hub, gap, &tx).await;
            // Said before the sender is dropped: the stream reads it once `rx` ends.
            let _ = done_tx.send(result);
            drop(tx);
        });
        CatchUp { rx, done }
    }

    /// Reads the gap from `start` to `until` for one stream of `aggregator` on `tx` (what a
    /// backfill goes on with once its history is delivered).
    pub async fn read_gap(
        &self,
        hub: &Hub,
        aggregator: &str,
        filters: &Filters,
        start: Start,
        until: &HashMap<(Topic, i32), i64>,
        tx: &mpsc::Sender<Outgoing>,
    ) -> Result<(), CatchUpError> {
        self.read(hub, Gap { aggregator_id: aggregator, filters, start, until }, tx).await
    }

    /// Reads `gap` for one stream: holding a reader of the replica and one of its aggregator's
    /// while reading, and neither while its client does not read.
    async fn read(&self, hub: &Hub, mut gap: Gap<'_>, tx: &mpsc::Sender<Outgoing>) -> Result<(), CatchUpError> {
        // Decided on a view that has every consent written before the stream registered.
        if !hub.wait_until_fresh(tx.closed()).await {
            return Err(CatchUpError::Closed);
        }
        if !hub.consents.read(|v| v.has_grants(gap.aggregator_id)) {
            return Ok(()); // nothing of the gap can be for it: no need to read it
        }
        let own = self.aggregator_permits(gap.aggregator_id);
        let result = async {
            loop {
                let ended = {
                    let _own = own.acquire().await.map_err(|_| CatchUpError::Closed)?;
                    let _replica = self.permits.acquire().await.map_err(|_| CatchUpError::Closed)?;
                    let consumer = Consumer::new(&self.bus, "catch-up")?;
                    catch_up(hub, &consumer, &gap, tx, Some(CATCH_UP_IDLE), &self.records_read).await?
                };
                match ended {
                    Ended::Done => return Ok(()),
                    Ended::Paused { cursor, pending } => {
                        // Permits and consumer are given back; wait for the client to read.
                        tx.reserve().await.map_err(|_| CatchUpError::Closed)?.send(pending);
                        gap.start = Start::After(cursor);
                    }
                }
            }
        }
        .await;
        drop(own);
        self.forget_idle(gap.aggregator_id);
        result
    }

    fn aggregator_permits(&self, aggregator_id: &str) -> Arc<Semaphore> {
        let mut map = self.per_aggregator.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry(aggregator_id.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(MAX_CATCH_UP_READERS_PER_AGGREGATOR))),
        )
    }

    /// Drops the aggregator's semaphore once no reader holds or waits for it.
    fn forget_idle(&self, aggregator_id: &str) {
        let mut map = self.per_aggregator.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(aggregator_id).is_some_and(|s| Arc::strong_count(s) == 1) {
            map.remove(aggregator_id);
        }
    }
}

/// One stream's gap: whose, which events, from where, and up to the hub position it joined at
/// (exclusive).
#[derive(Debug)]
pub struct Gap<'a> {
    pub aggregator_id: &'a str,
    pub filters: &'a Filters,
    pub start: Start,
    pub until: &'a HashMap<(Topic, i32), i64>,
}

/// Delivers, on `tx`, the entitled events of `gap`, reading with `consumer` (the stream's own,
/// short-lived reader). With `idle`, gives up when the client has taken nothing for that long
/// ([`Ended::Paused`]).
pub async fn catch_up(
    hub: &Hub,
    consumer: &Consumer,
    gap: &Gap<'_>,
    tx: &mpsc::Sender<Outgoing>,
    idle: Option<Duration>,
    records_read: &AtomicU64,
) -> Result<Ended, CatchUpError> {
    let Gap { aggregator_id, filters, start, until } = gap;
    let aggregator_id = *aggregator_id;
    let mut cursor = match start {
        Start::After(c) => c.clone(),
        _ => Cursor::new(aggregator_id),
    };
    let mut assignment = Vec::new();
    let mut remaining: HashMap<(Topic, i32), i64> = HashMap::new();
    for (&(topic, partition), &end) in until.iter() {
        let Some(event_topic) = EventTopic::of(topic) else { continue };
        let (low, reported_end) = consumer.watermarks(topic, partition).await?;
        // The partition's end is at least what this process's shared reader has already read:
        // a reported end can trail it (a new leader, a lagging replica, a broker's stale answer).
        let mut high = reported_end.max(end);
        if let Start::After(c) = start {
            // Still ahead: give the bus a moment before calling the cursor impossible.
            let deadline = tokio::time::Instant::now() + AHEAD_GRACE;
            while c.next(event_topic, partition).is_some_and(|next| next > high)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                high = high.max(consumer.watermarks(topic, partition).await?.1);
            }
        }
        let from = match start {
            Start::Live => continue,
            Start::Earliest => low,
            Start::After(c) => {
                let next = c.next(event_topic, partition);
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
        return Ok(Ended::Done);
    }
    consumer.assign(&assignment)?;
    while !remaining.is_empty() {
        // A broker blip (a connection reset, all brokers down for a moment) is retried at the
        // position held, as the shared reader does: it ended the aggregator's stream with
        // BUS_UNAVAILABLE before (seen in the kill-and-resume test).
        let record = consumer.recv_retrying("catch-up").await?;
        records_read.fetch_add(1, Ordering::Relaxed);
        let key = (record.topic, record.partition);
        let Some(&end) = remaining.get(&key) else { continue };
        if record.offset >= end {
            remaining.remove(&key);
            continue;
        }
        if let Some(event_topic) = EventTopic::of(record.topic) {
            cursor.advance(event_topic, record.partition, record.offset);
        }
        if record.offset + 1 >= end {
            remaining.remove(&key);
        }
        if record.headers.historical {
            continue; // history, not news (see dispatch)
        }
        let event = match cardlink_events::decode(&record.payload) {
            Ok(event) => event,
            Err(e) => {
                // The shared reader dead-lettered it when it was new; a replay only counts it.
                cardlink_telemetry::undecodable_record(record.topic.suffix(), "skipped_in_replay");
                tracing::warn!(topic = ?record.topic, partition = record.partition, offset = record.offset, error = %e, "undecodable record skipped in a replay (dead-lettered when it was written)");
                continue;
            }
        };
        if !filters.wants(&event) {
            continue;
        }
        let record_key = record.key_str().unwrap_or_default();
        if !hub.connected(record.issuer_id().unwrap_or_default(), aggregator_id) {
            continue; // suspended: nothing, whatever the consents
        }
        let now = Utc::now();
        let projected =
            hub.consents.read(|v| project_for(&event, &v.grants(record_key), aggregator_id, &hub.secret, now));
        if let Some(projected) = projected {
            let out = Outgoing::event(&projected, &Arc::new(Origin::of(&record)), cursor.encode(&hub.secret));
            let slot = match idle {
                None => tx.reserve().await,
                Some(idle) => match tokio::time::timeout(idle, tx.reserve()).await {
                    Ok(slot) => slot,
                    Err(_) => return Ok(Ended::Paused { cursor, pending: out }),
                },
            };
            slot.map_err(|_| CatchUpError::Closed)?.send(out);
        }
    }
    Ok(Ended::Done)
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
