//! Appending one record again, as it was: how an event that a release could not decode (and so
//! dead-lettered, see the subscription service) reaches aggregators once a release that reads it
//! runs. The copy keeps the key (so the partition and the order among the account's events),
//! the bytes and the headers (so the event id); a reader that already had it de-duplicates it.

use std::time::Duration;

use crate::{BusConfig, BusError, Consumer, Delivered, OutboundRecord, Producer, StartAt, Topic};

/// How long to wait for the record to be read.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The topic whose name without the prefix is `suffix` (`transactions.v1`), or its short form
/// (`transactions`).
pub fn topic_named(suffix: &str) -> Option<Topic> {
    Topic::ALL.into_iter().find(|t| t.suffix() == suffix || t.suffix().strip_suffix(".v1") == Some(suffix))
}

/// Reads the record at `offset` of `topic`'s `partition` and appends a copy of it to the topic.
pub async fn redeliver(config: &BusConfig, topic: Topic, partition: i32, offset: i64) -> Result<Delivered, BusError> {
    let consumer = Consumer::new(config, "redeliver")?;
    let (low, high) = consumer.watermarks(topic, partition).await?;
    if !(low..high).contains(&offset) {
        return Err(BusError::Config {
            key: format!("{}/{partition}/{offset}", topic.suffix()),
            reason: format!(
                "is not on the bus: the partition holds offsets {low}..{high} (retention may have removed it)"
            ),
        });
    }
    consumer.assign(&[(topic, partition, StartAt::Offset(offset))])?;
    let record = tokio::time::timeout(READ_TIMEOUT, consumer.recv())
        .await
        .map_err(|_| BusError::Task(format!("the record was not read within {READ_TIMEOUT:?}")))??;
    if record.offset != offset {
        return Err(BusError::Task(format!(
            "read offset {} instead of {offset} (a compacted or transactional gap?)",
            record.offset
        )));
    }
    let producer = Producer::new(config)?;
    let key = record.key.clone().unwrap_or_default();
    producer.send(OutboundRecord { topic, key: &key, payload: &record.payload, headers: &record.headers }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_named_with_or_without_their_version() {
        assert_eq!(topic_named("transactions"), Some(Topic::Transactions));
        assert_eq!(topic_named("statements.v1"), Some(Topic::Statements));
        assert_eq!(topic_named("nope"), None);
    }
}
