//! Running the subscription service: the registry, consent and positions views, the hub's shared
//! reader, and the gRPC server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cardlink_api::v1::subscription_server::SubscriptionServer;
use cardlink_auth::{PublicKey, TokenVerifier};
use cardlink_authn::{AuthLayer, Authenticator};
use cardlink_bus::{BusConfig, Consumer, PolledConsumer, Producer, Topic};
use cardlink_views::{AccessViews, follow};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

pub use cardlink_serving::ServeError;

use crate::access::{self, AccessLog};
use crate::catch_up::CatchUpReaders;
use crate::grpc::{StandingCheck, SubscriptionGrpc};
use crate::hub::Hub;
use crate::positions::PositionsView;
use crate::{dispatch, notices};

#[derive(Clone, Debug)]
pub struct SubscriptionConfig {
    pub listen: SocketAddr,
    /// Platform keys that sign participant credentials.
    pub trusted_keys: Vec<PublicKey>,
    /// Key of account pseudonyms and cursors; the same as the consent service's.
    pub secret: Arc<[u8]>,
    /// Where the live view page (`/live`, `/live.json`) is served; `None`: not served.
    pub http_listen: Option<SocketAddr>,
    /// A stream ends at this age (`STREAM_MAX_AGE`); the client authenticates again and resumes
    /// from its cursor. Bounds how long a stream outlives the credential it was opened with
    /// by expiry (revocation ends it at once).
    pub max_stream_age: Duration,
    /// The history store backfills read (`Subscribe` with `backfill`); `None`: backfill is not
    /// available (`BACKFILL_UNAVAILABLE`).
    pub history_store: Option<cardlink_history::StoreUrl>,
}

/// Connections to PostgreSQL a subscription replica holds at most for backfills.
pub const HISTORY_STORE_CONNECTIONS: usize = 4;

/// The default [`SubscriptionConfig::max_stream_age`].
pub const DEFAULT_MAX_STREAM_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct RunningSubscription {
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    pages: axum::Router,
    hub: Hub,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    catch_up: CatchUpReaders,
    /// Stopped after the streams, so their last deliveries are on the record.
    stop_access: watch::Sender<bool>,
    access: JoinHandle<()>,
}

impl RunningSubscription {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the live view is served, if it is.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The live view, to serve beside other pages.
    pub fn pages(&self) -> axum::Router {
        self.pages.clone()
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Catch-up readers running now (at most [`crate::catch_up::MAX_CATCH_UP_READERS`]).
    pub fn catch_up_readers(&self) -> usize {
        self.catch_up.running()
    }

    /// Records the catch-up readers have read from the bus, in all.
    pub fn catch_up_records_read(&self) -> u64 {
        self.catch_up.records_read()
    }

    /// Ends every stream with a reconnect status, stops the readers, and waits for them.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for task in self.tasks {
            cardlink_serving::join_within(task, cardlink_serving::SHUTDOWN_GRACE).await;
        }
        self.stop_access.send_replace(true);
        let _ = self.access.await;
    }
}

fn logged(name: &'static str, task: JoinHandle<Result<(), cardlink_bus::BusError>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Ok(Err(e)) = task.await {
            tracing::error!(error = %e, task = name, "subscription background task stopped");
        }
    })
}

