//! Member sign-in at the card company's OpenID Provider: it succeeds against a provider nobody
//! here wrote (oidc-provider), with a client secret or a private-key JWT, and every way it can go
//! wrong ends with a page saying so and an audit record — never a consent.
//!
//! ID-token checks (issuer, audience, expiry, signature, nonce, key rotation, replay) need tokens
//! a correct provider never issues: a small forging provider in this file serves them.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use cardlink_api::v1;
use cardlink_auth::TokenSigner;
use cardlink_bus::Topic;
use cardlink_consent::login::{CALLBACK_PATH, ClientSecrets, JWKS_PATH, LoginSettings};
use cardlink_consent::pkce;
use cardlink_consent::server::RunningConsent;
use cardlink_events::consent::ConsentStatus;
use cardlink_events::{AuditEvent, AuditOutcome, RecordType, decode_record};
use cardlink_registry::server::RunningRegistry;
use cardlink_testkit::login::{
    AtProvider, Browser, Page, TEST_ACCOUNT_CLAIM, TEST_MEMBER, TEST_MEMBER_WITHOUT_CARDS, TEST_PASSWORD,
    TestClientAuth, TestOidcProvider, connect_test_login,
};
use cardlink_testkit::{
    RegistryClient, TestBus, authorized, connect, consent_client, register_aggregator, register_issuer,
    registry_client, set_issuer_login,
};

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

struct World {
    bus: TestBus,
    _registry: RunningRegistry,
    consent: RunningConsent,
    r: RegistryClient,
    operator: String,
    agg: String,
    secrets: tempfile::TempDir,
}

async fn world(client_key: Option<Arc<TokenSigner>>) -> World {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut r = registry_client(&registry).await.unwrap();
    let issuer = register_issuer(&mut r, &operator, "iss-a", 1).await.unwrap().token;
    let agg = register_aggregator(&mut r, &operator, "agg-x").await.unwrap().token;
    connect(&mut r, &issuer, "iss-a", "agg-x", &[v1::Scope::Transactions]).await.unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let login = LoginSettings { client_secrets: ClientSecrets::Dir(secrets.path().to_owned()), client_key };
    let consent = bus.start_consent(&registry, login).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !consent.consents().registry().read(|v| v.is_connected("iss-a", "agg-x")) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    World { bus, _registry: registry, consent, r, operator, agg, secrets }
}

impl World {
    fn pages(&self) -> String {
        format!("http://{}", self.consent.http_addr().unwrap())
    }

    /// The aggregator asks; returns (request id, consent page URL).
    async fn ask(&self) -> (String, String) {
        let mut c = consent_client(&self.consent).await.unwrap();
        let request = v1::CreateConsentRequestRequest {
            issuer_id: "iss-a".into(),
            scopes: vec![v1::Scope::Transactions as i32],
            accounts_hint: String::new(),
            duration_days: 30,
            history_days: 0,
            purpose: "家計簿への自動取り込み".into(),
            redirect_uri: "https://kakeibo.example/callback".into(),
            code_challenge: pkce::challenge(VERIFIER),
            code_challenge_method: "S256".into(),
            state: "st".into(),
        };
        let requested = c.create_consent_request(authorized(request, &self.agg)).await.unwrap().into_inner();
        (requested.request_id, requested.authorization_url)
    }

    fn status(&self, consent_id: &str) -> ConsentStatus {
        self.consent.consents().read(|b| b.get(consent_id).map(|c| c.status)).unwrap()
    }

