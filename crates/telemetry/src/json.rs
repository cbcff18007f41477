//! JSON log lines that lead to their trace.
//!
//! One object per line: `timestamp`, `level`, `target`, `message`, the event's own fields, the
//! names of the enclosing spans, and — when the work belongs to a trace — `trace_id` and
//! `span_id` from the OpenTelemetry context current where the line was logged (the gRPC layer
//! makes a call's server span current for the whole call). Log collectors index the trace id
//! and link the line to the trace in the viewer.

use std::fmt;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON event format (see the module header).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonWithTrace;

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_owned(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        writeln!(writer, "{}", line(event, ctx.event_scope().map(|s| s.from_root().map(|span| span.name()).collect())))
    }
}

/// The JSON object for one event.
fn line(event: &Event<'_>, spans: Option<Vec<&'static str>>) -> Value {
    let meta = event.metadata();
    let mut out = Map::new();
    out.insert(
        "timestamp".into(),
        Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
    );
    out.insert("level".into(), Value::from(meta.level().as_str()));
    out.insert("target".into(), Value::from(meta.target()));
    let mut fields = Map::new();
    event.record(&mut Fields(&mut fields));
    // The message first, then the fields, flat: what log queries expect.
    if let Some(message) = fields.remove("message") {
        out.insert("message".into(), message);
    }
    for (k, v) in fields {
        out.entry(k).or_insert(v);
    }
    if let Some(spans) = spans.filter(|s| !s.is_empty()) {
        out.insert("spans".into(), Value::from(spans));
    }
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        out.insert("trace_id".into(), Value::from(sc.trace_id().to_string()));
        out.insert("span_id".into(), Value::from(sc.span_id().to_string()));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(f: impl FnOnce()) -> Vec<Value> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer().event_format(JsonWithTrace).with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn a_line_is_json_with_message_fields_and_spans() {
        let lines = capture(|| {
            let span = tracing::info_span!("publish");
            let _in = span.enter();
            tracing::warn!(issuer = "iss-1", records = 3u64, ok = false, "publish refused \"quoted\"");
        });
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["message"], "publish refused \"quoted\"");
        assert_eq!(l["issuer"], "iss-1");
        assert_eq!(l["records"], 3);
        assert_eq!(l["ok"], false);
        assert_eq!(l["spans"], serde_json::json!(["publish"]));
        assert!(l.get("trace_id").is_none());
    }

    #[test]
    fn a_line_logged_inside_a_trace_carries_its_ids() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ));
        let lines = capture(|| {
            let _attached = cx.attach();
            tracing::info!("delivered");
        });
        assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(lines[0]["span_id"], "00f067aa0ba902b7");
    }
}
