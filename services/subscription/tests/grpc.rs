//! The Subscription gRPC service end to end: registry credentials, consents on the bus, events
//! published, streams over real gRPC, named positions.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cardlink_api::status::reason;
use cardlink_api::v1;
use cardlink_api::v1::subscription_client::SubscriptionClient;
use cardlink_events::registry::Scope;
use cardlink_events::{Event, RecordType, samples};
use cardlink_subscription::server::{RunningSubscription, SubscriptionConfig};
use cardlink_testkit::{TestBus, authorized, register_aggregator, register_issuer, registry_client};
use chrono::{TimeZone, Utc};
use tonic::{Code, Streaming};

const WITHIN: Duration = Duration::from_secs(30);

struct World {
    bus: TestBus,
    _registry: cardlink_registry::server::RunningRegistry,
    service: RunningSubscription,
    issuer: String,
    agg_x: String,
    agg_y: String,
}

async fn world() -> World {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut r = registry_client(&registry).await.unwrap();
    let issuer = register_issuer(&mut r, &operator, "iss-a", 1).await.unwrap().token;
    let agg_x = register_aggregator(&mut r, &operator, "agg-x").await.unwrap().token;
    let agg_y = register_aggregator(&mut r, &operator, "agg-y").await.unwrap().token;
    let granted = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap();
    let consent = samples::active_consent(
        "c-x",
        "iss-a",
        "agg-x",
        &["acct-1"],
        &[Scope::Transactions],
        granted,
        Utc::now() + chrono::TimeDelta::days(30),
    );
    bus.producer().unwrap().publish_record(RecordType::ConsentEvent, "c-x", "c-x", &consent).await.unwrap();
    let config = SubscriptionConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        trusted_keys: vec![registry.public_key().clone()],
        secret: Arc::from(&b"subscription-secret-0123456789ab"[..]),
    };
    let service = cardlink_subscription::server::start(bus.config(), config).await.unwrap();
    // The service knows the aggregators once its registry view has read them.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !registry.view().read(|v| v.aggregator("agg-y").is_some()) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    World { bus, _registry: registry, service, issuer, agg_x, agg_y }
}

async fn client(w: &World) -> SubscriptionClient<tonic::transport::Channel> {
    SubscriptionClient::connect(format!("http://{}", w.service.addr())).await.unwrap()
}

/// Reads messages until `n` deliveries arrived; returns (issuer transaction id, cursor) pairs.
async fn deliveries(stream: &mut Streaming<v1::SubscribeResponse>, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let message = tokio::time::timeout(WITHIN, stream.message()).await.expect("in time").unwrap().expect("open");
        for d in message.deliveries {
            if let Some(v1::delivery::Event::Transaction(t)) = d.event {
                out.push((t.issuer_transaction_id, message.cursor.clone()));
            }
        }
    }
    out
}

