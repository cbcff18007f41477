//! `cardlink dev`: the whole system on one machine — the embedded broker (or `--kafka`), every
//! service, all pages on one port, the demo world of [`crate::demo`] with consents given through
//! the real flow, a simulated issuer for each demo card company that first loads its members' past
//! months (historical, into history) and then publishes live, and a stream per demo aggregator
//! that starts with its consents' history (backfill) and goes on live. Ctrl-C (or SIGTERM) stops
//! it all, in order: simulators and demo streams, then services, then the broker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use cardlink_adapters::simulator::{self, SimConfig, Simulator};
use cardlink_adapters::sink::IngestSink;
use cardlink_serving::html::{self, Nav, esc};
use clap::Args;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::config::FileConfig;
use crate::demo;
use crate::services::{
    ConsentSettings, HistorySettings, IngestSettings, Mode, Platform, RegistrySettings, SubscriptionSettings,
};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Use this Kafka cluster (host:port,...) instead of starting the embedded broker.
    #[arg(long, env = "CARDLINK_KAFKA_BOOTSTRAP")]
    kafka: Option<String>,
    /// Where the embedded broker listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:9092", env = "CARDLINK_EMBEDDED_BROKER")]
    broker_listen: SocketAddr,
    // The services' own settings, the same as `cardlink serve`'s (dev serves every page on
    // --pages-listen).
    #[command(flatten)]
    registry: RegistrySettings,
    #[command(flatten)]
    ingest: IngestSettings,
    #[command(flatten)]
    consent: ConsentSettings,
    #[command(flatten)]
    subscription: SubscriptionSettings,
    #[command(flatten)]
    history: HistorySettings,
    /// Simulated card events per second, per demo card company (0: none).
    #[arg(long, default_value_t = 20)]
    simulate_rate: u32,
    /// Simulated accounts per demo card company (the first three belong to the demo members).
    #[arg(long, default_value_t = 50)]
    simulate_members: usize,
    /// Days of the simulated members' past each demo card company loads at start, marked
    /// historical (into history, never live news) at a household's pace of card use (0: none;
    /// nothing either with --simulate-rate 0).
    #[arg(long, default_value_t = 90)]
    simulate_history_days: u32,
    /// Also write the endpoints and this run's credentials here (JSON, owner-readable only), for
    /// scripts and tests.
    #[arg(long)]
    info_file: Option<PathBuf>,
}

/// One simulated card company publishing through the ingest API until told to stop.
struct Simulation {
    issuer: &'static str,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<(u64, u64, u64)>>,
}

/// Card events a simulated account has a day in the past months: some 20 purchases a month, each
/// authorised and posted.
const PAST_DAILY_EVENTS: f64 = 1.5;
/// How long the demo waits for history to have indexed the past before its streams backfill.
const INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn sim_config(issuer: &str, seed: u64, members: usize, start: chrono::DateTime<chrono::Utc>) -> SimConfig {
    SimConfig { start, ..SimConfig::new(issuer, seed, members) }
}

/// A simulated card company's past: `days` up to now published at once as a historical load
/// (within the demo consents' reach back, `history_days`). Returns the simulator at now, to go on
/// live from there — the past's pending purchases post live, ids never repeat — and the counts.
async fn load_past(
    issuer: &'static str,
    seed: u64,
    members: usize,
    days: u32,
    endpoint: String,
    token: String,
) -> anyhow::Result<(Simulator, (u64, u64, u64))> {
    let now = chrono::Utc::now();
    let mut sim = Simulator::new(sim_config(issuer, seed, members, now - chrono::TimeDelta::days(days.into())));
    let mut counts = (0, 0, 0);
    if days > 0 {
        sim.set_daily_events(Some(PAST_DAILY_EVENTS));
        let mut sink = IngestSink::connect(&endpoint, issuer, &token).await?.historical();
        counts = simulator::publish_until(&mut sim, &mut sink, now, 500).await?;
        sim.set_daily_events(None);
    }
    Ok((sim, counts))
}

