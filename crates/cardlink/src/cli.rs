//! Command-line arguments, and the thin glue from each command to the libraries.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use cardlink_adapters::file::{FileRun, Mapping, run_file};
use cardlink_adapters::simulator::{self, SimConfig, Simulator};
use cardlink_adapters::sink::IngestSink;
use cardlink_bus::BusConfig;
use clap::{Args, Parser, Subcommand};

use crate::config::FileConfig;
use crate::runtime;
use crate::services::{
    ConsentSettings, HistorySettings, HistoryStoreArgs, IngestSettings, Mode, Platform, RegistrySettings,
    SubscriptionSettings,
};

#[derive(Debug, Parser)]
#[command(name = "cardlink", version, about = "The shared broker between card issuers and account aggregators")]
pub struct Cli {
    /// Configuration file (TOML; `cardlink config keys` lists its keys). Flags and environment
    /// variables override it.
    #[arg(long, global = true, env = crate::config::CONFIG_ENV)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system locally, with demo participants, consents and simulated issuers.
    Dev(Box<crate::dev::DevArgs>),
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
    /// Be an aggregator: request consents, exchange codes, subscribe, acknowledge.
    Aggregator(crate::aggregator::AggregatorArgs),
    /// Make the platform's keys and secrets (no code needed): `generate`, `public`.
    Keys {
        #[command(subcommand)]
        command: crate::keys::KeysCommand,
    },
    /// Platform operators' credentials.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Operations on records of the bus.
    Bus {
        #[command(subcommand)]
        command: BusCommand,
    },
    /// Manage cardlink's Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// The configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Issue a credential for a platform operator and print it once. Run it where the
    /// registry's signing key and Kafka settings are, e.g.
    /// `kubectl exec deploy/cardlink-registry -- cardlink operator credential --id ops-1`.
    Credential {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        signing: SigningKeyArgs,
        /// The operator's id (2-63 lowercase letters, digits or hyphens).
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum BusCommand {
    /// Append a copy of one record to its topic (same key, bytes and headers): how an event that
    /// a release could not decode — dead-lettered as `bus.undecodable` on the audit topic, which
    /// names the three values — reaches aggregators once a release that reads it runs.
    Redeliver {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// The topic, as the dead letter names it (`transactions.v1`, or `transactions`).
        topic: String,
        partition: i32,
        offset: i64,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// List every key a configuration file may hold, with its environment variable.
    Keys,
    /// Check the configuration file (--config / CARDLINK_CONFIG) and exit.
    Check,
}

#[derive(Debug, Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long = "kafka", env = "CARDLINK_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
}

impl KafkaArgs {
    /// The bus configuration: these arguments, then `CARDLINK_KAFKA__*` (librdkafka settings
    /// such as TLS and SASL) and `CARDLINK_TOPIC_PREFIX` from the environment, validated.
    fn bus(&self, file: &FileConfig) -> anyhow::Result<BusConfig> {
        runtime::bus_config(self.bootstrap.clone(), file)
    }
}

/// The platform keys that sign credentials, as the services that check them take them.
#[derive(Debug, Args)]
struct TrustedKeysArgs {
    /// Platform public keys (kid:base64url) that sign participant credentials; repeat.
    #[arg(long = "trusted-key", env = "CARDLINK_TRUSTED_KEYS", value_delimiter = ',')]
    trusted_keys: Vec<String>,
}

impl TrustedKeysArgs {
    /// The keys given (an empty variable names none).
    fn keys(&self) -> anyhow::Result<Vec<cardlink_auth::PublicKey>> {
        let given: Vec<String> = self.trusted_keys.iter().filter(|k| !k.trim().is_empty()).cloned().collect();
        runtime::trusted(&given)
    }

    /// The keys, at least one.
    fn required(&self) -> anyhow::Result<Vec<cardlink_auth::PublicKey>> {
        let keys = self.keys()?;
        anyhow::ensure!(
            !keys.is_empty(),
            "--trusted-key / CARDLINK_TRUSTED_KEYS: the platform's public key is required"
        );
        Ok(keys)
    }
}

/// The platform signing key, as the registry (and the operator credential command) take it.
#[derive(Debug, Args)]
struct SigningKeyArgs {
    /// The platform signing key: base64url of a 32-byte Ed25519 seed.
    #[arg(long, env = "CARDLINK_SIGNING_KEY", hide_env_values = true)]
    signing_key: String,
    /// The signing key's id, carried in every token (change it when rotating the key).
    #[arg(long, env = "CARDLINK_SIGNING_KEY_ID", default_value = "k1")]
    signing_key_id: String,
}

impl SigningKeyArgs {
    fn signer(&self) -> anyhow::Result<cardlink_auth::TokenSigner> {
        cardlink_auth::TokenSigner::from_base64_seed(&self.signing_key_id, &self.signing_key)
            .map_err(|e| anyhow::anyhow!("--signing-key / CARDLINK_SIGNING_KEY: {e}"))
    }
}

/// The secret consent and subscription share.
#[derive(Debug, Args)]
struct SecretArgs {
    /// Secret for account pseudonyms, cursors and page tickets: base64url of 32+ bytes, the same
    /// on the consent and subscription services.
    #[arg(long, env = "CARDLINK_CONSENT_SECRET", hide_env_values = true)]
    secret: String,
}

impl SecretArgs {
    fn platform(&self, trusted: &TrustedKeysArgs) -> anyhow::Result<Platform> {
        Ok(Platform { trusted_keys: trusted.required()?, secret: runtime::shared_secret(&self.secret)? })
    }
}

/// Each service: the Kafka and platform wiring a deployment gives it, and its own settings
/// ([`crate::services`], shared with `cardlink dev`).
#[derive(Debug, Subcommand)]
enum Service {
    /// Subscription (gRPC Subscription): consented events to aggregators.
    Subscription {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        trusted: TrustedKeysArgs,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        settings: SubscriptionSettings,
        #[command(flatten)]
        history: HistoryStoreArgs,
    },
    /// History (gRPC History): members' past transactions and statements on consent, and the
    /// indexer that keeps the history store at the bus's latest state.
    History {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        trusted: TrustedKeysArgs,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        settings: HistorySettings,
    },
    /// Consent (gRPC ConsentService) and the consent and member pages (HTTP).
    Consent {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        trusted: TrustedKeysArgs,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        settings: ConsentSettings,
    },
    /// The participants registry (gRPC Registry).
    Registry {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        signing: SigningKeyArgs,
        /// Issue a credential for this operator at start and print it (first start only).
        #[arg(long)]
        bootstrap_operator: Option<String>,
        #[command(flatten)]
        settings: RegistrySettings,
    },
    /// The ingest gateway (gRPC IssuerIngest).
    Ingest {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Issuers authenticate with the credentials the registry issues them (rotatable,
        /// revocable), checked with these keys.
        #[command(flatten)]
        trusted: TrustedKeysArgs,
        #[command(flatten)]
        settings: IngestSettings,
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
        /// The file holds past months (a load when joining): indexed into members' history,
        /// never delivered to live streams as new events.
        #[arg(long)]
        historical: bool,
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
        #[arg(long, default_value_t = 1, env = "CARDLINK_REPLICATION_FACTOR")]
        replication_factor: i32,
        /// Replicas that must hold a record before a write succeeds (default: 2 from a replication
        /// factor of 3 up, else 1).
        #[arg(long, env = "CARDLINK_MIN_INSYNC_REPLICAS")]
        min_insync_replicas: Option<i32>,
    },
}

fn signer_public(signer: &cardlink_auth::TokenSigner) -> String {
    signer.public_key().to_config()
}

impl Cli {
    /// The `service.name` telemetry reports for this command.
    pub fn service_name(&self) -> String {
        let name = match &self.command {
            Command::Dev(_) => "dev",
            Command::Serve { service: Service::Subscription { .. } } => "subscription",
            Command::Serve { service: Service::Consent { .. } } => "consent",
            Command::Serve { service: Service::History { .. } } => "history",
            Command::Serve { service: Service::Registry { .. } } => "registry",
            Command::Serve { service: Service::Ingest { .. } } => "ingest",
            Command::Adapter { .. } => "adapter",
            Command::Aggregator(_) => "aggregator-cli",
            Command::Topics { .. }
            | Command::Bus { .. }
            | Command::Config { .. }
            | Command::Keys { .. }
            | Command::Operator { .. } => "admin",
        };
        format!("cardlink-{name}")
    }

    pub async fn run(self, file: &FileConfig) -> anyhow::Result<()> {
        match self.command {
            Command::Dev(args) => crate::dev::run(*args, file).await,
            Command::Aggregator(args) => crate::aggregator::run(args).await,
            Command::Serve { service } => serve(service, file).await,
            Command::Adapter { adapter } => adapter_command(adapter).await,
            Command::Keys { command } => crate::keys::run(command),
            Command::Operator { command: OperatorCommand::Credential { kafka, signing, id } } => {
                // Check the arguments before touching Kafka.
                anyhow::ensure!(
                    cardlink_events::registry::is_plain_id(&id),
                    "--id {id:?}: 2-63 lowercase letters, digits or hyphens"
                );
                let signer = signing.signer()?;
                let bus = kafka.bus(file)?;
                cardlink_bus::check_topics(&bus).await.context("checking topics")?;
                // The registry's own code issues it (onto the registry topic), on a port of its own.
                let config = cardlink_registry::server::RegistryConfig {
                    listen: ([127, 0, 0, 1], 0).into(),
                    http_listen: None,
                    ..Default::default()
                };
                let running = cardlink_registry::server::start(&bus, config, Arc::new(signer)).await?;
                let issued = running.registry().bootstrap_operator(&id).await;
                running.shutdown().await?;
                println!("operator {id} credential (shown once): {}", issued?.token);
                Ok(())
            }
            Command::Bus { command: BusCommand::Redeliver { kafka, topic, partition, offset } } => {
                let topic = cardlink_bus::redeliver::topic_named(&topic)
                    .with_context(|| format!("{topic:?} is not a cardlink topic (e.g. transactions.v1)"))?;
                let delivered = cardlink_bus::redeliver::redeliver(&kafka.bus(file)?, topic, partition, offset).await?;
                println!(
                    "{}/{partition}/{offset} appended again as {}/{}/{}",
                    topic.suffix(),
                    topic.suffix(),
                    delivered.partition,
                    delivered.offset
                );
                Ok(())
            }
            Command::Topics {
                command: TopicsCommand::Provision { kafka, replication_factor, min_insync_replicas },
            } => {
                let config = BusConfig { replication_factor, min_insync_replicas, ..kafka.bus(file)? };
                runtime::print_report(&cardlink_bus::provision(&config).await?);
                Ok(())
            }
            Command::Config { command: ConfigCommand::Keys } => {
                use clap::CommandFactory as _;
                println!("{:<34} {:<36} meaning", "file key", "environment variable");
                for (key, env, help) in crate::config::keys(&Cli::command()) {
                    println!("{key:<34} {env:<36} {help}");
                }
                Ok(())
            }
            Command::Config { command: ConfigCommand::Check } => {
                match &self.config {
                    Some(path) => println!("{}: valid", path.display()),
                    None => println!("no configuration file named (--config or CARDLINK_CONFIG); defaults apply"),
                }
                Ok(())
            }
        }
    }
}

async fn serve(service: Service, file: &FileConfig) -> anyhow::Result<()> {
    // Each arm checks the arguments (by building the service's config) before touching Kafka.
    match service {
        Service::Subscription { kafka, trusted, secret, settings, history } => {
            let config = settings.config(Mode::Serve, &secret.platform(&trusted)?, history.url()?)?;
            let running = cardlink_subscription::server::start(&checked_bus(&kafka, file).await?, config).await?;
            until_stopped(|| running.shutdown()).await
        }
        Service::History { kafka, trusted, secret, settings } => {
            let config = settings.config(Mode::Serve, &secret.platform(&trusted)?, None)?;
            let running = cardlink_history_service::server::start(&checked_bus(&kafka, file).await?, config).await?;
            until_stopped(|| running.shutdown()).await
        }
        Service::Consent { kafka, trusted, secret, settings } => {
            let config = settings.config(Mode::Serve, &secret.platform(&trusted)?, None)?;
            let running = cardlink_consent::server::start(&checked_bus(&kafka, file).await?, config).await?;
            until_stopped(|| running.shutdown()).await
        }
        Service::Registry { kafka, signing, bootstrap_operator, settings } => {
            let signer = signing.signer()?;
            let config = settings.config(Mode::Serve)?;
            let bus = checked_bus(&kafka, file).await?;
            println!("platform public key (give to other services): {}", signer_public(&signer));
            let running = cardlink_registry::server::start(&bus, config, Arc::new(signer)).await?;
            if let Some(operator) = bootstrap_operator {
                let credential = running.registry().bootstrap_operator(&operator).await?;
                println!("operator {operator} credential (shown once): {}", credential.token);
            }
            until_stopped(|| async { running.shutdown().await.context("stopping the registry") }).await??;
            Ok(())
        }
        Service::Ingest { kafka, trusted, settings } => {
            let config = settings.config(Mode::Serve, &trusted.keys()?)?;
            let running = cardlink_ingest::server::start(&checked_bus(&kafka, file).await?, config).await?;
            until_stopped(|| async { running.shutdown().await.context("stopping ingest") }).await??;
            Ok(())
        }
    }
}

/// The bus a `serve` process runs on, its topics checked (`cardlink topics` provisions them).
async fn checked_bus(kafka: &KafkaArgs, file: &FileConfig) -> anyhow::Result<BusConfig> {
    let bus = kafka.bus(file)?;
    cardlink_bus::check_topics(&bus).await.context("checking topics")?;
    Ok(bus)
}

/// Waits for SIGTERM or Ctrl-C, then runs the service's own shutdown (it drains in order).
async fn until_stopped<F: std::future::Future>(shutdown: impl FnOnce() -> F) -> anyhow::Result<F::Output> {
    runtime::stop_signal().await?;
    tracing::info!("shutting down");
    Ok(shutdown().await)
}

async fn adapter_command(adapter: Adapter) -> anyhow::Result<()> {
    match adapter {
        Adapter::File { issuer, mapping, rejects, checkpoint, batch, historical, file } => {
            let mapping = Mapping::load(&mapping)?;
            let rejects_path = rejects.clone().unwrap_or_else(|| {
                let mut name = file.as_os_str().to_os_string();
                name.push(".rejects.csv");
                PathBuf::from(name)
            });
            let mut sink = IngestSink::connect(&issuer.endpoint, &issuer.issuer, &issuer.key).await?;
            if historical {
                sink = sink.historical();
            }
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
