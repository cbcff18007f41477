//! The registry through its real gRPC server, on a real broker.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cardlink_api::status::reason;
use cardlink_api::v1;
use cardlink_bus::Topic;
use cardlink_events::{AuditEvent, RecordType, decode_record};
use cardlink_testkit::{TestBus, authorized, http, registry_client};
use tonic::Code;

type Client = v1::registry_client::RegistryClient<tonic::transport::Channel>;

async fn register(client: &mut Client, operator: &str) -> (String, String) {
    let issuer = client
        .register_issuer(authorized(
            v1::RegisterIssuerRequest {
                issuer_id: "iss-a".into(),
                name: "Aカード".into(),
                annual_volume_jpy: 12_000_000_000_000,
            },
            operator,
        ))
        .await
        .unwrap()
        .into_inner();
    let aggregator = client
        .register_aggregator(authorized(
            v1::RegisterAggregatorRequest {
                aggregator_id: "agg-x".into(),
                name: "家計簿X".into(),
                registration_number: "関東財務局長（電代）第1号".into(),
                contact: "ops@agg-x.example".into(),
                redirect_uris: vec!["https://agg-x.example/callback".into()],
            },
            operator,
        ))
        .await
        .unwrap()
        .into_inner();
    (issuer.credential.unwrap().token, aggregator.credential.unwrap().token)
}

fn enable(issuer: &str, aggregator: &str) -> v1::EnableConnectionRequest {
    v1::EnableConnectionRequest {
        issuer_id: issuer.into(),
        aggregator_id: aggregator.into(),
        scopes: vec![v1::Scope::Transactions as i32, v1::Scope::Statements as i32],
    }
}

#[tokio::test]
async fn an_issuer_connects_an_aggregator_and_the_public_list_shows_it() {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut client = registry_client(&registry).await.unwrap();
    let (issuer_token, aggregator_token) = register(&mut client, &operator).await;

    let connection =
        client.enable_connection(authorized(enable("iss-a", "agg-x"), &issuer_token)).await.unwrap().into_inner();
    assert_eq!(connection.status, v1::ConnectionStatus::Active as i32);

    // Public: no credential needed.
    let list = client
        .list_connections(v1::ListConnectionsRequest { issuer_id: String::new(), active_only: true })
        .await
        .unwrap();
    let list = list.into_inner().connections;
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].issuer_id.as_str(), list[0].aggregator_id.as_str()), ("iss-a", "agg-x"));

    // Either side may suspend.
    let suspend = v1::SuspendConnectionRequest {
        issuer_id: "iss-a".into(),
        aggregator_id: "agg-x".into(),
        reason: "契約終了".into(),
    };
    client.suspend_connection(authorized(suspend, &aggregator_token)).await.unwrap();
    let list = client
        .list_connections(v1::ListConnectionsRequest { issuer_id: "iss-a".into(), active_only: true })
        .await
        .unwrap();
    assert!(list.into_inner().connections.is_empty());

    // Every change is audited: three credentials (operator, issuer, aggregator), two
    // registrations, the connection enabled and suspended. Partitions interleave, so read all.
    let audits = bus.read(Topic::Audit, 7, Duration::from_secs(30)).await.unwrap();
    let actions: Vec<String> = audits
        .iter()
        .map(|r| decode_record::<AuditEvent>(&r.payload, RecordType::AuditEvent).unwrap().action)
        .collect();
    for action in [
        "registry.issuer.register",
        "registry.aggregator.register",
        "registry.connection.enable",
        "registry.connection.suspend",
        "credential.issue",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action} not audited: {actions:?}");
    }
}

