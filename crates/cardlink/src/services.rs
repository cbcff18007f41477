//! The one composition root: each service's settings, and the one function that turns them into
//! the service's config.
//!
//! `cardlink serve <service>` and `cardlink dev` both flatten these structs into their
//! arguments, so a setting is declared once — with its flag, `CARDLINK_*` variable and file key —
//! and reaches both; both build each service with the same `config` function. What differs is
//! only what dev is for: it makes the platform's keys itself ([`Platform`]), serves every page on
//! one port, and binds to loopback unless told otherwise ([`Mode`]). A test
//! (`every_service_setting_reaches_dev`) keeps it so.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cardlink_auth::{PublicKey, TokenSigner};
use cardlink_authn::BootstrapIssuerKeys;
use cardlink_consent::login::{ClientSecrets, LoginSettings};
use cardlink_consent::server::ConsentConfig;
use cardlink_history::StoreUrl;
use cardlink_history_service::server::HistoryConfig;
use cardlink_ingest::server::IngestConfig;
use cardlink_registry::server::RegistryConfig;
use cardlink_subscription::server::SubscriptionConfig;
use clap::Args;

/// Who runs the services: a deployment (each service on its own, reachable from elsewhere) or
/// `cardlink dev` (everything on this machine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Serve,
    Dev,
}

