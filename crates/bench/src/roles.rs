//! The benchmark's child processes. Each service under test runs in a process of its own — the
//! same `start` functions `cardlink serve` calls — so its CPU time and memory can be read apart
//! from the load generator's and the broker's. So does the baseline.
//!
//! Protocol with the driver, on stdin/stdout: a child prints `ready …` once it serves; the
//! baseline then waits for `go`, works, and prints `done <json>`. Every child stops when its
//! stdin closes.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use cardlink_bus::{BusConfig, Consumer, PolledConsumer, StartAt, Topic};
use cardlink_views::consent::ConsentView;
use cardlink_views::follow;
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// The bus of a benchmark run: its own topic prefix, so runs against a shared cluster do not mix.
/// librdkafka settings in `CARDLINK_KAFKA__*` apply as they do to `cardlink serve` — to the
/// services under test and to the plain baselines alike (`CARDLINK_KAFKA__LINGER_MS=1 …`).
pub fn bus(kafka: &str, prefix: &str) -> BusConfig {
    let librdkafka = std::env::vars().filter(|(name, _)| name.starts_with(cardlink_bus::config::ENV_LIBRDKAFKA_PREFIX));
    BusConfig { topic_prefix: prefix.to_owned(), ..BusConfig::local(kafka) }.with_env(librdkafka)
}

/// Waits until the driver closes our stdin (or says `stop`).
async fn until_stdin_closes() {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "stop" {
            break;
        }
    }
}

pub async fn serve_ingest(bus: BusConfig, issuer_keys: Vec<String>) -> anyhow::Result<()> {
    let keys = cardlink_authn::BootstrapIssuerKeys::new(&issuer_keys).context("issuer keys")?;
    let config = cardlink_ingest::server::IngestConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        bootstrap_issuer_keys: Some(Arc::new(keys)),
        ..Default::default()
    };
    let mut running = cardlink_ingest::server::start(&bus, config).await?;
    running.ready().await;
    println!("ready {}", running.addr());
    until_stdin_closes().await;
    running.shutdown().await?;
    Ok(())
}

pub async fn serve_subscription(bus: BusConfig, trusted_key: String, secret: Vec<u8>) -> anyhow::Result<()> {
    let key = cardlink_auth::PublicKey::from_config(&trusted_key).map_err(|_| anyhow::anyhow!("bad trusted key"))?;
    let config = cardlink_subscription::server::SubscriptionConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        trusted_keys: vec![key],
        secret: Arc::from(secret.as_slice()),
        http_listen: None,
        max_stream_age: cardlink_subscription::server::DEFAULT_MAX_STREAM_AGE,
        history_store: None,
    };
    let running = cardlink_subscription::server::start(&bus, config).await?;
    println!("ready {}", running.addr());
    until_stdin_closes().await;
    running.shutdown().await;
    Ok(())
}

/// Where one partition's reading starts: an offset the broker reports as valid, at or before
/// the first record of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    pub topic: Topic,
    pub partition: i32,
    pub from: i64,
}

impl Start {
    /// `t:partition:from` with `t` = `tx` or `st`.
    pub fn to_arg(self) -> String {
        let t = if self.topic == Topic::Transactions { "tx" } else { "st" };
        format!("{t}:{}:{}", self.partition, self.from)
    }

    pub fn parse(arg: &str) -> anyhow::Result<Self> {
        let parts: Vec<&str> = arg.split(':').collect();
        let [t, p, from] = parts[..] else { anyhow::bail!("start {arg:?}: expected t:partition:from") };
        let topic = match t {
            "tx" => Topic::Transactions,
            "st" => Topic::Statements,
            _ => anyhow::bail!("start {arg:?}: topic tx or st"),
        };
        Ok(Self { topic, partition: p.parse()?, from: from.parse()? })
    }
}

/// The records the baseline reads: from `starts`, those stamped at or after `since_ms`, until
/// `expect` of them have been read, once its consent view holds `consents`.
///
/// Counting rather than reading to an end offset, because a broker's reported end can trail
/// what it has written (tansu's does, for as long as nothing new arrives) and a consumer told to
/// start beyond the reported end is refused.
#[derive(Clone, Debug)]
pub struct Workload {
    pub starts: Vec<Start>,
    pub since_ms: i64,
    pub expect: u64,
    /// The consents the view must hold before reading starts.
    pub consents: usize,
}

/// A consumer that has read nothing for this long has read all there is: it reports what it
/// has (a short count shows in the report) instead of waiting forever. Generous, because with a
/// thousand consumers on one broker some wait minutes for their turn.
const QUIET: std::time::Duration = std::time::Duration::from_secs(600);

