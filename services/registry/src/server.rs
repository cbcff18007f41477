//! Running the registry: its view, the gRPC server, and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cardlink_api::v1::registry_server::RegistryServer;
use cardlink_auth::{TokenSigner, TokenVerifier};
use cardlink_authn::{AuthLayer, Authenticator};
use cardlink_bus::{BusConfig, Consumer, PolledConsumer, Producer, Topic};
use cardlink_views::follow::{self, Followed};
use cardlink_views::registry::RegistryView;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

pub use cardlink_serving::ServeError;

use crate::goal::PublishingActivity;
use crate::grpc::RegistryGrpc;
use crate::service::{DEFAULT_CREDENTIAL_TTL, Registry};

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub listen: SocketAddr,
    /// Where the public pages (`/transparency`, `/goal`) are served; `None`: not by this
    /// service (the caller may serve [`RunningRegistry::pages`] itself).
    pub http_listen: Option<SocketAddr>,
    pub credential_ttl: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            http_listen: None,
            credential_ttl: DEFAULT_CREDENTIAL_TTL,
        }
    }
}

/// A running registry service.
#[derive(Debug)]
pub struct RunningRegistry {
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    pages: axum::Router,
    registry: Registry,
    view: Followed<RegistryView>,
    public_key: cardlink_auth::PublicKey,
    shutdown: watch::Sender<bool>,
    /// Background readers, awaited at shutdown so their Kafka clients close before the caller
    /// goes on (e.g. stops an embedded broker).
    followers: Vec<JoinHandle<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningRegistry {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where this service serves its public pages, if it does.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The public pages, to serve beside other pages.
    pub fn pages(&self) -> axum::Router {
        self.pages.clone()
    }

    /// The registry's own logic, e.g. to bootstrap the first operator credential.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn view(&self) -> &Followed<RegistryView> {
        &self.view
    }

    /// The platform key other services trust credentials by.
    pub fn public_key(&self) -> &cardlink_auth::PublicKey {
        &self.public_key
    }

    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.shutdown.send_replace(true);
        for follower in self.followers {
            let _ = follower.await;
        }
        match cardlink_serving::join_within(self.server, cardlink_serving::SHUTDOWN_GRACE).await {
            Some(r) => Ok(r?),
            None => Err(ServeError::Task("the gRPC server did not stop within the grace period".into())),
        }
    }
}

/// Starts the registry service; returns once its view has caught up with the registry topic.
pub async fn start(
    bus: &BusConfig,
    config: RegistryConfig,
    signer: Arc<TokenSigner>,
) -> Result<RunningRegistry, ServeError> {
    let (listener, addr) = cardlink_serving::bind(config.listen).await?;
    let http = match config.http_listen {
        Some(at) => Some(cardlink_serving::bind(at).await?),
        None => None,
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (mut view, follower) = follow::spawn(
        PolledConsumer::new(bus, "registry-view")?,
        Topic::Registry,
        RegistryView::new(),
        shutdown_rx.clone(),
    );
    view.caught_up().await;

    let producer = Producer::new(bus)?;
    let registry = Registry::new(producer, view.clone(), Arc::clone(&signer), config.credential_ttl);
    let auth = Authenticator::new(TokenVerifier::new([signer.public_key()]), view.clone());
    let activity = PublishingActivity::default();
    let activity_consumer = Consumer::tailer(bus, "registry-publishing-activity")?;
    let activity_shutdown = shutdown_rx.clone();
    let activity_task = activity.clone();
    let activity_follower = tokio::spawn(async move {
        if let Err(e) = crate::goal::follow_activity(activity_consumer, activity_task, activity_shutdown).await {
            tracing::error!(error = %e, "following publishing activity stopped; the goal's live status is stale");
        }
    });
    crate::goal::observe_goal(view.clone(), activity.clone());
    let lag_view = view.clone();
    cardlink_telemetry::observe_view_lag("registry.registry", move || lag_view.lag());
    let pages = crate::pages::router(crate::pages::PageState { view: view.clone(), activity: activity.clone() });
    let http_addr = http.as_ref().map(|(_, a)| *a);
    let mut followers = Vec::new();
    if let Some((http_listener, http_addr)) = http {
        followers.push(cardlink_serving::html::serve(
            http_listener,
            pages.clone(),
            shutdown_rx.clone(),
            "registry pages",
        ));
        tracing::info!(%http_addr, "transparency and goal pages at /transparency, /goal");
    }
    let service = InterceptedService::new(
        RegistryServer::new(RegistryGrpc::new(registry.clone(), activity)),
        AuthLayer::optional(auth),
    );
    let ready_view = view.clone();
    let router = cardlink_serving::grpc_router(
        cardlink_serving::grpc_server(),
        Box::new(move || ready_view.is_fresh(cardlink_serving::READY_WITHIN)),
        shutdown_rx.clone(),
    )?;
    let stop = shutdown_rx;
    let server = tokio::spawn(async move {
        router
            .add_service(service)
            .serve_with_incoming_shutdown(cardlink_serving::incoming(listener), cardlink_serving::stopped(stop))
            .await
    });
    tracing::info!(%addr, "registry service listening");
    let follower = tokio::spawn(async move {
        if let Ok(Err(e)) = follower.await {
            tracing::error!(error = %e, "registry view follower stopped");
        }
    });
    followers.extend([follower, activity_follower]);
    Ok(RunningRegistry {
        addr,
        http_addr,
        pages,
        registry,
        view,
        public_key: signer.public_key(),
        shutdown,
        followers,
        server,
    })
}
