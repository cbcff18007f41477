//! What the subscription service reports: deliveries per aggregator, publish→deliver latency,
//! connected streams, catch-up readers, consent-view lag — and a delivery span per event sent
//! on a stream, continuing the trace the record carries from its ingest call.
//!
//! The cost on the hot path is kept to what the numbers need: attributes are built once per
//! stream, and a delivery span is only started when the record belongs to a trace (its
//! `traceparent` header names a valid span); sampling is the producer's decision, inherited.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cardlink_telemetry::attr;
use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};

use crate::catch_up::CatchUpReaders;
use crate::delivery::Origin;
use crate::hub::Hub;

/// Deliveries per aggregator, counted by the streams as they send (one atomic add each), for the
/// live view.
#[derive(Clone, Debug, Default)]
pub struct DeliveryCounts(Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>);

impl DeliveryCounts {
    /// The counter a stream of `aggregator` adds to.
    pub fn counter(&self, aggregator: &str) -> Arc<AtomicU64> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(aggregator.to_owned()).or_default())
    }

    /// Deliveries so far per aggregator, sorted by aggregator.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = map.iter().map(|(a, n)| (a.clone(), n.load(Ordering::Relaxed))).collect();
        out.sort();
        out
    }
}

/// How a stream is being served: reading history from a cursor, or from the shared live read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    CatchUp,
    Live,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::CatchUp => "catch_up",
            Self::Live => "live",
        }
    }
}

/// The service's instruments (cheap to clone).
#[derive(Clone, Debug)]
pub struct SubscriptionMetrics {
    deliveries: Counter<u64>,
    latency: Histogram<f64>,
    live: DeliveryCounts,
}

impl SubscriptionMetrics {
    /// Makes the instruments and registers the gauges that read `hub` and `catch_up` when the
    /// meter collects.
    pub fn new(hub: &Hub, catch_up: CatchUpReaders) -> Self {
        let meter = cardlink_telemetry::meter();
        let streams = hub.streams().clone();
        meter
            .i64_observable_gauge("cardlink.subscription.streams")
            .with_unit("{stream}")
            .with_description("Connected subscription streams, per aggregator")
            .with_callback(move |observer| {
                for (aggregator, n) in streams.streams_per_aggregator() {
                    observer.observe(n as i64, &[KeyValue::new(attr::AGGREGATOR, aggregator)]);
                }
            })
            .build();
        meter
            .i64_observable_gauge("cardlink.subscription.catch_up_readers")
            .with_unit("{reader}")
            .with_description("Catch-up readers (own Kafka consumers replaying from a cursor) running now")
            .with_callback({
                let catch_up = catch_up.clone();
                move |observer| observer.observe(catch_up.running() as i64, &[])
            })
            .build();
        meter
            .u64_observable_counter("cardlink.subscription.catch_up_records")
            .with_unit("{record}")
            .with_description("Records the catch-up readers have read from the bus")
            .with_callback(move |observer| observer.observe(catch_up.records_read(), &[]))
            .build();
        let consents = hub.consents().clone();
        cardlink_telemetry::observe_view_lag("subscription.consents", move || consents.lag());
        Self {
            live: DeliveryCounts::default(),
            deliveries: meter
                .u64_counter("cardlink.subscription.deliveries")
                .with_unit("{delivery}")
                .with_description("Events and consent changes sent to aggregators, per aggregator and mode")
                .build(),
            latency: meter
                .f64_histogram("cardlink.delivery.latency")
                .with_unit("s")
                .with_description("From the record's publication to its delivery on a live stream")
                .with_boundaries(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .build(),
        }
    }

    /// Deliveries per aggregator for the live view.
    pub fn live(&self) -> &DeliveryCounts {
        &self.live
    }

    /// One stream's view of the instruments.
    pub fn stream(&self, aggregator: &str, mode: Mode) -> StreamMetrics {
        StreamMetrics {
            live: self.live.counter(aggregator),
            metrics: self.clone(),
            attributes: Arc::new([
                KeyValue::new(attr::AGGREGATOR, aggregator.to_owned()),
                KeyValue::new(attr::DELIVERY_MODE, mode.as_str()),
            ]),
            aggregator: Arc::from(aggregator),
            mode,
        }
    }
}

/// The instruments as one stream uses them, its attributes made once.
#[derive(Clone, Debug)]
pub struct StreamMetrics {
    metrics: SubscriptionMetrics,
    live: Arc<AtomicU64>,
    attributes: Arc<[KeyValue; 2]>,
    aggregator: Arc<str>,
    mode: Mode,
}

impl StreamMetrics {
    /// Starts the delivery span of a record when it belongs to a trace.
    pub fn delivering(&self, origin: Option<&Origin>) -> Option<Context> {
        let origin = origin?;
        if !origin.parent.span().span_context().is_valid() {
            return None;
        }
        let tracer = cardlink_telemetry::tracer();
        let span = tracer
            .span_builder(format!("process {}", origin.topic.suffix()))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new(attr::MESSAGING_SYSTEM, "kafka"),
                KeyValue::new(attr::MESSAGING_OPERATION_TYPE, "process"),
                KeyValue::new(attr::MESSAGING_DESTINATION, origin.topic.suffix()),
                KeyValue::new(attr::MESSAGING_PARTITION, origin.partition.to_string()),
                KeyValue::new(attr::MESSAGING_OFFSET, origin.offset),
                KeyValue::new(attr::AGGREGATOR, self.aggregator.to_string()),
                KeyValue::new(attr::DELIVERY_MODE, self.mode.as_str()),
            ])
            .start_with_context(&tracer, &origin.parent);
        Some(origin.parent.with_span(span))
    }

    /// Counts a delivery handed to the client's stream, records its latency (live streams: a
    /// replay's age is not latency) and ends its span.
    pub fn delivered(&self, origin: Option<&Origin>, span: Option<Context>) {
        self.metrics.deliveries.add(1, &self.attributes[..]);
        self.live.fetch_add(1, Ordering::Relaxed);
        if self.mode == Mode::Live
            && let Some(published) = origin.and_then(|o| o.published_ms)
        {
            let now = chrono::Utc::now().timestamp_millis();
            let latency = Duration::from_millis(now.saturating_sub(published).max(0) as u64);
            self.metrics.latency.record(latency.as_secs_f64(), &self.attributes[..1]);
        }
        if let Some(cx) = span {
            cx.span().end();
        }
    }
}