    async fn set_login(&mut self, issuer_url: &str, client_id: &str, auth: v1::ClientAuth) {
        let login = v1::IssuerLogin {
            issuer_url: issuer_url.into(),
            client_id: client_id.into(),
            client_auth: auth as i32,
            account_claim: TEST_ACCOUNT_CLAIM.into(),
        };
        set_issuer_login(&mut self.r, &self.operator, "iss-a", login).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self
            .consent
            .consents()
            .registry()
            .read(|v| v.issuer("iss-a").and_then(|i| i.login.as_ref()).is_some_and(|l| l.issuer_url == issuer_url))
        {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The reasons of every failed `consent.sign_in` audit record, once `expected` are all there
    /// (as many times as listed).
    async fn failed_sign_ins(&self, expected: &[&str]) -> Vec<String> {
        let reasons = |records: &[cardlink_bus::Record]| -> Vec<String> {
            records
                .iter()
                .filter_map(|r| decode_record::<AuditEvent>(&r.payload, RecordType::AuditEvent).ok())
                .filter(|a| a.action == "consent.sign_in" && a.outcome == AuditOutcome::Failed)
                .filter_map(|a| a.reason)
                .collect()
        };
        let records = self
            .bus
            .read_until(Topic::Audit, Duration::from_secs(30), |rs| {
                let found = reasons(rs);
                let count = |r: &str, list: &[String]| list.iter().filter(|f| *f == r).count();
                let wanted: Vec<String> = expected.iter().map(|e| (*e).to_owned()).collect();
                expected.iter().all(|e| count(e, &found) >= count(e, &wanted))
            })
            .await
            .unwrap();
        reasons(&records)
    }
}

fn signed_in(page: &Page) {
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.value("ticket").is_some(), "the member chooses accounts and scopes: {}", page.body);
}

fn refused(page: &Page, status: u16, text: &str) {
    assert_eq!(page.status, status, "{}", page.body);
    assert!(page.body.contains(text), "{text} in {}", page.body);
    assert!(page.value("ticket").is_none());
}

#[tokio::test]
async fn failures_at_the_card_companys_provider_are_pages_and_audit_records_never_consents() {
    let mut w = world(None).await;
    connect_test_login(&mut w.r, &w.operator, "iss-a", &w.consent, w.secrets.path()).await.unwrap();
    let member = AtProvider::SignIn { login_id: TEST_MEMBER, password: TEST_PASSWORD };

    // The member cancels at the provider: back with access_denied, nothing consented.
    let (id, url) = w.ask().await;
    let page = Browser::new().sign_in(&format!("{url}/login"), &[], AtProvider::Cancel).await.unwrap();
    refused(&page, 403, "ログインが取り消されました");
    assert_eq!(w.status(&id), ConsentStatus::Requested);

    // A member the provider knows, but with no card in the account claim.
    let (_, url) = w.ask().await;
    let nobody = AtProvider::SignIn { login_id: TEST_MEMBER_WITHOUT_CARDS, password: TEST_PASSWORD };
    let page = Browser::new().sign_in(&format!("{url}/login"), &[], nobody).await.unwrap();
    refused(&page, 403, "提供できるカードが見つかりませんでした");

    // The provider's answer, stopped before it reaches the consent page.
    let (_, url) = w.ask().await;
    let browser = Browser::new();
    let started = browser.post(&format!("{url}/login"), &[]).await.unwrap();
    let back = browser.walk_to(started, member, Some(CALLBACK_PATH)).await.unwrap();
    let callback = back.location.clone().unwrap();
    let session = browser.cookies_for(&callback).unwrap();

    // Another state than the one this browser's sign-in carries (sent with its session from
    // elsewhere: a failed callback ends the browser's sign-in).
    let tampered = callback.replace("state=", "state=x");
    let forged = reqwest::Client::new().get(&tampered).header("cookie", &session).send().await.unwrap();
    assert_eq!(forged.status().as_u16(), 400);
    assert!(forged.text().await.unwrap().contains("最初からやり直してください"));
    // No sign-in started in this browser at all.
    refused(&Browser::new().get(&callback).await.unwrap(), 400, "最初からやり直してください");
    // The genuine answer signs the member in.
    signed_in(&browser.get(&callback).await.unwrap());
    // Sent again (the same code and session, as an attacker who saw both would): the provider
    // refuses the used code.
    let replay = reqwest::Client::new().get(&callback).header("cookie", session).send().await.unwrap();
    assert_eq!(replay.status().as_u16(), 403);
    assert!(replay.text().await.unwrap().contains("本人確認を検証できませんでした"));

    let expected = [
        "LOGIN_CANCELLED",
        "MEMBER_WITHOUT_ACCOUNTS",
        "LOGIN_SESSION_INVALID",
        "LOGIN_SESSION_INVALID",
        "LOGIN_TOKEN_REJECTED",
    ];
    let mut reasons = w.failed_sign_ins(&expected).await;
    reasons.sort();
    let mut expected = expected.map(str::to_owned).to_vec();
    expected.sort();
    assert_eq!(reasons, expected, "each failure audited once, nothing else failed");
}

#[tokio::test]
async fn an_unreachable_or_unregistered_provider_is_a_clear_page_and_a_fixed_one_works_without_restart() {
    let mut w = world(None).await;

    // No provider registered yet.
    let (_, url) = w.ask().await;
    let page = Browser::new().post(&format!("{url}/login"), &[]).await.unwrap();
    refused(&page, 503, "まだ cardlink に接続されていません");

    // A provider that does not answer (nothing listens there).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    w.set_login(&format!("http://{closed}"), "cardlink", v1::ClientAuth::ClientSecretBasic).await;
    let page = Browser::new().post(&format!("{url}/login"), &[]).await.unwrap();
    refused(&page, 502, "接続できませんでした");

    // The issuer registers its working provider: the next sign-in uses it, no restart.
    connect_test_login(&mut w.r, &w.operator, "iss-a", &w.consent, w.secrets.path()).await.unwrap();
    let member = AtProvider::SignIn { login_id: TEST_MEMBER, password: TEST_PASSWORD };
    signed_in(&Browser::new().sign_in(&format!("{url}/login"), &[], member).await.unwrap());

    w.failed_sign_ins(&["LOGIN_NOT_CONFIGURED", "LOGIN_PROVIDER_UNAVAILABLE"]).await;
}

#[tokio::test]
async fn the_consent_service_authenticates_with_a_private_key_jwt() {
    let key = Arc::new(TokenSigner::generate("consent-test"));
    let mut w = world(Some(Arc::clone(&key))).await;

    // The provider learns the public key from the consent service's JWKS.
    let jwks: serde_json::Value =
        reqwest::get(format!("{}{JWKS_PATH}", w.pages())).await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0], key.public_jwk());
    let provider = TestOidcProvider::shared().unwrap();
    let callback = format!("{}{CALLBACK_PATH}", w.pages());
    let client =
        provider.register_client(&callback, TestClientAuth::PrivateKeyJwt(jwks["keys"][0].clone())).await.unwrap();
    w.set_login(&provider.issuer_url, &client.client_id, v1::ClientAuth::PrivateKeyJwt).await;

    let (_, url) = w.ask().await;
    let member = AtProvider::SignIn { login_id: TEST_MEMBER, password: TEST_PASSWORD };
    let page = Browser::new().sign_in(&format!("{url}/login"), &[], member).await.unwrap();
    signed_in(&page);
    assert!(page.body.contains("山田 花子") && page.body.contains("家族カード ****1881"), "{}", page.body);
}

