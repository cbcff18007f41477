//! The indexer: follows the event topics and keeps the history store at their latest state.
//!
//! It is a member of one consumer group (`history-indexer`), so the replicas of the history
//! service share the partitions and a partition's next owner starts where the group committed.
//! Records are gathered into batches (up to [`BATCH_MAX`] records or [`BATCH_LINGER`]), each
//! applied in one database transaction together with the watermarks it brings the store to, and
//! only then committed to the group: a crash between the two replays a batch, which the store's
//! version guard makes harmless. Replays, restarts and re-balances therefore need no coordination.
//!
//! The store's watermarks, not the group's committed offsets, say what is indexed: where the group
//! would start a partition after what the store holds (a new or restored database, a store
//! pointed at another cluster's group), the indexer seeks back to the store's watermark first,
//! so nothing between them is skipped.
//!
//! A record this release cannot decode is not indexed; it is counted and logged with its position
//! (the subscription service dead-letters it on the audit topic, and `cardlink bus redeliver`
//! appends it again once a release reads it — the indexer then indexes the new copy).

use std::collections::BTreeMap;
use std::time::Duration;

use cardlink_bus::{BusError, Consumer, Record, Topic};
use cardlink_events::{Event, StatementStatus, TransactionKind};
use cardlink_history::{Batch, HistoryStore, StatementRow, StoreError, TransactionRow, Watermark};
use tokio::sync::watch;

/// The consumer group the indexers of one deployment share.
pub const GROUP: &str = "history-indexer";
/// Records applied in one database transaction at most.
pub const BATCH_MAX: usize = 500;
/// How long a batch waits for more records once it has one.
pub const BATCH_LINGER: Duration = Duration::from_millis(50);
/// How long a failed store write waits before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How often the lag behind the bus is measured.
pub const LAG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the indexer stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Per assigned (topic, partition): the next offset not yet in the store.
    pub applied: BTreeMap<(Topic, i32), i64>,
    /// Records on the assigned partitions not yet applied, at the last measurement (also the
    /// metric `cardlink.history.indexer_lag`).
    pub lag: Option<u64>,
    /// Whether the lag has been 0 at least once since start (the store was current then).
    pub caught_up: bool,
    /// The partitions the group gave this indexer, at the last measurement.
    pub assigned: Vec<(Topic, i32)>,
}

/// The name a topic's watermarks are stored under.
fn topic_name(topic: Topic) -> &'static str {
    topic.suffix()
}

/// Per (topic, partition) of `records`, the offset after the last of them.
fn reached(records: &[Record]) -> BTreeMap<(Topic, i32), i64> {
    let mut next = BTreeMap::new();
    for r in records {
        let n = next.entry((r.topic, r.partition)).or_insert(r.offset + 1);
        *n = (*n).max(r.offset + 1);
    }
    next
}

/// The store rows of `records`, and the watermarks they reach. Undecodable records are counted
/// and left out (see the module documentation).
pub fn batch_of(records: &[Record]) -> Batch {
    let mut batch = Batch::default();
    for record in records {
        let Some(account_key) = record.key_str() else {
            tracing::warn!(topic = ?record.topic, partition = record.partition, offset = record.offset,
                "event record without a key; not indexed");
            continue;
        };
        match cardlink_events::codec::decode(&record.payload) {
            Ok(Event::Transaction(t)) => batch.transactions.push(TransactionRow {
                account_key: account_key.to_owned(),
                transaction_id: t.issuer_transaction_id,
                occurred_at_micros: t.occurred_at.timestamp_micros(),
                billing_month: t.billing_month,
                kind: kind_number(t.kind),
                partition: record.partition,
                version: record.offset,
                payload: record.payload.clone(),
            }),
            Ok(Event::Statement(s)) => batch.statements.push(StatementRow {
                account_key: account_key.to_owned(),
                statement_id: s.statement_id,
                billing_month: s.billing_month,
                status: match s.status {
                    StatementStatus::Provisional => 1,
                    StatementStatus::Confirmed => 2,
                },
                partition: record.partition,
                version: record.offset,
                payload: record.payload.clone(),
            }),
            Err(e) => {
                cardlink_telemetry::undecodable_record(topic_name(record.topic), "not_indexed");
                tracing::error!(topic = ?record.topic, partition = record.partition, offset = record.offset,
                    error = %e, "event record not understood; not indexed");
            }
        }
    }
    batch.watermarks = reached(records)
        .into_iter()
        .map(|((topic, partition), next_offset)| Watermark {
            topic: topic_name(topic).to_owned(),
            partition,
            next_offset,
        })
        .collect();
    batch
}

/// The protobuf number of a transaction kind (what the store keeps).
fn kind_number(kind: TransactionKind) -> i32 {
    match kind {
        TransactionKind::Authorized => 1,
        TransactionKind::Posted => 2,
        TransactionKind::Reversed => 3,
        TransactionKind::Refunded => 4,
    }
}

