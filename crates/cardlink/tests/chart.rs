//! The chart's own commands, run. `helm template` renders `charts/cardlink` with the CI values
//! and a values file made by `cardlink keys generate --helm-values`; every Deployment's and the
//! topics Job's container `args` and `env` (ConfigMap and Secret references resolved from the
//! same rendering by `tools/chart_commands.py`) are run as `cardlink` processes against an
//! embedded broker. The one substitution: where Kafka is, without TLS/SASL. The rendering's
//! inputs choose free ports and a local public URL, as a platform team chooses theirs.
//!
//! Then the whole flow goes through those processes: the operator (credential from
//! `cardlink operator credential`, run with the registry's environment) registers an issuer and
//! an aggregator; the issuer enables the connection and registers its OpenID Provider
//! (oidc-provider, `private_key_jwt` with the consent service's published key); a member
//! consents in a real browser, signing in at that provider; the issuer publishes with its
//! registry credential; the aggregator receives the event, and reads it again from history
//! (PostgreSQL, its URL from the chart's Secret); the member revokes on the member page; nothing
//! more arrives, and history answers CONSENT_ENDED.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cardlink_api::v1;
use cardlink_api::{Reason, convert};
use cardlink_events::{Event, samples};
use cardlink_testkit::login::{AtProvider, Browser, TEST_MEMBER, TEST_PASSWORD, TestClientAuth, TestOidcProvider};
use cardlink_testkit::{TestBus, authorized, connect, register_aggregator, register_issuer, set_issuer_login};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

mod common;

use common::{WITHIN, free_port, output, python, ready, repo};

/// The helm scripts/check-deploy.sh installs, unless `CARDLINK_HELM` names another.
fn helm() -> PathBuf {
    match std::env::var_os("CARDLINK_HELM") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/cardlink/bin/helm"),
    }
}

/// One container of the rendering, as `tools/chart_commands.py` reads it.
#[derive(Debug, serde::Deserialize)]
struct ChartCommand {
    kind: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    external: Vec<External>,
}

#[derive(Debug, serde::Deserialize)]
struct External {
    name: String,
}

/// Renders the chart and reads its commands.
async fn render(dir: &Path, set: &[(&str, String)]) -> HashMap<String, ChartCommand> {
    let helm = helm();
    assert!(helm.exists(), "{} is missing: run scripts/check-deploy.sh (scripts/test.sh does)", helm.display());
    let keys = output(Command::new(env!("CARGO_BIN_EXE_cardlink")).args(["keys", "generate", "--helm-values"])).await;
    let keys_file = dir.join("cardlink-keys.yaml");
    std::fs::write(&keys_file, keys).unwrap();
    let mut template = Command::new(helm);
    template
        .current_dir(repo())
        .args(["template", "t", "charts/cardlink", "-f", "charts/cardlink/ci/test-values.yaml", "-f"])
        .arg(&keys_file);
    for (key, value) in set {
        template.arg("--set").arg(format!("{key}={value}"));
    }
    let manifests = output(&mut template).await;
    let manifests_file = dir.join("manifests.yaml");
    std::fs::write(&manifests_file, manifests).unwrap();
    let mut read = Command::new(python());
    read.arg(repo().join("tools/chart_commands.py")).stdin(std::fs::File::open(&manifests_file).unwrap());
    serde_json::from_slice(&output(&mut read).await).unwrap()
}

