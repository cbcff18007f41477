//! Command-line arguments, and the thin glue from each command to the libraries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cardlink_adapters::file::{FileRun, Mapping, run_file};
use cardlink_adapters::simulator::{self, SimConfig, Simulator};
use cardlink_adapters::sink::IngestSink;
use cardlink_bus::BusConfig;
use cardlink_ingest::auth::StaticIssuerKeys;
use cardlink_ingest::server::{IngestConfig, RunningIngest};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cardlink", version, about = "The shared broker between card issuers and account aggregators")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system locally.
    Dev(DevArgs),
    /// Run one service.
    Serve {
        #[command(subcommand)]
        service: Service,
    },
    /// Feed an issuer's data in through the ingest API.
    Adapter {
        #[command(subcommand)]
        adapter: Adapter,
    },
    /// Manage cardlink's Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
}

#[derive(Debug, Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long = "kafka", env = "CARDLINK_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Use this Kafka cluster (host:port,...) instead of starting the embedded broker.
    #[arg(long, env = "CARDLINK_KAFKA_BOOTSTRAP")]
    kafka: Option<String>,
    /// Where the embedded broker listens.
    #[arg(long, default_value = "127.0.0.1:9092", env = "CARDLINK_EMBEDDED_BROKER")]
    broker_listen: SocketAddr,
    /// Where the ingest service listens.
    #[arg(long, default_value = "127.0.0.1:50051")]
    ingest_listen: SocketAddr,
    /// Simulated card events per second published by the demo issuer (0: none).
    #[arg(long, default_value_t = 20)]
    simulate_rate: u32,
}

#[derive(Debug, Subcommand)]
enum Service {
    /// The ingest gateway (gRPC IssuerIngest).
    Ingest {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long, default_value = "0.0.0.0:50051", env = "CARDLINK_INGEST_LISTEN")]
        listen: SocketAddr,
        /// Issuer credentials as issuer_id=key (repeat, or comma-separate in the variable).
        #[arg(
            long = "issuer-key",
            env = "CARDLINK_ISSUER_KEYS",
            value_delimiter = ',',
            required = true,
            hide_env_values = true
        )]
        issuer_keys: Vec<String>,
        /// How long a retried event is recognised as a duplicate.
        #[arg(long, default_value_t = 168)]
        dedup_window_hours: u64,
        /// Most records in one call.
        #[arg(long, default_value_t = cardlink_ingest::service::DEFAULT_MAX_RECORDS)]
        max_records_per_call: usize,
    },
}

#[derive(Debug, Args)]
struct IssuerArgs {
    /// The ingest service.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "CARDLINK_INGEST_ENDPOINT")]
    endpoint: String,
    /// The issuer to publish as.
    #[arg(long, env = "CARDLINK_ISSUER_ID")]
    issuer: String,
    /// The issuer's key (prefer the environment variable to keep it out of shell history).
    #[arg(long, env = "CARDLINK_ISSUER_KEY", hide_env_values = true)]
    key: String,
}

#[derive(Debug, Subcommand)]
enum Adapter {
    /// Publish a CSV or fixed-width file (UTF-8 or Shift_JIS) described by a mapping file.
    File {
        #[command(flatten)]
        issuer: IssuerArgs,
        /// The mapping (TOML) from the file's columns to fields.
        #[arg(long)]
        mapping: PathBuf,
        /// Where rejected lines are listed (default: <file>.rejects.csv).
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// Where progress is saved for resuming (default: <file>.checkpoint.json).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Records per ingest call.
        #[arg(long, default_value_t = cardlink_adapters::file::run::DEFAULT_BATCH)]
        batch: usize,
        file: PathBuf,
    },
    /// Publish synthetic card events from a deterministic simulated issuer.
    Simulate {
        #[command(flatten)]
        issuer: IssuerArgs,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Events per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Stop after this many events (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create every topic of the catalogue that is missing; report the others.
    Provision {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Replicas per partition (3 for a production cluster).
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
    },
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Dev(args) => dev(args).await,
            Command::Serve { service } => serve(service).await,
            Command::Adapter { adapter } => adapter_command(adapter).await,
            Command::Topics { command: TopicsCommand::Provision { kafka, replication_factor } } => {
                let config = BusConfig { replication_factor, ..BusConfig::local(kafka.bootstrap) };
                print_report(&cardlink_bus::provision(&config).await?);
                Ok(())
            }
        }
    }
}

async fn serve(service: Service) -> anyhow::Result<()> {
    match service {
        Service::Ingest { kafka, listen, issuer_keys, dedup_window_hours, max_records_per_call } => {
            let bus = BusConfig::local(kafka.bootstrap);
            cardlink_bus::provision(&bus).await.context("provisioning topics")?;
            let keys = StaticIssuerKeys::new(&issuer_keys).context("--issuer-key / CARDLINK_ISSUER_KEYS")?;
            let config = IngestConfig {
                listen,
                max_records_per_call,
                dedup_window: Duration::from_secs(dedup_window_hours * 3600),
                ..IngestConfig::default()
            };
            let running = cardlink_ingest::server::start(&bus, config, Arc::new(keys)).await?;
            shutdown_on_ctrl_c(running).await
        }
    }
}