async fn publish(w: &World, account: &str, n: u32) {
    w.bus
        .producer()
        .unwrap()
        .publish(&Event::Transaction(samples::transaction("iss-a", account, n)), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stream_delivers_entitled_events_and_resumes_from_a_named_position() {
    let w = world().await;
    let mut c = client(&w).await;
    let mut stream = c.subscribe(authorized(v1::SubscribeRequest::default(), &w.agg_x)).await.unwrap().into_inner();
    // The first message says the stream is live.
    let first = tokio::time::timeout(WITHIN, stream.message()).await.unwrap().unwrap().unwrap();
    assert!(first.heartbeat.is_some_and(|h| h.caught_up));

    for n in 0..3 {
        publish(&w, "acct-1", n).await;
    }
    publish(&w, "acct-2", 99).await; // not consented
    let got = deliveries(&mut stream, 3).await;
    assert_eq!(got.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["tx-0", "tx-1", "tx-2"]);

    // Acknowledge the second, disconnect, and miss two more events.
    c.acknowledge(authorized(
        v1::AcknowledgeRequest { position_name: "main".into(), cursor: got[1].1.clone() },
        &w.agg_x,
    ))
    .await
    .unwrap();
    drop(stream);
    for n in 3..5 {
        publish(&w, "acct-1", n).await;
    }
    let request = v1::SubscribeRequest {
        start: Some(v1::subscribe_request::Start::PositionName("main".into())),
        ..Default::default()
    };
    let mut resumed = c.subscribe(authorized(request, &w.agg_x)).await.unwrap().into_inner();
    let again = deliveries(&mut resumed, 3).await;
    assert_eq!(again.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["tx-2", "tx-3", "tx-4"]);
}

#[tokio::test]
async fn cursors_and_streams_are_each_aggregators_own() {
    let w = world().await;
    let mut c = client(&w).await;
    let mut x = c.subscribe(authorized(v1::SubscribeRequest::default(), &w.agg_x)).await.unwrap().into_inner();
    let _ = tokio::time::timeout(WITHIN, x.message()).await.unwrap();
    publish(&w, "acct-1", 1).await;
    let cursor = deliveries(&mut x, 1).await.remove(0).1;

    // agg-y cannot resume agg-x's cursor, nor an edited one; an issuer cannot subscribe.
    let with_cursor = |cursor: String| v1::SubscribeRequest {
        start: Some(v1::subscribe_request::Start::Cursor(cursor)),
        ..Default::default()
    };
    let e = c.subscribe(authorized(with_cursor(cursor.clone()), &w.agg_y)).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::InvalidArgument, Some("CURSOR_NOT_YOURS")));
    let mut edited = cursor.clone().into_bytes();
    let i = edited.len() - 2;
    edited[i] = if edited[i] == b'A' { b'B' } else { b'A' };
    let e = c.subscribe(authorized(with_cursor(String::from_utf8(edited).unwrap()), &w.agg_x)).await.unwrap_err();
    assert_eq!(reason(&e).as_deref(), Some("CURSOR_TAMPERED"));
    let e = c.subscribe(authorized(v1::SubscribeRequest::default(), &w.issuer)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c.subscribe(v1::SubscribeRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // agg-y has no consent: its stream stays quiet while agg-x's gets the event.
    let mut y = c.subscribe(authorized(v1::SubscribeRequest::default(), &w.agg_y)).await.unwrap().into_inner();
    let _ = tokio::time::timeout(WITHIN, y.message()).await.unwrap();
    publish(&w, "acct-1", 2).await;
    assert_eq!(deliveries(&mut x, 1).await[0].0, "tx-2");
    if let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_millis(800), y.message()).await {
        assert!(m.deliveries.is_empty(), "agg-y received {m:?}");
    }
}

#[tokio::test]
async fn shutting_down_tells_streams_to_reconnect() {
    let w = world().await;
    let mut c = client(&w).await;
    let mut x = c.subscribe(authorized(v1::SubscribeRequest::default(), &w.agg_x)).await.unwrap().into_inner();
    let _ = tokio::time::timeout(WITHIN, x.message()).await.unwrap();
    let World { service, .. } = w;
    let stopping = tokio::spawn(service.shutdown());
    let end = tokio::time::timeout(WITHIN, async {
        loop {
            match x.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .unwrap();
    let status = end.expect("the stream ends with a status");
    assert_eq!((status.code(), reason(&status).as_deref()), (Code::Unavailable, Some("SERVER_SHUTTING_DOWN")));
    stopping.await.unwrap();
}

#[tokio::test]
async fn consent_changes_arrive_in_the_stream() {
    let w = world().await;
    let mut c = client(&w).await;
    let mut x = c.subscribe(authorized(v1::SubscribeRequest::default(), &w.agg_x)).await.unwrap().into_inner();
    let _ = tokio::time::timeout(WITHIN, x.message()).await.unwrap();

    let granted = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap();
    let mut revoked =
        samples::active_consent("c-x", "iss-a", "agg-x", &["acct-1"], &[Scope::Transactions], granted, Utc::now());
    revoked.status = cardlink_events::consent::ConsentStatus::Revoked;
    w.bus.producer().unwrap().publish_record(RecordType::ConsentEvent, "c-x", "c-x-revoked", &revoked).await.unwrap();

    let change = tokio::time::timeout(WITHIN, async {
        loop {
            let m = x.message().await.unwrap().unwrap();
            if let Some(v1::delivery::Event::ConsentChange(change)) =
                m.deliveries.into_iter().next().and_then(|d| d.event)
            {
                return change.consent.unwrap();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!((change.consent_id.as_str(), change.status), ("c-x", v1::ConsentStatus::Revoked as i32));
    assert!(change.account_refs[0].starts_with("acc_"), "the aggregator sees its pseudonyms");
}
