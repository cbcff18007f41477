//! Avro encode and decode cost per event: the work ingest does once per record and every reader
//! of the bus does once per record.
//!
//! Run: `cargo bench -p cardlink-events --bench codec`. Results are in docs/benchmarks.md.

use std::hint::black_box;
use std::time::Instant;

use cardlink_events::{Event, decode, encode, samples};

fn time(what: &str, n: u32, mut f: impl FnMut(u32)) {
    for i in 0..n / 10 {
        f(i); // warm up
    }
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    let per = start.elapsed() / n;
    println!("| {what} | {:.2} µs |", per.as_secs_f64() * 1e6);
}

fn main() {
    const N: u32 = 100_000;
    let events = [
        ("transaction", Event::Transaction(samples::transaction("iss-a", "acct-1", 1))),
        (
            "foreign instalment transaction",
            Event::Transaction(samples::foreign_installment_transaction("iss-a", "acct-1")),
        ),
        ("statement", Event::Statement(samples::statement("iss-a", "acct-1"))),
    ];
    println!("| operation | per event |");
    println!("|---|---:|");
    for (name, event) in &events {
        let bytes = encode(event).map(|e| e.bytes).unwrap_or_default();
        time(&format!("encode {name} ({} bytes)", bytes.len()), N, |_| {
            black_box(encode(black_box(event)).is_ok());
        });
        time(&format!("decode {name}"), N, |_| {
            black_box(decode(black_box(&bytes)).is_ok());
        });
    }
}
