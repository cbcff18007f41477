//! The layer every cardlink gRPC server runs behind.
//!
//! For each call it continues the caller's trace (W3C `traceparent` in the metadata) with a
//! server span named `package.Service/Method`, makes that span current while the handler runs
//! (so spans the handler starts — a record's Kafka send — are its children, and log lines carry
//! its trace id), and records `rpc.server.call.duration`.
//!
//! The status comes from the response headers, where gRPC puts it for calls that fail before
//! answering (tonic's trailers-only responses); a status sent later in trailers (a stream that
//! ends in an error) is not seen here. For server-streaming calls the duration is the time to
//! the response headers; open streams are counted by the subscription service's own gauge.
//! Health checks and reflection are measured but not traced: probes would drown real traces.

use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use opentelemetry::context::FutureExt as _;
use opentelemetry::metrics::Histogram;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};

use crate::attr;

/// The layer (see the module header). Make it after telemetry is installed.
#[derive(Clone, Debug)]
pub struct RpcLayer {
    duration: Histogram<f64>,
}

impl Default for RpcLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RpcLayer {
    pub fn new() -> Self {
        let duration = crate::meter()
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_description("Duration of gRPC calls received (to the response headers for streams)")
            .with_boundaries(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            .build();
        Self { duration }
    }
}

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner, duration: self.duration.clone() }
    }
}

/// A service wrapped by [`RpcLayer`].
#[derive(Clone, Debug)]
pub struct RpcService<S> {
    inner: S,
    duration: Histogram<f64>,
}

/// `(service, method)` of a gRPC path `/package.Service/Method`.
pub fn split_path(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}

/// gRPC codes that mean the server failed (semantic conventions: server spans are errors for
/// these only; the others are the caller's doing).
fn server_error(code: i64) -> bool {
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RpcService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let (service, method) = split_path(request.uri().path());
        let base = [
            KeyValue::new(attr::RPC_SYSTEM, "grpc"),
            KeyValue::new(attr::RPC_SERVICE, service.to_owned()),
            KeyValue::new(attr::RPC_METHOD, method.to_owned()),
        ];
        let traced = !(service.starts_with("grpc.health.") || service.starts_with("grpc.reflection."));
        let cx = if traced {
            let parent = crate::propagation::extract(request.headers());
            let span = crate::tracer()
                .span_builder(request.uri().path().trim_start_matches('/').to_owned())
                .with_kind(SpanKind::Server)
                .with_attributes(base.to_vec())
                .start_with_context(&crate::tracer(), &parent);
            parent.with_span(span)
        } else {
            Context::current()
        };
        let future = self.inner.call(request).with_context(cx.clone());
        let duration = self.duration.clone();
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0),
                Err(_) => 2,
            };
            let mut attributes = base.to_vec();
            attributes.push(KeyValue::new(attr::RPC_GRPC_STATUS, code));
            duration.record(started.elapsed().as_secs_f64(), &attributes);
            if traced {
                let span = cx.span();
                span.set_attribute(KeyValue::new(attr::RPC_GRPC_STATUS, code));
                if server_error(code) {
                    span.set_status(Status::error(format!("gRPC status {code}")));
                }
                span.end();
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(split_path("/cardlink.v1.IssuerIngest/Publish"), ("cardlink.v1.IssuerIngest", "Publish"));
        assert_eq!(split_path("/odd"), ("odd", ""));
    }
}
