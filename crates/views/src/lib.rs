//! Views: the registry and the consents, materialised in memory from their compacted topics.
//!
//! Every service that decides who may see what reads these views, never a database: a
//! [`follow::Follower`] reads a compacted topic from the beginning, applies each record to a
//! view, keeps following, and publishes a [`follow::Watermark`] saying how far it has read and
//! whether it has caught up with the topic's end. A service is ready once its views caught up,
//! and can refuse to act on a view that has fallen behind.
//!
//! - [`consent::ConsentView`]: account → active grants, looked up on every event delivered.
//! - [`registry::RegistryView`]: issuers, aggregators, connections, credentials.
//! - [`access::AccessHistory`]: per member, which aggregator received which data, and when
//!   (from the audit topic, which is not compacted: it is read over its retention).

pub mod access;
pub mod consent;
pub mod follow;
pub mod registry;
