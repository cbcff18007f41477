//! `cardlink`: one command for the whole system.
//!
//! - `cardlink dev` runs everything on this machine against an embedded Kafka-compatible broker
//!   (or, with `--kafka`, an existing cluster), and stops cleanly on Ctrl-C.
//! - `cardlink serve <service>` runs one service, for deployment.
//! - `cardlink adapter file|simulate` feeds an issuer's data in through the ingest API.
//! - `cardlink aggregator …` is an aggregator's first client: consent requests, code exchange,
//!   subscribing with a cursor file, acknowledging.
//! - `cardlink keys generate|public` makes the platform signing key, its public key and the
//!   consent secret.
//! - `cardlink topics provision` creates cardlink's topics on a cluster (idempotent).
//! - `cardlink config keys|check` lists the configuration file's keys or checks a file.
//!
//! The binary only parses arguments and wires libraries together; the logic lives in the crates.

mod aggregator;
mod cli;
mod config;
mod demo;
mod dev;
mod keys;
mod runtime;
mod services;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};

/// Our logs at info; the embedded broker's (tansu) only when something is wrong. `RUST_LOG`
/// overrides this.
const DEFAULT_LOG_FILTER: &str = "info,tansu_broker=warn,tansu_storage=warn,tansu_sans_io=warn,tansu_service=warn,tansu_schema=warn,tansu_auth=warn,tansu_model=warn";

/// mimalloc rather than glibc's malloc: the services allocate per event (decode, projection,
/// protobuf), and the benchmark's profiles showed glibc's allocator at a quarter of their CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Settings: flags, then environment, then the configuration file, then defaults.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let file = match config::config_path(&args, std::env::var_os(config::CONFIG_ENV)) {
        Some(path) => config::load(&path, &cli::Cli::command())?,
        None => config::FileConfig::default(),
    };
    let matches = file.apply(cli::Cli::command()).get_matches_from(&args);
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());

    let env = file.passed_on.iter().cloned().chain(std::env::vars());
    let settings = cardlink_telemetry::ExportSettings::from_env(&cli.service_name(), env)?;
    let telemetry = cardlink_telemetry::Telemetry::init(&settings, DEFAULT_LOG_FILTER)?;
    let result = cli.run(&file).await;
    // Export what is still buffered (blocking; the exporters have their own timeouts).
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.context("flushing telemetry")?;
    result
}
