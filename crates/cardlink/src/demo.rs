//! The demo world `cardlink dev` sets up, all through the real services: card companies with
//! their 取扱高, aggregators of three kinds, the connections between them, members who sign in
//! at their demo card company's OpenID Provider (`cardlink-demo-login`, registered by each
//! issuer like a real one), and consents those members gave through the real consent flow
//! (request over gRPC, sign-in at the provider and approval on the consent page over HTTP, code
//! exchange).
//!
//! The companies and apps are fictional; their volumes are of the order of Japan's larger and
//! smaller card issuers, so the goal page shows a realistic share. One issuer publishes but has
//! no aggregator connection yet: it is what keeps the share below the 90% target.

use std::collections::BTreeMap;

use anyhow::Context as _;
use cardlink_auth::Role;
use cardlink_authn::Caller;
use cardlink_client::aggregator::{Aggregator, ConsentAsk};
use cardlink_demo_login::{ACCOUNT_CLAIM, DemoClient, DemoLogin, DemoMember};
use cardlink_events::registry::{AggregatorEntity, AggregatorStatus, ClientAuth, IssuerEntity, IssuerLogin, Scope};
use cardlink_registry::service::Registry;
use serde::Serialize;

/// The demo members' password at every demo issuer (development only).
pub const DEMO_PASSWORD: &str = "demo-password";

/// A card company of the demo.
#[derive(Debug)]
pub struct DemoIssuer {
    pub id: &'static str,
    pub name: &'static str,
    /// 取扱高 per year, yen.
    pub annual_volume_jpy: i64,
    /// The aggregators it enables, with the scopes it offers each.
    pub connections: &'static [(&'static str, &'static [Scope])],
}

/// An aggregator of the demo.
#[derive(Debug)]
pub struct DemoAggregator {
    pub id: &'static str,
    pub name: &'static str,
    pub registration_number: &'static str,
    pub contact: &'static str,
}

const ALL: &[Scope] = &Scope::ALL;
const NO_MERCHANT: &[Scope] = &[Scope::Transactions, Scope::Statements];

pub const ISSUERS: [DemoIssuer; 4] = [
    DemoIssuer {
        id: "sakura-card",
        name: "さくらカード株式会社",
        annual_volume_jpy: 18_200_000_000_000,
        connections: &[("kakeibo-note", ALL), ("sme-books", ALL), ("asset-view", NO_MERCHANT)],
    },
    DemoIssuer {
        id: "minato-card",
        name: "みなとカード株式会社",
        annual_volume_jpy: 9_600_000_000_000,
        connections: &[("kakeibo-note", ALL), ("sme-books", ALL)],
    },
    DemoIssuer {
        id: "kita-card",
        name: "北日本カードサービス株式会社",
        annual_volume_jpy: 2_100_000_000_000,
        connections: &[("kakeibo-note", ALL)],
    },
    DemoIssuer {
        id: "hikari-card",
        name: "ひかりカード株式会社",
        annual_volume_jpy: 5_400_000_000_000,
        connections: &[],
    },
];

pub const AGGREGATORS: [DemoAggregator; 3] = [
    DemoAggregator {
        id: "kakeibo-note",
        name: "かけいぼノート（家計簿アプリ）",
        registration_number: "関東財務局長（電代）第0001号",
        contact: "support@kakeibo-note.example",
    },
    DemoAggregator {
        id: "sme-books",
        name: "スマート会計（中小企業・個人事業主向け会計ソフト）",
        registration_number: "関東財務局長（電代）第0002号",
        contact: "api@sme-books.example",
    },
    DemoAggregator {
        id: "asset-view",
        name: "資産ビュー（資産管理アプリ）",
        registration_number: "近畿財務局長（電代）第0003号",
        contact: "help@asset-view.example",
    },
];

/// Members per demo issuer who can sign in (login ids `m-00001` …); member *n* holds the
/// simulator's account *n − 1*.
pub const MEMBERS_PER_ISSUER: usize = 3;
const MEMBER_NAMES: [&str; MEMBERS_PER_ISSUER] = ["山田 花子", "鈴木 一郎（個人事業主）", "佐藤 美咲"];

/// A consent the demo's members give at start: (issuer, member number, aggregator, scopes,
/// purpose).
type DemoConsent = (&'static str, usize, &'static str, &'static [Scope], &'static str);

