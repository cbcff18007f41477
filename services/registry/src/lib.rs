//! The participants registry: who takes part, who is connected to whom, and with which
//! credentials.
//!
//! Operators register issuers and aggregators; registering issues a signed credential
//! ([`cardlink_auth`]). Issuers enable and suspend their own connections to aggregators (no
//! connection, no consent, no data). Credentials can be rotated and revoked; a revoked one is
//! refused by every service as soon as its registry view has read the revocation. Every change
//! is the entity's new state on the compacted registry topic and an audit event.
//!
//! - [`service`]: the rules, over the registry view.
//! - [`goal`]: progress toward the 90% goal, from the registry and observed publishing.
//! - [`pages`]: the public transparency and goal pages.
//! - [`grpc`]: the thin tonic layer; [`server`]: running it.

pub mod goal;
pub mod grpc;
pub mod pages;
pub mod server;
pub mod service;