/// The processes the chart's commands became; their logs are printed if the test fails.
struct Running {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!(
                    "--- {} (last lines)\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

impl Running {
    /// A process with `command`'s environment exactly as rendered, but for where Kafka is: the
    /// embedded broker speaks plaintext, so the TLS/SASL settings (and the cluster's own Secrets
    /// they name) go. Its output goes to a log named `name`; the caller adds the arguments.
    fn command(&mut self, name: &str, command: &ChartCommand, kafka: &str, dir: &Path) -> Command {
        for external in &command.external {
            assert!(external.name.starts_with("CARDLINK_KAFKA__"), "{name}: unresolved {}", external.name);
        }
        let mut env = command.env.clone();
        env.retain(|k, _| !k.starts_with("CARDLINK_KAFKA__"));
        env.insert("CARDLINK_KAFKA_BOOTSTRAP".into(), kafka.into());
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        self.logs.push(log);
        let mut process = Command::new(env!("CARGO_BIN_EXE_cardlink"));
        process
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true);
        process
    }

    fn start(&mut self, name: &str, command: &ChartCommand, kafka: &str, dir: &Path) {
        assert_eq!(command.kind, "Deployment", "{name}");
        let child = self.command(name, command, kafka, dir).args(&command.args).spawn().unwrap();
        self.children.push(child);
    }
}

/// A transaction happening now (a consent covers what happens after it was given).
fn tx(n: u32) -> v1::PublishRequest {
    let mut transaction = samples::transaction("iss-a", "acct-1", n);
    transaction.occurred_at = chrono::Utc::now();
    let event = Event::Transaction(transaction);
    v1::PublishRequest {
        issuer_id: "iss-a".into(),
        batch_id: format!("b{n}"),
        records: vec![convert::ingest_record(&event)],
        historical: false,
    }
}

/// The transactions among the next responses of `stream`, for `window`.
async fn transactions_within(
    stream: &mut tonic::Streaming<v1::SubscribeResponse>,
    window: Duration,
    enough: usize,
) -> (Vec<v1::CardTransaction>, usize) {
    let (mut found, mut consent_changes) = (Vec::new(), 0);
    let deadline = tokio::time::Instant::now() + window;
    while found.len() < enough {
        let Ok(next) = tokio::time::timeout_at(deadline, stream.message()).await else { break };
        for delivery in next.unwrap().unwrap().deliveries {
            match delivery.event {
                Some(v1::delivery::Event::Transaction(t)) => found.push(t),
                Some(v1::delivery::Event::ConsentChange(_)) => consent_changes += 1,
                _ => {}
            }
        }
    }
    (found, consent_changes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_commands_run_the_whole_flow() {
    let dir = tempfile::tempdir().unwrap();
    let ports: HashMap<&str, u16> = [
        "registry",
        "registry-http",
        "ingest",
        "consent",
        "consent-http",
        "subscription",
        "subscription-http",
        "history",
    ]
    .into_iter()
    .map(|p| (p, free_port()))
    .collect();
    let public_url = format!("http://127.0.0.1:{}", ports["consent-http"]);
    // The history store: PostgreSQL, its URL in the chart's Secret as a platform team gives it.
    let postgres = cardlink_testkit::postgres::TestPostgres::start().unwrap();
    let commands = render(
        dir.path(),
        &[
            ("services.registry.port", ports["registry"].to_string()),
            ("services.registry.httpPort", ports["registry-http"].to_string()),
            ("services.ingest.port", ports["ingest"].to_string()),
            ("services.consent.port", ports["consent"].to_string()),
            ("services.consent.httpPort", ports["consent-http"].to_string()),
            ("services.subscription.port", ports["subscription"].to_string()),
            ("services.subscription.httpPort", ports["subscription-http"].to_string()),
            ("services.history.port", ports["history"].to_string()),
            ("secrets.historyStoreUrl", postgres.url()),
            ("consent.publicUrl", public_url.clone()),
            // One broker: the topics a single-node cluster can hold.
            ("kafka.replicationFactor", "1".into()),
            ("kafka.minInsyncReplicas", "1".into()),
        ],
    )
    .await;
    let mut names: Vec<&str> = commands.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["consent", "history", "ingest", "registry", "subscription", "topics"]);

    let bus = TestBus::start_unprovisioned().await.unwrap();
    let kafka = bus.config().bootstrap_servers.clone();
    let mut running = Running { children: Vec::new(), logs: Vec::new() };

    // The topics Job, then the Deployments.
    let topics = &commands["topics"];
    assert_eq!(topics.kind, "Job");
    let status = running.command("topics", topics, &kafka, dir.path()).args(&topics.args).status().await.unwrap();
    assert!(status.success(), "the topics Job failed");
    for name in ["registry", "ingest", "consent", "subscription", "history"] {
        running.start(name, &commands[name], &kafka, dir.path());
    }
    for port in ["registry", "ingest", "consent", "subscription", "history"] {
        ready(ports[port]).await;
    }

    // The platform team's first operator credential, with the registry pod's own environment
    // (as `kubectl exec deploy/…-registry -- cardlink operator credential --id ops-1`).
    let operator = {
        let mut command = running.command("operator", &commands["registry"], &kafka, dir.path());
        let command = command.args(["operator", "credential", "--id", "ops-1"]).stdout(Stdio::piped());
        let out = tokio::time::timeout(WITHIN, command.output()).await.unwrap().unwrap();
        assert!(out.status.success(), "cardlink operator credential failed");
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().find_map(|l| l.split("(shown once): ").nth(1)).unwrap().trim().to_owned()
    };

    let mut r =
        v1::registry_client::RegistryClient::connect(format!("http://127.0.0.1:{}", ports["registry"])).await.unwrap();
    let issuer = register_issuer(&mut r, &operator, "iss-a", 5_000_000_000_000).await.unwrap();
    let aggregator = register_aggregator(&mut r, &operator, "agg-x").await.unwrap();
    connect(&mut r, &issuer.token, "iss-a", "agg-x", &[v1::Scope::Transactions, v1::Scope::MerchantDetail])
        .await
        .unwrap();

    // The issuer registers its OpenID Provider; cardlink authenticates there with the key the
    // chart gave the consent service, published as a JWKS on the consent pages.
    let jwks: serde_json::Value =
        reqwest::get(format!("{public_url}/oidc/jwks.json")).await.unwrap().json().await.unwrap();
    let key = jwks["keys"][0].clone();
    assert_eq!(key["kid"], "consent-1", "{jwks}");
    let provider = TestOidcProvider::shared().unwrap();
    let client = provider
        .register_client(&format!("{public_url}/oidc/callback"), TestClientAuth::PrivateKeyJwt(key))
        .await
        .unwrap();
    let login = v1::IssuerLogin {
        issuer_url: provider.issuer_url.clone(),
        client_id: client.client_id,
        client_auth: v1::ClientAuth::PrivateKeyJwt as i32,
        account_claim: cardlink_testkit::login::TEST_ACCOUNT_CLAIM.into(),
    };
    set_issuer_login(&mut r, &issuer.token, "iss-a", login).await.unwrap();

    // The aggregator asks with the CLI; the member signs in at the provider and approves in a
    // real browser; the CLI receives the redirect and exchanges the code.
    let mut request = Command::new(env!("CARGO_BIN_EXE_cardlink"));
    request
        .args(["aggregator", "consent", "request", "--issuer", "iss-a", "--scope", "transactions"])
        .args(["--purpose", "家計簿への自動取り込み（chart）", "--wait-secs", "120"])
        .env("CARDLINK_CONSENT_ENDPOINT", format!("http://127.0.0.1:{}", ports["consent"]))
        .env("CARDLINK_SUBSCRIPTION_ENDPOINT", format!("http://127.0.0.1:{}", ports["subscription"]))
        .env("CARDLINK_AGGREGATOR_TOKEN", &aggregator.token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    // The consent service learns the login from the registry topic.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut requesting = request.spawn().unwrap();
    let mut lines = BufReader::new(requesting.stdout.take().unwrap()).lines();
    let url = common::authorization_url(&mut lines).await;
    let shots = dir.path().join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    let shots = shots.to_str().unwrap();
    let consented = common::browser(&[
        "consent",
        "--url",
        &url,
        "--login",
        TEST_MEMBER,
        "--password",
        TEST_PASSWORD,
        "--out",
        shots,
    ])
    .await;
    assert!(consented["provider_url"].as_str().unwrap().starts_with(&provider.issuer_url), "{consented}");
    assert!(consented["callback_text"].as_str().unwrap().contains("同意が完了しました"), "{consented}");
    let mut said = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        said.push_str(&line);
        said.push('\n');
    }
    assert!(requesting.wait().await.unwrap().success(), "{said}");
    let consent_id = said
        .lines()
        .find_map(|l| l.strip_prefix("consent ").and_then(|r| r.strip_suffix(" granted")))
        .unwrap_or_else(|| panic!("no consent in {said}"))
        .to_owned();

    // The aggregator subscribes; the issuer publishes with its registry credential.
    let mut subscription =
        v1::subscription_client::SubscriptionClient::connect(format!("http://127.0.0.1:{}", ports["subscription"]))
            .await
            .unwrap();
    let subscribe = v1::SubscribeRequest {
        start: Some(v1::subscribe_request::Start::FromEarliest(true)),
        kinds: vec![],
        issuer_ids: vec![],
    };
    let mut stream = subscription.subscribe(authorized(subscribe, &aggregator.token)).await.unwrap().into_inner();
    let mut ingest =
        v1::issuer_ingest_client::IssuerIngestClient::connect(format!("http://127.0.0.1:{}", ports["ingest"]))
            .await
            .unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        match ingest.publish(authorized(tx(1), &issuer.token)).await {
            Ok(r) => {
                assert_eq!(r.into_inner().accepted, 1);
                break;
            }
            Err(s) if Reason::of(&s) == Some(Reason::NotReady) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("publish: {s:?}"),
        }
    }
    let (received, _) = transactions_within(&mut stream, WITHIN, 1).await;
    assert_eq!(received.len(), 1, "the aggregator receives the consented event");
    assert!(received[0].account_ref.starts_with("acc_"), "a pseudonym, not the issuer's account id");

    // The same transaction from history (PostgreSQL), once the indexer has it: the same ids.
    let mut history =
        v1::history_client::HistoryClient::connect(format!("http://127.0.0.1:{}", ports["history"])).await.unwrap();
    let listing = v1::ListTransactionsRequest {
        consent_id: consent_id.clone(),
        // The member's accounts, as the aggregator sees them (the test provider's member has several).
        account_ref: received[0].account_ref.clone(),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + WITHIN;
    let listed = loop {
        let page = history.list_transactions(authorized(listing.clone(), &aggregator.token)).await.unwrap();
        if let Some(first) = page.into_inner().transactions.into_iter().next() {
            break first.transaction.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "the transaction never reached history");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(listed.issuer_transaction_id, received[0].issuer_transaction_id);
    assert_eq!(listed.account_ref, received[0].account_ref);

    // The member revokes on the member page, after signing in at the provider again.
    let member = Browser::new();
    let page = member
        .sign_in(
            &format!("{public_url}/member/login"),
            &[("issuer_id", "iss-a")],
            AtProvider::SignIn { login_id: TEST_MEMBER, password: TEST_PASSWORD },
        )
        .await
        .unwrap();
    assert!(page.body.contains(&consent_id), "{}", page.body);
    let ticket = page.value("ticket").unwrap();
    let revoked = member
        .post(&format!("{public_url}/member/revoke"), &[("ticket", &ticket), ("consent_id", &consent_id)])
        .await
        .unwrap();
    assert!(revoked.body.contains("取り消しました"), "{}", revoked.body);

    // Past the revocation bound, the next event is not delivered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ingest.publish(authorized(tx(2), &issuer.token)).await.unwrap();
    let (after, _) = transactions_within(&mut stream, Duration::from_secs(5), 1).await;
    assert!(after.is_empty(), "delivered after revocation: {after:?}");
    let denied = history.list_transactions(authorized(listing, &aggregator.token)).await.unwrap_err();
    assert_eq!(Reason::of(&denied), Some(Reason::ConsentEnded), "history read after revocation: {denied:?}");
    drop(running);
}