pub const CONSENTS: [DemoConsent; 5] = [
    ("sakura-card", 1, "kakeibo-note", ALL, "家計簿への自動取り込みと月次の支出集計"),
    ("sakura-card", 2, "sme-books", ALL, "事業用カードの利用明細からの仕訳作成"),
    ("sakura-card", 1, "asset-view", &[Scope::Statements], "カードの請求予定額の表示"),
    ("minato-card", 1, "kakeibo-note", &[Scope::Transactions], "家計簿への自動取り込み（店名なし）"),
    ("kita-card", 1, "kakeibo-note", ALL, "家計簿への自動取り込みと月次の支出集計"),
];

pub fn member_login(n: usize) -> String {
    format!("m-{n:05}")
}

/// Credentials of everyone registered, as the registry issued them.
#[derive(Debug, Default, Serialize)]
pub struct DemoWorld {
    pub operator: String,
    pub issuers: BTreeMap<String, String>,
    pub aggregators: BTreeMap<String, String>,
}

/// Registers the demo participants, their connections and the issuers' login providers
/// (`logins`, by issuer id) through the registry.
pub async fn setup(registry: &Registry, logins: &BTreeMap<String, DemoClient>) -> anyhow::Result<DemoWorld> {
    let operator = registry.bootstrap_operator("operator").await?;
    let op = Caller { participant_id: "operator".into(), role: Role::Operator, credential_id: operator.credential_id };
    let mut world = DemoWorld { operator: operator.token, ..DemoWorld::default() };
    for a in &AGGREGATORS {
        let entity = AggregatorEntity {
            aggregator_id: a.id.into(),
            name: a.name.into(),
            registration_number: a.registration_number.into(),
            contact: a.contact.into(),
            status: AggregatorStatus::Active,
            redirect_uris: demo_redirect_uris(a.id),
        };
        let (_, credential) =
            registry.register_aggregator(&op, entity).await.with_context(|| format!("registering {}", a.id))?;
        world.aggregators.insert(a.id.into(), credential.token);
    }
    for i in &ISSUERS {
        let entity = IssuerEntity {
            issuer_id: i.id.into(),
            name: i.name.into(),
            annual_volume_jpy: i.annual_volume_jpy,
            login: None,
        };
        let (_, credential) =
            registry.register_issuer(&op, entity).await.with_context(|| format!("registering {}", i.id))?;
        // The issuer manages its own connections, with its own credential.
        let caller =
            Caller { participant_id: i.id.into(), role: Role::Issuer, credential_id: credential.credential_id.clone() };
        // Like a real card company, each registers where its members sign in.
        let client = logins.get(i.id).with_context(|| format!("no demo login provider for {}", i.id))?;
        let login = IssuerLogin {
            issuer_url: client.issuer_url.clone(),
            client_id: client.client_id.clone(),
            client_auth: ClientAuth::ClientSecretBasic,
            account_claim: ACCOUNT_CLAIM.to_owned(),
        };
        registry
            .set_issuer_login(&caller, i.id, login)
            .await
            .with_context(|| format!("{}: setting its login", i.id))?;
        for (aggregator, scopes) in i.connections {
            registry
                .enable_connection(&caller, i.id, aggregator, scopes.to_vec())
                .await
                .with_context(|| format!("connecting {} to {aggregator}", i.id))?;
        }
        world.issuers.insert(i.id.into(), credential.token);
    }
    Ok(world)
}

/// Where a demo aggregator's members come back: its web callback, and the loopback one of
/// `cardlink aggregator consent` (any port).
fn demo_redirect_uris(aggregator: &str) -> Vec<String> {
    vec![format!("https://{aggregator}.example/cardlink/callback"), "http://127.0.0.1/callback".to_owned()]
}

