//! The batch-file adapter end to end: sample files through the real ingest gRPC server to the
//! real broker.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use cardlink_adapters::file::{FileRun, Mapping, RunError, Summary, run_file};
use cardlink_adapters::sink::{EventSink, IngestSink, SinkError, SinkOutcome};
use cardlink_bus::Topic;
use cardlink_events::{CardHolder, CardTransaction, Event, PaymentMethod, decode};
use cardlink_ingest::server::{IngestConfig, RunningIngest};
use cardlink_testkit::{TEST_ISSUERS, TestBus};

const WITHIN: Duration = Duration::from_secs(30);

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

/// Copies a sample into a fresh directory, so checkpoints and rejects land there.
fn staged(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::copy(samples().join(name), &path).unwrap();
    (dir, path)
}

fn file_run(input: &Path, mapping: &str) -> FileRun {
    FileRun {
        input: input.to_owned(),
        mapping: Mapping::load(&samples().join(mapping)).unwrap(),
        issuer_id: TEST_ISSUERS[0].0.into(),
        rejects: None,
        checkpoint: None,
        batch_size: 500,
        progress: false,
    }
}

async fn sink(ingest: &RunningIngest) -> IngestSink {
    IngestSink::connect(&ingest.addr().to_string(), TEST_ISSUERS[0].0, TEST_ISSUERS[0].1).await.unwrap()
}

async fn transactions(bus: &TestBus, n: usize) -> Vec<CardTransaction> {
    bus.read(Topic::Transactions, n, WITHIN)
        .await
        .unwrap()
        .into_iter()
        .map(|r| match decode(&r.payload).unwrap() {
            Event::Transaction(t) => t,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn rejects(input: &Path) -> Vec<Vec<String>> {
    let path = input.with_file_name(format!("{}.rejects.csv", input.file_name().unwrap().to_string_lossy()));
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader.records().map(|r| r.unwrap().iter().map(str::to_owned).collect()).collect()
}

#[tokio::test]
async fn shift_jis_fixed_width_file_round_trips_to_the_topic() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let (_dir, input) = staged("core_export_sjis.dat");

    let summary = run_file(file_run(&input, "core_export_sjis.toml"), &mut sink(&ingest).await).await.unwrap();
    assert_eq!(
        summary,
        Summary { read: 7, published: 6, duplicate: 0, rejected: 1, resumed_after_line: 0 },
        "{:?}",
        rejects(&input)
    );
    assert_eq!(
        rejects(&input),
        vec![vec![
            "8".to_string(),
            "SHORT_LINE".into(),
            "posted_date".into(),
            "the line has 24 bytes; this field ends at byte 32".into()
        ]]
    );

    let txs = transactions(&bus, 6).await;
    let by_id = |id: &str| txs.iter().find(|t| t.issuer_transaction_id == id).unwrap_or_else(|| panic!("{id} missing"));
    let lawson = by_id("K261102A00000002");
    let merchant = lawson.merchant.as_ref().unwrap();
    assert_eq!(merchant.name_as_printed, "ローソン　品川駅前店");
    assert_eq!(merchant.normalized_name.as_deref(), Some("ローソン 品川駅前店"));
    assert_eq!(lawson.amount.minor_units, 1280);
    assert_eq!(lawson.local_date.to_string(), "2026-11-02");
    assert_eq!(lawson.billing_month.as_deref(), Some("2026-12"));

    let seven = by_id("K261101A00000001");
    assert_eq!(seven.merchant.as_ref().unwrap().normalized_name.as_deref(), Some("セブンイレブン シンジュクテン"));

    let takashimaya = by_id("K261103A00000003");
    assert_eq!(
        (takashimaya.payment.method, takashimaya.payment.installment_count),
        (PaymentMethod::Installments, Some(3))
    );
    assert_eq!(takashimaya.card.holder, CardHolder::Family);
    assert_eq!(takashimaya.card.last4.as_deref(), Some("7777"));
    assert_eq!(by_id("K261106A00000006").payment.method, PaymentMethod::BonusLumpSum);
    assert_eq!(by_id("K261105A00000005").payment.method, PaymentMethod::Revolving);
}

#[tokio::test]
async fn utf8_csv_with_japanese_headers_goes_through_and_bad_lines_are_listed() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let (_dir, input) = staged("meisai_web_utf8.csv");
    let summary = run_file(file_run(&input, "meisai_web_utf8.toml"), &mut sink(&ingest).await).await.unwrap();
    assert_eq!((summary.read, summary.published, summary.rejected), (9, 8, 1), "{:?}", rejects(&input));
    let rejected = rejects(&input);
    assert_eq!(
        (rejected[0][0].as_str(), rejected[0][1].as_str(), rejected[0][2].as_str()),
        ("9", "UNPARSEABLE_DATE", "used_at")
    );

    let txs = transactions(&bus, 8).await;
    let amazon = txs.iter().find(|t| t.issuer_transaction_id == "T20261103-0004").unwrap();
    assert_eq!(amazon.merchant.as_ref().unwrap().normalized_name.as_deref(), Some("AMAZON.CO.JP"));
    assert_eq!((amazon.payment.method, amazon.payment.installment_count), (PaymentMethod::Installments, Some(6)));
    assert_eq!(amazon.amount.minor_units, 59_800);
    let refund = txs.iter().find(|t| t.issuer_transaction_id == "T20261110-0009").unwrap();
    assert_eq!(refund.amount.minor_units, -128_000);
    let family = txs.iter().find(|t| t.issuer_transaction_id == "T20261102-0003").unwrap();
    assert_eq!((family.card.holder, family.amount.minor_units), (CardHolder::Family, 12_340));
}

#[tokio::test]
async fn re_running_a_file_publishes_nothing_twice() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let (dir, input) = staged("core_export_sjis.dat");
    let mut sink = sink(&ingest).await;
    run_file(file_run(&input, "core_export_sjis.toml"), &mut sink).await.unwrap();

    // With its checkpoint, a finished file has nothing left to do.
    let again = run_file(file_run(&input, "core_export_sjis.toml"), &mut sink).await.unwrap();
    assert_eq!((again.read, again.published, again.resumed_after_line), (0, 0, 10));

    // Without it (a new operator, a lost disk), every line is read again and found duplicate.
    std::fs::remove_file(dir.path().join("core_export_sjis.dat.checkpoint.json")).unwrap();
    let fresh = run_file(file_run(&input, "core_export_sjis.toml"), &mut sink).await.unwrap();
    assert_eq!((fresh.read, fresh.published, fresh.duplicate, fresh.rejected), (7, 0, 6, 1));

    assert_eq!(transactions(&bus, 6).await.len(), 6);
    assert!(bus.read(Topic::Transactions, 7, Duration::from_secs(2)).await.is_err(), "a line reached the bus twice");
}

