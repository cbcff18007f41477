//! The world the History and backfill tests run in: a real broker, the registry with an issuer
//! and two aggregators connected, consents on the bus, the history service (indexer and API) on
//! a SQLite store, and the subscription service reading the same store for backfills.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cardlink_api::Reason;
use cardlink_api::v1;
use cardlink_api::v1::history_client::HistoryClient;
use cardlink_events::consent::ConsentEvent;
use cardlink_events::registry::Scope;
use cardlink_events::{Event, EventId, RecordType, TransactionKind, samples};
use cardlink_history::StoreUrl;
use cardlink_history_service::server::{HistoryConfig, RunningHistory};
use cardlink_subscription::server::RunningSubscription;
use cardlink_testkit::{TestBus, authorized, connect, register_aggregator, register_issuer, registry_client};
use chrono::{TimeZone as _, Utc};
use tonic::transport::Channel;

pub const WITHIN: Duration = Duration::from_secs(30);
pub const SECRET: &[u8] = b"history-secret-0123456789abcdefgh";

pub struct World {
    pub bus: TestBus,
    pub registry: cardlink_registry::server::RunningRegistry,
    /// `None` only while [`World::restart_history`] restarts it.
    pub history: Option<RunningHistory>,
    history_config: HistoryConfig,
    pub subscription: RunningSubscription,
    pub tokens: HashMap<String, String>,
    _dir: tempfile::TempDir,
}

impl World {
    pub async fn stream_client(&self) -> v1::subscription_client::SubscriptionClient<Channel> {
        v1::subscription_client::SubscriptionClient::connect(format!("http://{}", self.subscription.addr()))
            .await
            .unwrap()
    }

    pub async fn client(&self) -> HistoryClient<Channel> {
        HistoryClient::connect(format!("http://{}", self.history.as_ref().unwrap().addr())).await.unwrap()
    }

    /// Stops the history service (indexer and API) and starts it again on the same store.
    pub async fn restart_history(&mut self) {
        self.stop_history().await;
        self.start_history().await;
    }

    /// Stops the history service (indexer and API); the store stays.
    pub async fn stop_history(&mut self) {
        if let Some(running) = self.history.take() {
            running.shutdown().await;
        }
    }

    /// Starts the history service on the same store (after [`World::stop_history`]).
    pub async fn start_history(&mut self) {
        let config = self.history_config.clone();
        self.history = Some(cardlink_history_service::server::start(self.bus.config(), config).await.unwrap());
    }

    pub fn token(&self, id: &str) -> &str {
        &self.tokens[id]
    }

    pub async fn publish(&self, events: &[Event]) {
        let producer = self.bus.producer().unwrap();
        for e in events {
            producer.publish(e, None).await.unwrap();
        }
    }

    pub async fn publish_consent(&self, consent: &ConsentEvent) {
        let producer = self.bus.producer().unwrap();
        producer
            .publish_record(RecordType::ConsentEvent, &consent.consent_id, &consent.event_id.to_string(), consent)
            .await
            .unwrap();
    }
}

/// `agg-x`'s consent: transactions and statements of `iss-a`'s `acct-1`, from 2026-01-01.
pub fn consent(id: &str, aggregator: &str) -> ConsentEvent {
    samples::active_consent(
        id,
        "iss-a",
        aggregator,
        &["acct-1"],
        &[Scope::Transactions, Scope::Statements],
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap(),
        Utc::now() + chrono::TimeDelta::days(30),
    )
}

pub fn transaction(account: &str, n: u32, kind: TransactionKind) -> Event {
    let mut t = samples::transaction("iss-a", account, n);
    t.kind = kind;
    t.event_id = EventId::derived("iss-a", &format!("{account}/tx-{n}/{kind:?}"));
    Event::Transaction(t)
}

/// `acct-1`'s history: tx-1…tx-30 posted (tx-1…tx-5 authorised first), tx-100 before the
/// consent's data window, a statement; and `acct-2`'s tx-1, which no consent covers.
pub fn past() -> Vec<Event> {
    let mut events: Vec<Event> = (1..=5).map(|n| transaction("acct-1", n, TransactionKind::Authorized)).collect();
    events.extend((1..=30).map(|n| transaction("acct-1", n, TransactionKind::Posted)));
    let mut early = samples::transaction("iss-a", "acct-1", 100);
    early.occurred_at = Utc.with_ymd_and_hms(2025, 12, 1, 0, 0, 0).single().unwrap();
    events.push(Event::Transaction(early));
    events.push(transaction("acct-2", 1, TransactionKind::Posted));
    events.push(Event::Statement(samples::statement("iss-a", "acct-1")));
    events
}

