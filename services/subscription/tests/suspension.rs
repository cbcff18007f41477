//! Suspension is enforced on open streams: once an issuer suspends its connection with an
//! aggregator, or the operator suspends the aggregator, nothing more is delivered past the
//! revocation bound, and a suspended aggregator cannot subscribe again (issue 17, item 1).

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cardlink_api::status::reason;
use cardlink_api::v1;
use cardlink_events::{Event, samples};
use cardlink_subscription::dispatch::REVOCATION_BOUND;
use cardlink_testkit::{authorized, registry_client};
use chrono::Utc;
use common::{WITHIN, World};
use tonic::{Code, Streaming};

async fn world() -> World {
    common::world(&["iss-a"], &["agg-x"], &[common::transactions_consent()]).await
}

/// A transaction of acct-1 happening now (inside the consent).
async fn publish(w: &World, n: u32) {
    let mut t = samples::transaction("iss-a", "acct-1", n);
    t.occurred_at = Utc::now();
    w.publish(&[Event::Transaction(t)]).await;
}

/// The issuer transaction ids delivered on `stream` within `window` (at most `enough`).
async fn delivered(stream: &mut Streaming<v1::SubscribeResponse>, window: Duration, enough: usize) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while out.len() < enough {
        let Ok(message) = tokio::time::timeout_at(deadline, stream.message()).await else { break };
        let Some(message) = message.unwrap() else { break };
        for d in message.deliveries {
            if let Some(v1::delivery::Event::Transaction(t)) = d.event {
                out.push(t.issuer_transaction_id);
            }
        }
    }
    out
}

async fn subscribe(w: &World) -> Streaming<v1::SubscribeResponse> {
    let mut c = w.client().await;
    let mut stream =
        c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap().into_inner();
    common::next(&mut stream).await;
    stream
}

#[tokio::test]
async fn a_suspended_connection_delivers_nothing_more_until_it_is_enabled_again() {
    let w = world().await;
    let mut stream = subscribe(&w).await;
    publish(&w, 1).await;
    assert_eq!(delivered(&mut stream, WITHIN, 1).await, ["tx-1"]);

    let mut r = registry_client(&w.registry).await.unwrap();
    let suspend = v1::SuspendConnectionRequest {
        issuer_id: "iss-a".into(),
        aggregator_id: "agg-x".into(),
        reason: "contract review".into(),
    };
    r.suspend_connection(authorized(suspend, w.token("iss-a"))).await.unwrap();
    tokio::time::sleep(REVOCATION_BOUND + Duration::from_millis(200)).await;
    publish(&w, 2).await;
    let after = delivered(&mut stream, Duration::from_secs(3), 1).await;
    assert!(after.is_empty(), "delivered on a suspended connection: {after:?}");

    // Enabled again: what happens from now on is delivered (the consent still stands).
    common::reconnect(&w, "iss-a", "agg-x").await;
    tokio::time::sleep(REVOCATION_BOUND + Duration::from_millis(200)).await;
    publish(&w, 3).await;
    assert_eq!(delivered(&mut stream, WITHIN, 1).await, ["tx-3"]);
}

#[tokio::test]
async fn a_suspended_aggregator_receives_nothing_more_and_cannot_subscribe() {
    let w = world().await;
    let mut stream = subscribe(&w).await;
    publish(&w, 1).await;
    assert_eq!(delivered(&mut stream, WITHIN, 1).await, ["tx-1"]);

    let mut r = registry_client(&w.registry).await.unwrap();
    let suspend = v1::SetAggregatorStatusRequest {
        aggregator_id: "agg-x".into(),
        status: v1::AggregatorStatus::Suspended as i32,
    };
    r.set_aggregator_status(authorized(suspend, &w.operator)).await.unwrap();
    tokio::time::sleep(REVOCATION_BOUND + Duration::from_millis(200)).await;
    publish(&w, 2).await;
    let after = delivered(&mut stream, Duration::from_secs(3), 1).await;
    assert!(after.is_empty(), "delivered to a suspended aggregator: {after:?}");

    let mut c = w.client().await;
    let e = c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::PermissionDenied, Some("PARTICIPANT_SUSPENDED")));
}
