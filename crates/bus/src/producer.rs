//! Publishing to the bus.
//!
//! Every send is `acks=all` with idempotence on, and [`Producer::send`] resolves only when Kafka
//! has acknowledged the record (or failed to within `delivery_timeout`): an OK from cardlink
//! means the record is durable. librdkafka retries transient failures internally; idempotence
//! keeps those retries from writing a record twice.
//!
//! A call of many records ([`Producer::send_all`], [`Producer::publish_all`]) hands them to
//! librdkafka in order and waits once for all their acknowledgements: librdkafka's delivery
//! callback fills a slot per record and wakes the caller when the last one is in, instead of a
//! channel, a future and a wake per record (the ingest profile, docs/benchmarks.md).
//!
//! Backpressure: librdkafka's local queue is bounded (by default `QUEUE_MAX_KBYTES`,
//! `QUEUE_MAX_MESSAGES`; an operator may change the bounds).
//! When it is full, a send waits up to `ENQUEUE_WAIT` for room and then fails with
//! [`BusError::QueueFull`], so callers slow down instead of buffering without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cardlink_events::{AuditEvent, Event, RecordType, codec};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use tokio::sync::{Notify, oneshot};

use crate::config::BusConfig;
use crate::error::BusError;
use crate::headers::RecordHeaders;
use crate::telemetry::{MessagingMetrics, StatsContext};
use crate::topics::{Catalogue, Topic};

/// Bound of librdkafka's local send queue, in KiB.
pub const QUEUE_MAX_KBYTES: u32 = 64 * 1024;
/// Bound of librdkafka's local send queue, in records.
pub const QUEUE_MAX_MESSAGES: u32 = 100_000;
/// How long librdkafka waits for a batch to fill before sending it, by default. A call's records
/// are handed over together and fill batches at once, so a longer wait mostly delayed every
/// event: at 5 ms the latency benchmark's p50 was 4–6 ms higher, with ingest's throughput the
/// same (docs/benchmarks.md, "Producer linger").
pub const LINGER_MS: &str = "1";
/// How long a send waits for room in a full local queue.
pub const ENQUEUE_WAIT: Duration = Duration::from_secs(5);
/// How long a send waits before trying a full local queue again.
const ENQUEUE_RETRY: Duration = Duration::from_millis(10);
/// Headroom over the largest value for key and headers in Kafka's per-message limit.
const FRAMING_HEADROOM: usize = 4096;

/// A record to publish.
#[derive(Debug)]
pub struct OutboundRecord<'a> {
    pub topic: Topic,
    /// Records with the same key go to the same partition, in order.
    pub key: &'a [u8],
    pub payload: &'a [u8],
    pub headers: &'a RecordHeaders,
}

/// Where Kafka stored a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
}

/// What librdkafka said about one record: (partition, offset), or why not.
type Acked = Result<(i32, i64), KafkaError>;

/// Where librdkafka's delivery callback reports one record.
#[derive(Debug)]
pub enum Ack {
    /// A record sent on its own.
    One(oneshot::Sender<Acked>),
    /// The record at this index of a call of many.
    Many(Arc<Acks>, usize),
}

impl Ack {
    fn settle(self, acked: Acked) {
        match self {
            // The sender gave up waiting (its call was cancelled): nobody to tell.
            Self::One(tx) => drop(tx.send(acked)),
            Self::Many(acks, index) => acks.settle(index, acked),
        }
    }
}

/// The acknowledgements of one call of many records.
#[derive(Debug)]
pub struct Acks {
    /// Per record: what librdkafka said, and when.
    slots: Box<[OnceLock<(Acked, Instant)>]>,
    remaining: AtomicUsize,
    done: Notify,
}

impl Acks {
    fn new(records: usize) -> Self {
        Self {
            slots: (0..records).map(|_| OnceLock::new()).collect(),
            remaining: AtomicUsize::new(records),
            done: Notify::new(),
        }
    }

