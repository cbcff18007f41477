//! The consent service: how a card member lets an aggregator see their card data.
//!
//! Shaped like OAuth 2.0 authorization code with PKCE and a pushed authorization request:
//! the aggregator pushes a request (issuer, scopes, duration, purpose, redirect URI, PKCE
//! challenge) and sends the member to the issuer; the member signs in at the issuer and approves
//! some accounts and scopes (or denies); the aggregator exchanges the one-time code, with its
//! PKCE verifier, for the consent. Members, issuers and aggregators can revoke; consents expire.
//!
//! - [`lifecycle`]: the rules, as a pure state machine over consent records.
//! - [`pkce`]: PKCE S256 and one-time codes.
//! - [`login`]: the member's sign-in at their card company (OpenID Connect relying party).
//! - [`pages`]: the consent and member pages.

pub mod grpc;
pub mod lifecycle;
pub mod login;
pub mod pages;
pub mod pkce;
pub mod server;
pub mod service;
