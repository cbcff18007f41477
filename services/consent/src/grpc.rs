//! The gRPC face of the consent service.

use std::sync::Arc;

use cardlink_api::convert::timestamp;
use cardlink_api::status::status;
use cardlink_api::v1;
use cardlink_api::v1::consent_service_server::ConsentService;
use cardlink_auth::Role;
use cardlink_events::consent::{ConsentEvent, ConsentStatus};
use cardlink_events::registry::Scope;
use cardlink_registry::caller::{Caller, CallerAuth};
use cardlink_registry::grpc::{scope_to_proto, scopes_from_proto};
use cardlink_views::access::AccessHistory;
use cardlink_views::follow::Followed;
use tonic::{Code, Request, Response, Status};

use crate::lifecycle::{Actor, ConsentError, NewRequest};
use crate::service::{Consents, ServiceError};

#[derive(Debug, Clone)]
pub struct ConsentGrpc {
    consents: Consents,
    auth: CallerAuth,
    pseudonym_secret: Arc<[u8]>,
    access: Followed<AccessHistory>,
}

impl ConsentGrpc {
    pub fn new(
        consents: Consents,
        auth: CallerAuth,
        pseudonym_secret: Arc<[u8]>,
        access: Followed<AccessHistory>,
    ) -> Self {
        Self { consents, auth, pseudonym_secret, access }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        self.auth.authenticate(header).map_err(|e| status(Code::Unauthenticated, e.reason(), e.to_string()))
    }

    /// The consent as `caller` may see it: aggregators see pseudonymous account ids.
    fn to_proto(&self, c: &ConsentEvent, caller: &Caller) -> v1::Consent {
        let secret = (caller.role == Role::Aggregator).then_some(&*self.pseudonym_secret);
        consent_message(c, secret)
    }
}

/// A consent as a protobuf message. With `pseudonym_secret`, account ids are the aggregator's
/// pseudonyms (what aggregators see); without, the issuer's own (what issuers and members see).
pub fn consent_message(c: &ConsentEvent, pseudonym_secret: Option<&[u8]>) -> v1::Consent {
    let account_refs = match pseudonym_secret {
        Some(secret) => c
            .account_refs
            .iter()
            .map(|a| cardlink_auth::account_pseudonym(secret, &c.aggregator_id, &c.issuer_id, a))
            .collect(),
        None => c.account_refs.clone(),
    };
    v1::Consent {
        consent_id: c.consent_id.clone(),
        issuer_id: c.issuer_id.clone(),
        aggregator_id: c.aggregator_id.clone(),
        scopes: c.scopes.iter().map(|s| scope_to_proto(*s) as i32).collect(),
        account_refs,
        status: match c.status {
            ConsentStatus::Requested => v1::ConsentStatus::Requested,
            ConsentStatus::Active => v1::ConsentStatus::Active,
            ConsentStatus::Denied => v1::ConsentStatus::Denied,
            ConsentStatus::Revoked => v1::ConsentStatus::Revoked,
            ConsentStatus::Expired => v1::ConsentStatus::Expired,
        } as i32,
        purpose: c.purpose.clone(),
        granted_at: c.granted_at.map(timestamp),
        expires_at: c.expires_at.map(timestamp),
        revoked_at: c.ended_at.filter(|_| c.status == ConsentStatus::Revoked).map(timestamp),
        data_from: c.granted_at.map(timestamp),
    }
}

fn actor(caller: &Caller) -> Actor {
    match caller.role {
        Role::Aggregator => Actor::Aggregator(caller.participant_id.clone()),
        Role::Issuer => Actor::Issuer(caller.participant_id.clone()),
        Role::Operator => Actor::Operator(caller.participant_id.clone()),
    }
}

pub fn consent_status(e: &ConsentError) -> Status {
    let code = match e {
        ConsentError::NotFound => Code::NotFound,
        ConsentError::NotYours => Code::PermissionDenied,
        ConsentError::NotConnected { .. } | ConsentError::ScopeNotConnected(_) => Code::FailedPrecondition,
        ConsentError::WrongState(_) => Code::FailedPrecondition,
        ConsentError::InvalidCode | ConsentError::PkceMismatch | ConsentError::RedirectMismatch => {
            Code::PermissionDenied
        }
        _ => Code::InvalidArgument,
    };
    status(code, e.reason(), e.to_string())
}

