//! The topic catalogue: every topic cardlink uses, named once, with its partitions and its
//! retention or compaction.
//!
//! | topic                     | holds                                   | kept                 |
//! |---------------------------|-----------------------------------------|----------------------|
//! | `<prefix>.transactions.v1`| card transactions, keyed by account     | `event_retention`    |
//! | `<prefix>.statements.v1`  | statements, keyed by account            | `event_retention`    |
//! | `<prefix>.registry.v1`    | issuers, aggregators, connections       | compacted (latest)   |
//! | `<prefix>.consents.v1`    | consents, keyed by consent id           | compacted (latest)   |
//! | `<prefix>.audit.v1`       | who did what to which data, and when    | `audit_retention`    |
//! | `<prefix>.positions.v1`   | aggregators' acknowledged positions     | compacted (latest)   |
//!
//! Event topics have `event_partitions` partitions; the compacted topics have few (they are
//! read whole by every replica at start) and the audit topic a handful.

use std::time::Duration;

use cardlink_events::RecordType;

use crate::config::BusConfig;

/// A topic of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    Transactions,
    Statements,
    Registry,
    Consents,
    Audit,
    Positions,
}

impl Topic {
    pub const ALL: [Topic; 6] =
        [Topic::Transactions, Topic::Statements, Topic::Registry, Topic::Consents, Topic::Audit, Topic::Positions];

    /// The topic's name without the deployment's prefix (e.g. `transactions.v1`).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Transactions => "transactions.v1",
            Self::Statements => "statements.v1",
            Self::Registry => "registry.v1",
            Self::Consents => "consents.v1",
            Self::Audit => "audit.v1",
            Self::Positions => "positions.v1",
        }
    }

    /// The topic named `suffix` without the deployment's prefix, as stores keep their
    /// watermarks (the inverse of [`Topic::suffix`]).
    pub fn from_suffix(suffix: &str) -> Option<Topic> {
        Self::ALL.into_iter().find(|t| t.suffix() == suffix)
    }

    /// The topic that carries events of `record`.
    pub fn for_record(record: RecordType) -> Topic {
        match record {
            RecordType::CardTransaction => Self::Transactions,
            RecordType::Statement => Self::Statements,
            RecordType::AuditEvent => Self::Audit,
            RecordType::RegistryEvent => Self::Registry,
            RecordType::ConsentEvent => Self::Consents,
            RecordType::SubscriptionPosition => Self::Positions,
        }
    }
}

/// How a topic drops old records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// Records older than this are deleted.
    Delete(Duration),
    /// Only the latest record per key is kept, forever.
    Compact,
}

/// Everything needed to create one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub topic: Topic,
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
    pub cleanup: Cleanup,
    pub max_message_bytes: usize,
}

impl TopicSpec {
    /// Kafka topic configuration entries.
    pub fn configs(&self) -> Vec<(&'static str, String)> {
        let mut configs = vec![("max.message.bytes", self.max_message_bytes.to_string())];
        // With one replica the broker's default (1) is the only possible value: leave it unset.
        if self.replication_factor > 1 {
            configs.push(("min.insync.replicas", self.min_insync_replicas.to_string()));
        }
        match self.cleanup {
            Cleanup::Delete(retention) => {
                configs.push(("cleanup.policy", "delete".to_owned()));
                configs.push(("retention.ms", retention.as_millis().to_string()));
            }
            Cleanup::Compact => {
                configs.push(("cleanup.policy", "compact".to_owned()));
                configs.push(("retention.ms", "-1".to_owned()));
                // A superseded record stays readable this long: a consent change that lost a race
                // to a final state is followed by a copy of that state well within it, so
                // compaction never leaves the losing change as a key's only record.
                configs.push(("min.compaction.lag.ms", MIN_COMPACTION_LAG.as_millis().to_string()));
            }
        }
        configs
    }
}

/// How long compaction leaves a superseded record of a compacted topic in place.
pub const MIN_COMPACTION_LAG: Duration = Duration::from_secs(3600);

/// Partitions of the compacted registry and consent topics.
const COMPACTED_PARTITIONS: i32 = 3;
/// Partitions of the audit topic.
const AUDIT_PARTITIONS: i32 = 3;

