//! End to end: `cardlink dev` as a newcomer runs it, driven only through its public interfaces —
//! gRPC, HTTP, the `cardlink aggregator` CLI, and a real browser (headless Chromium) for the
//! member's side: a consent granted on the consent page, the member's dashboard with its access
//! history and a revocation, and the transparency, goal and live pages, each screenshotted and
//! checked for real data. Finally Ctrl-C stops everything cleanly.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cardlink_api::v1;
use cardlink_api::v1::consent_service_client::ConsentServiceClient;
use cardlink_api::v1::registry_client::RegistryClient;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// Generous: the first start of the system on a loaded 2-core CI machine.
const START_WITHIN: Duration = Duration::from_secs(180);
use common::{WITHIN, browser, cardlink};

/// A running `cardlink dev`, every listener on an ephemeral port.
struct Dev {
    child: Child,
    info: Value,
    stderr: PathBuf,
}

impl Dev {
    async fn start(dir: &Path) -> Self {
        let info_file = dir.join("info.json");
        let stderr = dir.join("dev.stderr");
        let any = "127.0.0.1:0";
        let child = cardlink()
            .arg("dev")
            .args(["--broker-listen", any, "--ingest-listen", any, "--registry-listen", any])
            .args(["--consent-listen", any, "--subscription-listen", any, "--pages-listen", any])
            .args(["--history-listen", any])
            .args(["--simulate-rate", "100", "--simulate-members", "20", "--simulate-history-days", "90"])
            .arg("--info-file")
            .arg(&info_file)
            .stdout(std::fs::File::create(dir.join("dev.stdout")).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("cardlink dev starts");
        let deadline = tokio::time::Instant::now() + START_WITHIN;
        let info = loop {
            if let Ok(text) = std::fs::read_to_string(&info_file)
                && let Ok(info) = serde_json::from_str::<Value>(&text)
            {
                break info;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cardlink dev did not come up; stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        Self { child, info, stderr }
    }

    fn endpoint(&self, name: &str) -> String {
        self.info["endpoints"][name].as_str().unwrap().to_owned()
    }

    fn aggregator_token(&self, id: &str) -> String {
        self.info["credentials"]["aggregators"][id].as_str().unwrap().to_owned()
    }

    /// `cardlink aggregator …` as aggregator `id`, against this system.
    fn aggregator(&self, id: &str) -> Command {
        let mut command = cardlink();
        command
            .arg("aggregator")
            .env("CARDLINK_CONSENT_ENDPOINT", self.endpoint("consent"))
            .env("CARDLINK_SUBSCRIPTION_ENDPOINT", self.endpoint("subscription"))
            .env("CARDLINK_AGGREGATOR_TOKEN", self.aggregator_token(id));
        command
    }

    /// Ctrl-C, as a developer stops it: everything stops cleanly and promptly.
    async fn interrupt(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().await.unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("cardlink dev stops within a minute of Ctrl-C")
            .unwrap();
        let log = std::fs::read_to_string(&self.stderr).unwrap();
        assert!(status.success(), "cardlink dev exited with {status}; stderr:\n{log}");
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR") || l.contains("panicked")).collect();
        assert!(errors.is_empty(), "errors while running or stopping:\n{}", errors.join("\n"));
    }
}

async fn output(mut command: Command) -> String {
    String::from_utf8(common::output(&mut command).await).unwrap()
}

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Polls `check` until it returns `Some`, or fails with `what`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_sees_issuers_publish_members_consent_and_aggregators_receive() {
    let work = tempfile::tempdir().unwrap();
    let shots = work.path().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let dev = Dev::start(work.path()).await;
    let pages = dev.endpoint("pages");

    // The registry says who is connected to whom, publicly, and the goal moves as the simulated
    // card companies publish: all four publish, three have aggregators.
    let mut registry = RegistryClient::connect(dev.endpoint("registry")).await.unwrap();
    let connections = registry
        .list_connections(v1::ListConnectionsRequest { issuer_id: String::new(), active_only: true })
        .await
        .unwrap()
        .into_inner()
        .connections;
    let pairs: Vec<(String, String)> =
        connections.iter().map(|c| (c.issuer_id.clone(), c.aggregator_id.clone())).collect();
    assert_eq!(pairs.len(), 6, "{pairs:?}");
    assert!(pairs.iter().all(|(i, _)| i != "hikari-card"));
    let goal = eventually("all four demo issuers publishing live", || {
        let mut registry = registry.clone();
        async move {
            let goal = registry.get_goal(v1::GetGoalRequest {}).await.unwrap().into_inner();
            goal.issuers.iter().all(|i| i.publishing_live).then_some(goal)
        }
    })
    .await;
    let expected_share = (18.2 + 9.6 + 2.1) / (18.2 + 9.6 + 2.1 + 5.4);
    assert!((goal.share - expected_share).abs() < 1e-9, "share {}", goal.share);
    assert!(!goal.issuers.iter().find(|i| i.issuer_id == "hikari-card").unwrap().counts_toward_goal);

    // The demo consents were given through the consent flow: the household-budget app holds three.
    let mut consent_api = ConsentServiceClient::connect(dev.endpoint("consent")).await.unwrap();
    let kakeibo = dev.aggregator_token("kakeibo-note");
    let held = consent_api
        .list_consents(authorized(v1::ListConsentsRequest { active_only: true, ..Default::default() }, &kakeibo))
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert_eq!(held.len(), 3, "{held:?}");

    // An aggregator engineer asks a member for consent with the CLI; the member approves in a
    // real browser; the CLI receives the redirect on its loopback listener and exchanges the code.
    let mut request = dev.aggregator("kakeibo-note");
    request
        .args([
            "consent",
            "request",
            "--issuer",
            "minato-card",
            "--scope",
            "transactions",
            "--scope",
            "merchant-detail",
        ])
        .args(["--purpose", "家計簿への自動取り込み（E2E）", "--wait-secs", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut requesting = request.spawn().unwrap();
    let mut lines = BufReader::new(requesting.stdout.take().unwrap()).lines();
    let url = common::authorization_url(&mut lines).await;
    assert!(url.starts_with(&pages) && url.contains("/consent/"), "{url}");
    let shots_dir = shots.to_str().unwrap();
    let consented =
        browser(&["consent", "--url", &url, "--login", "m-00002", "--password", "demo-password", "--out", shots_dir])
            .await;
    assert!(consented["login_heading"].as_str().unwrap().contains("みなとカード"), "{consented}");
    assert!(consented["request"].as_str().unwrap().contains("かけいぼノート"), "{consented}");
    // The member signed in at the card company's OpenID Provider, not on a cardlink form.
    assert!(consented["provider_url"].as_str().unwrap().contains("/demo-login/minato-card/authorize"), "{consented}");
    assert!(consented["provider_heading"].as_str().unwrap().contains("みなとカード"), "{consented}");
    assert_eq!(consented["scopes"], serde_json::json!(["TRANSACTIONS", "MERCHANT_DETAIL"]));
    assert_eq!(consented["accounts"].as_array().unwrap().len(), 1, "{consented}");
    assert!(consented["callback_text"].as_str().unwrap().contains("同意が完了しました"), "{consented}");
    let mut cli_said = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        cli_said.push_str(&line);
        cli_said.push('\n');
    }
    assert!(requesting.wait().await.unwrap().success(), "{cli_said}");
    let consent_id = cli_said
        .lines()
        .find_map(|l| l.strip_prefix("consent ").and_then(|r| r.strip_suffix(" granted")))
        .unwrap_or_else(|| panic!("no consent in {cli_said}"))
        .to_owned();
    let account = cli_said.lines().find_map(|l| l.trim().strip_prefix("accounts: ")).unwrap().to_owned();
    assert!(account.starts_with("acc_"), "the aggregator sees a pseudonym: {account}");

    // It subscribes from the earliest retained event, keeping its cursor in a file; a second
    // run resumes from the file and continues without repeats.
    let cursor_file = work.path().join("cursor");
    let subscribe = |count: &str, from: Option<&Path>| {
        let mut command = dev.aggregator("kakeibo-note");
        command.args(["subscribe", "--format", "json", "--kind", "transaction", "--issuer", "minato-card"]).args([
            "--count",
            count,
            "--rate-every",
            "0",
        ]);
        if let Some(file) = from {
            command.arg("--from-earliest").arg("--cursor-file").arg(file);
        }
        command
    };
    let parse = |text: String| text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect::<Vec<_>>();
    let first = parse(output(subscribe("6", Some(&cursor_file))).await);
    let second = parse(output(subscribe("4", Some(&cursor_file))).await);
    assert_eq!((first.len(), second.len()), (6, 4));
    let ids: std::collections::HashSet<&str> =
        first.iter().chain(&second).map(|d| d["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 10, "the second run repeated the first");

    // Live: what arrives under the new consent is that member's account with the merchant
    // (granted); under the older transactions-only consent, no merchant.
    let live = parse(output(subscribe("30", None)).await);
    assert!(live.iter().any(|d| d["consent_id"] == consent_id.as_str()), "nothing under the new consent: {live:?}");
    for d in first.iter().chain(&second).chain(&live) {
        assert_eq!(d["issuer_id"], "minato-card", "{d}");
        if d["consent_id"] == consent_id.as_str() {
            assert_eq!(d["account"], account.as_str(), "{d}");
            assert!(d["merchant"]["name"].is_string(), "merchant detail was granted: {d}");
        } else {
            assert!(d["merchant"].is_null(), "the other minato consent has no merchant detail: {d}");
        }
    }
    let acked = output({
        let mut c = dev.aggregator("kakeibo-note");
        c.args(["ack", "--name", "e2e"]).arg("--cursor-file").arg(&cursor_file);
        c
    })
    .await;
    assert!(acked.contains("position e2e saved"), "{acked}");

    // The reference household-budget app builds its monthly summary from the same stream.
    let book = std::sync::Arc::new(std::sync::Mutex::new(cardlink_reference_aggregator::kakeibo::Kakeibo::new()));
    let args = cardlink_reference_aggregator::stream::StreamArgs {
        subscription_endpoint: dev.endpoint("subscription"),
        token: kakeibo.clone(),
        issuers: vec![],
        follow: false,
        every: 10,
        from_earliest: false,
    };
    let feed = std::sync::Arc::clone(&book);
    let started = std::time::Instant::now();
    tokio::time::timeout(
        WITHIN,
        cardlink_reference_aggregator::stream::run(
            &args,
            vec![v1::EventKind::Transaction],
            move |d| feed.lock().unwrap().apply(d),
            || {},
        ),
    )
    .await
    .expect("the reference app catches up")
    .unwrap();
    eprintln!("the reference app caught up in {:.1} s", started.elapsed().as_secs_f64());
    let summary = book.lock().unwrap().render();
    assert!(summary.contains("確定") && summary.contains("未確定"), "{summary}");
    // The past months come from history (the card companies loaded them at start, marked
    // historical: never on a live stream or a replay of the bus), the rest live.
    let jst = chrono::FixedOffset::east_opt(9 * 3600).unwrap();
    let two_months_ago = (chrono::Utc::now() - chrono::TimeDelta::days(60)).with_timezone(&jst).format("%Y-%m");
    assert!(summary.contains(&format!("{two_months_ago}  確定")), "no spending two months back: {summary}");
    assert!(summary.contains("未分類"), "the transactions-only consent's spending is unclassified: {summary}");

    // The pages, in the browser: transparency, goal, live view; then the member who just
    // consented sees it and what was provided, and revokes it.
    let seen = browser(&[
        "pages",
        "--base",
        &pages,
        "--issuer",
        "minato-card",
        "--login",
        "m-00002",
        "--password",
        "demo-password",
        "--revoke",
        "かけいぼノート（家計簿アプリ）",
        "--out",
        shots_dir,
    ])
    .await;
    let transparency = &seen["transparency"];
    for c in &connections {
        let listed = transparency[&c.issuer_id]["aggregators"].as_array().unwrap();
        assert!(!listed.is_empty(), "{}: {transparency}", c.issuer_id);
    }
    assert_eq!(transparency["sakura-card"]["aggregators"].as_array().unwrap().len(), 3, "{transparency}");
    assert_eq!(transparency["hikari-card"]["aggregators"], serde_json::json!([]), "{transparency}");
    assert_eq!(seen["goal"]["share"], format!("{:.1}%", expected_share * 100.0), "{}", seen["goal"]);
    assert_eq!(seen["goal"]["issuers"]["sakura-card"], "算入");
    assert_eq!(seen["goal"]["issuers"]["hikari-card"], "—");
    let events_in = seen["live"]["events_in"].as_object().unwrap();
    assert_eq!(events_in.len(), 4, "every demo issuer's events on the live view: {events_in:?}");
    assert!(seen["consents"].as_array().unwrap().iter().any(|c| c == "かけいぼノート（家計簿アプリ）"), "{seen}");
    let history = seen["access_history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|row| row[1] == "かけいぼノート（家計簿アプリ）" && row[3].as_str().unwrap().ends_with(" 件")),
        "the member sees what was provided: {history:?}"
    );
    assert!(seen["revoke_notice"].as_str().unwrap().contains("取り消しました"), "{seen}");
    for shot in ["login_screenshot", "approve_screenshot"] {
        assert!(consented[shot]["ink"].as_f64().unwrap() > 0.01, "{shot}");
    }
    for shot in
        ["transparency_screenshot", "goal_screenshot", "live_screenshot", "dashboard_screenshot", "revoked_screenshot"]
    {
        assert!(seen[shot]["ink"].as_f64().unwrap() > 0.01, "{shot}: {}", seen[shot]);
    }

    // The revocation reached the aggregator's side at once.
    let revoked = consent_api
        .get_consent(authorized(v1::GetConsentRequest { consent_id: consent_id.clone() }, &kakeibo))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.status, v1::ConsentStatus::Revoked as i32);
    let listed = output({
        let mut c = dev.aggregator("kakeibo-note");
        c.args(["consents", "--format", "json"]);
        c
    })
    .await;
    let mine: Vec<Value> = listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(mine.iter().any(|c| c["consent_id"] == consent_id.as_str() && c["status"] == "REVOKED"), "{listed}");

    // Keep the screenshots of a CI run where a person can look at them.
    if let Ok(keep) = std::env::var("CARDLINK_E2E_SCREENSHOTS") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        for entry in std::fs::read_dir(&shots).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), keep.join(entry.file_name())).unwrap();
        }
    }
    dev.interrupt().await;
}
