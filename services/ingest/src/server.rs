//! Running the ingest service: bus clients, the idempotency follower, the gRPC server, limits,
//! and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cardlink_api::v1::issuer_ingest_server::IssuerIngestServer;
use cardlink_bus::{BusConfig, BusError, Consumer, Producer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

pub use cardlink_serving::ServeError;

use crate::auth::Authenticator;
use crate::dedup::{self, DedupIndex};
use crate::grpc::IngestGrpc;
use crate::service::{DEFAULT_MAX_RECORDS, Ingest};

/// Default largest gRPC request: 1,000 records of a few KiB each fit easily.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Concurrent requests handled per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// How long in-flight calls get to finish at shutdown before the producer is flushed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the ingest service.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub listen: SocketAddr,
    pub max_records_per_call: usize,
    pub max_request_bytes: usize,
    pub dedup_window: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_records_per_call: DEFAULT_MAX_RECORDS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            dedup_window: dedup::DEFAULT_WINDOW,
        }
    }
}

/// A running ingest service.
#[derive(Debug)]
pub struct RunningIngest {
    addr: SocketAddr,
    ready: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), ServeError>>,
    follower: JoinHandle<Result<(), BusError>>,
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
        let _ = self.follower.await;
        result
    }
}

/// Starts the ingest service on `config.listen` (port 0 for an ephemeral one).
pub async fn start(
    bus: &BusConfig,
    config: IngestConfig,
    auth: Arc<dyn Authenticator>,
) -> Result<RunningIngest, ServeError> {
    let (listener, addr) = cardlink_serving::bind(config.listen).await?;

    let producer = Producer::new(bus)?;
    let index = Arc::new(DedupIndex::new(config.dedup_window));
    let (ready_tx, ready) = watch::channel(false);
    let (shutdown, shutdown_rx) = watch::channel(false);

    let follower_consumer = Consumer::tailer(bus, "ingest-dedup")?;
    let follower = tokio::spawn(dedup::follow(Arc::clone(&index), follower_consumer, ready_tx, shutdown_rx.clone()));

    let ingest = Ingest::new(producer.clone(), index, ready.clone(), config.max_records_per_call);
    let service = IssuerIngestServer::new(IngestGrpc::new(ingest, auth))
        .max_decoding_message_size(config.max_request_bytes)
        .max_encoding_message_size(config.max_request_bytes);

    let index_ready = ready.clone();
    let router = cardlink_serving::grpc_router(
        cardlink_serving::grpc_server().max_concurrent_streams(MAX_CONCURRENT_STREAMS),
        Box::new(move || *index_ready.borrow()),
        shutdown_rx.clone(),
    )?;
    let stop = shutdown_rx;
    let server = tokio::spawn(async move {
        router
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), cardlink_serving::stopped(stop))
            .await?;
        producer.flush(DRAIN_TIMEOUT).await?;
        Ok(())
    });
    tracing::info!(%addr, "ingest service listening");
    Ok(RunningIngest { addr, ready, shutdown, server, follower })
}
