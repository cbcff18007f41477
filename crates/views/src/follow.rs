//! Following a compacted topic into a view, with a watermark.
//!
//! The follower assigns every partition from the beginning, decodes each record on a thread of
//! its own and applies it to the view on a task, and keeps following. Its [`Watermark`] tells how
//! far it has read; `caught_up` turns true once it has read up to the ends the partitions had when
//! it started (so a new replica does not act on a half-built view), and `lag` — refreshed every
//! [`LAG_REFRESH`] — is how many records it is behind the current ends (while catching up, behind
//! the ends it started from: those are not asked for again until it has reached them). The view
//! lives behind a `RwLock` that is never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use cardlink_bus::{BusError, PolledConsumer, RecordRef, StartAt, Topic};
use cardlink_events::Fingerprint;
use tokio::sync::{mpsc, watch};

/// How often the follower refreshes the partitions' end offsets to compute its lag.
pub const LAG_REFRESH: Duration = Duration::from_millis(250);
/// Most records a follower applies before it updates its watermark (what has already arrived,
/// up to this many, goes in one update).
const FOLLOW_BATCH: usize = 512;

/// How far a follower has read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watermark {
    /// Next offset to read, per partition.
    pub next: HashMap<i32, i64>,
    /// Read up to the ends the topic had when following started.
    pub caught_up: bool,
    /// Records between what was read and the partitions' ends at the last refresh (while
    /// catching up, the ends noted when following started).
    pub lag: i64,
    /// When `lag` was last measured.
    pub measured_at: Option<tokio::time::Instant>,
    /// The view holds every record the topic had at this instant: the follower noted the
    /// partitions' ends then and has since read up to them. A decision taken on the view now
    /// reflects every change written before this instant — the basis of the revocation bound.
    pub fresh_as_of: Option<tokio::time::Instant>,
    /// The record the follower could not understand and stopped at, if any (see [`run`]).
    pub stuck: Option<Stuck>,
}

/// Where a follower stopped: a record of its topic it could not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stuck {
    pub partition: i32,
    pub offset: i64,
}

/// A view that records of one topic update.
pub trait Materialize: Send + Sync + 'static {
    /// A record of the topic, decoded. The follower decodes on its reading side while the view
    /// applies the records before: a view rebuilding from millions of records spends about as
    /// long decoding as applying.
    type Decoded: Send + 'static;

    /// Decodes one record; `None` if it cannot be understood (the follower then stops: see [`run`]).
    fn decode(record: &RecordRef<'_>) -> Option<Self::Decoded>;

    /// Applies one decoded record, read at `offset`; returns false if it could not be applied
    /// (the follower then stops, as for a record it cannot decode).
    fn apply(&mut self, decoded: Self::Decoded, offset: i64) -> bool;

    /// Told, before the first record, how many records the topic holds: a view that grows by
    /// doubling can take its room at once instead (rebuilding a ten-million-consent view spent a
    /// fifth of its time rehashing and copying as it grew). An upper bound on what it will hold,
    /// not a promise.
    fn reserve(&mut self, _records: u64) {}

    /// Told once the follower has caught up, or stopped short of it (a record it cannot decode,
    /// an error, shutdown): a view may hold what it applied while catching up back from its
    /// readers until then and index it at once, as [`crate::consent::ConsentView`] does
    /// (readers do not act on a view that has not caught up). Told before the watermark says
    /// caught up.
    fn settle(&mut self) {}
}

impl Materialize for crate::consent::ConsentView {
    /// `None` inside: a consent id the view cannot hold, ignored (logged) — not a record it
    /// cannot read.
    type Decoded = Option<crate::consent::PreparedConsent>;

    fn decode(record: &RecordRef<'_>) -> Option<Self::Decoded> {
        cardlink_events::codec::with_consent_terms(record.payload(), crate::consent::PreparedConsent::of).ok()
    }

