//! The gRPC face of the subscription service: open a stream on the hub, and hand tonic the
//! stream's responses ([`crate::stream`]), its catch-up reader ([`crate::catch_up`]) started first
//! when it starts before the live tail. Callers are authenticated by the
//! [`cardlink_authn::AuthLayer`] the server wraps this in; every method is an aggregator's.

use cardlink_api::status::{into_status, to_status};
use cardlink_api::v1::subscription_server::Subscription;
use cardlink_api::{ApiError, Reason, v1};
use cardlink_authn::{Authenticator, Role, Standing, caller_as};
use cardlink_bus::{BusConfig, Producer};
use cardlink_views::follow::Followed;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::access::AccessLog;
use crate::backfill::{BackfillError, Backfills};
use crate::catch_up::{CatchUpReaders, Start};
use crate::cursor::Cursor;
use crate::hub::Hub;
use crate::metrics::{DeliveryCounts, Mode, SubscriptionMetrics};
use crate::positions::{self, PositionsView};
use crate::stream::{Recorders, SubscribeStream};
use crate::streams::Filters;

/// Streams one aggregator may hold open at once.
pub const MAX_STREAMS_PER_AGGREGATOR: usize = 16;

#[derive(Clone, Debug)]
pub struct SubscriptionGrpc {
    hub: Hub,
    /// Checks each open stream's caller again while it runs ([`Standing`]).
    standing: StandingCheck,
    producer: Producer,
    positions: Followed<PositionsView>,
    catch_up: CatchUpReaders,
    access: AccessLog,
    metrics: SubscriptionMetrics,
    shutdown: watch::Receiver<bool>,
    /// Backfills from the history store, when the service has one.
    backfills: Option<Backfills>,
}

impl SubscriptionGrpc {
    pub fn new(
        hub: Hub,
        bus: BusConfig,
        producer: Producer,
        positions: Followed<PositionsView>,
        access: AccessLog,
        standing: StandingCheck,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let catch_up = CatchUpReaders::new(bus);
        let metrics = SubscriptionMetrics::new(&hub, catch_up.clone());
        Self { hub, standing, producer, positions, catch_up, access, metrics, shutdown, backfills: None }
    }

    /// Lets streams start with a backfill from the history store.
    pub fn with_backfills(mut self, backfills: Option<Backfills>) -> Self {
        self.backfills = backfills;
        self
    }

    /// Deliveries per aggregator, for the live view.
    pub fn live_deliveries(&self) -> DeliveryCounts {
        self.metrics.live().clone()
    }

    /// The catch-up readers, to observe how many run.
    pub fn catch_up_readers(&self) -> CatchUpReaders {
        self.catch_up.clone()
    }
}

/// A `Subscribe` request that cannot be served as asked.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("event kind {0} is not one of TRANSACTION, STATEMENT, CONSENT")]
    UnknownEventKind(i32),
    #[error("at most {MAX_ISSUER_FILTERS} issuers per stream; open another stream or filter on your side")]
    TooManyIssuerFilters,
    #[error("at most {MAX_STREAMS_PER_AGGREGATOR} streams per aggregator")]
    TooManyStreams,
}

impl ApiError for RequestError {
    fn reason(&self) -> Reason {
        match self {
            Self::UnknownEventKind(_) => Reason::UnknownEventKind,
            Self::TooManyIssuerFilters => Reason::TooManyIssuerFilters,
            Self::TooManyStreams => Reason::TooManyStreams,
        }
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
            _ => return Err(to_status(&RequestError::UnknownEventKind(k))),
        }
    }
    if request.issuer_ids.len() > MAX_ISSUER_FILTERS {
        return Err(to_status(&RequestError::TooManyIssuerFilters));
    }
    let all = kinds.is_empty();
    Ok(Filters {
        transactions: all || kinds.contains(&v1::EventKind::Transaction),
        statements: all || kinds.contains(&v1::EventKind::Statement),
        consents: all || kinds.contains(&v1::EventKind::Consent),
        issuers: request.issuer_ids.clone(),
    })
}

/// How streams' callers are checked while they run.
#[derive(Clone, Debug)]
pub struct StandingCheck {
    pub auth: Authenticator,
    /// A stream ends at this age; the client authenticates again and resumes from its cursor.
    pub max_age: std::time::Duration,
}

#[tonic::async_trait]
impl Subscription for SubscriptionGrpc {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = caller_as(&request, Role::Aggregator)?;
        let aggregator = caller.participant_id.clone();
        let request = request.into_inner();
        let filters = filters(&request)?;
        let secret = self.hub.secret();
        let start = match &request.start {
            None => Start::Live,
            Some(v1::subscribe_request::Start::FromEarliest(true)) => Start::Earliest,
            Some(v1::subscribe_request::Start::FromEarliest(false)) => Start::Live,
            Some(v1::subscribe_request::Start::Cursor(text)) => {
                Start::After(Cursor::decode(secret, text, &aggregator).map_err(into_status)?)
            }
            Some(v1::subscribe_request::Start::PositionName(name)) => {
                Start::After(positions::resolve(&self.positions, secret, &aggregator, name).map_err(into_status)?)
            }
            Some(v1::subscribe_request::Start::Backfill(backfill)) => {
                if self.backfills.is_none() {
                    return Err(to_status(&BackfillError::NotConfigured));
                }
                let started = Backfills::start(&aggregator, &backfill.consent_ids, chrono::Utc::now());
                Start::After(started.map_err(|e| to_status(&e))?)
            }
        };
        // A cursor handed out mid-backfill resumes the backfill.
        let backfills = match &start {
            Start::After(c) if c.backfill.is_some() => {
                Some(self.backfills.clone().ok_or_else(|| to_status(&BackfillError::NotConfigured))?)
            }
            _ => None,
        };
        if self.hub.streams().streams_of(&aggregator) >= MAX_STREAMS_PER_AGGREGATOR {
            return Err(to_status(&RequestError::TooManyStreams));
        }
        let initial = match &start {
            Start::After(c) => c.clone(),
            _ => Cursor::new(&aggregator),
        };
        let registration = self.hub.register(&aggregator, filters.clone(), &initial);
        let catch_up = match (start, backfills) {
            (Start::Live, _) => None,
            (Start::After(cursor), Some(backfills)) => Some(backfills.spawn(
                &self.hub,
                &self.catch_up,
                aggregator.clone(),
                filters,
                cursor,
                registration.live_from.clone(),
            )),
            (start, _) => {
                Some(self.catch_up.spawn(&self.hub, aggregator.clone(), filters, start, registration.live_from.clone()))
            }
        };
        let recorders = Recorders {
            access: self.access.clone(),
            live: self.metrics.stream(&aggregator, Mode::Live),
            catch_up: self.metrics.stream(&aggregator, Mode::CatchUp),
        };
        let initial = initial.encode(secret);
        let standing = Standing::new(self.standing.auth.clone(), caller, self.standing.max_age);
        Ok(Response::new(SubscribeStream::new(
            self.hub.clone(),
            aggregator,
            registration,
            initial,
            catch_up,
            (self.shutdown.clone(), standing),
            recorders,
        )))
    }

    async fn acknowledge(
        &self,
        request: Request<v1::AcknowledgeRequest>,
    ) -> Result<Response<v1::AcknowledgeResponse>, Status> {
        let caller = caller_as(&request, Role::Aggregator)?;
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
        .map_err(into_status)?;
        Ok(Response::new(v1::AcknowledgeResponse {}))
    }
}
