//! One shared read of the bus, fanned out to exactly the entitled streams; resuming from a
//! cursor continues with no gap. Real broker, real consent view.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cardlink_api::v1;
use cardlink_bus::{Consumer, PolledConsumer, Topic};
use cardlink_events::ActorType;
use cardlink_events::consent::ConsentEvent;
use cardlink_events::registry::Scope;
use cardlink_events::registry::{
    AggregatorEntity, AggregatorStatus, ConnectionEntity, ConnectionStatus, Entity, RegistryEvent,
};
use cardlink_events::{Event, RecordType, samples};
use cardlink_subscription::catch_up::{self, Start};
use cardlink_subscription::cursor::Cursor;
use cardlink_subscription::delivery::Outgoing;
use cardlink_subscription::dispatch::{self, REVOCATION_BOUND};
use cardlink_subscription::hub::Hub;
use cardlink_subscription::streams::{Filters, STREAM_BUFFER};
use cardlink_testkit::TestBus;
use cardlink_views::consent::ConsentView;
use cardlink_views::follow;
use cardlink_views::registry::RegistryView;
use chrono::{TimeZone, Utc};
use tokio::sync::{mpsc, watch};

const SECRET: &[u8] = b"subscription-test-secret-0123456";
const WITHIN: Duration = Duration::from_secs(30);

fn consent(id: &str, aggregator: &str, accounts: &[&str], scopes: &[Scope]) -> ConsentEvent {
    // Granted before the sample events occurred, so they fall inside the data window.
    let granted = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap();
    samples::active_consent(
        id,
        "iss-a",
        aggregator,
        accounts,
        scopes,
        granted,
        Utc::now() + chrono::TimeDelta::days(30),
    )
}

struct Setup {
    bus: TestBus,
    hub: Hub,
    _stop: watch::Sender<bool>,
}

/// The registry of the consents' participants: each aggregator active, each connection active.
fn registry_of(consents: &[ConsentEvent]) -> Vec<RegistryEvent> {
    let mut events = Vec::new();
    for c in consents {
        let aggregator = AggregatorEntity {
            aggregator_id: c.aggregator_id.clone(),
            name: c.aggregator_id.clone(),
            registration_number: "1".into(),
            contact: "ops@example.invalid".into(),
            status: AggregatorStatus::Active,
            redirect_uris: Vec::new(),
        };
        let connection = ConnectionEntity {
            issuer_id: c.issuer_id.clone(),
            aggregator_id: c.aggregator_id.clone(),
            scopes: Scope::ALL.to_vec(),
            status: ConnectionStatus::Active,
            reason: None,
        };
        for entity in [Entity::Aggregator(aggregator), Entity::Connection(connection)] {
            events.push(RegistryEvent::new(ActorType::System, "test", entity));
        }
    }
    events
}

async fn setup(consents: &[ConsentEvent]) -> Setup {
    let bus = TestBus::start().await.unwrap();
    let producer = bus.producer().unwrap();
    for c in consents {
        producer.publish_record(RecordType::ConsentEvent, &c.consent_id, &c.event_id.to_string(), c).await.unwrap();
    }
    for e in registry_of(consents) {
        producer.publish_record(RecordType::RegistryEvent, &e.key(), &e.event_id.to_string(), &e).await.unwrap();
    }
    let (stop, shutdown) = watch::channel(false);
    let (mut view, _) = follow::spawn(
        PolledConsumer::new(bus.config(), "view").unwrap(),
        Topic::Consents,
        ConsentView::new(),
        shutdown.clone(),
    );
    let (mut registry, _) = follow::spawn(
        PolledConsumer::new(bus.config(), "registry").unwrap(),
        Topic::Registry,
        RegistryView::new(),
        shutdown.clone(),
    );
    tokio::time::timeout(WITHIN, view.caught_up()).await.unwrap();
    tokio::time::timeout(WITHIN, registry.caught_up()).await.unwrap();
    let hub = Hub::new(view, registry, Arc::from(SECRET));
    tokio::spawn(dispatch::run_reader(hub.clone(), PolledConsumer::new(bus.config(), "hub").unwrap(), shutdown));
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !hub.streams().is_reading() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Setup { bus, hub, _stop: stop }
}

/// What `aggregator` receives as the issuer's transaction `tx-{n}` (ids are pseudonymous per aggregator).
fn tx_id(aggregator: &str, n: usize) -> String {
    cardlink_auth::Pseudonyms::new(SECRET, aggregator).transaction("iss-a", &format!("tx-{n}"))
}

