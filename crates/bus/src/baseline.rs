//! Plain rdkafka clients with no cardlink logic in them: the in-run baselines the benchmarks set
//! cardlink's readers and writers against (docs/benchmarks.md). No service uses this module.
//!
//! A baseline uses the same client settings as cardlink's own clients — [`drain`] and [`tail`]
//! those of [`Consumer::new`](crate::Consumer::new) (fetch pace, pre-fetch bound), [`produce`] those of
//! [`Producer`](crate::Producer) (acks=all, idempotence, lz4, linger) — and does nothing around a
//! read or a send, so the gap between it and cardlink on the same records, in the same run, is
//! cardlink's own cost.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::BusConfig;
use crate::consumer::LATENCY_PACE;
use crate::error::BusError;
use crate::polled::partition_watermarks;
use crate::producer::ENQUEUE_WAIT;
use crate::topics::{Catalogue, Topic};

/// A read stops with an error after this long without a record while records remain.
pub const STALL_LIMIT: Duration = Duration::from_secs(30);

/// What [`drain`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub records: u64,
    pub payload_bytes: u64,
}

/// Reads every partition of `topic` from its beginning to the end it has when the read starts,
/// with a plain consumer polled on a thread of its own.
pub async fn drain(config: &BusConfig, topic: Topic) -> Result<Drained, BusError> {
    config.validate()?;
    let name = Catalogue::new(config).name(topic).to_owned();
    let cfg = crate::consumer::client_settings(config, "baseline", LATENCY_PACE, None);
    let kafka = |operation: &'static str| move |source| BusError::Kafka { operation, source };
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = cfg.create().map_err(kafka("create consumer"))?;
        let mut ends = HashMap::new();
        let mut list = TopicPartitionList::new();
        for (p, low, high) in partition_watermarks(&consumer, &name)? {
            if high > low {
                ends.insert(p, high);
                list.add_partition_offset(&name, p, Offset::Beginning).map_err(kafka("assign"))?;
            }
        }
        consumer.assign(&list).map_err(kafka("assign"))?;
        let mut drained = Drained::default();
        let mut last = std::time::Instant::now();
        while !ends.is_empty() {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    last = std::time::Instant::now();
                    drained.records += 1;
                    drained.payload_bytes += message.payload().map_or(0, |p| p.len() as u64);
                    if ends.get(&message.partition()).is_some_and(|end| message.offset() + 1 >= *end) {
                        ends.remove(&message.partition());
                    }
                }
                Some(Err(source)) => return Err(BusError::Kafka { operation: "consume", source }),
                None if last.elapsed() > STALL_LIMIT => {
                    return Err(BusError::Task(format!(
                        "baseline read of {name} stalled: nothing for {STALL_LIMIT:?} with {} partitions unfinished",
                        ends.len()
                    )));
                }
                None => {}
            }
        }
        Ok(drained)
    })
    .await
    .map_err(|e| BusError::Task(e.to_string()))?
}

/// A plain consumer reading live records on a thread of its own ([`tail`]).
#[derive(Debug)]
pub struct Tail {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64, BusError>>,
}

impl Tail {
    /// Stops reading; how many records it read, or why it stopped earlier.
    pub async fn finish(self) -> Result<u64, BusError> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| BusError::Task(e.to_string()))?
            .map_err(|_| BusError::Task("the baseline tail panicked".into()))?
    }
}

/// Reads every partition of `topics` from the end each has when the call returns, handing each
/// record's payload and broker timestamp (ms since the epoch) to `seen` on the reading thread,
/// until [`Tail::finish`]. With [`Consumer::new`](crate::Consumer::new)'s settings: the bus's own
/// publish→receive latency, beside cardlink's.
pub async fn tail<F>(config: &BusConfig, topics: &[Topic], mut seen: F) -> Result<Tail, BusError>
where
    F: FnMut(&[u8], Option<i64>) + Send + 'static,
{
    config.validate()?;
    let catalogue = Catalogue::new(config);
    let names: Vec<String> = topics.iter().map(|t| catalogue.name(*t).to_owned()).collect();
    let cfg = crate::consumer::client_settings(config, "baseline-tail", LATENCY_PACE, None);
    let kafka = |operation: &'static str| move |source| BusError::Kafka { operation, source };
    let consumer = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = cfg.create().map_err(kafka("create consumer"))?;
        let mut list = TopicPartitionList::new();
        for name in &names {
            for (p, _, high) in partition_watermarks(&consumer, name)? {
                list.add_partition_offset(name, p, Offset::Offset(high)).map_err(kafka("assign"))?;
            }
        }
        consumer.assign(&list).map_err(kafka("assign"))?;
        Ok::<_, BusError>(consumer)
    })
    .await
    .map_err(|e| BusError::Task(e.to_string()))??;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("baseline-tail".into())
        .spawn(move || {
            let mut read = 0;
            while !stopping.load(Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(50)) {
                    Some(Ok(message)) => {
                        read += 1;
                        seen(message.payload().unwrap_or_default(), message.timestamp().to_millis());
                    }
                    Some(Err(source)) => return Err(BusError::Kafka { operation: "consume", source }),
                    None => {}
                }
            }
            Ok(read)
        })
        .map_err(|e| BusError::Task(e.to_string()))?;
    Ok(Tail { stop, thread })
}

/// Writes `records` (key, payload) to `topic` with a plain producer, `in_flight` at a time, each
/// acknowledged by the broker before it counts. No headers: cardlink's (event type, id, schema
/// fingerprint) are part of what it costs. Returns how many were acknowledged.
pub async fn produce(
    config: &BusConfig,
    topic: Topic,
    records: &[(String, Vec<u8>)],
    in_flight: usize,
) -> Result<u64, BusError> {
    config.validate()?;
    let name = Catalogue::new(config).name(topic).to_owned();
    let producer: FutureProducer = crate::producer::client_settings(config, "baseline-producer")
        .create()
        .map_err(|source| BusError::Kafka { operation: "create producer", source })?;
    let acknowledged = futures::stream::iter(records)
        .map(|(key, payload)| {
            let (producer, name) = (&producer, &name);
            async move { producer.send(FutureRecord::to(name).key(key).payload(payload), ENQUEUE_WAIT).await }
        })
        .buffer_unordered(in_flight.max(1))
        .fold(Ok(0u64), |n, sent| async move {
            match (n, sent) {
                (Ok(n), Ok(_)) => Ok(n + 1),
                (Ok(_), Err((source, _))) => Err(BusError::Kafka { operation: "produce", source }),
                (Err(e), _) => Err(e),
            }
        })
        .await?;
    Ok(acknowledged)
}
