//! An aggregator's calls to cardlink over gRPC, each carrying its credential.

use cardlink_api::v1;
use cardlink_api::v1::consent_service_client::ConsentServiceClient;
use cardlink_api::v1::subscription_client::SubscriptionClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::ClientError;
use crate::pkce::Pkce;

/// What a consent request asks for.
#[derive(Clone, Debug)]
pub struct ConsentAsk {
    pub issuer_id: String,
    pub scopes: Vec<v1::Scope>,
    pub accounts_hint: String,
    pub duration_days: u32,
    /// Days before the grant the consent also covers (at most 730).
    pub history_days: u32,
    pub purpose: String,
    pub redirect_uri: String,
    pub state: String,
}

/// A created request: the URL to send the member to, and the verifier to keep for the exchange.
#[derive(Clone, Debug)]
pub struct Requested {
    pub request_id: String,
    pub authorization_url: String,
    pub pkce: Pkce,
}

/// An aggregator's connection to the consent and subscription services.
#[derive(Clone, Debug)]
pub struct Aggregator {
    consent: ConsentServiceClient<Channel>,
    subscription: SubscriptionClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

/// A channel that connects on first use (and reconnects after a restart of the service), so a
/// command needs only the services it calls.
pub(crate) fn channel(endpoint: &str) -> Result<Channel, ClientError> {
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| ClientError::Connect { endpoint: endpoint.to_owned(), message: e.to_string() })?
        .connect_timeout(std::time::Duration::from_secs(10));
    Ok(endpoint.connect_lazy())
}

impl Aggregator {
    /// Connects to both services; `token` is the aggregator's credential from the registry.
    pub fn connect(consent_endpoint: &str, subscription_endpoint: &str, token: &str) -> Result<Self, ClientError> {
        let authorization = format!("Bearer {}", token.trim()).parse().map_err(|_| ClientError::BadCredential)?;
        Ok(Self {
            consent: ConsentServiceClient::new(channel(consent_endpoint)?),
            subscription: SubscriptionClient::new(channel(subscription_endpoint)?),
            authorization,
        })
    }

    fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.authorization.clone());
        request
    }

    /// Creates a consent request with a fresh PKCE verifier.
    pub async fn request_consent(&mut self, ask: &ConsentAsk) -> Result<Requested, ClientError> {
        let pkce = Pkce::generate();
        let message = v1::CreateConsentRequestRequest {
            issuer_id: ask.issuer_id.clone(),
            scopes: ask.scopes.iter().map(|s| *s as i32).collect(),
            accounts_hint: ask.accounts_hint.clone(),
            duration_days: ask.duration_days,
            history_days: ask.history_days,
            purpose: ask.purpose.clone(),
            redirect_uri: ask.redirect_uri.clone(),
            code_challenge: pkce.challenge.clone(),
            code_challenge_method: "S256".into(),
            state: ask.state.clone(),
        };
        let response = self.consent.create_consent_request(self.authorized(message)).await?.into_inner();
        Ok(Requested { request_id: response.request_id, authorization_url: response.authorization_url, pkce })
    }

    /// Exchanges the one-time code the member's browser brought back for the consent.
    pub async fn exchange(
        &mut self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<v1::Consent, ClientError> {
        let message = v1::ExchangeCodeRequest {
            code: code.to_owned(),
            code_verifier: verifier.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
        };
        Ok(self.consent.exchange_code(self.authorized(message)).await?.into_inner())
    }

    /// This aggregator's consents.
    pub async fn consents(&mut self, active_only: bool) -> Result<Vec<v1::Consent>, ClientError> {
        let message = v1::ListConsentsRequest { active_only, ..Default::default() };
        Ok(self.consent.list_consents(self.authorized(message)).await?.into_inner().consents)
    }

    /// Revokes one of this aggregator's consents (the member asked the app to stop).
    pub async fn revoke(&mut self, consent_id: &str, reason: &str) -> Result<v1::Consent, ClientError> {
        let message = v1::RevokeConsentRequest { consent_id: consent_id.to_owned(), reason: reason.to_owned() };
        Ok(self.consent.revoke_consent(self.authorized(message)).await?.into_inner())
    }

    /// Opens a stream.
    pub async fn subscribe(
        &mut self,
        request: v1::SubscribeRequest,
    ) -> Result<tonic::Streaming<v1::SubscribeResponse>, ClientError> {
        Ok(self.subscription.subscribe(self.authorized(request)).await?.into_inner())
    }

    /// Saves `cursor` as the named position `name` on the server.
    pub async fn acknowledge(&mut self, name: &str, cursor: &str) -> Result<(), ClientError> {
        let message = v1::AcknowledgeRequest { position_name: name.to_owned(), cursor: cursor.to_owned() };
        self.subscription.acknowledge(self.authorized(message)).await?;
        Ok(())
    }
}
