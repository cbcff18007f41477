//! The fault-injection suite: against a real Kafka-protocol broker and the services as
//! production runs them (`cardlink serve …` processes where a process is killed), each fault
//! checked against what the clients were told.
//!
//! - The ingest process is killed (SIGKILL) in the middle of a stream of publishes and started
//!   again: once the client has retried what was not acknowledged, every record is on the bus
//!   exactly once.
//! - One of two subscription replicas is killed while 100 aggregators stream from it: each
//!   resumes on the other from its last cursor, with nothing missing and nothing twice.
//! - The network to the broker is cut for 10 s and restored (a TCP proxy between every client
//!   and the broker): ingest answers `BUS_UNAVAILABLE`, never ACCEPTED without the broker's
//!   acknowledgement; the aggregator's stream pauses and goes on; nothing acknowledged is lost.
//! - Consent churn: random consent timelines against the running services while events flow,
//!   each delivery checked against a model of what was consented when.
//!
//! The tests run one at a time: they time deliveries, and two at once on a 2-core CI machine
//! would be timing each other.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use cardlink_api::v1::issuer_ingest_client::IssuerIngestClient;
use cardlink_api::v1::subscription_client::SubscriptionClient;
use cardlink_api::{Reason, convert, v1};
use cardlink_bus::Topic;
use cardlink_events::registry::Scope;
use cardlink_events::{Event, RecordType, samples};
use cardlink_testkit::{TestBus, authorized, connect, register_aggregator, register_issuer, registry_client};
use common::{WITHIN, cardlink, free_port, ready};
use tokio::process::Child;
use tonic::transport::Channel;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The secret the subscription replicas share (pseudonyms and cursors).
const SECRET: &[u8; 32] = b"faults-secret-0123456789abcdefgh";

/// A transaction of `account` at iss-a happening now, numbered `n`.
fn transaction(account: &str, n: u32) -> Event {
    let mut t = samples::transaction("iss-a", account, n);
    t.occurred_at = chrono::Utc::now();
    Event::Transaction(t)
}

