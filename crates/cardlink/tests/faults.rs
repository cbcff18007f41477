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
use cardlink_bus::{Record, Topic};
use cardlink_events::registry::Scope;
use cardlink_events::{Event, RecordType, samples};
use cardlink_testkit::{
    TEST_EVENT_PARTITIONS, TestBus, authorized, connect, register_aggregator, register_issuer, registry_client,
};
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
fn serve_ingest(bus: &TestBus, trusted: &str, port: u16) -> Child {
    cardlink()
        .args(["serve", "ingest"])
        .env("CARDLINK_KAFKA_BOOTSTRAP", &bus.config().bootstrap_servers)
        .env("CARDLINK_TOPIC_PREFIX", &bus.config().topic_prefix)
        .env("CARDLINK_INGEST_LISTEN", format!("127.0.0.1:{port}"))
        .env("CARDLINK_TRUSTED_KEYS", trusted)
        .env("CARDLINK_ISSUER_KEYS", "")
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

/// Every record on `topic` (its partitions read to their ends as of now).
async fn everything_on(bus: &TestBus, topic: Topic) -> Vec<Record> {
    let consumer = bus.consumer("fault-check").unwrap();
    let mut total = 0;
    for partition in 0..TEST_EVENT_PARTITIONS {
        let (low, high) = consumer.watermarks(topic, partition).await.unwrap();
        total += usize::try_from(high - low).unwrap();
    }
    bus.read(topic, total, WITHIN).await.unwrap()
}

/// How many times each event id is on `topic`.
async fn event_ids_on(bus: &TestBus, topic: Topic) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for record in everything_on(bus, topic).await {
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
    let mut ingest = serve_ingest(&bus, &trusted, port);
    ready(port).await;

    let batches: Vec<v1::PublishRequest> = (0..BATCHES)
        .map(|b| {
            let first = u32::try_from(b).unwrap() * PER_BATCH;
            let records =
                (first..first + PER_BATCH).map(|n| convert::ingest_record(&transaction("acct-1", n))).collect();
            v1::PublishRequest { issuer_id: "iss-a".into(), batch_id: format!("b{b}"), records }
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
    let mut ingest = serve_ingest(&bus, &trusted, port);
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
                if message.heartbeat.is_some_and(|h| h.caught_up) && cursor.is_empty() {
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
                let resume =
                    v1::SubscribeRequest { start: Some(v1::subscribe_request::Start::Cursor(cursor.clone())), ..request.clone() };
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
    assert!(first.heartbeat.is_some_and(|h| h.caught_up));
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
            };
            match client.publish(authorized(request, &issuer)).await {
                Ok(response) if all_acknowledged(response.get_ref(), 1) => Answer::Acknowledged,
                Ok(response) => Answer::Refused(response.into_inner().results[0].reason.clone()),
                Err(status) => Answer::Refused(Reason::of(&status).map_or_else(|| status.to_string(), |r| r.to_string())),
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
