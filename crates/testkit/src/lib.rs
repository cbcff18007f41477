//! The shared integration-test harness.
//!
//! Every test gets its own broker: [`TestBus::start`] starts an embedded Kafka-compatible broker
//! on an ephemeral port and provisions cardlink's topics on it, so tests never share state and
//! can run in parallel. Clients are made from the same [`BusConfig`] the services use.

use std::time::Duration;

use std::sync::Arc;

use anyhow::Context as _;
use cardlink_api::v1::issuer_ingest_client::IssuerIngestClient;
use cardlink_authn::BootstrapIssuerKeys;
use cardlink_bus::embedded::EmbeddedBroker;
use cardlink_bus::{BusConfig, Consumer, Producer, Record, StartAt, Topic};
use cardlink_ingest::server::{IngestConfig, RunningIngest};
use tonic::transport::Channel;

pub mod login;
pub mod postgres;
pub mod proxy;
pub mod python;

/// Issuers known to test ingest services, with their keys (synthetic, tests only).
pub const TEST_ISSUERS: [(&str, &str); 2] =
    [("iss-a", "test-key-iss-a-0123456789"), ("iss-b", "test-key-iss-b-0123456789")];

/// The secret of the consent services tests start (pseudonyms, tickets); a subscription service
/// that delivers under their consents shares it.
pub const TEST_CONSENT_SECRET: &[u8; 32] = b"test-secret-test-secret-test-sec";

/// Event partitions in tests: enough to show per-key ordering across partitions, few enough to
/// keep start-up fast.
pub const TEST_EVENT_PARTITIONS: i32 = 4;

/// An isolated broker with cardlink's topics.
#[derive(Debug)]
pub struct TestBus {
    broker: EmbeddedBroker,
    config: BusConfig,
    /// Between every client and the broker, when started [`TestBus::start_behind_proxy`].
    proxy: Option<proxy::TcpProxy>,
}

impl TestBus {
    /// Starts a broker and provisions every topic of the catalogue.
    pub async fn start() -> anyhow::Result<Self> {
        let bus = Self::start_unprovisioned().await?;
        cardlink_bus::provision(&bus.config).await.context("provisioning topics on the test broker")?;
        Ok(bus)
    }

    /// Starts a broker with no topics.
    pub async fn start_unprovisioned() -> anyhow::Result<Self> {
        init_tracing();
        let broker = EmbeddedBroker::start_ephemeral().await.context("starting the embedded broker")?;
        let config = Self::test_config(broker.bootstrap_servers());
        Ok(Self { broker, config, proxy: None })
    }

    /// Starts a broker, with cardlink's topics, that every client reaches through a
    /// [`proxy::TcpProxy`] ([`TestBus::proxy`]), so a test can cut the network to it.
    pub async fn start_behind_proxy() -> anyhow::Result<Self> {
        init_tracing();
        let front = std::net::TcpListener::bind("127.0.0.1:0").context("a port for the proxy")?;
        let advertised = front.local_addr()?;
        let broker = EmbeddedBroker::start_advertising(([127, 0, 0, 1], 0).into(), advertised)
            .await
            .context("starting the embedded broker")?;
        let proxy = proxy::TcpProxy::start(front, broker.addr()).context("starting the proxy")?;
        let bus = Self { config: Self::test_config(advertised.to_string()), broker, proxy: Some(proxy) };
        cardlink_bus::provision(&bus.config).await.context("provisioning topics on the test broker")?;
        Ok(bus)
    }

    fn test_config(bootstrap_servers: String) -> BusConfig {
        BusConfig {
            client_id: format!("test-{}", uuid::Uuid::new_v4().simple()),
            event_partitions: TEST_EVENT_PARTITIONS,
            delivery_timeout: Duration::from_secs(10),
            ..BusConfig::local(bootstrap_servers)
        }
    }

    /// The proxy in front of the broker, if started [`TestBus::start_behind_proxy`].
    pub fn proxy(&self) -> Option<&proxy::TcpProxy> {
        self.proxy.as_ref()
    }

    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    pub fn producer(&self) -> anyhow::Result<Producer> {
        Ok(Producer::new(&self.config)?)
    }

    /// A producer that gives up on a delivery after `timeout`.
    pub fn producer_with_timeout(&self, timeout: Duration) -> anyhow::Result<Producer> {
        Ok(Producer::new(&BusConfig { delivery_timeout: timeout, ..self.config.clone() })?)
    }

    pub fn consumer(&self, purpose: &str) -> anyhow::Result<Consumer> {
        Ok(Consumer::new(&self.config, purpose)?)
    }

