//! The stream registry: which subscription streams are open on this replica, what each wants,
//! its queue, and where it stands.
//!
//! Each stream has a bounded queue ([`STREAM_BUFFER`]). A stream whose queue is full is ended
//! with [`Outgoing::FellBehind`]: the client resumes from the last cursor it received and loses
//! nothing, and no slow client ever holds up the reader or the other streams.
//!
//! A stream's position is not updated per record: the registry keeps the shared reader's
//! position, and a stream's cursor is its start merged with that position, computed when a
//! cursor is handed out — a record costs nothing for the streams it is not for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cardlink_bus::Topic;
use cardlink_events::Event;
use tokio::sync::mpsc;

use crate::cursor::{Cursor, EventTopic};
use crate::delivery::Outgoing;

/// Deliveries queued per stream before it counts as fallen behind.
pub const STREAM_BUFFER: usize = 1024;

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

    pub fn wants(&self, event: &Event) -> bool {
        let kind = match event {
            Event::Transaction(_) => self.transactions,
            Event::Statement(_) => self.statements,
        };
        kind && (self.issuers.is_empty() || self.issuers.iter().any(|i| i == event.issuer_id()))
    }
}

/// One open stream.
pub(crate) struct Slot {
    pub(crate) id: u64,
    pub(crate) filters: Filters,
    pub(crate) tx: mpsc::Sender<Outgoing>,
    /// The stream's position when it registered (its start, moved up to the hub's position
    /// then). From there on the hub passes the stream every record it reads, so the stream's
    /// current position is this merged with the hub's.
    base: Cursor,
}

impl Slot {
    /// The stream's position now: past every record the hub has read.
    pub(crate) fn cursor(&self, hub_position: &HashMap<(Topic, i32), i64>) -> Cursor {
        let mut cursor = self.base.clone();
        advance_to(&mut cursor, hub_position);
        cursor
    }
}

/// Moves `cursor` past everything before `position` (next offsets per partition).
fn advance_to(cursor: &mut Cursor, position: &HashMap<(Topic, i32), i64>) {
    for ((topic, partition), next) in position {
        if let Some(topic) = EventTopic::of(*topic)
            && *next > 0
        {
            cursor.advance(topic, *partition, next - 1);
        }
    }
}

/// What the registry's lock guards: the streams, and the shared reader's position and counts.
#[derive(Default)]
pub(crate) struct Registered {
    pub(crate) by_aggregator: HashMap<String, Vec<Slot>>,
    /// Next offset per (topic, partition) of the hub's reader.
    pub(crate) position: HashMap<(Topic, i32), i64>,
    /// Event records read per issuer since the process started (the live view).
    pub(crate) events_in: HashMap<String, u64>,
}

impl Registered {
    /// Removes a stream whose queue overflowed; it learns it fell behind once it drains.
    pub(crate) fn drop_fallen(&mut self, aggregator_id: &str, id: u64) {
        let Some(slots) = self.by_aggregator.get_mut(aggregator_id) else { return };
        if let Some(i) = slots.iter().position(|s| s.id == id) {
            let tx = slots.swap_remove(i).tx;
            tokio::spawn(async move {
                let _ = tx.send(Outgoing::FellBehind).await;
            });
        }
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

/// The open streams of one replica; cheap to clone.
#[derive(Clone, Default)]
pub struct StreamRegistry {
    registered: Arc<RwLock<Registered>>,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for StreamRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never waits for the lock: formatting may happen while this thread holds it.
        let streams = self.registered.try_read().map(|r| r.by_aggregator.values().map(Vec::len).sum::<usize>());
        f.debug_struct("StreamRegistry").field("streams", &streams.ok()).finish_non_exhaustive()
    }
}

impl StreamRegistry {
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Registered> {
        self.registered.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> RwLockReadGuard<'_, Registered> {
        self.registered.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a stream for `aggregator_id`. Live events from this moment are queued for it; the
    /// caller delivers what lies between `start` and `live_from` first (see `crate::catch_up`).
    pub fn register(&self, aggregator_id: &str, filters: Filters, start: &Cursor) -> Registration {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut registered = self.write();
        let live_from = registered.position.clone();
        // Live deliveries are forwarded only after the catch-up, so their cursors may already
        // cover everything before `live_from`.
        let mut base = start.clone();
        advance_to(&mut base, &live_from);
        // Live deliveries come after any backfill is done: their cursors resume live, not the
        // backfill the stream started with.
        base.backfill = None;
        registered.by_aggregator.entry(aggregator_id.to_owned()).or_default().push(Slot { id, filters, tx, base });
        Registration { id, rx, live_from }
    }

    pub fn unregister(&self, aggregator_id: &str, id: u64) {
        let mut registered = self.write();
        if let Some(slots) = registered.by_aggregator.get_mut(aggregator_id) {
            slots.retain(|s| s.id != id);
            if slots.is_empty() {
                registered.by_aggregator.remove(aggregator_id);
            }
        }
    }

    /// The current cursor of a registered stream (for heartbeats), encoded with `secret`.
    pub fn cursor(&self, aggregator_id: &str, id: u64, secret: &[u8]) -> Option<String> {
        let registered = self.read();
        let slot = registered.by_aggregator.get(aggregator_id)?.iter().find(|s| s.id == id)?;
        Some(slot.cursor(&registered.position).encode(secret))
    }

    /// Whether the shared reader has positioned itself on the event topics.
    pub fn is_reading(&self) -> bool {
        !self.read().position.is_empty()
    }

    /// Connected streams of one aggregator.
    pub fn streams_of(&self, aggregator_id: &str) -> usize {
        self.read().by_aggregator.get(aggregator_id).map_or(0, Vec::len)
    }

    /// Connected streams per aggregator.
    pub fn streams_per_aggregator(&self) -> Vec<(String, usize)> {
        let registered = self.read();
        registered.by_aggregator.iter().filter(|(_, s)| !s.is_empty()).map(|(a, s)| (a.clone(), s.len())).collect()
    }

    /// Connected streams.
    pub fn streams(&self) -> usize {
        self.read().by_aggregator.values().map(Vec::len).sum()
    }

    /// Event records read per issuer since the process started.
    pub fn events_in(&self) -> Vec<(String, u64)> {
        let mut out: Vec<_> = self.read().events_in.iter().map(|(k, v)| (k.clone(), *v)).collect();
        out.sort();
        out
    }
}