    fn apply(&mut self, decoded: Self::Decoded, _offset: i64) -> bool {
        if let Some(prepared) = decoded {
            self.apply_prepared(prepared);
        }
        true
    }

    /// A view rebuilt from the topic indexes what it read once it caught up
    /// ([`crate::consent::ConsentView::stage`]).
    fn reserve(&mut self, records: u64) {
        self.reserve(usize::try_from(records).unwrap_or(usize::MAX));
        if records > 0 {
            self.stage();
        }
    }

    fn settle(&mut self) {
        self.settle();
    }
}

impl Materialize for crate::registry::RegistryView {
    type Decoded = cardlink_events::registry::RegistryEvent;

    fn decode(record: &RecordRef<'_>) -> Option<Self::Decoded> {
        cardlink_events::decode_record(record.payload(), cardlink_events::RecordType::RegistryEvent).ok()
    }

    fn apply(&mut self, event: Self::Decoded, offset: i64) -> bool {
        self.apply_at(&event, offset)
    }
}

/// A view shared with the follower that keeps it current.
#[derive(Debug)]
pub struct Followed<V> {
    pub view: Arc<RwLock<V>>,
    pub watermark: watch::Receiver<Watermark>,
}

impl<V> Clone for Followed<V> {
    fn clone(&self) -> Self {
        Self { view: Arc::clone(&self.view), watermark: self.watermark.clone() }
    }
}

impl<V> Followed<V> {
    /// Runs `f` with the view read-locked.
    pub fn read<T>(&self, f: impl FnOnce(&V) -> T) -> T {
        let guard = self.view.read().unwrap_or_else(PoisonError::into_inner);
        f(&guard)
    }

    /// Whether the view reflects every change written up to `within` ago (readiness).
    pub fn is_fresh(&self, within: std::time::Duration) -> bool {
        self.watermark.borrow().fresh_as_of.is_some_and(|at| at.elapsed() <= within)
    }

    /// How long ago the view was last known to reflect every change written (`None` until it
    /// first caught up): the view-lag metric.
    pub fn lag(&self) -> Option<std::time::Duration> {
        self.watermark.borrow().fresh_as_of.map(|at| at.elapsed())
    }

    /// The record the follower stopped at, if it could not understand one.
    pub fn stuck(&self) -> Option<Stuck> {
        self.watermark.borrow().stuck
    }

    /// Waits until the view has caught up with its topic — or stopped at a record it cannot
    /// understand: the service then starts unready and says why, rather than hang.
    pub async fn caught_up(&mut self) {
        let _ = self.watermark.wait_for(|w| w.caught_up || w.stuck.is_some()).await;
    }
}

/// The (low, high) watermarks of every partition of `topic`, asked off the runtime's workers
/// (the consumer's calls block).
async fn watermarks(consumer: &Arc<PolledConsumer>, topic: Topic) -> Result<Vec<(i32, i64, i64)>, BusError> {
    let consumer = Arc::clone(consumer);
    tokio::task::spawn_blocking(move || consumer.watermarks(topic))
        .await
        .map_err(|e| BusError::Task(format!("watermarks of {topic:?}: {e}")))?
}

/// The end offset of every partition of `topic`.
async fn ends_of(consumer: &Arc<PolledConsumer>, topic: Topic) -> Result<HashMap<i32, i64>, BusError> {
    Ok(watermarks(consumer, topic).await?.into_iter().map(|(p, _, high)| (p, high)).collect())
}

/// Starts following `topic` into `view`; returns the shared view and the task. Transient Kafka
/// errors (a broker restarting, a timeout) are retried; only errors that retrying cannot fix
/// end the task. The consumer is polled on a thread of the follower's own (see [`run`]).
pub fn spawn<V: Materialize>(
    consumer: PolledConsumer,
    topic: Topic,
    view: V,
    shutdown: watch::Receiver<bool>,
) -> (Followed<V>, tokio::task::JoinHandle<Result<(), BusError>>) {
    let view = Arc::new(RwLock::new(view));
    let (tx, rx) = watch::channel(Watermark::default());
    let task = tokio::spawn(run(consumer, topic, Arc::clone(&view), tx, shutdown));
    (Followed { view, watermark: rx }, task)
}

