//! How the bus reaches Kafka, and the limits it keeps.
//!
//! The defaults run against a local broker (`cardlink dev`). For a production cluster set
//! `bootstrap_servers`, raise `replication_factor`, and pass TLS/SASL settings through
//! [`BusConfig::librdkafka`] with librdkafka's own keys (`security.protocol`, `ssl.ca.location`,
//! `sasl.mechanism`, `sasl.username`, …). Keys that carry cardlink's guarantees (acks,
//! idempotence) cannot be overridden: [`BusConfig::validate`] refuses them by name.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::error::BusError;

/// librdkafka keys that cardlink sets itself because its guarantees depend on them.
pub const RESERVED_KEYS: &[&str] = &[
    "bootstrap.servers",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "message.max.bytes",
    // How cardlink's consumers read: a group of their own per purpose, never an automatic jump
    // past records (a manually assigned reader that lost its position fails instead), no
    // end-of-partition events in the stream of records.
    "group.id",
    "auto.offset.reset",
    "enable.partition.eof",
];

/// Connection settings and limits of the bus.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Comma-separated `host:port` list of Kafka brokers.
    pub bootstrap_servers: String,
    /// Reported to the brokers; shows which service a connection belongs to.
    pub client_id: String,
    /// First part of every topic name, so several installations can share a cluster.
    pub topic_prefix: String,
    /// Replicas per partition when provisioning. 1 for a single dev broker; 3 in production.
    pub replication_factor: i32,
    /// Replicas that must hold a record before an `acks=all` write succeeds, set on the topics
    /// when provisioning. `None`: 2 from 3 replicas up (one broker may be down, no acknowledged
    /// write rests on a single disk), else 1.
    pub min_insync_replicas: Option<i32>,
    /// Partitions of the event topics (transactions, statements). More partitions, more
    /// parallel readers; the number cannot shrink later.
    pub event_partitions: i32,
    /// How long a publish may wait for Kafka's acknowledgement before it fails.
    #[serde(with = "duration_ms")]
    pub delivery_timeout: Duration,
    /// Largest record value (bytes) the bus accepts; larger ones fail before they are sent.
    pub max_message_bytes: usize,
    /// Retention of the event topics; a cursor older than this is out of range.
    #[serde(with = "duration_ms")]
    pub event_retention: Duration,
    /// Retention of the audit topic (APPI asks for records of provision to third parties).
    #[serde(with = "duration_ms")]
    pub audit_retention: Duration,
    /// Extra librdkafka settings for producers, consumers and the admin client, e.g. TLS/SASL.
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            client_id: "cardlink".to_owned(),
            topic_prefix: "cardlink".to_owned(),
            replication_factor: 1,
            min_insync_replicas: None,
            event_partitions: 8,
            delivery_timeout: Duration::from_secs(30),
            max_message_bytes: 1024 * 1024,
            event_retention: Duration::from_secs(30 * 24 * 3600),
            audit_retention: Duration::from_secs(3 * 365 * 24 * 3600),
            librdkafka: BTreeMap::new(),
        }
    }
}

impl BusConfig {
    /// Local defaults pointed at `bootstrap_servers`.
    pub fn local(bootstrap_servers: impl Into<String>) -> Self {
        Self { bootstrap_servers: bootstrap_servers.into(), ..Self::default() }
    }

