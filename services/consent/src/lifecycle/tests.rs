use super::*;
use cardlink_views::consent::ConsentView;
use proptest::prelude::*;

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const REDIRECT: &str = "https://agg.example/callback";

/// What a consent view keeps of a consent, to compare with a book's record ([`recorded`]).
/// Times in microseconds: what the topic carries (a book's records here never went through it).
type Held = (ConsentStatus, String, String, Option<String>, Vec<String>, Option<i64>, Option<i64>);

fn held(c: cardlink_views::consent::Consent<'_>) -> Held {
    (
        c.status(),
        c.issuer_id().to_owned(),
        c.aggregator_id().to_owned(),
        c.member_ref().map(str::to_owned),
        c.account_refs().map(str::to_owned).collect(),
        c.granted_at().map(|t| t.timestamp_micros()),
        c.expires_at().map(|t| t.timestamp_micros()),
    )
}

/// A book's record as [`held`] sees it: member and accounts only while it grants.
fn recorded(c: &ConsentEvent) -> Held {
    let granting = c.status == ConsentStatus::Active;
    (
        c.status,
        c.issuer_id.clone(),
        c.aggregator_id.clone(),
        c.member_ref.clone().filter(|m| granting && !m.is_empty()),
        if granting { c.account_refs.clone() } else { Vec::new() },
        c.granted_at.map(|t| t.timestamp_micros()),
        c.expires_at.map(|t| t.timestamp_micros()),
    )
}

fn connected() -> ConnectionGrant {
    ConnectionGrant {
        active: true,
        scopes: Scope::ALL.to_vec(),
        redirect_uris: vec![REDIRECT.into(), "http://127.0.0.1/cb".into()],
    }
}

fn request(issuer: &str) -> NewRequest {
    NewRequest {
        issuer_id: issuer.into(),
        scopes: vec![Scope::Transactions, Scope::MerchantDetail],
        duration_days: 90,
        history_days: 0,
        purpose: "家計簿アプリでの支出管理".into(),
        redirect_uri: REDIRECT.into(),
        code_challenge: CHALLENGE.into(),
        state: Some("xyz".into()),
    }
}

fn approval() -> Approval {
    Approval { member_ref: "m-1".into(), account_refs: vec!["acct-1".into()], scopes: vec![Scope::Transactions] }
}

/// Runs a request through approval; returns the book, consent id and code.
fn approved(now: DateTime<Utc>) -> (ConsentBook, String, String) {
    let mut book = ConsentBook::new();
    let requested = book.request("agg-x", request("iss-a"), Some(&connected()), now).unwrap();
    let id = requested.consent_id.clone();
    book.apply(requested);
    let (active, code) = book.approve("iss-a", &id, approval(), now).unwrap();
    book.apply(active);
    (book, id, code)
}

#[test]
fn the_happy_path_grants_only_what_the_member_chose() {
    let now = Utc::now();
    let (mut book, id, code) = approved(now);
    let exchanged = book.exchange("agg-x", &code, VERIFIER, REDIRECT, now).unwrap();
    assert!(exchanged.code_redeemed);
    book.apply(exchanged);
    let c = book.get(&id).unwrap();
    assert_eq!(c.status, ConsentStatus::Active);
    assert_eq!(c.scopes, vec![Scope::Transactions]);
    assert_eq!(c.account_refs, vec!["acct-1".to_string()]);
    assert_eq!(c.expires_at, Some(now + TimeDelta::days(90)));
    assert!(c.is_active_at(now));
}

#[test]
fn no_connection_no_consent() {
    let book = ConsentBook::new();
    let now = Utc::now();
    assert!(matches!(book.request("agg-x", request("iss-a"), None, now), Err(ConsentError::NotConnected { .. })));
    let suspended = ConnectionGrant { active: false, ..connected() };
    assert!(matches!(
        book.request("agg-x", request("iss-a"), Some(&suspended), now),
        Err(ConsentError::NotConnected { .. })
    ));
    let narrow = ConnectionGrant { active: true, scopes: vec![Scope::Transactions], ..connected() };
    assert_eq!(
        book.request("agg-x", request("iss-a"), Some(&narrow), now),
        Err(ConsentError::ScopeNotConnected("MERCHANT_DETAIL"))
    );
}

