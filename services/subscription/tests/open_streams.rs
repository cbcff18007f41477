//! What holds for a call holds for a stream that is already open (issue 17, items 1 and 2): once
//! an issuer suspends its connection with an aggregator, or the operator suspends the aggregator,
//! nothing more is delivered past the revocation bound, and a suspended aggregator's stream ends
//! and it cannot subscribe again; a revoked credential ends its streams; every stream ends at its
//! maximum age and resumes from its cursor.

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

/// What a stream brought within a window: transactions (issuer ids), the last cursor, and the
/// status it ended with, if it did.
#[derive(Debug, Default)]
struct Seen {
    transactions: Vec<String>,
    consent_changes: usize,
    cursor: String,
    ended: Option<tonic::Status>,
}

/// Reads `stream` for up to `window`, until `enough` transactions arrived or it ended.
async fn seen(stream: &mut Streaming<v1::SubscribeResponse>, window: Duration, enough: usize) -> Seen {
    let mut out = Seen::default();
    let deadline = tokio::time::Instant::now() + window;
    while out.transactions.len() < enough {
        let Ok(message) = tokio::time::timeout_at(deadline, stream.message()).await else { break };
        match message {
            Ok(Some(message)) => {
                out.cursor = message.cursor;
                for d in message.deliveries {
                    match d.event {
                        Some(v1::delivery::Event::Transaction(t)) => out.transactions.push(t.issuer_transaction_id),
                        Some(v1::delivery::Event::ConsentChange(_)) => out.consent_changes += 1,
                        _ => {}
                    }
                }
            }
            Ok(None) => break,
            Err(status) => {
                out.ended = Some(status);
                break;
            }
        }
    }
    out
}

async fn delivered(stream: &mut Streaming<v1::SubscribeResponse>, window: Duration, enough: usize) -> Vec<String> {
    seen(stream, window, enough).await.transactions
}

/// The stream ends within the revocation bound (plus a check interval and the wire) with `code`
/// and `reason`, having delivered nothing more.
async fn ends_with(stream: &mut Streaming<v1::SubscribeResponse>, code: Code, expected: &str) {
    let started = tokio::time::Instant::now();
    let end = seen(stream, Duration::from_secs(10), 1).await;
    assert!(end.transactions.is_empty(), "delivered before the end: {:?}", end.transactions);
    let status = end.ended.expect("the stream ended");
    assert_eq!((status.code(), reason(&status).as_deref()), (code, Some(expected)), "{status:?}");
    assert!(started.elapsed() < REVOCATION_BOUND * 2, "ended after {:?}", started.elapsed());
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
    assert_eq!(delivered(&mut stream, WITHIN, 1).await, [common::tx("agg-x", 1)]);

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
    assert_eq!(delivered(&mut stream, WITHIN, 1).await, [common::tx("agg-x", 3)]);
}

#[tokio::test]
async fn a_suspended_aggregators_stream_ends_and_it_cannot_subscribe_again() {
    let w = world().await;
    let mut stream = subscribe(&w).await;
    publish(&w, 1).await;
    assert_eq!(delivered(&mut stream, WITHIN, 1).await, [common::tx("agg-x", 1)]);

    let mut r = registry_client(&w.registry).await.unwrap();
    let suspend = v1::SetAggregatorStatusRequest {
        aggregator_id: "agg-x".into(),
        status: v1::AggregatorStatus::Suspended as i32,
    };
    r.set_aggregator_status(authorized(suspend, &w.operator)).await.unwrap();
    // Its open stream ends, saying why.
    ends_with(&mut stream, Code::PermissionDenied, "PARTICIPANT_SUSPENDED").await;

    let mut c = w.client().await;
    let e = c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::PermissionDenied, Some("PARTICIPANT_SUSPENDED")));
}

