//! The Python client of docs/aggregators.md with `--backfill`, against the history store and the
//! subscription service: it gets the consent's history, says the backfill is complete, then
//! gets what happens live on the same stream, keeping each transaction's newest version.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use cardlink_events::TransactionKind;
use cardlink_testkit::python;
use common::*;
use tokio::io::{AsyncBufReadExt as _, BufReader};

#[tokio::test]
async fn the_python_example_backfills_the_history_then_follows_live() {
    let work = tempfile::tempdir().unwrap();
    let gen_dir = work.path().join("gen");
    python::generate(&gen_dir).unwrap();
    let mut granted = consent("c-x", "agg-x");
    granted.history_days = 60;
    let w = world(&[granted]).await;
    indexed(&w, "c-x", "agg-x", 31).await;

    // The history is 30 transactions, one before the consent's grant but within its reach
    // back, and a statement: 32 deliveries; then two live ones.
    let mut client = python::subscribe(&gen_dir, &w.subscription.addr().to_string(), w.token("agg-x"))
        .args(["--backfill", "--max-reconnects", "3", "--max-deliveries", "34"])
        .arg("--cursor-file")
        .arg(work.path().join("cursor.txt"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut progress = BufReader::new(client.stderr.take().unwrap()).lines();
    let said = tokio::time::timeout(WITHIN, async {
        let mut said = Vec::new();
        while let Some(line) = progress.next_line().await.unwrap() {
            let done = line.contains("complete");
            said.push(line);
            if done {
                return said;
            }
        }
        panic!("the client ended without a complete backfill: {said:?}");
    })
    .await
    .expect("the backfill completes");
    assert_eq!(said.last().unwrap(), "backfill of c-x: 32 delivered, complete", "{said:?}");

    // Live, after the history: a new transaction, and a refund that is a newer version of tx-2.
    w.publish(&[
        transaction("acct-1", 31, TransactionKind::Posted),
        transaction("acct-1", 2, TransactionKind::Refunded),
    ])
    .await;
    let out = tokio::time::timeout(WITHIN, client.wait_with_output()).await.expect("the client finishes").unwrap();
    assert!(out.status.success(), "subscribe.py failed");
    let printed: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(printed.len(), 34, "{printed:?}");
    let (history, live) = printed.split_at(32);
    assert!(history.iter().all(|d| d["fromHistory"] == true), "{history:?}");
    assert!(live.iter().all(|d| d.get("fromHistory").is_none()), "{live:?}");
    let id = |d: &serde_json::Value| d["transaction"]["issuerTransactionId"].as_str().map(str::to_owned);
    let mut from_history: Vec<String> = history.iter().filter_map(id).collect();
    from_history.sort();
    let mut expected: Vec<String> = (1..=30).chain([100]).map(|n| tx_id("agg-x", n)).collect();
    expected.sort();
    assert_eq!(from_history, expected);
    assert!(history.iter().any(|d| d["statement"]["statementId"].is_string()), "{history:?}");
    let refund = live.iter().find(|d| id(d) == Some(tx_id("agg-x", 2))).expect("the refund, live");
    assert_eq!(refund["transaction"]["kind"], "TRANSACTION_KIND_REFUNDED");
    let version = |d: &serde_json::Value| d["version"].as_str().unwrap().parse::<u64>().unwrap();
    let posted = history.iter().find(|d| id(d) == Some(tx_id("agg-x", 2))).unwrap();
    assert!(version(refund) > version(posted), "the newer state has the higher version");
    assert!(live.iter().any(|d| id(d) == Some(tx_id("agg-x", 31))));
}