    fn settle(&self, index: usize, acked: Acked) {
        if let Some(slot) = self.slots.get(index)
            && slot.set((acked, Instant::now())).is_ok()
            && self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
        {
            // A permit is kept if the caller is not waiting yet: no wake-up is lost.
            self.done.notify_one();
        }
    }

    async fn all_settled(&self) {
        while self.remaining.load(Ordering::Acquire) > 0 {
            self.done.notified().await;
        }
    }
}

impl ProducerContext for StatsContext {
    type DeliveryOpaque = Box<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Self::DeliveryOpaque) {
        let acked = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.clone()),
        };
        ack.settle(acked);
    }
}

/// A cheap-to-clone handle to one librdkafka producer, shared by a whole process.
#[derive(Clone)]
pub struct Producer {
    inner: ThreadedProducer<StatsContext>,
    catalogue: Arc<Catalogue>,
    metrics: MessagingMetrics,
    max_message_bytes: usize,
    delivery_timeout: Duration,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("delivery_timeout", &self.delivery_timeout).finish_non_exhaustive()
    }
}

/// The client settings of every cardlink producer (and of the benchmarks' plain baseline
/// producer, so that the two differ only in what cardlink does around a send).
pub(crate) fn client_settings(config: &BusConfig, role: &str) -> rdkafka::ClientConfig {
    let mut cfg = config.client_config(role);
    cfg.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", config.delivery_timeout.as_millis().to_string())
        .set("message.max.bytes", (config.max_message_bytes + FRAMING_HEADROOM).to_string());
    // Defaults an operator may tune (`CARDLINK_KAFKA__LINGER_MS`, …): how long a batch waits to
    // fill, its compression, and the local queue's bounds. (They were set over the operator's
    // values, so a lower linger for latency was silently ignored.)
    let (kbytes, messages) = (QUEUE_MAX_KBYTES.to_string(), QUEUE_MAX_MESSAGES.to_string());
    for (key, value) in [
        ("compression.type", "lz4"),
        ("linger.ms", LINGER_MS),
        ("queue.buffering.max.kbytes", kbytes.as_str()),
        ("queue.buffering.max.messages", messages.as_str()),
    ] {
        config.set_default(&mut cfg, key, value);
    }
    cfg
}

impl Producer {
    pub fn new(config: &BusConfig) -> Result<Self, BusError> {
        config.validate()?;
        let inner = client_settings(config, "producer")
            .create_with_context(StatsContext::new("producer"))
            .map_err(|source| BusError::Kafka { operation: "create producer", source })?;
        let catalogue = Catalogue::new(config);
        Ok(Self {
            inner,
            metrics: MessagingMetrics::new(catalogue.specs().iter().map(|s| s.name.clone())),
            catalogue: Arc::new(catalogue),
            max_message_bytes: config.max_message_bytes,
            delivery_timeout: config.delivery_timeout,
        })
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Publishes one record and waits for Kafka's acknowledgement.
    pub async fn send(&self, record: OutboundRecord<'_>) -> Result<Delivered, BusError> {
        if record.payload.len() > self.max_message_bytes {
            return Err(BusError::MessageTooLarge { size: record.payload.len(), max: self.max_message_bytes });
        }
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        self.enqueue(&record, Ack::One(tx)).await;
        // librdkafka reports every record it took, at the latest when the producer is dropped.
        let acked = rx.await.unwrap_or(Err(KafkaError::Canceled));
        self.delivered(record.topic, acked, started.elapsed())
    }

    /// Publishes `records` in order and waits for all of Kafka's acknowledgements: one result per
    /// record, in the same order. A record too large or refused fails alone.
    pub async fn send_all(&self, records: &[OutboundRecord<'_>]) -> Vec<Result<Delivered, BusError>> {
        let started = Instant::now();
        let acks = Arc::new(Acks::new(records.len()));
        for (index, record) in records.iter().enumerate() {
            if record.payload.len() > self.max_message_bytes {
                acks.settle(index, Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)));
            } else {
                self.enqueue(record, Ack::Many(Arc::clone(&acks), index)).await;
            }
        }
        acks.all_settled().await;
        records
            .iter()
            .zip(acks.slots.iter())
            .map(|(record, slot)| {
                if record.payload.len() > self.max_message_bytes {
                    return Err(BusError::MessageTooLarge { size: record.payload.len(), max: self.max_message_bytes });
                }
                let (acked, at) = slot.get().cloned().unwrap_or((Err(KafkaError::Canceled), started));
                self.delivered(record.topic, acked, at.saturating_duration_since(started))
            })
            .collect()
    }