    /// Checks every value; the error names the bad key.
    /// Applies settings from environment variables (12-factor): `CARDLINK_KAFKA__<KEY>` sets
    /// librdkafka's `<key>` with `_` read as `.` (`CARDLINK_KAFKA__SECURITY_PROTOCOL=SASL_SSL`,
    /// `CARDLINK_KAFKA__SASL_PASSWORD=…`), and `CARDLINK_TOPIC_PREFIX` the topic prefix. Call
    /// [`BusConfig::validate`] afterwards: reserved keys are refused there, by name.
    pub fn with_env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        for (name, value) in vars {
            if let Some(key) = name.strip_prefix(ENV_LIBRDKAFKA_PREFIX) {
                self.librdkafka.insert(key.to_ascii_lowercase().replace('_', "."), value);
            } else if name == "CARDLINK_TOPIC_PREFIX" {
                self.topic_prefix = value;
            }
        }
        self
    }

    /// The `min.insync.replicas` the topics get: the configured one, or the default for the
    /// replication factor.
    pub fn effective_min_insync_replicas(&self) -> i32 {
        self.min_insync_replicas.unwrap_or(if self.replication_factor >= 3 { 2 } else { 1 })
    }

    pub fn validate(&self) -> Result<(), BusError> {
        let bad = |key: &str, reason: String| Err(BusError::Config { key: key.to_owned(), reason });
        if self.bootstrap_servers.split(',').any(|s| s.trim().is_empty() || !s.contains(':')) {
            return bad(
                "bootstrap_servers",
                format!("{:?} is not a comma-separated host:port list", self.bootstrap_servers),
            );
        }
        if self.topic_prefix.is_empty()
            || !self.topic_prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return bad(
                "topic_prefix",
                format!("{:?} must be non-empty ASCII letters, digits, '.', '_' or '-'", self.topic_prefix),
            );
        }
        if !(1..=16).contains(&self.replication_factor) {
            return bad("replication_factor", format!("{} is not between 1 and 16", self.replication_factor));
        }
        if let Some(n) = self.min_insync_replicas
            && !(1..=self.replication_factor).contains(&n)
        {
            return bad(
                "min_insync_replicas",
                format!("{n} is not between 1 and the replication factor ({})", self.replication_factor),
            );
        }
        if !(1..=1024).contains(&self.event_partitions) {
            return bad("event_partitions", format!("{} is not between 1 and 1024", self.event_partitions));
        }
        if self.delivery_timeout < Duration::from_millis(100) || self.delivery_timeout > Duration::from_secs(300) {
            return bad("delivery_timeout", format!("{:?} is not between 100 ms and 300 s", self.delivery_timeout));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            return bad("max_message_bytes", format!("{} is not between 1 KiB and 16 MiB", self.max_message_bytes));
        }
        for key in self.librdkafka.keys() {
            if RESERVED_KEYS.contains(&key.as_str()) {
                return bad(&format!("librdkafka.{key}"), "is set by cardlink and cannot be overridden".to_owned());
            }
        }
        Ok(())
    }

    /// Sets `key` to cardlink's default `value` unless the operator set it (`CARDLINK_KAFKA__*`,
    /// `[kafka.librdkafka]`): settings cardlink's guarantees do not depend on stay tunable. The
    /// others are [`RESERVED_KEYS`], refused by [`BusConfig::validate`].
    pub(crate) fn set_default(&self, cfg: &mut rdkafka::ClientConfig, key: &str, value: &str) {
        if !self.librdkafka.contains_key(key) {
            cfg.set(key, value);
        }
    }

    /// The librdkafka settings common to every client of this bus.
    pub(crate) fn client_config(&self, role: &str) -> rdkafka::ClientConfig {
        let mut cfg = rdkafka::ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap_servers);
        cfg.set("client.id", format!("{}-{role}", self.client_id));
        cfg.set("statistics.interval.ms", crate::telemetry::STATS_INTERVAL.as_millis().to_string());
        for (key, value) in &self.librdkafka {
            cfg.set(key, value);
        }
        cfg
    }
}

/// Environment variables with this prefix pass through to librdkafka (see [`BusConfig::with_env`]).
pub const ENV_LIBRDKAFKA_PREFIX: &str = "CARDLINK_KAFKA__";

/// Durations in configuration files are whole milliseconds.
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn environment_variables_pass_through_to_librdkafka_and_reserved_keys_are_named() {
        let vars = [
            ("CARDLINK_KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
            ("CARDLINK_KAFKA__SASL_MECHANISMS", "SCRAM-SHA-512"),
            ("CARDLINK_TOPIC_PREFIX", "prod"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = BusConfig::local("kafka:9092").with_env(vars);
        assert_eq!(config.librdkafka.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        assert_eq!(config.librdkafka.get("sasl.mechanisms").map(String::as_str), Some("SCRAM-SHA-512"));
        assert_eq!(config.topic_prefix, "prod");
        assert_eq!(config.librdkafka.len(), 2);
        config.validate().unwrap();

        let reserved = BusConfig::local("kafka:9092").with_env([("CARDLINK_KAFKA__ACKS".to_owned(), "1".to_owned())]);
        let err = reserved.validate().unwrap_err().to_string();
        assert!(err.contains("librdkafka.acks"), "{err}");
    }

    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(BusConfig::default().validate().is_ok());
    }

    #[test]
    fn bad_values_name_their_key() {
        type Mutation = Box<dyn Fn(&mut BusConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("bootstrap_servers", Box::new(|c| c.bootstrap_servers = "localhost".into())),
            ("bootstrap_servers", Box::new(|c| c.bootstrap_servers = "a:1,,b:2".into())),
            ("topic_prefix", Box::new(|c| c.topic_prefix = "card link".into())),
            ("replication_factor", Box::new(|c| c.replication_factor = 0)),
            ("event_partitions", Box::new(|c| c.event_partitions = 0)),
            ("delivery_timeout", Box::new(|c| c.delivery_timeout = Duration::ZERO)),
            ("max_message_bytes", Box::new(|c| c.max_message_bytes = 10)),
            (
                "librdkafka.acks",
                Box::new(|c| {
                    c.librdkafka.insert("acks".into(), "1".into());
                }),
            ),
        ];
        for (key, mutate) in cases {
            let mut cfg = BusConfig::default();
            mutate(&mut cfg);
            match cfg.validate() {
                Err(BusError::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn security_settings_pass_through() {
        let mut cfg = BusConfig::default();
        cfg.librdkafka.insert("security.protocol".into(), "SASL_SSL".into());
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.client_config("t").get("security.protocol"), Some("SASL_SSL"));
    }
}