/// The topics of one installation.
#[derive(Clone, Debug)]
pub struct Catalogue {
    specs: Vec<TopicSpec>,
}

impl Catalogue {
    pub fn new(config: &BusConfig) -> Self {
        let specs = Topic::ALL
            .into_iter()
            .map(|topic| {
                let (partitions, cleanup) = match topic {
                    Topic::Transactions | Topic::Statements => {
                        (config.event_partitions, Cleanup::Delete(config.event_retention))
                    }
                    Topic::Registry | Topic::Consents | Topic::Positions => (COMPACTED_PARTITIONS, Cleanup::Compact),
                    Topic::Audit => (AUDIT_PARTITIONS, Cleanup::Delete(config.audit_retention)),
                };
                TopicSpec {
                    topic,
                    name: format!("{}.{}", config.topic_prefix, topic.suffix()),
                    partitions,
                    replication_factor: config.replication_factor,
                    min_insync_replicas: config.effective_min_insync_replicas(),
                    cleanup,
                    max_message_bytes: config.max_message_bytes,
                }
            })
            .collect();
        Self { specs }
    }

    pub fn spec(&self, topic: Topic) -> &TopicSpec {
        // `new` builds one spec per Topic::ALL entry, in that order.
        &self.specs[Topic::ALL.iter().position(|t| *t == topic).unwrap_or_default()]
    }

    pub fn name(&self, topic: Topic) -> &str {
        &self.spec(topic).name
    }

    /// The catalogue topic with this Kafka name, if any.
    pub fn topic_named(&self, name: &str) -> Option<Topic> {
        self.specs.iter().find(|s| s.name == name).map(|s| s.topic)
    }

    pub fn specs(&self) -> &[TopicSpec] {
        &self.specs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_version() {
        let cfg = BusConfig { topic_prefix: "acme".into(), ..BusConfig::default() };
        let cat = Catalogue::new(&cfg);
        assert_eq!(cat.name(Topic::Transactions), "acme.transactions.v1");
        assert_eq!(cat.topic_named("acme.consents.v1"), Some(Topic::Consents));
        assert_eq!(cat.topic_named("cardlink.consents.v1"), None);
        for topic in Topic::ALL {
            assert_eq!(cat.spec(topic).topic, topic);
            assert_eq!(Topic::from_suffix(topic.suffix()), Some(topic));
        }
        assert_eq!(Topic::from_suffix("acme.transactions.v1"), None);
    }

    #[test]
    fn registry_and_consents_are_compacted_and_events_expire() {
        let cat = Catalogue::new(&BusConfig::default());
        for topic in [Topic::Registry, Topic::Consents] {
            assert!(cat.spec(topic).configs().contains(&("cleanup.policy", "compact".to_owned())));
        }
        let events = cat.spec(Topic::Transactions);
        assert_eq!(events.partitions, 8);
        assert!(events.configs().contains(&("retention.ms", (30u64 * 24 * 3600 * 1000).to_string())));
    }

    #[test]
    fn replicated_topics_need_two_in_sync_replicas_by_default() {
        let min_insync = |config: BusConfig| {
            let cat = Catalogue::new(&config);
            let configs = cat.spec(Topic::Consents).configs();
            configs.iter().find(|(k, _)| *k == "min.insync.replicas").map(|(_, v)| v.clone())
        };
        assert_eq!(min_insync(BusConfig { replication_factor: 3, ..BusConfig::default() }).as_deref(), Some("2"));
        assert_eq!(min_insync(BusConfig { replication_factor: 2, ..BusConfig::default() }).as_deref(), Some("1"));
        let five_of_three = BusConfig { replication_factor: 5, min_insync_replicas: Some(3), ..BusConfig::default() };
        assert_eq!(min_insync(five_of_three).as_deref(), Some("3"));
        // One replica: the broker's default is the only possible value; nothing is set.
        assert_eq!(min_insync(BusConfig::default()), None);
        let impossible = BusConfig { replication_factor: 3, min_insync_replicas: Some(4), ..BusConfig::default() };
        assert!(impossible.validate().is_err());
    }

    #[test]
    fn every_record_type_has_a_topic() {
        for record in RecordType::ALL {
            let _ = Topic::for_record(record);
        }
    }
}
