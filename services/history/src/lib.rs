//! The history service: a member's past transactions and statements (参照系).
//!
//! - [`indexer`]: follows the event topics, as one consumer group across replicas, and keeps the
//!   history store (`cardlink-history`: PostgreSQL, or SQLite embedded) at their latest state.
//!
//! The `History` gRPC API, backfill on the subscription stream and retention build on it
//! (issue 18).

pub mod indexer;