/// (delivered transaction id or statement id, consent id, pseudonymous account)
fn summary(d: &v1::Delivery) -> (String, String, String) {
    match &d.event {
        Some(v1::delivery::Event::Transaction(t)) => {
            (t.issuer_transaction_id.clone(), d.consent_id.clone(), t.account_ref.clone())
        }
        Some(v1::delivery::Event::Statement(s)) => {
            (s.statement_id.clone(), d.consent_id.clone(), s.account_ref.clone())
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn take(rx: &mut mpsc::Receiver<Outgoing>, n: usize) -> Vec<(v1::Delivery, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WITHIN, rx.recv()).await.expect("delivery in time") {
            Some(Outgoing::Delivery { delivery, cursor, .. }) => out.push((*delivery, cursor)),
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

async fn nothing_more(rx: &mut mpsc::Receiver<Outgoing>) {
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(800), rx.recv()).await {
        panic!("unexpected extra delivery {extra:?}");
    }
}

#[tokio::test]
async fn each_aggregator_receives_exactly_what_its_consents_cover() {
    let s = setup(&[
        consent("c-x", "agg-x", &["acct-1", "acct-2"], &[Scope::Transactions]),
        consent("c-y", "agg-y", &["acct-2"], &[Scope::Transactions, Scope::MerchantDetail, Scope::Statements]),
    ])
    .await;
    let mut x = s.hub.register("agg-x", Filters::all(), &Cursor::new("agg-x"));
    let mut y = s.hub.register("agg-y", Filters::all(), &Cursor::new("agg-y"));
    let mut z = s.hub.register("agg-z", Filters::all(), &Cursor::new("agg-z"));
    assert_eq!(s.hub.streams().streams(), 3);

    let producer = s.bus.producer().unwrap();
    let events = vec![
        Event::Transaction(samples::transaction("iss-a", "acct-1", 1)),
        Event::Transaction(samples::transaction("iss-a", "acct-2", 2)),
        Event::Transaction(samples::transaction("iss-a", "acct-3", 3)),
        Event::Statement(samples::statement("iss-a", "acct-2")),
        Event::Transaction(samples::transaction("iss-a", "acct-1", 4)),
        Event::Statement(samples::statement("iss-a", "acct-1")),
    ];
    for e in &events {
        producer.publish(e, None).await.unwrap();
    }

    // The oracle, from the inputs: agg-x has transactions of acct-1 and acct-2; agg-y has
    // everything of acct-2; agg-z nothing.
    let got_x: Vec<_> = take(&mut x.rx, 3).await.iter().map(|(d, _)| summary(d)).collect();
    let mut ids: Vec<String> = got_x.iter().map(|(id, _, _)| id.clone()).collect();
    ids.sort();
    let mut expected: Vec<String> = [1, 2, 4].map(|n| tx_id("agg-x", n)).into();
    expected.sort();
    assert_eq!(ids, expected);
    assert!(got_x.iter().all(|(_, c, a)| c == "c-x" && a.starts_with("acc_")));
    nothing_more(&mut x.rx).await;

    let got_y = take(&mut y.rx, 2).await;
    let mut ids: Vec<String> = got_y.iter().map(|(d, _)| summary(d).0).collect();
    ids.sort();
    let mut expected =
        vec![cardlink_auth::Pseudonyms::new(SECRET, "agg-y").statement("iss-a", "acct-2-2026-12"), tx_id("agg-y", 2)];
    expected.sort();
    assert_eq!(ids, expected);
    let tx_y = got_y.iter().find_map(|(d, _)| match &d.event {
        Some(v1::delivery::Event::Transaction(t)) => Some(t.clone()),
        _ => None,
    });
    assert!(tx_y.unwrap().merchant.is_some(), "agg-y has merchant detail");
    let tx_x = take_first_tx(&got_x);
    assert_ne!(tx_x, summary(&got_y[0].0).2, "the same account looks different to each aggregator");
    nothing_more(&mut y.rx).await;
    nothing_more(&mut z.rx).await;
}

fn take_first_tx(got: &[(String, String, String)]) -> String {
    got.iter().find(|(id, _, _)| *id == tx_id("agg-x", 2)).map(|(_, _, a)| a.clone()).unwrap()
}

#[tokio::test]
async fn resuming_from_a_cursor_continues_exactly_after_it() {
    let s = setup(&[consent("c-x", "agg-x", &["acct-1"], &[Scope::Transactions])]).await;
    let first = s.hub.register("agg-x", Filters::all(), &Cursor::new("agg-x"));
    let mut rx = first.rx;
    let producer = s.bus.producer().unwrap();
    for n in 0..10 {
        producer.publish(&Event::Transaction(samples::transaction("iss-a", "acct-1", n)), None).await.unwrap();
    }
    let got = take(&mut rx, 10).await;
    // The client stops after the 4th delivery; its cursor is the 4th's.
    let cursor_text = got[3].1.clone();
    s.hub.streams().unregister("agg-x", first.id);
    for n in 10..15 {
        producer.publish(&Event::Transaction(samples::transaction("iss-a", "acct-1", n)), None).await.unwrap();
    }

    // Resume: register (live events queue from here), catch up from the cursor to the hub's
    // position at registration, then drain the live queue.
    let cursor = Cursor::decode(SECRET, &cursor_text, "agg-x").unwrap();
    let mut resumed = s.hub.register("agg-x", Filters::all(), &cursor);
    let (tx, mut out) = mpsc::channel(64);
    let consumer = Consumer::new(s.bus.config(), "catch-up").unwrap();
    let filters = Filters::all();
    let gap = catch_up::Gap {
        aggregator_id: "agg-x",
        filters: &filters,
        start: Start::After(cursor),
        until: &resumed.live_from,
    };
    let ended = catch_up::catch_up(&s.hub, &consumer, &gap, &tx, None, &Default::default()).await.unwrap();
    assert!(matches!(ended, catch_up::Ended::Done));
    drop(tx);
    let mut ids = Vec::new();
    while let Some(Outgoing::Delivery { delivery, .. }) = out.recv().await {
        ids.push(summary(&delivery).0);
    }
    for n in 15..17 {
        producer.publish(&Event::Transaction(samples::transaction("iss-a", "acct-1", n)), None).await.unwrap();
    }
    // Whatever the hub had not read yet at registration comes through the live queue.
    let expected: Vec<String> = (4..17).map(|n| tx_id("agg-x", n)).collect();
    let live = expected.len() - ids.len();
    ids.extend(take(&mut resumed.rx, live).await.iter().map(|(d, _)| summary(d).0));
    nothing_more(&mut resumed.rx).await;
    assert_eq!(ids, expected, "no gap and no repeat after the cursor");

    // Another aggregator's cursor, or an edited one, is refused.
    assert!(Cursor::decode(SECRET, &cursor_text, "agg-y").is_err());
}

#[tokio::test]
async fn a_stalled_stream_is_told_to_resume_and_never_holds_up_another() {
    let s = setup(&[consent("c-x", "agg-x", &["acct-1"], &[Scope::Transactions])]).await;
    let mut stalled = s.hub.register("agg-x", Filters::all(), &Cursor::new("agg-x"));
    let mut fast = s.hub.register("agg-x", Filters::all(), &Cursor::new("agg-x"));
    let producer = s.bus.producer().unwrap();
    let total = STREAM_BUFFER + 50;
    let publish = tokio::spawn(async move {
        for n in 0..total {
            producer
                .publish(&Event::Transaction(samples::transaction("iss-a", "acct-1", n as u32)), None)
                .await
                .unwrap();
        }
    });
    // The fast stream gets everything while the stalled one reads nothing.
    let got = take(&mut fast.rx, total).await;
    publish.await.unwrap();
    assert_eq!(summary(&got[total - 1].0).0, tx_id("agg-x", total - 1));

    // The stalled stream holds a full buffer, then learns it fell behind: its last cursor lets
    // it resume without loss.
    let mut last_cursor = String::new();
    let mut delivered = 0;
    loop {
        match tokio::time::timeout(WITHIN, stalled.rx.recv()).await.unwrap() {
            Some(Outgoing::Delivery { cursor, .. }) => {
                delivered += 1;
                last_cursor = cursor;
            }
            Some(Outgoing::FellBehind) => break,
            Some(Outgoing::Progress { .. }) => panic!("a backfill's progress on a live stream"),
            None => panic!("closed without telling the stream it fell behind"),
        }
    }
    assert_eq!(delivered, STREAM_BUFFER);
    let cursor = Cursor::decode(SECRET, &last_cursor, "agg-x").unwrap();
    assert_eq!(
        cursor.positions().map(|(_, next)| next).sum::<i64>(),
        STREAM_BUFFER as i64,
        "the cursor covers exactly what was delivered"
    );
    assert_eq!(s.hub.streams().streams(), 1, "the stalled stream was removed from the hub");
}

#[tokio::test]
async fn nothing_is_delivered_later_than_the_bound_after_a_revocation_at_1000_events_per_second() {
    use cardlink_events::consent::ConsentStatus;
    let s = setup(&[consent("c-x", "agg-x", &["acct-1"], &[Scope::Transactions])]).await;
    let mut stream = s.hub.register("agg-x", Filters::all(), &Cursor::new("agg-x"));

    // Receive and time every delivery; say when the first one arrived.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let receiver = tokio::spawn(async move {
        let mut times = Vec::new();
        let mut first = Some(first_tx);
        while let Ok(Some(Outgoing::Delivery { .. })) =
            tokio::time::timeout(Duration::from_secs(3), stream.rx.recv()).await
        {
            times.push(tokio::time::Instant::now());
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
        }
        times
    });

    // ~1,000 events/s for 3 s: ten every 10 ms.
    let producer = s.bus.producer().unwrap();
    let publisher = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for batch in 0..300u32 {
                tick.tick().await;
                let sends = (0..10).map(|i| {
                    let event = Event::Transaction(samples::transaction("iss-a", "acct-1", batch * 10 + i));
                    let producer = producer.clone();
                    async move { producer.publish(&event, None).await.unwrap() }
                });
                futures::future::join_all(sends).await;
            }
        })
    };

    // Revoke once the stream is flowing, a little into the run.
    tokio::time::timeout(WITHIN, first_rx).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut revoked = consent("c-x", "agg-x", &["acct-1"], &[Scope::Transactions]);
    revoked.status = ConsentStatus::Revoked;
    producer.publish_record(RecordType::ConsentEvent, "c-x", &revoked.event_id.to_string(), &revoked).await.unwrap();
    // RevokeConsent returns once Kafka has the revocation: from here the bound runs.
    let revoked_at = tokio::time::Instant::now();

    publisher.await.unwrap();
    let times = receiver.await.unwrap();
    assert!(
        times.iter().any(|t| *t < revoked_at),
        "the stream was delivering before the revocation ({} deliveries)",
        times.len()
    );
    let late: Vec<_> = times.iter().filter(|t| **t > revoked_at + REVOCATION_BOUND).collect();
    assert!(late.is_empty(), "{} deliveries more than {:?} after the revocation", late.len(), REVOCATION_BOUND);
}

