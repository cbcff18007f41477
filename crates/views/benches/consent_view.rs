//! Consent view figures: memory per consent, lookup cost on the hot path, and a replica's
//! start-up from the compacted topic against a plain consumer reading the same topic.
//!
//! Run: `cargo bench -p cardlink-views --bench consent_view [-- --sizes 10000,1000000,10000000 --startup 1000000]`
//!
//! - Memory: each size is built in a child process of its own (so memory freed by a smaller
//!   view cannot hide a larger one's), from records shaped like the consent service's (36-byte
//!   ids, 32-character member refs, 16-digit account refs, 10 issuers, 3 aggregators, one
//!   account each), and the resident memory added is divided by the consents held. The
//!   allocator is the `cardlink` binary's (mimalloc).
//! - Start-up (`--startup N`, 0 to skip): N consent records are written to the consent topic of
//!   an embedded broker (on a runtime of its own); then a plain rdkafka consumer reads the topic
//!   to its end, then a consent-view follower does, each timed from its creation to caught up.
//!
//! Results are written down in docs/benchmarks.md ("Consent view").

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use cardlink_bus::{PolledConsumer, Topic};
use cardlink_events::RecordType;
use cardlink_events::consent::ConsentEvent;
use cardlink_events::registry::Scope;
use cardlink_events::samples;
use cardlink_views::consent::ConsentView;
use cardlink_views::follow;
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt as _;

/// The allocator the `cardlink` binary runs with: memory per consent is what production holds.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn resident_bytes() -> u64 {
    // Linux: second field of /proc/self/statm is resident pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn account_key(i: usize) -> String {
    format!("iss-{}/{i:016}", i % 10)
}

