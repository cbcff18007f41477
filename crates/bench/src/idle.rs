//! Memory per idle stream at scale (`--idle`): the subscription service's resident memory as
//! idle streams connect, 1,000 and then 10,000 of them.
//!
//! - **Own connections**: every stream on an HTTP/2 connection of its own, as separate
//!   aggregators' clients are.
//! - **Multiplexed**: `multiplex` streams to a connection, as one client holding many streams is.
//!
//! Each layout runs in a fresh subscription process (a child process, started as `cardlink
//! serve subscription` starts it). Streams are spread over as many aggregators as the service's
//! per-aggregator limit needs; each is counted once its first message (the caught-up heartbeat)
//! arrived. The figure is the rise in the service's resident memory from one size to the next over
//! the streams added: what one more idle stream costs, the process's fixed cost left out.

use std::time::Duration;

use anyhow::Context as _;
use cardlink_api::v1;
use cardlink_api::v1::subscription_client::SubscriptionClient;
use cardlink_subscription::grpc::MAX_STREAMS_PER_AGGREGATOR;
use futures::StreamExt as _;
use serde::Serialize;
use tonic::transport::Channel;

use crate::procstat;
use crate::run::{Ground, authorized, channel, operator, register_aggregators};

/// Streams opened at once.
const OPENING: usize = 64;
/// How long memory is left to settle before it is read.
const SETTLE: Duration = Duration::from_secs(3);

/// What to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    pub kafka: Option<String>,
    /// Streams connected at each reading, ascending.
    pub sizes: Vec<usize>,
    /// Streams per connection in the multiplexed layout.
    pub multiplex: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub machine: String,
    pub rows: Vec<Row>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    pub layout: String,
    pub streams: usize,
    pub connections: usize,
    pub rss_mib: f64,
    /// Resident memory added per stream since the previous size (from none at the first).
    pub kib_per_stream: f64,
}

impl crate::Written for Report {
    const NAME: &'static str = "idle";

    fn machine(&mut self) -> &mut String {
        &mut self.machine
    }

    fn markdown(&self) -> String {
        let mut out = String::from(
            "| layout | streams | connections | service RSS MiB | KiB per stream added (target ≤ 16, own connections) |\n\
             |---|---:|---:|---:|---:|\n",
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {:.1} | {:.1} |\n",
                r.layout, r.streams, r.connections, r.rss_mib, r.kib_per_stream
            ));
        }
        out
    }
}

/// An open stream, held (and not read) so that it stays idle.
type Held = tonic::Streaming<v1::SubscribeResponse>;

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let max = plan.sizes.iter().copied().max().unwrap_or(0);
    anyhow::ensure!(plan.multiplex > 0, "--idle-multiplex must be at least 1");
    let ground = Ground::lay(plan.kafka.as_deref()).await?;
    let registry = ground.registry.registry();
    let op = operator(registry).await?;
    let tokens = register_aggregators(registry, &op, max.div_ceil(MAX_STREAMS_PER_AGGREGATOR).max(1)).await?;
    eprintln!("bench: registered {} aggregators", tokens.len());
    let secret = rand::random::<[u8; 32]>().to_vec();
    let mut report = Report::default();
    for (layout, per_connection) in [("own connection", 1), ("multiplexed", plan.multiplex)] {
        let layout =
            if per_connection == 1 { layout.to_owned() } else { format!("{layout}, {per_connection} per connection") };
        let (subscription, addr) = ground.subscription(&secret).await?;
        let pid = subscription.pid()?;
        tokio::time::sleep(SETTLE).await;
        let mut previous = (0, procstat::sample(pid)?.rss);
        let mut channels: Vec<Channel> = Vec::new();
        let mut held: Vec<Held> = Vec::new();
        for &size in &plan.sizes {
            while channels.len() < size.div_ceil(per_connection) {
                channels.push(channel(&addr).await?);
            }
            let opened = futures::stream::iter(held.len()..size)
                .map(|n| open(channels[n / per_connection].clone(), &tokens[n % tokens.len()]))
                .buffered(OPENING)
                .collect::<Vec<_>>()
                .await;
            for stream in opened {
                held.push(stream.with_context(|| format!("opening stream {} ({layout})", held.len() + 1))?);
            }
            tokio::time::sleep(SETTLE).await;
            let rss = procstat::sample(pid)?.rss;
            let added = (rss as f64 - previous.1 as f64) / 1024.0 / (size - previous.0).max(1) as f64;
            eprintln!(
                "bench: {size} idle streams ({layout}): {:.1} MiB, {added:.1} KiB per stream added",
                rss as f64 / 1048576.0
            );
            report.rows.push(Row {
                layout: layout.clone(),
                streams: size,
                connections: channels.len(),
                rss_mib: rss as f64 / 1048576.0,
                kib_per_stream: added,
            });
            previous = (size, rss);
        }
        drop(held);
        drop(channels);
        subscription.stop().await;
    }
    ground.registry.shutdown().await?;
    Ok(report)
}

/// Opens a live stream as `token` on `channel`, once it has said it is live.
async fn open(channel: Channel, token: &str) -> anyhow::Result<Held> {
    let request = v1::SubscribeRequest { kinds: vec![v1::EventKind::Transaction as i32], ..Default::default() };
    let mut stream = SubscriptionClient::new(channel).subscribe(authorized(request, token)?).await?.into_inner();
    let first = stream.message().await?.context("the stream ended at once")?;
    anyhow::ensure!(first.heartbeat.is_some_and(|h| h.caught_up), "the first message is not the live heartbeat");
    Ok(stream)
}
