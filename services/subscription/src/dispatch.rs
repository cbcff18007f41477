//! Dispatch: one shared read of the bus, handed to every entitled stream.
//!
//! One reader per process tails the event topics. For each record it looks up the consent view
//! once, by the record's key (`issuer_id/account_ref`) — before anything is decoded, so a record
//! nobody may have costs a lookup — decodes the event once, and queues one projected delivery for
//! each stream of each entitled aggregator: the work per event grows with the entitled streams,
//! not with the connected ones. Records are dispatched in [`Batch`]es — what librdkafka already
//! holds, up to [`BATCH_MAX`] — whose deliveries are queued together when the batch ends.
//!
//! Nothing is dispatched on stale views: before each batch the reader waits until the consent
//! and registry views reflect every change written up to [`VIEW_FRESHNESS`] ago, so a
//! revocation or a suspension (of the connection or of the aggregator) holds from then on, within
//! the [`REVOCATION_BOUND`] as the client sees it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLockWriteGuard};
use std::time::Duration;

use cardlink_bus::{BusError, PolledConsumer, RecordRef, StartAt, Topic};
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cursor::EventTopic;
use crate::delivery::{Origin, Outgoing};
use crate::hub::Hub;
use crate::projection::project_for;
use crate::streams::Registered;

// Shared with the history service, which answers under the same bound.
pub use cardlink_entitlement::{REVOCATION_BOUND, VIEW_FRESHNESS};

/// How often a paused reader looks again at the consent view's freshness.
const FRESHNESS_POLL: Duration = Duration::from_millis(10);

impl Hub {
    /// Waits until the consent and registry views reflect every change written up to
    /// [`VIEW_FRESHNESS`] ago. Normally immediate; while a view lags (its follower is slow or
    /// cut off from the bus), deliveries pause rather than go out on stale consents or
    /// suspensions. Returns false if `give_up` completed first (shutdown, a client gone).
    pub async fn wait_until_fresh(&self, give_up: impl std::future::Future<Output = ()>) -> bool {
        let mut give_up = std::pin::pin!(give_up);
        let mut warned = false;
        loop {
            if self.fresh() {
                return true;
            }
            if !warned {
                tracing::warn!("consent or registry view is behind the revocation bound; deliveries paused");
                warned = true;
            }
            tokio::select! {
                () = &mut give_up => return false,
                _ = tokio::time::sleep(FRESHNESS_POLL) => {}
            }
        }
    }

    /// [`Hub::wait_until_fresh`] for the shared reader's thread (not the runtime's): sleeps
    /// between looks. Returns false if `stopped` said so first.
    fn wait_until_fresh_blocking(&self, stopped: impl Fn() -> bool) -> bool {
        let mut warned = false;
        while !self.fresh() {
            if stopped() {
                return false;
            }
            if !warned {
                tracing::warn!("consent or registry view is behind the revocation bound; deliveries paused");
                warned = true;
            }
            std::thread::sleep(FRESHNESS_POLL);
        }
        true
    }

