//! The gRPC face of the consent service: translate, delegate, translate back. Callers are
//! authenticated by the [`cardlink_authn::AuthLayer`] the server wraps this in.

use std::sync::Arc;

use cardlink_api::convert::{self, scope, scopes, timestamp};
use cardlink_api::status::{into_status, status, to_status};
use cardlink_api::v1::consent_service_server::ConsentService;
use cardlink_api::{Reason, v1};
use cardlink_auth::Role;
use cardlink_authn::{Caller, caller, caller_as};
use cardlink_events::consent::ConsentEvent;
use cardlink_events::registry::Scope;
use cardlink_views::access::AccessHistory;
use cardlink_views::follow::Followed;
use tonic::{Request, Response, Status};

use crate::lifecycle::{Actor, ConsentError, NewRequest};
use crate::service::Consents;

#[derive(Debug, Clone)]
pub struct ConsentGrpc {
    consents: Consents,
    pseudonym_secret: Arc<[u8]>,
    access: Followed<AccessHistory>,
}

impl ConsentGrpc {
    pub fn new(consents: Consents, pseudonym_secret: Arc<[u8]>, access: Followed<AccessHistory>) -> Self {
        Self { consents, pseudonym_secret, access }
    }

    /// The consent as `caller` may see it: aggregators see their pseudonyms of the account ids,
    /// issuers (and members, through them) the issuer's own.
    fn to_proto(&self, c: &ConsentEvent, caller: &Caller) -> v1::Consent {
        if caller.role == Role::Aggregator {
            convert::consent(c, |account| {
                cardlink_auth::account_pseudonym(&self.pseudonym_secret, &c.aggregator_id, &c.issuer_id, account)
            })
        } else {
            convert::consent(c, str::to_owned)
        }
    }
}

fn actor(caller: &Caller) -> Actor {
    match caller.role {
        Role::Aggregator => Actor::Aggregator(caller.participant_id.clone()),
        Role::Issuer => Actor::Issuer(caller.participant_id.clone()),
        Role::Operator => Actor::Operator(caller.participant_id.clone()),
    }
}

#[tonic::async_trait]
impl ConsentService for ConsentGrpc {
    async fn create_consent_request(
        &self,
        request: Request<v1::CreateConsentRequestRequest>,
    ) -> Result<Response<v1::CreateConsentRequestResponse>, Status> {
        let caller = caller_as(&request, Role::Aggregator)?;
        let r = request.into_inner();
        if !r.code_challenge_method.is_empty() && r.code_challenge_method != "S256" {
            return Err(to_status(&ConsentError::InvalidChallenge));
        }
        let new = NewRequest {
            issuer_id: r.issuer_id,
            scopes: scopes(&r.scopes).map_err(into_status)?,
            duration_days: i32::try_from(r.duration_days).unwrap_or(i32::MAX),
            history_days: i32::try_from(r.history_days).unwrap_or(i32::MAX),
            purpose: r.purpose,
            redirect_uri: r.redirect_uri,
            code_challenge: r.code_challenge,
            state: (!r.state.is_empty()).then_some(r.state),
        };
        let (event, url) = self.consents.request(&caller.participant_id, new).await.map_err(into_status)?;
        Ok(Response::new(v1::CreateConsentRequestResponse {
            request_id: event.consent_id,
            authorization_url: url,
            expires_at: event.expires_at.map(timestamp),
        }))
    }

    async fn exchange_code(&self, request: Request<v1::ExchangeCodeRequest>) -> Result<Response<v1::Consent>, Status> {
        let caller = caller_as(&request, Role::Aggregator)?;
        let r = request.into_inner();
        let event = self
            .consents
            .exchange(&caller.participant_id, &r.code, &r.code_verifier, &r.redirect_uri)
            .await
            .map_err(into_status)?;
        Ok(Response::new(self.to_proto(&event, &caller)))
    }

    async fn get_consent(&self, request: Request<v1::GetConsentRequest>) -> Result<Response<v1::Consent>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().consent_id;
        let c = self.consents.get(&actor(&caller), &id).map_err(into_status)?;
        Ok(Response::new(self.to_proto(&c, &caller)))
    }

    async fn list_consents(
        &self,
        request: Request<v1::ListConsentsRequest>,
    ) -> Result<Response<v1::ListConsentsResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        // An issuer may list one member's consents: the member view, authenticated by the issuer.
        let who = match (&caller.role, r.member_ref.is_empty()) {
            (Role::Issuer, false) => {
                Actor::Member { issuer_id: caller.participant_id.clone(), member_ref: r.member_ref }
            }
            _ => actor(&caller),
        };
        let consents = self.consents.list(&who, r.active_only).iter().map(|c| self.to_proto(c, &caller)).collect();
        Ok(Response::new(v1::ListConsentsResponse { consents }))
    }

    async fn list_access_history(
        &self,
        request: Request<v1::ListAccessHistoryRequest>,
    ) -> Result<Response<v1::ListAccessHistoryResponse>, Status> {
        // The member's own view, which only their card company can vouch for.
        let caller = caller_as(&request, Role::Issuer)?;
        let member_ref = request.into_inner().member_ref;
        if member_ref.is_empty() {
            return Err(status(Reason::MemberRefRequired, "name the member (member_ref)"));
        }
        let entries = self
            .access
            .read(|h| h.of_member(&caller.participant_id, &member_ref))
            .into_iter()
            .map(|e| v1::AccessEntry {
                day: e.day.to_string(),
                aggregator_id: e.aggregator_id,
                consent_id: e.consent_id,
                data_item: Scope::from_name(&e.data_item).map_or(v1::Scope::Unspecified, scope) as i32,
                count: e.count,
                first_at: Some(timestamp(e.first_at)),
                last_at: Some(timestamp(e.last_at)),
            })
            .collect();
        Ok(Response::new(v1::ListAccessHistoryResponse { entries }))
    }

    async fn revoke_consent(
        &self,
        request: Request<v1::RevokeConsentRequest>,
    ) -> Result<Response<v1::Consent>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let event = self.consents.revoke(&actor(&caller), &r.consent_id).await.map_err(into_status)?;
        Ok(Response::new(self.to_proto(&event, &caller)))
    }
}
