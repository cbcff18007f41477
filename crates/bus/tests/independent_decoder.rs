//! What the bus carries is standard Avro: fastavro, knowing only `schemas/`, decodes it.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use cardlink_bus::Topic;
use cardlink_events::{Event, samples};
use cardlink_testkit::TestBus;

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs tools/avro_decode.py over the given values and returns its JSON lines.
fn decode_with_fastavro(values: &[Vec<u8>]) -> Vec<serde_json::Value> {
    let root = workspace_root();
    let python = std::env::var("CARDLINK_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&python)
        .arg(root.join("tools/avro_decode.py"))
        .arg(root.join("schemas"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e} (install with: pip install -r tools/requirements.txt)"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    for value in values {
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(stdin, "{hex}").expect("write to decoder");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("decoder runs");
    assert!(
        out.status.success(),
        "fastavro decoder failed (pip install -r tools/requirements.txt?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[tokio::test]
async fn fastavro_decodes_what_the_bus_wrote() {
    let bus = TestBus::start().await.unwrap();
    let producer = bus.producer().unwrap();
    let tx = samples::foreign_installment_transaction("iss-a", "acct-1");
    let st = samples::statement("iss-a", "acct-1");
    producer.publish(&Event::Transaction(tx.clone()), None).await.unwrap();
    producer.publish(&Event::Statement(st.clone()), None).await.unwrap();

    let within = Duration::from_secs(30);
    let mut values: Vec<Vec<u8>> =
        bus.read(Topic::Transactions, 1, within).await.unwrap().into_iter().map(|r| r.payload).collect();
    values.extend(bus.read(Topic::Statements, 1, within).await.unwrap().into_iter().map(|r| r.payload));

    let decoded = decode_with_fastavro(&values);
    assert_eq!(decoded.len(), 2);

    let (schema, t) = (&decoded[0]["schema"], &decoded[0]["record"]);
    assert_eq!(schema, "card_transaction/v1");
    assert_eq!(t["event_id"], tx.event_id.to_string());
    assert_eq!(t["kind"], "POSTED");
    assert_eq!(t["amount"]["minor_units"], 30_512);
    assert_eq!(t["foreign"]["amount"]["currency"], "USD");
    assert_eq!(t["foreign"]["fx_rate"], "150.12");
    assert_eq!(t["payment"]["method"], "INSTALLMENTS");
    assert_eq!(t["payment"]["installment_count"], 3);
    assert_eq!(t["card"]["holder"], "FAMILY");
    assert_eq!(t["local_date"], "2026-11-20");
    assert_eq!(t["occurred_at"], "2026-11-20 03:15:07+00:00");
    assert_eq!(t["merchant"]["country"], "US");

    let (schema, s) = (&decoded[1]["schema"], &decoded[1]["record"]);
    assert_eq!(schema, "statement/v1");
    assert_eq!(s["closing_date"], "2026-11-15");
    assert_eq!(s["due_date"], "2026-12-10");
    assert_eq!(s["total"]["minor_units"], 58_230);
    assert_eq!(s["breakdown"][1]["method"], "REVOLVING");
    assert_eq!(s["charges"][0]["kind"], "ANNUAL_FEE");
}

#[test]
fn fastavro_reads_japanese_text_as_written() {
    let tx = samples::transaction("iss-a", "acct-1", 1);
    let value = cardlink_events::encode(&Event::Transaction(tx)).unwrap().bytes;
    let decoded = decode_with_fastavro(&[value]);
    assert_eq!(decoded[0]["record"]["merchant"]["name_as_printed"], "ｾﾌﾞﾝｲﾚﾌﾞﾝ ｼﾌﾞﾔ");
    assert_eq!(decoded[0]["record"]["merchant"]["normalized_name"], "セブン-イレブン 渋谷");
}