/// Starts the service; returns once its views caught up and the hub is reading.
pub async fn start(bus: &BusConfig, config: SubscriptionConfig) -> Result<RunningSubscription, ServeError> {
    let (listener, addr) = cardlink_serving::bind(config.listen).await?;
    let http = match config.http_listen {
        Some(at) => Some(cardlink_serving::bind(at).await?),
        None => None,
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let AccessViews { registry, consents, tasks: [registry_task, consents_task] } =
        AccessViews::follow(bus, "subscription", &shutdown_rx).await?;
    let (mut positions, positions_task) = follow::spawn(
        PolledConsumer::new(bus, "subscription-positions")?,
        Topic::Positions,
        PositionsView::default(),
        shutdown_rx.clone(),
    );
    positions.caught_up().await;
    let (lag_registry, lag_positions) = (registry.clone(), positions.clone());
    cardlink_telemetry::observe_view_lag("subscription.registry", move || lag_registry.lag());
    cardlink_telemetry::observe_view_lag("subscription.positions", move || lag_positions.lag());

    let (dead_letters, dead_letters_rx) = tokio::sync::mpsc::channel(crate::dead_letter::QUEUE);
    let hub = Hub::new(consents, registry.clone(), Arc::clone(&config.secret)).with_dead_letters(dead_letters);
    let dead_letter_writer =
        tokio::spawn(crate::dead_letter::write(Producer::new(bus)?, dead_letters_rx, shutdown_rx.clone()));
    let reader = tokio::spawn(dispatch::run_reader(
        hub.clone(),
        PolledConsumer::new(bus, "subscription-hub")?,
        shutdown_rx.clone(),
    ));
    while !hub.streams().is_reading() {
        if reader.is_finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let notices = Consumer::new(bus, "subscription-consent-notices")?;
    notices::position_consent_notifier(&notices).await?;
    let notifier = tokio::spawn(notices::run_consent_notifier(hub.clone(), notices, shutdown_rx.clone()));
    let auth = Authenticator::new(TokenVerifier::new(config.trusted_keys.clone()), registry);
    let producer = Producer::new(bus)?;
    let access = AccessLog::default();
    let (stop_access, stop_access_rx) = watch::channel(false);
    let access_task = logged(
        "access records",
        tokio::spawn(access::run_flusher(access.clone(), hub.consents().clone(), producer.clone(), stop_access_rx)),
    );
    let standing = StandingCheck { auth: auth.clone(), max_age: config.max_stream_age };
    let backfills = match &config.history_store {
        Some(url) => Some(crate::backfill::Backfills::new(
            cardlink_history::AnyStore::open(url, HISTORY_STORE_CONNECTIONS)
                .await
                .map_err(|e| ServeError::Config(format!("history store {url:?}: {e}")))?,
        )),
        None => None,
    };
    let grpc =
        SubscriptionGrpc::new(hub.clone(), bus.clone(), producer, positions, access, standing, shutdown_rx.clone())
            .with_backfills(backfills);
    let ready_hub = hub.clone();
    let router = cardlink_serving::grpc_router(
        cardlink_serving::grpc_server(),
        Box::new(move || !ready_hub.reader_stopped() && ready_hub.consents().is_fresh(cardlink_serving::READY_WITHIN)),
        shutdown_rx.clone(),
    )?;
    let catch_up = grpc.catch_up_readers();
    let live = crate::live::LiveState { hub: hub.clone(), deliveries: grpc.live_deliveries() };
    let pages = crate::live::router(live);
    let mut tasks = Vec::new();
    let http_addr = http.as_ref().map(|(_, a)| *a);
    if let Some((http_listener, http_addr)) = http {
        tasks.push(cardlink_serving::html::serve(http_listener, pages.clone(), shutdown_rx.clone(), "live view"));
        tracing::info!(%http_addr, "live view at /live");
    }
    let server = tokio::spawn(async move {
        let served = router
            .add_service(InterceptedService::new(
                SubscriptionServer::new(grpc)
                    .max_decoding_message_size(crate::grpc::MAX_REQUEST_BYTES)
                    .max_encoding_message_size(crate::grpc::MAX_RESPONSE_BYTES),
                AuthLayer::required(auth),
            ))
            .serve_with_incoming_shutdown(cardlink_serving::incoming(listener), cardlink_serving::stopped(shutdown_rx))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "subscription gRPC server failed");
        }
    });
    tracing::info!(%addr, "subscription service listening");
    tasks.extend([
        server,
        logged("hub reader", reader),
        logged("consent notices", notifier),
        logged(registry_task.0, registry_task.1),
        logged(consents_task.0, consents_task.1),
        logged("positions", positions_task),
        dead_letter_writer,
    ]);
    Ok(RunningSubscription { addr, http_addr, pages, hub, shutdown, tasks, catch_up, stop_access, access: access_task })
}
