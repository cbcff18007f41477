//! What ingest reports: records in per issuer and outcome, and a producer span per record that
//! carries the caller's trace onto the bus.
//!
//! Each published record gets a `send <topic>` span (kind PRODUCER) under the call's server
//! span, and its `traceparent` header names that span, so a subscription delivery later in the
//! trace hangs off the exact record it delivers. With no tracer installed the caller's own
//! context is passed through unchanged.

use cardlink_bus::{Delivered, Topic};
use cardlink_telemetry::attr;
use opentelemetry::metrics::Counter;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};

use crate::outcome::Outcome;

#[derive(Clone, Debug)]
pub struct IngestMetrics {
    records: Counter<u64>,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl IngestMetrics {
    pub fn new() -> Self {
        let records = cardlink_telemetry::meter()
            .u64_counter("cardlink.ingest.records")
            .with_unit("{record}")
            .with_description(
                "Records received from issuers, by issuer and outcome (accepted, duplicate, rejected with reason)",
            )
            .build();
        Self { records }
    }

    /// Counts one call's outcomes: one addition per distinct (outcome, reason), not per record.
    pub fn record_outcomes<'a>(&self, issuer: &str, outcomes: impl Iterator<Item = &'a Outcome>) {
        let mut counts: Vec<((&'static str, &'static str), u64)> = Vec::new();
        for outcome in outcomes {
            let key = match outcome {
                Outcome::Accepted => ("accepted", ""),
                Outcome::Duplicate => ("duplicate", ""),
                Outcome::Rejected(r) => ("rejected", r.reason.as_str()),
            };
            match counts.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => counts.push((key, 1)),
            }
        }
        for ((outcome, reason), n) in counts {
            let mut attrs = vec![KeyValue::new(attr::ISSUER, issuer.to_owned()), KeyValue::new(attr::OUTCOME, outcome)];
            if !reason.is_empty() {
                attrs.push(KeyValue::new("cardlink.reason", reason));
            }
            self.records.add(n, &attrs);
        }
    }
}

/// The producer span of one record under `parent`.
pub fn send_span(parent: &Context, topic_name: &str, event_id: String) -> Context {
    let tracer = cardlink_telemetry::tracer();
    let span = tracer
        .span_builder(format!("send {topic_name}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new(attr::MESSAGING_SYSTEM, "kafka"),
            KeyValue::new(attr::MESSAGING_OPERATION_TYPE, "send"),
            KeyValue::new(attr::MESSAGING_DESTINATION, topic_name.to_owned()),
            KeyValue::new(attr::MESSAGING_MESSAGE_ID, event_id),
        ])
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// Ends a producer span with where Kafka put the record, or why it did not.
pub fn end_send_span(cx: &Context, result: Result<&Delivered, &cardlink_bus::BusError>) {
    let span = cx.span();
    match result {
        Ok(d) => {
            span.set_attribute(KeyValue::new(attr::MESSAGING_PARTITION, d.partition.to_string()));
            span.set_attribute(KeyValue::new(attr::MESSAGING_OFFSET, d.offset));
        }
        Err(e) => {
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, e.kind()));
            span.set_status(Status::error(e.to_string()));
        }
    }
    span.end();
}

/// The topic an event goes to.
pub fn topic_of(event: &cardlink_events::Event) -> Topic {
    match event {
        cardlink_events::Event::Transaction(_) => Topic::Transactions,
        cardlink_events::Event::Statement(_) => Topic::Statements,
    }
}
