//! The consent flow end to end: aggregator request over gRPC, member approval on the consent
//! page over HTTP, code exchange with PKCE, revocation — real servers, real broker.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cardlink_api::status::reason;
use cardlink_api::v1;
use cardlink_bus::Topic;
use cardlink_consent::login::{ClientSecrets, LoginSettings};
use cardlink_consent::pkce;
use cardlink_consent::server::RunningConsent;
use cardlink_events::{AuditEvent, RecordType, decode_record};
use cardlink_registry::server::RunningRegistry;
use cardlink_testkit::login::{AtProvider, Browser, TEST_MEMBER, TEST_PASSWORD, connect_test_login};
use cardlink_testkit::{
    TestBus, authorized, connect, consent_client, http, register_aggregator, register_issuer, registry_client,
};
use tonic::Code;

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const REDIRECT: &str = "https://kakeibo.example/callback";

struct World {
    bus: TestBus,
    _registry: RunningRegistry,
    consent: RunningConsent,
    issuer: String,
    agg_x: String,
    agg_y: String,
    _secrets: tempfile::TempDir,
}

async fn world() -> World {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut r = registry_client(&registry).await.unwrap();
    let issuer = register_issuer(&mut r, &operator, "iss-a", 1).await.unwrap().token;
    let all = [v1::Scope::Transactions, v1::Scope::MerchantDetail, v1::Scope::Statements];
    let mut tokens = Vec::new();
    for id in ["agg-x", "agg-y"] {
        tokens.push(register_aggregator(&mut r, &operator, id).await.unwrap().token);
        connect(&mut r, &issuer, "iss-a", id, &all).await.unwrap();
    }
    // Members sign in at iss-a's OpenID Provider (oidc-provider); the client secret is in the
    // consent service's secrets directory, as a mounted Secret would be.
    let secrets = tempfile::tempdir().unwrap();
    let login = LoginSettings { client_secrets: ClientSecrets::Dir(secrets.path().to_owned()), client_key: None };
    let consent = bus.start_consent(&registry, login).await.unwrap();
    connect_test_login(&mut r, &operator, "iss-a", &consent, secrets.path()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !consent.consents().registry().read(|v| v.is_connected("iss-a", "agg-y")) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let agg_y = tokens.pop().unwrap();
    let agg_x = tokens.pop().unwrap();
    World { bus, _registry: registry, consent, issuer, agg_x, agg_y, _secrets: secrets }
}

fn ask(scopes: &[v1::Scope]) -> v1::CreateConsentRequestRequest {
    v1::CreateConsentRequestRequest {
        issuer_id: "iss-a".into(),
        scopes: scopes.iter().map(|s| *s as i32).collect(),
        accounts_hint: String::new(),
        duration_days: 90,
        history_days: 0,
        purpose: "毎月の支出を自動で家計簿に記録するため".into(),
        redirect_uri: REDIRECT.into(),
        code_challenge: pkce::challenge(VERIFIER),
        code_challenge_method: "S256".into(),
        state: "st-123".into(),
    }
}

/// The member signs in at their card company from the consent page and decides; returns the
/// redirect's query pairs.
async fn member_decides(w: &World, url: &str, decision: &str, extra: &str) -> Vec<(String, String)> {
    let path = url.split_once(&w.consent.http_addr().unwrap().to_string()).unwrap().1.to_owned();
    let browser = Browser::new();
    let page = browser.get(url).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("家計簿 agg-x") && page.body.contains("ログイン"), "{}", page.body);
    // The member sees where the decision will send them: the registered redirect URI's site.
    assert!(page.body.contains("<b class=\"destination\">https://kakeibo.example</b>"), "{}", page.body);

    let wrong = AtProvider::SignIn { login_id: TEST_MEMBER, password: "wrong" };
    let refused = browser.sign_in(&format!("{url}/login"), &[], wrong).await.unwrap();
    assert_eq!(refused.status, 401, "a wrong password is refused at the card company: {}", refused.body);
    let right = AtProvider::SignIn { login_id: TEST_MEMBER, password: TEST_PASSWORD };
    let signed_in = browser.sign_in(&format!("{url}/login"), &[], right).await.unwrap();
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    assert!(signed_in.body.contains("山田 花子") && signed_in.body.contains("ゴールド ****0042"), "{}", signed_in.body);
    let ticket = signed_in.value("ticket").unwrap();

    let form = format!(
        "ticket={}&decision={decision}{extra}",
        form_urlencoded::byte_serialize(ticket.as_bytes()).collect::<String>()
    );
    let (status, headers, _) =
        http(w.consent.http_addr().unwrap(), "POST", &format!("{path}/decision"), Some(&form)).await.unwrap();
    assert_eq!(status, 303);
    let location = headers.iter().find(|(k, _)| k == "location").unwrap().1.clone();
    assert!(location.starts_with(REDIRECT), "{location}");
    let query = location.split_once('?').unwrap().1;
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
}

