//! Avro single-object encoding of events, the format of every record value on the bus.
//!
//! A value is `C3 01` + the writer schema's 8-byte Rabin fingerprint (little-endian) + the Avro
//! binary body. This is the standard from the Avro specification, so any Avro implementation that
//! has the schemas in `schemas/` can decode our records without a schema registry; the
//! fingerprint tells it which version wrote the record.
//!
//! Decoding reads with the writer's version and resolves to the latest version we know, so a
//! consumer built today reads records that an older producer wrote.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::GenericSingleObjectReader;
use apache_avro::writer::datum::GenericDatumWriter;

use crate::consent::{ConsentEvent, ConsentTerms};
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
///
/// The body is serialised straight from serde into the output, after the header (apache-avro's
/// schema-aware serializer; no intermediate `Value` tree, no copy).
pub fn encode_record<T: serde::Serialize>(record: RecordType, data: &T) -> Result<Encoded, CodecError> {
    let version = Schemas::get().latest(record);
    let writer = datum_writer(version)
        .ok_or_else(|| CodecError::Encode { record, reason: "its schema did not resolve".into() })?;
    let mut bytes = Vec::with_capacity(ENCODED_CAPACITY);
    bytes.extend_from_slice(&SINGLE_OBJECT_MARKER);
    bytes.extend_from_slice(&version.fingerprint.0);
    writer.write_ser(&mut bytes, data).map_err(|e| encode_error(record, e))?;
    Ok(Encoded { record_type: record, fingerprint: version.fingerprint, bytes })
}

/// Room for a typical encoded transaction (~250 bytes), so most encodings allocate once.
const ENCODED_CAPACITY: usize = 384;

/// A writer per committed version, its named types resolved once for the life of the process:
/// the one-shot functions resolve them again for every record — most of the encoding cost, as
/// the ingest profile showed.
fn datum_writer(version: &'static SchemaVersion) -> Option<&'static GenericDatumWriter<'static>> {
    static WRITERS: OnceLock<HashMap<Fingerprint, GenericDatumWriter<'static>>> = OnceLock::new();
    let writers = WRITERS.get_or_init(|| {
        Schemas::get()
            .versions()
            .iter()
            .filter_map(|v| Some((v.fingerprint, GenericDatumWriter::builder(&v.schema).build().ok()?)))
            .collect()
    });
    writers.get(&version.fingerprint)
}

