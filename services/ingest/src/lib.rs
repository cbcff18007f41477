//! The ingest gateway: how issuers put card events on the bus.
//!
//! An issuer calls `IssuerIngest.Publish` (or streams batches) with its credential. Each record
//! is checked on its own — PAN guard, validation ([`validate`]), de-duplication ([`dedup`]) — and
//! the good ones are published to Kafka with `acks=all`; the response carries one result per
//! record. A bad record never fails or delays the others.
//!
//! - [`service`]: the logic, as plain async functions over domain types.
//! - [`outcome`]: what happened to each record, with its `cardlink_api::Reason`.
//! - [`grpc`]: the thin tonic layer that translates (callers are authenticated by
//!   `cardlink_authn`, wired in [`server`]).
//! - [`server`]: serving it, with limits and graceful shutdown.
//! - [`metrics`]: records in per issuer and outcome; the producer span of each record.

pub mod currency;
pub mod dedup;
pub mod grpc;
pub mod metrics;
pub mod outcome;
pub mod pan;
pub mod server;
pub mod service;
pub mod validate;

pub use outcome::{BatchResult, Outcome, RecordResult, Rejection};