    /// Starts a [`Batch`]: records dispatched through it are queued to their streams when it
    /// ends. Holds the stream registry's lock until then: keep a batch short ([`BATCH_MAX`]).
    pub fn batch(&self) -> Batch<'_> {
        Batch { hub: self, registered: self.streams.write(), queued: Vec::new(), now: None, records: 0 }
    }

    /// Dispatches `first` and then whatever `consumer` already holds (polled without waiting), up
    /// to [`BATCH_MAX`] records, as one [`Batch`]; `each` sees every record read after `first`.
    /// The shared reader's step, and the peak benchmark's. A failed poll ends the batch (its
    /// deliveries are queued) and is returned.
    pub fn dispatch_held(
        &self,
        consumer: &PolledConsumer,
        first: &RecordRef<'_>,
        mut each: impl FnMut(&RecordRef<'_>),
    ) -> Result<(), BusError> {
        let mut batch = self.batch();
        batch.dispatch(first);
        while batch.records() < BATCH_MAX {
            match consumer.poll(Duration::ZERO, "hub reader") {
                Some(Ok(record)) => {
                    batch.dispatch(&record);
                    each(&record);
                }
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(())
    }
}

/// Most records dispatched in one [`Batch`]: bounds how long registration and heartbeats wait
/// for the registry's lock (a record costs a few microseconds, so well under a millisecond).
pub const BATCH_MAX: usize = 256;

/// Records dispatched under one hold of the stream registry's lock, their deliveries queued to
/// the streams when the batch ends (is dropped).
///
/// Why batches: queueing a delivery wakes its stream's task, and from the reader's thread (outside
/// the runtime) a wake that finds every worker parked unparks one — a system call. One delivery
/// at a time, each wake found the workers parked again; queued together at the end of a batch,
/// the first wake unparks a worker and the rest find it already looking for work (the wakes were
/// 17% of the reader's thread in the peak benchmark's profile, docs/benchmarks.md).
///
/// The lock is held from the first record to the last queueing, so what the registry promises
/// still holds: the reader's position and the streams' queues move together (a heartbeat's cursor
/// never covers a delivery not yet queued), and a stream that registers meanwhile sees a record
/// either live or in its catch-up, never neither.
pub struct Batch<'a> {
    hub: &'a Hub,
    registered: RwLockWriteGuard<'a, Registered>,
    queued: Vec<Queued>,
    /// The clock, read once a record of the batch is for someone (a read per record showed in
    /// the reader's profile; a batch lasts well under a millisecond).
    now: Option<DateTime<Utc>>,
    records: usize,
}

/// A delivery waiting for its batch to end.
struct Queued {
    tx: mpsc::Sender<Outgoing>,
    aggregator: Arc<str>,
    stream: u64,
    outgoing: Outgoing,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("records", &self.records).field("queued", &self.queued.len()).finish()
    }
}

impl Batch<'_> {
    /// Records dispatched in this batch so far.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Hands one record to every entitled stream (queued when the batch ends). Called by the
    /// reader, in partition order. A record no connected stream may receive costs its key's
    /// lookups: its body is not decoded and its headers are not parsed.
    pub fn dispatch(&mut self, record: &RecordRef<'_>) {
        self.records += 1;
        if EventTopic::of(record.topic()).is_none() {
            return;
        }
        let hub = self.hub;
        // Every record's header is checked (cheap), whoever it is for: one this release cannot
        // read is recorded, not silently passed over. Its body is decoded below only if someone
        // may receive it; a body that fails then is recorded the same way.
        let header_readable = match cardlink_events::codec::check_event_writer(record.payload()) {
            Ok(()) => true,
            Err(e) => {
                hub.undecodable(&record.to_record(), &e);
                false
            }
        };
        let key = record.key_str().unwrap_or_default();
        let mut grants = hub.consents.read(|v| v.grants(key));
        // Only where the issuer's connection with the aggregator, and the aggregator, are active
        // (most records have no grant: no registry lock for them).
        if !grants.is_empty() {
            let issuer = record.issuer_id().unwrap_or_default();
            hub.registry.read(|r| grants.retain(|g| r.is_connected(issuer, &g.aggregator_id)));
        }
        // Made on the first delivery only: most records of a busy bus go to nobody.
        let mut origin: Option<Arc<Origin>> = None;
        let Registered { by_aggregator, position, events_in } = &mut *self.registered;
        position.insert((record.topic(), record.partition()), record.offset() + 1);
        if let Some(issuer) = record.issuer_id() {
            match events_in.get_mut(issuer) {
                Some(n) => *n += 1,
                None => {
                    events_in.insert(issuer.to_owned(), 1);
                }
            }
        }
        // Decided under the lock that registration takes, so a stream registering now either
        // sees this record live or in its catch-up, never neither. An issuer's load of past
        // records is history (History, backfill), not news: the streams' cursors pass over it.
        if !grants.iter().any(|g| by_aggregator.contains_key(&*g.aggregator_id)) {
            return;
        }
        let headers = record.headers();
        if headers.historical {
            return;
        }
        let event = match cardlink_events::decode(record.payload()) {
            Ok(event) => event,
            Err(e) => {
                if header_readable {
                    hub.undecodable(&record.to_record(), &e); // a known header over a body that is not
                }
                return;
            }
        };
        let event = &event;
        let now = *self.now.get_or_insert_with(Utc::now);
        for (i, grant) in grants.iter().enumerate() {
            let aggregator = &grant.aggregator_id;
            if grants[..i].iter().any(|g| g.aggregator_id == *aggregator) {
                continue; // this aggregator was served by its first grant
            }
            let Some(slots) = by_aggregator.get(&**aggregator) else { continue };
            // One projection per entitled aggregator (its first grant that covers the event),
            // shared by all of its streams.
            let Some(projected) = project_for(event, &grants[i..], aggregator, &hub.secret, now) else {
                continue;
            };
            for slot in slots {
                if !slot.filters.wants(event) {
                    continue;
                }
                let origin = origin.get_or_insert_with(|| Arc::new(Origin::of_ref(record, &headers)));
                let outgoing = Outgoing::event(&projected, origin, slot.cursor(position).encode(&hub.secret));
                let tx = slot.tx.clone();
                self.queued.push(Queued { tx, aggregator: Arc::clone(aggregator), stream: slot.id, outgoing });
            }
        }
    }
}