/// What the forging provider gets wrong in its next ID token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forgery {
    Nothing,
    WrongIssuer,
    WrongAudience,
    Expired,
    /// Signed by a key the provider never published, under a published key id.
    ForeignKey,
    OtherNonce,
    /// Signed by a new key the provider starts publishing only now.
    RotatedKey,
}

struct Forge {
    issuer_url: String,
    forgery: Mutex<Forgery>,
    key: TokenSigner,
    foreign: TokenSigner,
    rotated: TokenSigner,
    publish_rotated: AtomicBool,
}

/// A provider that issues whatever ID token the test asks for. The code the test sends back is
/// the nonce of the sign-in, so the provider needs no state.
async fn start_forge() -> Arc<Forge> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forge = Arc::new(Forge {
        issuer_url: format!("http://{}", listener.local_addr().unwrap()),
        forgery: Mutex::new(Forgery::Nothing),
        key: TokenSigner::from_seed("k1", [1; 32]),
        foreign: TokenSigner::from_seed("k1", [2; 32]),
        rotated: TokenSigner::from_seed("k2", [3; 32]),
        publish_rotated: AtomicBool::new(false),
    });
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(|State(f): State<Arc<Forge>>| async move {
                axum::Json(serde_json::json!({
                    "issuer": f.issuer_url,
                    "authorization_endpoint": format!("{}/authorize", f.issuer_url),
                    "token_endpoint": format!("{}/token", f.issuer_url),
                    "jwks_uri": format!("{}/jwks", f.issuer_url),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["EdDSA"],
                }))
            }),
        )
        .route(
            "/jwks",
            get(|State(f): State<Arc<Forge>>| async move {
                let mut keys = vec![f.key.public_jwk()];
                if f.publish_rotated.load(Ordering::SeqCst) {
                    keys.push(f.rotated.public_jwk());
                }
                axum::Json(serde_json::json!({ "keys": keys }))
            }),
        )
        .route(
            "/token",
            post(|State(f): State<Arc<Forge>>, body: String| async move {
                let code = form_urlencoded::parse(body.as_bytes())
                    .find(|(k, _)| k == "code")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                let forgery = *f.forgery.lock().unwrap();
                let now = chrono::Utc::now().timestamp();
                let mut claims = serde_json::json!({
                    "iss": f.issuer_url, "sub": "m-forge", "aud": "cardlink", "iat": now, "exp": now + 300,
                    "nonce": code, "name": "偽 造", TEST_ACCOUNT_CLAIM: ["acct-1"],
                });
                let mut signer = &f.key;
                match forgery {
                    Forgery::Nothing => {}
                    Forgery::WrongIssuer => claims["iss"] = "http://127.0.0.1:1".into(),
                    Forgery::WrongAudience => claims["aud"] = "someone-else".into(),
                    Forgery::Expired => {
                        claims["iat"] = (now - 7200).into();
                        claims["exp"] = (now - 3600).into();
                    }
                    Forgery::ForeignKey => signer = &f.foreign,
                    Forgery::OtherNonce => claims["nonce"] = "another-sign-in".into(),
                    Forgery::RotatedKey => {
                        f.publish_rotated.store(true, Ordering::SeqCst);
                        signer = &f.rotated;
                    }
                }
                axum::Json(serde_json::json!({
                    "access_token": "at", "token_type": "Bearer", "expires_in": 300,
                    "id_token": signer.sign_jwt(&claims),
                }))
            }),
        )
        .with_state(Arc::clone(&forge));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    forge
}