    /// Reads `topic` from the beginning until `count` records arrived; fails after `within`.
    pub async fn read(&self, topic: Topic, count: usize, within: Duration) -> anyhow::Result<Vec<Record>> {
        let consumer = self.consumer("test-reader")?;
        consumer.assign_all(topic, StartAt::Beginning).await?;
        let mut records = Vec::with_capacity(count);
        let deadline = tokio::time::Instant::now() + within;
        while records.len() < count {
            let next = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .with_context(|| format!("only {} of {count} records on {topic:?} after {within:?}", records.len()))?;
            records.push(next?);
        }
        Ok(records)
    }

    /// Every record on `topic` now: each partition from its start to its end as of this call.
    pub async fn read_all(&self, topic: Topic) -> anyhow::Result<Vec<Record>> {
        let consumer = self.consumer("test-read-all")?;
        let mut total = 0;
        for partition in 0..consumer.partition_count(topic).await? {
            let (low, high) = consumer.watermarks(topic, partition).await?;
            total += usize::try_from(high - low)?;
        }
        self.read(topic, total, Duration::from_secs(30)).await
    }

    /// Reads `topic` from the beginning until `done` holds for what was read; fails after `within`.
    pub async fn read_until(
        &self,
        topic: Topic,
        within: Duration,
        done: impl Fn(&[Record]) -> bool,
    ) -> anyhow::Result<Vec<Record>> {
        let consumer = self.consumer("test-reader")?;
        consumer.assign_all(topic, StartAt::Beginning).await?;
        let mut records = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while !done(&records) {
            let next = tokio::time::timeout_at(deadline, consumer.recv()).await.with_context(|| {
                format!("condition not met on {topic:?} after {within:?} ({} records)", records.len())
            })?;
            records.push(next?);
        }
        Ok(records)
    }

    /// Starts an ingest service on an ephemeral port that knows [`TEST_ISSUERS`] (as bootstrap
    /// keys, unless `config` names its own) and the registry credentials `config.trusted_keys`
    /// sign, and waits until it is ready.
    pub async fn start_ingest(&self, config: IngestConfig) -> anyhow::Result<RunningIngest> {
        let bootstrap = match &config.bootstrap_issuer_keys {
            Some(keys) => Arc::clone(keys),
            None => Arc::new(BootstrapIssuerKeys::new(TEST_ISSUERS.iter().map(|(id, key)| format!("{id}={key}")))?),
        };
        let config =
            IngestConfig { listen: ([127, 0, 0, 1], 0).into(), bootstrap_issuer_keys: Some(bootstrap), ..config };
        let mut running = cardlink_ingest::server::start(&self.config, config).await?;
        tokio::time::timeout(Duration::from_secs(30), running.ready())
            .await
            .context("ingest service not ready within 30 s")?;
        Ok(running)
    }

    /// Starts a registry service on an ephemeral port with a fresh platform key, and issues an
    /// operator credential; returns the service and the operator's token.
    pub async fn start_registry(&self) -> anyhow::Result<(cardlink_registry::server::RunningRegistry, String)> {
        let signer = Arc::new(cardlink_auth::TokenSigner::generate("test"));
        let config = cardlink_registry::server::RegistryConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            http_listen: Some(([127, 0, 0, 1], 0).into()),
            ..Default::default()
        };
        let running = cardlink_registry::server::start(&self.config, config, signer).await?;
        let operator = running.registry().bootstrap_operator("operator").await?;
        Ok((running, operator.token))
    }

    /// Starts a consent service trusting `registry`'s credentials, signing members in at their
    /// issuers' providers with `login`.
    pub async fn start_consent(
        &self,
        registry: &cardlink_registry::server::RunningRegistry,
        login: cardlink_consent::login::LoginSettings,
    ) -> anyhow::Result<cardlink_consent::server::RunningConsent> {
        let config = cardlink_consent::server::ConsentConfig {
            grpc_listen: ([127, 0, 0, 1], 0).into(),
            http_listen: Some(([127, 0, 0, 1], 0).into()),
            public_url: None,
            trusted_keys: vec![registry.public_key().clone()],
            secret: Arc::from(&TEST_CONSENT_SECRET[..]),
            login,
        };
        Ok(cardlink_consent::server::start(&self.config, config).await?)
    }

    /// Writes `payload` straight to `topic` under `key`, as a producer other than cardlink's
    /// would (no encoding, no headers); returns its offset.
    pub async fn write_raw(&self, topic: Topic, key: &str, payload: &[u8]) -> anyhow::Result<i64> {
        let headers = cardlink_bus::RecordHeaders::default();
        let record = cardlink_bus::OutboundRecord { topic, key: key.as_bytes(), payload, headers: &headers };
        Ok(self.producer()?.send(record).await?.offset)
    }

    /// Stops the broker (its records are gone).
    pub async fn stop_broker(self) -> BusConfig {
        self.broker.stop().await;
        self.config
    }
}

