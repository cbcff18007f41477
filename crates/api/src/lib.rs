//! cardlink's gRPC contracts, generated from `proto/cardlink/v1` at build time.
//!
//! This is the contract aggregators and issuers code against in any language; the Rust types
//! here are what cardlink's own services and CLIs use.
//!
//! - [`codec`]: the codec of every generated client and server (prost's, with a smaller first
//!   buffer).
//! - [`convert`]: domain types (`cardlink-events`) to their messages, one function each, shared
//!   by every service that sends them.
//! - [`reason`]: every reason a call or a record can fail, with its gRPC code ([`Reason`]).
//! - [`status`]: the one function that turns a typed error into a `Status`.

pub mod codec;
pub mod convert;
pub mod reason;
pub mod status;

pub use reason::{ApiError, Reason};

/// Package `cardlink.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("cardlink.v1");
}

/// The encoded `FileDescriptorSet` of every cardlink proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cardlink_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn descriptor_set_names_every_service() {
        let set =
            <prost_types::FileDescriptorSet as prost::Message>::decode(super::FILE_DESCRIPTOR_SET).expect("decodes");
        let services: Vec<String> =
            set.file.iter().flat_map(|f| f.service.iter().map(|s| s.name().to_owned())).collect();
        for name in ["IssuerIngest", "Registry", "ConsentService", "Subscription"] {
            assert!(services.iter().any(|s| s == name), "{name} missing from {services:?}");
        }
    }

    #[test]
    fn messages_round_trip_through_protobuf() {
        let request = v1::PublishRequest {
            issuer_id: "iss-a".into(),
            batch_id: "b1".into(),
            records: vec![v1::IngestRecord {
                event: Some(v1::ingest_record::Event::Transaction(v1::CardTransaction {
                    issuer_id: "iss-a".into(),
                    amount: Some(v1::Money { minor_units: 498, currency: "JPY".into() }),
                    kind: v1::TransactionKind::Posted as i32,
                    ..Default::default()
                })),
            }],
            historical: true,
        };
        let bytes = prost::Message::encode_to_vec(&request);
        assert_eq!(<v1::PublishRequest as prost::Message>::decode(bytes.as_slice()).expect("decodes"), request);
    }
}
