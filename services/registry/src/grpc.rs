//! The gRPC face of the registry: translate, delegate, translate back. Callers are authenticated
//! by the [`cardlink_authn::AuthLayer`] the server wraps this in (optional: the transparency list
//! and the goal are public).

use cardlink_api::convert::{scope, scopes, timestamp};
use cardlink_api::status::{into_status, status};
use cardlink_api::v1::registry_server::Registry as RegistryApi;
use cardlink_api::{Reason, v1};
use cardlink_authn::caller;
use cardlink_events::registry::{
    AggregatorEntity, AggregatorStatus, ClientAuth, ConnectionEntity, ConnectionStatus, IssuerEntity, IssuerLogin,
};
use tonic::{Request, Response, Status};

use crate::goal::{self, PublishingActivity};
use crate::service::{IssuedCredential, Registry};

#[derive(Debug, Clone)]
pub struct RegistryGrpc {
    registry: Registry,
    activity: PublishingActivity,
}

impl RegistryGrpc {
    pub fn new(registry: Registry, activity: PublishingActivity) -> Self {
        Self { registry, activity }
    }
}

fn credential(c: IssuedCredential) -> v1::IssuedCredential {
    v1::IssuedCredential { credential_id: c.credential_id, token: c.token, expires_at: Some(timestamp(c.expires_at)) }
}

fn issuer(i: &IssuerEntity) -> v1::Issuer {
    v1::Issuer {
        issuer_id: i.issuer_id.clone(),
        name: i.name.clone(),
        annual_volume_jpy: i.annual_volume_jpy,
        publishing_live: false,
        login: i.login.as_ref().map(|l| v1::IssuerLogin {
            issuer_url: l.issuer_url.clone(),
            client_id: l.client_id.clone(),
            client_auth: match l.client_auth {
                ClientAuth::ClientSecretBasic => v1::ClientAuth::ClientSecretBasic,
                ClientAuth::PrivateKeyJwt => v1::ClientAuth::PrivateKeyJwt,
            } as i32,
            account_claim: l.account_claim.clone(),
        }),
    }
}

#[allow(clippy::result_large_err)]
fn issuer_login(l: v1::IssuerLogin) -> Result<IssuerLogin, Status> {
    let client_auth = match v1::ClientAuth::try_from(l.client_auth) {
        Ok(v1::ClientAuth::ClientSecretBasic) => ClientAuth::ClientSecretBasic,
        Ok(v1::ClientAuth::PrivateKeyJwt) => ClientAuth::PrivateKeyJwt,
        _ => {
            return Err(status(
                Reason::InvalidArgument,
                "login.client_auth must be CLIENT_SECRET_BASIC or PRIVATE_KEY_JWT",
            ));
        }
    };
    Ok(IssuerLogin { issuer_url: l.issuer_url, client_id: l.client_id, client_auth, account_claim: l.account_claim })
}

fn aggregator(a: &AggregatorEntity) -> v1::Aggregator {
    v1::Aggregator {
        aggregator_id: a.aggregator_id.clone(),
        name: a.name.clone(),
        registration_number: a.registration_number.clone(),
        contact: a.contact.clone(),
        status: match a.status {
            AggregatorStatus::Active => v1::AggregatorStatus::Active,
            AggregatorStatus::Suspended => v1::AggregatorStatus::Suspended,
        } as i32,
        redirect_uris: a.redirect_uris.clone(),
    }
}

fn connection(c: &ConnectionEntity) -> v1::Connection {
    v1::Connection {
        issuer_id: c.issuer_id.clone(),
        aggregator_id: c.aggregator_id.clone(),
        scopes: c.scopes.iter().map(|s| scope(*s) as i32).collect(),
        status: match c.status {
            ConnectionStatus::Active => v1::ConnectionStatus::Active,
            ConnectionStatus::Suspended => v1::ConnectionStatus::Suspended,
        } as i32,
        updated_at: None,
    }
}

