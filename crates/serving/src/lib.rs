//! What every cardlink service does the same way when it starts and stops: bind its
//! listeners, report why it could not start, and wait for its shutdown signal. Keeping it in one
//! place keeps the services' `server` modules about their own wiring only. [`html`] is the frame
//! of the pages the services serve.

pub mod admission;
pub mod html;

use std::net::SocketAddr;
use std::time::Duration;

use cardlink_bus::BusError;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why a service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("service task failed: {0}")]
    Task(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// HTTP/2 keepalive: a ping this often on an idle connection finds peers that vanished (a
/// NAT or load balancer that dropped the connection) instead of holding their streams forever.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A peer that does not answer a keepalive ping within this is disconnected.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams (calls) one client connection may hold open.
pub const MAX_CALLS_PER_CONNECTION: u32 = 256;

/// The layers every service's gRPC server runs behind (telemetry: server spans and call
/// durations).
pub type Layers = tower_layer::Stack<cardlink_telemetry::rpc::RpcLayer, tower_layer::Identity>;
/// The gRPC server every service starts from.
pub type GrpcServer = tonic::transport::Server<Layers>;

/// The gRPC server every service starts from: keepalive on, calls per connection bounded,
/// every call traced and measured ([`cardlink_telemetry::rpc`]).
pub fn grpc_server() -> GrpcServer {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_CALLS_PER_CONNECTION))
        .layer(cardlink_telemetry::rpc::RpcLayer::new())
}

/// The `grpc.health.v1` service name a liveness probe asks about: serving as long as the process
/// serves. The overall status (service `""`) is readiness.
pub const LIVENESS: &str = "liveness";
/// A view older than this makes a service unready (Kafka unreachable, or the view stuck).
pub const READY_WITHIN: Duration = Duration::from_secs(10);
/// How often readiness is re-evaluated.
pub const READINESS_EVERY: Duration = Duration::from_secs(1);

/// Whether a service can do its job right now (its views are current, Kafka answers).
pub type ReadyCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// `server` (normally [`grpc_server`]) with `grpc.health.v1` and gRPC reflection added, in both
/// `grpc.reflection.v1` and `v1alpha` (many tools, and Python's `grpcio-reflection`, speak only
/// v1alpha).
///
/// Health: `""` is readiness, re-evaluated with `ready` every [`READINESS_EVERY`]; [`LIVENESS`]
/// is serving until shutdown. Both turn NOT_SERVING when `shutdown` does, so load balancers stop
/// sending new calls while streams drain.
pub fn grpc_router(
    mut server: GrpcServer,
    ready: ReadyCheck,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tonic::transport::server::Router<Layers>, ServeError> {
    use tonic_health::ServingStatus;
    // tonic-health starts `""` as serving; a probe or load balancer asking before the first
    // readiness check would send calls to a process that cannot take them yet. Nothing else
    // holds the fresh reporter, so setting it here completes at once.
    let reporter = tonic_health::server::HealthReporter::new();
    futures::executor::block_on(reporter.set_service_status("", ServingStatus::NotServing));
    let health = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
    );
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(cardlink_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| ServeError::Task(format!("gRPC reflection v1: {e}")))?;
    let reflection_v1alpha =
        reflection().build_v1alpha().map_err(|e| ServeError::Task(format!("gRPC reflection v1alpha: {e}")))?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(READINESS_EVERY);
        let mut was_ready = None;
        loop {
            let stopping = *shutdown.borrow();
            let ready_now = !stopping && ready();
            if was_ready != Some(ready_now) {
                tracing::info!(ready = ready_now, "readiness changed");
                was_ready = Some(ready_now);
            }
            let status = |up: bool| if up { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status("", status(ready_now)).await;
            reporter.set_service_status(LIVENESS, status(!stopping)).await;
            if stopping {
                return;
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {}
            }
        }
    });
    Ok(server.add_service(health).add_service(reflection_v1).add_service(reflection_v1alpha))
}

/// The connections `listener` accepts, with Nagle's algorithm off. A unary gRPC response goes out
/// as separate HTTP/2 frames (headers, data, trailers); with Nagle on, the last waits for the
/// client's delayed ACK — some 40 ms on every call (seen as ListTransactions' p50 in the history
/// benchmark). tonic sets `TCP_NODELAY` only on listeners it binds itself.
pub fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    use futures::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    })
}

/// Binds `addr` (port 0 for an ephemeral port); returns the listener and the address it got.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen { addr, source })?;
    Ok((listener, local))
}

/// How long a stopping service waits for in-flight calls (open streams included) before it
/// cuts them off.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Waits for `task` up to `grace`, then aborts it: a client holding a call open (a health
/// `Watch`, a stream that ignores its end) cannot keep a process from stopping.
pub async fn join_within<T>(task: tokio::task::JoinHandle<T>, grace: Duration) -> Option<T> {
    let abort = task.abort_handle();
    match tokio::time::timeout(grace, task).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(_)) => None,
        Err(_) => {
            tracing::warn!(?grace, "calls still open after the grace period; cutting them off");
            abort.abort();
            None
        }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone): the graceful-shutdown future
/// for tonic and axum servers.
pub async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binding_a_taken_port_names_the_address() {
        let (_held, addr) = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let err = bind(addr).await.unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_server_is_not_ready_until_its_first_readiness_check() {
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
        let (listener, addr) = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let (stop, shutdown) = watch::channel(false);
        // Readiness is first evaluated on a task of its own; while that first check has not
        // returned, only the initial status can be seen.
        let (entered, mut first_check) = tokio::sync::mpsc::channel::<()>(1);
        let first = std::sync::atomic::AtomicBool::new(true);
        let ready: ReadyCheck = Box::new(move || {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let _ = entered.try_send(());
                std::thread::sleep(Duration::from_secs(2));
            }
            true
        });
        let router = grpc_router(grpc_server(), ready, shutdown).unwrap();
        tokio::spawn(router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
        let _ = tokio::time::timeout(Duration::from_secs(5), first_check.recv()).await;
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut client = HealthClient::new(channel);
        let status = client.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::NotServing as i32, "ready before anything said so");
        stop.send_replace(true);
    }

    #[tokio::test]
    async fn stopped_resolves_on_the_signal_or_a_dropped_sender() {
        let (tx, rx) = watch::channel(false);
        let waiter = tokio::spawn(stopped(rx));
        tx.send_replace(true);
        waiter.await.unwrap();
        let (tx, rx) = watch::channel(false);
        drop(tx);
        stopped(rx).await;
    }
}