    /// Hands `record` to librdkafka, waiting up to [`ENQUEUE_WAIT`] for room in its queue; `ack`
    /// hears the outcome (at once if librdkafka refused the record).
    async fn enqueue(&self, record: &OutboundRecord<'_>, ack: Ack) {
        let topic_name = self.catalogue.name(record.topic);
        let mut base: BaseRecord<'_, [u8], [u8], Box<Ack>> = BaseRecord::with_opaque_to(topic_name, Box::new(ack))
            .key(record.key)
            .payload(record.payload)
            .headers(record.headers.to_kafka());
        let deadline = Instant::now() + ENQUEUE_WAIT;
        loop {
            match self.inner.send(base) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    base = back;
                    tokio::time::sleep(ENQUEUE_RETRY).await;
                }
                Err((error, back)) => return back.delivery_opaque.settle(Err(error)),
            }
        }
    }

    /// What a record's acknowledgement means to the caller; counted in the messaging metrics.
    fn delivered(&self, topic: Topic, acked: Acked, elapsed: Duration) -> Result<Delivered, BusError> {
        let topic_name = self.catalogue.name(topic);
        match acked {
            Ok((partition, offset)) => {
                self.metrics.sent(topic_name, elapsed, None);
                Ok(Delivered { topic, partition, offset })
            }
            Err(source) => {
                let error = BusError::kafka("produce", source, self.delivery_timeout, topic_name);
                self.metrics.sent(topic_name, elapsed, Some(error.kind()));
                Err(error)
            }
        }
    }

    /// Encodes `event` (Avro single-object) and publishes it on its topic, keyed by account.
    pub async fn publish(&self, event: &Event, traceparent: Option<&str>) -> Result<Delivered, BusError> {
        self.publish_as(event, traceparent, false).await
    }

    /// [`Producer::publish`], marked as part of an issuer's load of past records when
    /// `historical` ([`crate::headers::HISTORICAL`]).
    pub async fn publish_as(
        &self,
        event: &Event,
        traceparent: Option<&str>,
        historical: bool,
    ) -> Result<Delivered, BusError> {
        let encoded = codec::encode(event)?;
        let key = event.partition_key();
        self.send_encoded(&encoded, key.as_bytes(), &event.event_id().to_string(), traceparent, historical).await
    }

    /// Publishes an audit event on the audit topic, keyed by issuer (else actor).
    pub async fn publish_audit(&self, event: &AuditEvent) -> Result<Delivered, BusError> {
        self.publish_record(RecordType::AuditEvent, event.partition_key(), &event.event_id.to_string(), event).await
    }

    /// Publishes any cardlink record on its record type's topic under `key`.
    pub async fn publish_record<T: serde::Serialize>(
        &self,
        record_type: RecordType,
        key: &str,
        event_id: &str,
        record: &T,
    ) -> Result<Delivered, BusError> {
        let encoded = codec::encode_record(record_type, record)?;
        self.send_encoded(&encoded, key.as_bytes(), event_id, None, false).await
    }

    /// [`Producer::publish_as`] for many events at once, each with its own trace context: encoded
    /// and handed to the producer in order (so one account's events keep their order), one result
    /// per event in the same order. An event that cannot be encoded fails alone.
    pub async fn publish_all(
        &self,
        events: &[(&Event, Option<&str>)],
        historical: bool,
    ) -> Vec<Result<Delivered, BusError>> {
        let prepared: Vec<Result<(codec::Encoded, String, RecordHeaders), BusError>> = events
            .iter()
            .map(|(event, traceparent)| {
                let encoded = codec::encode(event)?;
                let headers = headers(&encoded, &event.event_id().to_string(), *traceparent, historical);
                Ok((encoded, event.partition_key(), headers))
            })
            .collect();
        let records: Vec<OutboundRecord<'_>> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|(encoded, key, headers)| OutboundRecord {
                topic: Topic::for_record(encoded.record_type),
                key: key.as_bytes(),
                payload: &encoded.bytes,
                headers,
            })
            .collect();
        let mut sent = self.send_all(&records).await.into_iter();
        prepared
            .into_iter()
            .map(|p| match p {
                Ok(_) => {
                    sent.next().unwrap_or(Err(BusError::Kafka { operation: "produce", source: KafkaError::Canceled }))
                }
                Err(e) => Err(e),
            })
            .collect()
    }

    async fn send_encoded(
        &self,
        encoded: &codec::Encoded,
        key: &[u8],
        event_id: &str,
        traceparent: Option<&str>,
        historical: bool,
    ) -> Result<Delivered, BusError> {
        let headers = headers(encoded, event_id, traceparent, historical);
        self.send(OutboundRecord {
            topic: Topic::for_record(encoded.record_type),
            key,
            payload: &encoded.bytes,
            headers: &headers,
        })
        .await
    }

    /// Waits until every queued record is acknowledged or `timeout` passes (at shutdown).
    pub async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        let producer = self.inner.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| BusError::Task(format!("flush: {e}")))?
            .map_err(|source| BusError::kafka("flush", source, timeout, ""))
    }
}