#[test]
fn request_rules() {
    let book = ConsentBook::new();
    let now = Utc::now();
    let check = |mutate: fn(&mut NewRequest), want: &str| {
        let mut r = request("iss-a");
        mutate(&mut r);
        assert_eq!(book.request("agg-x", r, Some(&connected()), now).unwrap_err().reason().as_str(), want);
    };
    check(|r| r.duration_days = 366, "INVALID_DURATION");
    check(|r| r.duration_days = 0, "INVALID_DURATION");
    check(|r| r.history_days = 731, "INVALID_HISTORY_DAYS");
    check(|r| r.history_days = -1, "INVALID_HISTORY_DAYS");
    check(|r| r.redirect_uri = "http://agg.example/cb".into(), "INVALID_REDIRECT_URI");
    check(|r| r.redirect_uri = "http://localhost.evil.example/cb".into(), "INVALID_REDIRECT_URI");
    check(|r| r.redirect_uri = "http://localhost:1@evil.example/".into(), "INVALID_REDIRECT_URI");
    check(|r| r.redirect_uri = "https://agg.example/callback/other".into(), "INVALID_REDIRECT_URI");
    check(|r| r.redirect_uri = "https://agg.example/callback?next=evil".into(), "INVALID_REDIRECT_URI");
    check(|r| r.redirect_uri = "http://127.0.0.1:8765/elsewhere".into(), "INVALID_REDIRECT_URI");
    check(|r| r.code_challenge = "plain-verifier".into(), "INVALID_CODE_CHALLENGE");
    check(|r| r.scopes = vec![Scope::MerchantDetail], "INVALID_SCOPES");
    check(|r| r.scopes.clear(), "INVALID_SCOPES");
    check(|r| r.purpose = " ".into(), "INVALID_PURPOSE");
    check(|r| r.purpose = "目".repeat(201), "INVALID_PURPOSE");
    check(|r| r.state = Some("s".repeat(MAX_STATE_BYTES + 1)), "INVALID_STATE");
    check(|r| r.state = Some("line\nbreak".into()), "INVALID_STATE");
    let mut longest = request("iss-a");
    longest.state = Some("s".repeat(MAX_STATE_BYTES));
    assert!(book.request("agg-x", longest, Some(&connected()), now).is_ok());
    let mut local = request("iss-a");
    local.redirect_uri = "http://127.0.0.1:8765/cb".into();
    assert!(book.request("agg-x", local, Some(&connected()), now).is_ok());
}

#[test]
fn an_aggregator_may_hold_only_so_many_undecided_requests() {
    let now = Utc::now();
    let mut book = ConsentBook::new();
    let mut first = None;
    for _ in 0..MAX_PENDING_REQUESTS_PER_AGGREGATOR {
        let r = book.request("agg-x", request("iss-a"), Some(&connected()), now).unwrap();
        first.get_or_insert_with(|| r.consent_id.clone());
        book.apply(r);
    }
    let full = book.request("agg-x", request("iss-a"), Some(&connected()), now).unwrap_err();
    assert_eq!(full.reason().as_str(), "TOO_MANY_PENDING_REQUESTS");
    // Another aggregator is not affected.
    assert!(book.request("agg-y", request("iss-a"), Some(&connected()), now).is_ok());
    // A decided request frees its place.
    let denied = book.deny("iss-a", first.as_deref().unwrap(), "m-1", now).unwrap();
    book.apply(denied);
    assert!(book.request("agg-x", request("iss-a"), Some(&connected()), now).is_ok());
}

#[test]
fn granted_scopes_must_be_requested() {
    let now = Utc::now();
    let mut book = ConsentBook::new();
    let r = book.request("agg-x", request("iss-a"), Some(&connected()), now).unwrap();
    let id = r.consent_id.clone();
    book.apply(r);
    let wider = Approval { scopes: vec![Scope::Transactions, Scope::Statements], ..approval() };
    assert_eq!(book.approve("iss-a", &id, wider, now).unwrap_err().reason().as_str(), "INVALID_SCOPES");
    let none = Approval { account_refs: vec![], ..approval() };
    assert_eq!(book.approve("iss-a", &id, none, now).unwrap_err(), ConsentError::NoAccounts);
}

