//! The subscription service: how aggregators receive, in real time and resumably, exactly the
//! events their consents entitle them to.
//!
//! - [`cursor`]: opaque, tamper-evident stream positions bound to one aggregator.
//! - [`hub`]: one shared read of the bus fanned out to the entitled streams, with catch-up.
//! - [`projection`]: one event, as one aggregator may see it under one grant — scopes applied,
//!   account ids pseudonymous.
//! - [`positions`]: named server-side positions (`Acknowledge`), kept on the bus.
//! - [`access`]: the record of what was provided to whom, written to the audit topic.
//! - [`metrics`]: deliveries, latency, streams, catch-up readers; the delivery span of each event.
//! - [`live`]: the live view page (events in, deliveries, streams) and its JSON.
//! - [`stream`]: one subscription's responses: catch-up, live deliveries, heartbeats, the end.
//! - [`grpc`] and [`server`]: the `Subscription` service and running it.

pub mod access;
pub mod cursor;
pub mod grpc;
pub mod hub;
pub mod live;
pub mod metrics;
pub mod positions;
pub mod projection;
pub mod server;
pub mod stream;