#[tokio::test]
async fn participants_can_only_do_what_their_role_allows() {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut client = registry_client(&registry).await.unwrap();
    let (issuer_token, aggregator_token) = register(&mut client, &operator).await;
    client
        .register_issuer(authorized(
            v1::RegisterIssuerRequest { issuer_id: "iss-b".into(), name: "Bカード".into(), annual_volume_jpy: 1 },
            &operator,
        ))
        .await
        .unwrap();

    let denied = |r: Result<tonic::Response<v1::Connection>, tonic::Status>| {
        let e = r.expect_err("must be refused");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    };
    // An issuer cannot manage another issuer's connections; an aggregator cannot enable one.
    denied(client.enable_connection(authorized(enable("iss-b", "agg-x"), &issuer_token)).await);
    denied(client.enable_connection(authorized(enable("iss-a", "agg-x"), &aggregator_token)).await);
    // Only the operator registers participants.
    let e = client
        .register_aggregator(authorized(
            v1::RegisterAggregatorRequest {
                aggregator_id: "agg-y".into(),
                name: "Y".into(),
                registration_number: "1".into(),
                contact: String::new(),
                redirect_uris: Vec::new(),
            },
            &issuer_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // No credential, or a forged one.
    let e = client.enable_connection(enable("iss-a", "agg-x")).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::Unauthenticated, Some("CREDENTIAL_MISSING")));
    let forged = format!("{}x", &issuer_token[..issuer_token.len() - 1]);
    let e = client.enable_connection(authorized(enable("iss-a", "agg-x"), &forged)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_revoked_credential_stops_working_at_once_and_a_rotated_one_works() {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut client = registry_client(&registry).await.unwrap();
    let (issuer_token, _) = register(&mut client, &operator).await;

    let rotated = client
        .rotate_credential(authorized(v1::RotateCredentialRequest { participant_id: "iss-a".into() }, &issuer_token))
        .await
        .unwrap()
        .into_inner();
    // The old credential's id is in its token's payload; revoke it with the new credential.
    let verifier_claims = {
        let payload = issuer_token.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
    };
    let old_id = verifier_claims["cid"].as_str().unwrap().to_owned();
    client
        .revoke_credential(authorized(v1::RevokeCredentialRequest { credential_id: old_id }, &rotated.token))
        .await
        .unwrap();

    let e = client.enable_connection(authorized(enable("iss-a", "agg-x"), &issuer_token)).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::Unauthenticated, Some("CREDENTIAL_REVOKED")));
    client.enable_connection(authorized(enable("iss-a", "agg-x"), &rotated.token)).await.unwrap();
}

#[tokio::test]
async fn a_restarted_registry_rebuilds_from_the_topic() {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut client = registry_client(&registry).await.unwrap();
    let (issuer_token, _) = register(&mut client, &operator).await;
    client.enable_connection(authorized(enable("iss-a", "agg-x"), &issuer_token)).await.unwrap();
    registry.shutdown().await.unwrap();

    let (again, _) = bus.start_registry().await.unwrap();
    assert!(again.view().read(|v| v.is_connected("iss-a", "agg-x")));
    assert_eq!(again.view().read(|v| v.issuer("iss-a").map(|i| i.annual_volume_jpy)), Some(12_000_000_000_000));
}

