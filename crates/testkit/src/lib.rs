//! The shared integration-test harness.
//!
//! Every test gets its own broker: [`TestBus::start`] starts an embedded Kafka-compatible broker
//! on an ephemeral port and provisions cardlink's topics on it, so tests never share state and
//! can run in parallel. Clients are made from the same [`BusConfig`] the services use.

use std::time::Duration;

use std::sync::Arc;

use anyhow::Context as _;
use cardlink_api::v1::issuer_ingest_client::IssuerIngestClient;
use cardlink_bus::embedded::EmbeddedBroker;
use cardlink_bus::{BusConfig, Consumer, Producer, Record, StartAt, Topic};
use cardlink_ingest::auth::StaticIssuerKeys;
use cardlink_ingest::server::{IngestConfig, RunningIngest};
use tonic::transport::Channel;

/// Issuers known to test ingest services, with their keys (synthetic, tests only).
pub const TEST_ISSUERS: [(&str, &str); 2] =
    [("iss-a", "test-key-iss-a-0123456789"), ("iss-b", "test-key-iss-b-0123456789")];

/// Event partitions in tests: enough to show per-key ordering across partitions, few enough to
/// keep start-up fast.
pub const TEST_EVENT_PARTITIONS: i32 = 4;

/// An isolated broker with cardlink's topics.
#[derive(Debug)]
pub struct TestBus {
    broker: EmbeddedBroker,
    config: BusConfig,
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
        let config = BusConfig {
            client_id: format!("test-{}", uuid::Uuid::new_v4().simple()),
            event_partitions: TEST_EVENT_PARTITIONS,
            delivery_timeout: Duration::from_secs(10),
            ..BusConfig::local(broker.bootstrap_servers())
        };
        Ok(Self { broker, config })
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

    /// Starts an ingest service on an ephemeral port that knows [`TEST_ISSUERS`], and waits
    /// until it is ready.
    pub async fn start_ingest(&self, config: IngestConfig) -> anyhow::Result<RunningIngest> {
        let keys = StaticIssuerKeys::new(TEST_ISSUERS.iter().map(|(id, key)| format!("{id}={key}")))?;
        let config = IngestConfig { listen: ([127, 0, 0, 1], 0).into(), ..config };
        let mut running = cardlink_ingest::server::start(&self.config, config, Arc::new(keys)).await?;
        tokio::time::timeout(Duration::from_secs(30), running.ready())
            .await
            .context("ingest service not ready within 30 s")?;
        Ok(running)
    }

    /// Starts a registry service on an ephemeral port with a fresh platform key, and issues an
    /// operator credential; returns the service and the operator's token.
    pub async fn start_registry(&self) -> anyhow::Result<(cardlink_registry::server::RunningRegistry, String)> {
        let signer = Arc::new(cardlink_auth::TokenSigner::generate("test"));
        let config =
            cardlink_registry::server::RegistryConfig { listen: ([127, 0, 0, 1], 0).into(), ..Default::default() };
        let running = cardlink_registry::server::start(&self.config, config, signer).await?;
        let operator = running.registry().bootstrap_operator("operator").await?;
        Ok((running, operator.token))
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