async fn shutdown_on_ctrl_c(running: RunningIngest) -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    tracing::info!("shutting down");
    running.shutdown().await?;
    Ok(())
}

async fn adapter_command(adapter: Adapter) -> anyhow::Result<()> {
    match adapter {
        Adapter::File { issuer, mapping, rejects, checkpoint, batch, file } => {
            let mapping = Mapping::load(&mapping)?;
            let rejects_path = rejects.clone().unwrap_or_else(|| {
                let mut name = file.as_os_str().to_os_string();
                name.push(".rejects.csv");
                PathBuf::from(name)
            });
            let mut sink = IngestSink::connect(&issuer.endpoint, &issuer.issuer, &issuer.key).await?;
            let run = FileRun {
                input: file.clone(),
                mapping,
                issuer_id: issuer.issuer,
                rejects,
                checkpoint,
                batch_size: batch.max(1),
                progress: true,
            };
            let summary = run_file(run, &mut sink).await?;
            println!(
                "{}: read {}, published {}, duplicate {}, rejected {}{}",
                file.display(),
                summary.read,
                summary.published,
                summary.duplicate,
                summary.rejected,
                if summary.resumed_after_line > 0 {
                    format!(" (resumed after line {})", summary.resumed_after_line)
                } else {
                    String::new()
                }
            );
            if summary.rejected > 0 {
                println!("rejected lines are listed in {}", rejects_path.display());
            }
            Ok(())
        }
        Adapter::Simulate { issuer, seed, members, rate, count } => {
            let mut sim = Simulator::new(SimConfig::new(&issuer.issuer, seed, members));
            let mut sink = IngestSink::connect(&issuer.endpoint, &issuer.issuer, &issuer.key).await?;
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let (accepted, duplicate, rejected) = simulator::pace(&mut sim, &mut sink, rate, count, stop).await?;
            println!(
                "simulated issuer {}: accepted {accepted}, duplicate {duplicate}, rejected {rejected}",
                issuer.issuer
            );
            Ok(())
        }
    }
}

/// The demo issuer `cardlink dev` runs.
const DEMO_ISSUER: &str = "demo-issuer";

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    // Keep the broker alive for the whole run; dropping it stops it.
    let (_broker, bootstrap) = match args.kafka {
        Some(kafka) => (None, kafka),
        None => start_embedded(args.broker_listen).await?,
    };
    let bus = BusConfig::local(bootstrap.clone());
    let report = cardlink_bus::provision(&bus).await.with_context(|| format!("provisioning topics on {bootstrap}"))?;
    print_report(&report);

    let demo_key = format!("dev-{}", uuid::Uuid::new_v4().simple());
    let keys = StaticIssuerKeys::new([format!("{DEMO_ISSUER}={demo_key}")])?;
    let mut ingest = cardlink_ingest::server::start(
        &bus,
        IngestConfig { listen: args.ingest_listen, ..IngestConfig::default() },
        Arc::new(keys),
    )
    .await?;
    ingest.ready().await;
    let endpoint = format!("http://{}", ingest.addr());

    println!();
    println!("cardlink dev is running");
    println!("  Kafka bootstrap servers:  {bootstrap}");
    println!("  gRPC IssuerIngest:        {endpoint}");
    println!("  demo issuer:              {DEMO_ISSUER}  (key for this run: {demo_key})");
    println!();
    println!("Try the batch-file adapter:");
    println!("  CARDLINK_ISSUER_KEY={demo_key} cargo run --release -- adapter file --issuer {DEMO_ISSUER} \\");
    println!(
        "    --mapping crates/adapters/samples/core_export_sjis.toml crates/adapters/samples/core_export_sjis.dat"
    );
    println!("Press Ctrl-C to stop.");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let simulation = (args.simulate_rate > 0).then(|| {
        let endpoint = endpoint.clone();
        let rate = args.simulate_rate;
        tokio::spawn(async move {
            let mut sim = Simulator::new(SimConfig::new(DEMO_ISSUER, 1, 200));
            let mut sink = IngestSink::connect(&endpoint, DEMO_ISSUER, &demo_key).await?;
            let stop = async {
                let _ = stop_rx.await;
            };
            simulator::pace(&mut sim, &mut sink, rate, None, stop).await.map_err(anyhow::Error::from)
        })
    });

    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    println!("stopping");
    let _ = stop_tx.send(());
    if let Some(task) = simulation {
        match task.await {
            Ok(Ok((accepted, duplicate, rejected))) => {
                println!("demo issuer published {accepted} events ({duplicate} duplicate, {rejected} rejected)");
            }
            Ok(Err(e)) => eprintln!("simulator stopped: {e:#}"),
            Err(e) => eprintln!("simulator task failed: {e}"),
        }
    }
    ingest.shutdown().await?;
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
