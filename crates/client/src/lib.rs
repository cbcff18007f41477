//! The aggregator's side of cardlink, as a library: what `cardlink aggregator …` runs, what the
//! demo uses to create its consents through the real flow, and what an aggregator written in
//! Rust can start from.
//!
//! - [`pkce`]: the verifier and challenge of a consent request (RFC 7636, S256).
//! - [`aggregator`]: the gRPC calls — request a consent, exchange the code, subscribe,
//!   acknowledge — with the credential attached.
//! - [`subscriber`]: a resumable subscription — reconnects from the last processed cursor,
//!   de-duplicates repeats; it may start with a backfill of the consents' history.
//! - [`history`]: History listings (past transactions and statements under a consent), page by
//!   page.
//! - [`cursor_file`]: the last cursor, saved atomically so a restarted client resumes exactly.
//! - [`loopback`] and [`pending`]: receiving the consent redirect on the loopback interface, or
//!   keeping the request's verifier until the code is brought back by hand.
//! - [`render`]: one delivery as a table row or a JSON line.
//! - [`http`] and [`member`]: a minimal HTTP/1.1 client, and the member's side of the consent
//!   page played with it (for demos and tests; real members use their browser).

pub mod aggregator;
pub mod cursor_file;
pub mod history;
pub mod http;
pub mod loopback;
pub mod member;
pub mod pending;
pub mod pkce;
pub mod render;
pub mod subscriber;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("the credential is not valid as a header value")]
    BadCredential,
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the consent page: {0}")]
    Page(String),
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
}

impl ClientError {
    /// The service's reason for refusing, when a service refused (branch on this, not on the
    /// message; `docs/reasons.md` lists them).
    pub fn reason(&self) -> Option<cardlink_api::Reason> {
        match self {
            Self::Status(status) => cardlink_api::Reason::of(status),
            _ => None,
        }
    }
}