fn consent(i: usize, now: DateTime<Utc>) -> ConsentEvent {
    let account = format!("{i:016}");
    let mut c = samples::active_consent(
        &format!("cns_{i:032x}"),
        &format!("iss-{}", i % 10),
        &format!("agg-{}", i % 3),
        &[account.as_str()],
        &[Scope::Transactions, Scope::MerchantDetail],
        now,
        now + TimeDelta::days(365),
    );
    c.member_ref = Some(format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    c
}

struct Sized {
    consents: usize,
    added: u64,
    build: Duration,
    hit_ns: f64,
    miss_ns: f64,
}

/// Builds one view of `n` consents in this process and measures it.
fn measure(n: usize) -> Sized {
    let now = Utc::now();
    let before = resident_bytes();
    let started = Instant::now();
    let mut view = ConsentView::new();
    for i in 0..n {
        view.apply(consent(i, now));
    }
    let build = started.elapsed();
    let after = resident_bytes();
    let keys: Vec<String> = (0..n).step_by((n / 10_000).max(1)).map(account_key).collect();
    let misses: Vec<String> = (0..keys.len()).map(|i| format!("iss-{}/none-{i:011}", i % 10)).collect();
    let rounds = 200;
    let time = |keys: &[String]| {
        let t = Instant::now();
        let mut found = 0usize;
        for _ in 0..rounds {
            for k in keys {
                found += black_box(view.grants(black_box(k))).len();
            }
        }
        (t.elapsed().as_nanos() as f64 / (rounds * keys.len()) as f64, found)
    };
    let (hit_ns, found) = time(&keys);
    let (miss_ns, none) = time(&misses);
    assert_eq!((found, none), (rounds * keys.len(), 0));
    Sized { consents: view.len(), added: after.saturating_sub(before), build, hit_ns, miss_ns }
}

/// [`measure`] in a child process: `--measure-one N` prints one tab-separated line.
fn measure_in_child(n: usize) -> Sized {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--measure-one", &n.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = line.trim().split('\t').collect();
    Sized {
        consents: f[0].parse().unwrap(),
        added: f[1].parse().unwrap(),
        build: Duration::from_secs_f64(f[2].parse().unwrap()),
        hit_ns: f[3].parse().unwrap(),
        miss_ns: f[4].parse().unwrap(),
    }
}

async fn startup(bus: &cardlink_testkit::TestBus, n: usize) -> anyhow::Result<()> {
    let producer = bus.producer()?;
    let now = Utc::now();
    let t = Instant::now();
    let written = futures::stream::iter(0..n)
        .map(|i| {
            let producer = &producer;
            async move {
                let c = consent(i, now);
                producer.publish_record(RecordType::ConsentEvent, &c.consent_id, &c.event_id.to_string(), &c).await
            }
        })
        .buffer_unordered(4096)
        .fold(0usize, |n, r| async move { n + usize::from(r.is_ok()) })
        .await;
    anyhow::ensure!(written == n, "{written} of {n} consent records written");
    let write = t.elapsed();
    eprintln!("start-up: {n} records written in {:.1} s; a plain consumer reads them", write.as_secs_f64());
    let t = Instant::now();
    let plain = cardlink_bus::baseline::drain(bus.config(), Topic::Consents).await?;
    let plain_time = t.elapsed();
    anyhow::ensure!(plain.records == n as u64, "the plain consumer read {} records", plain.records);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let rss = resident_bytes();
    eprintln!("start-up: plain consumer done in {:.1} s; a consent-view follower reads them", plain_time.as_secs_f64());
    let t = Instant::now();
    let (mut view, _task) = follow::spawn(
        PolledConsumer::new(bus.config(), "bench-consent-view")?,
        Topic::Consents,
        ConsentView::new(),
        stopped,
    );
    view.caught_up().await;
    let view_time = t.elapsed();
    let rss_added = resident_bytes().saturating_sub(rss);
    anyhow::ensure!(view.read(ConsentView::len) == n, "the view holds {}", view.read(ConsentView::len));
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!();
    println!(
        "Start-up from the compacted consent topic ({n} records, {:.0} B each on average; written in {:.1} s):",
        plain.payload_bytes as f64 / n as f64,
        write.as_secs_f64()
    );
    println!();
    println!("| reader | time to the topic's end | records/s | ratio to plain |");
    println!("|---|---:|---:|---:|");
    println!(
        "| plain rdkafka consumer (no decoding) | {:.1} s | {:.0} | 1.00× |",
        plain_time.as_secs_f64(),
        rate(plain_time)
    );
    println!(
        "| consent-view follower (decode, apply) | {:.1} s | {:.0} | {:.2}× |",
        view_time.as_secs_f64(),
        rate(view_time),
        view_time.as_secs_f64() / plain_time.as_secs_f64()
    );
    println!();
    println!(
        "(resident memory added while following, view and consumer buffers: {:.0} MiB)",
        rss_added as f64 / 1048576.0
    );
    Ok(())
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(n) = arg(&args, "--measure-one") {
        let m = measure(n.parse()?);
        println!("{}\t{}\t{}\t{}\t{}", m.consents, m.added, m.build.as_secs_f64(), m.hit_ns, m.miss_ns);
        return Ok(());
    }
    let sizes: Vec<usize> = arg(&args, "--sizes")
        .unwrap_or_else(|| "10000,100000,1000000,10000000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let startup_consents: usize = arg(&args, "--startup").map_or(Ok(1_000_000), |s| s.parse())?;

    println!(
        "| active consents | resident memory added | per consent | make + apply a record | lookup (hit) | lookup (miss) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let m = measure_in_child(n);
        println!(
            "| {} | {:.1} MiB | {} B | {:.2} µs/consent | {:.0} ns | {:.0} ns |",
            m.consents,
            m.added as f64 / (1024.0 * 1024.0),
            m.added / m.consents.max(1) as u64,
            m.build.as_secs_f64() * 1e6 / m.consents.max(1) as f64,
            m.hit_ns,
            m.miss_ns
        );
    }
    if startup_consents > 0 {
        // The embedded broker on a runtime of its own, as a remote broker would be: on the
        // readers' runtime its fetches waited for whichever of their tasks held the workers.
        let broker = tokio::runtime::Builder::new_multi_thread().thread_name("broker").enable_all().build()?;
        let bus = broker.block_on(cardlink_testkit::TestBus::start())?;
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(startup(&bus, startup_consents))?;
        let _in_broker = broker.enter();
        drop(bus);
    }
    Ok(())
}