/// `cardlink serve ingest` against `bus`, trusting the registry's key `trusted`, on `port`.
fn spawn_ingest(bus: &TestBus, trusted: &str, port: u16) -> Child {
    let config = bus.config();
    common::serve_ingest(&config.bootstrap_servers, &config.topic_prefix, trusted, port)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `cardlink serve subscription` against `bus` on `port`.
fn serve_subscription(bus: &TestBus, trusted: &str, port: u16) -> Child {
    cardlink()
        .args(["serve", "subscription"])
        .env("CARDLINK_KAFKA_BOOTSTRAP", &bus.config().bootstrap_servers)
        .env("CARDLINK_TOPIC_PREFIX", &bus.config().topic_prefix)
        .env("CARDLINK_SUBSCRIPTION_LISTEN", format!("127.0.0.1:{port}"))
        .env("CARDLINK_SUBSCRIPTION_HTTP_LISTEN", "127.0.0.1:0")
        .env("CARDLINK_TRUSTED_KEYS", trusted)
        .env("CARDLINK_CONSENT_SECRET", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// How many times each event id is on `topic`.
async fn event_ids_on(bus: &TestBus, topic: Topic) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for record in bus.read_all(topic).await.unwrap() {
        *counts.entry(record.headers.event_id.clone().unwrap()).or_default() += 1;
    }
    counts
}

/// Whether every record of `response` is now on the bus (written now or before).
fn all_acknowledged(response: &v1::PublishResponse, records: usize) -> bool {
    response.results.len() == records
        && response.results.iter().all(|r| {
            r.outcome == v1::RecordOutcome::Accepted as i32 || r.outcome == v1::RecordOutcome::Duplicate as i32
        })
}

#[tokio::test]
async fn ingest_killed_mid_stream_writes_each_record_once_after_the_client_retries() {
    let _one = ONE_AT_A_TIME.lock().await;
    const BATCHES: usize = 150;
    const PER_BATCH: u32 = 20;
    const WORKERS: usize = 8;
    const KILL_AFTER: usize = 40;

    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut r = registry_client(&registry).await.unwrap();
    let issuer = register_issuer(&mut r, &operator, "iss-a", 1).await.unwrap().token;
    let trusted = registry.public_key().to_config();
    let port = free_port();
    let mut ingest = spawn_ingest(&bus, &trusted, port);
    ready(port).await;

    let batches: Vec<v1::PublishRequest> = (0..BATCHES)
        .map(|b| {
            let first = u32::try_from(b).unwrap() * PER_BATCH;
            let records =
                (first..first + PER_BATCH).map(|n| convert::ingest_record(&transaction("acct-1", n))).collect();
            v1::PublishRequest { issuer_id: "iss-a".into(), batch_id: format!("b{b}"), records, historical: false }
        })
        .collect();
    let queue = Arc::new(Mutex::new((0..BATCHES).collect::<VecDeque<_>>()));
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let client = IssuerIngestClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();

    // Publishers send batch after batch until a call fails (the process is gone).
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (queue, acknowledged, batches, issuer) =
            (Arc::clone(&queue), Arc::clone(&acknowledged), batches.clone(), issuer.clone());
        let mut client = client.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let Some(b) = queue.lock().unwrap().pop_front() else { return };
                match client.publish(authorized(batches[b].clone(), &issuer)).await {
                    Ok(response) if all_acknowledged(response.get_ref(), batches[b].records.len()) => {
                        acknowledged.lock().unwrap().insert(b);
                    }
                    _ => return,
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + WITHIN;
    while acknowledged.lock().unwrap().len() < KILL_AFTER {
        assert!(tokio::time::Instant::now() < deadline, "publishing never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ingest.kill().await.unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    let before_restart = acknowledged.lock().unwrap().len();
    assert!(before_restart < BATCHES, "every batch was acknowledged before the kill: nothing was cut short");

    // The same process, started again; the client retries every batch it has no answer for.
    let mut ingest = spawn_ingest(&bus, &trusted, port);
    ready(port).await;
    let mut client = IssuerIngestClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
    let mut duplicates = 0;
    for (b, batch) in batches.iter().enumerate() {
        if acknowledged.lock().unwrap().contains(&b) {
            continue;
        }
        let response = client.publish(authorized(batch.clone(), &issuer)).await.unwrap().into_inner();
        assert!(all_acknowledged(&response, batch.records.len()), "retry of batch {b}: {response:?}");
        duplicates += response.duplicates;
    }

    let on_bus = event_ids_on(&bus, Topic::Transactions).await;
    let total = BATCHES * usize::try_from(PER_BATCH).unwrap();
    assert_eq!(on_bus.len(), total, "records missing from the bus");
    let twice: Vec<_> = on_bus.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    eprintln!(
        "ingest kill: {before_restart} of {BATCHES} batches acknowledged before the kill; {duplicates} records of \
         the retried batches were already on the bus"
    );
    ingest.kill().await.unwrap();
}

/// What one aggregator's client saw across a replica's death.
struct Streamed {
    /// Issuer transaction ids (pseudonymous) in the order received.
    received: Vec<String>,
    /// Whether the client had to resume on the other replica.
    resumed: bool,
}

/// Follows `aggregator`'s stream on `first` until `expected` transactions arrived (then listens a
/// little longer for anything extra); when the stream breaks, resumes on `second` from the last
/// cursor. Says on `subscribed` once its stream is caught up.
async fn stream_across(
    first: SubscriptionClient<Channel>,
    second: SubscriptionClient<Channel>,
    token: String,
    expected: usize,
    subscribed: tokio::sync::mpsc::Sender<()>,
) -> Streamed {
    let request = v1::SubscribeRequest { kinds: vec![v1::EventKind::Transaction as i32], ..Default::default() };
    let mut client = first;
    let mut stream = client.subscribe(authorized(request.clone(), &token)).await.unwrap().into_inner();
    let (mut received, mut cursor, mut resumed) = (Vec::new(), String::new(), false);
    let mut extra_until = None;
    loop {
        let listen = match extra_until {
            Some(until) => tokio::time::timeout_at(until, stream.message()).await,
            None => Ok(tokio::time::timeout(WITHIN, stream.message()).await.expect("a message in time")),
        };
        match listen {
            Err(_) => break,
            Ok(Ok(Some(message))) => {
                if message.heartbeat.as_ref().is_some_and(|h| h.caught_up) && cursor.is_empty() {
                    subscribed.send(()).await.unwrap();
                }
                for delivery in message.deliveries {
                    if let Some(v1::delivery::Event::Transaction(t)) = delivery.event {
                        received.push(t.issuer_transaction_id);
                    }
                }
                if !message.cursor.is_empty() {
                    cursor = message.cursor;
                }
                if received.len() >= expected && extra_until.is_none() {
                    extra_until = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                }
            }
            Ok(ended) => {
                assert!(!resumed, "the second replica's stream ended too: {ended:?}");
                assert!(!cursor.is_empty(), "no cursor to resume from");
                resumed = true;
                client = second.clone();
                let resume = v1::SubscribeRequest {
                    start: Some(v1::subscribe_request::Start::Cursor(cursor.clone())),
                    ..request.clone()
                };
                stream = client.subscribe(authorized(resume, &token)).await.unwrap().into_inner();
            }
        }
    }
    Streamed { received, resumed }
}

#[tokio::test]
async fn a_subscription_replica_killed_under_100_streams_each_resumes_on_the_other() {
    let _one = ONE_AT_A_TIME.lock().await;
    const AGGREGATORS: usize = 100;
    const ACCOUNTS: usize = 10;
    const ROUNDS: u32 = 40;
    const KILL_AT_ROUND: u32 = 15;

    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut r = registry_client(&registry).await.unwrap();
    let issuer = register_issuer(&mut r, &operator, "iss-a", 1).await.unwrap().token;
    let ids: Vec<String> = (0..AGGREGATORS).map(|k| format!("agg-{k:03}")).collect();
    let account = |k: usize| format!("acct-{}", k % ACCOUNTS);
    let mut tokens = Vec::new();
    let producer = bus.producer().unwrap();
    let granted = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 1, 1, 0, 0, 0).single().unwrap();
    for (k, id) in ids.iter().enumerate() {
        tokens.push(register_aggregator(&mut r, &operator, id).await.unwrap().token);
        connect(&mut r, &issuer, "iss-a", id, &[v1::Scope::Transactions]).await.unwrap();
        let consent = samples::active_consent(
            &format!("c-{k:03}"),
            "iss-a",
            id,
            &[account(k).as_str()],
            &[Scope::Transactions],
            granted,
            chrono::Utc::now() + chrono::TimeDelta::days(30),
        );
        producer
            .publish_record(RecordType::ConsentEvent, &consent.consent_id, &consent.event_id.to_string(), &consent)
            .await
            .unwrap();
    }

    let trusted = registry.public_key().to_config();
    let (port_a, port_b) = (free_port(), free_port());
    let mut replica_a = serve_subscription(&bus, &trusted, port_a);
    let mut replica_b = serve_subscription(&bus, &trusted, port_b);
    ready(port_a).await;
    ready(port_b).await;
    let a = SubscriptionClient::connect(format!("http://127.0.0.1:{port_a}")).await.unwrap();
    let b = SubscriptionClient::connect(format!("http://127.0.0.1:{port_b}")).await.unwrap();

    let (subscribed, mut caught_up) = tokio::sync::mpsc::channel(AGGREGATORS);
    let mut clients = Vec::new();
    for token in &tokens {
        let expected = usize::try_from(ROUNDS).unwrap();
        clients.push(tokio::spawn(stream_across(a.clone(), b.clone(), token.clone(), expected, subscribed.clone())));
    }
    for _ in 0..AGGREGATORS {
        tokio::time::timeout(WITHIN, caught_up.recv()).await.expect("every stream caught up in time");
    }

    // Events flow; replica A dies in the middle of them.
    for round in 0..ROUNDS {
        if round == KILL_AT_ROUND {
            replica_a.kill().await.unwrap();
        }
        let events: Vec<Event> = (0..ACCOUNTS).map(|k| transaction(&account(k), round)).collect();
        for sent in futures::future::join_all(events.iter().map(|e| producer.publish(e, None))).await {
            sent.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (k, client) in clients.into_iter().enumerate() {
        let streamed = client.await.unwrap();
        let ids_for = cardlink_auth::Pseudonyms::new(SECRET, &ids[k]);
        let expected: HashSet<String> = (0..ROUNDS).map(|n| ids_for.transaction("iss-a", &format!("tx-{n}"))).collect();
        let got: HashSet<String> = streamed.received.iter().cloned().collect();
        assert!(streamed.resumed, "{} never lost its stream", ids[k]);
        assert_eq!(got.len(), streamed.received.len(), "{} received an event twice", ids[k]);
        assert_eq!(got, expected, "{} missed events", ids[k]);
    }
    replica_b.kill().await.unwrap();
}

/// What one publish of the broker-cut test was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Acknowledged,
    Refused(String),
}

#[tokio::test]
async fn the_broker_unreachable_for_10_s_loses_nothing_acknowledged() {
    let _one = ONE_AT_A_TIME.lock().await;
    const CUT: Duration = Duration::from_secs(10);
    let bus = TestBus::start_behind_proxy().await.unwrap();
    let proxy = bus.proxy().unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut r = registry_client(&registry).await.unwrap();
    let issuer = register_issuer(&mut r, &operator, "iss-a", 1).await.unwrap().token;
    let agg = register_aggregator(&mut r, &operator, "agg-x").await.unwrap().token;
    connect(&mut r, &issuer, "iss-a", "agg-x", &[v1::Scope::Transactions]).await.unwrap();
    let granted = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 1, 1, 0, 0, 0).single().unwrap();
    let consent = samples::active_consent(
        "c-x",
        "iss-a",
        "agg-x",
        &["acct-1"],
        &[Scope::Transactions],
        granted,
        chrono::Utc::now() + chrono::TimeDelta::days(30),
    );
    bus.producer()
        .unwrap()
        .publish_record(RecordType::ConsentEvent, &consent.consent_id, &consent.event_id.to_string(), &consent)
        .await
        .unwrap();

    // Ingest gives up on a write after 3 s, so calls during the cut are answered within it.
    let ingest_bus = cardlink_bus::BusConfig { delivery_timeout: Duration::from_secs(3), ..bus.config().clone() };
    let ingest_config = cardlink_ingest::server::IngestConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        trusted_keys: vec![registry.public_key().clone()],
        ..Default::default()
    };
    let mut ingest = cardlink_ingest::server::start(&ingest_bus, ingest_config).await.unwrap();
    tokio::time::timeout(WITHIN, ingest.ready()).await.unwrap();
    let subscription = cardlink_subscription::server::start(
        bus.config(),
        cardlink_subscription::server::SubscriptionConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            trusted_keys: vec![registry.public_key().clone()],
            secret: Arc::from(&SECRET[..]),
            http_listen: None,
            max_stream_age: cardlink_subscription::server::DEFAULT_MAX_STREAM_AGE,
            history_store: None,
        },
    )
    .await
    .unwrap();
    let mut subscriber = SubscriptionClient::connect(format!("http://{}", subscription.addr())).await.unwrap();
    let request = v1::SubscribeRequest { kinds: vec![v1::EventKind::Transaction as i32], ..Default::default() };
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut stream = loop {
        // The replica knows agg-x once its registry view has read it.
        match subscriber.subscribe(authorized(request.clone(), &agg)).await {
            Ok(s) => break s.into_inner(),
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "agg-x cannot subscribe: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first = tokio::time::timeout(WITHIN, stream.message()).await.unwrap().unwrap().unwrap();
    assert!(first.heartbeat.as_ref().is_some_and(|h| h.caught_up));
    let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        // The stream must outlive the cut: any end of it is a failure.
        loop {
            let message = stream.message().await;
            let Ok(Some(message)) = message else { return message.map(|_| ()) };
            for delivery in message.deliveries {
                if let Some(v1::delivery::Event::Transaction(t)) = delivery.event {
                    let _ = received_tx.send(t.issuer_transaction_id);
                }
            }
        }
    });

    // One publish every 100 ms, before, during and after the cut; each answered in its own time.
    let client = IssuerIngestClient::connect(format!("http://{}", ingest.addr())).await.unwrap();
    let publish = |n: u32| {
        let mut client = client.clone();
        let issuer = issuer.clone();
        async move {
            let request = v1::PublishRequest {
                issuer_id: "iss-a".into(),
                batch_id: format!("b{n}"),
                records: vec![convert::ingest_record(&transaction("acct-1", n))],
                historical: false,
            };
            match client.publish(authorized(request, &issuer)).await {
                Ok(response) if all_acknowledged(response.get_ref(), 1) => Answer::Acknowledged,
                Ok(response) => Answer::Refused(response.into_inner().results[0].reason.clone()),
                Err(status) => {
                    Answer::Refused(Reason::of(&status).map_or_else(|| status.to_string(), |r| r.to_string()))
                }
            }
        }
    };
    let start = tokio::time::Instant::now();
    let (cut_at, restore_at, stop_at) = (Duration::from_secs(2), Duration::from_secs(2) + CUT, Duration::from_secs(15));
    let mut calls = Vec::new();
    let mut n = 0;
    let mut cut = false;
    while start.elapsed() < stop_at {
        if !cut && start.elapsed() >= cut_at {
            proxy.cut();
            cut = true;
        }
        if cut && start.elapsed() >= restore_at {
            proxy.restore();
            cut = false;
        }
        let during_cut = cut;
        let call = tokio::spawn(publish(n));
        calls.push((n, during_cut, call));
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answers = Vec::new();
    for (n, during_cut, call) in calls {
        answers.push((n, during_cut, call.await.unwrap()));
    }
    let refused_in_cut: Vec<_> = answers.iter().filter(|(_, cut, a)| *cut && *a != Answer::Acknowledged).collect();
    assert!(!refused_in_cut.is_empty(), "every publish during the cut was acknowledged: {answers:?}");
    for (n, _, answer) in &refused_in_cut {
        assert_eq!(*answer, Answer::Refused("BUS_UNAVAILABLE".into()), "publish {n} during the cut");
    }
    // The client retries what was refused; then everything is there, once.
    for (n, _, answer) in &answers {
        if *answer != Answer::Acknowledged {
            let deadline = tokio::time::Instant::now() + WITHIN;
            while publish(*n).await != Answer::Acknowledged {
                assert!(tokio::time::Instant::now() < deadline, "publish {n} is still refused after the cut");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let on_bus = event_ids_on(&bus, Topic::Transactions).await;
    assert_eq!(on_bus.len(), answers.len(), "records missing from the bus");
    assert!(on_bus.values().all(|n| *n == 1), "a record written twice: {on_bus:?}");

    // The stream paused and went on: every transaction reached agg-x, on the stream opened before.
    let ids = cardlink_auth::Pseudonyms::new(SECRET, "agg-x");
    let mut missing: HashSet<String> =
        answers.iter().map(|(n, _, _)| ids.transaction("iss-a", &format!("tx-{n}"))).collect();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !missing.is_empty() {
        let next = tokio::time::timeout_at(deadline, received.recv()).await;
        let got = next.unwrap_or_else(|_| panic!("{} transactions never reached agg-x", missing.len()));
        missing.remove(&got.expect("the stream ended"));
    }
    assert!(!reader.is_finished(), "the stream ended: {:?}", reader.await);
    eprintln!(
        "broker cut: {} publishes, {} during the {CUT:?} cut refused with BUS_UNAVAILABLE",
        answers.len(),
        refused_in_cut.len()
    );
    ingest.shutdown().await.unwrap();
}

// ---- Consent churn ---------------------------------------------------------------------------

/// Consent timelines in the churn test (`CHURN_TIMELINES` to change).
const TIMELINES: usize = 10_000;
/// How many timelines run at once.
const LANES: usize = 128;
const CHURN_AGGREGATORS: usize = 8;
const CHURN_ISSUERS: [&str; 2] = ["iss-a", "iss-b"];
/// Accounts per issuer.
const CHURN_ACCOUNTS: usize = 20;
/// The revocation bound the services promise, at a message's `sent_at`.
const BOUND: Duration = Duration::from_secs(1);
/// What the network and a starved client may add to the bound before a message is read: the
/// in-process client shares two cores with everything else (it once read a frame sent within
/// the bound 0.55 s late). Past this, the service would have held checked messages back.
const RECEIPT_SLACK: Duration = Duration::from_secs(3);
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const REDIRECT: &str = "https://kakeibo.example/callback";
/// The scope sets aggregators ask for.
const SCOPE_SETS: [&[Scope]; 5] = [
    &[Scope::Transactions],
    &[Scope::Transactions, Scope::MerchantDetail],
    &[Scope::Statements],
    &[Scope::Transactions, Scope::Statements],
    &[Scope::Transactions, Scope::MerchantDetail, Scope::Statements],
];

type Instant = tokio::time::Instant;

/// What the model knows of one consent: under it, `aggregator` may receive `account`'s events in
/// `scopes` that occurred from `granted_at`, from `from` (when its approval was asked for) until
/// `until` (when its end was acknowledged, or its expiry) plus the revocation bound.
#[derive(Debug, Clone)]
struct Consented {
    aggregator: usize,
    issuer: &'static str,
    account: String,
    scopes: Vec<Scope>,
    granted_at: chrono::DateTime<chrono::Utc>,
    from: Instant,
    until: Option<Instant>,
}

/// A time when deliveries to some aggregator (of one issuer's, or of all) had to stop: from `from`
/// (acknowledged) plus the bound, until `until` (when lifting it was asked for).
#[derive(Debug, Clone)]
struct Stop {
    aggregator: usize,
    issuer: Option<&'static str>,
    from: Instant,
    until: Instant,
}

/// One delivery as an aggregator's client received it.
#[derive(Debug, Clone)]
struct Seen {
    /// When the service sent it (its `sent_at`, on this test's clock).
    sent: Instant,
    /// When the client read it.
    at: Instant,
    /// Which of the aggregator's credentials the stream was opened with.
    credential: usize,
    consent_id: String,
    account_ref: String,
    transaction_id: String,
    merchant: bool,
}

/// A published transaction: (issuer, account, number, occurred at).
type Published = (&'static str, String, u32, chrono::DateTime<chrono::Utc>);

/// An aggregator's credentials, oldest first: (token, credential id).
type Credentials = Mutex<Vec<(String, String)>>;

/// Everything the churn test knows and records.
struct Churn {
    /// The same moment on the monotonic clock and the wall clock, to place `sent_at`.
    clock: (Instant, chrono::DateTime<chrono::Utc>),
    aggregators: Vec<String>,
    credentials: Vec<Credentials>,
    /// When each of an aggregator's credentials was revoked (acknowledged).
    revoked: Mutex<HashMap<(usize, usize), Instant>>,
    consents: Mutex<HashMap<String, Consented>>,
    stops: Mutex<Vec<Stop>>,
    events: Mutex<Vec<Published>>,
    seen: Mutex<Vec<Vec<Seen>>>,
    /// How the timelines went, by outcome.
    outcomes: Mutex<std::collections::BTreeMap<String, usize>>,
    consent: cardlink_consent::server::RunningConsent,
    producer: cardlink_bus::Producer,
    consent_client: cardlink_api::v1::consent_service_client::ConsentServiceClient<Channel>,
    registry: cardlink_testkit::RegistryClient,
    operator: String,
    issuer_tokens: HashMap<&'static str, String>,
}

impl Churn {
    fn token(&self, aggregator: usize) -> (usize, String) {
        let credentials = self.credentials[aggregator].lock().unwrap();
        (credentials.len() - 1, credentials.last().unwrap().0.clone())
    }

    /// A message's `sent_at` on the monotonic clock.
    fn sent(&self, sent_at: Option<&prost_types::Timestamp>) -> Instant {
        let sent_at = sent_at.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?));
        let since = sent_at.expect("every message carries sent_at") - self.clock.1;
        self.clock.0 + since.to_std().expect("sent after the test began")
    }

    fn count(&self, outcome: impl Into<String>) {
        *self.outcomes.lock().unwrap().entry(outcome.into()).or_default() += 1;
    }

    /// A consent service call by `aggregator`, again with its newest credential if the one used
    /// was revoked meanwhile.
    async fn as_aggregator<T, R, F>(&self, aggregator: usize, message: T, call: F) -> Result<R, tonic::Status>
    where
        T: Clone,
        F: AsyncFn(
            &mut cardlink_api::v1::consent_service_client::ConsentServiceClient<Channel>,
            tonic::Request<T>,
        ) -> Result<tonic::Response<R>, tonic::Status>,
    {
        let mut client = self.consent_client.clone();
        let mut tries = 0;
        loop {
            let (_, token) = self.token(aggregator);
            match call(&mut client, authorized(message.clone(), &token)).await {
                Err(e) if e.code() == tonic::Code::Unauthenticated && tries < 3 => tries += 1,
                other => return other.map(tonic::Response::into_inner),
            }
        }
    }
}

fn reason_of(e: &tonic::Status) -> String {
    Reason::of(e).map_or_else(|| format!("{:?}", e.code()), |r| r.to_string())
}

/// One random consent timeline.
async fn timeline(churn: &Churn, rng: &mut rand::rngs::StdRng, n: usize) {
    use rand::Rng as _;
    let aggregator = rng.random_range(0..CHURN_AGGREGATORS);
    let issuer = CHURN_ISSUERS[rng.random_range(0..CHURN_ISSUERS.len())];
    let account = format!("acct-{:02}", rng.random_range(0..CHURN_ACCOUNTS));
    let member = format!("m-{issuer}-{account}");
    let scopes = SCOPE_SETS[rng.random_range(0..SCOPE_SETS.len())].to_vec();
    let roll = rng.random_range(0..100);
    let consents = churn.consent.consents();

    if roll < 10 {
        // Expiry: a consent that ends by its own time, seconds from now (the service's shortest
        // grant is a day, so it is written as a replica would have written it long ago).
        let now = chrono::Utc::now();
        let lives = chrono::TimeDelta::milliseconds(rng.random_range(300..1500));
        let id = format!("x-{n}");
        let mut consent = samples::active_consent(
            &id,
            issuer,
            &churn.aggregators[aggregator],
            &[account.as_str()],
            &scopes,
            now,
            now + lives,
        );
        consent.member_ref = Some(member);
        let from = Instant::now();
        let until = from + lives.to_std().unwrap();
        churn.consents.lock().unwrap().insert(
            id.clone(),
            Consented { aggregator, issuer, account, scopes, granted_at: now, from, until: Some(until) },
        );
        churn
            .producer
            .publish_record(RecordType::ConsentEvent, &id, &consent.event_id.to_string(), &consent)
            .await
            .unwrap();
        churn.count("expires by its time");
        return;
    }

    let ask = v1::CreateConsentRequestRequest {
        issuer_id: issuer.into(),
        scopes: scopes.iter().map(|s| convert::scope(*s) as i32).collect(),
        accounts_hint: String::new(),
        duration_days: 90,
        history_days: 0,
        purpose: "家計簿への自動記録".into(),
        redirect_uri: REDIRECT.into(),
        code_challenge: cardlink_consent::pkce::challenge(VERIFIER),
        code_challenge_method: "S256".into(),
        state: format!("s{n}"),
    };
    let requested = match churn.as_aggregator(aggregator, ask, async |c, r| c.create_consent_request(r).await).await {
        Ok(r) => r.request_id,
        Err(e) => return churn.count(format!("request refused: {}", reason_of(&e))),
    };
    if roll < 20 {
        match consents.deny(issuer, &requested, &member).await {
            Ok(_) => churn.count("denied"),
            Err(e) => churn.count(format!("deny failed: {e}")),
        }
        return;
    }
    if roll < 25 {
        return churn.count("left undecided");
    }

    // The member approves, sometimes without merchant detail.
    let mut granted_scopes = scopes.clone();
    if rng.random_bool(0.3) {
        granted_scopes.retain(|s| *s != Scope::MerchantDetail);
    }
    let before = chrono::Utc::now();
    let from = Instant::now();
    let approval = cardlink_consent::lifecycle::Approval {
        member_ref: member.clone(),
        account_refs: vec![account.clone()],
        scopes: granted_scopes.clone(),
    };
    let code = match consents.approve(issuer, &requested, approval).await {
        Ok((event, code)) => {
            let consented = Consented {
                aggregator,
                issuer,
                account,
                scopes: event.scopes.clone(),
                granted_at: event.granted_at.unwrap(),
                from,
                until: None,
            };
            churn.consents.lock().unwrap().insert(requested.clone(), consented);
            code
        }
        Err(e) => {
            // It may have taken effect all the same: the model allows it, open-ended.
            let consented = Consented {
                aggregator,
                issuer,
                account,
                scopes: granted_scopes,
                granted_at: before,
                from,
                until: None,
            };
            churn.consents.lock().unwrap().insert(requested.clone(), consented);
            return churn.count(format!("approve failed: {e}"));
        }
    };
    let exchange = v1::ExchangeCodeRequest { code, code_verifier: VERIFIER.into(), redirect_uri: REDIRECT.into() };
    if let Err(e) = churn.as_aggregator(aggregator, exchange, async |c, r| c.exchange_code(r).await).await {
        churn.count(format!("exchange refused: {}", reason_of(&e)));
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;

    let end = rng.random_range(0..100);
    let ended = if end < 45 {
        let revoke = v1::RevokeConsentRequest { consent_id: requested.clone(), reason: "churn".into() };
        match churn.as_aggregator(aggregator, revoke, async |c, r| c.revoke_consent(r).await).await {
            Ok(_) => Some("revoked by the aggregator"),
            // A suspended aggregator cannot call; the member can.
            Err(_) => None,
        }
    } else if end >= 90 {
        return churn.count("left active");
    } else {
        None
    };
    let ended = match ended {
        Some(how) => Ok(how),
        None => {
            let actor = cardlink_consent::lifecycle::Actor::Member { issuer_id: issuer.into(), member_ref: member };
            consents.revoke(&actor, &requested).await.map(|_| "revoked by the member")
        }
    };
    match ended {
        Ok(how) => {
            let at = Instant::now();
            churn.consents.lock().unwrap().get_mut(&requested).unwrap().until = Some(at);
            churn.count(how);
        }
        Err(e) => churn.count(format!("revoke failed: {e}")),
    }
}

/// Suspends random connections and aggregators for a while, and rotates and revokes
/// aggregators' credentials, until `done`.
async fn disrupt(churn: Arc<Churn>, seed: u64, done: tokio::sync::watch::Receiver<bool>) {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut r = churn.registry.clone();
    let all: Vec<i32> =
        [v1::Scope::Transactions, v1::Scope::MerchantDetail, v1::Scope::Statements].iter().map(|s| *s as i32).collect();
    while !*done.borrow() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        let aggregator = rng.random_range(0..CHURN_AGGREGATORS);
        let id = churn.aggregators[aggregator].clone();
        match rng.random_range(0..3) {
            0 => {
                // The issuer suspends its connection to the aggregator, then enables it again.
                let issuer = CHURN_ISSUERS[rng.random_range(0..CHURN_ISSUERS.len())];
                let token = &churn.issuer_tokens[issuer];
                let suspend = v1::SuspendConnectionRequest {
                    issuer_id: issuer.into(),
                    aggregator_id: id.clone(),
                    reason: "churn".into(),
                };
                r.suspend_connection(authorized(suspend, token)).await.unwrap();
                let from = Instant::now();
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
                let until = Instant::now();
                let enable =
                    v1::EnableConnectionRequest { issuer_id: issuer.into(), aggregator_id: id, scopes: all.clone() };
                r.enable_connection(authorized(enable, token)).await.unwrap();
                churn.stops.lock().unwrap().push(Stop { aggregator, issuer: Some(issuer), from, until });
            }
            1 => {
                // The operator suspends the aggregator, then reinstates it.
                let status = |s: v1::AggregatorStatus| v1::SetAggregatorStatusRequest {
                    aggregator_id: id.clone(),
                    status: s as i32,
                };
                r.set_aggregator_status(authorized(status(v1::AggregatorStatus::Suspended), &churn.operator))
                    .await
                    .unwrap();
                let from = Instant::now();
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
                let until = Instant::now();
                r.set_aggregator_status(authorized(status(v1::AggregatorStatus::Active), &churn.operator))
                    .await
                    .unwrap();
                churn.stops.lock().unwrap().push(Stop { aggregator, issuer: None, from, until });
            }
            _ => {
                // A new credential for the aggregator; the one in use is revoked.
                let rotate = v1::RotateCredentialRequest { participant_id: id };
                let issued = r.rotate_credential(authorized(rotate, &churn.operator)).await.unwrap().into_inner();
                let (old, old_id) = {
                    let mut credentials = churn.credentials[aggregator].lock().unwrap();
                    let old = (credentials.len() - 1, credentials.last().unwrap().1.clone());
                    credentials.push((issued.token, issued.credential_id));
                    old
                };
                let revoke = v1::RevokeCredentialRequest { credential_id: old_id };
                r.revoke_credential(authorized(revoke, &churn.operator)).await.unwrap();
                churn.revoked.lock().unwrap().insert((aggregator, old), Instant::now());
            }
        }
    }
}

/// Publishes a transaction of a random account of each issuer every 10 ms until `done` (each
/// round's acknowledgements awaited on the side, so a slow one does not slow the flow).
async fn publish_transactions(churn: Arc<Churn>, done: tokio::sync::watch::Receiver<bool>) {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut n = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut rounds = tokio::task::JoinSet::new();
    while !*done.borrow() {
        tick.tick().await;
        let mut sends = Vec::new();
        for issuer in CHURN_ISSUERS {
            let account = format!("acct-{:02}", rng.random_range(0..CHURN_ACCOUNTS));
            let mut t = samples::transaction(issuer, &account, n);
            t.occurred_at = chrono::Utc::now();
            churn.events.lock().unwrap().push((issuer, account, n, t.occurred_at));
            sends.push(Event::Transaction(t));
            n += 1;
        }
        let churn = Arc::clone(&churn);
        rounds.spawn(async move {
            for sent in futures::future::join_all(sends.iter().map(|e| churn.producer.publish(e, None))).await {
                sent.unwrap();
            }
        });
        while let Some(round) = rounds.try_join_next() {
            round.unwrap();
        }
    }
    while let Some(round) = rounds.join_next().await {
        round.unwrap();
    }
}

/// The aggregator's client: streams transactions with its newest credential, resuming from its
/// cursor whenever the stream ends (a revoked credential, a suspension), until `done`.
async fn subscribe_throughout(
    churn: Arc<Churn>,
    aggregator: usize,
    mut client: SubscriptionClient<Channel>,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    let mut cursor: Option<String> = None;
    while !*done.borrow() {
        let (credential, token) = churn.token(aggregator);
        let request = v1::SubscribeRequest {
            kinds: vec![v1::EventKind::Transaction as i32],
            start: cursor.clone().map(v1::subscribe_request::Start::Cursor),
            ..Default::default()
        };
        let mut stream = match client.subscribe(authorized(request, &token)).await {
            Ok(s) => s.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = done.changed() => return,
            };
            let at = Instant::now();
            let Ok(Some(message)) = message else { break };
            let sent = churn.sent(message.sent_at.as_ref());
            let mut seen = churn.seen.lock().unwrap();
            for delivery in message.deliveries {
                if let Some(v1::delivery::Event::Transaction(t)) = delivery.event {
                    seen[aggregator].push(Seen {
                        sent,
                        at,
                        credential,
                        consent_id: delivery.consent_id,
                        account_ref: t.account_ref,
                        transaction_id: t.issuer_transaction_id,
                        merchant: t.merchant.is_some(),
                    });
                }
            }
            if !message.cursor.is_empty() {
                cursor = Some(message.cursor);
            }
        }
    }
}

/// Every delivery the model does not allow, described.
fn violations(churn: &Churn) -> Vec<String> {
    let consents = churn.consents.lock().unwrap();
    let stops = churn.stops.lock().unwrap();
    let revoked = churn.revoked.lock().unwrap();
    let events = churn.events.lock().unwrap();
    let seen = churn.seen.lock().unwrap();
    let mut out = Vec::new();
    for (aggregator, deliveries) in seen.iter().enumerate() {
        let name = &churn.aggregators[aggregator];
        let ids = cardlink_auth::Pseudonyms::new(cardlink_testkit::TEST_CONSENT_SECRET, name);
        let by_id: HashMap<String, usize> = events
            .iter()
            .enumerate()
            .map(|(i, (issuer, _, n, _))| (ids.transaction(issuer, &format!("tx-{n}")), i))
            .collect();
        for d in deliveries {
            // Sent past the bound, or read so long after it that the service must have held it.
            let late = |end: Instant| {
                let sent = d.sent.checked_duration_since(end + BOUND).map(|by| format!("sent {by:?} late"));
                sent.or_else(|| {
                    d.at.checked_duration_since(end + BOUND + RECEIPT_SLACK).map(|by| format!("read {by:?} late"))
                })
            };
            let mut wrong = Vec::new();
            if let Some(revoked_at) = revoked.get(&(aggregator, d.credential)).copied() {
                wrong.extend(late(revoked_at).map(|l| format!("on a revoked credential, {l}")));
            }
            let Some(c) = consents.get(&d.consent_id) else {
                out.push(format!("{name}: delivery under unknown consent {}", d.consent_id));
                continue;
            };
            if c.aggregator != aggregator {
                wrong.push(format!("consent of {}", churn.aggregators[c.aggregator]));
            }
            if d.sent < c.from {
                wrong.push("before its approval was asked for".into());
            }
            if let Some(until) = c.until {
                wrong.extend(late(until).map(|l| format!("after its end, {l}")));
            }
            for stop in stops.iter().filter(|s| s.aggregator == aggregator && s.issuer.is_none_or(|i| i == c.issuer)) {
                if d.sent > stop.from + BOUND && d.sent < stop.until {
                    wrong.push(format!("during a suspension (sent {:?} into it)", d.sent - stop.from));
                }
            }
            if d.account_ref != ids.account(c.issuer, &c.account) {
                wrong.push("another account".into());
            }
            match by_id.get(&d.transaction_id).map(|i| &events[*i]) {
                None => wrong.push("a transaction never published".into()),
                Some((issuer, account, _, occurred_at)) => {
                    if *issuer != c.issuer || *account != c.account {
                        wrong.push(format!("a transaction of {issuer}/{account}"));
                    }
                    if *occurred_at < c.granted_at {
                        wrong.push("a transaction from before the grant".into());
                    }
                }
            }
            if !c.scopes.contains(&Scope::Transactions) {
                wrong.push("transactions not granted".into());
            }
            if d.merchant != c.scopes.contains(&Scope::MerchantDetail) {
                wrong.push(format!("merchant detail {} but granted {:?}", d.merchant, c.scopes));
            }
            if !wrong.is_empty() {
                out.push(format!("{name}, consent {}: {}", d.consent_id, wrong.join("; ")));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consent_churn_never_delivers_outside_consent_nor_after_the_revocation_bound() {
    use rand::SeedableRng as _;
    let _one = ONE_AT_A_TIME.lock().await;
    let seed: u64 = std::env::var("CHURN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED);
    let timelines: usize = std::env::var("CHURN_TIMELINES").ok().and_then(|s| s.parse().ok()).unwrap_or(TIMELINES);
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut r = registry_client(&registry).await.unwrap();
    let mut issuer_tokens = HashMap::new();
    for issuer in CHURN_ISSUERS {
        issuer_tokens.insert(issuer, register_issuer(&mut r, &operator, issuer, 1).await.unwrap().token);
    }
    let aggregators: Vec<String> = (0..CHURN_AGGREGATORS).map(|k| format!("agg-{k}")).collect();
    let all = [v1::Scope::Transactions, v1::Scope::MerchantDetail, v1::Scope::Statements];
    let mut credentials = Vec::new();
    for id in &aggregators {
        let registered = register_aggregator(&mut r, &operator, id).await.unwrap();
        credentials.push(Mutex::new(vec![(registered.token, registered.credential_id)]));
        for issuer in CHURN_ISSUERS {
            connect(&mut r, &issuer_tokens[issuer], issuer, id, &all).await.unwrap();
        }
    }
    let secrets = tempfile::tempdir().unwrap();
    let login = cardlink_consent::login::LoginSettings {
        client_secrets: cardlink_consent::login::ClientSecrets::Dir(secrets.path().to_owned()),
        client_key: None,
    };
    let consent = bus.start_consent(&registry, login).await.unwrap();
    let subscription = cardlink_subscription::server::start(
        bus.config(),
        cardlink_subscription::server::SubscriptionConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            trusted_keys: vec![registry.public_key().clone()],
            secret: Arc::from(&cardlink_testkit::TEST_CONSENT_SECRET[..]),
            http_listen: None,
            max_stream_age: cardlink_subscription::server::DEFAULT_MAX_STREAM_AGE,
            history_store: None,
        },
    )
    .await
    .unwrap();
    let last = aggregators.last().unwrap().clone();
    let deadline = Instant::now() + WITHIN;
    while !consent.consents().registry().read(|v| v.is_connected("iss-b", &last)) {
        assert!(Instant::now() < deadline, "the consent service never learnt the connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let consent_client = cardlink_testkit::consent_client(&consent).await.unwrap();
    let churn = Arc::new(Churn {
        clock: (Instant::now(), chrono::Utc::now()),
        aggregators,
        credentials,
        revoked: Mutex::default(),
        consents: Mutex::default(),
        stops: Mutex::default(),
        events: Mutex::default(),
        seen: Mutex::new(vec![Vec::new(); CHURN_AGGREGATORS]),
        outcomes: Mutex::default(),
        consent,
        producer: bus.producer().unwrap(),
        consent_client,
        registry: r,
        operator,
        issuer_tokens,
    });

    let (done, done_rx) = tokio::sync::watch::channel(false);
    let client = SubscriptionClient::connect(format!("http://{}", subscription.addr())).await.unwrap();
    let mut background = Vec::new();
    for aggregator in 0..CHURN_AGGREGATORS {
        background.push(tokio::spawn(subscribe_throughout(
            Arc::clone(&churn),
            aggregator,
            client.clone(),
            done_rx.clone(),
        )));
    }
    background.push(tokio::spawn(publish_transactions(Arc::clone(&churn), done_rx.clone())));
    background.push(tokio::spawn(disrupt(Arc::clone(&churn), seed ^ 0xD15, done_rx.clone())));

    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut lanes = Vec::new();
    for lane in 0..LANES {
        let (churn, next) = (Arc::clone(&churn), Arc::clone(&next));
        lanes.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (lane as u64) << 16);
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= timelines {
                    return;
                }
                timeline(&churn, &mut rng, n).await;
            }
        }));
    }
    for lane in lanes {
        lane.await.unwrap();
    }
    // Whatever is still on its way arrives (or, past the bound, would be a violation).
    tokio::time::sleep(2 * BOUND).await;
    done.send_replace(true);
    for task in background {
        task.await.unwrap();
    }

    let found = violations(&churn);
    let outcomes = churn.outcomes.lock().unwrap().clone();
    let seen = churn.seen.lock().unwrap();
    let deliveries: usize = seen.iter().map(Vec::len).sum();
    let consents_delivered: HashSet<&str> = seen.iter().flatten().map(|d| d.consent_id.as_str()).collect();
    // How close the services came to the bound: the latest delivery (sent, read) after a consent's
    // end and after a credential's revocation.
    let latest = |after: &dyn Fn(usize, &Seen) -> Option<Instant>| {
        let after: Vec<(Instant, &Seen)> = seen
            .iter()
            .enumerate()
            .flat_map(|(a, ds)| ds.iter().map(move |d| (a, d)))
            .filter_map(|(a, d)| Some((after(a, d)?, d)))
            .collect();
        let sent = after.iter().filter_map(|(end, d)| d.sent.checked_duration_since(*end)).max();
        let read = after.iter().filter_map(|(end, d)| d.at.checked_duration_since(*end)).max();
        (sent, read)
    };
    let closest = {
        let consents = churn.consents.lock().unwrap();
        latest(&|_, d| consents.get(&d.consent_id)?.until)
    };
    let closest_credential = {
        let revoked = churn.revoked.lock().unwrap();
        latest(&|a, d| revoked.get(&(a, d.credential)).copied())
    };
    let expiring = seen.iter().flatten().filter(|d| d.consent_id.starts_with("x-")).count();
    eprintln!(
        "{expiring} deliveries under consents that expire by their time; the latest delivery (sent, read) after a consent's \
         end: {closest:?}, after a credential's revocation: {closest_credential:?}"
    );
    eprintln!(
        "consent churn (seed {seed:#x}): {timelines} timelines in {:?}: {outcomes:?}; {} transactions published, \
         {deliveries} deliveries under {} consents; {} suspensions, {} credentials revoked",
        started.elapsed(),
        churn.events.lock().unwrap().len(),
        consents_delivered.len(),
        churn.stops.lock().unwrap().len(),
        churn.revoked.lock().unwrap().len(),
    );
    assert!(
        found.is_empty(),
        "{} deliveries outside consent (seed {seed:#x}), e.g.:\n{}",
        found.len(),
        found[..found.len().min(20)].join("\n")
    );
    // Not vacuous: much was delivered, under many consents (~2,800 on an idle machine; a loaded
    // one publishes less while the timelines run, and 740 were seen under a busy loop).
    assert!(
        deliveries > 2_000 && consents_delivered.len() > 500,
        "{deliveries} deliveries, {} consents",
        consents_delivered.len()
    );
}
