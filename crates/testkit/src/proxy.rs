//! A TCP proxy that can cut the network between the services and the broker, and restore it.
//!
//! Fault tests put it in front of the embedded broker (which advertises the proxy's address, so
//! clients keep to it after their first metadata request). [`TcpProxy::cut`] closes every
//! connection through it and closes each new one as soon as it is accepted, as a broker that
//! went away does; [`TcpProxy::restore`] lets connections through again. The broker itself keeps
//! running, so what was written before the cut is still there after it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy. Dropping it stops it and closes its connections.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    /// `true` while connections may pass.
    open: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on `listener` and forwards every connection to `upstream`.
    pub fn start(listener: std::net::TcpListener, upstream: SocketAddr) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let open = Arc::new(watch::Sender::new(true));
        let task = tokio::spawn(accept(listener, upstream, Arc::clone(&open)));
        Ok(Self { addr, open, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection through the proxy, and every new one until [`Self::restore`].
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.open.send_replace(false);
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, open: Arc<watch::Sender<bool>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        if !*open.borrow() {
            drop(client);
            continue;
        }
        tokio::spawn(pipe(client, upstream, open.subscribe()));
    }
}

/// Copies both ways until either side closes or the proxy is cut.
async fn pipe(mut client: TcpStream, upstream: SocketAddr, mut open: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = open.wait_for(|open| !open) => {}
    }
}
