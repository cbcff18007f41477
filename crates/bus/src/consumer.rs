//! Reading the bus by manual partition assignment.
//!
//! cardlink readers decide themselves which partitions they read and from where (a cursor, the
//! beginning of a compacted topic, the live end). There is no consumer-group membership, so no
//! rebalancing pauses the hot path and no offsets are committed by the client; positions that
//! must survive are stored by the services that own them.
//!
//! Memory is bounded: librdkafka pre-fetches at most `PREFETCH_MAX_KBYTES` per consumer.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::BusConfig;
use crate::error::BusError;
use crate::headers::RecordHeaders;
use crate::telemetry::{MessagingMetrics, StatsContext};
use crate::topics::{Catalogue, Topic};

/// Bound of librdkafka's pre-fetch queue per consumer, in KiB.
pub const PREFETCH_MAX_KBYTES: u32 = 16 * 1024;
/// How long librdkafka waits before it looks again at a partition whose pre-fetch queue was full.
/// Its default (1 s) stalls a reader that drains a full queue faster than that: it then waits for
/// the rest of the second with nothing to read.
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// How long metadata and watermark queries may take.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to start reading a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record still retained.
    Beginning,
    /// Only records written from now on.
    End,
    /// This offset (the next record to read).
    Offset(i64),
}

impl StartAt {
    fn to_kafka(self) -> Offset {
        match self {
            Self::Beginning => Offset::Beginning,
            Self::End => Offset::End,
            Self::Offset(o) => Offset::Offset(o),
        }
    }
}

/// One record read from the bus, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: RecordHeaders,
    /// Broker or producer timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// The key as text, if it is UTF-8 (cardlink's keys always are).
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(self.key.as_deref()?).ok()
    }

    /// The issuer of an event record, from its `issuer_id/account_ref` key.
    pub fn issuer_id(&self) -> Option<&str> {
        Some(self.key_str()?.split_once('/')?.0)
    }
}

/// One record as read, borrowed from its consumer until the next read: key and payload are not
/// copied, and the headers are parsed only when asked for. For a reader that looks at most
/// records by key only — the subscription hub passes over every record nobody consented for
/// without parsing its headers (docs/benchmarks.md, "The whole bus at peak").
pub struct RecordRef<'a> {
    message: BorrowedMessage<'a>,
    topic: Topic,
}

impl std::fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordRef")
            .field("topic", &self.topic)
            .field("partition", &self.partition())
            .field("offset", &self.offset())
            .finish_non_exhaustive()
    }
}

impl<'a> RecordRef<'a> {
    pub(crate) fn new(message: BorrowedMessage<'a>, topic: Topic) -> Self {
        Self { message, topic }
    }
}

impl RecordRef<'_> {
    pub fn topic(&self) -> Topic {
        self.topic
    }

    pub fn partition(&self) -> i32 {
        self.message.partition()
    }

    pub fn offset(&self) -> i64 {
        self.message.offset()
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.message.key()
    }

    /// The key as text, if it is UTF-8 (cardlink's keys always are).
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(self.key()?).ok()
    }

    /// The issuer of an event record, from its `issuer_id/account_ref` key.
    pub fn issuer_id(&self) -> Option<&str> {
        Some(self.key_str()?.split_once('/')?.0)
    }

    pub fn payload(&self) -> &[u8] {
        self.message.payload().unwrap_or_default()
    }

    /// Broker or producer timestamp, milliseconds since the epoch.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.message.timestamp().to_millis()
    }

    /// The headers, parsed now (librdkafka parses them on first access).
    pub fn headers(&self) -> RecordHeaders {
        RecordHeaders::from_kafka(self.message.headers())
    }

    /// One header's value as text, without parsing the others (the first, if repeated).
    pub fn header(&self, key: &str) -> Option<&str> {
        use rdkafka::message::Headers as _;
        let value = self.message.headers()?.iter().find(|h| h.key == key)?.value?;
        std::str::from_utf8(value).ok()
    }

    /// An owned copy, headers parsed.
    pub fn to_record(&self) -> Record {
        Record {
            topic: self.topic,
            partition: self.partition(),
            offset: self.offset(),
            key: self.key().map(<[u8]>::to_vec),
            payload: self.payload().to_vec(),
            headers: self.headers(),
            timestamp_ms: self.timestamp_ms(),
        }
    }
}

