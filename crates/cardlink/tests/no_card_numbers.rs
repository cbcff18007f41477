//! No card number anywhere: an issuer publishes records with synthetic card numbers in every
//! text field, in every form the PAN guard knows (separated, full-width, with invisible
//! characters, glued to other digits), through `cardlink serve ingest` (debug logs, spans exported
//! over OTLP) and through the batch-file adapter (its rejects file and checkpoint). Then
//! everything written is scanned — the service's logs, the exported spans, every record of every
//! topic, the adapter's output and files — for the planted numbers (whatever separates their
//! digits) and for any 13–19-digit Luhn-valid run: none is found. The scanner is shown to find the
//! numbers in the inputs, so it can fail.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use cardlink_api::v1::issuer_ingest_client::IssuerIngestClient;
use cardlink_api::{Reason, convert, v1};
use cardlink_bus::Topic;
use cardlink_events::{Event, samples};
use cardlink_testkit::{TestBus, authorized, register_issuer, registry_client};
use common::{WITHIN, cardlink, free_port, ready, repo, serve_ingest};

/// Synthetic test card numbers (Visa's and JCB's test ranges), planted to prove nothing keeps them.
const PLANTED: [&str; 2] = ["4111111111111111", "3530111333300000"];

/// The forms a card number is written in: each planted number in each.
fn forms(pan: &str) -> Vec<String> {
    let groups: Vec<String> = pan.chars().collect::<Vec<_>>().chunks(4).map(|c| c.iter().collect::<String>()).collect();
    let full_width: String = pan.chars().map(|c| char::from_u32(c as u32 - '0' as u32 + 0xFF10).unwrap()).collect();
    let mut out = vec![pan.to_owned(), format!("ご利用カード {pan} 様"), format!("00{pan}"), format!("{pan}1234")];
    for separator in [" ", "-", "  ", "\u{00A0}", ".", "/", "\u{3000}"] {
        out.push(groups.join(separator));
    }
    out.push(full_width);
    out.push(pan.chars().map(|c| format!("{c}\u{200B}")).collect());
    out
}

/// Sets one text field of a record; the fields the guard checks.
type Plant<M> = fn(&mut M, String);

fn transaction_fields() -> Vec<(&'static str, Plant<v1::CardTransaction>)> {
    fn merchant(t: &mut v1::CardTransaction) -> &mut v1::Merchant {
        t.merchant.get_or_insert_with(Default::default)
    }
    fn foreign(t: &mut v1::CardTransaction) -> &mut v1::ForeignAmount {
        t.foreign.get_or_insert_with(Default::default)
    }
    vec![
        ("event_id", |t, v| t.event_id = v),
        ("issuer_id", |t, v| t.issuer_id = v),
        ("account_ref", |t, v| t.account_ref = v),
        ("issuer_transaction_id", |t, v| t.issuer_transaction_id = v),
        ("original_transaction_id", |t, v| t.original_transaction_id = v),
        ("local_date", |t, v| t.local_date = v),
        ("posted_date", |t, v| t.posted_date = v),
        ("billing_month", |t, v| t.billing_month = v),
        ("card.last4", |t, v| t.card.get_or_insert_with(Default::default).last4 = v),
        ("merchant.name_as_printed", |t, v| merchant(t).name_as_printed = v),
        ("merchant.normalized_name", |t, v| merchant(t).normalized_name = v),
        ("merchant.mcc", |t, v| merchant(t).mcc = v),
        ("merchant.industry_code", |t, v| merchant(t).industry_code = v),
        ("merchant.country", |t, v| merchant(t).country = v),
        ("foreign.fx_rate", |t, v| foreign(t).fx_rate = v),
        ("foreign.fx_rate_date", |t, v| foreign(t).fx_rate_date = v),
    ]
}

fn statement_fields() -> Vec<(&'static str, Plant<v1::Statement>)> {
    vec![
        ("event_id", |s, v| s.event_id = v),
        ("statement_id", |s, v| s.statement_id = v),
        ("issuer_id", |s, v| s.issuer_id = v),
        ("account_ref", |s, v| s.account_ref = v),
        ("billing_month", |s, v| s.billing_month = v),
        ("period_start", |s, v| s.period_start = v),
        ("closing_date", |s, v| s.closing_date = v),
        ("due_date", |s, v| s.due_date = v),
    ]
}

/// A clean transaction record, numbered `n`.
fn clean(n: u32) -> v1::IngestRecord {
    convert::ingest_record(&Event::Transaction(samples::transaction("iss-a", "acct-1", n)))
}

