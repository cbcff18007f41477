//! One tenant cannot starve another of catch-up (issue 17, item 7): one aggregator's streams that
//! replay and stop reading hold neither every catch-up reader of the replica nor their own for
//! long, and an aggregator with nothing to replay is answered without reading the bus.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cardlink_api::v1;
use cardlink_api::v1::subscription_client::SubscriptionClient;
use cardlink_events::registry::Scope;
use cardlink_events::{Event, samples};
use cardlink_subscription::catch_up::MAX_CATCH_UP_READERS;
use cardlink_testkit::authorized;
use chrono::{TimeZone, Utc};
use common::{WITHIN, World};
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// Events of agg-a's account on the bus: far more than a non-reading stream absorbs (the
/// client's small flow-control window, the server's send buffer and the reader's queue).
const BACKLOG: u32 = 1_500;

fn consent(id: &str, aggregator: &str, account: &str) -> cardlink_events::consent::ConsentEvent {
    let granted = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap();
    samples::active_consent(
        id,
        "iss-a",
        aggregator,
        &[account],
        &[Scope::Transactions],
        granted,
        Utc::now() + chrono::TimeDelta::days(30),
    )
}

async fn world() -> World {
    let consents = [consent("c-a", "agg-a", "acct-1"), consent("c-b", "agg-b", "acct-9")];
    common::world(&["iss-a"], &["agg-a", "agg-b", "agg-c"], &consents).await
}

/// A client on its own connection whose flow-control windows are small, so that a stream it
/// does not read stops taking data early, as a stalled client's would.
async fn stingy_client(w: &World) -> SubscriptionClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", w.service.addr()))
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(64 * 1024)
        .connect()
        .await
        .unwrap();
    SubscriptionClient::new(channel)
}

fn from_earliest() -> v1::SubscribeRequest {
    v1::SubscribeRequest { start: Some(v1::subscribe_request::Start::FromEarliest(true)), ..Default::default() }
}

/// The first message with a delivery, and how long it took.
async fn first_delivery(stream: &mut Streaming<v1::SubscribeResponse>, within: Duration) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    loop {
        let message = tokio::time::timeout_at(started + within, stream.message()).await.ok()?.ok()??;
        if !message.deliveries.is_empty() {
            return Some(started.elapsed());
        }
    }
}

#[tokio::test]
async fn an_aggregator_whose_replays_stop_reading_cannot_hold_up_another_or_itself() {
    let w = world().await;
    let mut c = w.client().await;

    // agg-b is live, takes a delivery, and goes away with its cursor.
    let mut b = c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-b"))).await.unwrap().into_inner();
    common::next(&mut b).await; // caught up
    w.publish(&[Event::Transaction(samples::transaction("iss-a", "acct-9", 0))]).await;
    let cursor = loop {
        let m = common::next(&mut b).await;
        if !m.deliveries.is_empty() {
            break m.cursor;
        }
    };
    drop(b);

    // agg-a's backlog, and agg-b misses two events while away.
    let backlog: Vec<Event> =
        (0..BACKLOG).map(|n| Event::Transaction(samples::transaction("iss-a", "acct-1", n))).collect();
    for chunk in backlog.chunks(500) {
        w.publish(chunk).await;
    }
    w.publish(&[
        Event::Transaction(samples::transaction("iss-a", "acct-9", 1)),
        Event::Transaction(samples::transaction("iss-a", "acct-9", 2)),
    ])
    .await;

    // agg-a replays on as many streams as the replica has readers, and reads none of them.
    let mut stalled = Vec::new();
    for _ in 0..MAX_CATCH_UP_READERS {
        let mut client = stingy_client(&w).await;
        stalled.push(client.subscribe(authorized(from_earliest(), w.token("agg-a"))).await.unwrap().into_inner());
    }
    // Long enough for the first of them to be reading, fill what it can and stall.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // agg-b's resume starts within a second.
    let mut resumed =
        c.subscribe(authorized(common::start_after(&cursor), w.token("agg-b"))).await.unwrap().into_inner();
    let waited = first_delivery(&mut resumed, WITHIN).await;
    eprintln!("agg-b resumed after {waited:?}");
    assert!(
        waited.is_some_and(|d| d <= Duration::from_secs(1)),
        "agg-b's resume waited {waited:?} behind agg-a's stalled replays"
    );

    // agg-a's own readers are released by its stalled streams too: once each has had its turn
    // and given its reader up, a stream of agg-a that does read gets its replay going at once.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while w.service.catch_up_readers() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "stalled readers still hold their places");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reading = c.subscribe(authorized(from_earliest(), w.token("agg-a"))).await.unwrap().into_inner();
    let waited = first_delivery(&mut reading, WITHIN).await;
    eprintln!("agg-a reading stream started after {waited:?}");
    assert!(
        waited.is_some_and(|d| d <= Duration::from_secs(1)),
        "agg-a's reading stream waited {waited:?} behind its own stalled streams"
    );

    // The stalled streams lost nothing: one of them, read now, replays everything in order.
    let mut one = stalled.pop().unwrap();
    let mut got = Vec::new();
    while got.len() < BACKLOG as usize {
        let m = common::next(&mut one).await;
        for d in m.deliveries {
            if let Some(v1::delivery::Event::Transaction(t)) = d.event {
                got.push(t.issuer_transaction_id);
            }
        }
    }
    assert_eq!(got, common::txs("agg-a", 0..BACKLOG));
}

#[tokio::test]
async fn an_aggregator_with_nothing_to_replay_is_answered_without_reading_the_bus() {
    let w = world().await;
    let backlog: Vec<Event> =
        (0..200).map(|n| Event::Transaction(samples::transaction("iss-a", "acct-1", n))).collect();
    w.publish(&backlog).await;
    let mut c = w.client().await;
    let read_before = w.service.catch_up_records_read();
    let mut stream = c.subscribe(authorized(from_earliest(), w.token("agg-c"))).await.unwrap().into_inner();
    let first = common::next(&mut stream).await;
    assert!(first.heartbeat.as_ref().is_some_and(|h| h.caught_up), "{first:?}");
    assert_eq!(w.service.catch_up_records_read(), read_before, "agg-c has no consent: nothing to read");
    // Its cursor is at the live tail: a resume from it reads nothing either.
    drop(stream);
    let mut resumed =
        c.subscribe(authorized(common::start_after(&first.cursor), w.token("agg-c"))).await.unwrap().into_inner();
    assert!(common::next(&mut resumed).await.heartbeat.as_ref().is_some_and(|h| h.caught_up));
    assert_eq!(w.service.catch_up_records_read(), read_before);

    // agg-a, which has consents, does read.
    let mut a = c.subscribe(authorized(from_earliest(), w.token("agg-a"))).await.unwrap().into_inner();
    assert!(first_delivery(&mut a, WITHIN).await.is_some());
    assert!(w.service.catch_up_records_read() > read_before);
}
