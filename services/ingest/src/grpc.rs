//! The gRPC face of the ingest service: translate, delegate, translate back. Callers are
//! authenticated by the [`cardlink_authn::AuthLayer`] the server wraps this in (before a request's
//! body is read); every method is an issuer's.

use cardlink_api::status::into_status;
use cardlink_api::v1;
use cardlink_api::v1::issuer_ingest_server::IssuerIngest;
use cardlink_authn::{Authenticator, Role, Standing, caller_as};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::outcome::{BatchResult, Outcome};
use crate::service::{Batch, Ingest};

/// Responses buffered per PublishStream before the server waits for the client to read.
pub const STREAM_RESPONSE_BUFFER: usize = 16;

#[derive(Debug, Clone)]
pub struct IngestGrpc {
    ingest: Ingest,
    /// Checks a PublishStream's caller again while it runs ([`Standing`]).
    auth: Authenticator,
    max_stream_age: std::time::Duration,
}

impl IngestGrpc {
    pub fn new(ingest: Ingest, auth: Authenticator, max_stream_age: std::time::Duration) -> Self {
        Self { ingest, auth, max_stream_age }
    }
}

fn traceparent<T>(request: &Request<T>) -> Option<String> {
    request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn batch(request: v1::PublishRequest, traceparent: Option<String>) -> Batch {
    Batch {
        issuer_id: request.issuer_id,
        batch_id: request.batch_id,
        records: request.records,
        traceparent,
        historical: request.historical,
    }
}

fn response(result: BatchResult) -> v1::PublishResponse {
    let mut out = v1::PublishResponse { batch_id: result.batch_id, ..Default::default() };
    for r in result.results {
        let mut rr = v1::RecordResult { index: r.index as u32, event_id: r.event_id, ..Default::default() };
        match r.outcome {
            Outcome::Accepted => {
                rr.outcome = v1::RecordOutcome::Accepted as i32;
                out.accepted += 1;
            }
            Outcome::Duplicate => {
                rr.outcome = v1::RecordOutcome::Duplicate as i32;
                out.duplicates += 1;
            }
            Outcome::Rejected(rejection) => {
                rr.outcome = v1::RecordOutcome::Rejected as i32;
                rr.reason = rejection.reason.as_str().to_owned();
                rr.field = rejection.field;
                rr.message = rejection.message;
                out.rejected += 1;
            }
        }
        out.results.push(rr);
    }
    out
}

#[tonic::async_trait]
impl IssuerIngest for IngestGrpc {
    async fn publish(&self, request: Request<v1::PublishRequest>) -> Result<Response<v1::PublishResponse>, Status> {
        let caller = caller_as(&request, Role::Issuer)?;
        let tp = traceparent(&request);
        let result = self.ingest.publish(&caller, batch(request.into_inner(), tp)).await.map_err(into_status)?;
        Ok(Response::new(response(result)))
    }

    type PublishStreamStream = ReceiverStream<Result<v1::PublishResponse, Status>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<v1::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let caller = caller_as(&request, Role::Issuer)?;
        let tp = traceparent(&request);
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_RESPONSE_BUFFER);
        let ingest = self.ingest.clone();
        // Ends the stream once the credential no longer stands, or at its maximum age.
        let mut standing = Standing::new(self.auth.clone(), caller.clone(), self.max_stream_age);
        tokio::spawn(async move {
            // Batches are processed one after another so a stream keeps the issuer's order; the
            // bounded channel makes a client that stops reading stop this task too.
            loop {
                let next = tokio::select! {
                    next = incoming.next() => next,
                    lapsed = standing.lapsed() => {
                        let _ = tx.send(Err(lapsed)).await;
                        break;
                    }
                };
                let Some(next) = next else { break };
                let reply = match next {
                    Ok(request) => {
                        ingest.publish(&caller, batch(request, tp.clone())).await.map(response).map_err(into_status)
                    }
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
