//! The OTLP wiring against a real (minimal) OTLP/HTTP receiver: what `OTEL_*` settings name is
//! where spans and metrics arrive, and shutdown flushes them.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use cardlink_telemetry::{ExportSettings, Telemetry};
use opentelemetry::trace::{Span as _, Tracer as _};

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

async fn receive(State(received): State<Received>, uri: Uri, body: Bytes) -> &'static str {
    received.lock().unwrap().push((uri.path().to_owned(), body.to_vec()));
    ""
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_the_collector_the_environment_names() {
    let received = Received::default();
    let app = axum::Router::new().fallback(axum::routing::post(receive)).with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), format!("http://{addr}")),
        ("OTEL_SERVICE_NAME".to_owned(), "cardlink-otlp-test".to_owned()),
    ];
    let settings = ExportSettings::from_env("cardlink-test", env).unwrap();
    let telemetry = Telemetry::providers(&settings).unwrap();
    assert_eq!(telemetry.exporting(), (true, true));

    let mut span = cardlink_telemetry::tracer().start("otlp-test-span");
    span.end();
    let counter = cardlink_telemetry::meter().u64_counter("cardlink.otlp_test.counter").build();
    counter.add(7, &[]);
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();

    let received = received.lock().unwrap();
    let body =
        |path: &str| received.iter().filter(|(p, _)| p == path).flat_map(|(_, b)| b.clone()).collect::<Vec<u8>>();
    let contains = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    let traces = body("/v1/traces");
    assert!(
        contains(&traces, "otlp-test-span"),
        "no span arrived: {:?}",
        received.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    assert!(contains(&traces, "cardlink-otlp-test"), "service name missing");
    assert!(contains(&body("/v1/metrics"), "cardlink.otlp_test.counter"), "no metric arrived");
}