#[test]
fn another_issuer_cannot_approve() {
    let now = Utc::now();
    let mut book = ConsentBook::new();
    let r = book.request("agg-x", request("iss-a"), Some(&connected()), now).unwrap();
    let id = r.consent_id.clone();
    book.apply(r);
    assert_eq!(book.approve("iss-b", &id, approval(), now).unwrap_err(), ConsentError::NotYours);
    assert_eq!(book.deny("iss-b", &id, "m-1", now).unwrap_err(), ConsentError::NotYours);
}

#[test]
fn codes_are_single_use_short_lived_pkce_bound_and_per_aggregator() {
    let now = Utc::now();
    let (mut book, _, code) = approved(now);
    assert_eq!(
        book.exchange("agg-x", &code, "wrong-verifier-wrong-verifier-wrong-verifier", REDIRECT, now),
        Err(ConsentError::PkceMismatch)
    );
    assert_eq!(book.exchange("agg-y", &code, VERIFIER, REDIRECT, now), Err(ConsentError::InvalidCode));
    assert_eq!(
        book.exchange("agg-x", &code, VERIFIER, "https://evil.example/cb", now),
        Err(ConsentError::RedirectMismatch)
    );
    assert_eq!(book.exchange("agg-x", &code, VERIFIER, REDIRECT, now + CODE_TTL), Err(ConsentError::InvalidCode));
    assert_eq!(book.exchange("agg-x", "not-a-code", VERIFIER, REDIRECT, now), Err(ConsentError::InvalidCode));
    let ok = book.exchange("agg-x", &code, VERIFIER, REDIRECT, now).unwrap();
    book.apply(ok);
    assert_eq!(book.exchange("agg-x", &code, VERIFIER, REDIRECT, now), Err(ConsentError::InvalidCode), "replayed code");
}

#[test]
fn who_may_revoke() {
    let now = Utc::now();
    let (book, id, _) = approved(now);
    let member = |issuer: &str, m: &str| Actor::Member { issuer_id: issuer.into(), member_ref: m.into() };
    for actor in [
        Actor::Aggregator("agg-y".into()),
        Actor::Issuer("iss-b".into()),
        member("iss-a", "m-2"),
        member("iss-b", "m-1"),
    ] {
        assert_eq!(book.revoke(&actor, &id, now).unwrap_err(), ConsentError::NotYours, "{actor:?}");
    }
    for actor in [Actor::Aggregator("agg-x".into()), Actor::Issuer("iss-a".into()), member("iss-a", "m-1")] {
        let revoked = book.revoke(&actor, &id, now).unwrap();
        assert_eq!(revoked.status, ConsentStatus::Revoked);
        assert!(!revoked.is_active_at(now));
    }
}

#[test]
fn expiry_ends_consents_and_stale_requests() {
    let now = Utc::now();
    let (mut book, id, _) = approved(now);
    let pending = book.request("agg-x", request("iss-a"), Some(&connected()), now).unwrap();
    let pending_id = pending.consent_id.clone();
    book.apply(pending);
    assert!(book.expire(now + TimeDelta::minutes(1)).is_empty());
    let stale = book.expire(now + REQUEST_TTL);
    assert_eq!(stale.iter().map(|c| c.consent_id.as_str()).collect::<Vec<_>>(), vec![pending_id.as_str()]);
    let ended = book.expire(now + TimeDelta::days(90));
    assert!(ended.iter().any(|c| c.consent_id == id && c.status == ConsentStatus::Expired));
}

/// One step of a random history.
#[derive(Clone, Debug)]
enum Op {
    Request { aggregator: usize, issuer: usize, scopes: u8, days: i32 },
    Approve { consent: usize, issuer: usize, accounts: u8, scopes: u8 },
    Deny { consent: usize, issuer: usize },
    Revoke { consent: usize, by: usize },
    Advance { hours: i64 },
    Expire,
}

const ISSUERS: [&str; 2] = ["iss-a", "iss-b"];
const AGGREGATORS: [&str; 3] = ["agg-x", "agg-y", "agg-z"];

