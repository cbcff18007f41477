//! What ingest reports: records in per issuer and outcome, and a producer span per record that
//! carries the caller's trace onto the bus.
//!
//! Each published record gets a `send <topic>` span (kind PRODUCER) under the call's server
//! span, and its `traceparent` header names that span, so a subscription delivery later in the
//! trace hangs off the exact record it delivers. With no tracer installed the caller's own
//! context is passed through unchanged — found out on a call's first record, after which its other
//! records carry the caller's context without a span being made for each.

use cardlink_bus::{BusError, Delivered, Producer, Topic};
use cardlink_events::Event;
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

/// The producer spans of one call's records, and the `traceparent` each record carries.
#[derive(Debug)]
pub struct SendSpans {
    /// Per record, its span; empty when the tracer passes the call's context through.
    spans: Vec<Context>,
    /// Per record, the `traceparent` naming its span.
    traceparents: Vec<Option<String>>,
    /// The call's own `traceparent`, for every record, when `spans` is empty.
    shared: Option<String>,
    records: usize,
}

impl SendSpans {
    /// Starts a span per record of `records` (in order) under `parent`.
    pub fn start(parent: &Context, producer: &Producer, records: &[(usize, Event)]) -> Self {
        let mut spans = Vec::with_capacity(records.len());
        for (_, event) in records {
            let topic = producer.catalogue().name(topic_of(event));
            let cx = send_span(parent, topic, event.event_id().to_string());
            if spans.is_empty() && passes_through(&cx, parent) {
                let shared = cardlink_telemetry::propagation::traceparent(parent);
                return Self { spans: Vec::new(), traceparents: Vec::new(), shared, records: records.len() };
            }
            spans.push(cx);
        }
        let traceparents = spans.iter().map(cardlink_telemetry::propagation::traceparent).collect();
        Self { spans, traceparents, shared: None, records: records.len() }
    }

    /// The `traceparent` of each record, in order.
    pub fn traceparents(&self) -> impl Iterator<Item = Option<&str>> + '_ {
        (0..self.records).map(|i| {
            if self.spans.is_empty() {
                self.shared.as_deref()
            } else {
                self.traceparents.get(i).and_then(Option::as_deref)
            }
        })
    }

    /// Ends each record's span with its acknowledgement (`acks` in the records' order).
    pub fn end(&self, acks: &[Result<Delivered, BusError>]) {
        for (cx, ack) in self.spans.iter().zip(acks) {
            end_send_span(cx, ack.as_ref());
        }
    }
}

/// Whether the tracer made no span of its own for `cx` and handed back `parent`'s (what the
/// no-op tracer does when no provider is installed).
fn passes_through(cx: &Context, parent: &Context) -> bool {
    let span = cx.span();
    !span.is_recording() && span.span_context() == parent.span().span_context()
}

/// The producer span of one record under `parent`.
fn send_span(parent: &Context, topic_name: &str, event_id: String) -> Context {
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
fn end_send_span(cx: &Context, result: Result<&Delivered, &BusError>) {
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
