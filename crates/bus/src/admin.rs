//! Provisioning: make the cluster hold every topic of the catalogue — and, for services started
//! against a production cluster, only check that it does.
//!
//! [`provision`] is what `cardlink topics provision` (the chart's Job, docker-compose's `topics`
//! service) and the development runs do: topics that exist are left as they are (a topic's
//! partition count is never changed by cardlink, because that would move keys between
//! partitions and break per-account ordering), and the report says what differs from the
//! catalogue so an operator can act. [`check_topics`] is what `cardlink serve` does: a service
//! never creates a topic, so a topic is never made with a development replication factor on a
//! production cluster by a service that happened to start first.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;

use crate::config::BusConfig;
use crate::consumer::{Consumer, METADATA_TIMEOUT};
use crate::error::BusError;
use crate::telemetry::StatsContext;
use crate::topics::{Catalogue, Topic};

/// How long the admin request may take, and how long we wait for new topics to show up in
/// metadata.
pub const PROVISION_TIMEOUT: Duration = Duration::from_secs(30);

/// What provisioning found or did, per topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicState {
    Created,
    Existed,
    /// The topic exists with a partition count other than the catalogue's. Left alone.
    PartitionMismatch {
        expected: i32,
        actual: i32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionReport {
    pub topics: Vec<(Topic, String, TopicState)>,
}

/// Creates the catalogue's missing topics and checks the existing ones.
pub async fn provision(config: &BusConfig) -> Result<ProvisionReport, BusError> {
    config.validate()?;
    let catalogue = Catalogue::new(config);
    let admin: AdminClient<StatsContext> = config
        .client_config("admin")
        .create_with_context(StatsContext::new("admin"))
        .map_err(|source| BusError::Kafka { operation: "create admin client", source })?;

    let configs: Vec<Vec<(&'static str, String)>> = catalogue.specs().iter().map(|s| s.configs()).collect();
    let new_topics: Vec<NewTopic<'_>> = catalogue
        .specs()
        .iter()
        .zip(&configs)
        .map(|(spec, configs)| {
            let topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication_factor));
            configs.iter().fold(topic, |t, (k, v)| t.set(k, v))
        })
        .collect();
    let options =
        AdminOptions::new().operation_timeout(Some(PROVISION_TIMEOUT)).request_timeout(Some(PROVISION_TIMEOUT));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| BusError::Kafka { operation: "create topics", source })?;

    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::Provision { topic, reason: format!("{code} ({code:?})") });
            }
        }
    }

    // Newly created topics take a moment to appear in every broker's metadata; wait for them
    // so that callers can produce and consume as soon as this returns.
    let checker = Consumer::new(config, "provisioner")?;
    let deadline = tokio::time::Instant::now() + PROVISION_TIMEOUT;
    let mut report = ProvisionReport { topics: Vec::with_capacity(catalogue.specs().len()) };
    for spec in catalogue.specs() {
        let actual = loop {
            match checker.partition_count(spec.topic).await {
                Ok(n) => break n,
                Err(BusError::UnknownTopic(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(BusError::UnknownTopic(name)) => {
                    return Err(BusError::Provision {
                        topic: name,
                        reason: format!("not visible in metadata {METADATA_TIMEOUT:?} after creation"),
                    });
                }
                Err(e) => return Err(e),
            }
        };
        let state = if actual != spec.partitions {
            tracing::warn!(topic = %spec.name, expected = spec.partitions, actual, "topic partition count differs from the catalogue; left unchanged");
            TopicState::PartitionMismatch { expected: spec.partitions, actual }
        } else if created.contains(&spec.name) {
            TopicState::Created
        } else {
            TopicState::Existed
        };
        report.topics.push((spec.topic, spec.name.clone(), state));
    }
    Ok(report)
}

/// Checks that every topic of the catalogue exists (without creating any); a missing one is
/// [`BusError::TopicMissing`], which says how to create it.
pub async fn check_topics(config: &BusConfig) -> Result<ProvisionReport, BusError> {
    config.validate()?;
    let catalogue = Catalogue::new(config);
    let checker = Consumer::new(config, "topic-check")?;
    let mut report = ProvisionReport { topics: Vec::with_capacity(catalogue.specs().len()) };
    for spec in catalogue.specs() {
        let actual = match checker.partition_count(spec.topic).await {
            Ok(n) => n,
            Err(BusError::UnknownTopic(name)) => return Err(BusError::TopicMissing(name)),
            Err(e) => return Err(e),
        };
        let state = if actual == spec.partitions {
            TopicState::Existed
        } else {
            tracing::warn!(topic = %spec.name, expected = spec.partitions, actual, "topic partition count differs from the catalogue");
            TopicState::PartitionMismatch { expected: spec.partitions, actual }
        };
        report.topics.push((spec.topic, spec.name.clone(), state));
    }
    Ok(report)
}