impl Mode {
    /// Where a listener binds when its setting is not given: every interface for a deployment
    /// (a container's port), loopback for dev.
    fn bind(self, port: u16) -> SocketAddr {
        match self {
            Self::Serve => SocketAddr::from(([0, 0, 0, 0], port)),
            Self::Dev => SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

/// What the services share and a deployment configures once: the platform keys that sign
/// credentials, and the secret of pseudonyms, cursors and page tickets.
#[derive(Clone, Debug)]
pub struct Platform {
    pub trusted_keys: Vec<PublicKey>,
    pub secret: Arc<[u8]>,
}

/// The registry's settings.
#[derive(Clone, Debug, Args)]
pub struct RegistrySettings {
    /// Where the registry's gRPC API listens [default: 0.0.0.0:50052; dev: 127.0.0.1:50052].
    #[arg(long, env = "CARDLINK_REGISTRY_LISTEN")]
    pub registry_listen: Option<SocketAddr>,
    /// Where the public transparency and goal pages are served [default: 0.0.0.0:8081; dev:
    /// every page on --pages-listen].
    #[arg(long, env = "CARDLINK_REGISTRY_HTTP_LISTEN")]
    pub registry_http_listen: Option<SocketAddr>,
    /// How long an issued credential is valid, in days.
    #[arg(long, env = "CARDLINK_CREDENTIAL_TTL_DAYS", default_value_t = default_credential_ttl_days())]
    pub credential_ttl_days: u64,
}

fn default_credential_ttl_days() -> u64 {
    RegistryConfig::default().credential_ttl.as_secs() / 86_400
}

impl RegistrySettings {
    pub fn config(&self, mode: Mode) -> anyhow::Result<RegistryConfig> {
        anyhow::ensure!(self.credential_ttl_days > 0, "--credential-ttl-days: at least 1");
        Ok(RegistryConfig {
            listen: self.registry_listen.unwrap_or_else(|| mode.bind(50052)),
            http_listen: match mode {
                Mode::Serve => Some(self.registry_http_listen.unwrap_or_else(|| mode.bind(8081))),
                Mode::Dev => None,
            },
            credential_ttl: Duration::from_secs(self.credential_ttl_days * 86_400),
        })
    }
}

/// The ingest gateway's settings.
#[derive(Clone, Debug, Args)]
pub struct IngestSettings {
    /// Where the ingest gRPC API listens [default: 0.0.0.0:50051; dev: 127.0.0.1:50051].
    #[arg(long, env = "CARDLINK_INGEST_LISTEN")]
    pub ingest_listen: Option<SocketAddr>,
    /// Bootstrap only: configured issuer keys as issuer_id=key (repeat, or comma-separate in
    /// the variable), for issuers without a registry credential yet. They cannot be rotated or
    /// revoked through the registry.
    #[arg(long = "issuer-key", env = "CARDLINK_ISSUER_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub issuer_keys: Vec<String>,
    /// How long a retried event is recognised as a duplicate.
    #[arg(long, default_value_t = 168, env = "CARDLINK_DEDUP_WINDOW_HOURS")]
    pub dedup_window_hours: u64,
    /// Most records in one call.
    #[arg(long, default_value_t = cardlink_ingest::service::DEFAULT_MAX_RECORDS, env = "CARDLINK_MAX_RECORDS_PER_CALL")]
    pub max_records_per_call: usize,
    /// Seconds after which a PublishStream ends with STREAM_MAX_AGE (the issuer authenticates
    /// again and goes on).
    #[arg(long, env = "CARDLINK_MAX_PUBLISH_STREAM_AGE_SECS", default_value_t = cardlink_ingest::server::DEFAULT_MAX_STREAM_AGE.as_secs())]
    pub max_publish_stream_age_secs: u64,
    /// Connections the ingest API holds at most.
    #[arg(long, env = "CARDLINK_INGEST_MAX_CONNECTIONS", default_value_t = cardlink_serving::admission::DEFAULT_MAX_CONNECTIONS)]
    pub ingest_max_connections: usize,
    /// Connections one client address may hold on the ingest API (0: no bound — behind a proxy
    /// that hides client addresses).
    #[arg(long, env = "CARDLINK_INGEST_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = cardlink_serving::admission::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    pub ingest_max_connections_per_address: usize,
}

impl IngestSettings {
    /// Ingest's config; issuers' registry credentials are checked with `trusted_keys`.
    pub fn config(&self, mode: Mode, trusted_keys: &[PublicKey]) -> anyhow::Result<IngestConfig> {
        // An empty variable (the chart's default for bootstrap keys) names no key.
        anyhow::ensure!(self.max_publish_stream_age_secs > 0, "--max-publish-stream-age-secs: at least 1");
        let issuer_keys: Vec<&String> = self.issuer_keys.iter().filter(|k| !k.trim().is_empty()).collect();
        anyhow::ensure!(
            !trusted_keys.is_empty() || !issuer_keys.is_empty(),
            "issuers cannot authenticate: give the platform's public key (--trusted-key / CARDLINK_TRUSTED_KEYS) for registry credentials, or bootstrap issuer keys (--issuer-key / CARDLINK_ISSUER_KEYS)"
        );
        let bootstrap_issuer_keys = match issuer_keys.is_empty() {
            true => None,
            false => {
                Some(Arc::new(BootstrapIssuerKeys::new(issuer_keys).context("--issuer-key / CARDLINK_ISSUER_KEYS")?))
            }
        };
        Ok(IngestConfig {
            listen: self.ingest_listen.unwrap_or_else(|| mode.bind(50051)),
            max_records_per_call: self.max_records_per_call,
            dedup_window: Duration::from_secs(self.dedup_window_hours * 3600),
            trusted_keys: trusted_keys.to_vec(),
            bootstrap_issuer_keys,
            max_stream_age: Duration::from_secs(self.max_publish_stream_age_secs),
            admission: cardlink_serving::admission::Admission::new(
                self.ingest_max_connections,
                self.ingest_max_connections_per_address,
            ),
            ..IngestConfig::default()
        })
    }
}

/// The consent service's settings.
#[derive(Clone, Debug, Args)]
pub struct ConsentSettings {
    /// Where the consent gRPC API listens [default: 0.0.0.0:50053; dev: 127.0.0.1:50053].
    #[arg(long, env = "CARDLINK_CONSENT_LISTEN")]
    pub consent_listen: Option<SocketAddr>,
    /// Where the consent and member pages are served [default: 0.0.0.0:8080; dev: every page,
    /// 127.0.0.1:8080].
    #[arg(long, env = "CARDLINK_PAGES_LISTEN")]
    pub pages_listen: Option<SocketAddr>,
    /// The URL members' browsers reach the pages at (e.g. https://consent.cardlink.example)
    /// [default: http://<pages listen address>].
    #[arg(long, env = "CARDLINK_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// OpenID Connect client secrets for issuers registered with CLIENT_SECRET_BASIC: a
    /// directory with one file per issuer id (a mounted Secret), read at each sign-in.
    #[arg(long, env = "CARDLINK_OIDC_CLIENT_SECRETS_DIR")]
    pub oidc_client_secrets_dir: Option<PathBuf>,
    /// Seed (base64url, 32 bytes) of the key that signs PRIVATE_KEY_JWT client assertions; its
    /// public key is served at <public URL>/oidc/jwks.json.
    #[arg(long, env = "CARDLINK_OIDC_CLIENT_KEY", hide_env_values = true)]
    pub oidc_client_key: Option<String>,
    /// The client key's id (`kid`); change it when rotating the key.
    #[arg(long, env = "CARDLINK_OIDC_CLIENT_KEY_ID", default_value = "consent-1")]
    pub oidc_client_key_id: String,
}

impl ConsentSettings {
    /// Where the pages are served.
    pub fn pages_listen(&self, mode: Mode) -> SocketAddr {
        self.pages_listen.unwrap_or_else(|| mode.bind(8080))
    }

    /// The consent service's config. `extra_secrets`: client secrets the caller holds besides
    /// the directory's (dev's demo card companies); with a directory too, the directory wins.
    pub fn config(
        &self,
        mode: Mode,
        platform: &Platform,
        extra_secrets: Option<Arc<std::collections::HashMap<String, String>>>,
    ) -> anyhow::Result<ConsentConfig> {
        let client_secrets = match (&self.oidc_client_secrets_dir, extra_secrets) {
            (Some(dir), _) if !dir.is_dir() => anyhow::bail!(
                "--oidc-client-secrets-dir / CARDLINK_OIDC_CLIENT_SECRETS_DIR: {} is not a directory",
                dir.display()
            ),
            (Some(dir), _) => ClientSecrets::Dir(dir.clone()),
            (None, Some(fixed)) => ClientSecrets::Fixed(fixed),
            (None, None) => ClientSecrets::None,
        };
        let client_key = match self.oidc_client_key.as_deref().filter(|k| !k.trim().is_empty()) {
            Some(seed) => Some(Arc::new(
                TokenSigner::from_base64_seed(&self.oidc_client_key_id, seed)
                    .map_err(|e| anyhow::anyhow!("--oidc-client-key / CARDLINK_OIDC_CLIENT_KEY: {e}"))?,
            )),
            None => None,
        };
        let pages = self.pages_listen(mode);
        Ok(ConsentConfig {
            grpc_listen: self.consent_listen.unwrap_or_else(|| mode.bind(50053)),
            http_listen: match mode {
                Mode::Serve => Some(pages),
                // Dev serves every page on one port, itself.
                Mode::Dev => None,
            },
            public_url: Some(self.public_url.clone().unwrap_or_else(|| format!("http://{pages}"))),
            trusted_keys: platform.trusted_keys.clone(),
            secret: Arc::clone(&platform.secret),
            login: LoginSettings { client_secrets, client_key },
        })
    }
}

/// The subscription service's settings.
#[derive(Clone, Debug, Args)]
pub struct SubscriptionSettings {
    /// Where the subscription gRPC API listens [default: 0.0.0.0:50054; dev: 127.0.0.1:50054].
    #[arg(long, env = "CARDLINK_SUBSCRIPTION_LISTEN")]
    pub subscription_listen: Option<SocketAddr>,
    /// Where the live view (`/live`, `/live.json`) is served [default: 0.0.0.0:8082; dev: every
    /// page on --pages-listen].
    #[arg(long, env = "CARDLINK_SUBSCRIPTION_HTTP_LISTEN")]
    pub subscription_http_listen: Option<SocketAddr>,
    /// Seconds after which a Subscribe stream ends with STREAM_MAX_AGE (the client authenticates
    /// again and resumes from its cursor).
    #[arg(long, env = "CARDLINK_MAX_STREAM_AGE_SECS", default_value_t = cardlink_subscription::server::DEFAULT_MAX_STREAM_AGE.as_secs())]
    pub max_stream_age_secs: u64,
}

/// Where the history store is, for a service that reads it beside its own work (the
/// subscription service's backfills). The same setting as the history service's.
#[derive(Clone, Debug, Args)]
pub struct HistoryStoreArgs {
    /// The history store backfills read: postgres://… or sqlite:PATH, as given to `serve
    /// history` [default: none — streams cannot start with a backfill].
    #[arg(long, env = "CARDLINK_HISTORY_STORE", hide_env_values = true)]
    pub history_store: Option<String>,
}

impl HistoryStoreArgs {
    /// The store named, if any (an empty variable names none).
    pub fn url(&self) -> anyhow::Result<Option<StoreUrl>> {
        match self.history_store.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(url) => {
                Ok(Some(url.parse().map_err(|e| anyhow::anyhow!("--history-store / CARDLINK_HISTORY_STORE: {e}"))?))
            }
        }
    }
}

impl SubscriptionSettings {
    /// The subscription service's config; backfills read `history_store` if given.
    pub fn config(
        &self,
        mode: Mode,
        platform: &Platform,
        history_store: Option<StoreUrl>,
    ) -> anyhow::Result<SubscriptionConfig> {
        anyhow::ensure!(self.max_stream_age_secs > 0, "--max-stream-age-secs: at least 1");
        Ok(SubscriptionConfig {
            listen: self.subscription_listen.unwrap_or_else(|| mode.bind(50054)),
            http_listen: match mode {
                Mode::Serve => Some(self.subscription_http_listen.unwrap_or_else(|| mode.bind(8082))),
                Mode::Dev => None,
            },
            trusted_keys: platform.trusted_keys.clone(),
            secret: Arc::clone(&platform.secret),
            max_stream_age: Duration::from_secs(self.max_stream_age_secs),
            history_store,
        })
    }
}

/// The history service's settings.
#[derive(Clone, Debug, Args)]
pub struct HistorySettings {
    /// Where the History gRPC API listens [default: 0.0.0.0:50055; dev: 127.0.0.1:50055].
    #[arg(long, env = "CARDLINK_HISTORY_LISTEN")]
    pub history_listen: Option<SocketAddr>,
    /// Where history is kept: postgres://USER:PASSWORD@HOST:PORT/DATABASE (production: a managed
    /// PostgreSQL, or a Citus coordinator) or sqlite:PATH (one replica) [dev: a new SQLite file
    /// per run, beside the embedded broker that also starts empty].
    #[arg(long, env = "CARDLINK_HISTORY_STORE", hide_env_values = true)]
    pub history_store: Option<String>,
    /// Connections one replica holds to PostgreSQL at most.
    #[arg(long, env = "CARDLINK_HISTORY_STORE_MAX_CONNECTIONS", default_value_t = cardlink_history::postgres::DEFAULT_MAX_CONNECTIONS)]
    pub history_store_max_connections: usize,
    /// Months of history kept (and readable); older rows are removed in small batches.
    #[arg(long, env = "CARDLINK_HISTORY_RETENTION_MONTHS", default_value_t = cardlink_history_service::service::DEFAULT_RETENTION_MONTHS)]
    pub history_retention_months: u32,
    /// Whether this process also indexes the bus into the store (a member of the indexer
    /// group); false where indexers run as a deployment of their own.
    #[arg(long, env = "CARDLINK_HISTORY_INDEX", default_value_t = true, action = clap::ArgAction::Set)]
    pub history_index: bool,
}

impl HistorySettings {
    /// The history service's config; `dev_store` is where dev keeps history unless told.
    pub fn config(
        &self,
        mode: Mode,
        platform: &Platform,
        dev_store: Option<&std::path::Path>,
    ) -> anyhow::Result<HistoryConfig> {
        let store = match (&self.history_store, dev_store) {
            (Some(url), _) if !url.trim().is_empty() => {
                url.parse::<StoreUrl>().map_err(|e| anyhow::anyhow!("--history-store / CARDLINK_HISTORY_STORE: {e}"))?
            }
            (_, Some(path)) => StoreUrl::Sqlite(path.to_owned()),
            _ => anyhow::bail!(
                "--history-store / CARDLINK_HISTORY_STORE: where history is kept is required: postgres://… (production) or sqlite:PATH (one replica)"
            ),
        };
        anyhow::ensure!(self.history_store_max_connections > 0, "--history-store-max-connections: at least 1");
        anyhow::ensure!((1..=120).contains(&self.history_retention_months), "--history-retention-months: 1 to 120");
        Ok(HistoryConfig {
            max_store_connections: self.history_store_max_connections,
            retention_months: self.history_retention_months,
            index: self.history_index,
            ..HistoryConfig::new(
                self.history_listen.unwrap_or_else(|| mode.bind(50055)),
                platform.trusted_keys.clone(),
                Arc::clone(&platform.secret),
                store,
            )
        })
    }
}
