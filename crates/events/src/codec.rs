//! Avro single-object encoding of events, the format of every record value on the bus.
//!
//! A value is `C3 01` + the writer schema's 8-byte Rabin fingerprint (little-endian) + the Avro
//! binary body. This is the standard from the Avro specification, so any Avro implementation that
//! has the schemas in `schemas/` can decode our records without a schema registry; the
//! fingerprint tells it which version wrote the record.
//!
//! Decoding reads with the writer's version and resolves to the latest version we know, so a
//! consumer built today reads records that an older producer wrote.

use apache_avro::types::Value;

use crate::model::{CardTransaction, Statement};
use crate::schema::{Fingerprint, RecordType, SchemaVersion, Schemas};

/// The two marker bytes that open every single-object encoded Avro record.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
/// Marker plus fingerprint.
pub const HEADER_LEN: usize = 10;

/// An event as the bus carries it.
// Transactions are by far the most common event; boxing them to shrink the enum would cost an
// allocation per event on the hot path for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Transaction(CardTransaction),
    Statement(Statement),
}

impl Event {
    pub fn record_type(&self) -> RecordType {
        match self {
            Self::Transaction(_) => RecordType::CardTransaction,
            Self::Statement(_) => RecordType::Statement,
        }
    }

    pub fn issuer_id(&self) -> &str {
        match self {
            Self::Transaction(t) => &t.issuer_id,
            Self::Statement(s) => &s.issuer_id,
        }
    }

    pub fn account_ref(&self) -> &str {
        match self {
            Self::Transaction(t) => &t.account_ref,
            Self::Statement(s) => &s.account_ref,
        }
    }

    pub fn event_id(&self) -> crate::model::EventId {
        match self {
            Self::Transaction(t) => t.event_id,
            Self::Statement(s) => s.event_id,
        }
    }

    /// The Kafka record key: one account's events share a partition and so stay in order.
    pub fn partition_key(&self) -> String {
        partition_key(self.issuer_id(), self.account_ref())
    }
}

/// `issuer_id/account_ref`. Issuer ids cannot contain `/` (the registry enforces it), so the key
/// is unambiguous.
pub fn partition_key(issuer_id: &str, account_ref: &str) -> String {
    let mut key = String::with_capacity(issuer_id.len() + 1 + account_ref.len());
    key.push_str(issuer_id);
    key.push('/');
    key.push_str(account_ref);
    key
}

/// An encoded event and what the bus puts in its headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub record_type: RecordType,
    pub fingerprint: Fingerprint,
    /// The full single-object encoded value.
    pub bytes: Vec<u8>,
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("value is {len} bytes, shorter than the 10-byte Avro single-object header")]
    TooShort { len: usize },
    #[error("value does not start with the Avro single-object marker C3 01")]
    BadMarker,
    #[error("no committed schema has fingerprint {0}")]
    UnknownFingerprint(Fingerprint),
    #[error("{record:?} v{version} body does not decode: {reason}")]
    Body { record: RecordType, version: u32, reason: String },
    #[error("{record:?} body has {extra} trailing bytes after the record")]
    TrailingBytes { record: RecordType, extra: usize },
    #[error("expected {expected}, found a {found:?} record")]
    UnexpectedRecord { expected: &'static str, found: RecordType },
    #[error("{record:?} does not fit its schema: {reason}")]
    Encode { record: RecordType, reason: String },
}

/// Encodes `event` with the latest schema of its record type.
pub fn encode(event: &Event) -> Result<Encoded, CodecError> {
    match event {
        Event::Transaction(t) => encode_record(RecordType::CardTransaction, t),
        Event::Statement(s) => encode_record(RecordType::Statement, s),
    }
}

/// Encodes any record whose Rust type matches the latest schema of `record`.
pub fn encode_record<T: serde::Serialize>(record: RecordType, data: &T) -> Result<Encoded, CodecError> {
    let version = Schemas::get().latest(record);
    let value = apache_avro::to_value(data).map_err(|e| encode_error(record, e))?;
    encode_value(version, value)
}

fn encode_value(version: &SchemaVersion, value: Value) -> Result<Encoded, CodecError> {
    let record = version.record;
    // `resolve` turns serde's plain shapes into the schema's (strings into enum symbols, options
    // into union branches, longs into timestamps) and rejects what does not fit.
    let value = value.resolve(&version.schema).map_err(|e| encode_error(record, e))?;
    let body = apache_avro::to_avro_datum(&version.schema, value).map_err(|e| encode_error(record, e))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(&SINGLE_OBJECT_MARKER);
    bytes.extend_from_slice(&version.fingerprint.0);
    bytes.extend_from_slice(&body);
    Ok(Encoded { record_type: record, fingerprint: version.fingerprint, bytes })
}

fn encode_error(record: RecordType, e: apache_avro::Error) -> CodecError {
    CodecError::Encode { record, reason: e.to_string() }
}

/// Reads the header of a single-object encoded value: which schema version wrote it.
pub fn peek_fingerprint(bytes: &[u8]) -> Result<Fingerprint, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::TooShort { len: bytes.len() });
    }
    if bytes[..2] != SINGLE_OBJECT_MARKER {
        return Err(CodecError::BadMarker);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    Ok(Fingerprint(fp))
}

/// Decodes a transaction or statement written by any committed version into the latest shape.
pub fn decode(bytes: &[u8]) -> Result<Event, CodecError> {
    let (record, version, value) = decode_value(bytes)?;
    let event = match record {
        RecordType::CardTransaction => apache_avro::from_value(&value).map(Event::Transaction),
        RecordType::Statement => apache_avro::from_value(&value).map(Event::Statement),
        other => return Err(CodecError::UnexpectedRecord { expected: "a transaction or statement", found: other }),
    };
    event.map_err(|e| CodecError::Body { record, version, reason: e.to_string() })
}

/// Decodes a value that must be a `record`, into its Rust type.
pub fn decode_record<T: serde::de::DeserializeOwned>(bytes: &[u8], record: RecordType) -> Result<T, CodecError> {
    let (found, version, value) = decode_value(bytes)?;
    if found != record {
        return Err(CodecError::UnexpectedRecord { expected: record.full_name(), found });
    }
    apache_avro::from_value(&value).map_err(|e| CodecError::Body { record, version, reason: e.to_string() })
}

fn decode_value(bytes: &[u8]) -> Result<(RecordType, u32, Value), CodecError> {
    let schemas = Schemas::get();
    let fingerprint = peek_fingerprint(bytes)?;
    let writer = schemas.by_fingerprint(&fingerprint).ok_or(CodecError::UnknownFingerprint(fingerprint))?;
    let record = writer.record;
    let reader = schemas.latest(record);
    let body_error = |reason: String| CodecError::Body { record, version: writer.version, reason };

    let mut body = &bytes[HEADER_LEN..];
    let reader_schema = (writer.fingerprint != reader.fingerprint).then_some(&reader.schema);
    let value = apache_avro::from_avro_datum(&writer.schema, &mut body, reader_schema)
        .map_err(|e| body_error(e.to_string()))?;
    if !body.is_empty() {
        return Err(CodecError::TrailingBytes { record, extra: body.len() });
    }
    Ok((record, writer.version, value))
}

#[cfg(test)]
mod tests;
