//! The Subscription gRPC service end to end: registry credentials, consents on the bus, events
//! published, streams over real gRPC, named positions.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cardlink_api::status::reason;
use cardlink_api::v1;
use cardlink_events::registry::Scope;
use cardlink_events::{Event, samples};
use cardlink_testkit::authorized;
use chrono::{TimeZone, Utc};
use common::{WITHIN, World, start_after};
use tonic::{Code, Streaming};

async fn world() -> World {
    let consent = common::transactions_consent();
    common::world(&["iss-a"], &["agg-x", "agg-y"], &[consent]).await
}

/// Reads messages until `n` deliveries arrived; returns (delivered transaction id, cursor) pairs.
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
    w.publish(&[Event::Transaction(samples::transaction("iss-a", account, n))]).await;
}

#[tokio::test]
async fn a_stream_delivers_entitled_events_and_resumes_from_a_named_position() {
    let w = world().await;
    let mut c = w.client().await;
    let mut stream =
        c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap().into_inner();
    // The first message says the stream is live.
    let first = tokio::time::timeout(WITHIN, stream.message()).await.unwrap().unwrap().unwrap();
    assert!(first.heartbeat.as_ref().is_some_and(|h| h.caught_up));

    for n in 0..3 {
        publish(&w, "acct-1", n).await;
    }
    publish(&w, "acct-2", 99).await; // not consented
    let got = deliveries(&mut stream, 3).await;
    assert_eq!(got.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), common::txs("agg-x", 0..3));

    // Acknowledge the second, disconnect, and miss two more events.
    c.acknowledge(authorized(
        v1::AcknowledgeRequest { position_name: "main".into(), cursor: got[1].1.clone() },
        w.token("agg-x"),
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
    let mut resumed = c.subscribe(authorized(request, w.token("agg-x"))).await.unwrap().into_inner();
    let again = deliveries(&mut resumed, 3).await;
    assert_eq!(again.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), common::txs("agg-x", 2..5));
}

#[tokio::test]
async fn cursors_and_streams_are_each_aggregators_own() {
    let w = world().await;
    let mut c = w.client().await;
    let mut x = c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap().into_inner();
    let _ = tokio::time::timeout(WITHIN, x.message()).await.unwrap();
    publish(&w, "acct-1", 1).await;
    let cursor = deliveries(&mut x, 1).await.remove(0).1;

    // agg-y cannot resume agg-x's cursor, nor an edited one; an issuer cannot subscribe.
    let e = c.subscribe(authorized(start_after(&cursor), w.token("agg-y"))).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::InvalidArgument, Some("CURSOR_NOT_YOURS")));
    let mut edited = cursor.clone().into_bytes();
    let i = edited.len() - 2;
    edited[i] = if edited[i] == b'A' { b'B' } else { b'A' };
    let e =
        c.subscribe(authorized(start_after(&String::from_utf8(edited).unwrap()), w.token("agg-x"))).await.unwrap_err();
    assert_eq!(reason(&e).as_deref(), Some("CURSOR_TAMPERED"));
    let e = c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("iss-a"))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c.subscribe(v1::SubscribeRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // agg-y has no consent: its stream stays quiet while agg-x's gets the event.
    let mut y = c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-y"))).await.unwrap().into_inner();
    let _ = tokio::time::timeout(WITHIN, y.message()).await.unwrap();
    publish(&w, "acct-1", 2).await;
    assert_eq!(deliveries(&mut x, 1).await[0].0, common::tx("agg-x", 2));
    if let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_millis(800), y.message()).await {
        assert!(m.deliveries.is_empty(), "agg-y received {m:?}");
    }
}