/// A reader of assigned partitions.
pub struct Consumer {
    inner: Arc<StreamConsumer<StatsContext>>,
    catalogue: Arc<Catalogue>,
    metrics: MessagingMetrics,
    /// A member of a consumer group: closing it leaves the group (see `Drop`).
    group_member: bool,
}

/// How long a dropped group member is given to leave its group.
const LEAVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for Consumer {
    /// Closing a group member leaves its group, which waits on the broker (librdkafka's close
    /// blocks): that happens on a thread of its own, never on the async worker that dropped it —
    /// a task cancelled at shutdown must not stall the runtime. The thread waits until it holds
    /// the last reference (calls running off the workers may hold one briefly).
    fn drop(&mut self) {
        if !self.group_member {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new().name("kafka-leave".into()).spawn(move || {
            let deadline = std::time::Instant::now() + LEAVE_WITHIN;
            while Arc::strong_count(&inner) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            drop(inner);
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread to leave the consumer group on; leaving here");
        }
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

/// The fetch pace of [`Consumer::new`]: a fetch returns as soon as a record is there and waits at
/// most 10 ms otherwise.
pub(crate) const LATENCY_PACE: &[(&str, &str)] = &[("fetch.wait.max.ms", "10")];

/// The librdkafka settings of a consumer for `purpose` at `pace`, in `group` if it is a group
/// member (else manually assigned): cardlink's consumers and the plain baselines
/// (`crate::baseline`) alike, so a baseline cannot drift from what it is compared against.
pub(crate) fn client_settings(
    config: &BusConfig,
    purpose: &str,
    pace: &[(&str, &str)],
    group: Option<String>,
) -> rdkafka::ClientConfig {
    let mut cfg = config.client_config(purpose);
    // librdkafka wants a group id even for manual assignment; with auto-commit and offset
    // storing off, such a group is never joined and nothing is committed.
    let reset = if group.is_some() { "earliest" } else { "error" };
    cfg.set("group.id", group.unwrap_or_else(|| format!("{}-{purpose}", config.client_id)))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", reset);
    // Defaults an operator may tune through the librdkafka settings (`CARDLINK_KAFKA__*`): the
    // fetch pace, the pre-fetch bound that keeps memory per consumer bounded, and how soon a
    // partition whose pre-fetch queue was full is fetched again.
    let prefetch = PREFETCH_MAX_KBYTES.to_string();
    let defaults =
        [("queued.max.messages.kbytes", prefetch.as_str()), ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)];
    for &(key, value) in defaults.iter().chain(pace) {
        config.set_default(&mut cfg, key, value);
    }
    cfg
}

impl Consumer {
    /// A consumer for `purpose` (shows in the client id, e.g. `consent-view`), tuned for
    /// latency: a fetch returns as soon as a record is there, and waits at most 10 ms otherwise.
    pub fn new(config: &BusConfig, purpose: &str) -> Result<Self, BusError> {
        Self::build(config, purpose, LATENCY_PACE)
    }

    /// A consumer for a reader that follows busy topics in the background and can be a moment
    /// behind (the ingest's duplicate index, the registry's publishing activity): a fetch waits
    /// for 64 KiB or 100 ms, so at high volume it makes a few large round trips instead of many
    /// small ones, which costs the broker and this process less.
    pub fn tailer(config: &BusConfig, purpose: &str) -> Result<Self, BusError> {
        Self::build(config, purpose, &[("fetch.wait.max.ms", "100"), ("fetch.min.bytes", "65536")])
    }

    /// A member of the consumer group `group` (the same on every replica, so the replicas share
    /// the partitions of what they [`subscribe`](Self::subscribe) to). Each partition starts
    /// where the group [committed](Self::commit), or at its earliest record if it never did. A
    /// background reader's pace ([`Consumer::tailer`]).
    pub fn group_member(config: &BusConfig, group: &str) -> Result<Self, BusError> {
        let pace = [("fetch.wait.max.ms", "100"), ("fetch.min.bytes", "65536")];
        // The topic prefix keeps deployments sharing a cluster in groups of their own.
        Self::build_in(config, group, &pace, Some(format!("{}{group}", config.topic_prefix)))
    }

    fn build(config: &BusConfig, purpose: &str, pace: &[(&str, &str)]) -> Result<Self, BusError> {
        Self::build_in(config, purpose, pace, None)
    }

    fn build_in(
        config: &BusConfig,
        purpose: &str,
        pace: &[(&str, &str)],
        group: Option<String>,
    ) -> Result<Self, BusError> {
        config.validate()?;
        let group_member = group.is_some();
        let cfg = client_settings(config, purpose, pace, group);
        let inner = cfg
            .create_with_context(StatsContext::new(purpose))
            .map_err(|source| BusError::Kafka { operation: "create consumer", source })?;
        let catalogue = Catalogue::new(config);
        let metrics = MessagingMetrics::new(catalogue.specs().iter().map(|s| s.name.clone()));
        Ok(Self { inner: Arc::new(inner), catalogue: Arc::new(catalogue), metrics, group_member })
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The number of partitions of `topic` on the cluster.
    pub async fn partition_count(&self, topic: Topic) -> Result<i32, BusError> {
        let name = self.catalogue.name(topic).to_owned();
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let metadata = inner
                .fetch_metadata(Some(&name), METADATA_TIMEOUT)
                .map_err(|source| BusError::kafka("fetch metadata", source, METADATA_TIMEOUT, &name))?;
            let found = metadata.topics().iter().find(|t| t.name() == name);
            match found {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
                _ => Err(BusError::UnknownTopic(name)),
            }
        })
        .await
    }

    /// Replaces the assignment: read exactly these partitions from these positions.
    pub fn assign(&self, positions: &[(Topic, i32, StartAt)]) -> Result<(), BusError> {
        let list = assignment(&self.catalogue, positions)?;
        self.inner.assign(&list).map_err(|source| BusError::Kafka { operation: "assign", source })
    }

    /// Joins the consumer group (see [`Consumer::group_member`]) for `topics`: the group assigns
    /// this member its share of their partitions, and re-assigns them as members come and go.
    pub fn subscribe(&self, topics: &[Topic]) -> Result<(), BusError> {
        let names: Vec<&str> = topics.iter().map(|t| self.catalogue.name(*t)).collect();
        self.inner.subscribe(&names).map_err(|source| BusError::Kafka { operation: "subscribe", source })
    }

    /// Records for the group that every record before each `next_offset` is done with, so the
    /// partition's next owner starts there. Asynchronous: a commit lost to a crash means some
    /// records are read again, which a reader that applies idempotently can afford.
    pub fn commit(&self, positions: &[(Topic, i32, i64)]) -> Result<(), BusError> {
        let mut list = TopicPartitionList::with_capacity(positions.len());
        for &(topic, partition, next_offset) in positions {
            list.add_partition_offset(self.catalogue.name(topic), partition, Offset::Offset(next_offset))
                .map_err(|source| BusError::Kafka { operation: "commit", source })?;
        }
        self.inner
            .commit(&list, rdkafka::consumer::CommitMode::Async)
            .map_err(|source| BusError::Kafka { operation: "commit", source })
    }

    /// Goes back (or forward) on one partition it is reading: its next record is the one at
    /// `offset` (the earliest retained, if that one is gone). Records fetched ahead of it are
    /// discarded. Waits (off the async workers) for at most a second.
    pub async fn seek(&self, topic: Topic, partition: i32, offset: i64) -> Result<(), BusError> {
        let name = self.catalogue.name(topic).to_owned();
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            inner
                .seek(&name, partition, Offset::Offset(offset), std::time::Duration::from_secs(1))
                .map_err(|source| BusError::Kafka { operation: "seek", source })
        })
        .await
    }

    /// The partitions this consumer reads now (its share of the group's, when a group member).
    pub fn assignment(&self) -> Result<Vec<(Topic, i32)>, BusError> {
        let list = self.inner.assignment().map_err(|source| BusError::Kafka { operation: "assignment", source })?;
        Ok(list
            .elements()
            .iter()
            .filter_map(|e| Some((self.catalogue.topic_named(e.topic())?, e.partition())))
            .collect())
    }

    /// Per assigned partition, the offset this consumer reads next (records fetched ahead but
    /// not yet received count as read); `None` before the first fetch of the partition.
    pub fn positions(&self) -> Result<Vec<(Topic, i32, Option<i64>)>, BusError> {
        let list = self.inner.position().map_err(|source| BusError::Kafka { operation: "position", source })?;
        Ok(offsets_of(&self.catalogue, &list))
    }

    /// Assigns every partition of `topic`, each from `start`.
    pub async fn assign_all(&self, topic: Topic, start: StartAt) -> Result<i32, BusError> {
        let partitions = self.partition_count(topic).await?;
        let positions: Vec<_> = (0..partitions).map(|p| (topic, p, start)).collect();
        self.assign(&positions)?;
        Ok(partitions)
    }

    /// The next record of the assigned partitions. Waits while there is none.
    pub async fn recv(&self) -> Result<Record, BusError> {
        Ok(self.recv_ref().await?.to_record())
    }

    /// The next record, borrowed ([`RecordRef`]): nothing copied or parsed that the caller does
    /// not ask for. Waits while there is none.
    pub async fn recv_ref(&self) -> Result<RecordRef<'_>, BusError> {
        let message = self.inner.recv().await.map_err(|source| BusError::Kafka { operation: "consume", source })?;
        let topic_name = message.topic();
        let topic =
            self.catalogue.topic_named(topic_name).ok_or_else(|| BusError::UnknownTopic(topic_name.to_owned()))?;
        self.metrics.consumed(topic_name);
        Ok(RecordRef::new(message, topic))
    }

    /// [`Consumer::recv`] for a long-running reader: errors that retrying can fix (a broker
    /// restarting, a timeout) are logged as `reader`'s and retried after [`RETRY_AFTER`]; only
    /// the others are returned. The position is kept throughout, so nothing is skipped.
    pub async fn recv_retrying(&self, reader: &'static str) -> Result<Record, BusError> {
        Ok(self.recv_ref_retrying(reader).await?.to_record())
    }

    /// [`Consumer::recv_retrying`], borrowed ([`RecordRef`]).
    pub async fn recv_ref_retrying(&self, reader: &'static str) -> Result<RecordRef<'_>, BusError> {
        loop {
            match self.recv_ref().await {
                Err(e) if e.is_retriable() => {
                    tracing::warn!(reader, error = %e, "could not read from Kafka; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                other => return other,
            }
        }
    }

    /// For each partition of `topic`, the offset of the first record at or after `timestamp_ms`
    /// (the end offset where there is none).
    pub async fn offsets_for_time(&self, topic: Topic, timestamp_ms: i64) -> Result<Vec<(i32, i64)>, BusError> {
        let partitions = self.partition_count(topic).await?;
        let name = self.catalogue.name(topic).to_owned();
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let mut query = TopicPartitionList::with_capacity(partitions as usize);
            for p in 0..partitions {
                query
                    .add_partition_offset(&name, p, Offset::Offset(timestamp_ms))
                    .map_err(|source| BusError::Kafka { operation: "offsets for time", source })?;
            }
            let found = inner
                .offsets_for_times(query, METADATA_TIMEOUT)
                .map_err(|source| BusError::kafka("offsets for time", source, METADATA_TIMEOUT, &name))?;
            let mut out = Vec::with_capacity(partitions as usize);
            for element in found.elements() {
                let offset = match element.offset() {
                    Offset::Offset(o) => o,
                    // No record at or after the time: start at the end.
                    _ => {
                        inner
                            .fetch_watermarks(&name, element.partition(), METADATA_TIMEOUT)
                            .map_err(|source| BusError::kafka("fetch watermarks", source, METADATA_TIMEOUT, &name))?
                            .1
                    }
                };
                out.push((element.partition(), offset));
            }
            Ok(out)
        })
        .await
    }

    /// Per assigned partition, the offset its group committed (`None` where it committed none).
    pub async fn committed(&self) -> Result<Vec<(Topic, i32, Option<i64>)>, BusError> {
        let inner = Arc::clone(&self.inner);
        let catalogue = Arc::clone(&self.catalogue);
        blocking(move || {
            let list = inner
                .committed(METADATA_TIMEOUT)
                .map_err(|source| BusError::Kafka { operation: "committed offsets", source })?;
            Ok(offsets_of(&catalogue, &list))
        })
        .await
    }

    /// The (low, high) watermarks of a partition: the oldest retained offset and the offset the
    /// next record will get.
    pub async fn watermarks(&self, topic: Topic, partition: i32) -> Result<(i64, i64), BusError> {
        let name = self.catalogue.name(topic).to_owned();
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            inner
                .fetch_watermarks(&name, partition, METADATA_TIMEOUT)
                .map_err(|source| BusError::kafka("fetch watermarks", source, METADATA_TIMEOUT, &name))
        })
        .await
    }
}

