//! The subscription service: how aggregators receive, in real time and resumably, exactly the
//! events their consents entitle them to.
//!
//! - [`cursor`] and [`projection`] (from `cardlink-entitlement`, shared with history): stream
//!   positions bound to one aggregator; one event as one aggregator may see it under one grant.
//! - [`hub`]: the shared fan-out state every job below works through.
//! - [`streams`]: the stream registry — who is connected, their queues and positions.
//! - [`dispatch`]: one shared read of the bus handed to every entitled stream, never on a consent
//!   view older than the revocation bound.
//! - [`catch_up`]: a stream's own reader from its cursor up to where it joined the hub.
//! - [`backfill`]: a stream's consents' history from the history store, then live on one cursor.
//! - [`notices`]: consent changes told to the aggregator's streams.
//! - [`delivery`]: the one place a delivery is built, with its cursor and publication time.
//! - [`positions`]: named server-side positions (`Acknowledge`), kept on the bus.
//! - [`access`]: the record of what was provided to whom, written to the audit topic.
//! - [`metrics`]: deliveries, latency, streams, catch-up readers; the delivery span of each event.
//! - [`live`]: the live view page (events in, deliveries, streams) and its JSON.
//! - [`stream`]: one subscription's responses: catch-up, live deliveries, heartbeats, the end.
//! - [`grpc`] and [`server`]: the `Subscription` service and running it.

pub mod backfill;
// Shared with the history service (one projection, one cursor format, one access record).
pub use cardlink_entitlement::{access, cursor, projection};
pub mod catch_up;
pub mod dead_letter;
pub mod delivery;
pub mod dispatch;
pub mod grpc;
pub mod hub;
pub mod live;
pub mod metrics;
pub mod notices;
pub mod positions;
pub mod server;
pub mod stream;
pub mod streams;
