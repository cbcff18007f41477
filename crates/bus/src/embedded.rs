//! A Kafka-compatible broker in this process, for development and tests.
//!
//! It is [tansu](https://crates.io/crates/tansu) with in-memory storage: it speaks the real
//! Kafka protocol, so everything else in cardlink talks to it through rdkafka exactly as it
//! would to Apache Kafka. Records live only as long as the process. Production builds leave
//! this module out (`--no-default-features`) and point `bootstrap_servers` at a real cluster.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tansu_broker::NODE_ID;
use tansu_broker::broker::Broker;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::StorageContainer;
use tokio::task::JoinHandle;

use crate::error::BusError;

/// How long [`EmbeddedBroker::start`] waits for the broker to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running in-process broker. Dropping it stops it.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts a broker on 127.0.0.1 and an ephemeral port.
    pub async fn start_ephemeral() -> Result<Self, BusError> {
        Self::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a broker listening on `addr` (port 0: a free port) and waits until it accepts
    /// connections.
    pub async fn start(addr: SocketAddr) -> Result<Self, BusError> {
        let addr = Self::concrete(addr)?;
        Self::start_advertising(addr, addr).await
    }

    /// Starts a broker listening on `addr` that tells clients to reach it at `advertised` (a
    /// proxy in front of it, say: clients follow the advertised address after their first
    /// request, so only then does every connection pass the proxy). Port 0 in `addr`: a free one.
    pub async fn start_advertising(addr: SocketAddr, advertised: SocketAddr) -> Result<Self, BusError> {
        let addr = Self::concrete(addr)?;
        let embedded = |what: &str, e: &dyn std::fmt::Display| BusError::Embedded(format!("{what}: {e}"));
        let listener = url::Url::parse(&format!("tcp://{addr}")).map_err(|e| embedded("listener address", &e))?;
        let advertised =
            url::Url::parse(&format!("tcp://{advertised}")).map_err(|e| embedded("advertised address", &e))?;
        let storage = url::Url::parse("memory://tansu/").map_err(|e| embedded("storage address", &e))?;
        let mut broker = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
            .node_id(NODE_ID)
            .cluster_id("cardlink-dev")
            .incarnation_id(uuid::Uuid::new_v4())
            .advertised_listener(advertised)
            .listener(listener)
            .storage(storage)
            .silent(true)
            .build()
            .await
            .map_err(|e| embedded("build", &e))?;

        // `serve`, unlike tansu's `main`, installs no signal handlers: shutdown stays ours.
        let task = tokio::spawn(async move {
            if let Err(e) = broker.serve(tokio::time::Instant::now()).await {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        });
        let running = Self { addr, task };
        running.wait_until_accepting().await?;
        tracing::info!(%addr, "embedded Kafka-compatible broker (tansu) started");
        Ok(running)
    }

    /// `addr` with a real port: the broker advertises its address, so it needs the port up
    /// front. Another process could take the port in between; the start then fails clearly
    /// rather than silently.
    fn concrete(addr: SocketAddr) -> Result<SocketAddr, BusError> {
        if addr.port() != 0 {
            return Ok(addr);
        }
        TcpListener::bind((addr.ip(), 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| BusError::Embedded(format!("no free port on {}: {e}", addr.ip())))
    }

    async fn wait_until_accepting(&self) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if self.task.is_finished() {
                return Err(BusError::Embedded(format!("broker on {} exited during start (port in use?)", self.addr)));
            }
            let addr = self.addr;
            let connected = tokio::task::spawn_blocking(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .await
            .unwrap_or(false);
            if connected {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BusError::Embedded(format!(
                    "broker on {} not accepting after {START_TIMEOUT:?}",
                    self.addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `bootstrap.servers` value for clients of this broker.
    pub fn bootstrap_servers(&self) -> String {
        self.addr.to_string()
    }

    /// Stops the broker: its listener and every connection close. Its records are gone.
    pub async fn stop(self) {
        self.task.abort();
        let _ = (&mut { self }.task).await;
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
