//! `cardlink aggregator …`: what an aggregator's engineer tries first — ask a member for
//! consent, exchange the code, list and revoke consents, subscribe (a table or JSON lines, with
//! a live rate, resuming from a cursor file) and acknowledge a named position. Thin glue over
//! `cardlink-client`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cardlink_api::v1;
use cardlink_client::aggregator::{Aggregator, ConsentAsk};
use cardlink_client::cursor_file::CursorFile;
use cardlink_client::history::{HistoryReader, TransactionsAsk};
use cardlink_client::loopback::{Callback, Loopback};
use cardlink_client::pending::{PendingFile, PendingRequest};
use cardlink_client::render;
use cardlink_client::subscriber::{Notice, Resumable, Start};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Args)]
pub struct AggregatorArgs {
    /// The consent service.
    #[arg(long, global = true, default_value = "http://127.0.0.1:50053", env = "CARDLINK_CONSENT_ENDPOINT")]
    consent_endpoint: String,
    /// The subscription service.
    #[arg(long, global = true, default_value = "http://127.0.0.1:50054", env = "CARDLINK_SUBSCRIPTION_ENDPOINT")]
    subscription_endpoint: String,
    /// The history service.
    #[arg(long, global = true, default_value = "http://127.0.0.1:50055", env = "CARDLINK_HISTORY_ENDPOINT")]
    history_endpoint: String,
    /// The aggregator's credential (`cl1.…`; prefer the environment variable).
    #[arg(long, global = true, env = "CARDLINK_AGGREGATOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: AggregatorCommand,
}

