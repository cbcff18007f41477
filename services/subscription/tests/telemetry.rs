//! OpenTelemetry end to end: one event's trace runs from the issuer's ingest call, through
//! Kafka (`traceparent` header), to its delivery on an aggregator's stream; and the metrics an
//! operator alerts on are reported with their attributes. Real broker, real gRPC servers; the
//! providers export to memory instead of a collector.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cardlink_api::v1;
use cardlink_events::{Event, samples};
use cardlink_ingest::server::IngestConfig;
use cardlink_testkit::{TEST_ISSUERS, authorized, ingest_client};
use common::WITHIN;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

/// One exported data point: (name, attributes, value; a histogram's value is its count).
type Point = (String, Vec<(String, String)>, f64);
/// A metric that must be reported: (name, an attribute it carries, least value).
type Expected<'a> = (&'a str, Option<(&'a str, &'a str)>, f64);

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// (name, attributes, value; a histogram's value is its count) of every data point exported.
fn points(exporter: &InMemoryMetricExporter) -> Vec<Point> {
    fn attrs<'a>(it: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> Vec<(String, String)> {
        it.map(|kv| (kv.key.to_string(), kv.value.to_string())).collect()
    }
    let mut out = Vec::new();
    for rm in exporter.get_finished_metrics().unwrap() {
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                let name = m.name().to_owned();
                macro_rules! push {
                    ($data:expr) => {
                        match $data {
                            MetricData::Gauge(g) => {
                                for p in g.data_points() {
                                    out.push((name.clone(), attrs(p.attributes()), p.value() as f64));
                                }
                            }
                            MetricData::Sum(s) => {
                                for p in s.data_points() {
                                    out.push((name.clone(), attrs(p.attributes()), p.value() as f64));
                                }
                            }
                            MetricData::Histogram(h) => {
                                for p in h.data_points() {
                                    out.push((name.clone(), attrs(p.attributes()), p.count() as f64));
                                }
                            }
                            MetricData::ExponentialHistogram(_) => {}
                        }
                    };
                }
                match m.data() {
                    AggregatedMetrics::F64(d) => push!(d),
                    AggregatedMetrics::U64(d) => push!(d),
                    AggregatedMetrics::I64(d) => push!(d),
                }
            }
        }
    }
    out
}

fn has(points: &[Point], name: &str, attr: Option<(&str, &str)>, min: f64) -> bool {
    points.iter().any(|(n, attrs, v)| {
        n == name && *v >= min && attr.is_none_or(|(k, val)| attrs.iter().any(|(ak, av)| ak == k && av == val))
    })
}

fn span<'a>(spans: &'a [SpanData], kind: SpanKind, name_prefix: &str) -> Option<&'a SpanData> {
    spans.iter().find(|s| s.span_kind == kind && s.name.starts_with(name_prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_one_trace_from_ingest_to_delivery_and_the_metrics_report_it() {
    // Providers first: instruments are made when the services start.
    let spans = InMemorySpanExporter::default();
    let tracer = SdkTracerProvider::builder().with_simple_exporter(spans.clone()).build();
    opentelemetry::global::set_tracer_provider(tracer.clone());
    let metrics = InMemoryMetricExporter::default();
    let meter = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(metrics.clone()).with_interval(Duration::from_secs(3600)).build())
        .build();
    opentelemetry::global::set_meter_provider(meter.clone());

    let consent = common::transactions_consent();
    let w = common::world(&["iss-a"], &["agg-x"], &[consent]).await;
    let ingest = w.bus.start_ingest(IngestConfig::default()).await.unwrap();

    let mut c = w.client().await;
    let mut stream =
        c.subscribe(authorized(v1::SubscribeRequest::default(), w.token("agg-x"))).await.unwrap().into_inner();
    assert!(common::next(&mut stream).await.heartbeat.as_ref().is_some_and(|h| h.caught_up));

    // The issuer's call arrives inside the issuer's own trace.
    let event = Event::Transaction(samples::transaction("iss-a", "acct-1", 1));
    let mut request = authorized(
        v1::PublishRequest {
            issuer_id: "iss-a".into(),
            batch_id: "b-1".into(),
            records: vec![cardlink_api::convert::ingest_record(&event)],
            historical: false,
        },
        TEST_ISSUERS[0].1,
    );
    request.metadata_mut().insert("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01").parse().unwrap());
    let response = ingest_client(&ingest).await.unwrap().publish(request).await.unwrap().into_inner();
    assert_eq!(response.accepted, 1);

    let delivered = loop {
        let message = common::next(&mut stream).await;
        if !message.deliveries.is_empty() {
            break message;
        }
    };
    assert_eq!(delivered.deliveries.len(), 1);

    // The spans: server (child of the caller's), producer (child of the server span), delivery
    // (child of the producer span) — one trace.
    let deadline = tokio::time::Instant::now() + WITHIN;
    let finished = loop {
        let finished = spans.get_finished_spans().unwrap();
        if span(&finished, SpanKind::Consumer, "process ").is_some() {
            break finished;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery span; spans: {:?}",
            finished.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let trace = TraceId::from_hex(TRACE).unwrap();
    let server = span(&finished, SpanKind::Server, "cardlink.v1.IssuerIngest/Publish").expect("server span");
    let producer = span(&finished, SpanKind::Producer, "send ").expect("producer span");
    let consumer = span(&finished, SpanKind::Consumer, "process transactions.v1").expect("delivery span");
    for s in [server, producer, consumer] {
        assert_eq!(s.span_context.trace_id(), trace, "{} is not in the caller's trace", s.name);
    }
    assert_eq!(server.parent_span_id, SpanId::from_hex(CALLER_SPAN).unwrap());
    assert_eq!(producer.parent_span_id, server.span_context.span_id());
    assert_eq!(consumer.parent_span_id, producer.span_context.span_id());
    assert!(
        consumer
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "cardlink.aggregator.id" && kv.value.as_str() == "agg-x")
    );
    assert!(producer.attributes.iter().any(|kv| kv.key.as_str() == "messaging.system" && kv.value.as_str() == "kafka"));

    // The metrics, including librdkafka's statistics (reported every 10 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let expectations: [Expected<'_>; 12] = [
        ("cardlink.ingest.records", Some(("cardlink.outcome", "accepted")), 1.0),
        ("cardlink.ingest.records", Some(("cardlink.issuer.id", "iss-a")), 1.0),
        ("cardlink.subscription.deliveries", Some(("cardlink.aggregator.id", "agg-x")), 1.0),
        ("cardlink.delivery.latency", Some(("cardlink.aggregator.id", "agg-x")), 1.0),
        ("cardlink.subscription.streams", Some(("cardlink.aggregator.id", "agg-x")), 1.0),
        ("cardlink.subscription.catch_up_readers", None, 0.0),
        ("cardlink.view.lag", Some(("cardlink.view", "subscription.consents")), 0.0),
        ("rpc.server.call.duration", Some(("rpc.method", "Publish")), 1.0),
        ("messaging.client.sent.messages", Some(("messaging.system", "kafka")), 1.0),
        ("messaging.client.consumed.messages", Some(("messaging.system", "kafka")), 1.0),
        ("cardlink.goal.share", None, 0.0),
        ("cardlink.kafka.broker.rtt", Some(("cardlink.kafka.client.role", "producer")), 0.0),
    ];
    loop {
        meter.force_flush().unwrap();
        let last = points(&metrics);
        let missing: Vec<_> = expectations.iter().filter(|(n, a, min)| !has(&last, n, *a, *min)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "missing metrics: {missing:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(stream);
    ingest.shutdown().await.unwrap();
    w.service.shutdown().await;
}