/// Follows `topic`. A record it cannot understand (a schema version newer than this release, or
/// bytes cardlink did not write) stops it there, fail closed: skipping it could skip a
/// revocation or a suspension. The view keeps what it had, its freshness ages (so the service
/// turns unready and the hub stops delivering within the revocation bound), the watermark says
/// where it stopped, and `cardlink.bus.undecodable_records` counts it. A release that reads the
/// record goes on from there.
///
/// Two sides: [`read`], on a thread of its own, receives and decodes; this task applies and keeps
/// the watermark. Decoded batches pass between them through a channel of [`DECODED_BATCHES`].
async fn run<V: Materialize>(
    consumer: PolledConsumer,
    topic: Topic,
    view: Arc<RwLock<V>>,
    watermark: watch::Sender<Watermark>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let consumer = Arc::new(consumer);
    let noted_at = tokio::time::Instant::now();
    let partitions = watermarks(&consumer, topic).await?;
    let mut progress = Progress { next: HashMap::new(), targets: HashMap::new(), noted_at };
    let mut held = 0u64;
    let mut positions = Vec::with_capacity(partitions.len());
    for &(p, low, high) in &partitions {
        progress.next.insert(p, low);
        positions.push((topic, p, StartAt::Beginning));
        if high > low {
            progress.targets.insert(p, high);
            held += u64::try_from(high - low).unwrap_or(0);
        }
    }
    {
        let consumer = Arc::clone(&consumer);
        tokio::task::spawn_blocking(move || consumer.assign(&positions))
            .await
            .map_err(|e| BusError::Task(format!("assigning {topic:?}: {e}")))??;
    }
    {
        let mut view = view.write().unwrap_or_else(PoisonError::into_inner);
        view.reserve(held);
        if progress.targets.is_empty() {
            view.settle();
        }
    }
    watermark.send_modify(|w| {
        w.next = progress.next.clone();
        w.caught_up = progress.targets.is_empty();
        if w.caught_up {
            w.fresh_as_of = Some(noted_at);
        }
    });
    let (decoded, mut batches) = mpsc::channel(DECODED_BATCHES);
    let reader = Arc::clone(&consumer);
    let reading = std::thread::Builder::new()
        .name(format!("view-{}", topic.suffix()))
        .spawn(move || read::<V>(&reader, &decoded))
        .map_err(|e| BusError::Task(format!("starting the reader of {topic:?}: {e}")))?;
    let ended = apply(&consumer, topic, &view, &watermark, &mut batches, &mut shutdown, progress).await;
    // Stopped before catching up (shutdown, an error): what was read stays readable.
    view.write().unwrap_or_else(PoisonError::into_inner).settle();
    // The reading side holds the consumer: it must be gone when the follower's task ends, or it
    // would still be polling (and logging errors) after whoever awaited the task stopped Kafka.
    // Closing the channel ends it within one poll.
    batches.close();
    let joined = tokio::task::spawn_blocking(move || reading.join()).await;
    ended?;
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(BusError::Task(format!("the reading side of the {topic:?} view panicked"))),
        Err(e) => Err(BusError::Task(format!("waiting for the reading side of the {topic:?} view: {e}"))),
    }
}

/// Where the applying side stands.
struct Progress {
    /// Next offset to apply, per partition.
    next: HashMap<i32, i64>,
    /// The ends the partitions had when following started, for those not yet reached.
    targets: HashMap<i32, i64>,
    /// When those ends were noted: once they are reached, the view is fresh as of then.
    noted_at: tokio::time::Instant,
}