fn scopes_of(bits: u8) -> Vec<Scope> {
    Scope::ALL.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, s)| *s).collect()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..2usize, 0..8u8, 1..400i32).prop_map(|(aggregator, issuer, scopes, days)| Op::Request {
            aggregator,
            issuer,
            scopes,
            days
        }),
        (0..20usize, 0..2usize, 0..8u8, 0..8u8).prop_map(|(consent, issuer, accounts, scopes)| Op::Approve {
            consent,
            issuer,
            accounts,
            scopes
        }),
        (0..20usize, 0..2usize).prop_map(|(consent, issuer)| Op::Deny { consent, issuer }),
        (0..20usize, 0..6usize).prop_map(|(consent, by)| Op::Revoke { consent, by }),
        (1..3000i64).prop_map(|hours| Op::Advance { hours }),
        Just(Op::Expire),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random histories never leave a consent active that should not be, and the view built
    /// from the published events always equals the book.
    #[test]
    fn random_histories_keep_consents_honest_and_the_view_in_step(ops in proptest::collection::vec(op(), 1..60)) {
        let start = Utc::now();
        let mut now = start;
        let mut book = ConsentBook::new();
        let mut view = ConsentView::new();
        let mut ids: Vec<String> = Vec::new();
        // Ground truth kept beside the book: consents denied, revoked or expired must stay off.
        let mut ended: std::collections::HashSet<String> = std::collections::HashSet::new();
        let publish = |book: &mut ConsentBook, view: &mut ConsentView, event: ConsentEvent| {
            book.apply(event.clone());
            view.apply(event);
        };
        for op in ops {
            match op {
                Op::Request { aggregator, issuer, scopes, days } => {
                    let r = NewRequest { issuer_id: ISSUERS[issuer].into(), scopes: scopes_of(scopes), duration_days: days, ..request("") };
                    if let Ok(e) = book.request(AGGREGATORS[aggregator], r, Some(&connected()), now) {
                        ids.push(e.consent_id.clone());
                        publish(&mut book, &mut view, e);
                    }
                }
                Op::Approve { consent, issuer, accounts, scopes } => {
                    let Some(id) = ids.get(consent).cloned() else { continue };
                    let a = Approval {
                        member_ref: "m".into(),
                        account_refs: (0..3).filter(|i| accounts & (1 << i) != 0).map(|i| format!("acct-{i}")).collect(),
                        scopes: scopes_of(scopes),
                    };
                    if let Ok((e, _)) = book.approve(ISSUERS[issuer], &id, a, now) {
                        prop_assert!(!ended.contains(&id), "an ended consent was approved");
                        prop_assert!(e.scopes.iter().all(|s| e.requested_scopes.contains(s)));
                        publish(&mut book, &mut view, e);
                    }
                }
                Op::Deny { consent, issuer } => {
                    let Some(id) = ids.get(consent).cloned() else { continue };
                    if let Ok(e) = book.deny(ISSUERS[issuer], &id, "m", now) {
                        ended.insert(id);
                        publish(&mut book, &mut view, e);
                    }
                }
                Op::Revoke { consent, by } => {
                    let Some(id) = ids.get(consent).cloned() else { continue };
                    let actor = match by {
                        0..=2 => Actor::Aggregator(AGGREGATORS[by].into()),
                        3 | 4 => Actor::Issuer(ISSUERS[by - 3].into()),
                        _ => Actor::Member { issuer_id: "iss-a".into(), member_ref: "m".into() },
                    };
                    if let Ok(e) = book.revoke(&actor, &id, now) {
                        ended.insert(id);
                        publish(&mut book, &mut view, e);
                    }
                }
                Op::Advance { hours } => now += TimeDelta::hours(hours),
                Op::Expire => {
                    for e in book.expire(now) {
                        ended.insert(e.consent_id.clone());
                        publish(&mut book, &mut view, e);
                    }
                }
            }

            // Invariants after every step.
            for c in book.all() {
                if ended.contains(&c.consent_id) {
                    prop_assert!(c.status.is_final(), "{} ended but is {:?}", c.consent_id, c.status);
                }
                if c.is_active_at(now) {
                    prop_assert!(c.granted_at.is_some() && c.expires_at.is_some_and(|e| e > now));
                    prop_assert!(!c.scopes.is_empty() && !c.account_refs.is_empty());
                }
            }
            // The view equals the book: same consents, and every active grant in the view
            // matches an active consent in the book, account by account.
            let mut from_book: Vec<(String, String, String)> = book
                .all()
                .filter(|c| c.status == ConsentStatus::Active)
                .flat_map(|c| c.account_refs.iter().map(|a| (format!("{}/{a}", c.issuer_id), c.consent_id.clone(), c.aggregator_id.clone())).collect::<Vec<_>>())
                .collect();
            from_book.sort();
            let mut keys: Vec<String> = from_book.iter().map(|(k, _, _)| k.clone()).collect();
            keys.dedup();
            let mut from_view: Vec<(String, String, String)> = keys
                .iter()
                .flat_map(|k| view.grants(k).iter().map(|g| (k.clone(), g.consent_id.to_string(), g.aggregator_id.to_string())).collect::<Vec<_>>())
                .collect();
            from_view.sort();
            prop_assert_eq!(&from_book, &from_view);
            prop_assert_eq!(view.consents().count(), book.all().count());
            for aggregator in AGGREGATORS {
                let holds = book.all().any(|c| c.aggregator_id == aggregator && c.status == ConsentStatus::Active);
                prop_assert_eq!(view.has_grants(aggregator), holds, "{}", aggregator);
            }
            for c in book.all() {
                prop_assert_eq!(view.consent(&c.consent_id).map(held), Some(recorded(c)));
            }
        }
    }
}

