//! Kill the stream at random points a hundred times, resuming each time from the last cursor
//! received, while an issuer keeps publishing: nothing is missed and nothing is repeated.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cardlink_api::v1;
use cardlink_events::registry::Scope;
use cardlink_events::{Event, samples};
use cardlink_testkit::authorized;
use chrono::{TimeZone, Utc};

const KILLS: usize = 100;
const ACCOUNTS: [&str; 3] = ["acct-1", "acct-2", "acct-3"];

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        // SplitMix64; deterministic so a failure reproduces.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

fn transaction_id(d: &v1::Delivery) -> Option<String> {
    match &d.event {
        Some(v1::delivery::Event::Transaction(t)) => Some(t.issuer_transaction_id.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn killing_the_stream_a_hundred_times_loses_and_repeats_nothing() {
    let granted = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap();
    // Two accounts consented; the third is not and must never show up.
    let consent = samples::active_consent(
        "c-x",
        "iss-a",
        "agg-x",
        &ACCOUNTS[..2],
        &[Scope::Transactions],
        granted,
        Utc::now() + chrono::TimeDelta::days(30),
    );
    let w = common::world(&["iss-a"], &["agg-x"], &[consent]).await;
    let token = w.token("agg-x").to_owned();

    // The issuer publishes in small bursts the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(Mutex::new(Vec::new()));
    let publisher = {
        let (producer, stop, published) = (w.bus.producer().unwrap(), Arc::clone(&stop), Arc::clone(&published));
        tokio::spawn(async move {
            let n = AtomicU32::new(0);
            while !stop.load(Ordering::Relaxed) {
                let burst: Vec<Event> = (0..6)
                    .map(|i| {
                        let account = ACCOUNTS[i % ACCOUNTS.len()];
                        Event::Transaction(samples::transaction("iss-a", account, n.fetch_add(1, Ordering::Relaxed)))
                    })
                    .collect();
                for sent in futures::future::join_all(burst.iter().map(|e| producer.publish(e, None))).await {
                    sent.unwrap();
                }
                published.lock().unwrap().extend(burst.iter().filter_map(|e| {
                    match e {
                        Event::Transaction(t) if t.account_ref != "acct-3" => Some(
                            cardlink_auth::Pseudonyms::new(common::SECRET, "agg-x")
                                .transaction("iss-a", &t.issuer_transaction_id),
                        ),
                        _ => None,
                    }
                }));
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };

    let mut c = w.client().await;
    let mut rng = Rng(0x5EED);
    let mut cursor: Option<String> = None;
    let mut received: Vec<String> = Vec::new();
    // Where the kills landed: before the stream caught up (heartbeat), or after.
    let (mut killed_catching_up, mut killed_live) = (0, 0);
    for _ in 0..KILLS {
        let request = match &cursor {
            Some(cursor) => common::start_after(cursor),
            None => v1::SubscribeRequest {
                start: Some(v1::subscribe_request::Start::FromEarliest(true)),
                ..Default::default()
            },
        };
        let mut stream = c.subscribe(authorized(request, &token)).await.unwrap().into_inner();
        // Read a random number of messages (sometimes none), then cut the stream.
        // Mostly a few messages in; every third stream reads on long enough to reach the live tail.
        let messages = if rng.below(3) == 0 { 30 + rng.below(40) } else { rng.below(12) };
        let mut live = false;
        for _ in 0..messages {
            let Ok(message) = tokio::time::timeout(Duration::from_secs(2), stream.message()).await else { break };
            let message = message.unwrap().expect("the stream stays open until we cut it");
            live |= message.heartbeat.is_some();
            received.extend(message.deliveries.iter().filter_map(transaction_id));
            if !message.cursor.is_empty() {
                cursor = Some(message.cursor);
            }
        }
        drop(stream);
        if live {
            killed_live += 1;
        } else {
            killed_catching_up += 1;
        }
        // Sometimes let events pile up while disconnected.
        if rng.below(4) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let published = published.lock().unwrap().clone();

    // A last resume picks up everything still outstanding.
    let mut stream =
        c.subscribe(authorized(common::start_after(cursor.as_deref().unwrap()), &token)).await.unwrap().into_inner();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for id in &received {
        *counts.entry(id.clone()).or_default() += 1;
    }
    let deadline = tokio::time::Instant::now() + common::WITHIN;
    while published.iter().any(|id| !counts.contains_key(id)) && tokio::time::Instant::now() < deadline {
        let Ok(message) = tokio::time::timeout_at(deadline, stream.message()).await else { break };
        let message = message.unwrap().expect("stream open");
        for id in message.deliveries.iter().filter_map(transaction_id) {
            *counts.entry(id).or_default() += 1;
        }
    }

    let missing: Vec<_> = published.iter().filter(|id| !counts.contains_key(*id)).collect();
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let foreign = counts.keys().filter(|id| !published.contains(*id)).count();
    assert!(missing.is_empty(), "missed {} of {}: {missing:?}", missing.len(), published.len());
    // Each delivery carries the cursor just after it, so even at-least-once needs no repeats here.
    assert!(repeated.is_empty(), "repeated {repeated:?}");
    assert_eq!(foreign, 0, "events of the unconsented account were delivered");
    assert!(published.len() > 200, "only {} events published", published.len());
    assert!(
        killed_catching_up > 10 && killed_live > 10,
        "kills while catching up: {killed_catching_up}, while live: {killed_live}"
    );
}
