//! Member sign-in at the issuer: the consent page is an OpenID Connect relying party of each
//! issuer's OpenID Provider.
//!
//! A member who is about to consent (or to see and revoke their consents) is sent to their card
//! company's own login with an authorization code request (PKCE S256, `state`, `nonce`). The
//! provider sends the browser back to `<public URL>/oidc/callback`; [`RelyingParty::finish`]
//! exchanges the code, verifies the ID token against the provider's published keys (`iss`, `aud`,
//! `exp`, `nonce`, signature; asymmetric algorithms only) and reads the member's identity (`sub`)
//! and card accounts (the claim the issuer registered, from the ID token or else from userinfo).
//! cardlink never sees a member's password.
//!
//! Each issuer's provider comes from the registry ([`IssuerLogin`]), so a change takes effect at
//! the next sign-in. Discovery documents and keys are cached for [`METADATA_TTL`] and fetched
//! again when an ID token names a key the cache does not hold (such fetches at most once per
//! [`MIN_REFRESH`], so forged key ids cannot make cardlink hammer a provider). Nothing secret is
//! on the bus: a client secret is read from the consent service's own configuration at each
//! exchange ([`ClientSecrets`]), and `private_key_jwt` assertions are signed with its client key.

pub mod accounts;
mod session;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cardlink_api::{ApiError, Reason};
use cardlink_auth::TokenSigner;
use cardlink_events::registry::{ClientAuth, IssuerLogin};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AuthType, AuthorizationCode, ClaimsVerificationError, Client, ClientId,
    ClientSecret, CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields,
    IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError, StandardErrorResponse, StandardTokenResponse, TokenResponse as _,
};
use serde::{Deserialize, Serialize};

pub use session::{Pending, Purpose, SESSION_COOKIE, SIGN_IN_TTL_SECS};

/// How long a provider's discovery document and keys are used before they are fetched again.
pub const METADATA_TTL: Duration = Duration::from_secs(3600);
/// The shortest time between two fetches for one provider asked for by unknown key ids, whatever
/// ID tokens claim.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// How long a call to a provider may take.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// The path providers send members back to.
pub const CALLBACK_PATH: &str = "/oidc/callback";
/// Where the consent service publishes the public key of its `private_key_jwt` client key.
pub const JWKS_PATH: &str = "/oidc/jwks.json";
/// How long a `private_key_jwt` client assertion is valid.
const ASSERTION_TTL_SECS: i64 = 60;

/// ID token signature algorithms accepted: asymmetric only (never `none`, never a MAC keyed
/// with the client secret).
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 10] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EcdsaP521Sha512,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// A member as their card company signed them in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub issuer_id: String,
    /// The provider's `sub`.
    pub member_ref: String,
    pub display_name: String,
    /// (account_ref, label shown to the member, e.g. "ゴールドカード ****0042").
    pub accounts: Vec<(String, String)>,
}

/// Where the consent service finds its client secrets (for `CLIENT_SECRET_BASIC` providers).
#[derive(Clone, Debug, Default)]
pub enum ClientSecrets {
    /// One file per issuer id in this directory (a mounted Kubernetes Secret). Read at each
    /// exchange, so a rotated secret takes effect without a restart.
    Dir(PathBuf),
    /// Fixed secrets by issuer id (development, tests).
    Fixed(Arc<HashMap<String, String>>),
    #[default]
    None,
}

impl ClientSecrets {
    async fn get(&self, issuer_id: &str) -> Option<String> {
        match self {
            // Issuer ids are `[a-z0-9-]` (the registry checks), so the name cannot leave `dir`.
            Self::Dir(dir) if cardlink_events::registry::is_plain_id(issuer_id) => {
                let text = tokio::fs::read_to_string(dir.join(issuer_id)).await.ok()?;
                Some(text.trim().to_owned()).filter(|s| !s.is_empty())
            }
            Self::Dir(_) | Self::None => None,
            Self::Fixed(map) => map.get(issuer_id).cloned(),
        }
    }
}