/// Passes batches to the real sink until it "crashes" after `ok_batches`.
struct CrashingSink {
    inner: IngestSink,
    ok_batches: usize,
}

impl EventSink for CrashingSink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<SinkOutcome>, SinkError> {
        if self.ok_batches == 0 {
            return Err(SinkError::Refused {
                code: tonic::Code::Unavailable,
                reason: "CRASH".into(),
                message: "simulated crash".into(),
            });
        }
        self.ok_batches -= 1;
        self.inner.publish(events).await
    }
}

#[tokio::test]
async fn a_crashed_run_resumes_from_its_checkpoint() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let (_dir, input) = staged("meisai_web_utf8.csv");
    let run = || FileRun { batch_size: 3, ..file_run(&input, "meisai_web_utf8.toml") };

    let mut crashing = CrashingSink { inner: sink(&ingest).await, ok_batches: 1 };
    assert!(run_file(run(), &mut crashing).await.is_err());

    let resumed = run_file(run(), &mut sink(&ingest).await).await.unwrap();
    assert!(resumed.resumed_after_line >= 4, "{resumed:?}");
    assert_eq!(resumed.published + 3, 8, "the first batch of 3 was published before the crash");

    assert_eq!(transactions(&bus, 8).await.len(), 8);
    let rejected = rejects(&input);
    assert_eq!(rejected.len(), 1, "each rejected line is listed once: {rejected:?}");
}