#[tokio::test]
async fn a_member_grants_chosen_accounts_and_scopes_and_the_aggregator_exchanges_the_code_once() {
    let w = world().await;
    let mut c = consent_client(&w.consent).await.unwrap();
    let requested = c
        .create_consent_request(authorized(ask(&[v1::Scope::Transactions, v1::Scope::MerchantDetail]), &w.agg_x))
        .await
        .unwrap()
        .into_inner();

    // The member keeps the family card out and grants transactions only.
    let query = member_decides(
        &w,
        &requested.authorization_url,
        "approve",
        "&account=acct-1&scope=TRANSACTIONS&account=someone-elses",
    )
    .await;
    assert_eq!(param(&query, "state"), "st-123");
    let code = param(&query, "code").to_owned();
    assert!(!code.is_empty());

    let exchange = |verifier: &str, code: &str| v1::ExchangeCodeRequest {
        code: code.into(),
        code_verifier: verifier.into(),
        redirect_uri: REDIRECT.into(),
    };
    // Another aggregator cannot use the code; a wrong verifier fails.
    let e = c.exchange_code(authorized(exchange(VERIFIER, &code), &w.agg_y)).await.unwrap_err();
    assert_eq!(reason(&e).as_deref(), Some("INVALID_CODE"));
    let e = c
        .exchange_code(authorized(exchange("wrong-verifier-wrong-verifier-wrong-verifier", &code), &w.agg_x))
        .await
        .unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::PermissionDenied, Some("PKCE_MISMATCH")));

    let consent = c.exchange_code(authorized(exchange(VERIFIER, &code), &w.agg_x)).await.unwrap().into_inner();
    assert_eq!(consent.status, v1::ConsentStatus::Active as i32);
    assert_eq!(consent.scopes, vec![v1::Scope::Transactions as i32]);
    assert_eq!(consent.account_refs.len(), 1, "only the member's chosen, own account");
    assert!(consent.account_refs[0].starts_with("acc_"), "aggregators see pseudonyms, not the issuer's ids");

    // A replayed code fails.
    let e = c.exchange_code(authorized(exchange(VERIFIER, &code), &w.agg_x)).await.unwrap_err();
    assert_eq!(reason(&e).as_deref(), Some("INVALID_CODE"));

    // Another aggregator cannot see or revoke it.
    let e = c
        .get_consent(authorized(v1::GetConsentRequest { consent_id: consent.consent_id.clone() }, &w.agg_y))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .revoke_consent(authorized(
            v1::RevokeConsentRequest { consent_id: consent.consent_id.clone(), reason: String::new() },
            &w.agg_y,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // The issuer sees the member's consents with its own account ids, and revokes.
    let list = c
        .list_consents(authorized(
            v1::ListConsentsRequest { issuer_id: "iss-a".into(), member_ref: "m-001".into(), active_only: true },
            &w.issuer,
        ))
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].account_refs, vec!["acct-1".to_string()]);
    let revoked = c
        .revoke_consent(authorized(
            v1::RevokeConsentRequest { consent_id: consent.consent_id.clone(), reason: "member asked".into() },
            &w.issuer,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.status, v1::ConsentStatus::Revoked as i32);

    // The record the APPI asks for: who provided what to whom, with which consent.
    let decode = |r: &cardlink_bus::Record| decode_record::<AuditEvent>(&r.payload, RecordType::AuditEvent).unwrap();
    let audits = w
        .bus
        .read_until(Topic::Audit, Duration::from_secs(30), |rs| {
            rs.iter().any(|r| {
                decode(r).action == "consent.revoke" && decode(r).outcome == cardlink_events::AuditOutcome::Succeeded
            })
        })
        .await
        .unwrap();
    let audits: Vec<AuditEvent> = audits.iter().map(decode).collect();
    let approve = audits.iter().find(|a| a.action == "consent.approve").unwrap();
    assert_eq!(approve.member_ref.as_deref(), Some("m-001"));
    assert_eq!(approve.aggregator_id.as_deref(), Some("agg-x"));
    assert_eq!(approve.data_items, vec!["TRANSACTIONS".to_string()]);
    assert!(
        audits.iter().any(|a| a.action == "consent.exchange" && a.outcome == cardlink_events::AuditOutcome::Denied)
    );
    assert!(audits.iter().any(|a| a.action == "consent.revoke"));
}