#[tokio::test]
async fn shutting_down_tells_streams_to_reconnect() {
    let w = world().await;
    let mut c = w.client().await;
    let mut x = c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap().into_inner();
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
    let mut c = w.client().await;
    let mut x = c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap().into_inner();
    let _ = tokio::time::timeout(WITHIN, x.message()).await.unwrap();

    let granted = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap();
    let mut revoked =
        samples::active_consent("c-x", "iss-a", "agg-x", &["acct-1"], &[Scope::Transactions], granted, Utc::now());
    revoked.status = cardlink_events::consent::ConsentStatus::Revoked;
    w.publish_consent(&revoked).await;

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

#[tokio::test]
async fn malformed_requests_are_refused_with_a_specific_reason() {
    let w = world().await;
    let mut c = w.client().await;
    let agg = w.token("agg-x");
    // An unknown kind would otherwise widen the filter to every kind.
    let unknown_kind = v1::SubscribeRequest { kinds: vec![42], ..Default::default() };
    let e = c.subscribe(authorized(unknown_kind, agg)).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::InvalidArgument, Some("UNKNOWN_EVENT_KIND")));
    let unspecified = v1::SubscribeRequest { kinds: vec![0], ..Default::default() };
    let e = c.subscribe(authorized(unspecified, agg)).await.unwrap_err();
    assert_eq!(reason(&e).as_deref(), Some("UNKNOWN_EVENT_KIND"));

    let many =
        v1::SubscribeRequest { issuer_ids: (0..101).map(|i| format!("iss-{i}")).collect(), ..Default::default() };
    let e = c.subscribe(authorized(many, agg)).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::InvalidArgument, Some("TOO_MANY_ISSUER_FILTERS")));

    let oversized = start_after(&"A".repeat(cardlink_subscription::grpc::MAX_REQUEST_BYTES + 1));
    let e = c.subscribe(authorized(oversized, agg)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

    let garbage = start_after("not-a-cursor");
    let e = c.subscribe(authorized(garbage, agg)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // None of that disturbed the service: a good request still streams.
    let mut stream = c.subscribe(authorized(v1::SubscribeRequest::default(), agg)).await.unwrap().into_inner();
    assert!(common::next(&mut stream).await.heartbeat.is_some());
}

#[tokio::test]
async fn streams_per_aggregator_are_bounded_and_a_closed_stream_frees_its_slot_at_once() {
    use cardlink_subscription::grpc::MAX_STREAMS_PER_AGGREGATOR;
    let w = world().await;
    let mut c = w.client().await;
    let agg = w.token("agg-x");
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS_PER_AGGREGATOR {
        let mut s = c.subscribe(authorized(v1::SubscribeRequest::default(), agg)).await.unwrap().into_inner();
        common::next(&mut s).await;
        open.push(s);
    }
    let e = c.subscribe(authorized(v1::SubscribeRequest::default(), agg)).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::ResourceExhausted, Some("TOO_MANY_STREAMS")));
    // Another aggregator is not affected.
    c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-y"))).await.unwrap();

    // With no traffic at all, a dropped stream still gives its slot back well before a heartbeat.
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while w.service.hub().streams().streams_of("agg-x") >= MAX_STREAMS_PER_AGGREGATOR {
        assert!(tokio::time::Instant::now() < deadline, "the closed stream still holds its slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.subscribe(authorized(v1::SubscribeRequest::default(), agg)).await.unwrap();
}

#[tokio::test]
async fn a_cursor_the_bus_cannot_honour_gets_out_of_range_never_a_silent_skip() {
    use cardlink_subscription::cursor::{Cursor, EventTopic};
    let w = world().await;
    let mut c = w.client().await;
    publish(&w, "acct-1", 1).await;
    // A genuine cursor (signed with the service's key) from a bus whose partitions ran further:
    // e.g. the topics were recreated. Resuming would wait for offsets to grow back, skipping
    // every event until then.
    let mut ahead = Cursor::new("agg-x");
    ahead.advance(EventTopic::Transactions, 0, 1_000_000);
    let request = start_after(&ahead.encode(common::SECRET));
    let mut stream = c.subscribe(authorized(request, w.token("agg-x"))).await.unwrap().into_inner();
    let status = tokio::time::timeout(WITHIN, async {
        loop {
            match stream.message().await {
                Ok(Some(m)) => assert!(m.deliveries.is_empty(), "delivered {m:?} from an impossible cursor"),
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!((status.code(), reason(&status).as_deref()), (Code::OutOfRange, Some("CURSOR_OUT_OF_RANGE")));
    assert!(status.message().contains("earliest"), "{}", status.message());
}

#[tokio::test]
async fn health_and_reflection_are_served_and_readiness_drops_at_shutdown() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let w = world().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", w.service.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = |service: &str| {
        let mut health = health.clone();
        let request = HealthCheckRequest { service: service.into() };
        async move { health.check(request).await.map(|r| r.into_inner().status) }
    };
    let deadline = tokio::time::Instant::now() + WITHIN;
    while status("").await.ok() != Some(ServingStatus::Serving as i32) {
        assert!(tokio::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(cardlink_serving::LIVENESS).await.unwrap(), ServingStatus::Serving as i32);

    // Reflection lists the service, so grpcurl and friends work without the proto files.
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter([ask])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"cardlink.v1.Subscription".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
    // The same through v1alpha, the only version many tools (and Python's grpcio-reflection) speak.
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
        let ask = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(AlphaRequest::ListServices(String::new())),
        };
        let mut alpha = Alpha::new(channel.clone());
        let mut answers = alpha.server_reflection_info(tokio_stream::iter([ask])).await.unwrap().into_inner();
        let Some(AlphaResponse::ListServicesResponse(list)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("not a service list (v1alpha)")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"cardlink.v1.Subscription".to_owned()), "v1alpha: {names:?}");
    }

    // While streams drain at shutdown, probes say not ready, then not live.
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    let World { service, .. } = w;
    let stopping = tokio::spawn(service.shutdown());
    let went_down = tokio::time::timeout(WITHIN, async {
        while let Ok(Some(update)) = watch.message().await {
            if update.status == ServingStatus::NotServing as i32 {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(went_down, "readiness never reported NOT_SERVING");
    drop((watch, health, reflection));
    stopping.await.unwrap();
}

#[tokio::test]
async fn catch_up_readers_are_bounded_and_the_others_wait_their_turn() {
    use cardlink_subscription::catch_up::{MAX_CATCH_UP_READERS, MAX_CATCH_UP_READERS_PER_AGGREGATOR};
    // Enough aggregators, each replaying on more streams than it may read with at once, to ask
    // for more readers than the replica has.
    let aggregators = ["agg-1", "agg-2", "agg-3", "agg-4", "agg-5"];
    assert!(aggregators.len() * MAX_CATCH_UP_READERS_PER_AGGREGATOR > MAX_CATCH_UP_READERS);
    let granted = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 1, 1, 0, 0, 0).single().unwrap();
    let consents: Vec<_> = aggregators
        .iter()
        .map(|a| {
            samples::active_consent(
                &format!("c-{a}"),
                "iss-a",
                a,
                &["acct-1"],
                &[cardlink_events::registry::Scope::Transactions],
                granted,
                chrono::Utc::now() + chrono::TimeDelta::days(30),
            )
        })
        .collect();
    let w = common::world(&["iss-a"], &aggregators, &consents).await;
    const EVENTS: u32 = 1_000;
    let events: Vec<Event> =
        (0..EVENTS).map(|n| Event::Transaction(samples::transaction("iss-a", "acct-1", n))).collect();
    w.publish(&events).await;

    // A small HTTP/2 window, so a stream that is not read holds its reader instead of the
    // transport swallowing the whole backlog.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", w.service.addr()))
        .unwrap()
        .initial_stream_window_size(Some(8 * 1024))
        .initial_connection_window_size(Some(64 * 1024))
        .connect()
        .await
        .unwrap();
    let mut c = v1::subscription_client::SubscriptionClient::new(channel);
    let earliest =
        || v1::SubscribeRequest { start: Some(v1::subscribe_request::Start::FromEarliest(true)), ..Default::default() };
    let mut open = Vec::new();
    for aggregator in aggregators {
        for _ in 0..MAX_CATCH_UP_READERS_PER_AGGREGATOR + 1 {
            open.push(c.subscribe(authorized(earliest(), w.token(aggregator))).await.unwrap().into_inner());
        }
    }
    // Watch the number of readers: it reaches the bound and never passes it.
    let mut most = 0;
    for _ in 0..100 {
        most = most.max(w.service.catch_up_readers());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(most, MAX_CATCH_UP_READERS, "readers at most: {most}");

    // Once the clients read, every stream gets the whole backlog, in turn.
    let reads = open.iter_mut().map(|s| async move { deliveries(s, EVENTS as usize).await.len() });
    let counts = futures::future::join_all(reads).await;
    assert!(counts.iter().all(|n| *n == EVENTS as usize), "{counts:?}");
}

#[tokio::test]
async fn the_live_view_counts_events_in_deliveries_and_streams() {
    let w = world().await;
    let pages = w.service.http_addr().unwrap();
    let mut c = w.client().await;
    let mut stream =
        c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap().into_inner();
    assert!(common::next(&mut stream).await.heartbeat.as_ref().is_some_and(|h| h.caught_up));
    publish(&w, "acct-1", 1).await;
    publish(&w, "acct-2", 2).await; // read from the bus, delivered to nobody
    let delivered = loop {
        let message = common::next(&mut stream).await;
        if let Some(d) = message.deliveries.into_iter().next() {
            break d;
        }
    };
    // Each delivery says when its event reached the bus (what publish-to-deliver latency is
    // measured from).
    let published = delivered.published_at.expect("published_at is set").seconds;
    assert!((Utc::now().timestamp() - published).abs() < 60, "published at {published}");

    let deadline = tokio::time::Instant::now() + WITHIN;
    let live = loop {
        let (status, _, body) = cardlink_testkit::http(pages, "GET", "/live.json", None).await.unwrap();
        assert_eq!(status, 200);
        let live: serde_json::Value = serde_json::from_str(&body).unwrap();
        if live["events_in"]["iss-a"] == 2 {
            break live;
        }
        assert!(tokio::time::Instant::now() < deadline, "{live}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(live["deliveries"]["agg-x"], 1, "{live}");
    assert_eq!(live["streams"]["agg-x"], 1, "{live}");
    assert!(live["streams"].get("agg-y").is_none(), "{live}");
    let (status, _, page) = cardlink_testkit::http(pages, "GET", "/live", None).await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("id=\"events-in\"") && page.contains("/live.json"), "{page}");
}