impl Drop for Batch<'_> {
    /// Queues the batch's deliveries, in the order they were dispatched; a stream whose queue is
    /// full is dropped from the registry and told it fell behind (and gets nothing more).
    fn drop(&mut self) {
        let mut fallen: Vec<(Arc<str>, u64)> = Vec::new();
        for Queued { tx, aggregator, stream, outgoing } in self.queued.drain(..) {
            if fallen.iter().any(|(a, id)| *id == stream && *a == aggregator) {
                continue;
            }
            if tx.try_send(outgoing).is_err() {
                self.registered.drop_fallen(&aggregator, stream);
                fallen.push((aggregator, stream));
            }
        }
    }
}

/// How long the shared reader waits for a record before it looks at the shutdown signal again.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// The shared reader: tails the event topics from their ends and dispatches every record, on a
/// thread of its own (polling librdkafka there: no async wake-up per record of the whole bus). An
/// error it returns marks the hub as stopped ([`Hub::reader_stopped`]), which readiness reports.
/// Dropping the returned future stops the thread at its next poll, as `shutdown` does.
pub async fn run_reader(hub: Hub, consumer: PolledConsumer, shutdown: watch::Receiver<bool>) -> Result<(), BusError> {
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let (done_tx, done) = oneshot::channel();
    let (reader_hub, stopping) = (hub.clone(), Arc::clone(&stop.0));
    // Dispatch wakes and spawns stream tasks (a stream that fell behind is told from a task).
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("hub-reader".into())
        .spawn(move || {
            let _runtime = runtime.enter();
            let stopped = || stopping.load(Ordering::Relaxed) || shutdown.has_changed().unwrap_or(true);
            let read = read_and_dispatch(&reader_hub, &consumer, stopped);
            // Closed before the waiting task hears the end: whoever awaits it may stop Kafka next.
            drop(consumer);
            let _ = done_tx.send(read);
        })
        .map_err(|e| BusError::Task(format!("no thread for the shared reader: {e}")))?;
    let read = done.await.unwrap_or_else(|_| Err(BusError::Task("the shared reader's thread panicked".into())));
    if read.is_err() {
        hub.reader_stopped.store(true, Ordering::Relaxed);
    }
    read
}

/// Sets its flag when dropped: the reader's thread ends with the future that waits for it.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn read_and_dispatch(hub: &Hub, consumer: &PolledConsumer, stopped: impl Fn() -> bool) -> Result<(), BusError> {
    let mut positions = Vec::new();
    for topic in [Topic::Transactions, Topic::Statements] {
        for (p, _, end) in consumer.watermarks(topic)? {
            hub.streams.write().position.insert((topic, p), end);
            positions.push((topic, p, StartAt::Offset(end)));
        }
    }
    consumer.assign(&positions)?;
    while !stopped() {
        let Some(record) = consumer.poll(POLL_WAIT, "hub reader") else { continue };
        let record = record?;
        // Checked once a batch: a batch is over well within the revocation bound's margin.
        if !hub.wait_until_fresh_blocking(&stopped) {
            break;
        }
        hub.dispatch_held(consumer, &record, |_| ())?;
    }
    Ok(())
}