#[tokio::test]
async fn a_member_who_denies_sends_the_aggregator_back_with_access_denied() {
    let w = world().await;
    let mut c = consent_client(&w.consent).await.unwrap();
    let requested =
        c.create_consent_request(authorized(ask(&[v1::Scope::Statements]), &w.agg_x)).await.unwrap().into_inner();
    let query = member_decides(&w, &requested.authorization_url, "deny", "").await;
    assert_eq!((param(&query, "error"), param(&query, "state")), ("access_denied", "st-123"));
    let consent = c
        .get_consent(authorized(v1::GetConsentRequest { consent_id: requested.request_id }, &w.agg_x))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(consent.status, v1::ConsentStatus::Denied as i32);
}

#[tokio::test]
async fn requests_need_a_connection_and_an_aggregator_credential() {
    let w = world().await;
    let mut c = consent_client(&w.consent).await.unwrap();
    let mut other_issuer = ask(&[v1::Scope::Transactions]);
    other_issuer.issuer_id = "iss-zz".into();
    let e = c.create_consent_request(authorized(other_issuer, &w.agg_x)).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::FailedPrecondition, Some("NOT_CONNECTED")));
    let e = c.create_consent_request(authorized(ask(&[v1::Scope::Transactions]), &w.issuer)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "an issuer cannot ask for consent");
    let e = c.create_consent_request(ask(&[v1::Scope::Transactions])).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut long = ask(&[v1::Scope::Transactions]);
    long.duration_days = 400;
    let e = c.create_consent_request(authorized(long, &w.agg_x)).await.unwrap_err();
    assert_eq!(reason(&e).as_deref(), Some("INVALID_DURATION"));
}

/// Participants × resources: who can read, list and revoke one consent of agg-x at iss-a.
#[tokio::test]
async fn security_matrix_over_participants_and_consent_operations() {
    let w = world().await;
    let mut c = consent_client(&w.consent).await.unwrap();
    let requested =
        c.create_consent_request(authorized(ask(&[v1::Scope::Transactions]), &w.agg_x)).await.unwrap().into_inner();
    let query = member_decides(&w, &requested.authorization_url, "approve", "&account=acct-1&scope=TRANSACTIONS").await;
    let exchange = v1::ExchangeCodeRequest {
        code: param(&query, "code").into(),
        code_verifier: VERIFIER.into(),
        redirect_uri: REDIRECT.into(),
    };
    let consent_id = c.exchange_code(authorized(exchange, &w.agg_x)).await.unwrap().into_inner().consent_id;

    // A second issuer, and a revoked credential of the consent's own aggregator.
    let (registry_operator_token, iss_b, revoked_agg_x, revoked_id) = {
        let reg = &w._registry;
        let operator = reg.registry().bootstrap_operator("op2").await.unwrap().token;
        let mut r = registry_client(reg).await.unwrap();
        let iss_b = register_issuer(&mut r, &operator, "iss-b", 1).await.unwrap().token;
        let extra = r
            .rotate_credential(authorized(v1::RotateCredentialRequest { participant_id: "agg-x".into() }, &w.agg_x))
            .await
            .unwrap()
            .into_inner();
        r.revoke_credential(authorized(
            v1::RevokeCredentialRequest { credential_id: extra.credential_id.clone() },
            &operator,
        ))
        .await
        .unwrap();
        (operator, iss_b, extra.token, extra.credential_id)
    };
    // The consent service learns of iss-b and the revocation through its registry view.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let known = |v: &cardlink_views::registry::RegistryView| {
        v.issuer("iss-b").is_some() && v.credential(&revoked_id).is_some_and(|c| c.revoked_at.is_some())
    };
    while !w.consent.consents().registry().read(known) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // (name, token, can read, sees it in its list)
    let rows: Vec<(&str, Option<&str>, bool, bool)> = vec![
        ("owner aggregator", Some(&w.agg_x), true, true),
        ("other aggregator", Some(&w.agg_y), false, false),
        ("owner issuer", Some(&w.issuer), true, true),
        ("other issuer", Some(&iss_b), false, false),
        ("operator", Some(&registry_operator_token), true, true),
        ("revoked credential", Some(&revoked_agg_x), false, false),
        ("no credential", None, false, false),
    ];
    for (name, token, can_read, listed) in &rows {
        let read = c.get_consent(with(v1::GetConsentRequest { consent_id: consent_id.clone() }, *token)).await;
        assert_eq!(read.is_ok(), *can_read, "{name}: read {read:?}");
        if let Ok(list) = c.list_consents(with(v1::ListConsentsRequest::default(), *token)).await {
            assert_eq!(list.into_inner().consents.iter().any(|x| x.consent_id == consent_id), *listed, "{name}: list");
        } else {
            assert!(!listed, "{name}: list refused");
        }
    }
    // Those who may not read may not revoke either; the consent stays active through all of it.
    for (name, token, can_read, _) in &rows {
        if !can_read {
            let r = c
                .revoke_consent(with(
                    v1::RevokeConsentRequest { consent_id: consent_id.clone(), reason: String::new() },
                    *token,
                ))
                .await;
            assert!(r.is_err(), "{name} revoked someone else's consent");
        }
    }
    let still = c
        .get_consent(authorized(v1::GetConsentRequest { consent_id: consent_id.clone() }, &w.agg_x))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.status, v1::ConsentStatus::Active as i32);
}