/// The follower's applying side: applies what the reading side decoded and keeps the watermark,
/// until shutdown or an error.
async fn apply<V: Materialize>(
    consumer: &Arc<PolledConsumer>,
    topic: Topic,
    view: &RwLock<V>,
    watermark: &watch::Sender<Watermark>,
    batches: &mut mpsc::Receiver<DecodedBatch<V::Decoded>>,
    shutdown: &mut watch::Receiver<bool>,
    progress: Progress,
) -> Result<(), BusError> {
    let Progress { mut next, mut targets, noted_at: started } = progress;
    let mut settled = targets.is_empty();
    // Ends noted at a refresh, waiting to be reached: (when noted, end per partition).
    let mut pending: Option<(tokio::time::Instant, HashMap<i32, i64>)> = None;
    let reached = |ends: &HashMap<i32, i64>, next: &HashMap<i32, i64>| {
        ends.iter().all(|(p, end)| next.get(p).copied().unwrap_or(0) >= *end)
    };
    let behind = |ends: &HashMap<i32, i64>, next: &HashMap<i32, i64>| -> i64 {
        ends.iter().map(|(p, end)| (end - next.get(p).copied().unwrap_or(0)).max(0)).sum()
    };
    let mut refresh = tokio::time::interval(LAG_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = refresh.tick() => {
                let noted_at = tokio::time::Instant::now();
                // Catching up, the ends noted at the start are what it is behind: asking the
                // broker again four times a second cost the embedded broker a listing of the
                // whole log each time, a third of a ten-million-consent rebuild.
                if !targets.is_empty() {
                    let lag = behind(&targets, &next);
                    watermark.send_modify(|w| {
                        w.lag = lag;
                        w.measured_at = Some(noted_at);
                    });
                    continue;
                }
                let ends = match ends_of(consumer, topic).await {
                    Ok(ends) => ends,
                    // Kafka unreachable for a moment: the view stays as it is and its freshness
                    // ages, so readiness (and the hub's revocation bound) notice; the next
                    // refresh tries again.
                    Err(e) if e.is_retriable() => {
                        tracing::warn!(?topic, error = %e, "view freshness not refreshed; retrying");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let lag = behind(&ends, &next);
                // Keep the oldest unreached note: under steady traffic a newer one would never
                // be reached before it too was replaced.
                if pending.is_none() {
                    pending = Some((noted_at, ends));
                }
                let fresh = pending.as_ref().filter(|(_, ends)| reached(ends, &next)).map(|(at, _)| *at);
                if fresh.is_some() {
                    pending = None;
                }
                watermark.send_modify(|w| {
                    w.lag = lag;
                    w.measured_at = Some(noted_at);
                    if fresh.is_some() {
                        w.fresh_as_of = fresh;
                    }
                });
            }
            batch = batches.recv() => {
                // The reading side ends on its own only after passing on an error or a record it
                // cannot decode, both handled below: a channel closed otherwise means its thread
                // died (a panic), and the view would silently stop following.
                let Some(batch) = batch else {
                    return Err(BusError::Task(format!("the reading side of the {topic:?} view ended unexpectedly")));
                };
                // Applied one by one (the view's lock is held per record, not across the batch),
                // told in one watermark update: its waiters (readiness, the consent service's
                // read-your-writes) are woken once a batch, not once a record — a view rebuilding
                // from millions of records spent a sixth of its time waking them.
                let mut applied = 0;
                let mut stuck = None;
                for record in batch.records {
                    let (ok, fingerprint) = match record.decoded {
                        Ok(decoded) => (view.write().unwrap_or_else(PoisonError::into_inner).apply(decoded, record.offset), None),
                        Err(fingerprint) => (false, fingerprint),
                    };
                    if !ok {
                        stuck = Some((record.partition, record.offset, fingerprint));
                        break;
                    }
                    next.insert(record.partition, record.offset + 1);
                    if targets.get(&record.partition).is_some_and(|end| record.offset + 1 >= *end) {
                        targets.remove(&record.partition);
                    }
                    applied += 1;
                }
                // Caught up, or stuck short of it: the view settles before the watermark says so.
                let first_caught_up = !settled && targets.is_empty();
                if !settled && (targets.is_empty() || stuck.is_some()) {
                    view.write().unwrap_or_else(PoisonError::into_inner).settle();
                    settled = true;
                }
                if applied > 0 {
                    let caught_up = targets.is_empty();
                    let mut fresh = pending.as_ref().filter(|(_, ends)| reached(ends, &next)).map(|(at, _)| *at);
                    if fresh.is_some() {
                        pending = None;
                    }
                    // The view now holds every record the topic had when following started.
                    if first_caught_up {
                        fresh = fresh.max(Some(started));
                    }
                    watermark.send_modify(|w| {
                        w.next.clone_from(&next);
                        w.caught_up = caught_up;
                        if fresh.is_some() {
                            w.fresh_as_of = fresh;
                        }
                    });
                }
                if let Some(e) = batch.failed {
                    return Err(e);
                }
                if let Some((partition, offset, fingerprint)) = stuck {
                    tracing::error!(
                        ?topic,
                        partition,
                        offset,
                        ?fingerprint,
                        "a record of this topic cannot be decoded by this release; the view stops here (fail closed) until a release that reads it runs"
                    );
                    cardlink_telemetry::undecodable_record(topic.suffix(), "view_stopped");
                    watermark.send_modify(|w| w.stuck = Some(Stuck { partition, offset }));
                    let _ = shutdown.wait_for(|stopping| *stopping).await;
                    return Ok(());
                }
            }
        }
    }
}

/// Decoded batches waiting to be applied: with [`FOLLOW_BATCH`], bounds how far reading runs ahead.
const DECODED_BATCHES: usize = 4;

/// Records read and decoded together, in the order read.
struct DecodedBatch<D> {
    records: Vec<DecodedRecord<D>>,
    /// Reading failed after these records (an error retrying cannot fix).
    failed: Option<BusError>,
}

struct DecodedRecord<D> {
    partition: i32,
    offset: i64,
    /// `Err`: it could not be decoded; the writer's schema fingerprint, if it has one.
    decoded: Result<D, Option<Fingerprint>>,
}

/// How long the reading side waits for a record before it checks whether the follower is still
/// there (it ends within this of the follower).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// The follower's reading side, on a thread of its own: receives a record and whatever else has
/// already arrived (up to [`FOLLOW_BATCH`]), decodes them and passes them on. On its own thread,
/// not a task, so that decoding and applying run side by side: a task woken by a task runs next
/// on the waker's worker, which made the two take turns. Stops after a record it cannot decode
/// or an error (both passed on); ends when the applying side is gone.
fn read<V: Materialize>(consumer: &PolledConsumer, batches: &mpsc::Sender<DecodedBatch<V::Decoded>>) {
    loop {
        // Room for a whole batch is taken only once a record arrives: an idle follower polls ten
        // times a second and, for the consent view, a batch's room is about 100 KB.
        let mut batch = DecodedBatch { records: Vec::new(), failed: None };
        let stop = loop {
            let wait = if batch.records.is_empty() { IDLE_POLL } else { Duration::ZERO };
            let record = match consumer.poll(wait, "view follower") {
                None => break false,
                Some(Err(e)) => {
                    batch.failed = Some(e);
                    break true;
                }
                Some(Ok(record)) => record,
            };
            let decoded =
                V::decode(&record).ok_or_else(|| cardlink_events::codec::peek_fingerprint(record.payload()).ok());
            let undecodable = decoded.is_err();
            if batch.records.capacity() == 0 {
                batch.records.reserve_exact(FOLLOW_BATCH);
            }
            batch.records.push(DecodedRecord { partition: record.partition(), offset: record.offset(), decoded });
            if undecodable {
                break true;
            }
            if batch.records.len() == FOLLOW_BATCH {
                break false;
            }
        };
        if batch.records.is_empty() && batch.failed.is_none() {
            if batches.is_closed() {
                return;
            }
            continue;
        }
        if batches.blocking_send(batch).is_err() || stop {
            return;
        }
    }
}
