//! `cardlink`: one command for the whole system.
//!
//! - `cardlink dev` runs everything on this machine against an embedded Kafka-compatible broker
//!   (or, with `--kafka`, an existing cluster), and stops cleanly on Ctrl-C.
//! - `cardlink topics provision` creates cardlink's topics on a cluster (idempotent).
//!
//! The binary only parses arguments and wires libraries together; the logic lives in the crates.

use std::net::SocketAddr;

use anyhow::Context as _;
use cardlink_bus::BusConfig;
use clap::{Parser, Subcommand};

/// Our logs at info; the embedded broker's (tansu) only when something is wrong. `RUST_LOG`
/// overrides this.
const DEFAULT_LOG_FILTER: &str = "info,tansu_broker=warn,tansu_storage=warn,tansu_sans_io=warn,tansu_service=warn,tansu_schema=warn,tansu_auth=warn,tansu_model=warn";

#[derive(Debug, Parser)]
#[command(name = "cardlink", version, about = "The shared broker between card issuers and account aggregators")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system locally.
    Dev(DevArgs),
    /// Manage cardlink's Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
}

#[derive(Debug, clap::Args)]
struct DevArgs {
    /// Use this Kafka cluster (host:port,...) instead of starting the embedded broker.
    #[arg(long, env = "CARDLINK_KAFKA_BOOTSTRAP")]
    kafka: Option<String>,
    /// Where the embedded broker listens.
    #[arg(long, default_value = "127.0.0.1:9092", env = "CARDLINK_EMBEDDED_BROKER")]
    broker_listen: SocketAddr,
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create every topic of the catalogue that is missing; report the others.
    Provision {
        #[arg(long, env = "CARDLINK_KAFKA_BOOTSTRAP")]
        kafka: String,
        /// Replicas per partition (3 for a production cluster).
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .init();
    match Cli::parse().command {
        Command::Dev(args) => dev(args).await,
        Command::Topics { command: TopicsCommand::Provision { kafka, replication_factor } } => {
            let config = BusConfig { replication_factor, ..BusConfig::local(kafka) };
            print_report(&cardlink_bus::provision(&config).await?);
            Ok(())
        }
    }
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    // Keep the broker alive for the whole run; dropping it stops it.
    let (_broker, bootstrap) = match args.kafka {
        Some(kafka) => (None, kafka),
        None => start_embedded(args.broker_listen).await?,
    };
    let config = BusConfig::local(bootstrap.clone());
    let report =
        cardlink_bus::provision(&config).await.with_context(|| format!("provisioning topics on {bootstrap}"))?;
    print_report(&report);
    println!();
    println!("cardlink dev is running");
    println!("  Kafka bootstrap servers: {bootstrap}");
    println!("  (ingest, consent, subscription and the pages join here as they are built)");
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    println!("stopping");
    Ok(())
}

#[cfg(feature = "embedded-broker")]
async fn start_embedded(
    listen: SocketAddr,
) -> anyhow::Result<(Option<cardlink_bus::embedded::EmbeddedBroker>, String)> {
    let broker = cardlink_bus::embedded::EmbeddedBroker::start(listen)
        .await
        .with_context(|| format!("starting the embedded broker on {listen} (choose another with --broker-listen)"))?;
    let bootstrap = broker.bootstrap_servers();
    Ok((Some(broker), bootstrap))
}

#[cfg(not(feature = "embedded-broker"))]
async fn start_embedded(_listen: SocketAddr) -> anyhow::Result<(Option<()>, String)> {
    anyhow::bail!("this build has no embedded broker (feature `embedded-broker`); pass --kafka host:port")
}

fn print_report(report: &cardlink_bus::ProvisionReport) {
    for (_, name, state) in &report.topics {
        println!("  topic {name}: {state:?}");
    }
}
