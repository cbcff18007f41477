//! Where every adapter's events go: the ingest gRPC API, as an issuer.
//!
//! Adapters are ordinary ingest clients, so authentication, validation, the PAN guard and
//! idempotency apply to them exactly as to an issuer's own integration. Retriable outcomes
//! (the bus briefly unavailable, the service not ready yet, the same event in flight) are
//! retried here with backoff; what is left is final.

use std::time::Duration;

use cardlink_api::v1::issuer_ingest_client::IssuerIngestClient;
use cardlink_api::{Reason, convert, v1};
use cardlink_events::Event;
use tonic::transport::Channel;

/// Attempts per record (and per call) before a retriable failure becomes final.
pub const MAX_ATTEMPTS: u32 = 5;
/// First backoff; doubles each attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// The final outcome of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkOutcome {
    Accepted,
    Duplicate,
    Rejected { reason: String, field: String, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot connect to the ingest service at {endpoint}: {source}")]
    Connect { endpoint: String, source: tonic::transport::Error },
    #[error("invalid issuer key: it must be printable ASCII")]
    BadKey,
    #[error("the ingest service refused the call: {code:?} {reason}: {message}")]
    Refused { code: tonic::Code, reason: String, message: String },
}

/// Where adapters hand their events: one call per batch, one final outcome per event.
pub trait EventSink {
    fn publish(
        &mut self,
        events: &[Event],
    ) -> impl std::future::Future<Output = Result<Vec<SinkOutcome>, SinkError>> + Send;
}

impl EventSink for IngestSink {
    fn publish(
        &mut self,
        events: &[Event],
    ) -> impl std::future::Future<Output = Result<Vec<SinkOutcome>, SinkError>> + Send {
        IngestSink::publish(self, events)
    }
}

/// A connection to the ingest service, as one issuer.
#[derive(Debug, Clone)]
pub struct IngestSink {
    client: IssuerIngestClient<Channel>,
    issuer_id: String,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    batches: u64,
    /// Every batch is an issuer's load of past records (`PublishRequest.historical`).
    historical: bool,
}

impl IngestSink {
    pub async fn connect(endpoint: &str, issuer_id: &str, key: &str) -> Result<Self, SinkError> {
        let endpoint = if endpoint.contains("://") { endpoint.to_owned() } else { format!("http://{endpoint}") };
        let client = IssuerIngestClient::connect(endpoint.clone())
            .await
            .map_err(|source| SinkError::Connect { endpoint, source })?
            // Large batches of realistic records stay far below this.
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024);
        let authorization = format!("Bearer {key}").parse().map_err(|_| SinkError::BadKey)?;
        Ok(Self { client, issuer_id: issuer_id.to_owned(), authorization, batches: 0, historical: false })
    }

    /// Marks everything this sink publishes as past records loaded once: indexed into history,
    /// never delivered live as new.
    pub fn historical(mut self) -> Self {
        self.historical = true;
        self
    }

    pub fn issuer_id(&self) -> &str {
        &self.issuer_id
    }

    /// Publishes `events` as one batch; returns one final outcome per event, in order.
    pub async fn publish(&mut self, events: &[Event]) -> Result<Vec<SinkOutcome>, SinkError> {
        let mut outcomes: Vec<Option<SinkOutcome>> = vec![None; events.len()];
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            let records = pending.iter().map(|&i| convert::ingest_record(&events[i])).collect();
            self.batches += 1;
            let mut request = tonic::Request::new(v1::PublishRequest {
                issuer_id: self.issuer_id.clone(),
                batch_id: format!("{}-{}", self.issuer_id, self.batches),
                records,
                historical: self.historical,
            });
            request.metadata_mut().insert("authorization", self.authorization.clone());
            let response = match self.client.publish(request).await {
                Ok(r) => r.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable && attempt < MAX_ATTEMPTS => {
                    tracing::info!(attempt, message = status.message(), "ingest unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
                Err(status) => {
                    return Err(SinkError::Refused {
                        code: status.code(),
                        reason: cardlink_api::status::reason(&status).unwrap_or_default(),
                        message: status.message().to_owned(),
                    });
                }
            };
            let mut retry = Vec::new();
            for result in response.results {
                let Some(&index) = pending.get(result.index as usize) else { continue };
                let outcome = match v1::RecordOutcome::try_from(result.outcome) {
                    Ok(v1::RecordOutcome::Accepted) => SinkOutcome::Accepted,
                    Ok(v1::RecordOutcome::Duplicate) => SinkOutcome::Duplicate,
                    _ if is_retriable(&result.reason) && attempt < MAX_ATTEMPTS => {
                        retry.push(index);
                        continue;
                    }
                    _ => SinkOutcome::Rejected { reason: result.reason, field: result.field, message: result.message },
                };
                outcomes[index] = Some(outcome);
            }
            if retry.is_empty() {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            pending = retry;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| SinkOutcome::Rejected {
                    reason: Reason::NoResult.as_str().into(),
                    field: String::new(),
                    message: "the ingest service returned no result for this record".into(),
                })
            })
            .collect())
    }
}

/// Whether a record rejected for `reason` may be sent again (a reason this version does not
/// know is not retried).
fn is_retriable(reason: &str) -> bool {
    Reason::from_name(reason).is_some_and(Reason::is_retriable)
}
