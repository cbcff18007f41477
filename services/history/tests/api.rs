//! The History API against a real broker, the registry, the indexer and the embedded store, over
//! gRPC with registry credentials: listings page through exactly the consented history, projected
//! and pseudonymised as the stream delivers it; page tokens cannot be forged or moved to other
//! filters; a revoked consent reads nothing more; a listing's changes cursor continues on the
//! stream with every change after it.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cardlink_api::Reason;
use cardlink_api::v1;
use cardlink_events::consent::ConsentStatus;
use cardlink_events::{EventId, TransactionKind, samples};
use cardlink_testkit::authorized;
use chrono::{TimeZone as _, Utc};
use common::*;

#[tokio::test]
async fn a_listing_pages_through_the_consented_history_once_projected_as_the_stream_projects() {
    // agg-y's member also shares 60 days before the grant.
    let mut with_history = consent("c-h", "agg-y");
    with_history.history_days = 60;
    let w = world(&[consent("c-x", "agg-x"), with_history]).await;
    indexed(&w, "c-x", "agg-x", 30).await;
    let mut client = w.client().await;

    let (listed, pages, last) = all_pages(&mut client, w.token("agg-x"), list("c-x", 7, "")).await;
    let got: Vec<String> =
        listed.iter().map(|v| v.transaction.as_ref().unwrap().issuer_transaction_id.clone()).collect();
    let expected: Vec<String> = (1..=30).map(|n| tx_id("agg-x", n)).collect();
    assert_eq!(got, expected, "every consented transaction once, oldest first, in the aggregator's ids");
    assert_eq!(pages, 5, "30 rows in pages of 7");
    for v in &listed {
        let t = v.transaction.as_ref().unwrap();
        assert_eq!(t.kind, v1::TransactionKind::Posted as i32, "one row per transaction, at its latest state");
        assert!(t.merchant.is_none(), "no MERCHANT_DETAIL granted");
        assert_eq!(t.account_ref, ids("agg-x").account("iss-a", "acct-1"));
    }
    let granted = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap();
    assert_eq!(last.available_from, Some(cardlink_api::convert::timestamp(granted)), "the consent's data window");
    assert!(last.changes_cursor.starts_with("cur1."));

    // Newest first, by billing month, one transaction, statements.
    let newest = v1::ListTransactionsRequest { order: v1::HistoryOrder::NewestFirst as i32, ..list("c-x", 1_000, "") };
    let page = client.list_transactions(authorized(newest, w.token("agg-x"))).await.unwrap().into_inner();
    assert_eq!(page.transactions.len(), 30);
    assert_eq!(page.transactions[0].transaction.as_ref().unwrap().issuer_transaction_id, tx_id("agg-x", 30));
    let december =
        v1::ListTransactionsRequest { billing_month: "2026-12".into(), oldest_time: None, ..list("c-x", 100, "") };
    let page = client.list_transactions(authorized(december, w.token("agg-x"))).await.unwrap().into_inner();
    assert_eq!(page.transactions.len(), 30, "every sample is billed in 2026-12");
    let november = v1::ListTransactionsRequest { billing_month: "2026-11".into(), ..list("c-x", 100, "") };
    let page = client.list_transactions(authorized(november, w.token("agg-x"))).await.unwrap().into_inner();
    assert!(page.transactions.is_empty());

    let get =
        |id: String| v1::GetTransactionRequest { consent_id: "c-x".into(), transaction_id: id, ..Default::default() };
    let one = client.get_transaction(authorized(get(tx_id("agg-x", 3)), w.token("agg-x"))).await.unwrap().into_inner();
    assert_eq!(one.transaction.unwrap().transaction.unwrap().issuer_transaction_id, tx_id("agg-x", 3));
    let early = client.get_transaction(authorized(get(tx_id("agg-x", 100)), w.token("agg-x"))).await.unwrap_err();
    assert_eq!(early.code(), tonic::Code::NotFound, "before the consent's data window");
    let others = client.get_transaction(authorized(get(tx_id("agg-y", 3)), w.token("agg-x"))).await.unwrap_err();
    assert_eq!(others.code(), tonic::Code::NotFound, "another aggregator's id names nothing");

    statements_indexed(&w, "c-x", "agg-x", 1).await;
    let statements = v1::ListStatementsRequest { consent_id: "c-x".into(), ..Default::default() };
    let page = client.list_statements(authorized(statements.clone(), w.token("agg-x"))).await.unwrap().into_inner();
    assert_eq!(page.statements.len(), 1);
    let s = page.statements[0].statement.as_ref().unwrap();
    assert_eq!(s.statement_id, ids("agg-x").statement("iss-a", &samples::statement("iss-a", "acct-1").statement_id));

    // A consent with history reaches back: tx-100 (2025-12-01) is 31 days before its grant.
    let (theirs, _, last) = all_pages(&mut client, w.token("agg-y"), list("c-h", 1_000, "")).await;
    assert_eq!(theirs.len(), 31);
    assert_eq!(theirs[0].transaction.as_ref().unwrap().issuer_transaction_id, tx_id("agg-y", 100));
    let from = granted - chrono::TimeDelta::days(60);
    assert_eq!(last.available_from, Some(cardlink_api::convert::timestamp(from)));

    // Bound to the caller and its consent.
    let theirs = client.list_statements(authorized(statements, w.token("agg-y"))).await.unwrap_err();
    assert_eq!(reason(&theirs), Some(Reason::NotYourConsent));
    let other_account =
        v1::ListTransactionsRequest { account_ref: ids("agg-x").account("iss-a", "acct-2"), ..list("c-x", 10, "") };
    let e = client.list_transactions(authorized(other_account, w.token("agg-x"))).await.unwrap_err();
    assert_eq!(reason(&e), Some(Reason::AccountNotInConsent));
    let e = client.list_transactions(authorized(list("c-x", 10, ""), w.token("iss-a"))).await.unwrap_err();
    assert_eq!(reason(&e), Some(Reason::AggregatorsOnly));
    let e = client.list_transactions(tonic::Request::new(list("c-x", 10, ""))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // What was read is on the member's record (the audit topic their card company's page reads),
    // as deliveries are: written at the latest when the service stops.
    let mut w = w;
    w.history.take().unwrap().shutdown().await;
    let records = w.bus.read_all(cardlink_bus::Topic::Audit).await.unwrap();
    let read: i64 = records
        .iter()
        .filter_map(|r| {
            cardlink_events::decode_record::<cardlink_events::AuditEvent>(
                &r.payload,
                cardlink_events::RecordType::AuditEvent,
            )
            .ok()
        })
        .filter(|a| a.action == cardlink_entitlement::access::ACTION && a.consent_id.as_deref() == Some("c-x"))
        .map(|a| a.count)
        .sum();
    assert!(read >= 30, "the transactions read under c-x are on the record ({read} counted)");
}

#[tokio::test]
async fn page_tokens_cannot_be_forged_or_reused_with_other_filters() {
    let w = world(&[consent("c-x", "agg-x"), consent("c-y", "agg-y")]).await;
    indexed(&w, "c-x", "agg-x", 30).await;
    let mut client = w.client().await;
    let first = client.list_transactions(authorized(list("c-x", 10, ""), w.token("agg-x"))).await.unwrap().into_inner();
    let token = first.next_page_token.clone();
    assert!(!token.is_empty());

    // page_size may change; nothing else.
    let next =
        client.list_transactions(authorized(list("c-x", 3, &token), w.token("agg-x"))).await.unwrap().into_inner();
    assert_eq!(next.transactions[0].transaction.as_ref().unwrap().issuer_transaction_id, tx_id("agg-x", 11));
    assert_eq!(next.changes_cursor, first.changes_cursor, "one listing, one changes cursor");
    for changed in [
        v1::ListTransactionsRequest { billing_month: "2026-12".into(), ..list("c-x", 10, &token) },
        v1::ListTransactionsRequest { order: v1::HistoryOrder::NewestFirst as i32, ..list("c-x", 10, &token) },
        v1::ListTransactionsRequest { oldest_time: None, ..list("c-x", 10, &token) },
    ] {
        let e = client.list_transactions(authorized(changed, w.token("agg-x"))).await.unwrap_err();
        assert_eq!(reason(&e), Some(Reason::PageTokenMismatch), "{e:?}");
    }
    // Another aggregator with its own consent on the same account cannot continue it.
    let e = client.list_transactions(authorized(list("c-y", 10, &token), w.token("agg-y"))).await.unwrap_err();
    assert_eq!(reason(&e), Some(Reason::PageTokenMismatch));
    // Altered or made up.
    let mut altered = token.clone().into_bytes();
    altered[5] = if altered[5] == b'A' { b'B' } else { b'A' };
    for forged in [String::from_utf8(altered).unwrap(), "eyJ4Ijox.AAAA".to_owned(), "x".repeat(5_000)] {
        let e = client.list_transactions(authorized(list("c-x", 10, &forged), w.token("agg-x"))).await.unwrap_err();
        assert_eq!(reason(&e), Some(Reason::PageTokenInvalid), "{e:?}");
    }
    // A transaction listing's token is no statement listing's.
    let statements = v1::ListStatementsRequest { consent_id: "c-x".into(), page_token: token, ..Default::default() };
    let e = client.list_statements(authorized(statements, w.token("agg-x"))).await.unwrap_err();
    assert_eq!(reason(&e), Some(Reason::PageTokenInvalid));
}

#[tokio::test]
async fn a_revoked_consent_reads_nothing_more_not_even_the_next_page() {
    let w = world(&[consent("c-x", "agg-x")]).await;
    indexed(&w, "c-x", "agg-x", 30).await;
    let mut client = w.client().await;
    let first = client.list_transactions(authorized(list("c-x", 10, ""), w.token("agg-x"))).await.unwrap().into_inner();

    let mut revoked = consent("c-x", "agg-x");
    revoked.event_id = EventId::random();
    revoked.status = ConsentStatus::Revoked;
    revoked.ended_at = Some(Utc::now());
    revoked.occurred_at = Utc::now();
    w.publish_consent(&revoked).await;
    let written = tokio::time::Instant::now();
    let denied = loop {
        let next = list("c-x", 10, &first.next_page_token);
        match client.list_transactions(authorized(next, w.token("agg-x"))).await {
            Ok(_) => {
                assert!(written.elapsed() < Duration::from_secs(5), "still readable after the revocation");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(reason(&denied), Some(Reason::ConsentEnded));
    let elapsed = written.elapsed();
    assert!(
        elapsed <= cardlink_entitlement::REVOCATION_BOUND + Duration::from_millis(500),
        "denied only after {elapsed:?}"
    );
}

#[tokio::test]
async fn the_changes_cursor_continues_on_the_stream_with_every_change_after_the_listing() {
    let w = world(&[consent("c-x", "agg-x")]).await;
    indexed(&w, "c-x", "agg-x", 30).await;
    let mut client = w.client().await;
    let (listed, _, last) = all_pages(&mut client, w.token("agg-x"), list("c-x", 1_000, "")).await;
    let version_of_2 = listed
        .iter()
        .find(|v| v.transaction.as_ref().unwrap().issuer_transaction_id == tx_id("agg-x", 2))
        .unwrap()
        .version;

    // After the listing: a new transaction, and tx-2 refunded.
    w.publish(&[
        transaction("acct-1", 31, TransactionKind::Posted),
        transaction("acct-1", 2, TransactionKind::Refunded),
    ])
    .await;
    let mut stream = w.stream_client().await;
    let request = v1::SubscribeRequest {
        start: Some(v1::subscribe_request::Start::Cursor(last.changes_cursor.clone())),
        kinds: vec![v1::EventKind::Transaction as i32],
        ..Default::default()
    };
    let mut stream = stream.subscribe(authorized(request, w.token("agg-x"))).await.unwrap().into_inner();
    let mut received: Vec<(String, i32, u64)> = Vec::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while received.len() < 2 {
        let message = tokio::time::timeout_at(deadline, stream.message()).await.unwrap().unwrap().unwrap();
        for d in message.deliveries {
            if let Some(v1::delivery::Event::Transaction(t)) = d.event {
                received.push((t.issuer_transaction_id, t.kind, d.version));
            }
        }
    }
    assert_eq!(received.len(), 2, "only the changes after the listing: {received:?}");
    assert_eq!((received[0].0.clone(), received[0].1), (tx_id("agg-x", 31), v1::TransactionKind::Posted as i32));
    assert_eq!((received[1].0.clone(), received[1].1), (tx_id("agg-x", 2), v1::TransactionKind::Refunded as i32));
    assert!(received[1].2 > version_of_2, "the refund is a newer version of the listed transaction");
}