/// How the consent service authenticates at providers' token endpoints.
#[derive(Clone, Debug, Default)]
pub struct LoginSettings {
    pub client_secrets: ClientSecrets,
    /// Signs `private_key_jwt` assertions; its public key is served at [`JWKS_PATH`].
    pub client_key: Option<Arc<TokenSigner>>,
}

/// Why a sign-in did not end with a member. Each is a page for the member and an audit record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("sign-in is not set up: {0}")]
    NotConfigured(String),
    #[error("the issuer's OpenID Provider is unavailable: {0}")]
    ProviderUnavailable(String),
    #[error("the member cancelled, or the provider refused: {0}")]
    Cancelled(String),
    #[error("{0}")]
    Session(&'static str),
    #[error("the ID token or code was rejected: {0}")]
    Token(String),
    #[error("this sign-in was already used")]
    Replayed,
    #[error("the provider names no card accounts of the member in claim `{0}`")]
    NoAccounts(String),
}

impl ApiError for LoginError {
    fn reason(&self) -> Reason {
        match self {
            Self::NotConfigured(_) => Reason::LoginNotConfigured,
            Self::ProviderUnavailable(_) => Reason::LoginProviderUnavailable,
            Self::Cancelled(_) => Reason::LoginCancelled,
            Self::Session(_) => Reason::LoginSessionInvalid,
            Self::Token(_) => Reason::LoginTokenRejected,
            Self::Replayed => Reason::LoginReplayed,
            Self::NoAccounts(_) => Reason::MemberWithoutAccounts,
        }
    }
}

impl LoginError {
    /// What the member reads (the page is in Japanese; the details are in the audit record).
    pub fn page_message(&self) -> &'static str {
        match self {
            Self::NotConfigured(_) => "このカード会社のログインはまだ cardlink に接続されていません。",
            Self::ProviderUnavailable(_) => {
                "カード会社のログインに接続できませんでした。しばらくしてからもう一度お試しください。"
            }
            Self::Cancelled(_) => "カード会社でのログインが取り消されました。同意は行われていません。",
            Self::Session(_) => {
                "ログインの有効期限が切れたか、別の画面から開始されました。最初からやり直してください。"
            }
            Self::Token(_) => "カード会社からの本人確認を検証できませんでした。同意は行われていません。",
            Self::Replayed => "このログインはすでに使用されています。最初からやり直してください。",
            Self::NoAccounts(_) => "このログインで提供できるカードが見つかりませんでした。",
        }
    }
}

/// Claims beyond the standard ones, kept as JSON: the account claim's name is configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    claims: serde_json::Map<String, serde_json::Value>,
}

impl AdditionalClaims for ExtraClaims {}

type IdTokenFieldsX = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type TokenResponseX = StandardTokenResponse<IdTokenFieldsX, CoreTokenType>;
type RpClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponseX,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

#[derive(Clone, Debug)]
struct Discovered {
    login: IssuerLogin,
    metadata: CoreProviderMetadata,
    fetched: Instant,
    /// The last fetch asked for by an unknown key id.
    refreshed: Option<Instant>,
}

/// The consent page's side of OpenID Connect.
#[derive(Debug)]
pub struct RelyingParty {
    http: openidconnect::reqwest::Client,
    redirect: RedirectUrl,
    settings: LoginSettings,
    /// By issuer id; one entry per registered issuer at most.
    providers: Mutex<HashMap<String, Discovered>>,
    nonces: Mutex<session::UsedNonces>,
}

