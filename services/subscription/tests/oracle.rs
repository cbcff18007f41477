//! Three aggregators, fifty members, random consents: each aggregator receives exactly the events
//! its consents entitle it to, compared with an oracle computed independently from the inputs —
//! both live (the shared path) and from the earliest retained event (the catch-up path).

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use cardlink_api::v1;
use cardlink_events::consent::{ConsentEvent, ConsentStatus};
use cardlink_events::registry::Scope;
use cardlink_events::{Event, samples};
use cardlink_testkit::authorized;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use tonic::Streaming;

const AGGREGATORS: [&str; 3] = ["agg-kakeibo", "agg-books", "agg-points"];
const ISSUERS: [&str; 2] = ["iss-a", "iss-b"];
const MEMBERS: usize = 50;
const TRANSACTIONS_PER_MEMBER: u32 = 6;

/// A small deterministic generator (SplitMix64), so a failure reproduces from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn member(i: usize) -> (&'static str, String) {
    (ISSUERS[i % ISSUERS.len()], format!("acct-{i:02}"))
}

/// When the sample transactions occur: n seconds after this.
fn first_transaction_at() -> DateTime<Utc> {
    samples::transaction("iss-a", "acct-00", 0).occurred_at
}

/// The inputs: one consent or none per (member, aggregator), of random scopes, data window and
/// state.
fn consents(rng: &mut Rng) -> Vec<ConsentEvent> {
    let mut out = Vec::new();
    for i in 0..MEMBERS {
        let (issuer, account) = member(i);
        for aggregator in AGGREGATORS {
            if !rng.chance(55) {
                continue;
            }
            let all = [Scope::Transactions, Scope::MerchantDetail, Scope::Statements];
            let bits = 1 + rng.next() % 7;
            let scopes: Vec<Scope> =
                all.iter().enumerate().filter(|(b, _)| bits & (1 << b) != 0).map(|(_, s)| *s).collect();
            // Granted long before every event, or after the first three transactions (and after
            // the statement's closing day), which those then fall outside of.
            let granted = if rng.chance(70) {
                Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap()
            } else {
                first_transaction_at() + TimeDelta::seconds(3)
            };
            let mut consent = samples::active_consent(
                &format!("c-{i:02}-{aggregator}"),
                issuer,
                aggregator,
                &[account.as_str()],
                &scopes,
                granted,
                Utc::now() + TimeDelta::days(90),
            );
            consent.member_ref = Some(format!("m-{i:02}"));
            match rng.next() % 10 {
                0 => consent.status = ConsentStatus::Revoked,
                1 => consent.expires_at = Some(Utc::now() - TimeDelta::hours(1)),
                _ => {}
            }
            out.push(consent);
        }
    }
    out
}

fn events() -> Vec<Event> {
    let mut out = Vec::new();
    for i in 0..MEMBERS {
        let (issuer, account) = member(i);
        for n in 0..TRANSACTIONS_PER_MEMBER {
            out.push(Event::Transaction(samples::transaction(issuer, &account, n)));
        }
        out.push(Event::Statement(samples::statement(issuer, &account)));
    }
    out
}

/// What an aggregator saw of one event: (consent, pseudonymous account, event id at the issuer,
/// whether merchant detail was included).
type Seen = (String, String, String, bool);

/// The oracle: what each consent entitles its aggregator to, from the inputs alone.
fn oracle(aggregator: &str, consents: &[ConsentEvent], events: &[Event]) -> BTreeSet<Seen> {
    let now = Utc::now();
    let mut expected = BTreeSet::new();
    for c in consents.iter().filter(|c| c.aggregator_id == aggregator) {
        let live = c.status == ConsentStatus::Active && c.expires_at.is_some_and(|e| e > now);
        if !live {
            continue;
        }
        let granted = c.granted_at.unwrap();
        let ids = cardlink_auth::Pseudonyms::new(common::SECRET, aggregator);
        let pseudonym = ids.account(&c.issuer_id, &c.account_refs[0]);
        for event in events.iter().filter(|e| e.issuer_id() == c.issuer_id && e.account_ref() == c.account_refs[0]) {
            match event {
                Event::Transaction(t) if c.scopes.contains(&Scope::Transactions) && t.occurred_at >= granted => {
                    let merchant = c.scopes.contains(&Scope::MerchantDetail);
                    expected.insert((
                        c.consent_id.clone(),
                        pseudonym.clone(),
                        ids.transaction(&c.issuer_id, &t.issuer_transaction_id),
                        merchant,
                    ));
                }
                Event::Statement(s) if c.scopes.contains(&Scope::Statements) => {
                    // A statement counts from 00:00 JST on its closing day.
                    let jst = chrono::FixedOffset::east_opt(9 * 3600).unwrap();
                    let closed = s.closing_date.and_hms_opt(0, 0, 0).unwrap().and_local_timezone(jst).unwrap();
                    if closed >= granted {
                        let statement = ids.statement(&c.issuer_id, &s.statement_id);
                        expected.insert((c.consent_id.clone(), pseudonym.clone(), statement, false));
                    }
                }
                _ => {}
            }
        }
    }
    expected
}

