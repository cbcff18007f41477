//! `cardlink`: one command for the whole system.
//!
//! - `cardlink dev` runs everything on this machine against an embedded Kafka-compatible broker
//!   (or, with `--kafka`, an existing cluster), and stops cleanly on Ctrl-C.
//! - `cardlink serve <service>` runs one service, for deployment.
//! - `cardlink adapter file|simulate` feeds an issuer's data in through the ingest API.
//! - `cardlink topics provision` creates cardlink's topics on a cluster (idempotent).
//!
//! The binary only parses arguments and wires libraries together; the logic lives in the crates.

mod cli;
mod demo;

use clap::Parser as _;

/// Our logs at info; the embedded broker's (tansu) only when something is wrong. `RUST_LOG`
/// overrides this.
const DEFAULT_LOG_FILTER: &str = "info,tansu_broker=warn,tansu_storage=warn,tansu_sans_io=warn,tansu_service=warn,tansu_schema=warn,tansu_auth=warn,tansu_model=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    cli::Cli::parse().run().await
}
