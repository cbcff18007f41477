//! The ingest logic: one batch in, one result per record out.
//!
//! For each record: validate (PAN guard first), claim its (issuer, event id) in the idempotency
//! index, and publish the new ones to Kafka concurrently. A record's result is known only when
//! Kafka acknowledged it (`acks=all`): ACCEPTED means durable. Records of one account keep
//! their order because they are handed to the producer in request order and share a partition.

use std::sync::Arc;

use cardlink_api::v1;
use cardlink_bus::{BusError, Producer};
use cardlink_events::{ActorType, AuditEvent, AuditOutcome, Event};
use chrono::Utc;
use opentelemetry::trace::TraceContextExt as _;
use tokio::sync::watch;

use cardlink_api::{ApiError, Reason};
use cardlink_authn::Caller;

use crate::dedup::{Claim, DedupIndex};
use crate::metrics::{IngestMetrics, SendSpans};
use crate::outcome::{BatchResult, Outcome, RecordResult, Rejection};
use crate::validate::validate_record;

/// Default maximum records in one request.
pub const DEFAULT_MAX_RECORDS: usize = 1_000;

/// A batch as the service sees it.
#[derive(Debug)]
pub struct Batch {
    pub issuer_id: String,
    pub batch_id: String,
    pub records: Vec<v1::IngestRecord>,
    /// W3C trace context of the caller, for calls that do not come through the gRPC layer
    /// (which makes the call's span current instead).
    pub traceparent: Option<String>,
    /// Past records loaded once: indexed into history, never delivered live as new.
    pub historical: bool,
}

/// Why a whole call failed. Record-level problems are never errors; they are results.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("issuer {caller} cannot publish as issuer {requested}")]
    PermissionDenied { caller: String, requested: String },
    #[error("{count} records in one call; the limit is {max}")]
    TooManyRecords { count: usize, max: usize },
    #[error("the idempotency index is still catching up with the bus; retry shortly")]
    NotReady,
}

impl ApiError for IngestError {
    fn reason(&self) -> Reason {
        match self {
            Self::PermissionDenied { .. } => Reason::IssuerMismatch,
            Self::TooManyRecords { .. } => Reason::TooManyRecords,
            Self::NotReady => Reason::NotReady,
        }
    }
}

/// The ingest service: cheap to clone, shared by every connection.
#[derive(Clone, Debug)]
pub struct Ingest {
    producer: Producer,
    index: Arc<DedupIndex>,
    ready: watch::Receiver<bool>,
    max_records: usize,
    metrics: IngestMetrics,
}