/// Waits until the history indexer holds everything on the bus so far (a lag measured after this
/// call began), or [`INDEX_WAIT`]; says which.
async fn past_indexed(mut progress: tokio::sync::watch::Receiver<cardlink_history_service::indexer::Progress>) -> bool {
    let waited = async {
        // A measurement that began before the load ended may still say 0.
        tokio::time::sleep(2 * cardlink_history_service::indexer::LAG_EVERY).await;
        progress.wait_for(|p| !p.assigned.is_empty() && p.lag == Some(0)).await.is_ok()
    };
    tokio::time::timeout(INDEX_WAIT, waited).await.unwrap_or(false)
}

fn simulate(issuer: &'static str, mut sim: Simulator, rate: u32, endpoint: String, token: String) -> Simulation {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut sink = IngestSink::connect(&endpoint, issuer, &token).await?;
        let stop = async {
            let _ = stopped.await;
        };
        simulator::pace(&mut sim, &mut sink, rate, None, stop).await.map_err(anyhow::Error::from)
    });
    Simulation { issuer, stop, task }
}

pub async fn run(args: DevArgs, file: &FileConfig) -> anyhow::Result<()> {
    // Keep the broker alive for the whole run; dropping it stops it.
    let (_broker, bootstrap) = match args.kafka {
        Some(kafka) => (None, kafka),
        None => start_embedded(args.broker_listen).await?,
    };
    let bus = crate::runtime::bus_config(bootstrap.clone(), file)?;
    let report = cardlink_bus::provision(&bus).await.with_context(|| format!("provisioning topics on {bootstrap}"))?;
    crate::runtime::print_report(&report);

    // Registry: a fresh platform key per run; the demo participants are registered through it.
    let signer = Arc::new(cardlink_auth::TokenSigner::generate("dev"));
    let registry =
        cardlink_registry::server::start(&bus, args.registry.config(Mode::Dev)?, Arc::clone(&signer)).await?;
    // Every page on one port: bind it first, the consent service and the demo card companies'
    // login providers need its public URL.
    let (pages_listener, pages_addr) = cardlink_serving::bind(args.consent.pages_listen(Mode::Dev)).await?;
    let pages_url = args.consent.public_url.clone().unwrap_or_else(|| format!("http://{pages_addr}"));
    let (demo_login, logins) = demo::login_providers(
        &pages_url,
        &format!("{pages_url}{}", cardlink_consent::login::CALLBACK_PATH),
        |issuer| {
            Simulator::new(sim_config(issuer, 0, args.simulate_members, chrono::Utc::now()))
                .account_refs()
                .map(str::to_owned)
                .collect()
        },
    );
    let world = demo::setup(registry.registry(), &logins).await?;

    // Ingest accepts the issuers' registry credentials.
    let mut ingest =
        cardlink_ingest::server::start(&bus, args.ingest.config(Mode::Dev, &[signer.public_key()])?).await?;
    ingest.ready().await;
    let ingest_endpoint = format!("http://{}", ingest.addr());

    let client_secrets: std::collections::HashMap<String, String> =
        logins.iter().map(|(issuer, client)| (issuer.clone(), client.client_secret.clone())).collect();
    // Consent and subscription share the secret: aggregators must see the same pseudonyms in
    // consents and in events.
    let secret: Arc<[u8]> = Arc::from(rand::random::<[u8; 32]>().as_slice());
    let platform = Platform { trusted_keys: vec![signer.public_key()], secret };
    let mut consent_config = args.consent.config(Mode::Dev, &platform, Some(Arc::new(client_secrets)))?;
    // The pages are bound already: their actual address (the setting may ask for any port).
    consent_config.public_url = Some(pages_url.clone());
    let consent = cardlink_consent::server::start(&bus, consent_config).await?;
    // History: a SQLite file of this run's own unless told otherwise (the embedded broker starts
    // empty too; with --kafka, the indexer indexes what the cluster retains into it). The
    // subscription service's backfills read the same store.
    let history_dir =
        tempfile::Builder::new().prefix("cardlink-dev-history").tempdir().context("a directory for history")?;
    let history_config = args.history.config(Mode::Dev, &platform, Some(&history_dir.path().join("history.db")))?;
    let subscription_config = args.subscription.config(Mode::Dev, &platform, Some(history_config.store.clone()))?;
    let subscription = cardlink_subscription::server::start(&bus, subscription_config).await?;
    let history = cardlink_history_service::server::start(&bus, history_config).await?;
    let endpoints = Endpoints {
        kafka: bootstrap.clone(),
        ingest: ingest_endpoint.clone(),
        registry: format!("http://{}", registry.addr()),
        consent: format!("http://{}", consent.grpc_addr()),
        subscription: format!("http://{}", subscription.addr()),
        history: format!("http://{}", history.addr()),
        pages: pages_url.clone(),
    };
    let (pages_stop, pages_stopped) = tokio::sync::watch::channel(false);
    let router = axum::Router::new()
        .route(
            "/",
            axum::routing::get({
                let index = index_page(&endpoints);
                move || async move { index.clone() }
            }),
        )
        .merge(consent.pages())
        .merge(Arc::new(demo_login).router())
        .merge(registry.pages())
        .merge(subscription.pages());
    let pages = html::serve(pages_listener, router, pages_stopped, "pages server");

    let consents = demo::give_consents(&world, &endpoints.consent, &endpoints.subscription)
        .await
        .context("giving the demo consents")?;

    // Seeds differ per issuer (so do their members' habits) but are fixed across runs. Each card
    // company first loads its members' past (the consents given above reach back a year), then
    // publishes live; the demo streams start once history holds the past, so they backfill it.
    let simulators: Vec<(&'static str, Simulator, String)> = if args.simulate_rate == 0 {
        Vec::new()
    } else {
        let loads = demo::ISSUERS.iter().zip(1u64..).filter_map(|(issuer, seed)| {
            let token = world.issuers.get(issuer.id)?.clone();
            let load = load_past(
                issuer.id,
                seed,
                args.simulate_members,
                args.simulate_history_days,
                ingest_endpoint.clone(),
                token.clone(),
            );
            Some(tokio::spawn(async move { load.await.map(|(sim, counts)| (issuer.id, sim, token, counts)) }))
        });
        let loads: Vec<_> = loads.collect();
        let mut loaded = Vec::new();
        for load in loads {
            let (issuer, sim, token, (accepted, duplicate, rejected)) =
                load.await.context("a card company's load task")?.context("loading a card company's past")?;
            if args.simulate_history_days > 0 {
                println!(
                    "{issuer} loaded {} days of its members' past: {accepted} events ({duplicate} duplicate, {rejected} rejected)",
                    args.simulate_history_days
                );
            }
            loaded.push((issuer, sim, token));
        }
        if args.simulate_history_days > 0 && !past_indexed(history.progress()).await {
            eprintln!("history has not indexed the past within {INDEX_WAIT:?}; the demo streams backfill what it has");
        }
        loaded
    };
    let streams = demo::follow_streams(&world, &endpoints.subscription)?;
    let simulations: Vec<Simulation> = simulators
        .into_iter()
        .map(|(issuer, sim, token)| simulate(issuer, sim, args.simulate_rate, ingest_endpoint.clone(), token))
        .collect();

    if let Some(path) = &args.info_file {
        let info = json!({
            "endpoints": endpoints.json(),
            "credentials": &world,
            "demo_password": demo::DEMO_PASSWORD,
            "consents": &consents,
        });
        cardlink_client::pending::write_private(path, serde_json::to_string_pretty(&info)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    print_banner(&endpoints, &world, &consents, args.simulate_rate);

    crate::runtime::stop_signal().await?;
    println!("stopping");
    for sim in simulations {
        let _ = sim.stop.send(());
        match sim.task.await {
            Ok(Ok((accepted, duplicate, rejected))) => {
                println!("{} published {accepted} events ({duplicate} duplicate, {rejected} rejected)", sim.issuer);
            }
            Ok(Err(e)) => eprintln!("{}: simulator stopped: {e:#}", sim.issuer),
            Err(e) => eprintln!("{}: simulator task failed: {e}", sim.issuer),
        }
    }
    for stream in streams {
        let aggregator = stream.aggregator;
        match stream.stop().await {
            Ok(n) => println!("{aggregator} received {n} deliveries on its demo stream"),
            Err(e) => eprintln!("{aggregator}: demo stream failed: {e:#}"),
        }
    }
    pages_stop.send_replace(true);
    ingest.shutdown().await?;
    subscription.shutdown().await;
    history.shutdown().await;
    consent.shutdown().await;
    registry.shutdown().await?;
    let _ = pages.await;
    Ok(())
}

/// Where everything of this run answers.
#[derive(Debug)]
struct Endpoints {
    kafka: String,
    ingest: String,
    registry: String,
    consent: String,
    subscription: String,
    history: String,
    pages: String,
}

impl Endpoints {
    fn json(&self) -> serde_json::Value {
        json!({
            "kafka": self.kafka,
            "ingest": self.ingest,
            "registry": self.registry,
            "consent": self.consent,
            "subscription": self.subscription,
            "history": self.history,
            "pages": self.pages,
        })
    }
}

fn print_banner(e: &Endpoints, world: &demo::DemoWorld, consents: &[demo::CreatedConsent], rate: u32) {
    println!();
    println!("cardlink dev is running — open {}/", e.pages);
    println!();
    println!("  Kafka bootstrap servers:  {}", e.kafka);
    println!("  gRPC IssuerIngest:        {}", e.ingest);
    println!("  gRPC Registry:            {}", e.registry);
    println!("  gRPC ConsentService:      {}", e.consent);
    println!("  gRPC Subscription:        {}", e.subscription);
    println!("  gRPC History:             {}", e.history);
    println!("  member page:              {}/member", e.pages);
    println!("  transparency page:        {}/transparency", e.pages);
    println!("  goal page:                {}/goal", e.pages);
    println!("  live view:                {}/live", e.pages);
    println!();
    println!(
        "Card companies (simulated, {rate} events/s each); members m-00001 … m-{:05} sign in with {}:",
        demo::MEMBERS_PER_ISSUER,
        demo::DEMO_PASSWORD
    );
    for i in &demo::ISSUERS {
        println!("  {:<12} {}", i.id, i.name);
    }
    println!("Aggregators:");
    for a in &demo::AGGREGATORS {
        println!("  {:<12} {}", a.id, a.name);
    }
    println!("Consents given through the consent page at start:");
    for c in consents {
        println!("  {}  {} → {} ({})", c.consent_id, c.issuer_id, c.aggregator_id, c.member);
    }
    println!();
    println!("Credentials for this run (signed by a per-run platform key):");
    println!("  operator:      {}", world.operator);
    for (id, token) in &world.issuers {
        println!("  {id:<14} {token}");
    }
    for (id, token) in &world.aggregators {
        println!("  {id:<14} {token}");
    }
    let kakeibo = world.aggregators.get(demo::AGGREGATORS[0].id).map(String::as_str).unwrap_or_default();
    println!();
    println!("Be the household-budget app (in another terminal):");
    println!("  export CARDLINK_AGGREGATOR_TOKEN={kakeibo}");
    println!(
        "  cargo run --release -- aggregator consent request --issuer minato-card   # sign in as m-00002 / {}",
        demo::DEMO_PASSWORD
    );
    println!("  cargo run --release -- aggregator subscribe --backfill --cursor-file cursor.txt");
    println!("  cargo run --release -p cardlink-reference-aggregator --bin kakeibo");
    if let Some(token) = world.issuers.get(demo::ISSUERS[0].id) {
        println!("Publish a batch file as {}:", demo::ISSUERS[0].id);
        println!(
            "  CARDLINK_ISSUER_KEY={token} cargo run --release -- adapter file --issuer {} \\",
            demo::ISSUERS[0].id
        );
        println!(
            "    --mapping crates/adapters/samples/core_export_sjis.toml crates/adapters/samples/core_export_sjis.dat"
        );
    }
    println!("Press Ctrl-C to stop.");
}

/// The landing page: what runs here and where to look.
fn index_page(e: &Endpoints) -> axum::response::Html<String> {
    let issuers: String =
        demo::ISSUERS.iter().map(|i| format!("<li>{} <small>({})</small></li>", esc(i.name), esc(i.id))).collect();
    let aggregators: String =
        demo::AGGREGATORS.iter().map(|a| format!("<li>{} <small>({})</small></li>", esc(a.name), esc(a.id))).collect();
    let body = format!(
        "<h1>cardlink — カード会社とデータ連携事業者をつなぐ共通基盤（開発環境）</h1>\
         <p>カード会社はイベントを一度だけ配信し、会員が同意した範囲だけが、同意した事業者に届きます。\
         この画面は <code>cardlink dev</code> が起動した全システムです。</p>\
         <h2>ページ</h2><ul>\
         <li><a href=\"/member\">会員ページ</a>: カード会社の会員としてログインし、同意の確認・取り消しと提供の記録を見る（会員ID m-00001、パスワード {pw}）</li>\
         <li><a href=\"/transparency\">提供先の公表</a>: カード会社ごとの API 連携先</li>\
         <li><a href=\"/goal\">目標の進捗</a>: 取扱高 90% の API 連携に向けた進捗</li>\
         <li><a href=\"/live\">ライブビュー</a>: 受信イベント・配信・接続中のストリーム</li></ul>\
         <h2>gRPC エンドポイント</h2><table>\
         <tr><th>cardlink.v1.IssuerIngest</th><td><code>{ingest}</code></td></tr>\
         <tr><th>cardlink.v1.Registry</th><td><code>{registry}</code></td></tr>\
         <tr><th>cardlink.v1.ConsentService</th><td><code>{consent}</code></td></tr>\
         <tr><th>cardlink.v1.Subscription</th><td><code>{subscription}</code></td></tr>\
         <tr><th>cardlink.v1.History</th><td><code>{history}</code></td></tr>\
         <tr><th>Kafka</th><td><code>{kafka}</code></td></tr></table>\
         <h2>デモの参加者</h2><div style=\"display:flex;gap:3em;flex-wrap:wrap\"><div><p>カード会社</p><ul>{issuers}</ul></div>\
         <div><p>電子決済等代行業者</p><ul>{aggregators}</ul></div></div>\
         <p class=\"muted\">同意フローを試す: 端末に表示された <code>cardlink aggregator consent request</code> を実行し、表示された URL をブラウザで開きます。</p>",
        pw = esc(demo::DEMO_PASSWORD),
        ingest = esc(&e.ingest),
        registry = esc(&e.registry),
        consent = esc(&e.consent),
        subscription = esc(&e.subscription),
        history = esc(&e.history),
        kafka = esc(&e.kafka),
    );
    html::page("cardlink 開発環境", Nav::Home, &body)
}

#[cfg(feature = "embedded-broker")]
async fn start_embedded(
    listen: SocketAddr,
) -> anyhow::Result<(Option<cardlink_bus::embedded::EmbeddedBroker>, String)> {
    let broker = cardlink_bus::embedded::EmbeddedBroker::start(listen)
        .await
        .with_context(|| format!("starting the embedded broker on {listen} (choose another with --broker-listen)"))?;
    let bootstrap = broker.bootstrap_servers();
    Ok((Some(broker), bootstrap))
}

#[cfg(not(feature = "embedded-broker"))]
async fn start_embedded(_listen: SocketAddr) -> anyhow::Result<(Option<()>, String)> {
    anyhow::bail!("this build has no embedded broker (feature `embedded-broker`); pass --kafka host:port")
}
