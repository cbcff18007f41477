//! `cardlink-bench`: the benchmark of docs/benchmarks.md.
//!
//! ```sh
//! cargo run --release -p cardlink-bench -- --out docs/bench            # embedded broker
//! cargo run --release -p cardlink-bench -- --kafka host:9092 --out …   # an existing cluster
//! ```
//!
//! It drives the real services over gRPC with the issuer simulator and many aggregator clients,
//! and writes `results.json`, `results.md` and `fanout.png` to `--out`. With `--history` it runs
//! the history benchmark instead ([`history`]: backfill against a growing store, the indexer,
//! `ListTransactions`) and writes `history.json` and `history.md`; with `--peak`, the whole bus
//! at peak ([`peak`]: one replica's shared reader against a plain consumer, with ten million
//! consents and 1,000 streams) into `peak.json` and `peak.md`; with `--idle`, memory per idle
//! stream from 1,000 to 10,000 streams ([`idle`]) into `idle.json` and `idle.md`. See [`run`]
//! for what is measured and how; the hidden subcommands are the child processes it starts
//! ([`roles`]).

mod history;
mod idle;
mod peak;
mod plot;
mod procstat;
mod report;
mod roles;
mod run;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cardlink-bench", about = "Throughput, latency and the cost of one more connection")]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// An existing Kafka cluster (host:port,...) instead of the embedded broker.
    #[arg(long)]
    kafka: Option<String>,
    /// Connected streams to measure at (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    streams: Vec<usize>,
    /// Active consents per measurement.
    #[arg(long, default_value_t = 10_000)]
    consents: usize,
    /// Events per second the simulated issuer publishes during the fan-out measurements.
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    /// Events per fan-out measurement.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// Records for the ingest measurement.
    #[arg(long, default_value_t = 400_000)]
    ingest_events: usize,
    /// Concurrent ingest clients.
    #[arg(long, default_value_t = 8)]
    ingest_clients: usize,
    /// Skip the per-aggregator-consumer baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Where results.json, results.md and fanout.png go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Run the history benchmark instead (embedded broker; see the `--history-*` options).
    #[arg(long)]
    history: bool,
    /// Other accounts' rows in the store at each backfill measurement.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    history_others: Vec<usize>,
    /// The stores to measure on (postgres: a throwaway cluster; its server must be installed).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    history_stores: Vec<history::StoreKind>,
    /// The member's transactions over 24 months.
    #[arg(long, default_value_t = 1_500)]
    history_member_rows: usize,
    /// Other accounts' records on the bus for the indexer's throughput.
    #[arg(long, default_value_t = 100_000)]
    history_indexed: usize,
    /// Backfills per measurement (the median time and the mean CPU are reported).
    #[arg(long, default_value_t = 10)]
    history_runs: usize,
    /// Run the whole-bus-at-peak benchmark instead (embedded broker; see the `--peak-*` options).
    #[arg(long)]
    peak: bool,
    /// Active consents the replica holds.
    #[arg(long, default_value_t = 10_000_000)]
    peak_consents: usize,
    /// Streams (one per aggregator) registered with the hub.
    #[arg(long, default_value_t = 1_000)]
    peak_streams: usize,
    /// Transactions on the bus for the read-rate measurement.
    #[arg(long, default_value_t = 1_000_000)]
    peak_records: usize,
    /// Share of those transactions that belong to consented accounts.
    #[arg(long, default_value_t = 0.1)]
    peak_consented_share: f64,
    /// Run the idle-stream memory benchmark instead (see the `--idle-*` options).
    #[arg(long)]
    idle: bool,
    /// Idle streams connected at each reading (comma-separated, ascending).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    idle_streams: Vec<usize>,
    /// Streams per connection in the multiplexed layout (at most 256, the services' limit of
    /// calls per connection: beyond it, streams wait for one to end and the run stalls).
    #[arg(long, default_value_t = 250)]
    idle_multiplex: usize,
}

/// A benchmark's report: written to `--out` as `<name>.json` and `<name>.md`, and printed.
pub(crate) trait Written: serde::Serialize {
    /// The files' name.
    const NAME: &'static str;
    fn markdown(&self) -> String;
    /// Where the machine the run was on goes.
    fn machine(&mut self) -> &mut String;