#[tokio::test]
async fn a_card_number_in_a_file_is_rejected_and_never_written_anywhere() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pan.csv");
    // Line 3 carries a synthetic test PAN in the merchant column, as a careless export might.
    std::fs::write(
        &input,
        "利用日,利用店名・商品名,利用金額,会員番号\n2026/11/01,ﾛｰｿﾝ,500,ACC-1\n2026/11/02,ｶｰﾄﾞ 4111-1111-1111-1111,700,ACC-1\n",
    )
    .unwrap();
    let mapping = Mapping::parse(
        r#"
        [format]
        kind = "csv"
        encoding = "utf-8"
        [fields]
        used_at = { column = "利用日" }
        merchant_name = { column = "利用店名・商品名" }
        amount = { column = "利用金額" }
        account_ref = { column = "会員番号" }
        posted_date = { column = "利用日" }
        "#,
    )
    .unwrap();
    let run = FileRun { mapping, ..file_run(&input, "meisai_web_utf8.toml") };
    let summary = run_file(run, &mut sink(&ingest).await).await.unwrap();
    assert_eq!((summary.published, summary.rejected), (1, 1));
    let rejects_text = std::fs::read_to_string(dir.path().join("pan.csv.rejects.csv")).unwrap();
    assert!(rejects_text.contains("3,PAN_DETECTED,merchant.name_as_printed"), "{rejects_text}");
    assert!(!rejects_text.contains("4111"));
    let on_bus = bus.read(Topic::Transactions, 1, WITHIN).await.unwrap();
    assert!(!String::from_utf8_lossy(&on_bus[0].payload).contains("4111"));
}

#[test]
fn mapping_errors_name_the_field() {
    let err = Mapping::parse("[format]\nkind = \"fixed\"\nencoding = \"utf-8\"\n[fields]\naccount_ref = { column = \"x\" }\nused_at = { start = 1, length = 8 }\namount = { start = 9, length = 4 }\n")
        .unwrap_err();
    assert!(err.to_string().contains("fields.account_ref"), "{err}");
    let err =
        Mapping::parse("[format]\nkind = \"csv\"\nencoding = \"utf-8\"\n[fields]\naccount_ref = { column = \"x\" }\n")
            .unwrap_err();
    assert!(err.to_string().contains("used_at"), "{err}");
}

/// Sends only the first record of its first batch; answers the others as the ingest service does
/// while Kafka is stalled (BUS_UNAVAILABLE, after the sink's own retries).
struct StalledSink {
    inner: IngestSink,
    stalled: bool,
}

impl EventSink for StalledSink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<SinkOutcome>, SinkError> {
        if std::mem::replace(&mut self.stalled, false) {
            let mut outcomes = self.inner.publish(&events[..1]).await?;
            outcomes.extend(events[1..].iter().map(|_| SinkOutcome::Rejected {
                reason: "BUS_UNAVAILABLE".into(),
                field: String::new(),
                message: "Kafka did not acknowledge in time".into(),
            }));
            return Ok(outcomes);
        }
        self.inner.publish(events).await
    }
}

#[tokio::test]
async fn a_line_the_bus_did_not_take_stops_the_run_before_it_and_the_next_run_sends_it() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let (_dir, input) = staged("meisai_web_utf8.csv");
    let run = || FileRun { batch_size: 3, ..file_run(&input, "meisai_web_utf8.toml") };

    let mut stalled = StalledSink { inner: sink(&ingest).await, stalled: true };
    let err = run_file(run(), &mut stalled).await.unwrap_err();
    let RunError::NotSent { line, reason } = &err else { panic!("{err}") };
    assert_eq!(reason, "BUS_UNAVAILABLE");
    assert!(err.to_string().contains("run the adapter again"), "{err}");
    // Nothing unsent is listed as rejected: those lines are not final.
    assert!(rejects(&input).iter().all(|r| !r.iter().any(|c| c == "BUS_UNAVAILABLE")), "{:?}", rejects(&input));

    // The next run goes on from that line: every line reaches the bus once, each rejected line
    // is listed once.
    let resumed = run_file(run(), &mut sink(&ingest).await).await.unwrap();
    assert_eq!(resumed.resumed_after_line, *line - 1);
    assert_eq!(transactions(&bus, 8).await.len(), 8);
    assert!(bus.read(Topic::Transactions, 9, Duration::from_secs(2)).await.is_err(), "a line reached the bus twice");
    assert_eq!(rejects(&input).len(), 1, "{:?}", rejects(&input));
}
