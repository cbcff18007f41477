//! Running the consent service: views, the gRPC API, the consent page, and the expiry sweep.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cardlink_api::v1::consent_service_server::ConsentServiceServer;
use cardlink_auth::{PublicKey, TokenVerifier};
use cardlink_authn::{AuthLayer, Authenticator};
use cardlink_bus::{BusConfig, PolledConsumer, Producer, RecordRef, Topic};
use cardlink_events::consent::ConsentEvent;
use cardlink_views::access::AccessHistory;
use cardlink_views::follow::{self, Materialize};
use cardlink_views::registry::RegistryView;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

pub use cardlink_serving::ServeError;

use crate::grpc::ConsentGrpc;
use crate::lifecycle::ConsentBook;
use crate::login::{LoginSettings, RelyingParty};
use crate::pages::{self, PageState};
use crate::service::Consents;

/// How often consents and requests past their time are ended.
pub const EXPIRY_SWEEP: Duration = Duration::from_secs(5);

impl Materialize for ConsentBook {
    type Decoded = ConsentEvent;

    fn decode(record: &RecordRef<'_>) -> Option<ConsentEvent> {
        cardlink_events::decode_record(record.payload(), cardlink_events::RecordType::ConsentEvent).ok()
    }

    fn apply(&mut self, event: ConsentEvent, offset: i64) -> bool {
        self.apply_at(event, offset);
        true
    }
}

#[derive(Clone, Debug)]
pub struct ConsentConfig {
    pub grpc_listen: SocketAddr,
    /// Where the consent and member pages are served; `None`: not by this service (the caller
    /// serves [`RunningConsent::pages`] itself, as `cardlink dev` does, and must name
    /// `public_url`).
    pub http_listen: Option<SocketAddr>,
    /// The URL members' browsers reach the consent page at (default: `http://<http_listen>`).
    pub public_url: Option<String>,
    /// Platform keys that sign participant credentials.
    pub trusted_keys: Vec<PublicKey>,
    /// Key of the per-aggregator account pseudonyms, and of the consent page's tickets.
    pub secret: Arc<[u8]>,
    /// How the consent page authenticates at issuers' OpenID Providers.
    pub login: LoginSettings,
}

#[derive(Debug)]
pub struct RunningConsent {
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    pages: axum::Router,
    consents: Consents,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningConsent {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where this service serves its pages, if it does.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The consent and member pages, to serve beside other pages.
    pub fn pages(&self) -> axum::Router {
        self.pages.clone()
    }

    pub fn consents(&self) -> &Consents {
        &self.consents
    }

    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for task in self.tasks {
            cardlink_serving::join_within(task, cardlink_serving::SHUTDOWN_GRACE).await;
        }
    }
}

/// Starts the consent service; returns once its views caught up with their topics.
pub async fn start(bus: &BusConfig, config: ConsentConfig) -> Result<RunningConsent, ServeError> {
    let (grpc_listener, grpc_addr) = cardlink_serving::bind(config.grpc_listen).await?;
    let http = match config.http_listen {
        Some(at) => Some(cardlink_serving::bind(at).await?),
        None => None,
    };
    let http_addr = http.as_ref().map(|(_, addr)| *addr);
    let public_url = match (&config.public_url, http_addr) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(addr)) => format!("http://{addr}"),
        (None, None) => {
            return Err(ServeError::Config("the consent pages are served elsewhere: name their public URL".into()));
        }
    };
    let login = Arc::new(RelyingParty::new(&public_url, config.login.clone()).map_err(ServeError::Config)?);
    let (shutdown, shutdown_rx) = watch::channel(false);

    let (mut registry, registry_follower) = follow::spawn(
        PolledConsumer::new(bus, "consent-registry-view")?,
        Topic::Registry,
        RegistryView::new(),
        shutdown_rx.clone(),
    );
    let (mut book, book_follower) = follow::spawn(
        PolledConsumer::new(bus, "consent-book")?,
        Topic::Consents,
        ConsentBook::new(),
        shutdown_rx.clone(),
    );
    let (mut access, access_follower) = follow::spawn(
        PolledConsumer::new(bus, "consent-access-history")?,
        Topic::Audit,
        AccessHistory::new(),
        shutdown_rx.clone(),
    );
    registry.caught_up().await;
    book.caught_up().await;
    access.caught_up().await;
    for (name, lag) in [
        ("consent.registry", lag_of(&registry)),
        ("consent.consents", lag_of(&book)),
        ("consent.access_history", lag_of(&access)),
    ] {
        cardlink_telemetry::observe_view_lag(name, lag);
    }

    let ready_book = book.clone();
    let consents = Consents::new(Producer::new(bus)?, book, registry.clone(), &public_url);
    let auth = Authenticator::new(TokenVerifier::new(config.trusted_keys.clone()), registry.clone());

    let grpc = InterceptedService::new(
        ConsentServiceServer::new(ConsentGrpc::new(consents.clone(), Arc::clone(&config.secret), access.clone())),
        AuthLayer::required(auth),
    );
    let ready_registry = registry.clone();
    let router = cardlink_serving::grpc_router(
        cardlink_serving::grpc_server(),
        Box::new(move || {
            ready_registry.is_fresh(cardlink_serving::READY_WITHIN)
                && ready_book.is_fresh(cardlink_serving::READY_WITHIN)
        }),
        shutdown_rx.clone(),
    )?;
    let stop = shutdown_rx.clone();
    let grpc_task = tokio::spawn(async move {
        let served = router
            .add_service(grpc)
            .serve_with_incoming_shutdown(cardlink_serving::incoming(grpc_listener), cardlink_serving::stopped(stop))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "consent gRPC server failed");
        }
    });

    let pages = pages::router(PageState {
        consents: consents.clone(),
        login,
        secret: Arc::clone(&config.secret),
        access,
        secure: public_url.starts_with("https://"),
    });
    let mut tasks = vec![grpc_task];
    if let Some((listener, _)) = http {
        tasks.push(cardlink_serving::html::serve(listener, pages.clone(), shutdown_rx.clone(), "consent page server"));
    }

    let sweeper = consents.clone();
    let mut stop = shutdown_rx;
    let sweep_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(EXPIRY_SWEEP);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    match sweeper.expire_due().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(expired = n, "consents expired"),
                        Err(e) => tracing::warn!(error = %e, "expiry sweep failed; retrying"),
                    }
                    match sweeper.repair().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(repaired = n, "final consent states written again after a lost race"),
                        Err(e) => tracing::warn!(error = %e, "consent repair failed; retrying"),
                    }
                }
            }
        }
    });
    tracing::info!(%grpc_addr, http_addr = ?http_addr, %public_url, "consent service listening");
    // Awaited at shutdown so the followers' Kafka clients close before the caller goes on.
    let followers = tokio::spawn(async move {
        for (name, follower) in
            [("registry", registry_follower), ("consent", book_follower), ("access history", access_follower)]
        {
            if let Ok(Err(e)) = follower.await {
                tracing::error!(error = %e, view = name, "view follower stopped");
            }
        }
    });
    tasks.extend([sweep_task, followers]);
    Ok(RunningConsent { grpc_addr, http_addr, pages, consents, shutdown, tasks })
}

/// A view's lag, for the `cardlink.view.lag` gauge.
fn lag_of<V: Send + Sync + 'static>(
    view: &cardlink_views::follow::Followed<V>,
) -> Box<dyn Fn() -> Option<std::time::Duration> + Send + Sync> {
    let view = view.clone();
    Box::new(move || view.lag())
}
