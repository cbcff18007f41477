//! Running the history service: the store, the indexer (unless it runs elsewhere), retention, the
//! consent and registry views, and the `History` gRPC server.
//!
//! Ready means: the views are current, and this replica's indexer has at most [`READY_MAX_LAG`]
//! records of its partitions left to apply — a replica just started on a long backlog takes no
//! calls until it has worked through it.

use std::net::SocketAddr;
use std::sync::Arc;

use cardlink_api::v1::history_server::HistoryServer;
use cardlink_auth::{PublicKey, TokenVerifier};
use cardlink_authn::{AuthLayer, Authenticator};
use cardlink_bus::{BusConfig, Consumer, Producer};
use cardlink_entitlement::access::AccessLog;
use cardlink_history::{AnyStore, StoreUrl};
use cardlink_views::AccessViews;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

pub use cardlink_serving::ServeError;

use crate::grpc::HistoryGrpc;
use crate::indexer::{self, Progress};
use crate::service::{DEFAULT_RETENTION_MONTHS, History};

/// Records of its partitions a replica's indexer may have left to apply and still be ready.
pub const READY_MAX_LAG: u64 = 10_000;

#[derive(Clone, Debug)]
pub struct HistoryConfig {
    pub listen: SocketAddr,
    /// Platform keys that sign participant credentials.
    pub trusted_keys: Vec<PublicKey>,
    /// Key of pseudonyms, cursors and page tokens; the same as the consent and subscription
    /// services'.
    pub secret: Arc<[u8]>,
    pub store: StoreUrl,
    /// Connections to PostgreSQL at most (per replica).
    pub max_store_connections: usize,
    /// History is kept this many months (and readable no further back).
    pub retention_months: u32,
    /// Whether this process runs an indexer (a member of the indexer group).
    pub index: bool,
}

impl HistoryConfig {
    pub fn new(listen: SocketAddr, trusted_keys: Vec<PublicKey>, secret: Arc<[u8]>, store: StoreUrl) -> Self {
        Self {
            listen,
            trusted_keys,
            secret,
            store,
            max_store_connections: cardlink_history::postgres::DEFAULT_MAX_CONNECTIONS,
            retention_months: DEFAULT_RETENTION_MONTHS,
            index: true,
        }
    }
}

#[derive(Debug)]
pub struct RunningHistory {
    addr: SocketAddr,
    store: AnyStore,
    progress: watch::Receiver<Progress>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Stopped after the server, so its last answers are on the record.
    stop_access: watch::Sender<bool>,
    access: JoinHandle<()>,
}

impl RunningHistory {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// Where this replica's indexer stands (default if it runs none).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for task in self.tasks {
            cardlink_serving::join_within(task, cardlink_serving::SHUTDOWN_GRACE).await;
        }
        self.stop_access.send_replace(true);
        let _ = self.access.await;
    }
}

fn logged<E: std::fmt::Display + Send + 'static>(
    name: &'static str,
    task: JoinHandle<Result<(), E>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Ok(Err(e)) = task.await {
            tracing::error!(error = %e, task = name, "history background task stopped");
        }
    })
}

/// Starts the service; returns once the store is migrated and the views caught up.
pub async fn start(bus: &BusConfig, config: HistoryConfig) -> Result<RunningHistory, ServeError> {
    let (listener, addr) = cardlink_serving::bind(config.listen).await?;
    let store = AnyStore::open(&config.store, config.max_store_connections)
        .await
        .map_err(|e| ServeError::Config(format!("history store {:?}: {e}", config.store)))?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let AccessViews { registry, consents, tasks: [registry_task, consents_task] } =
        AccessViews::follow(bus, "history", &shutdown_rx).await?;

    let (progress_tx, progress) = watch::channel(Progress { lag: Some(0), caught_up: true, ..Progress::default() });
    let mut tasks = Vec::new();
    if config.index {
        progress_tx.send_replace(Progress::default());
        let consumer = Consumer::group_member(bus, indexer::GROUP)?;
        tasks.push(logged(
            "indexer",
            tokio::spawn(indexer::run(store.clone(), consumer, progress_tx, shutdown_rx.clone())),
        ));
    }
    let retention = crate::retention::run(
        store.clone(),
        config.retention_months,
        crate::retention::BATCH,
        crate::retention::EVERY,
        shutdown_rx.clone(),
    );
    tasks.push(tokio::spawn(async move {
        retention.await;
    }));

    let auth = Authenticator::new(TokenVerifier::new(config.trusted_keys.clone()), registry.clone());
    let access = AccessLog::default();
    let (stop_access, stop_access_rx) = watch::channel(false);
    let access_task = logged(
        "access records",
        tokio::spawn(cardlink_entitlement::access::run_flusher(
            access.clone(),
            consents.clone(),
            Producer::new(bus)?,
            stop_access_rx,
        )),
    );
    let history = History::new(
        store.clone(),
        consents.clone(),
        registry.clone(),
        Arc::clone(&config.secret),
        config.retention_months,
    )
    .with_access_log(access);
    let (ready_views, ready_progress) = ((registry.clone(), consents.clone()), progress.clone());
    let router = cardlink_serving::grpc_router(
        cardlink_serving::grpc_server(),
        Box::new(move || {
            let views = ready_views.0.is_fresh(cardlink_serving::READY_WITHIN)
                && ready_views.1.is_fresh(cardlink_serving::READY_WITHIN);
            views && ready_progress.borrow().lag.is_some_and(|lag| lag <= READY_MAX_LAG)
        }),
        shutdown_rx.clone(),
    )?;
    let server = tokio::spawn(async move {
        let served = router
            .add_service(InterceptedService::new(
                HistoryServer::new(HistoryGrpc { history })
                    .max_decoding_message_size(crate::grpc::MAX_REQUEST_BYTES)
                    .max_encoding_message_size(crate::grpc::MAX_RESPONSE_BYTES),
                AuthLayer::required(auth),
            ))
            .serve_with_incoming_shutdown(cardlink_serving::incoming(listener), cardlink_serving::stopped(shutdown_rx))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "history gRPC server failed");
        }
    });
    tracing::info!(%addr, store = ?config.store, index = config.index, "history service listening");
    tasks.extend([server, logged(registry_task.0, registry_task.1), logged(consents_task.0, consents_task.1)]);
    Ok(RunningHistory { addr, store, progress, shutdown, tasks, stop_access, access: access_task })
}
