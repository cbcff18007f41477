//! cardlink's event contracts: the domain types issuers publish and aggregators receive, and
//! their encoding on the bus.
//!
//! - [`model`]: card transactions (利用明細) and statements (請求), defined once.
//! - [`schema`]: the Avro schemas in `schemas/`, every committed version, by fingerprint.
//! - [`codec`]: Avro single-object encoding, readable by any Avro implementation.
//! - [`registry`], [`consent`]: participants, connections, credentials and consents.
//! - [`samples`]: small, valid, synthetic events for tests and examples.

pub mod codec;
pub mod consent;
pub mod model;
pub mod registry;
pub mod samples;
pub mod schema;

pub use codec::{CodecError, Encoded, Event, decode, decode_record, encode, encode_record};
pub use model::*;
pub use schema::{Fingerprint, RecordType, Schemas};
