//! Records on the event topics this release cannot decode — a schema version newer than it (during
//! an upgrade), or bytes something other than ingest wrote. They are never passed over silently:
//! each is counted (`cardlink.bus.undecodable_records`), logged, and recorded on the audit topic
//! as a `bus.undecodable` dead letter naming the record's topic, partition and offset; delivery
//! of the records around it goes on.
//!
//! The record itself stays on the bus for the topic's retention. Once a release that reads it
//! runs, `cardlink bus redeliver <topic> <partition> <offset>` appends it again (same key, bytes
//! and headers), and every replica delivers it live to the streams entitled to it; its event id is
//! unchanged, so an aggregator that somehow had it de-duplicates it (`docs/operations.md`).
//!
//! Every replica's shared reader sees the same record, so each writes a dead letter: they share
//! one event id (derived from the record's position), so the copies are recognisably one.

use cardlink_bus::{Producer, Record, Topic};
use cardlink_events::{ActorType, AuditEvent, AuditOutcome, CodecError, EventId};
use tokio::sync::{mpsc, watch};

/// Dead letters waiting to be written; beyond this, the log line and the metric remain.
pub const QUEUE: usize = 1_024;
/// The audit action of a dead letter.
pub const ACTION: &str = "bus.undecodable";

/// One record that could not be decoded.
#[derive(Clone, Debug)]
pub struct Undecodable {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
    /// The writer schema's fingerprint, if the header could be read.
    pub fingerprint: Option<String>,
    pub error: String,
}

impl Undecodable {
    pub fn of(record: &Record, error: &CodecError) -> Self {
        Self {
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
            fingerprint: cardlink_events::codec::peek_fingerprint(&record.payload).ok().map(|f| f.to_string()),
            error: error.to_string(),
        }
    }

    /// Where the record is: `<topic suffix>/<partition>/<offset>`.
    pub fn resource(&self) -> String {
        format!("{}/{}/{}", self.topic.suffix(), self.partition, self.offset)
    }

    /// The dead letter: the same event id from every replica.
    pub fn audit_event(&self) -> AuditEvent {
        let resource = self.resource();
        let mut audit = AuditEvent::now(ActorType::System, "cardlink", ACTION, &resource, AuditOutcome::Failed);
        audit.event_id = EventId::derived("cardlink", &format!("{ACTION}/{resource}"));
        audit.reason = Some(cardlink_api::Reason::UndecodableRecord.as_str().to_owned());
        audit.data_items = self.fingerprint.iter().map(|f| format!("fingerprint:{f}")).collect();
        audit
    }
}

/// Writes the dead letters `rx` receives to the audit topic until `shutdown`.
pub async fn write(producer: Producer, mut rx: mpsc::Receiver<Undecodable>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            next = rx.recv() => next,
        };
        let Some(undecodable) = next else { return };
        if let Err(e) = producer.publish_audit(&undecodable.audit_event()).await {
            tracing::error!(error = %e, record = %undecodable.resource(), "could not write the dead letter of an undecodable record");
        }
    }
}