impl Ingest {
    pub fn new(producer: Producer, index: Arc<DedupIndex>, ready: watch::Receiver<bool>, max_records: usize) -> Self {
        Self { producer, index, ready, max_records, metrics: IngestMetrics::new() }
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Publishes `batch` for `caller`, an authenticated issuer.
    pub async fn publish(&self, caller: &Caller, batch: Batch) -> Result<BatchResult, IngestError> {
        if batch.issuer_id != caller.participant_id {
            self.audit_denied(caller, &batch.issuer_id, Reason::IssuerMismatch).await;
            return Err(IngestError::PermissionDenied {
                caller: caller.participant_id.clone(),
                requested: batch.issuer_id,
            });
        }
        if batch.records.len() > self.max_records {
            return Err(IngestError::TooManyRecords { count: batch.records.len(), max: self.max_records });
        }
        if !self.is_ready() {
            return Err(IngestError::NotReady);
        }

        let issuer = caller.participant_id.as_str();
        let mut results = Vec::with_capacity(batch.records.len());
        let mut to_publish: Vec<(usize, Event)> = Vec::new();
        let mut foreign_records = 0usize;
        for (index, record) in batch.records.iter().enumerate() {
            let event_id = sent_event_id(record);
            let outcome = match validate_record(issuer, record) {
                Err(rejection) => {
                    if rejection.reason == Reason::IssuerMismatch {
                        foreign_records += 1;
                    }
                    Outcome::Rejected(rejection)
                }
                Ok(event) => match self.index.claim(issuer, event.event_id().0) {
                    Claim::Duplicate => Outcome::Duplicate,
                    Claim::InFlight => Outcome::Rejected(Rejection::new(
                        Reason::InFlight,
                        "event_id",
                        "another call is publishing this event right now; retry",
                    )),
                    Claim::New => {
                        to_publish.push((index, event));
                        // Placeholder until Kafka answers; replaced below.
                        Outcome::Accepted
                    }
                },
            };
            results.push(RecordResult { index, event_id, outcome });
        }
        if foreign_records > 0 {
            self.audit_denied(caller, "(records naming another issuer)", Reason::IssuerMismatch).await;
        }

        let current = opentelemetry::Context::current();
        let parent = if current.span().span_context().is_valid() {
            current
        } else {
            cardlink_telemetry::propagation::from_traceparent(batch.traceparent.as_deref())
        };
        // The sends and the claims' settlement run as a task of their own: a call cancelled
        // while Kafka is slow (the client gave up, the connection dropped) still ends with every
        // claim committed or released — never a claim left IN_FLIGHT for good.
        let settle = tokio::spawn({
            let this = self.clone();
            let issuer = issuer.to_owned();
            let historical = batch.historical;
            async move { this.send_and_settle(&issuer, to_publish, parent, historical).await }
        });
        match settle.await {
            Ok(settled) => {
                for (index, outcome) in settled {
                    results[index].outcome = outcome;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the send task failed");
                for result in results.iter_mut().filter(|r| matches!(r.outcome, Outcome::Accepted)) {
                    result.outcome = Outcome::Rejected(Rejection::new(
                        Reason::NoResult,
                        "",
                        "the service could not finish sending this record; send it again",
                    ));
                }
            }
        }
        self.metrics.record_outcomes(issuer, results.iter().map(|r| &r.outcome));
        Ok(BatchResult { batch_id: batch.batch_id, results })
    }

    /// Hands every record to the producer in request order, waits for all acknowledgements, and
    /// commits or releases each claim; returns each record's outcome by its index in the call.
    async fn send_and_settle(
        &self,
        issuer: &str,
        to_publish: Vec<(usize, Event)>,
        parent: opentelemetry::Context,
        historical: bool,
    ) -> Vec<(usize, Outcome)> {
        let spans = SendSpans::start(&parent, &self.producer, &to_publish);
        let events: Vec<(&Event, Option<&str>)> =
            to_publish.iter().zip(spans.traceparents()).map(|((_, event), tp)| (event, tp)).collect();
        let acks = self.producer.publish_all(&events, historical).await;
        spans.end(&acks);
        let published_at = Utc::now();
        let ids = to_publish.iter().zip(&acks).map(|((_, event), ack)| (event.event_id().0, ack.is_ok()));
        self.index.settle(issuer, ids, published_at);
        to_publish
            .iter()
            .zip(acks)
            .map(|((index, _), ack)| {
                let outcome = match ack {
                    Ok(_) => Outcome::Accepted,
                    Err(e) => Outcome::Rejected(bus_rejection(&e)),
                };
                (*index, outcome)
            })
            .collect()
    }

    async fn audit_denied(&self, caller: &Caller, requested: &str, reason: Reason) {
        let mut audit = AuditEvent::now(
            ActorType::Issuer,
            &caller.participant_id,
            "ingest.publish",
            &format!("issuer/{requested}"),
            AuditOutcome::Denied,
        );
        audit.reason = Some(reason.as_str().to_owned());
        audit.issuer_id = Some(caller.participant_id.clone());
        tracing::warn!(caller = %caller.participant_id, requested, %reason, "publish refused");
        if let Err(e) = self.producer.publish_audit(&audit).await {
            // The refusal itself stands; losing its audit record is an operational alert.
            tracing::error!(error = %e, "could not write audit event for a refused publish");
        }
    }
}

fn sent_event_id(record: &v1::IngestRecord) -> String {
    match &record.event {
        Some(v1::ingest_record::Event::Transaction(t)) => t.event_id.clone(),
        Some(v1::ingest_record::Event::Statement(s)) => s.event_id.clone(),
        None => String::new(),
    }
}

fn bus_rejection(e: &BusError) -> Rejection {
    match e {
        BusError::MessageTooLarge { max, .. } => Rejection::new(
            Reason::RecordTooLarge,
            "",
            format!("the encoded record is larger than the bus limit of {max} bytes"),
        ),
        other => {
            tracing::warn!(error = %other, "publish to the bus failed");
            Rejection::new(Reason::BusUnavailable, "", "the bus did not acknowledge the record; retry later")
        }
    }
}