/// How long a long-running reader waits after a transient Kafka error before reading again.
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// `positions` as the partition list an assignment takes.
pub(crate) fn assignment(
    catalogue: &Catalogue,
    positions: &[(Topic, i32, StartAt)],
) -> Result<TopicPartitionList, BusError> {
    let mut list = TopicPartitionList::with_capacity(positions.len());
    for &(topic, partition, start) in positions {
        list.add_partition_offset(catalogue.name(topic), partition, start.to_kafka())
            .map_err(|source| BusError::Kafka { operation: "assign", source })?;
    }
    Ok(list)
}

/// Each (topic, partition, offset) of a partition list; `None` where it holds no offset.
fn offsets_of(catalogue: &Catalogue, list: &TopicPartitionList) -> Vec<(Topic, i32, Option<i64>)> {
    list.elements()
        .iter()
        .filter_map(|e| {
            let offset = match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            };
            Some((catalogue.topic_named(e.topic())?, e.partition(), offset))
        })
        .collect()
}

/// Runs a blocking librdkafka call off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, BusError> + Send + 'static) -> Result<T, BusError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BusError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_looks_again_at_a_full_prefetch_queue_within_milliseconds_unless_the_operator_says_otherwise() {
        let config = BusConfig::default();
        let cfg = client_settings(&config, "test", LATENCY_PACE, None);
        assert_eq!(cfg.get("fetch.queue.backoff.ms"), Some(FETCH_QUEUE_BACKOFF_MS));
        assert_eq!(cfg.get("queued.max.messages.kbytes"), Some(PREFETCH_MAX_KBYTES.to_string().as_str()));
        assert_eq!(cfg.get("fetch.wait.max.ms"), Some("10"));

        let mut tuned = BusConfig::default();
        tuned.librdkafka.insert("fetch.queue.backoff.ms".into(), "250".into());
        let cfg = client_settings(&tuned, "test", LATENCY_PACE, None);
        assert_eq!(cfg.get("fetch.queue.backoff.ms"), Some("250"));
    }

    #[test]
    fn how_a_reader_reads_is_not_an_operator_setting() {
        for key in ["group.id", "auto.offset.reset", "enable.partition.eof", "enable.auto.commit"] {
            let mut config = BusConfig::default();
            config.librdkafka.insert(key.into(), "x".into());
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("librdkafka.{key}")), "{err}");
        }
    }
}