#[tonic::async_trait]
impl RegistryApi for RegistryGrpc {
    async fn register_issuer(
        &self,
        request: Request<v1::RegisterIssuerRequest>,
    ) -> Result<Response<v1::RegisterIssuerResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let entity =
            IssuerEntity { issuer_id: r.issuer_id, name: r.name, annual_volume_jpy: r.annual_volume_jpy, login: None };
        let (i, c) = self.registry.register_issuer(&caller, entity).await.map_err(into_status)?;
        Ok(Response::new(v1::RegisterIssuerResponse { issuer: Some(issuer(&i)), credential: Some(credential(c)) }))
    }

    async fn register_aggregator(
        &self,
        request: Request<v1::RegisterAggregatorRequest>,
    ) -> Result<Response<v1::RegisterAggregatorResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let entity = AggregatorEntity {
            aggregator_id: r.aggregator_id,
            name: r.name,
            registration_number: r.registration_number,
            contact: r.contact,
            status: AggregatorStatus::Active,
            redirect_uris: r.redirect_uris,
        };
        let (a, c) = self.registry.register_aggregator(&caller, entity).await.map_err(into_status)?;
        Ok(Response::new(v1::RegisterAggregatorResponse {
            aggregator: Some(aggregator(&a)),
            credential: Some(credential(c)),
        }))
    }

    async fn set_redirect_uris(
        &self,
        request: Request<v1::SetRedirectUrisRequest>,
    ) -> Result<Response<v1::Aggregator>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let a =
            self.registry.set_redirect_uris(&caller, &r.aggregator_id, r.redirect_uris).await.map_err(into_status)?;
        Ok(Response::new(aggregator(&a)))
    }

    async fn set_issuer_login(
        &self,
        request: Request<v1::SetIssuerLoginRequest>,
    ) -> Result<Response<v1::Issuer>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let login = issuer_login(r.login.ok_or_else(|| status(Reason::InvalidArgument, "login is required"))?)?;
        let i = self.registry.set_issuer_login(&caller, &r.issuer_id, login).await.map_err(into_status)?;
        Ok(Response::new(issuer(&i)))
    }

    async fn set_aggregator_status(
        &self,
        request: Request<v1::SetAggregatorStatusRequest>,
    ) -> Result<Response<v1::Aggregator>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let status_value = match v1::AggregatorStatus::try_from(r.status) {
            Ok(v1::AggregatorStatus::Active) => AggregatorStatus::Active,
            Ok(v1::AggregatorStatus::Suspended) => AggregatorStatus::Suspended,
            _ => return Err(status(Reason::InvalidArgument, "status must be ACTIVE or SUSPENDED")),
        };
        let a =
            self.registry.set_aggregator_status(&caller, &r.aggregator_id, status_value).await.map_err(into_status)?;
        Ok(Response::new(aggregator(&a)))
    }

    async fn enable_connection(
        &self,
        request: Request<v1::EnableConnectionRequest>,
    ) -> Result<Response<v1::Connection>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let scopes = scopes(&r.scopes).map_err(into_status)?;
        let c = self
            .registry
            .enable_connection(&caller, &r.issuer_id, &r.aggregator_id, scopes)
            .await
            .map_err(into_status)?;
        Ok(Response::new(connection(&c)))
    }

    async fn suspend_connection(
        &self,
        request: Request<v1::SuspendConnectionRequest>,
    ) -> Result<Response<v1::Connection>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let c = self
            .registry
            .suspend_connection(&caller, &r.issuer_id, &r.aggregator_id, &r.reason)
            .await
            .map_err(into_status)?;
        Ok(Response::new(connection(&c)))
    }

    /// Public: the transparency list needs no credential.
    async fn list_connections(
        &self,
        request: Request<v1::ListConnectionsRequest>,
    ) -> Result<Response<v1::ListConnectionsResponse>, Status> {
        let r = request.into_inner();
        let issuer_id = (!r.issuer_id.is_empty()).then_some(r.issuer_id.as_str());
        let connections = self.registry.list_connections(issuer_id, r.active_only).iter().map(connection).collect();
        Ok(Response::new(v1::ListConnectionsResponse { connections }))
    }

    async fn rotate_credential(
        &self,
        request: Request<v1::RotateCredentialRequest>,
    ) -> Result<Response<v1::IssuedCredential>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let c = self.registry.rotate_credential(&caller, &r.participant_id).await.map_err(into_status)?;
        Ok(Response::new(credential(c)))
    }

    /// Public: anyone may follow the goal.
    async fn get_goal(&self, _request: Request<v1::GetGoalRequest>) -> Result<Response<v1::Goal>, Status> {
        let g = self.registry.view().read(|v| goal::compute(v, &self.activity, chrono::Utc::now()));
        Ok(Response::new(v1::Goal {
            total_volume_jpy: g.total_volume_jpy,
            connected_volume_jpy: g.connected_volume_jpy,
            share: g.share,
            target_share: goal::TARGET_SHARE,
            issuers: g
                .issuers
                .into_iter()
                .map(|i| v1::IssuerProgress {
                    issuer_id: i.issuer_id,
                    name: i.name,
                    annual_volume_jpy: i.annual_volume_jpy,
                    publishing_live: i.publishing_live,
                    active_connections: i.active_connections,
                    counts_toward_goal: i.counts,
                    last_published_at: i.last_published_at.map(timestamp),
                })
                .collect(),
        }))
    }

    async fn revoke_credential(
        &self,
        request: Request<v1::RevokeCredentialRequest>,
    ) -> Result<Response<v1::RevokeCredentialResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        self.registry.revoke_credential(&caller, &r.credential_id).await.map_err(into_status)?;
        Ok(Response::new(v1::RevokeCredentialResponse {}))
    }
}