/// Logs of the code under test, shown for failing tests (`RUST_LOG` to tune).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// A gRPC client of an ingest service.
pub async fn ingest_client(running: &RunningIngest) -> anyhow::Result<IssuerIngestClient<Channel>> {
    Ok(IssuerIngestClient::connect(format!("http://{}", running.addr())).await?)
}

/// A request carrying `key` as its bearer credential.
pub fn authorized<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {key}").parse().expect("ASCII credential");
    request.metadata_mut().insert("authorization", value);
    request
}

/// A gRPC client of a registry service.
pub async fn registry_client(
    running: &cardlink_registry::server::RunningRegistry,
) -> anyhow::Result<cardlink_api::v1::registry_client::RegistryClient<Channel>> {
    Ok(cardlink_api::v1::registry_client::RegistryClient::connect(format!("http://{}", running.addr())).await?)
}

/// A minimal HTTP/1.1 exchange (what a browser's form post is), for testing pages.
/// Returns the status code, the headers (names lower-cased) and the body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    form: Option<&str>,
) -> anyhow::Result<(u16, Vec<(String, String)>, String)> {
    let r = cardlink_client::http::request(addr, method, path, form).await?;
    Ok((r.status, r.headers, r.body))
}

/// Registers where `issuer`'s members sign in (`SetIssuerLogin`, with the operator's or the
/// issuer's own `token`).
pub async fn set_issuer_login(
    client: &mut RegistryClient,
    token: &str,
    issuer: &str,
    login: cardlink_api::v1::IssuerLogin,
) -> anyhow::Result<cardlink_api::v1::Issuer> {
    let request = cardlink_api::v1::SetIssuerLoginRequest { issuer_id: issuer.into(), login: Some(login) };
    Ok(client.set_issuer_login(authorized(request, token)).await?.into_inner())
}

/// A gRPC client of a consent service.
pub async fn consent_client(
    running: &cardlink_consent::server::RunningConsent,
) -> anyhow::Result<cardlink_api::v1::consent_service_client::ConsentServiceClient<Channel>> {
    Ok(cardlink_api::v1::consent_service_client::ConsentServiceClient::connect(format!(
        "http://{}",
        running.grpc_addr()
    ))
    .await?)
}

/// A participant's credential, as registration returned it.
#[derive(Debug, Clone)]
pub struct Registered {
    pub token: String,
    pub credential_id: String,
}

pub type RegistryClient = cardlink_api::v1::registry_client::RegistryClient<Channel>;

fn registered(credential: Option<cardlink_api::v1::IssuedCredential>) -> anyhow::Result<Registered> {
    let c = credential.context("registration returned no credential")?;
    Ok(Registered { token: c.token, credential_id: c.credential_id })
}

/// Registers an issuer through the registry's gRPC API, as the operator.
pub async fn register_issuer(
    client: &mut RegistryClient,
    operator: &str,
    id: &str,
    volume_jpy: i64,
) -> anyhow::Result<Registered> {
    let request = cardlink_api::v1::RegisterIssuerRequest {
        issuer_id: id.into(),
        name: format!("{id} カード"),
        annual_volume_jpy: volume_jpy,
    };
    registered(client.register_issuer(authorized(request, operator)).await?.into_inner().credential)
}

/// The redirect URIs every test aggregator registers: the web callbacks the tests name, and the
/// loopback callback of `cardlink aggregator consent` (any port).
pub const TEST_REDIRECT_URIS: [&str; 3] =
    ["https://agg.example/callback", "https://kakeibo.example/callback", "http://127.0.0.1/callback"];

/// Registers an aggregator through the registry's gRPC API, as the operator, with
/// [`TEST_REDIRECT_URIS`].
pub async fn register_aggregator(client: &mut RegistryClient, operator: &str, id: &str) -> anyhow::Result<Registered> {
    let request = cardlink_api::v1::RegisterAggregatorRequest {
        aggregator_id: id.into(),
        name: format!("家計簿 {id}"),
        registration_number: "関東財務局長（電代）第1号".into(),
        contact: format!("ops@{id}.example"),
        redirect_uris: TEST_REDIRECT_URIS.map(str::to_owned).to_vec(),
    };
    registered(client.register_aggregator(authorized(request, operator)).await?.into_inner().credential)
}

/// The issuer enables a connection to the aggregator for `scopes`.
pub async fn connect(
    client: &mut RegistryClient,
    issuer_token: &str,
    issuer: &str,
    aggregator: &str,
    scopes: &[cardlink_api::v1::Scope],
) -> anyhow::Result<cardlink_api::v1::Connection> {
    let request = cardlink_api::v1::EnableConnectionRequest {
        issuer_id: issuer.into(),
        aggregator_id: aggregator.into(),
        scopes: scopes.iter().map(|s| *s as i32).collect(),
    };
    Ok(client.enable_connection(authorized(request, issuer_token)).await?.into_inner())
}
