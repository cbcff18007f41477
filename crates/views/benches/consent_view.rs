//! Consent view figures: lookup cost on the hot path and memory per consent.
//!
//! Run: `cargo bench -p cardlink-views --bench consent_view`
//! Builds views of 10,000 to 1,000,000 active consents (one account each, 3 aggregators),
//! then times `grants()` lookups of present and absent accounts and reads the process's
//! resident memory before and after building. Results are written down in docs/benchmarks.md.

use std::hint::black_box;
use std::time::Instant;

use cardlink_events::consent::ConsentEvent;
use cardlink_events::registry::Scope;
use cardlink_events::samples;
use cardlink_views::consent::ConsentView;
use chrono::{TimeDelta, Utc};

fn resident_bytes() -> u64 {
    // Linux: second field of /proc/self/statm is resident pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn consent(i: usize) -> ConsentEvent {
    let now = Utc::now();
    let account = format!("acct-{i:08}");
    samples::active_consent(
        &format!("cns_{i:032x}"),
        &format!("iss-{}", i % 10),
        &format!("agg-{}", i % 3),
        &[account.as_str()],
        &[Scope::Transactions, Scope::MerchantDetail],
        now,
        now + TimeDelta::days(365),
    )
}

fn main() {
    println!("| active consents | resident memory added | per consent | lookup (hit) | lookup (miss) |");
    println!("|---:|---:|---:|---:|---:|");
    for n in [10_000usize, 100_000, 1_000_000] {
        let before = resident_bytes();
        let mut view = ConsentView::new();
        for i in 0..n {
            view.apply(consent(i));
        }
        let after = resident_bytes();
        let keys: Vec<String> =
            (0..n).step_by((n / 10_000).max(1)).map(|i| format!("iss-{}/acct-{i:08}", i % 10)).collect();
        let misses: Vec<String> = (0..keys.len()).map(|i| format!("iss-{}/none-{i:08}", i % 10)).collect();
        let rounds = 200;
        let t = Instant::now();
        let mut found = 0usize;
        for _ in 0..rounds {
            for k in &keys {
                found += black_box(view.grants(black_box(k))).len();
            }
        }
        let hit = t.elapsed().as_nanos() as f64 / (rounds * keys.len()) as f64;
        let t = Instant::now();
        for _ in 0..rounds {
            for k in &misses {
                found += black_box(view.grants(black_box(k))).len();
            }
        }
        let miss = t.elapsed().as_nanos() as f64 / (rounds * misses.len()) as f64;
        assert!(found >= rounds * keys.len());
        let added = after.saturating_sub(before);
        println!(
            "| {n} | {:.1} MiB | {} B | {hit:.0} ns | {miss:.0} ns |",
            added as f64 / (1024.0 * 1024.0),
            added / n as u64
        );
        drop(view);
    }
}
