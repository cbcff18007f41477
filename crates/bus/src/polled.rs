//! A reader polled on a thread of its own: for the one reader per process that reads every record
//! on the bus (the subscription hub).
//!
//! [`Consumer`](crate::Consumer) hands records to async tasks: each read registers a waker, polls
//! librdkafka's queue and returns through the runtime. For a reader of a few records that is
//! nothing; for the hub, which reads the whole bus, it was most of what reading cost (the hub's
//! consumer alone read 147,000 records/s where a plain consumer polled on a thread read 262,000 —
//! docs/benchmarks.md, "The whole bus at peak"). A [`PolledConsumer`] is that plain consumer: the
//! caller polls it on a thread it owns, with a timeout, and handles each record there.
//!
//! Same client settings as [`Consumer::new`](crate::Consumer::new) (fetch pace, pre-fetch bound),
//! same statistics and messaging metrics. Its calls block: use it only on its own thread.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::message::Message as _;

use crate::config::BusConfig;
use crate::consumer::{LATENCY_PACE, METADATA_TIMEOUT, RETRY_AFTER, RecordRef, StartAt, assignment, client_settings};
use crate::error::BusError;
use crate::telemetry::{MessagingMetrics, StatsContext};
use crate::topics::{Catalogue, Topic};

/// A consumer of assigned partitions, polled by its caller on a thread of its own.
pub struct PolledConsumer {
    inner: BaseConsumer<StatsContext>,
    catalogue: Catalogue,
    metrics: MessagingMetrics,
}

impl std::fmt::Debug for PolledConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolledConsumer").finish_non_exhaustive()
    }
}

impl PolledConsumer {
    /// A consumer for `purpose` (shows in the client id), with [`Consumer::new`](crate::Consumer::new)'s
    /// settings. Creating it does not block; everything else does.
    pub fn new(config: &BusConfig, purpose: &str) -> Result<Self, BusError> {
        config.validate()?;
        let inner = client_settings(config, purpose, LATENCY_PACE, None)
            .create_with_context(StatsContext::new(purpose))
            .map_err(|source| BusError::Kafka { operation: "create consumer", source })?;
        let catalogue = Catalogue::new(config);
        let metrics = MessagingMetrics::new(catalogue.specs().iter().map(|s| s.name.clone()));
        Ok(Self { inner, catalogue, metrics })
    }

    /// Every partition of `topic` with its (low, high) watermarks, as the cluster reports them now.
    pub fn watermarks(&self, topic: Topic) -> Result<Vec<(i32, i64, i64)>, BusError> {
        partition_watermarks(&self.inner, self.catalogue.name(topic))
    }

    /// Replaces the assignment: read exactly these partitions from these positions.
    pub fn assign(&self, positions: &[(Topic, i32, StartAt)]) -> Result<(), BusError> {
        let list = assignment(&self.catalogue, positions)?;
        self.inner.assign(&list).map_err(|source| BusError::Kafka { operation: "assign", source })
    }

    /// The next record of the assigned partitions, waiting at most `wait`; `None` if none came.
    /// An error that retrying can fix (a broker restarting, a timeout) is logged as `reader`'s
    /// and answered `None` after [`RETRY_AFTER`]: the position is kept, nothing is skipped.
    pub fn poll(&self, wait: Duration, reader: &'static str) -> Option<Result<RecordRef<'_>, BusError>> {
        let message = match self.inner.poll(wait)? {
            Ok(message) => message,
            Err(source) => {
                let error = BusError::Kafka { operation: "consume", source };
                if !error.is_retriable() {
                    return Some(Err(error));
                }
                tracing::warn!(reader, %error, "could not read from Kafka; retrying");
                std::thread::sleep(RETRY_AFTER);
                return None;
            }
        };
        let topic_name = message.topic();
        let Some(topic) = self.catalogue.topic_named(topic_name) else {
            return Some(Err(BusError::UnknownTopic(topic_name.to_owned())));
        };
        self.metrics.consumed(topic_name);
        Some(Ok(RecordRef::new(message, topic)))
    }
}

/// Every partition of topic `name` with its (low, high) watermarks, as the cluster reports them
/// now, asked through a consumer polled on its caller's thread (this one, the baselines').
pub(crate) fn partition_watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    name: &str,
) -> Result<Vec<(i32, i64, i64)>, BusError> {
    let metadata = consumer
        .fetch_metadata(Some(name), METADATA_TIMEOUT)
        .map_err(|source| BusError::kafka("fetch metadata", source, METADATA_TIMEOUT, name))?;
    let partitions = match metadata.topics().iter().find(|t| t.name() == name) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => t.partitions().len(),
        _ => return Err(BusError::UnknownTopic(name.to_owned())),
    };
    (0..i32::try_from(partitions).unwrap_or(i32::MAX))
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(name, p, METADATA_TIMEOUT)
                .map_err(|source| BusError::kafka("fetch watermarks", source, METADATA_TIMEOUT, name))?;
            Ok((p, low, high))
        })
        .collect()
}
