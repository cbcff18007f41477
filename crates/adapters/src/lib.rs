//! Issuer adapters: ways for a card issuer to feed cardlink without writing an integration.
//!
//! Each adapter turns its input into domain events and publishes them through the same ingest
//! gRPC API an issuer would call itself ([`sink`]), so validation, the PAN guard and idempotency
//! apply to every path alike.
//!
//! - [`file`]: the batch-file adapter (CSV and fixed-width; UTF-8 and Shift_JIS).
//! - [`simulator`]: a deterministic synthetic issuer for demos, tests and benchmarks.

pub mod file;
pub mod simulator;
pub mod sink;