#[tokio::test]
async fn the_goal_counts_issuers_that_publish_and_are_connected() {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut client = registry_client(&registry).await.unwrap();
    let (issuer_token, _) = register(&mut client, &operator).await;
    client
        .register_issuer(authorized(
            v1::RegisterIssuerRequest {
                issuer_id: "iss-b".into(),
                name: "Bカード".into(),
                annual_volume_jpy: 3_000_000_000_000,
            },
            &operator,
        ))
        .await
        .unwrap();
    client.enable_connection(authorized(enable("iss-a", "agg-x"), &issuer_token)).await.unwrap();

    // Connected but not yet publishing: nothing counts.
    let goal = client.get_goal(v1::GetGoalRequest {}).await.unwrap().into_inner();
    assert_eq!((goal.total_volume_jpy, goal.connected_volume_jpy), (15_000_000_000_000, 0));
    assert_eq!(goal.target_share, 0.9);

    // iss-a publishes: its 取扱高 counts once the registry has seen the event.
    let producer = bus.producer().unwrap();
    let event = cardlink_events::Event::Transaction(cardlink_events::samples::transaction("iss-a", "acct-1", 1));
    producer.publish(&event, None).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let goal = client.get_goal(v1::GetGoalRequest {}).await.unwrap().into_inner();
        if goal.connected_volume_jpy == 12_000_000_000_000 {
            assert!((goal.share - 0.8).abs() < 1e-9);
            let a = goal.issuers.iter().find(|i| i.issuer_id == "iss-a").unwrap();
            assert!(a.publishing_live && a.counts_toward_goal && a.active_connections == 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the goal never saw iss-a publish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The public pages say the same: the goal page and its JSON, and the transparency list.
    let pages = registry.http_addr().unwrap();
    let (status, _, goal_page) = http(pages, "GET", "/goal", None).await.unwrap();
    assert_eq!(status, 200);
    assert!(goal_page.contains("<div class=\"figure\" id=\"share\">80.0%</div>"), "{goal_page}");
    assert!(goal_page.contains("12.0兆円") && goal_page.contains("15.0兆円"), "{goal_page}");
    let counted = goal_page.split("data-issuer=\"iss-a\"").nth(1).unwrap().split("</tr>").next().unwrap();
    assert!(counted.contains("算入") && counted.contains("配信中"), "{counted}");
    let (_, _, json) = http(pages, "GET", "/goal.json", None).await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["connected_volume_jpy"], 12_000_000_000_000_i64);
    assert_eq!(json["issuers"][0]["issuer_id"], "iss-a");
    let (status, _, listed) = http(pages, "GET", "/transparency", None).await.unwrap();
    assert_eq!(status, 200);
    let a = listed.split("data-issuer=\"iss-a\"").nth(1).unwrap().split("</section>").next().unwrap();
    assert!(a.contains("<td>家計簿X</td>") && a.contains("関東財務局長"), "{a}");
    let b = listed.split("data-issuer=\"iss-b\"").nth(1).unwrap().split("</section>").next().unwrap();
    assert!(b.contains("API による提供先はまだありません"), "{b}");
}

#[tokio::test]
async fn a_suspended_aggregator_is_refused_until_reactivated_while_public_calls_stay_open() {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut client = registry_client(&registry).await.unwrap();
    let (_, aggregator_token) = register(&mut client, &operator).await;
    let set_status = |status: v1::AggregatorStatus| {
        authorized(v1::SetAggregatorStatusRequest { aggregator_id: "agg-x".into(), status: status as i32 }, &operator)
    };
    let rotate = || authorized(v1::RotateCredentialRequest { participant_id: "agg-x".into() }, &aggregator_token);

    client.set_aggregator_status(set_status(v1::AggregatorStatus::Suspended)).await.unwrap();
    let e = client.rotate_credential(rotate()).await.unwrap_err();
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::PermissionDenied, Some("PARTICIPANT_SUSPENDED")));
    // The transparency list is public: a refused credential on it changes nothing.
    let listed = authorized(v1::ListConnectionsRequest::default(), &aggregator_token);
    client.list_connections(listed).await.unwrap();

    client.set_aggregator_status(set_status(v1::AggregatorStatus::Active)).await.unwrap();
    client.rotate_credential(rotate()).await.unwrap();
}

