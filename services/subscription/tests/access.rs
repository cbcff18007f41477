//! What was provided to whom is on the record: deliveries become `subscription.deliver` tallies
//! on the audit topic, and the member sees them through their card company (gRPC) and on their
//! page.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cardlink_api::status::reason;
use cardlink_api::v1;
use cardlink_consent::login::{ClientSecrets, LoginSettings};
use cardlink_events::registry::Scope;
use cardlink_events::{Event, samples};
use cardlink_testkit::login::{AtProvider, Browser, TEST_MEMBER, TEST_PASSWORD, connect_test_login};
use cardlink_testkit::{authorized, consent_client, registry_client};
use chrono::{TimeZone, Utc};
use common::WITHIN;
use tonic::Code;

#[tokio::test]
async fn deliveries_are_recorded_and_shown_in_the_members_access_history() {
    let granted = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap();
    let consent = samples::active_consent(
        "c-x",
        "iss-a",
        "agg-x",
        &["acct-1"],
        &[Scope::Transactions, Scope::MerchantDetail],
        granted,
        Utc::now() + chrono::TimeDelta::days(30),
    );
    let w = common::world(&["iss-a"], &["agg-x"], &[consent]).await;
    // The member signs in at iss-a's OpenID Provider (the test provider's m-001 holds acct-1).
    let secrets = tempfile::tempdir().unwrap();
    let login = LoginSettings { client_secrets: ClientSecrets::Dir(secrets.path().to_owned()), client_key: None };
    let consent_service = w.bus.start_consent(&w.registry, login).await.unwrap();
    let mut r = registry_client(&w.registry).await.unwrap();
    connect_test_login(&mut r, w.token("iss-a"), "iss-a", &consent_service, secrets.path()).await.unwrap();

    let mut c = w.client().await;
    let mut stream =
        c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap().into_inner();
    common::next(&mut stream).await;
    w.publish(&(0..3).map(|n| Event::Transaction(samples::transaction("iss-a", "acct-1", n))).collect::<Vec<_>>())
        .await;
    let mut delivered = 0;
    while delivered < 3 {
        delivered += common::next(&mut stream).await.deliveries.len();
    }
    drop(stream);

    // Stopping the service writes what it has not written yet.
    let common::World { service, tokens, .. } = w;
    service.shutdown().await;

    let mut consents = consent_client(&consent_service).await.unwrap();
    let ask = |member: &str| v1::ListAccessHistoryRequest { member_ref: member.into() };
    let deadline = tokio::time::Instant::now() + WITHIN;
    let entries = loop {
        let entries = consents
            .list_access_history(authorized(ask("m-001"), &tokens["iss-a"]))
            .await
            .unwrap()
            .into_inner()
            .entries;
        if entries.len() == 2 || tokio::time::Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut summary: Vec<_> =
        entries.iter().map(|e| (e.aggregator_id.as_str(), e.consent_id.as_str(), e.data_item, e.count)).collect();
    summary.sort_unstable();
    assert_eq!(
        summary,
        [("agg-x", "c-x", v1::Scope::Transactions as i32, 3), ("agg-x", "c-x", v1::Scope::MerchantDetail as i32, 3)]
    );
    assert!(entries.iter().all(|e| e.first_at.is_some() && e.last_at.is_some() && !e.day.is_empty()));

    // Only the member's card company may ask, and must say for whom.
    let e = consents.list_access_history(authorized(ask("m-001"), &tokens["agg-x"])).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::PermissionDenied, Some("ISSUERS_ONLY")));
    let e = consents.list_access_history(authorized(ask(""), &tokens["iss-a"])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let other = consents.list_access_history(authorized(ask("m-002"), &tokens["iss-a"])).await.unwrap().into_inner();
    assert!(other.entries.is_empty());

    // The member's own page shows it.
    let start = format!("http://{}/member/login", consent_service.http_addr().unwrap());
    let member = AtProvider::SignIn { login_id: TEST_MEMBER, password: TEST_PASSWORD };
    let page = Browser::new().sign_in(&start, &[("issuer_id", "iss-a")], member).await.unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    let history = page.body.split("id=\"access-history\"").nth(1).expect("an access history table");
    assert!(history.contains("家計簿 agg-x") && history.contains("3 件"), "{history}");
}
