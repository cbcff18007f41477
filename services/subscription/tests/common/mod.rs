//! The world the gRPC tests run in: a real broker, the registry with registered participants,
//! consents on the bus, and the subscription service on an ephemeral port.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cardlink_api::v1;
use cardlink_api::v1::subscription_client::SubscriptionClient;
use cardlink_events::consent::ConsentEvent;
use cardlink_events::{Event, RecordType};
use cardlink_subscription::server::{RunningSubscription, SubscriptionConfig};
use cardlink_testkit::{TestBus, connect, register_aggregator, register_issuer, registry_client};
use tonic::Streaming;
use tonic::transport::Channel;

pub const WITHIN: Duration = Duration::from_secs(30);
pub const SECRET: &[u8] = b"subscription-secret-0123456789ab";

/// What `aggregator` receives as `iss-a`'s transaction `tx-{n}`: delivered ids are pseudonymous
/// per aggregator.
pub fn tx(aggregator: &str, n: u32) -> String {
    cardlink_auth::Pseudonyms::new(SECRET, aggregator).transaction("iss-a", &format!("tx-{n}"))
}

/// [`tx`] of each of `ns`.
pub fn txs(aggregator: &str, ns: impl IntoIterator<Item = u32>) -> Vec<String> {
    ns.into_iter().map(|n| tx(aggregator, n)).collect()
}

pub struct World {
    pub bus: TestBus,
    pub registry: cardlink_registry::server::RunningRegistry,
    pub service: RunningSubscription,
    /// Credential per participant id.
    pub tokens: HashMap<String, String>,
    /// Credential id per participant id.
    pub credential_ids: HashMap<String, String>,
    pub operator: String,
}

impl World {
    pub fn token(&self, participant: &str) -> &str {
        &self.tokens[participant]
    }

    pub async fn client(&self) -> SubscriptionClient<Channel> {
        SubscriptionClient::connect(format!("http://{}", self.service.addr())).await.unwrap()
    }

    pub async fn publish(&self, events: &[Event]) {
        let producer = self.bus.producer().unwrap();
        let sends = events.iter().map(|e| producer.publish(e, None));
        for sent in futures::future::join_all(sends).await {
            sent.unwrap();
        }
    }

    pub async fn publish_consent(&self, consent: &ConsentEvent) {
        self.bus
            .producer()
            .unwrap()
            .publish_record(RecordType::ConsentEvent, &consent.consent_id, &consent.event_id.to_string(), consent)
            .await
            .unwrap();
    }
}

/// Registers the participants, connects every issuer with every aggregator (all scopes), writes
/// the consents, and starts the service once the registry knows everyone.
pub async fn world(issuers: &[&str], aggregators: &[&str], consents: &[ConsentEvent]) -> World {
    world_with(issuers, aggregators, consents, cardlink_subscription::server::DEFAULT_MAX_STREAM_AGE).await
}

/// [`world`], with streams ending at `max_stream_age`.
pub async fn world_with(
    issuers: &[&str],
    aggregators: &[&str],
    consents: &[ConsentEvent],
    max_stream_age: Duration,
) -> World {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut r = registry_client(&registry).await.unwrap();
    let (mut tokens, mut credential_ids) = (HashMap::new(), HashMap::new());
    for (i, id) in issuers.iter().enumerate() {
        let volume = i64::try_from(i).unwrap() + 1;
        let registered = register_issuer(&mut r, &operator, id, volume).await.unwrap();
        tokens.insert((*id).to_owned(), registered.token);
        credential_ids.insert((*id).to_owned(), registered.credential_id);
    }
    for id in aggregators {
        let registered = register_aggregator(&mut r, &operator, id).await.unwrap();
        tokens.insert((*id).to_owned(), registered.token);
        credential_ids.insert((*id).to_owned(), registered.credential_id);
    }
    let all = [v1::Scope::Transactions, v1::Scope::MerchantDetail, v1::Scope::Statements];
    for issuer in issuers {
        for aggregator in aggregators {
            connect(&mut r, &tokens[*issuer], issuer, aggregator, &all).await.unwrap();
        }
    }
    let producer = bus.producer().unwrap();
    for c in consents {
        producer.publish_record(RecordType::ConsentEvent, &c.consent_id, &c.event_id.to_string(), c).await.unwrap();
    }
    let config = SubscriptionConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        trusted_keys: vec![registry.public_key().clone()],
        secret: Arc::from(SECRET),
        http_listen: Some(([127, 0, 0, 1], 0).into()),
        max_stream_age,
        history_store: None,
    };
    let service = cardlink_subscription::server::start(bus.config(), config).await.unwrap();
    // The service knows the participants once its registry view has read the last of them.
    let last = aggregators.last().copied().unwrap_or_default();
    let last_issuer = issuers.last().copied().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !registry.view().read(|v| v.aggregator(last).is_some() && v.is_connected(last_issuer, last)) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    World { bus, registry, service, tokens, credential_ids, operator }
}

/// Enables (again) the connection between `issuer` and `aggregator`, with every scope.
pub async fn reconnect(w: &World, issuer: &str, aggregator: &str) {
    let mut r = registry_client(&w.registry).await.unwrap();
    let all = [v1::Scope::Transactions, v1::Scope::MerchantDetail, v1::Scope::Statements];
    connect(&mut r, w.token(issuer), issuer, aggregator, &all).await.unwrap();
}

/// The consent most tests need: agg-x may see iss-a's transactions of acct-1 (granted on
/// 2026-01-01, so the sample events fall inside it), for 30 more days.
pub fn transactions_consent() -> ConsentEvent {
    let granted = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 1, 1, 0, 0, 0).single().unwrap();
    cardlink_events::samples::active_consent(
        "c-x",
        "iss-a",
        "agg-x",
        &["acct-1"],
        &[cardlink_events::registry::Scope::Transactions],
        granted,
        chrono::Utc::now() + chrono::TimeDelta::days(30),
    )
}

pub fn start_after(cursor: &str) -> v1::SubscribeRequest {
    v1::SubscribeRequest { start: Some(v1::subscribe_request::Start::Cursor(cursor.to_owned())), ..Default::default() }
}

/// The next message, failing the test if none comes in time or the stream ends.
pub async fn next(stream: &mut Streaming<v1::SubscribeResponse>) -> v1::SubscribeResponse {
    tokio::time::timeout(WITHIN, stream.message()).await.expect("a message in time").unwrap().expect("stream open")
}
