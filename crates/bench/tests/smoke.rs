//! The benchmark still runs end to end: a tiny workload through the same code path as the
//! documented command, checking what it counted and that it wrote its report and plot. No
//! figure is asserted (speed is shown in docs/benchmarks.md, never tested).

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

/// Runs the benchmark with `args` into a fresh directory and returns it with the JSON report
/// named `report`.
fn run(args: &[&str], report: &str) -> (tempfile::TempDir, serde_json::Value) {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cardlink-bench"))
        .args(args)
        .arg("--out")
        .arg(out.path())
        .env("RUST_LOG", "error")
        .status()
        .unwrap();
    assert!(status.success());
    let json = serde_json::from_str(&std::fs::read_to_string(out.path().join(report)).unwrap()).unwrap();
    (out, json)
}

#[test]
fn a_small_run_delivers_everything_it_publishes_and_writes_its_report() {
    let args = ["--streams", "1,3", "--events", "300", "--ingest-events", "2000", "--consents", "60", "--rate", "500"];
    let (out, report) = run(&args, "results.json");
    assert_eq!(report["ingest"]["records"], 2000, "{report}");
    assert!(report["ingest"]["raw_producer_records_per_second"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    let rows = report["fanout"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["delivered"], row["published"], "every published event reaches its one stream: {row}");
        assert_eq!(row["baseline_delivered"], row["published"], "the baseline reads the same workload: {row}");
        assert_eq!(row["scheduled"]["count"], row["published"], "each delivery is timed from its schedule: {row}");
        assert_eq!(
            row["bus_scheduled"]["count"], row["published"],
            "so is each record the plain consumer reads: {row}"
        );
    }
    let png = std::fs::read(out.path().join("fanout.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(md.contains("| 3 |") && md.contains("| 3 | 300 |"), "{md}");
}

#[test]
fn a_small_history_run_backfills_the_member_at_each_size_and_writes_its_report() {
    let args = ["--history", "--history-stores", "sqlite", "--history-others", "2000,5000"];
    let more = ["--history-member-rows", "150", "--history-indexed", "1000", "--history-runs", "1"];
    let (out, report) = run(&[&args[..], &more[..]].concat(), "history.json");
    assert_eq!(report["indexer"][0]["records"], 1000, "{report}");
    let rows = report["backfill"].as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["other_rows"].as_u64().unwrap()).collect::<Vec<_>>(), [2000, 5000]);
    for row in rows {
        assert_eq!(row["deliveries"], 150 + 24, "the member's whole history, nothing of the others: {row}");
        assert_eq!(row["list_pages"], 2 * 20, "two 100-row pages, twenty times: {row}");
    }
    assert!(std::fs::read_to_string(out.path().join("history.md")).unwrap().contains("| sqlite | 5000 |"));
}

#[test]
fn a_small_peak_run_delivers_exactly_the_consented_records() {
    let args = ["--peak", "--peak-consents", "3000", "--peak-streams", "20", "--peak-records", "5000"];
    let (out, report) = run(&args, "peak.json");
    assert_eq!(report["records"], 5000, "the hub read the whole topic: {report}");
    assert_eq!(report["consented_records"], 500, "one in ten: {report}");
    assert_eq!(report["delivered"], 500, "each consented record to its one stream, nothing else: {report}");
    assert!(std::fs::read_to_string(out.path().join("peak.md")).unwrap().contains("| 3000 | 20 |"));
}

#[test]
fn a_small_idle_run_holds_every_stream_in_both_layouts() {
    let args = ["--idle", "--idle-streams", "20,60", "--idle-multiplex", "10"];
    let (out, report) = run(&args, "idle.json");
    let rows = report["rows"].as_array().unwrap();
    let shape: Vec<(u64, u64)> =
        rows.iter().map(|r| (r["streams"].as_u64().unwrap(), r["connections"].as_u64().unwrap())).collect();
    assert_eq!(shape, [(20, 20), (60, 60), (20, 2), (60, 6)], "{report}");
    assert!(
        std::fs::read_to_string(out.path().join("idle.md"))
            .unwrap()
            .contains("| multiplexed, 10 per connection | 60 | 6 |")
    );
}
