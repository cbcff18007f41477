//! The gRPC face of the subscription service: authenticate the aggregator, open a stream on the
//! hub, and hand tonic the stream's responses ([`crate::stream`]), its catch-up reader started
//! first when it starts from a cursor.

use std::sync::Arc;

use cardlink_api::status::status;
use cardlink_api::v1;
use cardlink_api::v1::subscription_server::Subscription;
use cardlink_auth::Role;
use cardlink_bus::{BusConfig, Consumer, Producer};
use cardlink_registry::caller::{Caller, CallerAuth};
use cardlink_views::follow::Followed;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tonic::{Code, Request, Response, Status};

use crate::access::AccessLog;
use crate::cursor::Cursor;
use crate::hub::{self, CatchUpError, Filters, Hub, Start};
use crate::live::DeliveryCounts;
use crate::metrics::{Mode, SubscriptionMetrics};
use crate::positions::{self, PositionError, PositionsView};
use crate::stream::{CATCH_UP_BUFFER, CatchUp, Recorders, SubscribeStream};

/// Streams one aggregator may hold open at once.
pub const MAX_STREAMS_PER_AGGREGATOR: usize = 16;
/// Catch-up readers (each its own Kafka consumer) running at once; others wait their turn.
pub const MAX_CATCH_UP_READERS: usize = 8;

#[derive(Clone, Debug)]
pub struct SubscriptionGrpc {
    hub: Hub,
    auth: CallerAuth,
    bus: BusConfig,
    producer: Producer,
    positions: Followed<PositionsView>,
    catch_up: Arc<Semaphore>,
    access: AccessLog,
    metrics: SubscriptionMetrics,
    shutdown: watch::Receiver<bool>,
}

impl SubscriptionGrpc {
    pub fn new(
        hub: Hub,
        auth: CallerAuth,
        bus: BusConfig,
        producer: Producer,
        positions: Followed<PositionsView>,
        access: AccessLog,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let catch_up = Arc::new(Semaphore::new(MAX_CATCH_UP_READERS));
        let metrics = SubscriptionMetrics::new(&hub, Arc::clone(&catch_up), MAX_CATCH_UP_READERS);
        Self { hub, auth, bus, producer, positions, catch_up, access, metrics, shutdown }
    }

    /// Deliveries per aggregator, for the live view.
    pub fn live_deliveries(&self) -> DeliveryCounts {
        self.metrics.live().clone()
    }

    /// The catch-up reader permits, to observe how many readers run.
    pub fn catch_up_permits(&self) -> Arc<Semaphore> {
        Arc::clone(&self.catch_up)
    }

    fn aggregator<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let caller =
            self.auth.authenticate(header).map_err(|e| status(Code::Unauthenticated, e.reason(), e.to_string()))?;
        if caller.role != Role::Aggregator {
            return Err(status(Code::PermissionDenied, "AGGREGATORS_ONLY", "only aggregators subscribe"));
        }
        Ok(caller)
    }
}

fn position_status(e: PositionError) -> Status {
    match e {
        PositionError::InvalidName => status(Code::InvalidArgument, "INVALID_POSITION_NAME", e.to_string()),
        PositionError::Cursor(c) => status(Code::InvalidArgument, c.reason(), c.to_string()),
        PositionError::Unknown(_) => status(Code::NotFound, "POSITION_NOT_FOUND", e.to_string()),
        PositionError::Bus(b) => status(Code::Unavailable, "BUS_UNAVAILABLE", b.to_string()),
    }
}

/// Largest `SubscribeRequest` accepted (filters and a cursor; real ones are a few hundred bytes).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest response sent: one delivery and its cursor. gRPC clients accept 4 MiB by default.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Issuers one stream may name in its filter.
pub const MAX_ISSUER_FILTERS: usize = 100;