/// Dispatches the first `n` records of the transaction topic through a hub of the same views with
/// no reader of its own, in one batch; returns the stream's registration and how many deliveries
/// it had been handed before the batch ended.
async fn in_one_batch(s: &Setup, n: usize) -> (cardlink_subscription::streams::Registration, usize) {
    let hub = Hub::new(s.hub.consents().clone(), s.hub.registry().clone(), Arc::from(SECRET));
    let mut stream = hub.register("agg-x", Filters::all(), &Cursor::new("agg-x"));
    let consumer = PolledConsumer::new(s.bus.config(), "one-batch").unwrap();
    tokio::task::spawn_blocking(move || {
        let partitions = consumer.watermarks(Topic::Transactions).unwrap();
        let from: Vec<_> =
            partitions.iter().map(|&(p, _, _)| (Topic::Transactions, p, cardlink_bus::StartAt::Beginning)).collect();
        consumer.assign(&from).unwrap();
        let mut batch = hub.batch();
        while batch.records() < n {
            if let Some(record) = consumer.poll(Duration::from_secs(1), "test") {
                batch.dispatch(&record.unwrap());
            }
        }
        let before_the_end = std::iter::from_fn(|| stream.rx.try_recv().ok()).count();
        drop(batch);
        (stream, before_the_end)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_queues_its_deliveries_when_it_ends_in_the_order_read() {
    let s = setup(&[consent("c-x", "agg-x", &["acct-1"], &[Scope::Transactions])]).await;
    let producer = s.bus.producer().unwrap();
    for n in 0..5 {
        producer.publish(&Event::Transaction(samples::transaction("iss-a", "acct-1", n)), None).await.unwrap();
    }
    let (mut stream, before_the_end) = in_one_batch(&s, 5).await;
    assert_eq!(before_the_end, 0, "nothing is queued while the batch holds the registry");
    let got: Vec<String> = take(&mut stream.rx, 5).await.iter().map(|(d, _)| summary(d).0).collect();
    assert_eq!(got, (0..5).map(|n| tx_id("agg-x", n)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_overflows_within_a_batch_gets_a_full_queue_then_is_told_it_fell_behind() {
    let s = setup(&[consent("c-x", "agg-x", &["acct-1"], &[Scope::Transactions])]).await;
    let producer = s.bus.producer().unwrap();
    let total = STREAM_BUFFER + 20;
    let events: Vec<Event> =
        (0..total).map(|n| Event::Transaction(samples::transaction("iss-a", "acct-1", n as u32))).collect();
    let sent = producer.publish_all(&events.iter().map(|e| (e, None)).collect::<Vec<_>>(), false).await;
    assert!(sent.iter().all(Result::is_ok));
    let (mut stream, _) = in_one_batch(&s, total).await;
    let got = take(&mut stream.rx, STREAM_BUFFER).await;
    assert_eq!(summary(&got[STREAM_BUFFER - 1].0).0, tx_id("agg-x", STREAM_BUFFER - 1), "in order, none skipped");
    match tokio::time::timeout(WITHIN, stream.rx.recv()).await.unwrap() {
        Some(Outgoing::FellBehind) => {}
        other => panic!("expected to be told it fell behind, got {other:?}"),
    }
    assert!(tokio::time::timeout(WITHIN, stream.rx.recv()).await.unwrap().is_none(), "and nothing after that");
}
