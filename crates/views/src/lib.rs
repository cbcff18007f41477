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
//! - [`AccessViews`]: the registry and consent views together, as the services that serve
//!   aggregators (subscription, history) start them.

pub mod access;
pub mod consent;
pub mod follow;
pub mod registry;

use cardlink_bus::{BusConfig, BusError, PolledConsumer, Topic};
use tokio::sync::watch;

/// A follower's task: it ends with an error only where retrying cannot help.
pub type FollowTask = tokio::task::JoinHandle<Result<(), BusError>>;

/// What a service that authenticates aggregators and checks their consents reads: the registry
/// (credentials, connections) and the consents, each followed by a consumer named after the
/// service, both caught up.
#[derive(Debug)]
pub struct AccessViews {
    pub registry: follow::Followed<registry::RegistryView>,
    pub consents: follow::Followed<consent::ConsentView>,
    /// The followers' tasks, named.
    pub tasks: [(&'static str, FollowTask); 2],
}

impl AccessViews {
    /// Follows both from the start of their topics (at once) and returns when both caught up.
    pub async fn follow(bus: &BusConfig, service: &str, shutdown: &watch::Receiver<bool>) -> Result<Self, BusError> {
        let (mut registry, registry_task) = follow::spawn(
            PolledConsumer::new(bus, &format!("{service}-registry-view"))?,
            Topic::Registry,
            registry::RegistryView::new(),
            shutdown.clone(),
        );
        let (mut consents, consents_task) = follow::spawn(
            PolledConsumer::new(bus, &format!("{service}-consent-view"))?,
            Topic::Consents,
            consent::ConsentView::new(),
            shutdown.clone(),
        );
        registry.caught_up().await;
        consents.caught_up().await;
        Ok(Self { registry, consents, tasks: [("registry view", registry_task), ("consent view", consents_task)] })
    }
}
