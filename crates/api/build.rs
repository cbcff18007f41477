//! Compiles proto/cardlink/v1 into Rust with no system `protoc`: protox parses the files in
//! pure Rust (it bundles the google/protobuf well-known types) and tonic-prost-build generates
//! messages, clients and servers from the resulting descriptor set.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "cardlink/v1/events.proto",
    "cardlink/v1/ingest.proto",
    "cardlink/v1/registry.proto",
    "cardlink/v1/consent.proto",
    "cardlink/v1/subscription.proto",
    "cardlink/v1/history.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let descriptors = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Serialized descriptors, for gRPC server reflection.
    std::fs::write(out.join("cardlink_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec with a smaller first buffer per call (src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
