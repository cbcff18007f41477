//! Running the ingest service: bus clients, the registry view that credentials are checked
//! against, the idempotency follower, the gRPC server, limits, and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cardlink_api::v1::issuer_ingest_server::IssuerIngestServer;
use cardlink_auth::{PublicKey, TokenVerifier};
use cardlink_authn::{AuthLayer, Authenticator, BootstrapIssuerKeys};
use cardlink_bus::{BusConfig, BusError, Consumer, PolledConsumer, Producer, Topic};
use cardlink_serving::admission::Admission;
use cardlink_views::follow;
use cardlink_views::registry::RegistryView;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

pub use cardlink_serving::ServeError;

use crate::dedup::{self, DedupIndex};
use crate::grpc::IngestGrpc;
use crate::service::{DEFAULT_MAX_RECORDS, Ingest};

/// Default largest gRPC request: 1,000 records of a few KiB each fit easily.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Concurrent requests handled per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// How long the producer gets, once the server has stopped, to deliver what it still holds.
pub const PRODUCER_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the ingest service.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub listen: SocketAddr,
    pub max_records_per_call: usize,
    pub max_request_bytes: usize,
    pub dedup_window: Duration,
    /// Platform keys that sign registry credentials (rotatable, revocable): how issuers
    /// authenticate.
    pub trusted_keys: Vec<PublicKey>,
    /// Configured issuer keys, the explicit bootstrap option for issuers without a registry
    /// credential (they cannot be rotated or revoked through the registry).
    pub bootstrap_issuer_keys: Option<Arc<BootstrapIssuerKeys>>,
    /// A PublishStream ends at this age (`STREAM_MAX_AGE`); the issuer authenticates again and
    /// goes on (a revoked credential ends it at once).
    pub max_stream_age: Duration,
    /// Connections held at most, in all and per client address.
    pub admission: Admission,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_records_per_call: DEFAULT_MAX_RECORDS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            dedup_window: dedup::DEFAULT_WINDOW,
            trusted_keys: Vec::new(),
            bootstrap_issuer_keys: None,
            max_stream_age: DEFAULT_MAX_STREAM_AGE,
            admission: Admission::default(),
        }
    }
}

/// The default [`IngestConfig::max_stream_age`].
pub const DEFAULT_MAX_STREAM_AGE: Duration = Duration::from_secs(3600);

/// A running ingest service.
#[derive(Debug)]
pub struct RunningIngest {
    addr: SocketAddr,
    ready: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), ServeError>>,
    followers: Vec<JoinHandle<Result<(), BusError>>>,
}

impl RunningIngest {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the idempotency index caught up with the bus (the service answers NOT_READY
    /// before that).
    pub async fn ready(&mut self) {
        let _ = self.ready.wait_for(|r| *r).await;
    }

    /// Stops accepting calls, lets in-flight ones finish, and flushes the producer.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.shutdown.send_replace(true);
        let result = match cardlink_serving::join_within(self.server, cardlink_serving::SHUTDOWN_GRACE).await {
            Some(r) => r,
            None => Err(ServeError::Task("the gRPC server did not stop within the grace period".into())),
        };
        for follower in self.followers {
            let _ = follower.await;
        }
        result
    }
}

/// Starts the ingest service on `config.listen` (port 0 for an ephemeral one); returns once the
/// registry view has caught up (the idempotency index may still be catching up: see
/// [`RunningIngest::ready`]).
pub async fn start(bus: &BusConfig, config: IngestConfig) -> Result<RunningIngest, ServeError> {
    let (listener, addr) = cardlink_serving::bind(config.listen).await?;

    let producer = Producer::new(bus)?;
    let index = Arc::new(DedupIndex::new(config.dedup_window));
    let (ready_tx, ready) = watch::channel(false);
    let (shutdown, shutdown_rx) = watch::channel(false);

    let (mut registry, registry_follower) = follow::spawn(
        PolledConsumer::new(bus, "ingest-registry-view")?,
        Topic::Registry,
        RegistryView::new(),
        shutdown_rx.clone(),
    );
    registry.caught_up().await;
    let lag_registry = registry.clone();
    cardlink_telemetry::observe_view_lag("ingest.registry", move || lag_registry.lag());
    let mut auth = Authenticator::new(TokenVerifier::new(config.trusted_keys.clone()), registry.clone());
    if let Some(keys) = &config.bootstrap_issuer_keys {
        auth = auth.with_bootstrap_issuer_keys(Arc::clone(keys));
    }

    let follower_consumer = Consumer::tailer(bus, "ingest-dedup")?;
    let follower = tokio::spawn(dedup::follow(Arc::clone(&index), follower_consumer, ready_tx, shutdown_rx.clone()));

    let ingest = Ingest::new(producer.clone(), index, ready.clone(), config.max_records_per_call);
    let service = InterceptedService::new(
        IssuerIngestServer::new(IngestGrpc::new(ingest, auth.clone(), config.max_stream_age))
            .max_decoding_message_size(config.max_request_bytes)
            .max_encoding_message_size(config.max_request_bytes),
        AuthLayer::required(auth),
    );

    let index_ready = ready.clone();
    let router = cardlink_serving::grpc_router(
        cardlink_serving::grpc_server().max_concurrent_streams(MAX_CONCURRENT_STREAMS),
        // Credentials are checked against the registry view: a stale one could let a revoked
        // credential in.
        Box::new(move || *index_ready.borrow() && registry.is_fresh(cardlink_serving::READY_WITHIN)),
        shutdown_rx.clone(),
    )?;
    let stop = shutdown_rx;
    let incoming = config.admission.clone().incoming(listener);
    let server = tokio::spawn(async move {
        router.add_service(service).serve_with_incoming_shutdown(incoming, cardlink_serving::stopped(stop)).await?;
        producer.flush(PRODUCER_FLUSH_TIMEOUT).await?;
        Ok(())
    });
    tracing::info!(%addr, "ingest service listening");
    Ok(RunningIngest { addr, ready, shutdown, server, followers: vec![follower, registry_follower] })
}
