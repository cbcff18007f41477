//! The history benchmark (`--history`): what a new connection's backfill costs and whether it
//! depends on anyone else's data.
//!
//! One member's card holds 24 months (~1,500 transactions and 24 statements by default). The
//! store also holds other accounts' rows — 10k, 100k, 1M by default, grown in place between
//! measurements — and the backfill of the member's consent must take the same time and CPU at
//! every size: every statement the store issues is keyed by the account. Per store (SQLite, and
//! PostgreSQL in a throwaway cluster when its server is installed), it reports:
//!
//! - the indexer's throughput, last: with the history service stopped, `--history-indexed` other
//!   accounts' records are published; rows/s from the service's restart until its watermarks
//!   cover them all (a backlog, so the indexer's own rate), beside how fast this process published
//!   them;
//! - the backfill: `Subscribe` with a backfill of the consent, from the call until the in-band
//!   progress says complete — wall time (the median of `--history-runs`) and the CPU of this
//!   process per backfill (history, subscription, broker and client are all in it; the runs'
//!   total over their number, as CPU time is read in 10 ms ticks);
//! - `ListTransactions`: latency of every 100-row page of the member's 24 months, p50 and p99.
//!
//! The services, the embedded broker and the store run in this process, so the CPU figure is an
//! upper bound of the subscription service's share.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use cardlink_api::v1;
use cardlink_events::registry::Scope;
use cardlink_events::{Event, EventId, RecordType, samples};
use cardlink_history::{AnyStore, Batch, HistoryStore as _, StoreUrl, TransactionQuery, TransactionRow};
use cardlink_history_service::server::{HistoryConfig, RunningHistory};
use cardlink_testkit::{TestBus, authorized, connect, register_aggregator, register_issuer, registry_client};
use chrono::{TimeDelta, Utc};
use futures::StreamExt as _;
use serde::Serialize;

use crate::procstat;

const ISSUER: &str = "iss-bench";
const AGGREGATOR: &str = "agg-bench";
const MEMBER_ACCOUNT: &str = "member";
const CONSENT: &str = "c-bench";
const SECRET: &[u8] = b"bench-history-secret-0123456789ab";
/// Rows per write when growing the store.
const FILL_BATCH: usize = 1_000;
/// Other accounts' rows per account when growing the store.
const ROWS_PER_OTHER_ACCOUNT: usize = 10;
const LIST_PAGE: u32 = 100;
const LIST_ROUNDS: usize = 20;
const WAIT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Plan {
    /// Other accounts' rows in the store at each measurement, ascending.
    pub others: Vec<usize>,
    pub stores: Vec<StoreKind>,
    /// The member's transactions over 24 months.
    pub member_rows: usize,
    /// Other accounts' records on the bus for the indexer measurement.
    pub indexed: usize,
    pub runs: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Indexer {
    pub store: String,
    pub records: u64,
    /// From the service's start to its first batch (joining the group).
    pub start_up_seconds: f64,
    /// From the first batch to the last.
    pub seconds: f64,
    pub rows_per_second: f64,
    pub published_per_second: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Backfill {
    pub store: String,
    pub other_rows: u64,
    pub deliveries: u64,
    pub seconds: f64,
    pub cpu_ms: f64,
    pub list_pages: u64,
    pub list_p50_ms: f64,
    pub list_p99_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub machine: String,
    pub member_rows: usize,
    pub indexer: Vec<Indexer>,
    pub backfill: Vec<Backfill>,
}

impl crate::Written for Report {
    const NAME: &'static str = "history";

    fn machine(&mut self) -> &mut String {
        &mut self.machine
    }

    fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Machine: {}. One member's 24 months: {} transactions + 24 statements.\n",
            self.machine, self.member_rows
        );
        out.push_str("| store | records indexed | start-up (s) | first to last batch (s) | indexer rows/s | published/s (this process) |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|\n");
        for i in &self.indexer {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {:.0} | {:.0} |",
                i.store, i.records, i.start_up_seconds, i.seconds, i.rows_per_second, i.published_per_second
            );
        }
        out.push_str("\n| store | other accounts' rows | deliveries | backfill to complete (s) | CPU (ms) | ListTransactions p50 (ms) | p99 (ms) |\n|---|---:|---:|---:|---:|---:|---:|\n");
        for b in &self.backfill {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.3} | {:.1} | {:.2} | {:.2} |",
                b.store, b.other_rows, b.deliveries, b.seconds, b.cpu_ms, b.list_p50_ms, b.list_p99_ms
            );
        }
        out
    }
}

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let mut report = Report { member_rows: plan.member_rows, ..Report::default() };
    for kind in &plan.stores {
        let (indexer, backfills) = one_store(*kind, plan).await.with_context(|| format!("{kind:?}"))?;
        report.indexer.push(indexer);
        report.backfill.extend(backfills);
    }
    Ok(report)
}