fn with<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    match token {
        Some(t) => authorized(message, t),
        None => tonic::Request::new(message),
    }
}

#[tokio::test]
async fn two_concurrent_exchanges_of_one_code_cannot_both_win() {
    let w = world().await;
    let mut c = consent_client(&w.consent).await.unwrap();
    let requested =
        c.create_consent_request(authorized(ask(&[v1::Scope::Transactions]), &w.agg_x)).await.unwrap().into_inner();
    let query = member_decides(&w, &requested.authorization_url, "approve", "&account=acct-1&scope=TRANSACTIONS").await;
    let exchange = || v1::ExchangeCodeRequest {
        code: param(&query, "code").into(),
        code_verifier: VERIFIER.into(),
        redirect_uri: REDIRECT.into(),
    };
    let (mut c1, mut c2) = (c.clone(), c.clone());
    let (a, b) = tokio::join!(
        c1.exchange_code(authorized(exchange(), &w.agg_x)),
        c2.exchange_code(authorized(exchange(), &w.agg_x))
    );
    assert_eq!([a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(), 1, "{a:?} / {b:?}");
    let loser = if a.is_ok() { b } else { a };
    assert_eq!(reason(&loser.unwrap_err()).as_deref(), Some("INVALID_CODE"));
}

#[tokio::test]
async fn a_member_sees_and_revokes_consents_on_cardlinks_member_page() {
    let w = world().await;
    let mut c = consent_client(&w.consent).await.unwrap();
    let requested =
        c.create_consent_request(authorized(ask(&[v1::Scope::Statements]), &w.agg_x)).await.unwrap().into_inner();
    member_decides(&w, &requested.authorization_url, "approve", "&account=acct-2&scope=STATEMENTS").await;
    let consent_id = requested.request_id;

    let addr = w.consent.http_addr().unwrap();
    let (status, _, body) = http(addr, "GET", "/member", None).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("iss-a"), "the issuer list offers iss-a: {body}");
    let browser = Browser::new();
    let right = AtProvider::SignIn { login_id: TEST_MEMBER, password: TEST_PASSWORD };
    let page = browser.sign_in(&format!("http://{addr}/member/login"), &[("issuer_id", "iss-a")], right).await.unwrap();
    assert_eq!(page.status, 200);
    let body = page.body;
    assert!(body.contains("家計簿 agg-x") && body.contains("有効") && body.contains(&consent_id), "{body}");
    let ticket = body.split("name=\"ticket\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();

    // A forged ticket is refused; the real one revokes.
    let forged = format!("ticket=AAAA.BBBB&consent_id={consent_id}");
    let (status, _, _) = http(addr, "POST", "/member/revoke", Some(&forged)).await.unwrap();
    assert_eq!(status, 401);
    let form = format!(
        "ticket={}&consent_id={consent_id}",
        form_urlencoded::byte_serialize(ticket.as_bytes()).collect::<String>()
    );
    let (status, _, body) = http(addr, "POST", "/member/revoke", Some(&form)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("取り消しました") && body.contains("取り消し済み"), "{body}");

    let consent = c.get_consent(authorized(v1::GetConsentRequest { consent_id }, &w.agg_x)).await.unwrap().into_inner();
    assert_eq!(consent.status, v1::ConsentStatus::Revoked as i32);
}