/// Every record to publish: (field, record), one per field and form, card numbers in them.
fn planted_records() -> Vec<(String, v1::IngestRecord)> {
    let mut out = Vec::new();
    for pan in PLANTED {
        for form in forms(pan) {
            for (field, plant) in transaction_fields() {
                let mut record = clean(0);
                if let Some(v1::ingest_record::Event::Transaction(t)) = &mut record.event {
                    plant(t, form.clone());
                }
                out.push((field.to_owned(), record));
            }
            for (field, plant) in statement_fields() {
                let mut record = convert::ingest_record(&Event::Statement(samples::statement("iss-a", "acct-1")));
                if let Some(v1::ingest_record::Event::Statement(s)) = &mut record.event {
                    plant(s, form.clone());
                }
                out.push((field.to_owned(), record));
            }
        }
    }
    out
}

/// `text` with full-width digits made ASCII and up to three other characters between two digits
/// dropped: how a reader sees a number however its digits are separated.
fn joined_digits(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending = String::new();
    for c in text.chars() {
        let digit = match c {
            '0'..='9' => Some(c),
            '\u{FF10}'..='\u{FF19}' => char::from_u32(c as u32 - 0xFF10 + '0' as u32),
            _ => None,
        };
        match digit {
            Some(d) => {
                // Up to three non-digits between digits are taken for separators.
                if pending.chars().count() > 3 {
                    out.push_str(&pending);
                }
                pending.clear();
                out.push(d);
            }
            None if out.ends_with(|c: char| c.is_ascii_digit()) => pending.push(c),
            None => out.push(c),
        }
        if pending.chars().count() > 3 {
            out.push_str(&pending);
            pending.clear();
        }
    }
    out.push_str(&pending);
    out
}

/// The Luhn check, written here again on purpose: the scanner must not share the guard's code.
fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let v = u32::from(*d) * if i % 2 == 1 { 2 } else { 1 };
            if v > 9 { v - 9 } else { v }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// What in `bytes` is a card number: a planted one, whatever separates its digits, or any run of
/// 13–19 digits that passes Luhn. Described without the digits.
fn card_numbers_in(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let joined = joined_digits(&text);
    let mut found = Vec::new();
    for pan in PLANTED {
        if let Some(at) = joined.find(pan) {
            found.push(format!("a planted number ({}…) near {:?}", &pan[..4], excerpt(&joined, at)));
        }
    }
    // Digits inside a hexadecimal word (a UUID, a trace id) are part of an identifier, not a
    // number: a run touching a hex letter is passed over, as the guard passes UUIDs over.
    let mut run: Vec<u8> = Vec::new();
    let mut after_hex_letter = false;
    let mut before = ' ';
    for (at, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        match c {
            '0'..='9' => run.push(c as u8 - b'0'),
            '\u{FF10}'..='\u{FF19}' => run.push(u8::try_from(c as u32 - 0xFF10).unwrap()),
            _ => {
                let in_hex_word = after_hex_letter || c.is_ascii_hexdigit();
                if (13..=19).contains(&run.len()) && !in_hex_word && luhn_valid(&run) {
                    found.push(format!("a {}-digit Luhn-valid run after {:?}", run.len(), excerpt(&text, at)));
                }
                run.clear();
                before = c;
            }
        }
        if run.is_empty() || run.len() == 1 {
            after_hex_letter = before.is_ascii_hexdigit() && !before.is_ascii_digit();
        }
    }
    found
}

/// A little of `text` before `at`, for telling where a finding was.
fn excerpt(text: &str, at: usize) -> String {
    let start = text.floor_char_boundary(at.saturating_sub(60));
    text[start..text.floor_char_boundary(at)].to_owned()
}