/// Starts a sign-in and answers it as the forging provider would; returns the consent page's
/// answer, the browser's session cookie and the callback URL.
async fn forged_sign_in(w: &World, forge: &Forge, forgery: Forgery) -> (Page, String, String) {
    *forge.forgery.lock().unwrap() = forgery;
    let (_, url) = w.ask().await;
    let browser = Browser::new();
    let started = browser.post(&format!("{url}/login"), &[]).await.unwrap();
    let authorize = url::Url::parse(started.location.as_deref().unwrap()).unwrap();
    assert!(authorize.as_str().starts_with(&forge.issuer_url), "{authorize}");
    let param = |name: &str| authorize.query_pairs().find(|(k, _)| k == name).unwrap().1.into_owned();
    assert_eq!(param("code_challenge_method"), "S256");
    let callback = url::Url::parse_with_params(
        &format!("{}{CALLBACK_PATH}", w.pages()),
        [("code", param("nonce")), ("state", param("state"))],
    )
    .unwrap()
    .to_string();
    let session = browser.cookies_for(&callback).unwrap();
    (browser.get(&callback).await.unwrap(), session, callback)
}

#[tokio::test]
async fn id_tokens_are_checked_for_issuer_audience_expiry_signature_nonce_and_replay() {
    let forge = start_forge().await;
    let mut w = world(None).await;
    std::fs::write(w.secrets.path().join("iss-a"), "any").unwrap();
    w.set_login(&forge.issuer_url, "cardlink", v1::ClientAuth::ClientSecretBasic).await;

    for forgery in
        [Forgery::WrongIssuer, Forgery::WrongAudience, Forgery::Expired, Forgery::ForeignKey, Forgery::OtherNonce]
    {
        let (page, _, _) = forged_sign_in(&w, &forge, forgery).await;
        assert_eq!(page.status, 403, "{forgery:?}: {}", page.body);
        assert!(page.body.contains("本人確認を検証できませんでした"), "{forgery:?}");
    }

    // The provider rotates its key: the new key id is fetched once, and the token verifies.
    let (page, _, _) = forged_sign_in(&w, &forge, Forgery::RotatedKey).await;
    signed_in(&page);

    // A genuine token's sign-in, replayed with its session: the provider (a forging one) issues
    // a second token with the same nonce; the consent page takes a nonce once.
    let (page, session, callback) = forged_sign_in(&w, &forge, Forgery::Nothing).await;
    signed_in(&page);
    let replay = reqwest::Client::new().get(&callback).header("cookie", session).send().await.unwrap();
    assert_eq!(replay.status().as_u16(), 403);
    assert!(replay.text().await.unwrap().contains("すでに使用されています"));

    let rejected = ["LOGIN_TOKEN_REJECTED"; 5];
    let reasons = w.failed_sign_ins(&[&rejected[..], &["LOGIN_REPLAYED"]].concat()).await;
    assert_eq!(reasons.len(), 6, "one record per refused sign-in: {reasons:?}");
}
