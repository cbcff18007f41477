//! The Python client of docs/aggregators.md, with code generated from proto/ by grpcio-tools,
//! against a real subscription service: it receives what the consent covers, keeps its cursor in
//! a file, and a second run continues exactly after the first.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use cardlink_events::{Event, samples};
use cardlink_testkit::python;

/// Runs subscribe.py to completion; returns the issuer transaction ids it printed.
async fn run_client(gen_dir: &Path, cursor_file: &Path, target: &str, token: &str, max: usize) -> Vec<String> {
    let mut command = python::subscribe(gen_dir, target, token);
    command
        .args(["--from-earliest", "--max-reconnects", "3"])
        .args(["--kinds", "transaction"])
        .arg("--cursor-file")
        .arg(cursor_file)
        .args(["--max-deliveries", &max.to_string()]);
    let out = tokio::time::timeout(common::WITHIN, command.output()).await.expect("the client finishes").unwrap();
    assert!(out.status.success(), "subscribe.py failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let delivery: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(delivery["transaction"]["accountRef"].as_str().unwrap().starts_with("acc_"), "{delivery}");
            delivery["transaction"]["issuerTransactionId"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_python_example_subscribes_and_resumes_from_its_cursor_file() {
    let work = tempfile::tempdir().unwrap();
    let gen_dir = work.path().join("gen");
    python::generate(&gen_dir).unwrap();

    let consent = common::transactions_consent();
    let w = common::world(&["iss-a"], &["agg-x"], &[consent]).await;
    let target = w.service.addr().to_string();
    let events = |range: std::ops::Range<u32>| -> Vec<Event> {
        range
            .flat_map(|n| {
                [
                    Event::Transaction(samples::transaction("iss-a", "acct-1", n)),
                    // Not consented: never printed.
                    Event::Transaction(samples::transaction("iss-a", "acct-2", n + 100)),
                ]
            })
            .collect()
    };
    w.publish(&events(0..3)).await;

    let cursor = work.path().join("cursor.txt");
    let first = run_client(&gen_dir, &cursor, &target, w.token("agg-x"), 3).await;
    let mut sorted = first.clone();
    sorted.sort();
    let mut expected = common::txs("agg-x", 0..3);
    expected.sort();
    assert_eq!(sorted, expected);
    assert!(std::fs::read_to_string(&cursor).unwrap().len() > 10, "the cursor was kept");

    w.publish(&events(3..5)).await;
    let second = run_client(&gen_dir, &cursor, &target, w.token("agg-x"), 2).await;
    let mut sorted = second.clone();
    sorted.sort();
    let mut expected = common::txs("agg-x", 3..5);
    expected.sort();
    assert_eq!(sorted, expected, "the second run continues exactly after the first");
}
