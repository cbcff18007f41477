//! Which telemetry leaves the process, from the environment (12-factor).
//!
//! The standard OpenTelemetry variables decide export, so an operator's usual collector
//! settings work unchanged:
//!
//! | variable | meaning |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | collector base URL; setting it turns export on |
//! | `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT` | per-signal URL, used as is |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` (and per signal) | `http/protobuf` (default) or `grpc` |
//! | `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER` | `otlp` or `none` |
//! | `OTEL_SDK_DISABLED` | `true`: export nothing |
//! | `OTEL_SERVICE_NAME` | the service name (default `cardlink-<service>`) |
//! | `OTEL_METRIC_EXPORT_INTERVAL` | milliseconds between metric exports (default 60000) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`, `OTEL_RESOURCE_ATTRIBUTES` | read by the SDK |
//!
//! With none of them set nothing is exported (tests, `cardlink dev`). `CARDLINK_LOG_FORMAT`
//! (`text` or `json`) picks the log format.

use std::collections::HashMap;
use std::time::Duration;

use crate::TelemetryError;

/// How OTLP is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies (port 4318).
    HttpProtobuf,
    /// OTLP/gRPC (port 4317).
    Grpc,
}

impl Protocol {
    fn default_base(self) -> &'static str {
        match self {
            Self::HttpProtobuf => "http://localhost:4318",
            Self::Grpc => "http://localhost:4317",
        }
    }
}

/// Where one signal goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalExport {
    pub endpoint: String,
    pub protocol: Protocol,
}

/// The log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default, for terminals).
    #[default]
    Text,
    /// One JSON object per line with `trace_id` and `span_id` (for log collectors).
    Json,
}

/// Everything [`crate::Telemetry::init`] needs, resolved and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSettings {
    pub service_name: String,
    pub traces: Option<SignalExport>,
    pub metrics: Option<SignalExport>,
    pub metric_interval: Duration,
    pub log_format: LogFormat,
}

/// Metric export period when `OTEL_METRIC_EXPORT_INTERVAL` is not set (the specification's).
pub const DEFAULT_METRIC_INTERVAL: Duration = Duration::from_secs(60);

impl ExportSettings {
    /// Resolves the settings from environment variables (`std::env::vars()` in a binary).
    /// `service` is the default `service.name`.
    pub fn from_env(service: &str, vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, TelemetryError> {
        let env: HashMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("OTEL_") || k.starts_with("CARDLINK_LOG"))
            .map(|(k, v)| (k, v.trim().to_owned()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let get = |key: &str| env.get(key).map(String::as_str);

        let log_format = match get("CARDLINK_LOG_FORMAT") {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(bad("CARDLINK_LOG_FORMAT", other, "one of text, json")),
        };
        let disabled = match get("OTEL_SDK_DISABLED") {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(other) => return Err(bad("OTEL_SDK_DISABLED", other, "true or false")),
        };
        let metric_interval = match get("OTEL_METRIC_EXPORT_INTERVAL") {
            None => DEFAULT_METRIC_INTERVAL,
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => return Err(bad("OTEL_METRIC_EXPORT_INTERVAL", v, "a positive number of milliseconds")),
            },
        };
        let service_name = get("OTEL_SERVICE_NAME").unwrap_or(service).to_owned();
        let (traces, metrics) = if disabled {
            (None, None)
        } else {
            (
                signal(&get, "OTEL_TRACES_EXPORTER", "TRACES", "/v1/traces")?,
                signal(&get, "OTEL_METRICS_EXPORTER", "METRICS", "/v1/metrics")?,
            )
        };
        Ok(Self { service_name, traces, metrics, metric_interval, log_format })
    }

    /// Nothing exported, text logs: what tests use.
    pub fn none(service: &str) -> Self {
        Self {
            service_name: service.to_owned(),
            traces: None,
            metrics: None,
            metric_interval: DEFAULT_METRIC_INTERVAL,
            log_format: LogFormat::Text,
        }
    }
}

fn bad(key: &'static str, value: &str, expected: &'static str) -> TelemetryError {
    TelemetryError::BadSetting { key, value: value.to_owned(), expected }
}

/// One signal's export: off unless its exporter is `otlp` or an endpoint is given.
fn signal<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    exporter_key: &'static str,
    signal: &'static str,
    http_path: &str,
) -> Result<Option<SignalExport>, TelemetryError> {
    let (protocol_key, endpoint_key): (&'static str, &'static str) = match signal {
        "TRACES" => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        _ => ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
    };
    let explicit = match get(exporter_key) {
        None => None,
        Some("otlp") => Some(true),
        Some("none") => Some(false),
        Some(other) => return Err(bad(exporter_key, other, "otlp or none")),
    };
    if explicit == Some(false) {
        return Ok(None);
    }
    let (protocol_key, protocol_text) = match get(protocol_key) {
        Some(p) => (protocol_key, Some(p)),
        None => ("OTEL_EXPORTER_OTLP_PROTOCOL", get("OTEL_EXPORTER_OTLP_PROTOCOL")),
    };
    let protocol = match protocol_text {
        None | Some("http/protobuf") => Protocol::HttpProtobuf,
        Some("grpc") => Protocol::Grpc,
        Some(other) => return Err(bad(protocol_key, other, "http/protobuf or grpc")),
    };
    let (key, endpoint) = if let Some(url) = get(endpoint_key) {
        (endpoint_key, url.to_owned())
    } else if let Some(base) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        ("OTEL_EXPORTER_OTLP_ENDPOINT", join(base, protocol, http_path))
    } else if explicit == Some(true) {
        (exporter_key, join(protocol.default_base(), protocol, http_path))
    } else {
        return Ok(None);
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(bad(key, &endpoint, "an http:// or https:// URL"));
    }
    Ok(Some(SignalExport { endpoint, protocol }))
}

