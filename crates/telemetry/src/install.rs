//! Installing telemetry once per process, and flushing it at the end.

use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::TelemetryError;
use crate::json::JsonWithTrace;
use crate::settings::{ExportSettings, LogFormat, Protocol, SignalExport};

/// The installed providers; [`Telemetry::shutdown`] flushes what is still buffered.
#[derive(Debug)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Installs the log subscriber (`RUST_LOG`, else `default_filter`; text or JSON) and, when
    /// `settings` export anything, the global tracer and meter providers. Call once, first
    /// thing in `main`, inside the Tokio runtime (the gRPC exporter needs it).
    pub fn init(settings: &ExportSettings, default_filter: &str) -> Result<Self, TelemetryError> {
        let telemetry = Self::providers(settings)?;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
        let registry = tracing_subscriber::registry().with(filter);
        let installed = match settings.log_format {
            LogFormat::Text => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init(),
            LogFormat::Json => registry
                .with(tracing_subscriber::fmt::layer().event_format(JsonWithTrace).with_writer(std::io::stderr))
                .try_init(),
        };
        installed.map_err(|_| TelemetryError::AlreadyInstalled)?;
        if let Some(t) = &settings.traces {
            tracing::info!(endpoint = %t.endpoint, protocol = ?t.protocol, "exporting traces over OTLP");
        }
        if let Some(m) = &settings.metrics {
            tracing::info!(endpoint = %m.endpoint, protocol = ?m.protocol, interval = ?settings.metric_interval, "exporting metrics over OTLP");
        }
        Ok(telemetry)
    }

    /// Builds and installs (globally) the providers `settings` ask for, without touching logs.
    pub fn providers(settings: &ExportSettings) -> Result<Self, TelemetryError> {
        let resource = Resource::builder().with_service_name(settings.service_name.clone()).build();
        let tracer = match &settings.traces {
            None => None,
            Some(export) => {
                let exporter = span_exporter(export)?;
                let provider =
                    SdkTracerProvider::builder().with_resource(resource.clone()).with_batch_exporter(exporter).build();
                opentelemetry::global::set_tracer_provider(provider.clone());
                Some(provider)
            }
        };
        let meter = match &settings.metrics {
            None => None,
            Some(export) => {
                let exporter = metric_exporter(export)?;
                let reader = PeriodicReader::builder(exporter).with_interval(settings.metric_interval).build();
                let provider = SdkMeterProvider::builder().with_resource(resource).with_reader(reader).build();
                opentelemetry::global::set_meter_provider(provider.clone());
                Some(provider)
            }
        };
        Ok(Self { tracer, meter })
    }

    /// Whether traces and metrics are exported.
    pub fn exporting(&self) -> (bool, bool) {
        (self.tracer.is_some(), self.meter.is_some())
    }

    /// Exports what is buffered and stops the exporters. Blocks (up to the exporters' timeouts);
    /// call it last, after the services stopped.
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer
            && let Err(e) = tracer.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces at shutdown");
        }
        if let Some(meter) = self.meter
            && let Err(e) = meter.shutdown()
        {
            tracing::warn!(error = %e, "flushing metrics at shutdown");
        }
    }
}

fn exporter_error(signal: &'static str, export: &SignalExport, e: impl std::fmt::Display) -> TelemetryError {
    TelemetryError::Exporter { signal, endpoint: export.endpoint.clone(), message: e.to_string() }
}

fn span_exporter(export: &SignalExport) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let built = match export.protocol {
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&export.endpoint)
            .build(),
        Protocol::Grpc => {
            opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&export.endpoint).build()
        }
    };
    built.map_err(|e| exporter_error("trace", export, e))
}

fn metric_exporter(export: &SignalExport) -> Result<opentelemetry_otlp::MetricExporter, TelemetryError> {
    let built = match export.protocol {
        Protocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&export.endpoint)
            .build(),
        Protocol::Grpc => {
            opentelemetry_otlp::MetricExporter::builder().with_tonic().with_endpoint(&export.endpoint).build()
        }
    };
    built.map_err(|e| exporter_error("metric", export, e))
}
