//! The history service: a member's past transactions and statements, on consent.
//!
//! - [`indexer`]: follows the event topics (one consumer group across replicas) and keeps the
//!   history store ([`cardlink_history`]) at their latest state, with its watermarks.
//! - [`service`]: the History API as plain functions — bound to the calling aggregator and one of
//!   its active consents, projected as the live stream projects (`cardlink-entitlement`).
//! - [`page`]: sealed page tokens bound to one listing.
//! - [`retention`]: old history removed in small batches.
//! - [`grpc`] and [`server`]: the `History` gRPC service and running it with the indexer.

pub mod grpc;
pub mod indexer;
pub mod page;
pub mod retention;
pub mod server;
pub mod service;