fn seen(delivery: v1::Delivery) -> Option<Seen> {
    match delivery.event? {
        v1::delivery::Event::Transaction(t) => {
            Some((delivery.consent_id, t.account_ref, t.issuer_transaction_id, t.merchant.is_some()))
        }
        v1::delivery::Event::Statement(s) => Some((delivery.consent_id, s.account_ref, s.statement_id, false)),
        v1::delivery::Event::ConsentChange(_) => None,
    }
}

/// Reads `n` event deliveries, then keeps listening a little longer for anything extra.
async fn collect(stream: &mut Streaming<v1::SubscribeResponse>, n: usize) -> Vec<Seen> {
    let mut out = Vec::new();
    while out.len() < n {
        out.extend(common::next(stream).await.deliveries.into_iter().filter_map(seen));
    }
    while let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_millis(1500), stream.message()).await {
        out.extend(m.deliveries.into_iter().filter_map(seen));
    }
    out
}

fn as_set(seen: Vec<Seen>, aggregator: &str) -> BTreeSet<Seen> {
    let set: BTreeSet<Seen> = seen.iter().cloned().collect();
    assert_eq!(set.len(), seen.len(), "{aggregator} received duplicates on one stream");
    set
}

#[tokio::test]
async fn each_aggregator_receives_exactly_what_its_consents_entitle_it_to() {
    let seed = 0x00C0_FFEE;
    let mut rng = Rng(seed);
    let consents = consents(&mut rng);
    let events = events();
    let w = common::world(&ISSUERS, &AGGREGATORS, &consents).await;
    let mut c = w.client().await;

    let only_events = || v1::SubscribeRequest {
        kinds: vec![v1::EventKind::Transaction as i32, v1::EventKind::Statement as i32],
        ..Default::default()
    };
    let mut live = Vec::new();
    for aggregator in AGGREGATORS {
        let mut s = c.subscribe(authorized(only_events(), w.token(aggregator))).await.unwrap().into_inner();
        assert!(common::next(&mut s).await.heartbeat.as_ref().is_some_and(|h| h.caught_up));
        live.push(s);
    }
    w.publish(&events).await;

    let mut total = 0;
    for (aggregator, stream) in AGGREGATORS.iter().zip(live.iter_mut()) {
        let expected = oracle(aggregator, &consents, &events);
        assert!(!expected.is_empty(), "seed {seed:#x} gives {aggregator} nothing to receive");
        total += expected.len();
        let got = as_set(collect(stream, expected.len()).await, aggregator);
        assert_eq!(got, expected, "live stream of {aggregator} (seed {seed:#x})");

        // The same from the earliest retained event, through the catch-up path.
        let earliest =
            v1::SubscribeRequest { start: Some(v1::subscribe_request::Start::FromEarliest(true)), ..only_events() };
        let mut replay = c.subscribe(authorized(earliest, w.token(aggregator))).await.unwrap().into_inner();
        let got = as_set(collect(&mut replay, expected.len()).await, aggregator);
        assert_eq!(got, expected, "replay of {aggregator} (seed {seed:#x})");
    }
    // Not a vacuous comparison: a fair share of the 350 events went somewhere, and not all.
    assert!(total > 100 && total < events.len() * AGGREGATORS.len(), "{total} deliveries in all");
}
