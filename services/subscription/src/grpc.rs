//! The gRPC face of the subscription service: authenticate the aggregator, open a stream on the
//! hub (catching up first when it starts from a cursor), and forward deliveries, heartbeats and
//! the end of the stream.

use std::sync::Arc;
use std::time::Duration;

use cardlink_api::convert::timestamp;
use cardlink_api::status::status;
use cardlink_api::v1;
use cardlink_api::v1::subscription_server::Subscription;
use cardlink_auth::Role;
use cardlink_bus::{BusConfig, Consumer, Producer};
use cardlink_registry::caller::{Caller, CallerAuth};
use cardlink_views::follow::Followed;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::access::AccessLog;
use crate::cursor::Cursor;
use crate::hub::{self, CatchUpError, Filters, Hub, Outgoing, Start};
use crate::live::DeliveryCounts;
use crate::metrics::{Mode, SubscriptionMetrics};
use crate::positions::{self, PositionError, PositionsView};

/// Responses buffered per gRPC stream before the forwarding task waits for the client.
pub const RESPONSE_BUFFER: usize = 64;
/// How often an idle stream gets a heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
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

fn heartbeat(caught_up: bool, cursor: String) -> v1::SubscribeResponse {
    v1::SubscribeResponse {
        deliveries: Vec::new(),
        heartbeat: Some(v1::Heartbeat { at: Some(timestamp(chrono::Utc::now())), caught_up }),
        cursor,
    }
}

/// The cursor a heartbeat carries. The hub's cursor for the stream also covers records it passed
/// over (so a quiet stream's cursor stays current), but it may cover deliveries still queued for
/// the client: it is only safe once the queue is empty, checked after reading it (the hub
/// advances the cursor and queues under one lock). Otherwise, the last delivery's cursor.
fn heartbeat_cursor(hub: &Hub, aggregator: &str, id: u64, queue: &mpsc::Receiver<Outgoing>, last_sent: &str) -> String {
    match hub.cursor(aggregator, id) {
        Some(cursor) if queue.is_empty() => cursor,
        _ => last_sent.to_owned(),
    }
}

#[tonic::async_trait]
impl Subscription for SubscriptionGrpc {
    type SubscribeStream = ReceiverStream<Result<v1::SubscribeResponse, Status>>;

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
        let mut registration = self.hub.register(&aggregator, filters.clone(), &initial);
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let (hub, bus, permits, access, mut shutdown) = (
            self.hub.clone(),
            self.bus.clone(),
            Arc::clone(&self.catch_up),
            self.access.clone(),
            self.shutdown.clone(),
        );
        let (live_metrics, catch_up_metrics) =
            (self.metrics.stream(&aggregator, Mode::Live), self.metrics.stream(&aggregator, Mode::CatchUp));
        tokio::spawn(async move {
            let id = registration.id;
            // The cursor just after the last delivery this stream sent.
            let mut last_sent = initial.encode(&secret);
            let result = async {
                if !matches!(start, Start::Live) {
                    let _permit = permits.acquire().await.map_err(|_| CatchUpError::Closed)?;
                    let consumer = Consumer::new(&bus, "catch-up")?;
                    let (catch_tx, catch_rx) = mpsc::channel(RESPONSE_BUFFER);
                    // The reader owns the sender, so the forwarder ends when the catch-up does.
                    let reader = async {
                        let catch_tx = catch_tx;
                        hub::catch_up(&hub, &consumer, &aggregator, &filters, &start, &registration.live_from, &catch_tx).await
                    };
                    // The forwarder owns the receiver, so a client that leaves ends the reader too.
                    let forward = async {
                        let mut catch_rx = catch_rx;
                        while let Some(Outgoing::Delivery { delivery, cursor, origin }) = catch_rx.recv().await {
                            last_sent.clone_from(&cursor);
                            access.record(&delivery);
                            let span = catch_up_metrics.delivering(origin.as_deref());
                            let response = v1::SubscribeResponse { deliveries: vec![delivery], heartbeat: None, cursor };
                            if tx.send(Ok(response)).await.is_err() {
                                return;
                            }
                            catch_up_metrics.delivered(origin.as_deref(), span);
                        }
                    };
                    let (read, ()) = tokio::join!(reader, forward);
                    read?;
                }
                let _ = tx.send(Ok(heartbeat(true, heartbeat_cursor(&hub, &aggregator, id, &registration.rx, &last_sent)))).await;
                let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
                beat.tick().await;
                loop {
                    tokio::select! {
                        // A client that went away frees its slot at once, not at the next send.
                        _ = tx.closed() => return Ok(()),
                        _ = shutdown.changed() => {
                            let _ = tx.send(Err(status(Code::Unavailable, "SERVER_SHUTTING_DOWN", "the service is restarting; resume from your last cursor"))).await;
                            return Ok(());
                        }
                        _ = beat.tick() => {
                            let cursor = heartbeat_cursor(&hub, &aggregator, id, &registration.rx, &last_sent);
                            if tx.send(Ok(heartbeat(true, cursor))).await.is_err() {
                                return Ok(());
                            }
                        }
                        next = registration.rx.recv() => match next {
                            Some(Outgoing::Delivery { delivery, cursor, origin }) => {
                                last_sent.clone_from(&cursor);
                                access.record(&delivery);
                                let span = live_metrics.delivering(origin.as_deref());
                                if tx.send(Ok(v1::SubscribeResponse { deliveries: vec![delivery], heartbeat: None, cursor })).await.is_err() {
                                    return Ok(());
                                }
                                live_metrics.delivered(origin.as_deref(), span);
                            }
                            Some(Outgoing::FellBehind) | None => {
                                let _ = tx.send(Err(status(Code::ResourceExhausted, "FELL_BEHIND", "the stream fell behind; resume from your last cursor"))).await;
                                return Ok(());
                            }
                        },
                    }
                }
            }
            .await;
            hub.unregister(&aggregator, id);
            if let Err(e) = result {
                let s = match &e {
                    CatchUpError::OutOfRange { .. } | CatchUpError::AheadOfBus { .. } => {
                        status(Code::OutOfRange, "CURSOR_OUT_OF_RANGE", e.to_string())
                    }
                    _ => status(Code::Unavailable, "BUS_UNAVAILABLE", e.to_string()),
                };
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
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