#[derive(Debug, Subcommand)]
enum AggregatorCommand {
    /// Ask a member for consent, or finish asking.
    Consent {
        #[command(subcommand)]
        command: ConsentCommand,
    },
    /// This aggregator's consents.
    Consents {
        /// Only the active ones.
        #[arg(long)]
        active: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Receive consented events, resumably.
    Subscribe(SubscribeArgs),
    /// A member's past transactions and statements under one of your consents (History).
    History {
        #[command(subcommand)]
        command: HistoryCommand,
    },
    /// Save a cursor as a named position on the server (`subscribe --position NAME` resumes).
    Ack {
        /// The position's name (1–64 of A-Z a-z 0-9 . _ -).
        #[arg(long)]
        name: String,
        /// The cursor to save…
        #[arg(long, conflicts_with = "cursor_file", required_unless_present = "cursor_file")]
        cursor: Option<String>,
        /// …or the one in this cursor file.
        #[arg(long)]
        cursor_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConsentCommand {
    /// Create a consent request and print the URL to send the member to. Without
    /// --redirect-uri, the CLI receives the redirect itself (a loopback listener), exchanges the
    /// code and prints the consent.
    Request {
        /// The member's card company.
        #[arg(long)]
        issuer: String,
        /// Data asked for; repeat (default: all three).
        #[arg(long = "scope", value_enum)]
        scopes: Vec<ScopeArg>,
        /// How long the consent lasts (at most 365 days).
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// How many past days the consent also covers (at most 730): what History and a
        /// backfill can read.
        #[arg(long, default_value_t = 0)]
        history_days: u32,
        /// What the data is for, shown to the member.
        #[arg(long, default_value = "家計簿への自動取り込み")]
        purpose: String,
        /// Which accounts, as a hint shown to the member.
        #[arg(long, default_value = "")]
        accounts_hint: String,
        /// Your app's redirect URI (https; http only for localhost). The request then waits in
        /// --pending-file for `consent exchange`.
        #[arg(long)]
        redirect_uri: Option<String>,
        /// Loopback port for the redirect (default: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// How long to wait for the member (loopback only).
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
        #[arg(long, default_value = "cardlink-pending.json")]
        pending_file: PathBuf,
    },
    /// Exchange the code the member's browser brought back to your redirect URI.
    Exchange {
        /// The whole URL the browser was sent to (…?code=…&state=…).
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "cardlink-pending.json")]
        pending_file: PathBuf,
    },
    /// Revoke one of your consents.
    Revoke {
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "revoked by the aggregator")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum HistoryCommand {
    /// Transactions (利用明細), newest first.
    Transactions {
        #[command(flatten)]
        which: HistoryWhich,
        /// Only this billing month (請求月), YYYY-MM.
        #[arg(long)]
        month: Option<String>,
        /// From this many days ago (default 90; with --month, the whole month).
        #[arg(long)]
        days: Option<u32>,
        /// Oldest first.
        #[arg(long)]
        oldest_first: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Statements (請求), newest first.
    Statements {
        #[command(flatten)]
        which: HistoryWhich,
        /// From this billing month, YYYY-MM.
        #[arg(long)]
        from_month: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Debug, Args)]
struct HistoryWhich {
    /// The consent to read under.
    #[arg(long)]
    consent: String,
    /// The account as the consent shows it (acc_…); needed when it covers several.
    #[arg(long, default_value = "")]
    account: String,
}

#[derive(Debug, Args)]
struct SubscribeArgs {
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Resume from (and keep) the last processed cursor in this file.
    #[arg(long)]
    cursor_file: Option<PathBuf>,
    /// Without a saved cursor: start from everything still retained.
    #[arg(long, conflicts_with_all = ["position", "cursor", "backfill"])]
    from_earliest: bool,
    /// Without a saved cursor: start with your consents' history (from the history store), then
    /// live — one cursor throughout.
    #[arg(long, conflicts_with_all = ["position", "cursor"])]
    backfill: bool,
    /// With --backfill: only these consents' history; repeat (default: every active consent).
    #[arg(long = "backfill-consent", requires = "backfill")]
    backfill_consents: Vec<String>,
    /// Without a saved cursor: start after this named position.
    #[arg(long, conflicts_with = "cursor")]
    position: Option<String>,
    /// Without a saved cursor: start after this cursor.
    #[arg(long)]
    cursor: Option<String>,
    /// Only these kinds; repeat (default: all).
    #[arg(long = "kind", value_enum)]
    kinds: Vec<KindArg>,
    /// Only these issuers; repeat (default: all).
    #[arg(long = "issuer")]
    issuers: Vec<String>,
    /// Stop after this many deliveries.
    #[arg(long)]
    count: Option<u64>,
    /// Stop when the stream has caught up with the live tail.
    #[arg(long)]
    until_caught_up: bool,
    /// Seconds between rate lines on stderr (0: none).
    #[arg(long, default_value_t = 5)]
    rate_every: u64,
    /// Stop at the first ended stream instead of reconnecting from the cursor.
    #[arg(long)]
    no_reconnect: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScopeArg {
    Transactions,
    MerchantDetail,
    Statements,
}

impl ScopeArg {
    fn proto(self) -> v1::Scope {
        match self {
            Self::Transactions => v1::Scope::Transactions,
            Self::MerchantDetail => v1::Scope::MerchantDetail,
            Self::Statements => v1::Scope::Statements,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KindArg {
    Transaction,
    Statement,
    Consent,
}

impl KindArg {
    fn proto(self) -> v1::EventKind {
        match self {
            Self::Transaction => v1::EventKind::Transaction,
            Self::Statement => v1::EventKind::Statement,
            Self::Consent => v1::EventKind::Consent,
        }
    }
}

impl AggregatorArgs {
    fn client(&self) -> anyhow::Result<Aggregator> {
        let token = self
            .token
            .as_deref()
            .context("no credential: set CARDLINK_AGGREGATOR_TOKEN (or --token) to the aggregator's cl1.… token")?;
        Ok(Aggregator::connect(&self.consent_endpoint, &self.subscription_endpoint, token)?)
    }
}

pub async fn run(args: AggregatorArgs) -> anyhow::Result<()> {
    let mut client = args.client()?;
    match args.command {
        AggregatorCommand::Consent { command } => consent(&mut client, command).await,
        AggregatorCommand::Consents { active, format } => {
            let consents = client.consents(active).await?;
            if format == Format::Table {
                println!("{:<38} {:<14} {:<10} {:<34} expires", "consent", "issuer", "status", "scopes");
            }
            for c in &consents {
                match format {
                    Format::Table => println!("{}", consent_row(c)),
                    Format::Json => println!("{}", consent_json(c)),
                }
            }
            Ok(())
        }
        AggregatorCommand::Subscribe(s) => subscribe(client, s).await,
        AggregatorCommand::History { command } => {
            let token = args.token.as_deref().unwrap_or_default();
            history(HistoryReader::connect(&args.history_endpoint, token)?, command).await
        }
        AggregatorCommand::Ack { name, cursor, cursor_file } => {
            let cursor = match (cursor, cursor_file) {
                (Some(c), _) => c,
                (None, Some(file)) => CursorFile::new(&file)
                    .load()?
                    .with_context(|| format!("{}: no cursor saved yet", file.display()))?,
                (None, None) => anyhow::bail!("--cursor or --cursor-file"),
            };
            client.acknowledge(&name, &cursor).await?;
            println!("position {name} saved");
            Ok(())
        }
    }
}

fn status_name(status: i32) -> String {
    v1::ConsentStatus::try_from(status)
        .map(|s| s.as_str_name().trim_start_matches("CONSENT_STATUS_").to_owned())
        .unwrap_or_default()
}

fn scope_names(scopes: &[i32]) -> Vec<String> {
    scopes
        .iter()
        .filter_map(|s| v1::Scope::try_from(*s).ok())
        .map(|s| s.as_str_name().trim_start_matches("SCOPE_").to_owned())
        .collect()
}

fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0)).map(|t| t.to_rfc3339()).unwrap_or_default()
}

fn consent_row(c: &v1::Consent) -> String {
    format!(
        "{:<38} {:<14} {:<10} {:<34} {}",
        c.consent_id,
        c.issuer_id,
        status_name(c.status),
        scope_names(&c.scopes).join(","),
        rfc3339(c.expires_at.as_ref())
    )
}

fn consent_json(c: &v1::Consent) -> serde_json::Value {
    serde_json::json!({
        "consent_id": c.consent_id,
        "issuer_id": c.issuer_id,
        "status": status_name(c.status),
        "scopes": scope_names(&c.scopes),
        "accounts": c.account_refs,
        "purpose": c.purpose,
        "granted_at": rfc3339(c.granted_at.as_ref()),
        "expires_at": rfc3339(c.expires_at.as_ref()),
    })
}

fn random_state() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

async fn consent(client: &mut Aggregator, command: ConsentCommand) -> anyhow::Result<()> {
    match command {
        ConsentCommand::Request {
            issuer,
            scopes,
            days,
            history_days,
            purpose,
            accounts_hint,
            redirect_uri,
            port,
            wait_secs,
            pending_file,
        } => {
            let scopes = if scopes.is_empty() {
                vec![v1::Scope::Transactions, v1::Scope::MerchantDetail, v1::Scope::Statements]
            } else {
                scopes.into_iter().map(ScopeArg::proto).collect()
            };
            let state = random_state();
            let loopback = match &redirect_uri {
                Some(_) => None,
                None => Some(Loopback::bind(port).await?),
            };
            let redirect =
                redirect_uri.clone().or_else(|| loopback.as_ref().map(Loopback::redirect_uri)).unwrap_or_default();
            let ask = ConsentAsk {
                issuer_id: issuer.clone(),
                scopes,
                accounts_hint,
                duration_days: days,
                history_days,
                purpose,
                redirect_uri: redirect.clone(),
                state: state.clone(),
            };
            let requested = client.request_consent(&ask).await?;
            println!("Send the member to (their card company's sign-in):");
            println!("  {}", requested.authorization_url);
            std::io::stdout().flush().ok();
            let Some(loopback) = loopback else {
                PendingFile::new(&pending_file).add(
                    &state,
                    PendingRequest {
                        request_id: requested.request_id.clone(),
                        issuer_id: issuer,
                        verifier: requested.pkce.verifier.clone(),
                        redirect_uri: redirect,
                        created_at: chrono::Utc::now(),
                    },
                )?;
                println!(
                    "request {} waits in {}; when the browser reaches {}, run",
                    requested.request_id,
                    pending_file.display(),
                    redirect_uri.unwrap_or_default()
                );
                println!("  cardlink aggregator consent exchange --url '<the URL it reached>'");
                return Ok(());
            };
            println!("Waiting for the member's decision (up to {wait_secs} s) …");
            match loopback.wait(&state, Duration::from_secs(wait_secs)).await? {
                Callback::Code(code) => {
                    let consent = client.exchange(&code, &requested.pkce.verifier, &redirect).await?;
                    print_granted(&consent);
                    Ok(())
                }
                Callback::Error(e) => anyhow::bail!("the member did not consent ({e})"),
            }
        }
        ConsentCommand::Exchange { url, pending_file } => {
            let parsed = url::Url::parse(&url).with_context(|| format!("--url {url:?}: not a URL"))?;
            let param = |name: &str| parsed.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
            if let Some(error) = param("error") {
                anyhow::bail!("the member did not consent ({error})");
            }
            let (Some(code), Some(state)) = (param("code"), param("state")) else {
                anyhow::bail!("--url has no code and state: pass the whole URL the browser reached");
            };
            let pending = PendingFile::new(&pending_file).take(&state)?.with_context(|| {
                format!("no request with this state in {} (already exchanged?)", pending_file.display())
            })?;
            let consent = client.exchange(&code, &pending.verifier, &pending.redirect_uri).await?;
            print_granted(&consent);
            Ok(())
        }
        ConsentCommand::Revoke { id, reason } => {
            let consent = client.revoke(&id, &reason).await?;
            println!("consent {} is {}", consent.consent_id, status_name(consent.status));
            Ok(())
        }
    }
}

async fn history(mut reader: HistoryReader, command: HistoryCommand) -> anyhow::Result<()> {
    let (consent, deliveries, listed_cursor, available_from, format) = match command {
        HistoryCommand::Transactions { which, month, days, oldest_first, format } => {
            let ask = TransactionsAsk {
                consent_id: which.consent.clone(),
                account_ref: which.account,
                billing_month: month,
                oldest: days.map(|d| chrono::Utc::now() - chrono::TimeDelta::days(i64::from(d))),
                oldest_first,
            };
            let listed = reader.transactions(&ask).await?;
            let rows: Vec<v1::Delivery> =
                listed.items.into_iter().map(|t| cardlink_client::history::as_delivery(&which.consent, t)).collect();
            (which.consent, rows, listed.changes_cursor, listed.available_from, format)
        }
        HistoryCommand::Statements { which, from_month, format } => {
            let listed = reader.statements(&which.consent, &which.account, from_month.as_deref()).await?;
            let rows: Vec<v1::Delivery> = listed
                .items
                .into_iter()
                .map(|s| cardlink_client::history::statement_as_delivery(&which.consent, s))
                .collect();
            (which.consent, rows, listed.changes_cursor, listed.available_from, format)
        }
    };
    let mut out = std::io::stdout().lock();
    if format == Format::Table {
        writeln!(out, "{}", render::TABLE_HEADER)?;
    }
    for d in &deliveries {
        match format {
            Format::Table => writeln!(out, "{}", render::table_row(d))?,
            Format::Json => writeln!(out, "{}", render::json(d))?,
        }
    }
    out.flush()?;
    eprintln!(
        "{} items under consent {consent}, available from {}; continue live with\n  cardlink aggregator subscribe --cursor {listed_cursor}",
        deliveries.len(),
        rfc3339(available_from.as_ref()),
    );
    Ok(())
}

fn print_granted(c: &v1::Consent) {
    println!("consent {} granted", c.consent_id);
    println!("  issuer:   {}", c.issuer_id);
    println!("  scopes:   {}", scope_names(&c.scopes).join(", "));
    println!("  accounts: {}", c.account_refs.join(", "));
    println!("  expires:  {}", rfc3339(c.expires_at.as_ref()));
}

async fn subscribe(client: Aggregator, args: SubscribeArgs) -> anyhow::Result<()> {
    let start = match (&args.position, &args.cursor, args.from_earliest) {
        (Some(name), _, _) => Start::Position(name.clone()),
        (None, Some(cursor), _) => Start::Cursor(cursor.clone()),
        (None, None, true) => Start::Earliest,
        (None, None, false) if args.backfill => Start::Backfill(args.backfill_consents.clone()),
        (None, None, false) => Start::Now,
    };
    let kinds = args.kinds.iter().map(|k| k.proto()).collect();
    let mut sub =
        Resumable::new(client, kinds, args.issuers.clone(), start, args.cursor_file.as_ref().map(CursorFile::new))?;
    if args.no_reconnect {
        sub = sub.without_reconnect();
    }
    if args.format == Format::Table {
        println!("{}", render::TABLE_HEADER);
    }
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    let mut last_report = (Instant::now(), 0u64);
    let mut delivered = 0u64;
    let mut repeats = 0u64;
    let rate_every = Duration::from_secs(args.rate_every);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let batch = tokio::select! {
            _ = &mut stop => break,
            batch = sub.next(|n| match n {
                Notice::Reconnecting { reason, after } => eprintln!("stream ended ({reason}); resuming from the last cursor in {after:?}"),
                Notice::Connected => {}
            }) => batch?,
        };
        repeats += batch.repeats as u64;
        for d in &batch.deliveries {
            match args.format {
                Format::Table => writeln!(out, "{}", render::table_row(d))?,
                Format::Json => writeln!(out, "{}", render::json(d))?,
            }
            delivered += 1;
            if args.count.is_some_and(|c| delivered >= c) {
                break;
            }
        }
        out.flush()?;
        if args.rate_every > 0 && last_report.0.elapsed() >= rate_every {
            let rate = (delivered - last_report.1) as f64 / last_report.0.elapsed().as_secs_f64();
            eprintln!(
                "{delivered} deliveries, {rate:.1}/s{}",
                if repeats > 0 { format!(", {repeats} repeats skipped") } else { String::new() }
            );
            last_report = (Instant::now(), delivered);
        }
        let caught_up = batch.heartbeat.as_ref().is_some_and(|h| h.caught_up);
        if args.count.is_some_and(|c| delivered >= c) || (args.until_caught_up && caught_up) {
            break;
        }
    }
    // Everything printed counts as processed: remember it.
    sub.commit()?;
    eprintln!(
        "{delivered} deliveries in {:.1} s{}",
        started.elapsed().as_secs_f64(),
        sub.processed_cursor().map(|_| "; cursor saved").filter(|_| args.cursor_file.is_some()).unwrap_or("")
    );
    Ok(())
}