pub async fn world(consents: &[ConsentEvent]) -> World {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut r = registry_client(&registry).await.unwrap();
    let mut tokens = HashMap::new();
    tokens.insert("iss-a".to_owned(), register_issuer(&mut r, &operator, "iss-a", 1).await.unwrap().token);
    for id in ["agg-x", "agg-y"] {
        tokens.insert(id.to_owned(), register_aggregator(&mut r, &operator, id).await.unwrap().token);
        let all = [v1::Scope::Transactions, v1::Scope::MerchantDetail, v1::Scope::Statements];
        connect(&mut r, &tokens["iss-a"], "iss-a", id, &all).await.unwrap();
    }
    let producer = bus.producer().unwrap();
    for c in consents {
        producer.publish_record(RecordType::ConsentEvent, &c.consent_id, &c.event_id.to_string(), c).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = HistoryConfig::new(
        ([127, 0, 0, 1], 0).into(),
        vec![registry.public_key().clone()],
        Arc::from(SECRET),
        StoreUrl::Sqlite(dir.path().join("history.db")),
    );
    let history = cardlink_history_service::server::start(bus.config(), config.clone()).await.unwrap();
    let subscription_config = cardlink_subscription::server::SubscriptionConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        trusted_keys: vec![registry.public_key().clone()],
        secret: Arc::from(SECRET),
        http_listen: None,
        max_stream_age: cardlink_subscription::server::DEFAULT_MAX_STREAM_AGE,
        history_store: Some(StoreUrl::Sqlite(dir.path().join("history.db"))),
    };
    let subscription = cardlink_subscription::server::start(bus.config(), subscription_config).await.unwrap();
    let w = World { bus, registry, history: Some(history), history_config: config, subscription, tokens, _dir: dir };
    w.publish(&past()).await;
    w
}

pub fn ids(aggregator: &str) -> cardlink_auth::Pseudonyms<'_> {
    cardlink_auth::Pseudonyms::new(SECRET, aggregator)
}

pub fn tx_id(aggregator: &str, n: u32) -> String {
    ids(aggregator).transaction("iss-a", &format!("tx-{n}"))
}

pub fn since_2020() -> Option<prost_types::Timestamp> {
    Some(cardlink_api::convert::timestamp(Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).single().unwrap()))
}

pub fn list(consent: &str, page_size: u32, page_token: &str) -> v1::ListTransactionsRequest {
    v1::ListTransactionsRequest {
        consent_id: consent.into(),
        oldest_time: since_2020(),
        order: v1::HistoryOrder::OldestFirst as i32,
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    }
}

/// Every page of a listing: the transactions and the number of pages.
pub async fn all_pages(
    client: &mut HistoryClient<Channel>,
    token: &str,
    first: v1::ListTransactionsRequest,
) -> (Vec<v1::VersionedTransaction>, usize, v1::ListTransactionsResponse) {
    let mut request = first;
    let mut out = Vec::new();
    let mut pages = 0;
    loop {
        let page = client.list_transactions(authorized(request.clone(), token)).await.unwrap().into_inner();
        pages += 1;
        out.extend(page.transactions.clone());
        if page.next_page_token.is_empty() {
            return (out, pages, page);
        }
        request.page_token = page.next_page_token.clone();
    }
}

/// How long [`indexed`] waits: the tests of a binary index their worlds at once, each through
/// its own indexer, on CI's two cores (a clean-clone run once needed more than 30 s for 1,531
/// rows). A liveness bound, not a speed target (the indexer's rate is in docs/benchmarks.md).
const INDEXED_WITHIN: Duration = Duration::from_secs(120);

/// Waits until the indexer has stored `count` of the consent's transactions.
pub async fn indexed(w: &World, consent: &str, aggregator: &str, count: usize) {
    until_indexed(count, async || {
        let mut client = w.client().await;
        let (mut seen, mut token) = (0, String::new());
        loop {
            let page = client.list_transactions(authorized(list(consent, 1_000, &token), w.token(aggregator))).await?;
            let page = page.into_inner();
            seen += page.transactions.len();
            if page.next_page_token.is_empty() {
                return Ok(seen);
            }
            token = page.next_page_token;
        }
    })
    .await;
}

/// Waits until `count` statements are listed under `consent` (they are on a topic of their own:
/// the indexer may apply them in a later batch than the transactions published before them).
pub async fn statements_indexed(w: &World, consent: &str, aggregator: &str, count: usize) {
    until_indexed(count, async || {
        let request = v1::ListStatementsRequest { consent_id: consent.into(), ..Default::default() };
        let page = w.client().await.list_statements(authorized(request, w.token(aggregator))).await?;
        Ok(page.into_inner().statements.len())
    })
    .await;
}

/// Asks `listed` until it answers at least `count` (NOT_READY while the store catches up).
async fn until_indexed(count: usize, listed: impl AsyncFn() -> Result<usize, tonic::Status>) {
    let deadline = tokio::time::Instant::now() + INDEXED_WITHIN;
    loop {
        match listed().await {
            Ok(seen) if seen >= count => return,
            Ok(_) => {}
            Err(s) if Reason::of(&s) == Some(Reason::NotReady) => {}
            Err(s) => panic!("{s:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "not indexed in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn reason(status: &tonic::Status) -> Option<Reason> {
    Reason::of(status)
}
