//! Admission: which TCP connections a server takes on.
//!
//! Every connection holds memory and a file descriptor for as long as its peer keeps it open, so
//! a server bounds how many it holds in all and how many one client address may hold: one client
//! opening thousands of connections is refused before it can crowd out the others. A connection
//! over either bound is accepted and closed at once (the peer sees the connection end; gRPC
//! clients report `UNAVAILABLE` and retry with backoff), counted in [`Admission::refused`] and
//! logged at debug level.
//!
//! Behind a proxy that hides client addresses (a load balancer that does not preserve the source
//! address), every connection comes from the proxy: raise or turn off the per-address bound
//! there (`0`), and bound connections at the proxy instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Connections a server holds at most, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Connections one client address may hold at most, by default.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
/// How long accepting pauses after the operating system refused an accept (out of file
/// descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The bounds, and what is open now.
#[derive(Clone, Debug)]
pub struct Admission {
    max_total: usize,
    max_per_address: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    total: Arc<AtomicUsize>,
    refused: Arc<AtomicU64>,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)
    }
}

impl Admission {
    /// At most `max_total` connections, `max_per_address` of them from one address (`0`: no
    /// per-address bound).
    pub fn new(max_total: usize, max_per_address: usize) -> Self {
        Self {
            max_total: max_total.max(1),
            max_per_address,
            open: Arc::default(),
            total: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A slot for a connection from `address`, if the bounds leave room.
    pub fn admit(&self, address: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let from_address = open.get(&address).copied().unwrap_or(0);
        if self.total.load(Ordering::Relaxed) >= self.max_total
            || (self.max_per_address > 0 && from_address >= self.max_per_address)
        {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        open.insert(address, from_address + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Slot { admission: self.clone(), address })
    }

    /// The connections `listener` accepts within the bounds; the others are closed at once.
    pub fn incoming(self, listener: TcpListener) -> impl Stream<Item = std::io::Result<Admitted>> + Send + 'static {
        futures::stream::unfold((listener, self), |(listener, admission)| async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => match admission.admit(peer.ip()) {
                        Some(slot) => {
                            // As `crate::incoming`: no Nagle delay on the last frame of a response.
                            let _ = stream.set_nodelay(true);
                            return Some((Ok(Admitted { stream, _slot: slot }), (listener, admission)));
                        }
                        None => {
                            tracing::debug!(%peer, "connection refused: too many open");
                            drop(stream);
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "could not accept a connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        })
    }
}

/// One admitted connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Admission,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.address);
            }
        }
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An admitted connection: the TCP stream, holding its place until it closes.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    _slot: Slot,
}

impl Admitted {
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_per_address_and_in_all_and_places_come_back() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert!(admission.admit(a).is_none(), "a third from one address");
        let _third = admission.admit(b).unwrap();
        assert!(admission.admit(b).is_none(), "a fourth in all");
        assert_eq!((admission.open(), admission.refused()), (3, 2));
        drop(first);
        assert!(admission.admit(a).is_some(), "a closed connection gives its place back");
        let unbounded = Admission::new(10, 0);
        let held: Vec<_> = (0..10).map(|_| unbounded.admit(a).unwrap()).collect();
        assert_eq!(held.len(), 10);
    }
}
