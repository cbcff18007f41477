//! The record headers every cardlink record carries.
//!
//! They let a reader route or skip a record without decoding its value, and carry the trace
//! context from the ingest call to each delivery (W3C Trace Context, `traceparent`).

use cardlink_events::Fingerprint;

/// The value's record type, e.g. `cardlink.v1.CardTransaction`.
pub const EVENT_TYPE: &str = "cardlink-event-type";
/// The writer schema's fingerprint, 16 lowercase hex digits (the same 8 bytes as in the value's
/// single-object header).
pub const SCHEMA_FINGERPRINT: &str = "cardlink-schema-fingerprint";
/// The event's id (UUID text), so readers can de-duplicate without decoding the value.
pub const EVENT_ID: &str = "cardlink-event-id";
/// W3C Trace Context.
pub const TRACEPARENT: &str = "traceparent";
/// `1` on an issuer's load of past records: indexed into history, never delivered to live streams
/// as new.
pub const HISTORICAL: &str = "cardlink-historical";

/// The headers of one record. Unknown headers are ignored on read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordHeaders {
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    pub schema_fingerprint: Option<Fingerprint>,
    pub traceparent: Option<String>,
    /// Part of an issuer's load of past records (see [`HISTORICAL`]).
    pub historical: bool,
}

impl RecordHeaders {
    pub(crate) fn to_kafka(&self) -> rdkafka::message::OwnedHeaders {
        use rdkafka::message::{Header, OwnedHeaders};
        let mut headers = OwnedHeaders::new_with_capacity(4);
        if let Some(event_type) = &self.event_type {
            headers = headers.insert(Header { key: EVENT_TYPE, value: Some(event_type.as_bytes()) });
        }
        if let Some(event_id) = &self.event_id {
            headers = headers.insert(Header { key: EVENT_ID, value: Some(event_id.as_bytes()) });
        }
        if let Some(fp) = &self.schema_fingerprint {
            headers = headers.insert(Header { key: SCHEMA_FINGERPRINT, value: Some(fp.to_hex().as_bytes()) });
        }
        if let Some(tp) = &self.traceparent {
            headers = headers.insert(Header { key: TRACEPARENT, value: Some(tp.as_bytes()) });
        }
        if self.historical {
            headers = headers.insert(Header { key: HISTORICAL, value: Some(b"1") });
        }
        headers
    }

    pub(crate) fn from_kafka<H: rdkafka::message::Headers>(headers: Option<&H>) -> Self {
        let mut out = Self::default();
        let Some(headers) = headers else { return out };
        for header in headers.iter() {
            let Some(text) = header.value.and_then(|v| std::str::from_utf8(v).ok()) else { continue };
            match header.key {
                EVENT_TYPE => out.event_type = Some(text.to_owned()),
                EVENT_ID => out.event_id = Some(text.to_owned()),
                SCHEMA_FINGERPRINT => out.schema_fingerprint = Fingerprint::from_hex(text),
                TRACEPARENT => out.traceparent = Some(text.to_owned()),
                HISTORICAL => out.historical = text == "1",
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_kafka_form() {
        let headers = RecordHeaders {
            event_type: Some("cardlink.v1.Statement".into()),
            event_id: Some("5f0c6f4e-8d52-4a43-9d0e-0d2c6f7a1b11".into()),
            schema_fingerprint: Some(Fingerprint([1, 2, 3, 4, 5, 6, 7, 8])),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            historical: true,
        };
        assert_eq!(RecordHeaders::from_kafka(Some(&headers.to_kafka())), headers);
        assert_eq!(RecordHeaders::from_kafka(Some(&RecordHeaders::default().to_kafka())), RecordHeaders::default());
    }
}