/// A store to measure on, kept alive (a PostgreSQL cluster stops when dropped).
enum Store {
    Sqlite(tempfile::TempDir),
    Postgres(cardlink_testkit::postgres::TestPostgres),
}

impl Store {
    fn start(kind: StoreKind) -> anyhow::Result<Self> {
        Ok(match kind {
            StoreKind::Sqlite => Self::Sqlite(tempfile::tempdir()?),
            StoreKind::Postgres => {
                Self::Postgres(cardlink_testkit::postgres::TestPostgres::start().context(
                    "a throwaway PostgreSQL (install the server, or leave postgres out of --history-stores)",
                )?)
            }
        })
    }

    fn url(&self) -> anyhow::Result<StoreUrl> {
        match self {
            Self::Sqlite(dir) => Ok(StoreUrl::Sqlite(dir.path().join("history.db"))),
            Self::Postgres(pg) => pg.url().parse::<StoreUrl>().map_err(anyhow::Error::from),
        }
    }
}

async fn one_store(kind: StoreKind, plan: &Plan) -> anyhow::Result<(Indexer, Vec<Backfill>)> {
    let name = format!("{kind:?}").to_lowercase();
    let bus = TestBus::start().await?;
    let (registry, operator) = bus.start_registry().await?;
    let mut r = registry_client(&registry).await?;
    let issuer = register_issuer(&mut r, &operator, ISSUER, 1).await?.token;
    let aggregator = register_aggregator(&mut r, &operator, AGGREGATOR).await?.token;
    let scopes = [v1::Scope::Transactions, v1::Scope::MerchantDetail, v1::Scope::Statements];
    connect(&mut r, &issuer, ISSUER, AGGREGATOR, &scopes).await?;
    let producer = bus.producer()?;
    let now = Utc::now();
    let mut consent = samples::active_consent(
        CONSENT,
        ISSUER,
        AGGREGATOR,
        &[MEMBER_ACCOUNT],
        &[Scope::Transactions, Scope::MerchantDetail, Scope::Statements],
        now,
        now + TimeDelta::days(30),
    );
    consent.history_days = 730;
    producer.publish_record(RecordType::ConsentEvent, CONSENT, &consent.event_id.to_string(), &consent).await?;

    let member = member_history(plan.member_rows, now);
    let mut on_bus = member.len() as u64;
    publish(&producer, &member).await?;
    let store = Store::start(kind)?;
    let url = store.url()?;
    let config =
        HistoryConfig::new(([127, 0, 0, 1], 0).into(), vec![registry.public_key().clone()], SECRET.into(), url.clone());
    let history = cardlink_history_service::server::start(bus.config(), config.clone()).await?;
    indexed(&history, on_bus).await?;

    let subscription = cardlink_subscription::server::start(
        bus.config(),
        cardlink_subscription::server::SubscriptionConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            trusted_keys: vec![registry.public_key().clone()],
            secret: SECRET.into(),
            http_listen: None,
            max_stream_age: cardlink_subscription::server::DEFAULT_MAX_STREAM_AGE,
            history_store: Some(url),
        },
    )
    .await?;
    let payload = member_payload(history.store()).await?;
    let mut in_store = 0u64;
    let mut backfills = Vec::new();
    for &others in &plan.others {
        let others = others as u64;
        if others > in_store {
            let started = Instant::now();
            grow(history.store(), in_store, others, &payload, now).await?;
            eprintln!("{name}: {} other rows added in {:.1} s", others - in_store, started.elapsed().as_secs_f64());
            in_store = others;
        }
        // One not counted: the first call's connection and caches.
        backfill(&subscription.addr().to_string(), &aggregator).await?;
        // CPU is read in clock ticks (10 ms): the runs' total over their number.
        let cpu = procstat::sample(std::process::id())?.cpu;
        let mut runs = Vec::new();
        for _ in 0..plan.runs.max(1) {
            runs.push(backfill(&subscription.addr().to_string(), &aggregator).await?);
        }
        let cpu_ms =
            procstat::sample(std::process::id())?.cpu.saturating_sub(cpu).as_secs_f64() * 1_000.0 / runs.len() as f64;
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (seconds, deliveries) = runs[runs.len() / 2];
        let mut latencies = list(&history.addr().to_string(), &aggregator).await?;
        latencies.sort_by(f64::total_cmp);
        let measured = Backfill {
            store: name.clone(),
            other_rows: in_store,
            deliveries,
            seconds,
            cpu_ms,
            list_pages: latencies.len() as u64,
            list_p50_ms: percentile(&latencies, 0.50),
            list_p99_ms: percentile(&latencies, 0.99),
        };
        eprintln!("{measured:?}");
        backfills.push(measured);
    }
    subscription.shutdown().await;
    history.shutdown().await;

    // The indexer's own rate: a backlog on the bus when it starts again on its store.
    let others = other_records(plan.member_rows, plan.indexed, now);
    let started = Instant::now();
    publish(&producer, &others).await?;
    let published_per_second = others.len() as f64 / started.elapsed().as_secs_f64();
    eprintln!("{name}: published {} records at {published_per_second:.0}/s; indexing them", others.len());
    on_bus += others.len() as u64;
    let started = Instant::now();
    let history = cardlink_history_service::server::start(bus.config(), config).await?;
    // Timed from its first batch: joining the consumer group (seconds on the embedded broker)
    // is start-up, reported apart.
    // (Its progress starts at what the store holds: the member's records.)
    let held = on_bus - others.len() as u64;
    let mut progress = history.progress();
    let applied = |p: &cardlink_history_service::indexer::Progress| p.applied.values().map(|n| *n as u64).sum::<u64>();
    tokio::time::timeout(WAIT, progress.wait_for(|p| applied(p) > held)).await.context("no batch indexed")??;
    let first_batch = Instant::now();
    let start_up_seconds = first_batch.duration_since(started).as_secs_f64();
    indexed(&history, on_bus).await?;
    let seconds = first_batch.elapsed().as_secs_f64();
    let records = others.len() as u64;
    let indexer = Indexer {
        store: name.clone(),
        records,
        start_up_seconds,
        seconds,
        rows_per_second: records as f64 / seconds,
        published_per_second,
    };
    eprintln!("{name}: indexed {records} records in {seconds:.1} s after {start_up_seconds:.1} s of start-up");
    history.shutdown().await;
    registry.shutdown().await?;
    drop(store);
    Ok((indexer, backfills))
}