fn service_status(e: ServiceError) -> Status {
    match e {
        ServiceError::Consent(c) => consent_status(&c),
        ServiceError::Bus(b) => status(Code::Unavailable, "BUS_UNAVAILABLE", b.to_string()),
        ServiceError::NotConfirmed => {
            status(Code::Unavailable, "NOT_CONFIRMED", ServiceError::NotConfirmed.to_string())
        }
    }
}

fn require_aggregator(caller: &Caller) -> Result<(), Status> {
    if caller.role == Role::Aggregator {
        Ok(())
    } else {
        Err(status(Code::PermissionDenied, "AGGREGATORS_ONLY", "only an aggregator can do this"))
    }
}

#[tonic::async_trait]
impl ConsentService for ConsentGrpc {
    async fn create_consent_request(
        &self,
        request: Request<v1::CreateConsentRequestRequest>,
    ) -> Result<Response<v1::CreateConsentRequestResponse>, Status> {
        let caller = self.caller(&request)?;
        require_aggregator(&caller)?;
        let r = request.into_inner();
        if !r.code_challenge_method.is_empty() && r.code_challenge_method != "S256" {
            return Err(consent_status(&ConsentError::InvalidChallenge));
        }
        let new = NewRequest {
            issuer_id: r.issuer_id,
            scopes: scopes_from_proto(&r.scopes)?,
            duration_days: i32::try_from(r.duration_days).unwrap_or(i32::MAX),
            purpose: r.purpose,
            redirect_uri: r.redirect_uri,
            code_challenge: r.code_challenge,
            state: (!r.state.is_empty()).then_some(r.state),
        };
        let (event, url) = self.consents.request(&caller.participant_id, new).await.map_err(service_status)?;
        Ok(Response::new(v1::CreateConsentRequestResponse {
            request_id: event.consent_id,
            authorization_url: url,
            expires_at: event.expires_at.map(timestamp),
        }))
    }

    async fn exchange_code(&self, request: Request<v1::ExchangeCodeRequest>) -> Result<Response<v1::Consent>, Status> {
        let caller = self.caller(&request)?;
        require_aggregator(&caller)?;
        let r = request.into_inner();
        let event = self
            .consents
            .exchange(&caller.participant_id, &r.code, &r.code_verifier, &r.redirect_uri)
            .await
            .map_err(service_status)?;
        Ok(Response::new(self.to_proto(&event, &caller)))
    }

    async fn get_consent(&self, request: Request<v1::GetConsentRequest>) -> Result<Response<v1::Consent>, Status> {
        let caller = self.caller(&request)?;
        let id = request.into_inner().consent_id;
        let c = self.consents.get(&actor(&caller), &id).map_err(|e| consent_status(&e))?;
        Ok(Response::new(self.to_proto(&c, &caller)))
    }

    async fn list_consents(
        &self,
        request: Request<v1::ListConsentsRequest>,
    ) -> Result<Response<v1::ListConsentsResponse>, Status> {
        let caller = self.caller(&request)?;
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
        let caller = self.caller(&request)?;
        let member_ref = request.into_inner().member_ref;
        // The member's own view, which only their card company can vouch for.
        if caller.role != Role::Issuer {
            return Err(status(
                Code::PermissionDenied,
                "ISSUERS_ONLY",
                "a member's access history is read through their card company",
            ));
        }
        if member_ref.is_empty() {
            return Err(status(Code::InvalidArgument, "MEMBER_REF_REQUIRED", "name the member (member_ref)"));
        }
        let entries = self
            .access
            .read(|h| h.of_member(&caller.participant_id, &member_ref))
            .into_iter()
            .map(|e| v1::AccessEntry {
                day: e.day.to_string(),
                aggregator_id: e.aggregator_id,
                consent_id: e.consent_id,
                data_item: Scope::from_name(&e.data_item).map_or(v1::Scope::Unspecified, scope_to_proto) as i32,
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
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let event = self.consents.revoke(&actor(&caller), &r.consent_id).await.map_err(service_status)?;
        Ok(Response::new(self.to_proto(&event, &caller)))
    }
}