#[test]
fn an_older_state_read_back_does_not_overwrite_a_newer_one() {
    let now = Utc::now();
    let mut book = ConsentBook::new();
    let requested = book.request("agg-x", request("iss-a"), Some(&connected()), now).unwrap();
    let id = requested.consent_id.clone();
    book.apply_at(requested.clone(), 10);
    let denied = book.deny("iss-a", &id, "m-1", now).unwrap();
    book.apply_at(denied, 11);
    // The follower reads offset 10 back after the local write of 11.
    book.apply_at(requested, 10);
    assert_eq!(book.get(&id).unwrap().status, ConsentStatus::Denied);
}

#[test]
fn the_first_redemption_in_log_order_wins() {
    let now = Utc::now();
    let (mut book, id, code) = approved(now);
    // Two exchanges computed before either was applied, as two concurrent calls would.
    let a = book.exchange("agg-x", &code, VERIFIER, REDIRECT, now).unwrap();
    let b = book.exchange("agg-x", &code, VERIFIER, REDIRECT, now).unwrap();
    // b reached the topic first (offset 20), then a (21); reading either again changes nothing.
    book.apply_at(b.clone(), 20);
    book.apply_at(a.clone(), 21);
    book.apply_at(b.clone(), 20);
    assert_eq!(book.first_redemption(&id), Some(b.event_id));
}

/// One step of two replicas racing on the same consents: each decides on its own, possibly
/// stale, book and appends its write to the shared log; a replica reads the log only when it
/// syncs.
#[derive(Clone, Debug)]
enum Race {
    Request { replica: usize },
    Sync { replica: usize, records: usize },
    Approve { replica: usize, consent: usize },
    Deny { replica: usize, consent: usize },
    Revoke { replica: usize, consent: usize },
    Exchange { replica: usize, consent: usize },
    Expire { replica: usize, hours: i64 },
    Repair { replica: usize },
}

fn race() -> impl Strategy<Value = Race> {
    prop_oneof![
        (0..2usize).prop_map(|replica| Race::Request { replica }),
        (0..2usize, 1..6usize).prop_map(|(replica, records)| Race::Sync { replica, records }),
        (0..2usize, 0..6usize).prop_map(|(replica, consent)| Race::Approve { replica, consent }),
        (0..2usize, 0..6usize).prop_map(|(replica, consent)| Race::Deny { replica, consent }),
        (0..2usize, 0..6usize).prop_map(|(replica, consent)| Race::Revoke { replica, consent }),
        (0..2usize, 0..6usize).prop_map(|(replica, consent)| Race::Exchange { replica, consent }),
        (0..2usize, prop_oneof![Just(0i64), Just(1), Just(24 * 91)])
            .prop_map(|(replica, hours)| Race::Expire { replica, hours }),
        (0..2usize).prop_map(|replica| Race::Repair { replica }),
    ]
}

/// A replica of the consent service: its book and how far it has read the log.
#[derive(Default)]
struct Replica {
    book: ConsentBook,
    read: usize,
}