impl RelyingParty {
    /// A relying party whose members come back to `<public_url>/oidc/callback`.
    pub fn new(public_url: &str, settings: LoginSettings) -> Result<Self, String> {
        let redirect = RedirectUrl::new(format!("{}{CALLBACK_PATH}", public_url.trim_end_matches('/')))
            .map_err(|e| format!("public URL {public_url}: {e}"))?;
        let http = openidconnect::reqwest::Client::builder()
            // Following redirects would let a provider's answer point cardlink anywhere.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .connect_timeout(PROVIDER_TIMEOUT)
            .timeout(PROVIDER_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            http,
            redirect,
            settings,
            providers: Mutex::default(),
            nonces: Mutex::new(session::UsedNonces::default()),
        })
    }

    /// The redirect URI to register at providers.
    pub fn redirect_uri(&self) -> &str {
        self.redirect.as_str()
    }

    /// The JWKS with the public key of the `private_key_jwt` client key (empty without one).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self.settings.client_key.iter().map(|k| k.public_jwk()).collect();
        serde_json::json!({ "keys": keys })
    }

    /// The provider's metadata and keys: cached, or discovered. `refresh` asks for a new fetch
    /// (an ID token names a key the cache does not hold), granted once per [`MIN_REFRESH`].
    async fn provider(
        &self,
        issuer_id: &str,
        login: &IssuerLogin,
        refresh: bool,
    ) -> Result<CoreProviderMetadata, LoginError> {
        let cached = self.providers.lock().unwrap_or_else(PoisonError::into_inner).get(issuer_id).cloned();
        let cached = cached.filter(|d| d.login == *login);
        if let Some(d) = &cached {
            let refused = d.refreshed.is_some_and(|at| at.elapsed() < MIN_REFRESH);
            if (!refresh && d.fetched.elapsed() < METADATA_TTL) || (refresh && refused) {
                return Ok(d.metadata.clone());
            }
        }
        let issuer = IssuerUrl::new(login.issuer_url.clone())
            .map_err(|e| LoginError::NotConfigured(format!("issuer URL {}: {e}", login.issuer_url)))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| LoginError::ProviderUnavailable(format!("{}: {}", login.issuer_url, error_chain(&e))))?;
        let now = Instant::now();
        let refreshed = if refresh { Some(now) } else { cached.and_then(|d| d.refreshed) };
        let entry = Discovered { login: login.clone(), metadata: metadata.clone(), fetched: now, refreshed };
        self.providers.lock().unwrap_or_else(PoisonError::into_inner).insert(issuer_id.to_owned(), entry);
        Ok(metadata)
    }

    fn client(&self, metadata: CoreProviderMetadata, login: &IssuerLogin, secret: Option<String>) -> RpClient {
        RpClient::from_provider_metadata(
            metadata,
            ClientId::new(login.client_id.clone()),
            secret.map(ClientSecret::new),
        )
        .set_redirect_uri(self.redirect.clone())
        .set_auth_type(AuthType::BasicAuth)
    }

    /// Starts a sign-in at `issuer_id`'s provider: the URL to send the browser to, and what the
    /// callback needs (kept in the browser's session cookie).
    pub async fn begin(
        &self,
        issuer_id: &str,
        login: &IssuerLogin,
        purpose: Purpose,
    ) -> Result<(String, Pending), LoginError> {
        let metadata = self.provider(issuer_id, login, false).await?;
        let client = self.client(metadata, login, None);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
            .add_scope(Scope::new("profile".to_owned()))
            .set_pkce_challenge(challenge)
            .url();
        let pending = Pending::new(issuer_id, purpose, state.secret(), nonce.secret(), verifier.secret());
        Ok((url.to_string(), pending))
    }

    /// Ends a sign-in: exchanges `code`, verifies the ID token, and reads the member.
    pub async fn finish(&self, login: &IssuerLogin, pending: &Pending, code: &str) -> Result<Member, LoginError> {
        let issuer_id = pending.issuer_id.as_str();
        let secret = match login.client_auth {
            ClientAuth::ClientSecretBasic => {
                Some(self.settings.client_secrets.get(issuer_id).await.ok_or_else(|| {
                    LoginError::NotConfigured(format!(
                        "no client secret for {issuer_id} in the consent service's configuration"
                    ))
                })?)
            }
            ClientAuth::PrivateKeyJwt => None,
        };
        let metadata = self.provider(issuer_id, login, false).await?;
        let client = self.client(metadata.clone(), login, secret.clone());
        let mut request = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| LoginError::ProviderUnavailable(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()));
        if login.client_auth == ClientAuth::PrivateKeyJwt {
            let key = self.settings.client_key.as_ref().ok_or_else(|| {
                LoginError::NotConfigured("the consent service has no client key for private_key_jwt".into())
            })?;
            let audience = metadata.token_endpoint().map(|u| u.to_string()).unwrap_or_default();
            let now = chrono::Utc::now().timestamp();
            let assertion = key.sign_jwt(&serde_json::json!({
                "iss": login.client_id, "sub": login.client_id, "aud": audience,
                "jti": uuid::Uuid::new_v4().to_string(), "iat": now, "exp": now + ASSERTION_TTL_SECS,
            }));
            request = request
                .add_extra_param("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                .add_extra_param("client_assertion", assertion);
        }
        let token = request.request_async(&self.http).await.map_err(token_error)?;
        let id_token = token.id_token().ok_or_else(|| LoginError::Token("the provider returned no ID token".into()))?;
        let nonce = Nonce::new(pending.nonce.clone());

        // A key id the cached keys do not hold: the provider rotated; fetch its keys once more.
        let mut client = client;
        let claims = match verify(&client, id_token, &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey)) => {
                client = self.client(self.provider(issuer_id, login, true).await?, login, secret);
                verify(&client, id_token, &nonce)
            }
            other => other,
        }
        .map_err(|e| LoginError::Token(error_chain(&e)))?;
        if let Some(expected) = claims.access_token_hash() {
            let verifier = client.id_token_verifier();
            let alg = id_token.signing_alg().map_err(|e| LoginError::Token(e.to_string()))?;
            let key = id_token.signing_key(&verifier).map_err(|e| LoginError::Token(e.to_string()))?;
            let actual = AccessTokenHash::from_token(token.access_token(), alg, key)
                .map_err(|e| LoginError::Token(e.to_string()))?;
            if actual != *expected {
                return Err(LoginError::Token("at_hash does not match the access token".into()));
            }
        }
        if !self.nonces.lock().unwrap_or_else(PoisonError::into_inner).first_use(&pending.nonce, pending.expires_at) {
            return Err(LoginError::Replayed);
        }

        let member_ref = claims.subject().as_str().to_owned();
        let id_token_name = claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned());
        let (accounts, userinfo_name) =
            match accounts::from_claims(&claims.additional_claims().claims, &login.account_claim)? {
                Some(accounts) => (accounts, None),
                // Providers release profile claims through userinfo in the code flow (OpenID
                // Connect Core 5.4): ask there.
                None => {
                    let info: openidconnect::UserInfoClaims<ExtraClaims, CoreGenderClaim> = client
                        .user_info(token.access_token().clone(), Some(claims.subject().clone()))
                        .map_err(|_| LoginError::NoAccounts(login.account_claim.clone()))?
                        .request_async(&self.http)
                        .await
                        .map_err(|e| LoginError::ProviderUnavailable(format!("userinfo: {}", error_chain(&e))))?;
                    let accounts = accounts::from_claims(&info.additional_claims().claims, &login.account_claim)?
                        .ok_or_else(|| LoginError::NoAccounts(login.account_claim.clone()))?;
                    (accounts, info.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()))
                }
            };
        let display_name = id_token_name.or(userinfo_name).unwrap_or_else(|| member_ref.clone());
        if accounts.is_empty() {
            return Err(LoginError::NoAccounts(login.account_claim.clone()));
        }
        Ok(Member { issuer_id: issuer_id.to_owned(), member_ref, display_name, accounts })
    }
}

fn verify<'t>(
    client: &RpClient,
    id_token: &'t openidconnect::IdToken<
        ExtraClaims,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    nonce: &Nonce,
) -> Result<&'t openidconnect::IdTokenClaims<ExtraClaims, CoreGenderClaim>, ClaimsVerificationError> {
    let verifier = client.id_token_verifier().set_allowed_algs(ALLOWED_ALGS);
    id_token.claims(&verifier, nonce)
}

fn token_error<E: std::error::Error + 'static>(
    e: RequestTokenError<E, StandardErrorResponse<CoreErrorResponseType>>,
) -> LoginError {
    match e {
        RequestTokenError::ServerResponse(r) => LoginError::Token(format!("the token endpoint refused: {r}")),
        RequestTokenError::Request(e) => {
            LoginError::ProviderUnavailable(format!("token endpoint: {}", error_chain(&e)))
        }
        other => LoginError::Token(format!("token endpoint: {}", error_chain(&other))),
    }
}

/// An error with its causes, for the audit record and the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