fn filters(request: &v1::SubscribeRequest) -> Result<Filters, Status> {
    let mut kinds = Vec::with_capacity(request.kinds.len());
    for &k in &request.kinds {
        match v1::EventKind::try_from(k) {
            Ok(kind) if kind != v1::EventKind::Unspecified => kinds.push(kind),
            // Ignoring an unknown kind would widen the filter to everything.
            _ => {
                return Err(status(
                    Code::InvalidArgument,
                    "UNKNOWN_EVENT_KIND",
                    format!("event kind {k} is not one of TRANSACTION, STATEMENT, CONSENT"),
                ));
            }
        }
    }
    if request.issuer_ids.len() > MAX_ISSUER_FILTERS {
        return Err(status(
            Code::InvalidArgument,
            "TOO_MANY_ISSUER_FILTERS",
            format!("at most {MAX_ISSUER_FILTERS} issuers per stream; open another stream or filter on your side"),
        ));
    }
    let all = kinds.is_empty();
    Ok(Filters {
        transactions: all || kinds.contains(&v1::EventKind::Transaction),
        statements: all || kinds.contains(&v1::EventKind::Statement),
        consents: all || kinds.contains(&v1::EventKind::Consent),
        issuers: request.issuer_ids.clone(),
    })
}

#[tonic::async_trait]
impl Subscription for SubscriptionGrpc {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = self.aggregator(&request)?;
        let aggregator = caller.participant_id;
        let request = request.into_inner();
        let filters = filters(&request)?;
        let secret = self.hub.secret().to_vec();
        let start = match &request.start {
            None => Start::Live,
            Some(v1::subscribe_request::Start::FromEarliest(true)) => Start::Earliest,
            Some(v1::subscribe_request::Start::FromEarliest(false)) => Start::Live,
            Some(v1::subscribe_request::Start::Cursor(text)) => Start::After(
                Cursor::decode(&secret, text, &aggregator)
                    .map_err(|e| status(Code::InvalidArgument, e.reason(), e.to_string()))?,
            ),
            Some(v1::subscribe_request::Start::PositionName(name)) => {
                Start::After(positions::resolve(&self.positions, &secret, &aggregator, name).map_err(position_status)?)
            }
        };
        if self.hub.streams_of(&aggregator) >= MAX_STREAMS_PER_AGGREGATOR {
            return Err(status(
                Code::ResourceExhausted,
                "TOO_MANY_STREAMS",
                format!("at most {MAX_STREAMS_PER_AGGREGATOR} streams per aggregator"),
            ));
        }
        let initial = match &start {
            Start::After(c) => c.clone(),
            _ => Cursor::new(&aggregator),
        };
        let registration = self.hub.register(&aggregator, filters.clone(), &initial);
        let catch_up = match start {
            Start::Live => None,
            start => {
                let (tx, rx) = mpsc::channel(CATCH_UP_BUFFER);
                let (done_tx, done) = oneshot::channel();
                let (hub, bus, permits, until) =
                    (self.hub.clone(), self.bus.clone(), Arc::clone(&self.catch_up), registration.live_from.clone());
                let aggregator = aggregator.clone();
                tokio::spawn(async move {
                    let read = async {
                        let _permit = permits.acquire().await.map_err(|_| CatchUpError::Closed)?;
                        let consumer = Consumer::new(&bus, "catch-up")?;
                        hub::catch_up(&hub, &consumer, &aggregator, &filters, &start, &until, &tx).await
                    };
                    // Said before the sender is dropped: the stream reads it once `rx` ends. A
                    // client that left (the stream dropped) ends the reader at its next send.
                    let _ = done_tx.send(read.await);
                    drop(tx);
                });
                Some(CatchUp { rx, done })
            }
        };
        let recorders = Recorders {
            access: self.access.clone(),
            live: self.metrics.stream(&aggregator, Mode::Live),
            catch_up: self.metrics.stream(&aggregator, Mode::CatchUp),
        };
        Ok(Response::new(SubscribeStream::new(
            self.hub.clone(),
            aggregator,
            registration,
            initial.encode(&secret),
            catch_up,
            self.shutdown.clone(),
            recorders,
        )))
    }

    async fn acknowledge(
        &self,
        request: Request<v1::AcknowledgeRequest>,
    ) -> Result<Response<v1::AcknowledgeResponse>, Status> {
        let caller = self.aggregator(&request)?;
        let r = request.into_inner();
        positions::acknowledge(
            &self.producer,
            &self.positions,
            self.hub.secret(),
            &caller.participant_id,
            &r.position_name,
            &r.cursor,
        )
        .await
        .map_err(position_status)?;
        Ok(Response::new(v1::AcknowledgeResponse {}))
    }
}