/// The headers of an encoded cardlink record.
fn headers(encoded: &codec::Encoded, event_id: &str, traceparent: Option<&str>, historical: bool) -> RecordHeaders {
    RecordHeaders {
        event_type: Some(encoded.record_type.full_name().to_owned()),
        event_id: Some(event_id.to_owned()),
        schema_fingerprint: Some(encoded.fingerprint),
        traceparent: traceparent.map(str::to_owned),
        historical,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator(vars: &[(&str, &str)]) -> BusConfig {
        BusConfig::default().with_env(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
    }

    #[test]
    fn an_operator_tunes_linger_compression_and_the_queue_but_not_the_durability_settings() {
        let defaults = client_settings(&BusConfig::default(), "test");
        assert_eq!(defaults.get("linger.ms"), Some(LINGER_MS));
        assert_eq!(defaults.get("compression.type"), Some("lz4"));
        assert_eq!(defaults.get("queue.buffering.max.kbytes"), Some(QUEUE_MAX_KBYTES.to_string().as_str()));

        let tuned = operator(&[
            ("CARDLINK_KAFKA__LINGER_MS", "20"),
            ("CARDLINK_KAFKA__COMPRESSION_TYPE", "zstd"),
            ("CARDLINK_KAFKA__QUEUE_BUFFERING_MAX_MESSAGES", "5000"),
        ]);
        tuned.validate().unwrap();
        let cfg = client_settings(&tuned, "test");
        assert_eq!(cfg.get("linger.ms"), Some("20"));
        assert_eq!(cfg.get("compression.type"), Some("zstd"));
        assert_eq!(cfg.get("queue.buffering.max.messages"), Some("5000"));
        assert_eq!(cfg.get("acks"), Some("all"));
        assert_eq!(cfg.get("enable.idempotence"), Some("true"));

        for (var, key) in
            [("CARDLINK_KAFKA__ACKS", "acks"), ("CARDLINK_KAFKA__ENABLE_IDEMPOTENCE", "enable.idempotence")]
        {
            let err = operator(&[(var, "0")]).validate().unwrap_err().to_string();
            assert!(err.contains(&format!("librdkafka.{key}")), "{err}");
        }
    }
}