/// One id, one participant: an aggregator cannot take an issuer's id (or the reverse), which would
/// make credentials and audit records ambiguous.
#[tokio::test]
async fn an_id_names_one_participant_whatever_its_role() {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut client = registry_client(&registry).await.unwrap();
    cardlink_testkit::register_issuer(&mut client, &operator, "dual", 1).await.unwrap();
    let e = cardlink_testkit::register_aggregator(&mut client, &operator, "dual").await.unwrap_err();
    let status = e.downcast_ref::<tonic::Status>().expect("a gRPC refusal");
    assert_eq!((status.code(), reason(status).as_deref()), (Code::AlreadyExists, Some("ALREADY_EXISTS")));
    cardlink_testkit::register_aggregator(&mut client, &operator, "agg-only").await.unwrap();
    let e = cardlink_testkit::register_issuer(&mut client, &operator, "agg-only", 1).await.unwrap_err();
    let status = e.downcast_ref::<tonic::Status>().expect("a gRPC refusal");
    assert_eq!(status.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn an_issuer_registers_where_its_members_sign_in_and_nothing_unsafe_is_accepted() {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut client = registry_client(&registry).await.unwrap();
    let (issuer_token, aggregator_token) = register(&mut client, &operator).await;
    let login = |issuer_url: &str| v1::IssuerLogin {
        issuer_url: issuer_url.into(),
        client_id: "cardlink".into(),
        client_auth: v1::ClientAuth::PrivateKeyJwt as i32,
        account_claim: "card_accounts".into(),
    };
    let set = |issuer: &str, login: v1::IssuerLogin| v1::SetIssuerLoginRequest {
        issuer_id: issuer.into(),
        login: Some(login),
    };

    // The issuer sets its own; the change is on the registry topic for every consent service.
    let issuer = client
        .set_issuer_login(authorized(set("iss-a", login("https://login.a-card.example")), &issuer_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issuer.login.as_ref().unwrap().issuer_url, "https://login.a-card.example");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while registry.view().read(|v| v.issuer("iss-a").and_then(|i| i.login.clone())).is_none() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Only the issuer itself or the operator; never an aggregator.
    let e = client
        .set_issuer_login(authorized(set("iss-a", login("https://evil.example")), &aggregator_token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    client.set_issuer_login(authorized(set("iss-a", login("https://login2.a-card.example")), &operator)).await.unwrap();
    let e = client.set_issuer_login(authorized(set("iss-z", login("https://z.example")), &operator)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Where cardlink would send members' browsers and its client credentials: https only
    // (http on the local machine), no query or fragment; a claim name and a client auth method.
    for (bad, field) in [
        (login("http://login.a-card.example"), "issuer_url"),
        (login("https://login.a-card.example/?x=1"), "issuer_url"),
        (login("not a url"), "issuer_url"),
        (v1::IssuerLogin { client_id: String::new(), ..login("https://a.example") }, "client_id"),
        (v1::IssuerLogin { account_claim: String::new(), ..login("https://a.example") }, "account_claim"),
        (v1::IssuerLogin { client_auth: 0, ..login("https://a.example") }, "client_auth"),
    ] {
        let e = client.set_issuer_login(authorized(set("iss-a", bad), &issuer_token)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    client.set_issuer_login(authorized(set("iss-a", login("http://127.0.0.1:8080/op")), &issuer_token)).await.unwrap();
}

#[tokio::test]
async fn an_aggregator_registers_where_members_return_and_nothing_unsafe_is_accepted() {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut client = registry_client(&registry).await.unwrap();
    let (issuer_token, aggregator_token) = register(&mut client, &operator).await;
    let set = |uris: &[&str]| v1::SetRedirectUrisRequest {
        aggregator_id: "agg-x".into(),
        redirect_uris: uris.iter().map(|u| (*u).to_owned()).collect(),
    };

    // The aggregator replaces its own list; the change is on the registry topic.
    let uris = ["https://agg-x.example/return", "http://127.0.0.1/callback"];
    let aggregator = client.set_redirect_uris(authorized(set(&uris), &aggregator_token)).await.unwrap().into_inner();
    assert_eq!(aggregator.redirect_uris, uris);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while registry.view().read(|v| v.aggregator("agg-x").map(|a| a.redirect_uris.clone())).unwrap_or_default() != uris {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Only the aggregator itself or the operator.
    let e = client.set_redirect_uris(authorized(set(&uris), &issuer_token)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    client.set_redirect_uris(authorized(set(&uris), &operator)).await.unwrap();

    // Nothing that could send a member elsewhere than it says.
    for bad in [
        "http://localhost:1@evil.example/",
        "http://agg-x.example/callback",
        "https://agg-x.example/callback#fragment",
        "https://user@agg-x.example/callback",
        "https://AGG-X.example/callback",
        "not a url",
    ] {
        let e = client.set_redirect_uris(authorized(set(&[bad]), &aggregator_token)).await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_deref()), (Code::InvalidArgument, Some("INVALID_REDIRECT_URI")), "{bad}");
    }
    let too_many: Vec<String> = (0..21).map(|n| format!("https://agg-x.example/{n}")).collect();
    let e = client
        .set_redirect_uris(authorized(
            v1::SetRedirectUrisRequest { aggregator_id: "agg-x".into(), redirect_uris: too_many },
            &aggregator_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // And registration checks them too.
    let e = client
        .register_aggregator(authorized(
            v1::RegisterAggregatorRequest {
                aggregator_id: "agg-y".into(),
                name: "Y".into(),
                registration_number: "関東財務局長（電代）第2号".into(),
                contact: String::new(),
                redirect_uris: vec!["http://localhost:1@evil.example/".into()],
            },
            &operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&e).as_deref(), Some("INVALID_REDIRECT_URI"));
}
