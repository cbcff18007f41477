//! Avro single-object encoding of events, the format of every record value on the bus.
//!
//! A value is `C3 01` + the writer schema's 8-byte Rabin fingerprint (little-endian) + the Avro
//! binary body. This is the standard from the Avro specification, so any Avro implementation that
//! has the schemas in `schemas/` can decode our records without a schema registry; the
//! fingerprint tells it which version wrote the record.
//!
//! Decoding reads with the writer's version and resolves to the latest version we know, so a
//! consumer built today reads records that an older producer wrote.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectReader, Writer};

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
    let body = encode_body(version, data)?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(&SINGLE_OBJECT_MARKER);
    bytes.extend_from_slice(&version.fingerprint.0);
    bytes.extend_from_slice(&body);
    Ok(Encoded { record_type: record, fingerprint: version.fingerprint, bytes })
}

thread_local! {
    /// One apache-avro writer per record type and thread: it resolves its schema's named types
    /// once, where the one-shot functions (`to_avro_datum`, `Value::resolve`) do it again for
    /// every record — most of the encoding cost, as the ingest profile showed.
    static WRITERS: RefCell<HashMap<RecordType, Writer<'static, Vec<u8>>>> = RefCell::new(HashMap::new());
}

/// The Avro binary body of `data` under `version`, serialised straight from serde (no
/// intermediate `Value` tree).
///
/// The writer produces an object-container data block (count, size, body, sync marker; no
/// codec); the body is taken out of it. A writer that failed part-way is dropped, so a record
/// that does not fit its schema cannot leave bytes behind for the next one.
fn encode_body<T: serde::Serialize>(version: &'static SchemaVersion, data: &T) -> Result<Vec<u8>, CodecError> {
    let record = version.record;
    WRITERS.with(|writers| {
        let mut writers = writers.borrow_mut();
        let writer = writers.entry(record).or_insert_with(|| Writer::append_to(&version.schema, Vec::new(), [0; 16]));
        let written = writer.append_ser(data).and_then(|_| writer.flush());
        let block = std::mem::take(writer.get_mut());
        if let Err(e) = written {
            writers.remove(&record);
            return Err(encode_error(record, e));
        }
        block_body(&block)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| CodecError::Encode { record, reason: "the Avro writer produced an unexpected block".into() })
    })
}

/// The body of a one-record object-container block: zig-zag count (1), zig-zag size, body,
/// 16-byte sync marker.
fn block_body(block: &[u8]) -> Option<&[u8]> {
    fn varint(bytes: &[u8]) -> Option<(i64, usize)> {
        let mut value: u64 = 0;
        for (i, b) in bytes.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                let decoded = (value >> 1) as i64 ^ -((value & 1) as i64);
                return Some((decoded, i + 1));
            }
        }
        None
    }
    let (count, a) = varint(block)?;
    let (size, b) = varint(block.get(a..)?)?;
    let size = usize::try_from(size).ok()?;
    let body = block.get(a + b..a + b + size)?;
    (count == 1 && block.len() == a + b + size + 16).then_some(body)
}

/// The reference encoder: serde → `Value` → resolved to the schema → Avro. Slower; the fast
/// path must produce the same bytes (tested).
#[cfg(test)]
fn encode_via_value<T: serde::Serialize>(version: &SchemaVersion, data: &T) -> Result<Vec<u8>, CodecError> {
    let record = version.record;
    let value = apache_avro::to_value(data).map_err(|e| encode_error(record, e))?;
    let value = value.resolve(&version.schema).map_err(|e| encode_error(record, e))?;
    apache_avro::to_avro_datum(&version.schema, value).map_err(|e| encode_error(record, e))
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

    let mut input = bytes;
    let reader_of_writer =
        single_object_reader(writer).ok_or_else(|| body_error("its schema did not resolve".into()))?;
    let value = reader_of_writer.read_value(&mut input).map_err(|e| body_error(e.to_string()))?;
    if !input.is_empty() {
        return Err(CodecError::TrailingBytes { record, extra: input.len() });
    }
    let value = if writer.fingerprint == reader.fingerprint {
        value
    } else {
        value.resolve(&reader.schema).map_err(|e| body_error(e.to_string()))?
    };
    Ok((record, writer.version, value))
}

/// Our single-object header (marker + the spec's Rabin fingerprint, which can differ from
/// apache-avro's own; see `Fingerprint::of`).
struct Header([u8; HEADER_LEN]);

impl apache_avro::headers::HeaderBuilder for Header {
    fn build_header(&self) -> Vec<u8> {
        self.0.to_vec()
    }
}

/// A reader per committed version, its named types resolved once for the life of the process.
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
                let reader =
                    GenericSingleObjectReader::new_with_header_builder(v.schema.clone(), Header(header)).ok()?;
                Some((v.fingerprint, reader))
            })
            .collect()
    });
    readers.get(&version.fingerprint)
}

#[cfg(test)]
mod tests;