async fn receive(State(received): State<Arc<Mutex<Vec<u8>>>>, body: Bytes) -> &'static str {
    received.lock().unwrap().extend_from_slice(&body);
    ""
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_card_number_is_logged_traced_stored_or_echoed() {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut r = registry_client(&registry).await.unwrap();
    let issuer = register_issuer(&mut r, &operator, "iss-a", 1).await.unwrap().token;
    let dir = tempfile::tempdir().unwrap();

    // Where the service exports its spans.
    let spans = Arc::new(Mutex::new(Vec::new()));
    let collector = axum::Router::new().fallback(axum::routing::post(receive)).with_state(Arc::clone(&spans));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });

    let port = free_port();
    let (log_out, log_err) = (dir.path().join("ingest.out"), dir.path().join("ingest.err"));
    let config = bus.config();
    let trusted = registry.public_key().to_config();
    let mut ingest = serve_ingest(&config.bootstrap_servers, &config.topic_prefix, &trusted, port)
        .env("RUST_LOG", "debug")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .stdout(std::fs::File::create(&log_out).unwrap())
        .stderr(std::fs::File::create(&log_err).unwrap())
        .spawn()
        .unwrap();
    ready(port).await;

    // Through the gRPC API: each planted record refused as a card number, the clean record of its
    // batch accepted.
    let planted = planted_records();
    let mut client = IssuerIngestClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
    let mut requests_text = String::new();
    for (b, chunk) in planted.chunks(40).enumerate() {
        let mut records: Vec<v1::IngestRecord> = chunk.iter().map(|(_, r)| r.clone()).collect();
        records.push(clean(u32::try_from(b).unwrap() + 1));
        let request =
            v1::PublishRequest { issuer_id: "iss-a".into(), batch_id: format!("b{b}"), records, historical: false };
        requests_text.push_str(&format!("{request:?}"));
        let response = client.publish(authorized(request, &issuer)).await.unwrap().into_inner();
        for (i, (field, _)) in chunk.iter().enumerate() {
            let result = &response.results[i];
            assert_eq!(
                (result.reason.as_str(), result.field.as_str()),
                (Reason::PanDetected.to_string().as_str(), field.as_str()),
                "record {i} of batch {b}"
            );
        }
        assert_eq!(response.accepted, 1, "the clean record of batch {b}: {response:?}");
    }

    // Through the batch-file adapter: card numbers in the merchant, transaction id and member
    // number columns.
    let csv = dir.path().join("meisai.csv");
    let mut lines = vec!["利用日,ご利用者,利用店名・商品名,利用金額,支払区分,支払回数,売上計上日,お支払月,取引番号,会員番号,カード下4桁,MCC".to_owned()];
    let mut n = 0;
    for pan in PLANTED {
        for form in forms(pan) {
            for column in 0..3 {
                n += 1;
                let mut fields = [format!("ｾﾌﾞﾝｲﾚﾌﾞﾝ {n}"), format!("T20261101-{n:04}"), "ACC-0001".to_owned()];
                fields[column] = form.clone();
                let quoted: Vec<String> = fields.iter().map(|f| format!("\"{f}\"")).collect();
                lines.push(format!(
                    "2026/11/01,本人,{},¥498,1回払い,,2026/11/03,2026/12,{},{},0042,5499",
                    quoted[0], quoted[1], quoted[2]
                ));
            }
        }
    }
    lines
        .push("2026/11/01,本人,ﾓﾊﾞｲﾙｽｲｶ,\"3,000\",1回払い,,2026/11/02,2026/12,T20261101-9999,ACC-0001,0042,4111".into());
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let adapter = cardlink()
        .args(["adapter", "file", "--endpoint", &format!("http://127.0.0.1:{port}"), "--issuer", "iss-a"])
        .arg("--mapping")
        .arg(repo().join("crates/adapters/samples/meisai_web_utf8.toml"))
        .arg(&csv)
        .env("CARDLINK_ISSUER_KEY", &issuer)
        .env("RUST_LOG", "debug")
        .output();
    let adapter = tokio::time::timeout(WITHIN, adapter).await.unwrap().unwrap();
    let rejects = read(&dir.path().join("meisai.csv.rejects.csv"));
    let rejected = String::from_utf8_lossy(&rejects).lines().filter(|l| l.contains("PAN_DETECTED")).count();
    assert_eq!(rejected, n, "every planted line is listed as a card number:\n{}", String::from_utf8_lossy(&rejects));

    // The service stops as Kubernetes stops it, flushing its spans.
    let pid = ingest.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::time::timeout(WITHIN, ingest.wait()).await.unwrap().unwrap();

    // The scanner finds what was planted, so finding nothing below means something.
    assert!(!card_numbers_in(requests_text.as_bytes()).is_empty());
    assert!(!card_numbers_in(&read(&csv)).is_empty());
    for pan in PLANTED {
        for form in forms(pan) {
            assert!(!card_numbers_in(form.as_bytes()).is_empty(), "the scanner misses {form:?}");
        }
    }

    let mut written: Vec<(String, Vec<u8>)> = vec![
        ("ingest stdout (debug)".into(), read(&log_out)),
        ("ingest stderr (debug)".into(), read(&log_err)),
        ("adapter stdout".into(), adapter.stdout),
        ("adapter stderr".into(), adapter.stderr),
        ("rejects file".into(), rejects),
        ("checkpoint".into(), read(&dir.path().join("meisai.csv.checkpoint.json"))),
    ];
    let exported = spans.lock().unwrap().clone();
    assert!(!exported.is_empty(), "the service exported no spans");
    written.push(("exported spans".into(), exported));
    for topic in Topic::ALL {
        for record in bus.read_all(topic).await.unwrap() {
            let mut bytes = record.key.clone().unwrap_or_default();
            bytes.extend_from_slice(&record.payload);
            bytes.extend_from_slice(format!("{:?}", record.headers).as_bytes());
            written.push((format!("{topic:?} offset {}", record.offset), bytes));
        }
    }
    let mut findings = Vec::new();
    for (source, bytes) in &written {
        findings.extend(card_numbers_in(bytes).into_iter().map(|f| format!("{source}: {f}")));
    }
    assert!(findings.is_empty(), "card numbers written:\n{}", findings.join("\n"));
    eprintln!(
        "{} planted records and {n} planted file lines refused; {} sources scanned ({} bytes), no card number",
        planted.len(),
        written.len(),
        written.iter().map(|(_, b)| b.len()).sum::<usize>()
    );
}