#[tokio::test]
async fn a_revoked_credential_ends_its_open_streams() {
    let w = world().await;
    let mut stream = subscribe(&w).await;
    publish(&w, 1).await;
    assert_eq!(delivered(&mut stream, WITHIN, 1).await, [common::tx("agg-x", 1)]);

    let mut r = registry_client(&w.registry).await.unwrap();
    let revoke = v1::RevokeCredentialRequest { credential_id: w.credential_ids["agg-x"].clone() };
    r.revoke_credential(authorized(revoke, &w.operator)).await.unwrap();
    ends_with(&mut stream, Code::Unauthenticated, "CREDENTIAL_REVOKED").await;
}

#[tokio::test]
async fn a_stream_ends_at_its_maximum_age_and_resumes_from_its_cursor() {
    let max_age = Duration::from_secs(3);
    let w = common::world_with(&["iss-a"], &["agg-x"], &[common::transactions_consent()], max_age).await;
    let mut stream = subscribe(&w).await;
    publish(&w, 1).await;
    let first = seen(&mut stream, WITHIN, 1).await;
    assert_eq!(first.transactions, [common::tx("agg-x", 1)]);
    let end = seen(&mut stream, max_age * 2, 1).await;
    let status = end.ended.expect("the stream ended at its maximum age");
    assert_eq!((status.code(), reason(&status).as_deref()), (Code::Unavailable, Some("STREAM_MAX_AGE")));

    // The client authenticates again and resumes: what happened meanwhile, nothing twice.
    publish(&w, 2).await;
    let mut c = w.client().await;
    let mut resumed =
        c.subscribe(authorized(common::start_after(&first.cursor), w.token("agg-x"))).await.unwrap().into_inner();
    assert_eq!(delivered(&mut resumed, WITHIN, 1).await, [common::tx("agg-x", 2)]);
}

/// Deliveries the service has handed to agg-x's streams so far (its live view's count).
async fn handed_out(w: &World) -> u64 {
    let url = format!("http://{}/live.json", w.service.http_addr().unwrap());
    let live: serde_json::Value = cardlink_testkit::login::Browser::new()
        .get(&url)
        .await
        .map(|p| serde_json::from_str(&p.body).unwrap())
        .unwrap();
    live["deliveries"]["agg-x"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_slow_client_gets_nothing_of_a_consent_revoked_before_it_was_sent() {
    let w = world().await;
    // A client that does not read: HTTP/2 lets the service hand over what the client's window
    // and the server's send buffer hold; the rest waits in the service's queue.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", w.service.addr()))
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    let mut c = v1::subscription_client::SubscriptionClient::new(channel);
    let mut stream =
        c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap().into_inner();
    common::next(&mut stream).await;

    let published = 600;
    let events: Vec<Event> = (0..published)
        .map(|n| {
            let mut t = samples::transaction("iss-a", "acct-1", n);
            t.occurred_at = Utc::now();
            Event::Transaction(t)
        })
        .collect();
    w.publish(&events).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut revoked = common::transactions_consent();
    revoked.status = cardlink_events::consent::ConsentStatus::Revoked;
    revoked.event_id = cardlink_events::EventId::random();
    w.publish_consent(&revoked).await;
    tokio::time::sleep(REVOCATION_BOUND + Duration::from_millis(500)).await;
    // Sent (handed to the transport) up to the revocation bound: the client may still receive
    // these. The rest is still queued in the service.
    let sent_before = handed_out(&w).await;
    assert!(sent_before < published.into(), "the transport took everything: publish more");

    // The client reads at last, which lets the service send again: what was sent in time,
    // never what was still queued.
    let got = seen(&mut stream, Duration::from_secs(5), usize::try_from(published).unwrap()).await;
    let received = u64::try_from(got.transactions.len()).unwrap();
    assert!(
        received <= sent_before,
        "{received} deliveries reached a slow client, {sent_before} of them sent before the revocation bound"
    );
    // Only the notice that the consent was revoked went out after the bound.
    assert_eq!(got.consent_changes, 1, "the revocation notice");
    assert_eq!(handed_out(&w).await, sent_before + 1, "nothing of the revoked consent was sent after the bound");
}
