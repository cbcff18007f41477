//! Records this release cannot decode are never silently skipped (issue 17, item 11): on an event
//! topic the record is dead-lettered on the audit topic and delivery goes on around it (and it can
//! be redelivered once readable); on the consent topic the view stops there and nothing more is
//! delivered on it (fail closed). The records are written straight to the topics, not through
//! ingest.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cardlink_api::v1;
use cardlink_bus::Topic;
use cardlink_events::{AuditEvent, Event, RecordType, samples};
use cardlink_testkit::authorized;
use common::{WITHIN, World};
use tonic::Streaming;

async fn world() -> World {
    common::world(&["iss-a"], &["agg-x"], &[common::transactions_consent()]).await
}

/// A header naming a schema no release here knows, over some body.
fn newer_schema() -> Vec<u8> {
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&[0xAB; 8]);
    bytes.extend_from_slice(b"a future body");
    bytes
}

/// Transactions delivered within `window` (delivered ids).
async fn transactions(stream: &mut Streaming<v1::SubscribeResponse>, n: usize, window: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while out.len() < n {
        let Ok(message) = tokio::time::timeout_at(deadline, stream.message()).await else { break };
        for d in message.unwrap().expect("open").deliveries {
            if let Some(v1::delivery::Event::Transaction(t)) = d.event {
                out.push(t.issuer_transaction_id);
            }
        }
    }
    out
}

#[tokio::test]
async fn an_unreadable_event_is_dead_lettered_delivery_goes_on_and_it_can_be_redelivered() {
    let w = world().await;
    let mut c = w.client().await;
    let mut stream =
        c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap().into_inner();
    common::next(&mut stream).await; // live

    w.publish(&[Event::Transaction(samples::transaction("iss-a", "acct-1", 1))]).await;
    let garbage = w.bus.write_raw(Topic::Transactions, "iss-a/acct-1", b"not avro at all").await.unwrap();
    let newer = w.bus.write_raw(Topic::Transactions, "iss-a/acct-1", &newer_schema()).await.unwrap();
    w.publish(&[Event::Transaction(samples::transaction("iss-a", "acct-1", 2))]).await;
    assert_eq!(transactions(&mut stream, 2, WITHIN).await, common::txs("agg-x", 1..3), "delivery goes on around them");

    // Each is dead-lettered: where it is, why, and (when readable) which schema wrote it.
    let letters = w
        .bus
        .read_until(Topic::Audit, WITHIN, |records| {
            records
                .iter()
                .filter_map(|r| cardlink_events::decode_record::<AuditEvent>(&r.payload, RecordType::AuditEvent).ok())
                .filter(|a| a.action == cardlink_subscription::dead_letter::ACTION)
                .count()
                >= 2
        })
        .await
        .unwrap();
    let letters: Vec<AuditEvent> = letters
        .iter()
        .filter_map(|r| cardlink_events::decode_record::<AuditEvent>(&r.payload, RecordType::AuditEvent).ok())
        .filter(|a| a.action == cardlink_subscription::dead_letter::ACTION)
        .collect();
    let resources: Vec<&str> = letters.iter().map(|a| a.resource.as_str()).collect();
    for offset in [garbage, newer] {
        assert!(
            resources.iter().any(|r| r.starts_with("transactions.v1/") && r.ends_with(&format!("/{offset}"))),
            "{resources:?}"
        );
    }
    assert!(letters.iter().all(|a| a.reason.as_deref() == Some("UNDECODABLE_RECORD")));
    assert!(letters.iter().any(|a| a.data_items == ["fingerprint:abababababababab"]), "{letters:?}");

    // Once readable, a record is redelivered as it was: here tx-1, appended again, reaches the
    // stream again with its event id unchanged (the aggregator de-duplicates on it).
    let tx1 = w.bus.read(Topic::Transactions, 1, WITHIN).await.unwrap().remove(0);
    let again = cardlink_bus::redeliver::redeliver(w.bus.config(), Topic::Transactions, tx1.partition, tx1.offset)
        .await
        .unwrap();
    assert!(again.offset > tx1.offset);
    assert_eq!(transactions(&mut stream, 1, WITHIN).await, common::txs("agg-x", [1]));
}

#[tokio::test]
async fn an_unreadable_consent_record_stops_delivery_on_the_view_fail_closed() {
    let w = world().await;
    let mut c = w.client().await;
    let mut stream =
        c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap().into_inner();
    common::next(&mut stream).await;
    w.publish(&[Event::Transaction(samples::transaction("iss-a", "acct-1", 1))]).await;
    assert_eq!(transactions(&mut stream, 1, WITHIN).await, common::txs("agg-x", [1]));

    // A consent record this release cannot read: it could be a revocation.
    w.bus.write_raw(Topic::Consents, "c-x", &newer_schema()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while w.service.hub().consents().stuck().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the consent view never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the revocation bound, nothing more is delivered on the view: the record could have
    // been the revocation.
    tokio::time::sleep(cardlink_subscription::dispatch::REVOCATION_BOUND + Duration::from_millis(200)).await;
    w.publish(&[Event::Transaction(samples::transaction("iss-a", "acct-1", 2))]).await;
    assert!(transactions(&mut stream, 1, Duration::from_secs(3)).await.is_empty(), "delivered on a stopped view");
}
