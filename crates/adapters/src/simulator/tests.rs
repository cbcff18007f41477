use std::collections::HashMap;

use super::*;

fn sim(seed: u64) -> Simulator {
    Simulator::new(SimConfig::new("iss-sim", seed, 50))
}

#[test]
fn the_same_seed_gives_the_same_events() {
    assert_eq!(sim(7).take(2_000), sim(7).take(2_000));
    assert_ne!(sim(7).take(50), sim(8).take(50));
}

#[test]
fn every_event_passes_ingest_validation() {
    let mut s = sim(1);
    for event in s.take(20_000) {
        let record = cardlink_api::convert::ingest_record(&event);
        if let Err(r) = cardlink_ingest::validate::validate_record("iss-sim", &record) {
            panic!("{event:?} rejected: {r:?}");
        }
    }
}

#[test]
fn authorisations_post_later_under_the_same_transaction_id() {
    let mut s = sim(2);
    let events = s.take(20_000);
    let mut authorized: HashMap<String, usize> = HashMap::new();
    let mut posted = 0;
    for (i, e) in events.iter().enumerate() {
        if let ev::Event::Transaction(t) = e {
            match t.kind {
                ev::TransactionKind::Authorized => {
                    assert!(authorized.insert(t.issuer_transaction_id.clone(), i).is_none(), "ids are unique");
                }
                ev::TransactionKind::Posted => {
                    let at = authorized.get(&t.issuer_transaction_id).expect("posted after its authorisation");
                    assert!(*at < i);
                    assert!(t.posted_date.expect("posted date") >= t.local_date);
                    posted += 1;
                }
                ev::TransactionKind::Refunded => {
                    let original = t.original_transaction_id.as_ref().expect("refund names its original");
                    assert!(authorized.contains_key(original));
                    assert!(t.amount.minor_units <= 0);
                }
                ev::TransactionKind::Reversed => {}
            }
        }
    }
    assert!(posted > 5_000, "only {posted} postings");
}

#[test]
fn the_mix_covers_what_card_data_holds() {
    let mut s = sim(3);
    let events = s.take(30_000);
    let txs: Vec<&ev::CardTransaction> =
        events.iter().filter_map(|e| if let ev::Event::Transaction(t) = e { Some(t) } else { None }).collect();
    let kinds: std::collections::HashSet<_> = txs.iter().map(|t| t.kind).collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    let methods: std::collections::HashSet<_> = txs.iter().map(|t| t.payment.method).collect();
    assert!(methods.len() >= 5, "{methods:?}");
    assert!(txs.iter().any(|t| t.foreign.is_some()));
    assert!(txs.iter().any(|t| t.card.holder == ev::CardHolder::Family));
    assert!(txs.iter().any(|t| t.channel == ev::Channel::Recurring));
}

#[test]
fn statements_close_on_the_15th_and_are_paid_on_the_10th() {
    let mut s = sim(4);
    let statements: Vec<ev::Statement> = s
        .take(60_000)
        .into_iter()
        .filter_map(|e| if let ev::Event::Statement(st) = e { Some(st) } else { None })
        .collect();
    assert!(statements.len() >= 50, "one per account per month: {}", statements.len());
    for st in &statements {
        assert_eq!(st.closing_date.day(), CLOSING_DAY);
        assert_eq!(st.period_start.day(), CLOSING_DAY + 1);
        assert_eq!(st.due_date.day(), PAYMENT_DAY);
        assert!(st.due_date > st.closing_date);
        let parts: i64 = st.breakdown.iter().map(|b| b.amount.minor_units).sum();
        assert_eq!(parts, st.total.minor_units);
    }
}

/// Keeps what it is given.
#[derive(Default)]
struct Kept(Vec<ev::Event>);

impl EventSink for Kept {
    async fn publish(&mut self, events: &[ev::Event]) -> Result<Vec<SinkOutcome>, SinkError> {
        self.0.extend_from_slice(events);
        Ok(events.iter().map(|_| SinkOutcome::Accepted).collect())
    }
}

fn when(e: &ev::Event) -> DateTime<Utc> {
    match e {
        ev::Event::Transaction(t) => t.occurred_at,
        ev::Event::Statement(s) => {
            normalize::jst().from_local_datetime(&s.closing_date.and_time(chrono::NaiveTime::MIN)).unwrap().to_utc()
        }
    }
}

#[tokio::test]
async fn a_past_quarter_at_a_households_pace_then_live_goes_on_where_it_ended() {
    let start = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    let until = start + TimeDelta::days(90);
    let mut s = Simulator::new(SimConfig { start, ..SimConfig::new("iss-sim", 5, 50) });
    s.set_daily_events(Some(1.5));
    let mut past = Kept::default();
    let (accepted, duplicate, rejected) = publish_until(&mut s, &mut past, until, 500).await.unwrap();
    assert_eq!((accepted as usize, duplicate, rejected), (past.0.len(), 0, 0));
    // 50 accounts × 90 days × 1.5, give or take; three closings with a statement per account.
    let statements = past.0.iter().filter(|e| matches!(e, ev::Event::Statement(_))).count();
    let transactions = past.0.len() - statements;
    assert!((5_500..8_000).contains(&transactions), "{transactions} transactions");
    assert_eq!(statements, 150);
    let last_gap = TimeDelta::seconds(2 * 86_400 / 75);
    assert!(past.0.iter().all(|e| when(e) >= start - TimeDelta::days(1) && when(e) < until + last_gap));

    // Live goes on from the same simulator: busy again, new ids, the past's purchases post.
    s.set_daily_events(None);
    let live = s.take(2_000);
    let ids: std::collections::HashSet<&str> = past
        .0
        .iter()
        .filter_map(|e| match e {
            ev::Event::Transaction(t) if t.kind == ev::TransactionKind::Authorized => {
                Some(t.issuer_transaction_id.as_str())
            }
            _ => None,
        })
        .collect();
    let mut posted_from_the_past = 0;
    for e in &live {
        if let ev::Event::Transaction(t) = e {
            match t.kind {
                ev::TransactionKind::Authorized => assert!(!ids.contains(t.issuer_transaction_id.as_str())),
                ev::TransactionKind::Posted if ids.contains(t.issuer_transaction_id.as_str()) => {
                    posted_from_the_past += 1;
                }
                _ => {}
            }
        }
    }
    assert!(posted_from_the_past > 0, "authorisations pending at the end of the past post live");
    assert!(s.clock() - until < TimeDelta::days(2), "2,000 busy events are about a day and a half");
}
