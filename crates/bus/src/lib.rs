//! The bus: everything cardlink knows about Kafka, and the only crate that imports rdkafka.
//!
//! - [`config`]: how to reach the cluster (bootstrap servers, TLS/SASL pass-through), with limits.
//! - [`topics`]: the topic catalogue — names, partitions, retention or compaction.
//! - [`admin`]: idempotent provisioning of the catalogue at start-up.
//! - [`producer`]: `acks=all`, idempotent publishing that returns only once Kafka has the record.
//! - [`consumer`]: reading by manual partition assignment and seek; no consumer-group rebalancing.
//! - [`polled`]: the same, polled on a thread of its own, for the one reader that reads everything.
//! - [`headers`]: the record headers every cardlink record carries.
//! - [`baseline`]: plain clients with no cardlink logic, the benchmarks' in-run baselines.
//! - [`telemetry`]: librdkafka statistics and messaging metrics, as OpenTelemetry instruments.
//! - `embedded` (feature `embedded-broker`): a Kafka-compatible broker in-process, for
//!   development and tests.
//!
//! Services see typed topics ([`Topic`]), typed errors ([`BusError`]) and owned records
//! ([`Record`]); none of them sees an rdkafka type.

pub mod admin;
pub mod baseline;
pub mod config;
pub mod consumer;
#[cfg(feature = "embedded-broker")]
pub mod embedded;
mod error;
pub mod headers;
pub mod polled;
pub mod producer;
pub mod redeliver;
pub mod telemetry;
pub mod topics;

pub use admin::{ProvisionReport, check_topics, provision};
pub use config::BusConfig;
pub use consumer::{Consumer, Record, RecordRef, StartAt};
pub use error::BusError;
pub use headers::RecordHeaders;
pub use polled::PolledConsumer;
pub use producer::{Delivered, OutboundRecord, Producer};
pub use topics::{Catalogue, Topic, TopicSpec};