/// Joins the group for the event topics and indexes until `shutdown` changes.
pub async fn run(
    store: impl HistoryStore,
    consumer: Consumer,
    progress: watch::Sender<Progress>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), IndexError> {
    // Dropping `consumer` afterwards leaves the group off the async workers (cardlink-bus).
    index(store, &consumer, progress, shutdown).await
}

async fn index(
    store: impl HistoryStore,
    consumer: &Consumer,
    progress: watch::Sender<Progress>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IndexError> {
    let mut stored = loop {
        match store.watermarks().await {
            Ok(marks) => break StoredPositions::from_watermarks(&marks),
            Err(e) => {
                tracing::warn!(error = %e, "reading the history store's watermarks failed; retrying");
                tokio::select! {
                    _ = shutdown.changed() => return Ok(()),
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                }
            }
        }
    };
    // What the store holds counts as applied: after a restart, a partition with nothing new
    // would otherwise count as lagging from its first record (its consumer position stays
    // unknown until a record arrives), and the service would stay unready.
    progress.send_modify(|p| p.applied.extend(stored.next.iter().map(|(k, v)| (*k, *v))));
    consumer.subscribe(&[Topic::Transactions, Topic::Statements])?;
    let watched = progress.subscribe();
    cardlink_telemetry::observe_indexer_lag(move || watched.borrow().lag);
    let mut lag_tick = tokio::time::interval(LAG_EVERY);
    lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = lag_tick.tick() => {
                stored.behind_the_group(consumer).await;
                measure_lag(consumer, &progress).await;
                // A full period of indexing before the next measurement, however long this one
                // took (on a busy broker, many partitions' watermarks take a while).
                lag_tick.reset();
                continue;
            }
            record = consumer.recv_retrying("history indexer") => record?,
        };
        let mut records = Vec::new();
        if stored.admit(consumer, &first).await {
            records.push(first);
        }
        let linger = tokio::time::sleep(BATCH_LINGER);
        tokio::pin!(linger);
        while records.len() < BATCH_MAX {
            tokio::select! {
                _ = &mut linger => break,
                record = consumer.recv_retrying("history indexer") => {
                    let record = record?;
                    if stored.admit(consumer, &record).await {
                        records.push(record);
                    }
                }
            }
        }
        if records.is_empty() {
            continue;
        }
        let batch = batch_of(&records);
        loop {
            match store.apply(&batch).await {
                Ok(applied) => {
                    tracing::debug!(written = applied.written, stale = applied.stale, "history batch applied");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "history store write failed; retrying");
                    tokio::select! {
                        _ = shutdown.changed() => return Ok(()),
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        }
        let positions: Vec<(Topic, i32, i64)> =
            reached(&records).into_iter().map(|((topic, partition), next)| (topic, partition, next)).collect();
        if let Err(e) = consumer.commit(&positions) {
            // The store has the batch; a lost commit only means it is read again.
            tracing::warn!(error = %e, "committing the indexer's position failed; the batch may be read again");
        }
        progress.send_modify(|p| {
            for (topic, partition, next) in &positions {
                p.applied.insert((*topic, *partition), *next);
                stored.applied(*topic, *partition, *next);
            }
        });
    }
}

/// What the store holds per partition, and the partitions being sought back to it.
#[derive(Debug, Default)]
struct StoredPositions {
    /// (topic, partition) → the store's watermark (the next offset not in the store).
    next: BTreeMap<(Topic, i32), i64>,
    /// Partitions sought back to the store's watermark; their records past it are passed over
    /// until the one at it arrives.
    seeking: BTreeMap<(Topic, i32), i64>,
}

impl StoredPositions {
    fn from_watermarks(marks: &[Watermark]) -> Self {
        let next = marks
            .iter()
            .filter_map(|w| {
                let topic =
                    Topic::from_suffix(&w.topic).filter(|t| matches!(t, Topic::Transactions | Topic::Statements))?;
                Some(((topic, w.partition), w.next_offset))
            })
            .collect();
        Self { next, seeking: BTreeMap::new() }
    }

    fn applied(&mut self, topic: Topic, partition: i32, next: i64) {
        let n = self.next.entry((topic, partition)).or_insert(next);
        *n = (*n).max(next);
    }

    /// Whether to index `record`: `false` if it lies past what the store holds (the group would
    /// skip the records between), in which case the partition is sought back to the store's
    /// watermark; `false` also for records still arriving from before that seek.
    async fn admit(&mut self, consumer: &Consumer, record: &Record) -> bool {
        let admitted = self.check(consumer, record).await;
        if admitted {
            // The batch it joins is applied (retried until it is) before anything else.
            self.applied(record.topic, record.partition, record.offset + 1);
        }
        admitted
    }

    async fn check(&mut self, consumer: &Consumer, record: &Record) -> bool {
        let key = (record.topic, record.partition);
        let stored = self.next.get(&key).copied().unwrap_or(0);
        if let Some(&target) = self.seeking.get(&key) {
            if record.offset > target {
                return false;
            }
            self.seeking.remove(&key);
            return true;
        }
        if record.offset <= stored {
            return true;
        }
        // Past the store: unless the records between are gone from the bus (retention), go back.
        let low = match consumer.watermarks(record.topic, record.partition).await {
            Ok((low, _)) => low,
            Err(e) => {
                tracing::warn!(error = %e, "reading a partition's low watermark failed; indexing on");
                return true;
            }
        };
        if stored < low {
            if record.offset > low {
                // The group starts after the earliest retained record: go back to that one.
                return self.seek(consumer, record, low).await;
            }
            return true;
        }
        self.seek(consumer, record, stored).await
    }

    async fn seek(&mut self, consumer: &Consumer, record: &Record, to: i64) -> bool {
        !self.seek_partition(consumer, record.topic, record.partition, record.offset, to).await
    }

    /// Seeks `partition` back from `from` to `to`; whether it did.
    async fn seek_partition(&mut self, consumer: &Consumer, topic: Topic, partition: i32, from: i64, to: i64) -> bool {
        tracing::info!(
            ?topic,
            partition,
            from,
            to,
            "the store holds less of this partition than the group committed; indexing from the store's position"
        );
        match consumer.seek(topic, partition, to).await {
            Ok(()) => {
                self.seeking.insert((topic, partition), to);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "seeking back to the store's position failed; indexing on from here");
                false
            }
        }
    }

    /// Partitions no record arrives on (the group committed their end) are checked here: where
    /// the group committed past what the store holds, they are sought back too.
    async fn behind_the_group(&mut self, consumer: &Consumer) {
        let Ok(committed) = consumer.committed().await else { return };
        for (topic, partition, offset) in committed {
            let Some(committed) = offset else { continue };
            let stored = self.next.get(&(topic, partition)).copied().unwrap_or(0);
            if committed <= stored || self.seeking.contains_key(&(topic, partition)) {
                continue;
            }
            let Ok((low, _)) = consumer.watermarks(topic, partition).await else { continue };
            let to = stored.max(low);
            if committed > to {
                self.seek_partition(consumer, topic, partition, committed, to).await;
            }
        }
    }
}