async fn publish(producer: &cardlink_bus::Producer, events: &[Event]) -> anyhow::Result<()> {
    let mut sent = futures::stream::iter(events.iter().map(|e| producer.publish(e, None))).buffer_unordered(512);
    while let Some(one) = sent.next().await {
        one?;
    }
    Ok(())
}

const SPAN_DAYS: i64 = 720;

/// The member's 24 months: transactions spread evenly, a statement a month.
fn member_history(member_rows: usize, now: chrono::DateTime<Utc>) -> Vec<Event> {
    let span = TimeDelta::days(SPAN_DAYS);
    let mut events = Vec::with_capacity(member_rows + 24);
    for n in 0..member_rows {
        let at = now - span + span * i32::try_from(n).unwrap_or(0) / i32::try_from(member_rows.max(1)).unwrap_or(1);
        events.push(Event::Transaction(at_time(MEMBER_ACCOUNT, n, at)));
    }
    for m in 0..24i64 {
        let closing = (now - TimeDelta::days(30 * m + 5)).date_naive();
        let mut s = samples::statement(ISSUER, MEMBER_ACCOUNT);
        s.billing_month = closing.format("%Y-%m").to_string();
        s.statement_id = format!("{MEMBER_ACCOUNT}-{}", s.billing_month);
        s.event_id = EventId::derived(ISSUER, &s.statement_id);
        s.closing_date = closing;
        s.period_start = closing - TimeDelta::days(30);
        s.due_date = closing + TimeDelta::days(25);
        events.push(Event::Statement(s));
    }
    events
}

/// `count` records of other accounts, ten to an account (ids after the member's).
fn other_records(member_rows: usize, count: usize, now: chrono::DateTime<Utc>) -> Vec<Event> {
    (0..count)
        .map(|n| {
            let at = now - TimeDelta::days(i64::try_from(n).unwrap_or(0) % SPAN_DAYS);
            Event::Transaction(at_time(&format!("indexed-{:07}", n / ROWS_PER_OTHER_ACCOUNT), member_rows + n, at))
        })
        .collect()
}

fn other_account(n: usize) -> String {
    format!("other-{:07}", n / ROWS_PER_OTHER_ACCOUNT)
}