    /// Anything written beside the JSON and the Markdown (a plot).
    fn write_more(&self, _dir: &Path) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Stamps `report` with this machine, writes it to `out` and prints it.
fn finish<R: Written>(mut report: R, out: &Path) -> anyhow::Result<()> {
    *report.machine() = machine();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join(format!("{}.json", R::NAME)), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(out.join(format!("{}.md", R::NAME)), report.markdown())?;
    report.write_more(out)?;
    println!("{}", report.markdown());
    println!("results in {}", out.display());
    Ok(())
}

#[derive(Debug, Subcommand)]
enum Role {
    #[command(hide = true)]
    ServeIngest {
        #[arg(long)]
        kafka: String,
        #[arg(long)]
        prefix: String,
        #[arg(long = "issuer-key")]
        issuer_keys: Vec<String>,
    },
    #[command(hide = true)]
    ServeSubscription {
        #[arg(long)]
        kafka: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        trusted_key: String,
        #[arg(long)]
        secret: String,
    },
    #[command(hide = true)]
    Baseline {
        #[arg(long)]
        kafka: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        secret: String,
        #[arg(long)]
        aggregators: usize,
        /// Where each partition's reading starts, `tx|st:partition:offset`.
        #[arg(long = "start")]
        starts: Vec<String>,
        /// Records stamped before this (ms since the epoch) are not part of the workload.
        #[arg(long)]
        since_ms: i64,
        /// How many workload records each consumer reads before it is done.
        #[arg(long)]
        expect: u64,
        /// How many consents the topic holds by now (every stage adds its own).
        #[arg(long)]
        consents: usize,
    },
}

fn secret(text: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).context("--secret: base64url")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned()))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024 / 1024);
    format!("{cores} cores ({cpu}), {mem} GiB")
}

/// mimalloc rather than glibc's malloc: the services allocate per event (decode, projection,
/// protobuf), and the benchmark's profiles showed glibc's allocator at a quarter of their CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match cli.role {
        Some(Role::ServeIngest { kafka, prefix, issuer_keys }) => {
            roles::serve_ingest(roles::bus(&kafka, &prefix), issuer_keys).await
        }
        Some(Role::ServeSubscription { kafka, prefix, trusted_key, secret: s }) => {
            roles::serve_subscription(roles::bus(&kafka, &prefix), trusted_key, secret(&s)?).await
        }
        Some(Role::Baseline { kafka, prefix, secret: s, aggregators, starts, since_ms, expect, consents }) => {
            let starts = starts.iter().map(|r| roles::Start::parse(r)).collect::<anyhow::Result<Vec<_>>>()?;
            let aggregators = (0..aggregators).map(|i| format!("agg-{i:04}")).collect();
            let workload = roles::Workload { starts, since_ms, expect, consents };
            roles::baseline(roles::bus(&kafka, &prefix), aggregators, workload, secret(&s)?).await
        }
        None if cli.run.peak => {
            let a = cli.run;
            let plan = peak::Plan {
                consents: a.peak_consents,
                streams: a.peak_streams,
                records: a.peak_records,
                consented_share: a.peak_consented_share,
            };
            finish(peak::run(&plan).await?, &a.out)
        }
        None if cli.run.idle => {
            let a = cli.run;
            let mut sizes = a.idle_streams.clone();
            sizes.sort_unstable();
            let plan = idle::Plan { kafka: a.kafka, sizes, multiplex: a.idle_multiplex };
            finish(idle::run(&plan).await?, &a.out)
        }
        None if cli.run.history => {
            let a = cli.run;
            let mut others = a.history_others.clone();
            others.sort_unstable();
            let plan = history::Plan {
                others,
                stores: a.history_stores,
                member_rows: a.history_member_rows,
                indexed: a.history_indexed,
                runs: a.history_runs,
            };
            finish(history::run(&plan).await?, &a.out)
        }
        None => {
            let a = cli.run;
            let plan = run::Plan {
                kafka: a.kafka,
                streams: a.streams,
                consents: a.consents,
                rate: a.rate,
                events: a.events,
                ingest_events: a.ingest_events,
                ingest_clients: a.ingest_clients,
                baseline: !a.no_baseline,
            };
            finish(run::run(plan).await?, &a.out)
        }
    }
}