/// The design cardlink replaces, for comparison: one Kafka consumer per aggregator, each reading
/// every record of the workload, decoding it, and keeping what that aggregator's consents cover
/// (the same consent lookup and projection cardlink does once per record for everyone). What a
/// consumer keeps is counted, not sent anywhere — the baseline is spared the network delivery
/// that cardlink's figures include.
pub async fn baseline(
    mut bus: BusConfig,
    aggregators: Vec<String>,
    workload: Workload,
    secret: Vec<u8>,
) -> anyhow::Result<()> {
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    // The consent view reads as cardlink's does (the tuning below is for the many consumers).
    let (mut view, _follower) =
        follow::spawn(PolledConsumer::new(&bus, "baseline-consents")?, Topic::Consents, ConsentView::new(), stopped);
    // Tuned as one would for a thousand consumers in one place: Kafka's usual long-poll wait
    // rather than cardlink's 10 ms (a thousand consumers polling every 10 ms measure the
    // broker's overload, not the design), and 1 MiB of pre-fetch each instead of 16 (16 GiB in
    // all does not fit the machine), and librdkafka's own one second before a consumer whose
    // pre-fetch queue was full fetches again rather than cardlink's 10 ms (a reader that must
    // catch up fast is one thing; a thousand consumers re-checking a hundred times a second while
    // the two cores serve the others measured that, not the design: 492× in one run, ~100× with
    // this).
    bus.librdkafka.insert("fetch.wait.max.ms".into(), "500".into());
    bus.librdkafka.insert("queued.max.messages.kbytes".into(), "1024".into());
    bus.librdkafka.insert("fetch.queue.backoff.ms".into(), "1000".into());
    tokio::time::timeout(std::time::Duration::from_secs(60), view.caught_up())
        .await
        .context("the consent view did not catch up within a minute")?;
    // Caught up to the ends it saw when it started; every stage adds consents, so also count.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while view.read(ConsentView::len) < workload.consents {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the consent view holds {} of {} consents; read up to {:?}",
            view.read(ConsentView::len),
            workload.consents,
            view.watermark.borrow().next
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let before = crate::procstat::sample(std::process::id())?.rss;
    let assignment: Vec<_> = workload.starts.iter().map(|s| (s.topic, s.partition, StartAt::Offset(s.from))).collect();
    let mut consumers = Vec::with_capacity(aggregators.len());
    for (i, _) in aggregators.iter().enumerate() {
        let consumer = Consumer::new(&bus, &format!("baseline-{i}"))?;
        consumer.assign(&assignment)?;
        consumers.push(consumer);
    }
    let after = crate::procstat::sample(std::process::id())?.rss;
    println!("ready {}", after.saturating_sub(before));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "go" {
            break;
        }
    }
    let started = Instant::now();
    let secret: Arc<[u8]> = Arc::from(secret.as_slice());
    let tasks = consumers.into_iter().zip(aggregators).map(|(consumer, aggregator)| {
        let view = view.clone();
        let secret = Arc::clone(&secret);
        let Workload { since_ms, expect, .. } = workload;
        tokio::spawn(async move {
            let mut kept = 0u64;
            let mut read = 0u64;
            while read < expect {
                let Ok(record) = tokio::time::timeout(QUIET, consumer.recv_retrying("baseline consumer")).await else {
                    break;
                };
                let record = record?;
                if record.timestamp_ms.is_some_and(|t| t < since_ms) {
                    continue;
                }
                read += 1;
                let Ok(event) = cardlink_events::decode(&record.payload) else { continue };
                let account = record.key_str().unwrap_or_default();
                let now = chrono::Utc::now();
                let delivery = view.read(|v| {
                    cardlink_subscription::projection::project_for(
                        &event,
                        &v.grants(account),
                        &aggregator,
                        &secret,
                        now,
                    )
                });
                kept += u64::from(delivery.is_some());
            }
            Ok::<_, cardlink_bus::BusError>((read, kept))
        })
    });
    let mut read = 0;
    let mut kept = 0;
    for done in futures::future::join_all(tasks).await {
        let (r, k) = done??;
        read += r;
        kept += k;
    }
    println!("done {}", serde_json::json!({"read": read, "kept": kept, "seconds": started.elapsed().as_secs_f64()}));
    until_stdin_closes().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_pass_through_the_command_line() {
        let s = Start { topic: Topic::Statements, partition: 3, from: 10 };
        assert_eq!(Start::parse(&s.to_arg()).unwrap(), s);
        assert!(Start::parse("xx:1:2").is_err());
        assert!(Start::parse("tx:1").is_err());
        assert!(Start::parse("tx:1:2:3").is_err());
    }
}
