//! What every cardlink service does the same way when it starts and stops: bind its
//! listeners, report why it could not start, and wait for its shutdown signal. Keeping it in one
//! place keeps the services' `server` modules about their own wiring only.

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
}

/// HTTP/2 keepalive: a ping this often on an idle connection finds peers that vanished (a
/// NAT or load balancer that dropped the connection) instead of holding their streams forever.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A peer that does not answer a keepalive ping within this is disconnected.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams (calls) one client connection may hold open.
pub const MAX_CALLS_PER_CONNECTION: u32 = 256;

/// The gRPC server every service starts from: keepalive on, calls per connection bounded.
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_CALLS_PER_CONNECTION))
}

/// Binds `addr` (port 0 for an ephemeral port); returns the listener and the address it got.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen { addr, source })?;
    Ok((listener, local))
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