impl Replica {
    fn sync(&mut self, log: &[ConsentEvent], records: usize) {
        let to = self.read.saturating_add(records).min(log.len());
        for (offset, event) in log.iter().enumerate().take(to).skip(self.read) {
            self.book.apply_at(event.clone(), i64::try_from(offset).unwrap());
        }
        self.read = to;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Two replicas writing in any interleaving: a denied, revoked or expired consent never
    /// becomes active again — not in the view the subscription service builds from the log, not
    /// in either replica's book, and not after compaction keeps only each consent's last record.
    #[test]
    fn terminal_states_are_final_whatever_order_replicas_write_in(steps in proptest::collection::vec(race(), 1..80)) {
        let start = Utc::now();
        let mut now = start;
        let mut log: Vec<ConsentEvent> = Vec::new();
        let mut replicas = [Replica::default(), Replica::default()];
        let mut truth = ConsentView::new();
        let mut ids: Vec<String> = Vec::new();
        let mut codes: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        let append = |log: &mut Vec<ConsentEvent>, truth: &mut ConsentView, event: ConsentEvent| -> Result<(), TestCaseError> {
            let before = truth.consent(&event.consent_id).map(|c| c.status());
            truth.apply(event.clone());
            let after = truth.consent(&event.consent_id).map(|c| c.status());
            if let (Some(before), Some(after)) = (before, after) {
                prop_assert!(!before.is_final() || after == before, "{before:?} became {after:?}");
            }
            log.push(event);
            Ok(())
        };
        for step in steps {
            match step {
                Race::Request { replica } => {
                    let e = replicas[replica].book.request("agg-x", request("iss-a"), Some(&connected()), now).unwrap();
                    ids.push(e.consent_id.clone());
                    append(&mut log, &mut truth, e)?;
                }
                Race::Sync { replica, records } => replicas[replica].sync(&log, records),
                Race::Approve { replica, consent } => {
                    let Some(id) = ids.get(consent) else { continue };
                    if let Ok((e, code)) = replicas[replica].book.approve("iss-a", id, approval(), now) {
                        codes.insert(id.clone(), code);
                        append(&mut log, &mut truth, e)?;
                    }
                }
                Race::Deny { replica, consent } => {
                    let Some(id) = ids.get(consent) else { continue };
                    if let Ok(e) = replicas[replica].book.deny("iss-a", id, "m-1", now) {
                        append(&mut log, &mut truth, e)?;
                    }
                }
                Race::Revoke { replica, consent } => {
                    let Some(id) = ids.get(consent) else { continue };
                    if let Ok(e) = replicas[replica].book.revoke(&Actor::Issuer("iss-a".into()), id, now) {
                        append(&mut log, &mut truth, e)?;
                    }
                }
                Race::Exchange { replica, consent } => {
                    let Some(code) = ids.get(consent).and_then(|id| codes.get(id)) else { continue };
                    if let Ok(e) = replicas[replica].book.exchange("agg-x", code, VERIFIER, REDIRECT, now) {
                        append(&mut log, &mut truth, e)?;
                    }
                }
                Race::Expire { replica, hours } => {
                    now += TimeDelta::hours(hours);
                    for e in replicas[replica].book.expire(now) {
                        append(&mut log, &mut truth, e)?;
                    }
                }
                Race::Repair { replica } => {
                    // A replica repairs only what it has read up to the end of the log.
                    replicas[replica].sync(&log, usize::MAX);
                    for e in replicas[replica].book.repairs() {
                        append(&mut log, &mut truth, e)?;
                    }
                }
            }
        }
        // Everyone reads everything; a replica repairs the log's tail; everyone reads again.
        replicas[0].sync(&log, usize::MAX);
        for e in replicas[0].book.repairs() {
            append(&mut log, &mut truth, e)?;
        }
        let mut compacted: Vec<(usize, ConsentEvent)> = Vec::new();
        for (offset, event) in log.iter().enumerate() {
            compacted.retain(|(_, e)| e.consent_id != event.consent_id);
            compacted.push((offset, event.clone()));
        }
        let mut rebuilt = ConsentView::new();
        for (_, event) in compacted {
            rebuilt.apply(event);
        }
        for replica in &mut replicas {
            replica.sync(&log, usize::MAX);
            prop_assert!(replica.book.repairs().is_empty(), "repaired already");
        }
        for id in &ids {
            let expected = truth.consent(id).map(held);
            prop_assert_eq!(rebuilt.consent(id).map(held), expected.clone(), "after compaction");
            for replica in &replicas {
                prop_assert_eq!(replica.book.get(id).map(recorded), expected.clone(), "in a replica's book");
            }
        }
    }
}