/// The per-signal URL from a base one: OTLP/HTTP appends the signal's path, gRPC does not.
fn join(base: &str, protocol: Protocol, http_path: &str) -> String {
    match protocol {
        Protocol::HttpProtobuf => format!("{}{http_path}", base.trim_end_matches('/')),
        Protocol::Grpc => base.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<ExportSettings, TelemetryError> {
        ExportSettings::from_env("cardlink-test", vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
    }

    #[test]
    fn nothing_is_exported_by_default() {
        let s = settings(&[("PATH", "/bin")]).unwrap();
        assert_eq!(s, ExportSettings::none("cardlink-test"));
    }

    #[test]
    fn a_base_endpoint_turns_both_signals_on_with_their_paths() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap();
        assert_eq!(s.traces.unwrap().endpoint, "http://collector:4318/v1/traces");
        assert_eq!(s.metrics.unwrap().endpoint, "http://collector:4318/v1/metrics");
    }

    #[test]
    fn grpc_uses_the_base_as_is_and_signal_settings_win() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:4318/v1/metrics"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "ingest-eu"),
        ])
        .unwrap();
        assert_eq!(s.traces, Some(SignalExport { endpoint: "http://collector:4317".into(), protocol: Protocol::Grpc }));
        assert_eq!(
            s.metrics,
            Some(SignalExport { endpoint: "http://metrics:4318/v1/metrics".into(), protocol: Protocol::HttpProtobuf })
        );
        assert_eq!(s.service_name, "ingest-eu");
    }

    #[test]
    fn exporters_can_be_turned_off_one_by_one_or_all() {
        let s =
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_METRICS_EXPORTER", "none")]).unwrap();
        assert!(s.traces.is_some() && s.metrics.is_none());
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")]).unwrap();
        assert!(s.traces.is_none() && s.metrics.is_none());
        let s = settings(&[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap();
        assert_eq!(s.traces.unwrap().endpoint, "http://localhost:4318/v1/traces");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (vars, key) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (vec![("OTEL_TRACES_EXPORTER", "jaeger")], "OTEL_TRACES_EXPORTER"),
            (vec![("OTEL_METRIC_EXPORT_INTERVAL", "soon")], "OTEL_METRIC_EXPORT_INTERVAL"),
            (vec![("OTEL_SDK_DISABLED", "yes")], "OTEL_SDK_DISABLED"),
            (vec![("CARDLINK_LOG_FORMAT", "xml")], "CARDLINK_LOG_FORMAT"),
        ] {
            let err = settings(&vars).unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
        }
    }

    #[test]
    fn the_log_format_is_read() {
        assert_eq!(settings(&[("CARDLINK_LOG_FORMAT", "json")]).unwrap().log_format, LogFormat::Json);
    }
}