fn at_time(account: &str, n: usize, at: chrono::DateTime<Utc>) -> cardlink_events::CardTransaction {
    let mut t = samples::transaction(ISSUER, account, u32::try_from(n).unwrap_or(u32::MAX));
    t.event_id = EventId::derived(ISSUER, &format!("{account}/{n}"));
    t.occurred_at = at;
    t.local_date = at.date_naive();
    t.posted_date = Some(at.date_naive());
    t.billing_month = Some(at.format("%Y-%m").to_string());
    t
}

/// Waits until the indexer holds every record on the bus: it has its partitions and a lag
/// measured at 0 (`records`, what the bus holds, bounds nothing else: after a restart only the
/// partitions it applies to show in its progress).
async fn indexed(history: &RunningHistory, records: u64) -> anyhow::Result<()> {
    let mut progress = history.progress();
    tokio::time::timeout(WAIT, progress.wait_for(|p| !p.assigned.is_empty() && p.lag == Some(0)))
        .await
        .with_context(|| format!("the indexer did not index {records} records in time"))?
        .context("the indexer stopped")?;
    Ok(())
}

/// A stored row's bytes, to fill other accounts' rows with a payload of the real size.
async fn member_payload(store: &AnyStore) -> anyhow::Result<Vec<u8>> {
    let query = TransactionQuery::newest_since(&format!("{ISSUER}/{MEMBER_ACCOUNT}"), i64::MIN, None, 1);
    let rows = store.transactions(&query).await?;
    Ok(rows.into_iter().next().context("the member's history is not in the store")?.payload)
}

/// Writes other accounts' rows `from..to` straight into the store (the indexer's rate is measured
/// apart): only their number and keys matter to the member's backfill.
async fn grow(store: &AnyStore, from: u64, to: u64, payload: &[u8], now: chrono::DateTime<Utc>) -> anyhow::Result<()> {
    let mut n = from;
    while n < to {
        let end = (n + FILL_BATCH as u64).min(to);
        let transactions = (n..end)
            .map(|i| {
                let at = now - TimeDelta::days(i64::try_from(i).unwrap_or(0) % SPAN_DAYS);
                TransactionRow {
                    account_key: format!("{ISSUER}/{}", other_account(usize::try_from(i).unwrap_or(usize::MAX))),
                    transaction_id: format!("grown-{i}"),
                    occurred_at_micros: at.timestamp_micros(),
                    billing_month: Some(at.format("%Y-%m").to_string()),
                    kind: v1::TransactionKind::Posted as i32,
                    partition: 0,
                    version: i64::try_from(i).unwrap_or(i64::MAX),
                    payload: payload.to_vec(),
                }
            })
            .collect();
        store.apply(&Batch { transactions, statements: Vec::new(), watermarks: Vec::new() }).await?;
        n = end;
    }
    Ok(())
}

/// One backfill of the consent: (seconds to complete, deliveries).
async fn backfill(addr: &str, token: &str) -> anyhow::Result<(f64, u64)> {
    let mut client = v1::subscription_client::SubscriptionClient::connect(format!("http://{addr}")).await?;
    let request = v1::SubscribeRequest {
        start: Some(v1::subscribe_request::Start::Backfill(v1::Backfill { consent_ids: vec![CONSENT.into()] })),
        ..Default::default()
    };
    let started = Instant::now();
    let mut stream = client.subscribe(authorized(request, token)).await?.into_inner();
    let mut deliveries = 0u64;
    let done = async {
        loop {
            let message = stream.message().await?.context("the stream ended before the backfill completed")?;
            deliveries += message.deliveries.len() as u64;
            if message.heartbeat.is_some_and(|h| h.backfill.iter().any(|p| p.complete)) {
                return anyhow::Ok(());
            }
        }
    };
    tokio::time::timeout(WAIT, done).await.context("the backfill did not complete in time")??;
    Ok((started.elapsed().as_secs_f64(), deliveries))
}

/// Lists the member's 24 months in 100-row pages, [`LIST_ROUNDS`] times; each page's latency, ms.
async fn list(addr: &str, token: &str) -> anyhow::Result<Vec<f64>> {
    let mut client = v1::history_client::HistoryClient::connect(format!("http://{addr}")).await?;
    let since = Utc::now() - TimeDelta::days(800);
    let mut latencies = Vec::new();
    for _ in 0..LIST_ROUNDS {
        let mut request = v1::ListTransactionsRequest {
            consent_id: CONSENT.into(),
            oldest_time: Some(cardlink_api::convert::timestamp(since)),
            page_size: LIST_PAGE,
            ..Default::default()
        };
        loop {
            let started = Instant::now();
            let page = client.list_transactions(authorized(request.clone(), token)).await?.into_inner();
            latencies.push(started.elapsed().as_secs_f64() * 1_000.0);
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
    }
    Ok(latencies)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}
