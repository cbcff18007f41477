//! W3C Trace Context in and out of the places cardlink carries it: gRPC metadata (HTTP/2
//! headers) and the `traceparent` header of Kafka records.
//!
//! The propagator is used directly rather than through the global one, so a trace continues
//! even in a process that exports nothing: an incoming `traceparent` still reaches the bus and
//! the aggregator-side span, and a collector further on sees one trace.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The W3C `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct One<'a>(Option<&'a str>);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key == TRACEPARENT { self.0 } else { None }
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

#[derive(Default)]
struct Out(Option<String>);

impl Injector for Out {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// The caller's trace context from request headers (an empty context when there is none or it
/// is malformed — a bad header never fails a call).
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// The trace context a record's `traceparent` header names.
pub fn from_traceparent(traceparent: Option<&str>) -> Context {
    TraceContextPropagator::new().extract(&One(traceparent))
}

/// The `traceparent` header value for `cx`'s span, if it has a valid one.
pub fn traceparent(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = Out::default();
    TraceContextPropagator::new().inject_context(cx, &mut out);
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips_through_headers_and_records() {
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, http::HeaderValue::from_static(TP));
        assert_eq!(traceparent(&extract(&headers)).as_deref(), Some(TP));
        assert_eq!(traceparent(&from_traceparent(Some(TP))).as_deref(), Some(TP));
    }

    #[test]
    fn a_missing_or_malformed_traceparent_is_no_context() {
        assert_eq!(traceparent(&extract(&http::HeaderMap::new())), None);
        assert_eq!(traceparent(&from_traceparent(Some("00-not-a-trace"))), None);
        assert_eq!(traceparent(&from_traceparent(None)), None);
    }
}
