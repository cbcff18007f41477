//! What cardlink tells its operators, the OpenTelemetry way.
//!
//! - [`settings`]: which signals to export and where, from the standard `OTEL_*` environment
//!   variables (nothing is exported unless an OTLP endpoint or exporter is named), and the log
//!   format (`CARDLINK_LOG_FORMAT`).
//! - [`Telemetry`]: installs the log subscriber and the global tracer and meter providers once
//!   per process, and flushes them at shutdown.
//! - [`json`]: structured JSON log lines carrying the trace and span id of the work they
//!   describe, so a log line leads to its trace.
//! - [`propagation`]: W3C Trace Context (`traceparent`) in and out of gRPC metadata and Kafka
//!   record headers — the thread that ties one event's ingest call to each of its deliveries.
//! - [`rpc`]: a tower layer every gRPC server runs behind: one server span per call (continuing
//!   the caller's trace) and the `rpc.server.call.duration` histogram.
//!
//! Instruments are made from [`meter`] and spans from [`tracer`]. Until a provider is installed
//! both are no-ops costing next to nothing, which is what tests and `cardlink dev` get by
//! default.

pub mod json;
pub mod propagation;
pub mod rpc;
pub mod settings;

mod install;

pub use install::Telemetry;
pub use settings::{ExportSettings, LogFormat, Protocol, SignalExport};

/// The instrumentation scope of every cardlink instrument and span.
pub const SCOPE: &str = "cardlink";

/// The meter cardlink's instruments come from (the global provider's; a no-op until one is
/// installed — make instruments after [`Telemetry::init`]).
pub fn meter() -> opentelemetry::metrics::Meter {
    opentelemetry::global::meter(SCOPE)
}

/// The tracer cardlink's spans come from (the global provider's; a no-op until installed, which
/// still carries an incoming trace context through unchanged).
pub fn tracer() -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer(SCOPE)
}

/// Reports `cardlink.view.lag` for one materialised view: seconds since the view was last
/// known to hold everything written to its topic. `view` names the service and view (e.g.
/// `subscription.consents`); a view that never caught up reports nothing (readiness covers it).
pub fn observe_view_lag(view: &'static str, lag: impl Fn() -> Option<std::time::Duration> + Send + Sync + 'static) {
    meter()
        .f64_observable_gauge("cardlink.view.lag")
        .with_unit("s")
        .with_description("Age of the newest moment a materialised view is known to be complete up to")
        .with_callback(move |observer| {
            if let Some(lag) = lag() {
                observer.observe(lag.as_secs_f64(), &[opentelemetry::KeyValue::new(attr::VIEW, view)]);
            }
        })
        .build();
}

/// Reports `cardlink.history.indexer_lag`: records of the event topics this replica's history
/// indexer has not applied to the store yet (its share of the partitions); nothing until measured.
pub fn observe_indexer_lag(lag: impl Fn() -> Option<u64> + Send + Sync + 'static) {
    meter()
        .u64_observable_gauge("cardlink.history.indexer_lag")
        .with_unit("{record}")
        .with_description("Event records the history indexer has not applied to the store yet")
        .with_callback(move |observer| {
            if let Some(lag) = lag() {
                observer.observe(lag, &[]);
            }
        })
        .build();
}

/// Counts a record of `topic` this release could not decode, and what was done about it
/// (`view_stopped`: a compacted topic's view stopped there, fail closed; `dead_lettered`: an
/// event was skipped and recorded on the audit topic). Alert on any increase.
pub fn undecodable_record(topic: &'static str, handling: &'static str) {
    static COUNTER: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> = std::sync::OnceLock::new();
    COUNTER
        .get_or_init(|| {
            meter()
                .u64_counter("cardlink.bus.undecodable_records")
                .with_unit("{record}")
                .with_description("Records this release could not decode, by topic and how they were handled")
                .build()
        })
        .add(
            1,
            &[
                opentelemetry::KeyValue::new("cardlink.topic", topic),
                opentelemetry::KeyValue::new("cardlink.handling", handling),
            ],
        );
}

/// Why telemetry could not be set up. Each names the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{key}={value:?}: {expected}")]
    BadSetting { key: &'static str, value: String, expected: &'static str },
    #[error("building the OTLP {signal} exporter for {endpoint}: {message}")]
    Exporter { signal: &'static str, endpoint: String, message: String },
    #[error("a log subscriber is already installed in this process")]
    AlreadyInstalled,
}

/// Attribute keys shared by cardlink's spans and metrics (OpenTelemetry semantic conventions
/// where one exists, `cardlink.*` otherwise).
pub mod attr {
    pub const MESSAGING_SYSTEM: &str = "messaging.system";
    pub const MESSAGING_DESTINATION: &str = "messaging.destination.name";
    pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
    pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
    pub const MESSAGING_PARTITION: &str = "messaging.destination.partition.id";
    pub const MESSAGING_OFFSET: &str = "messaging.kafka.offset";
    pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
    pub const ERROR_TYPE: &str = "error.type";
    pub const RPC_SYSTEM: &str = "rpc.system";
    pub const RPC_SERVICE: &str = "rpc.service";
    pub const RPC_METHOD: &str = "rpc.method";
    pub const RPC_GRPC_STATUS: &str = "rpc.grpc.status_code";
    pub const ISSUER: &str = "cardlink.issuer.id";
    pub const AGGREGATOR: &str = "cardlink.aggregator.id";
    pub const OUTCOME: &str = "cardlink.outcome";
    pub const VIEW: &str = "cardlink.view";
    pub const DELIVERY_MODE: &str = "cardlink.delivery.mode";
}