/// The demo card companies' login providers, served under `pages_url`, for the consent page's
/// `redirect_uri`; member *n* holds `account_refs(issuer)[n - 1]`. Returns the providers and
/// what each issuer registers (with the client secret the consent service is given).
pub fn login_providers(
    pages_url: &str,
    redirect_uri: &str,
    account_refs: impl Fn(&str) -> Vec<String>,
) -> (DemoLogin, BTreeMap<String, DemoClient>) {
    let mut login = DemoLogin::new(pages_url, redirect_uri);
    let mut clients = BTreeMap::new();
    for issuer in &ISSUERS {
        clients.insert(issuer.id.to_owned(), login.add_issuer(issuer.id, issuer.name));
        let accounts = account_refs(issuer.id);
        for (n, name) in (1..=MEMBERS_PER_ISSUER).zip(MEMBER_NAMES) {
            let Some(account) = accounts.get(n - 1) else { continue };
            let label = format!(
                "{} {}",
                issuer.name.trim_end_matches("株式会社"),
                ["ゴールド", "ビジネス", "クラシック"][n - 1]
            );
            let member = DemoMember {
                member_ref: member_login(n),
                display_name: name.into(),
                accounts: vec![(account.clone(), label)],
            };
            login.add_member(issuer.id, member, DEMO_PASSWORD);
        }
    }
    (login, clients)
}

/// A consent the demo created.
#[derive(Debug, Serialize)]
pub struct CreatedConsent {
    pub consent_id: String,
    pub issuer_id: String,
    pub aggregator_id: String,
    pub member: String,
}

/// Gives the demo consents the way a member would: each aggregator asks, the member signs in at
/// the consent page and approves, the aggregator exchanges the code.
pub async fn give_consents(
    world: &DemoWorld,
    consent_endpoint: &str,
    subscription_endpoint: &str,
) -> anyhow::Result<Vec<CreatedConsent>> {
    let mut created = Vec::new();
    for (issuer, member, aggregator, scopes, purpose) in CONSENTS {
        let token = world.aggregators.get(aggregator).context("demo aggregator not registered")?;
        let mut client = Aggregator::connect(consent_endpoint, subscription_endpoint, token)?;
        let redirect_uri = demo_redirect_uris(aggregator).remove(0);
        let state = format!("demo-{issuer}-{member}");
        let ask = ConsentAsk {
            issuer_id: issuer.into(),
            scopes: scopes.iter().map(|s| cardlink_api::convert::scope(*s)).collect(),
            accounts_hint: String::new(),
            duration_days: 180,
            // Reaches back a year; the simulators load the past months at start.
            history_days: 365,
            purpose: purpose.into(),
            redirect_uri: redirect_uri.clone(),
            state: state.clone(),
        };
        let requested =
            client.request_consent(&ask).await.with_context(|| format!("{aggregator} asking at {issuer}"))?;
        let login = member_login(member);
        let back = cardlink_client::member::decide(&requested.authorization_url, &login, DEMO_PASSWORD, true)
            .await
            .with_context(|| format!("{login} approving at {issuer}"))?;
        anyhow::ensure!(back.state.as_deref() == Some(state.as_str()), "the consent page returned another state");
        let code = back.code.with_context(|| format!("no code in {}", back.location))?;
        let consent = client.exchange(&code, &requested.pkce.verifier, &redirect_uri).await?;
        created.push(CreatedConsent {
            consent_id: consent.consent_id,
            issuer_id: issuer.into(),
            aggregator_id: aggregator.into(),
            member: login,
        });
    }
    Ok(created)
}

/// One demo aggregator's live stream: a real subscription client that receives (and counts)
/// what its consents entitle it to, so the live view and the members' access history show
/// deliveries from the first minute.
#[derive(Debug)]
pub struct DemoStream {
    pub aggregator: &'static str,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<u64>>,
}

impl DemoStream {
    /// Stops the stream; returns how many deliveries it received.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.stop.send_replace(true);
        self.task.await?
    }
}

/// Starts a stream for each demo aggregator: its consents' history, then live.
pub fn follow_streams(world: &DemoWorld, subscription_endpoint: &str) -> anyhow::Result<Vec<DemoStream>> {
    use cardlink_client::subscriber::{Resumable, Start};
    let mut streams = Vec::new();
    for a in &AGGREGATORS {
        let token = world.aggregators.get(a.id).context("demo aggregator not registered")?;
        let client = Aggregator::connect(subscription_endpoint, subscription_endpoint, token)?;
        // The consents' history first (the simulators loaded the past), then live.
        let mut stream = Resumable::new(client, Vec::new(), Vec::new(), Start::Backfill(Vec::new()), None)?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut received = 0u64;
            loop {
                tokio::select! {
                    _ = stopped.changed() => return Ok(received),
                    batch = stream.next(|_| {}) => received += batch?.deliveries.len() as u64,
                }
            }
        });
        streams.push(DemoStream { aggregator: a.id, stop, task });
    }
    Ok(streams)
}