/// Measures how many records of the assigned partitions are not in the store yet. A partition
/// this indexer has applied nothing of since it got it counts from where it reads (the group's
/// committed offset, or what it fetched since).
async fn measure_lag(consumer: &Consumer, progress: &watch::Sender<Progress>) {
    let Ok(positions) = consumer.positions() else { return };
    let assigned: Vec<(Topic, i32)> = positions.iter().map(|(t, p, _)| (*t, *p)).collect();
    // Asked all at once: one after the other, they took 1.7 s on a busy broker (16 partitions).
    let marks = futures::future::join_all(assigned.iter().map(|&(t, p)| consumer.watermarks(t, p))).await;
    let mut lag = 0u64;
    for ((topic, partition, position), marks) in positions.into_iter().zip(marks) {
        let Ok((low, high)) = marks else { return };
        // Both are lower bounds of what the store holds (another replica may have applied more
        // since the store's watermark was read): the larger counts.
        let applied = progress.borrow().applied.get(&(topic, partition)).copied();
        let from = applied.max(position).unwrap_or(low).max(low);
        lag += u64::try_from(high - from).unwrap_or(0);
    }
    progress.send_modify(|p| {
        p.lag = Some(lag);
        p.caught_up |= lag == 0;
        p.assigned = assigned;
    });
}

#[cfg(test)]
mod tests {
    use cardlink_bus::RecordHeaders;

    use super::*;

    fn record(offset: i64, key: Option<&str>, payload: Vec<u8>) -> Record {
        Record {
            topic: Topic::Transactions,
            partition: 2,
            offset,
            key: key.map(|k| k.as_bytes().to_vec()),
            payload,
            headers: RecordHeaders::default(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn a_batch_holds_what_it_could_read_and_its_watermark_passes_what_it_could_not() {
        let event = Event::Transaction(cardlink_events::samples::transaction("iss-a", "acct-1", 7));
        let encoded = cardlink_events::encode(&event).unwrap().bytes;
        let batch = batch_of(&[
            record(10, Some("iss-a/acct-1"), encoded.clone()),
            record(11, Some("iss-a/acct-1"), b"garbage".to_vec()),
            record(12, None, encoded),
        ]);
        assert_eq!(batch.transactions.len(), 1);
        let row = &batch.transactions[0];
        assert_eq!((row.account_key.as_str(), row.transaction_id.as_str(), row.version), ("iss-a/acct-1", "tx-7", 10));
        assert_eq!(row.kind, 2);
        assert_eq!(
            batch.watermarks,
            vec![Watermark { topic: "transactions.v1".into(), partition: 2, next_offset: 13 }]
        );
    }
}
