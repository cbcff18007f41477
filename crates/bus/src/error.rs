//! The bus's one error type. Services map it to their own errors (and to gRPC status codes)
//! in one place; [`BusError::is_retriable`] says whether trying again can help.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid bus configuration: {key} {reason}")]
    Config { key: String, reason: String },
    #[error("record of {size} bytes exceeds the bus limit of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },
    #[error("event does not encode: {0}")]
    Encode(#[from] cardlink_events::CodecError),
    #[error("Kafka did not acknowledge the record within {0:?}")]
    DeliveryTimeout(Duration),
    #[error("topic {0} does not exist on the cluster; provision the topics first")]
    UnknownTopic(String),
    #[error("the local send queue stayed full; Kafka is slower than the producers")]
    QueueFull,
    #[error("provisioning topic {topic}: {reason}")]
    Provision { topic: String, reason: String },
    #[error(
        "topic {0} does not exist: services never create topics; run `cardlink topics provision --replication-factor <n>` first (the Helm chart's topics Job and docker-compose's `topics` service do)"
    )]
    TopicMissing(String),
    #[error("Kafka {operation} failed: {source}")]
    Kafka {
        operation: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("embedded broker: {0}")]
    Embedded(String),
    #[error("bus task failed: {0}")]
    Task(String),
}

impl BusError {
    /// Maps an rdkafka error of `operation`, naming the common cases.
    pub(crate) fn kafka(operation: &'static str, source: KafkaError, delivery_timeout: Duration, topic: &str) -> Self {
        match source.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageTimedOut) => Self::DeliveryTimeout(delivery_timeout),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                Self::UnknownTopic(topic.to_owned())
            }
            Some(RDKafkaErrorCode::QueueFull) => Self::QueueFull,
            _ => Self::Kafka { operation, source },
        }
    }

    /// A short, stable name of the kind of error (the `error.type` of metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config { .. } => "config",
            Self::MessageTooLarge { .. } => "message_too_large",
            Self::Encode(_) => "encode",
            Self::DeliveryTimeout(_) => "delivery_timeout",
            Self::UnknownTopic(_) => "unknown_topic",
            Self::QueueFull => "queue_full",
            Self::Provision { .. } => "provision",
            Self::TopicMissing(_) => "topic_missing",
            Self::Kafka { .. } => "kafka",
            Self::Embedded(_) => "embedded",
            Self::Task(_) => "task",
        }
    }

    /// Whether the same operation may succeed if tried again later.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::DeliveryTimeout(_) | Self::QueueFull => true,
            Self::Kafka { source, .. } => matches!(
                source.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::BrokerTransportFailure
                        | RDKafkaErrorCode::AllBrokersDown
                        | RDKafkaErrorCode::NotEnoughReplicas
                        | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                        | RDKafkaErrorCode::LeaderNotAvailable
                        | RDKafkaErrorCode::NotLeaderForPartition
                        | RDKafkaErrorCode::RequestTimedOut
                        | RDKafkaErrorCode::OperationTimedOut
                )
            ),
            _ => false,
        }
    }
}