/// The reference encoder: serde → `Value` → resolved to the schema → Avro. Slower; the fast
/// path must produce the same bytes (tested).
#[cfg(test)]
fn encode_via_value<T: serde::Serialize>(version: &SchemaVersion, data: &T) -> Result<Vec<u8>, CodecError> {
    let record = version.record;
    let value = apache_avro::to_value(data).map_err(|e| encode_error(record, e))?;
    let value = value.resolve(&version.schema).map_err(|e| encode_error(record, e))?;
    let writer = GenericDatumWriter::builder(&version.schema).build().map_err(|e| encode_error(record, e))?;
    writer.write_value_to_vec(value).map_err(|e| encode_error(record, e))
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

/// Whether `bytes` name a transaction or statement schema this release knows, from the header
/// alone (a cheap check: no body is decoded). A record that passes can still fail [`decode`].
pub fn check_event_writer(bytes: &[u8]) -> Result<(), CodecError> {
    let fingerprint = peek_fingerprint(bytes)?;
    let writer = Schemas::get().by_fingerprint(&fingerprint).ok_or(CodecError::UnknownFingerprint(fingerprint))?;
    match writer.record {
        RecordType::CardTransaction | RecordType::Statement => Ok(()),
        other => Err(CodecError::UnexpectedRecord { expected: "a transaction or statement", found: other }),
    }
}

/// Decodes a transaction or statement written by any committed version into the latest shape.
pub fn decode(bytes: &[u8]) -> Result<Event, CodecError> {
    let writer = writer_of(bytes)?;
    match writer.record {
        RecordType::CardTransaction => decode_into(writer, bytes).map(Event::Transaction),
        RecordType::Statement => decode_into(writer, bytes).map(Event::Statement),
        other => Err(CodecError::UnexpectedRecord { expected: "a transaction or statement", found: other }),
    }
}

/// Decodes a value that must be a `record`, into its Rust type.
pub fn decode_record<T: serde::de::DeserializeOwned>(bytes: &[u8], record: RecordType) -> Result<T, CodecError> {
    let writer = writer_of(bytes)?;
    if writer.record != record {
        return Err(CodecError::UnexpectedRecord { expected: record.full_name(), found: writer.record });
    }
    decode_into(writer, bytes)
}

/// Calls `f` with the terms of the consent record in `bytes` ([`ConsentTerms`]) — what a consent
/// view keeps — and returns what it returns. A record of the latest version is read in place
/// (its strings borrowed, the fields the terms do not need skipped: no allocation but the
/// account list); any other version is decoded in full first. Either way the record is checked
/// as [`decode_record`] checks it, and refused alike.
pub fn with_consent_terms<R>(bytes: &[u8], f: impl FnOnce(&ConsentTerms<'_>) -> R) -> Result<R, CodecError> {
    let writer = writer_of(bytes)?;
    let record = RecordType::ConsentEvent;
    if writer.record != record {
        return Err(CodecError::UnexpectedRecord { expected: record.full_name(), found: writer.record });
    }
    if writer.version != consent_terms::VERSION {
        let event: ConsentEvent = decode_into(writer, bytes)?;
        return Ok(f(&event.terms()));
    }
    let body = bytes.get(HEADER_LEN..).unwrap_or_default();
    match consent_terms::read(body) {
        Ok((terms, 0)) => Ok(f(&terms)),
        Ok((_, extra)) => Err(CodecError::TrailingBytes { record, extra }),
        Err(reason) => Err(CodecError::Body { record, version: writer.version, reason }),
    }
}

/// The committed version whose fingerprint `bytes` carry.
fn writer_of(bytes: &[u8]) -> Result<&'static SchemaVersion, CodecError> {
    let fingerprint = peek_fingerprint(bytes)?;
    Schemas::get().by_fingerprint(&fingerprint).ok_or(CodecError::UnknownFingerprint(fingerprint))
}

/// The record in `bytes`, written by `writer`, as `T` (the latest version's shape).
///
/// A record the latest version wrote — nearly every one — is deserialised straight from the
/// Avro body (apache-avro's schema-aware serde deserializer: no `Value` tree, a third to a
/// quarter of the `Value` path's time). One an older version wrote goes through `Value`, resolved to the latest
/// schema, because only that path does Avro's schema resolution (defaults for added fields).
fn decode_into<T: serde::de::DeserializeOwned>(writer: &'static SchemaVersion, bytes: &[u8]) -> Result<T, CodecError> {
    let record = writer.record;
    let body_error = |reason: String| CodecError::Body { record, version: writer.version, reason };
    let reader_of_writer =
        single_object_reader(writer).ok_or_else(|| body_error("its schema did not resolve".into()))?;
    let latest = Schemas::get().latest(record);
    let mut input = bytes;
    let decoded = if writer.fingerprint == latest.fingerprint {
        reader_of_writer.read_deser(&mut input).map_err(|e| body_error(e.to_string()))?
    } else {
        let value = reader_of_writer.read_value(&mut input).map_err(|e| body_error(e.to_string()))?;
        let value = value.resolve(&latest.schema).map_err(|e| body_error(e.to_string()))?;
        apache_avro::from_value(&value).map_err(|e| body_error(e.to_string()))?
    };
    if !input.is_empty() {
        return Err(CodecError::TrailingBytes { record, extra: input.len() });
    }
    Ok(decoded)
}

/// The reference decoder: Avro → `Value` → (resolved) → serde, for every version. Slower; the
/// fast path must decode the same bytes to the same record, or refuse them alike (tested).
#[cfg(test)]
fn decode_via_value<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let writer = writer_of(bytes)?;
    let record = writer.record;
    let body_error = |reason: String| CodecError::Body { record, version: writer.version, reason };
    let reader_of_writer =
        single_object_reader(writer).ok_or_else(|| body_error("its schema did not resolve".into()))?;
    let mut input = bytes;
    let value = reader_of_writer.read_value(&mut input).map_err(|e| body_error(e.to_string()))?;
    if !input.is_empty() {
        return Err(CodecError::TrailingBytes { record, extra: input.len() });
    }
    let value = value.resolve(&Schemas::get().latest(record).schema).map_err(|e| body_error(e.to_string()))?;
    apache_avro::from_value(&value).map_err(|e| body_error(e.to_string()))
}

/// A reader per committed version, its named types resolved once for the life of the process.
/// It expects our header: the marker and the spec's Rabin fingerprint, which can differ from
/// apache-avro's own (see `Fingerprint::of`).
fn single_object_reader(version: &SchemaVersion) -> Option<&'static GenericSingleObjectReader> {
    static READERS: OnceLock<HashMap<Fingerprint, GenericSingleObjectReader>> = OnceLock::new();
    let readers = READERS.get_or_init(|| {
        Schemas::get()
            .versions()
            .iter()
            .filter_map(|v| {
                let mut header = [0u8; HEADER_LEN];
                header[..2].copy_from_slice(&SINGLE_OBJECT_MARKER);
                header[2..].copy_from_slice(&v.fingerprint.0);
                let reader = GenericSingleObjectReader::builder()
                    .schema(v.schema.clone())
                    .header(header.to_vec())
                    .build()
                    .ok()?;
                Some((v.fingerprint, reader))
            })
            .collect()
    });
    readers.get(&version.fingerprint)
}

mod consent_terms;
#[cfg(test)]
mod tests;
