//! Publishing to the bus.
//!
//! Every send is `acks=all` with idempotence on, and [`Producer::send`] resolves only when Kafka
//! has acknowledged the record (or failed to within `delivery_timeout`): an OK from cardlink
//! means the record is durable. librdkafka retries transient failures internally; idempotence
//! keeps those retries from writing a record twice.
//!
//! Backpressure: librdkafka's local queue is bounded (`QUEUE_MAX_KBYTES`, `QUEUE_MAX_MESSAGES`).
//! When it is full, a send waits up to `ENQUEUE_WAIT` for room and then fails with
//! [`BusError::QueueFull`], so callers slow down instead of buffering without bound.

use std::sync::Arc;
use std::time::Duration;

use cardlink_events::{AuditEvent, Event, RecordType, codec};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::config::BusConfig;
use crate::error::BusError;
use crate::headers::RecordHeaders;
use crate::telemetry::{MessagingMetrics, StatsContext};
use crate::topics::{Catalogue, Topic};

/// Bound of librdkafka's local send queue, in KiB.
pub const QUEUE_MAX_KBYTES: u32 = 64 * 1024;
/// Bound of librdkafka's local send queue, in records.
pub const QUEUE_MAX_MESSAGES: u32 = 100_000;
/// How long a send waits for room in a full local queue.
pub const ENQUEUE_WAIT: Duration = Duration::from_secs(5);
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

/// A cheap-to-clone handle to one librdkafka producer, shared by a whole process.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<StatsContext>,
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
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.timeout.ms", config.delivery_timeout.as_millis().to_string())
        .set("message.max.bytes", (config.max_message_bytes + FRAMING_HEADROOM).to_string())
        .set("queue.buffering.max.kbytes", QUEUE_MAX_KBYTES.to_string())
        .set("queue.buffering.max.messages", QUEUE_MAX_MESSAGES.to_string());
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
        let topic_name = self.catalogue.name(record.topic);
        let kafka_record =
            FutureRecord::to(topic_name).key(record.key).payload(record.payload).headers(record.headers.to_kafka());
        let started = std::time::Instant::now();
        match self.inner.send(kafka_record, ENQUEUE_WAIT).await {
            Ok(delivery) => {
                self.metrics.sent(topic_name, started.elapsed(), None);
                Ok(Delivered { topic: record.topic, partition: delivery.partition, offset: delivery.offset })
            }
            Err((source, _message)) => {
                let error = BusError::kafka("produce", source, self.delivery_timeout, topic_name);
                self.metrics.sent(topic_name, started.elapsed(), Some(error.kind()));
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

    async fn send_encoded(
        &self,
        encoded: &codec::Encoded,
        key: &[u8],
        event_id: &str,
        traceparent: Option<&str>,
        historical: bool,
    ) -> Result<Delivered, BusError> {
        let headers = RecordHeaders {
            event_type: Some(encoded.record_type.full_name().to_owned()),
            event_id: Some(event_id.to_owned()),
            schema_fingerprint: Some(encoded.fingerprint),
            traceparent: traceparent.map(str::to_owned),
            historical,
        };
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
