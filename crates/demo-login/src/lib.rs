//! The demo card companies' member login: one small OpenID Provider per demo issuer, served
//! inside `cardlink dev` under `/demo-login/<issuer>`.
//!
//! It exists so that the demo's consent page signs members in through exactly the relying-party
//! code production uses (`cardlink_consent::login`): discovery, authorization code with PKCE,
//! `state` and `nonce`, a `client_secret_basic` token exchange, and an EdDSA-signed ID token that
//! carries the member's accounts in [`ACCOUNT_CLAIM`]. What a person sees is the demo login page
//! as before: member id and password, or cancel.
//!
//! It is a development provider, not a general one: one client per issuer (cardlink), codes
//! kept in memory for [`CODE_TTL_SECS`], passwords compared as SHA-256 digests in constant time,
//! and a member id that failed [`MAX_FAILED_SIGN_INS`] times is refused for [`LOCKOUT_SECS`]
//! (the only password form cardlink serves: it is throttled like a real card company's).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use cardlink_auth::TokenSigner;
use cardlink_serving::html::{self, Nav, esc};
use sha2::{Digest, Sha256};

/// Failed sign-ins of one member id, within [`LOCKOUT_SECS`], after which it is refused.
pub const MAX_FAILED_SIGN_INS: u32 = 5;
/// How long a member id stays refused after too many failures.
pub const LOCKOUT_SECS: i64 = 300;
/// Member ids whose failures are remembered at once (the oldest are forgotten first).
const MAX_TRACKED_FAILURES: usize = 10_000;

/// Why a sign-in was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    WrongPassword,
    /// Too many failures: refused without looking at the password.
    Throttled,
}

/// Where the demo providers are served.
pub const PATH_PREFIX: &str = "/demo-login";
/// The ID token claim with the member's card accounts (what the demo issuers register).
pub const ACCOUNT_CLAIM: &str = "cardlink_accounts";
/// How long an authorization code can be exchanged.
pub const CODE_TTL_SECS: i64 = 60;
/// How long an ID token is valid.
pub const ID_TOKEN_TTL_SECS: i64 = 300;
/// Codes waiting for their exchange, at most (a flood of sign-ins cannot grow memory).
const MAX_PENDING_CODES: usize = 10_000;

/// A member of a demo card company.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoMember {
    /// Their login id, and the `sub` of their ID tokens.
    pub member_ref: String,
    pub display_name: String,
    /// (account_ref, label).
    pub accounts: Vec<(String, String)>,
}

/// What an issuer registers in cardlink's registry for a demo provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoClient {
    pub issuer_url: String,
    pub client_id: String,
    pub client_secret: String,
}

#[derive(Debug)]
struct DemoIssuer {
    name: String,
    client: DemoClient,
    members: HashMap<String, ([u8; 32], DemoMember)>,
}

/// A code waiting for its exchange.
#[derive(Debug)]
struct Grant {
    issuer_id: String,
    member_ref: String,
    redirect_uri: String,
    nonce: String,
    challenge: String,
    expires_at: i64,
}

/// The demo providers of every demo issuer.
#[derive(Debug)]
pub struct DemoLogin {
    base_url: String,
    redirect_uri: String,
    issuers: HashMap<String, DemoIssuer>,
    key: TokenSigner,
    grants: Mutex<HashMap<String, Grant>>,
    /// (issuer, member id) → failures and when the first of them happened.
    failures: Mutex<HashMap<(String, String), (u32, i64)>>,
}

impl DemoLogin {
    /// Providers served at `base_url` + [`PATH_PREFIX`], for a relying party whose callback is
    /// `redirect_uri`.
    pub fn new(base_url: &str, redirect_uri: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            issuers: HashMap::new(),
            key: TokenSigner::generate("demo-login"),
            grants: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// Adds a card company's provider; returns what to register for it.
    pub fn add_issuer(&mut self, issuer_id: &str, name: &str) -> DemoClient {
        let client = DemoClient {
            issuer_url: format!("{}{PATH_PREFIX}/{issuer_id}", self.base_url),
            client_id: "cardlink".to_owned(),
            client_secret: cardlink_auth::generate_secret(32),
        };
        self.issuers.insert(
            issuer_id.to_owned(),
            DemoIssuer { name: name.to_owned(), client: client.clone(), members: HashMap::new() },
        );
        client
    }

    /// Adds a member who signs in with their `member_ref` and `password`. Ignored for an
    /// issuer not added.
    pub fn add_member(&mut self, issuer_id: &str, member: DemoMember, password: &str) {
        if let Some(issuer) = self.issuers.get_mut(issuer_id) {
            let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
            issuer.members.insert(member.member_ref.clone(), (digest, member));
        }
    }

    /// The providers' routes, to merge into the dev pages server.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(&format!("{PATH_PREFIX}/{{issuer}}/.well-known/openid-configuration"), get(discovery))
            .route(&format!("{PATH_PREFIX}/{{issuer}}/jwks"), get(jwks))
            .route(&format!("{PATH_PREFIX}/{{issuer}}/authorize"), get(authorize).post(sign_in))
            .route(&format!("{PATH_PREFIX}/{{issuer}}/token"), axum::routing::post(token))
            .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
            .with_state(self)
    }

    /// Signs a member in at `now` (seconds), counting failures per member id.
    fn attempt(&self, issuer_id: &str, login_id: &str, password: &str, now: i64) -> Result<&DemoMember, Refused> {
        let key = (issuer_id.to_owned(), login_id.to_owned());
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.get(&key).is_some_and(|(n, since)| *n >= MAX_FAILED_SIGN_INS && now - since < LOCKOUT_SECS) {
            return Err(Refused::Throttled);
        }
        match self.sign_in_member(issuer_id, login_id, password) {
            Some(member) => {
                failures.remove(&key);
                Ok(member)
            }
            None => {
                if failures.len() >= MAX_TRACKED_FAILURES {
                    failures.retain(|_, (_, since)| now - *since < LOCKOUT_SECS);
                }
                if failures.len() < MAX_TRACKED_FAILURES || failures.contains_key(&key) {
                    let entry = failures.entry(key).or_insert((0, now));
                    if now - entry.1 >= LOCKOUT_SECS {
                        *entry = (0, now);
                    }
                    entry.0 += 1;
                }
                Err(Refused::WrongPassword)
            }
        }
    }

    fn sign_in_member(&self, issuer_id: &str, login_id: &str, password: &str) -> Option<&DemoMember> {
        let (digest, member) = self.issuers.get(issuer_id)?.members.get(login_id)?;
        let presented: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        cardlink_auth::constant_time_eq(digest, &presented).then_some(member)
    }

    fn new_code(&self, grant: Grant) -> Option<String> {
        let now = chrono::Utc::now().timestamp();
        let mut grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        grants.retain(|_, g| g.expires_at > now);
        if grants.len() >= MAX_PENDING_CODES {
            return None;
        }
        let code = B64.encode(rand::random::<[u8; 32]>());
        grants.insert(code_key(&code), grant);
        Some(code)
    }
}

/// Codes are kept by their digest, like the consent service's own.
fn code_key(code: &str) -> String {
    B64.encode(Sha256::digest(code.as_bytes()))
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such demo provider").into_response()
}

async fn discovery(State(login): State<Arc<DemoLogin>>, Path(issuer_id): Path<String>) -> Response {
    let Some(issuer) = login.issuers.get(&issuer_id) else { return not_found() };
    let iss = &issuer.client.issuer_url;
    axum::Json(serde_json::json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile"],
        "claims_supported": ["sub", "name", ACCOUNT_CLAIM],
    }))
    .into_response()
}

async fn jwks(State(login): State<Arc<DemoLogin>>) -> Response {
    axum::Json(serde_json::json!({ "keys": [login.key.public_jwk()] })).into_response()
}

/// An authorization request, checked against the issuer's one client.
#[derive(Debug)]
struct AuthRequest {
    redirect_uri: String,
    state: String,
    nonce: String,
    challenge: String,
}

fn auth_request(login: &DemoLogin, issuer: &DemoIssuer, query: &str) -> Result<AuthRequest, &'static str> {
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    if get("client_id") != issuer.client.client_id {
        return Err("unknown client_id");
    }
    if get("redirect_uri") != login.redirect_uri {
        return Err("redirect_uri is not the registered one");
    }
    if get("response_type") != "code" || !get("scope").split(' ').any(|s| s == "openid") {
        return Err("only the authorization code flow with scope openid");
    }
    if get("code_challenge_method") != "S256" || get("code_challenge").len() != 43 || get("nonce").is_empty() {
        return Err("PKCE S256 and a nonce are required");
    }
    Ok(AuthRequest {
        redirect_uri: get("redirect_uri"),
        state: get("state"),
        nonce: get("nonce"),
        challenge: get("code_challenge"),
    })
}

fn login_form(issuer_id: &str, issuer: &DemoIssuer, query: &str, notice: &str) -> Html<String> {
    let notice = if notice.is_empty() { String::new() } else { format!("<p class=\"box\">{}</p>", esc(notice)) };
    html::page(
        "カード会社でのログイン",
        Nav::None,
        &format!(
            "<h1>{} ログイン</h1>{notice}<form method=\"post\" action=\"{PATH_PREFIX}/{}/authorize\">\
             <input type=\"hidden\" name=\"request\" value=\"{}\">\
             <p><label>会員ID <input name=\"login_id\" autocomplete=\"username\"></label></p>\
             <p><label>パスワード <input name=\"password\" type=\"password\" autocomplete=\"current-password\"></label></p>\
             <button type=\"submit\" name=\"action\" value=\"login\">ログイン</button> \
             <button type=\"submit\" name=\"action\" value=\"cancel\">キャンセル</button></form>\
             <p><small>デモ用のカード会社ログインです。パスワードはこのカード会社にのみ送られ、cardlink には渡りません。</small></p>",
            esc(&issuer.name),
            esc(issuer_id),
            esc(query)
        ),
    )
}

async fn authorize(
    State(login): State<Arc<DemoLogin>>,
    Path(issuer_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(issuer) = login.issuers.get(&issuer_id) else { return not_found() };
    let query = query.unwrap_or_default();
    match auth_request(&login, issuer, &query) {
        Ok(_) => login_form(&issuer_id, issuer, &query, "").into_response(),
        // Never redirect an invalid request: the redirect URI itself may be the problem.
        Err(why) => {
            (StatusCode::BAD_REQUEST, html::page("ログインできません", Nav::None, &format!("<p>{}</p>", esc(why))))
                .into_response()
        }
    }
}

fn back_to(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    match HeaderValue::from_str(&format!("{redirect_uri}{sep}{query}")) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "unusable redirect_uri").into_response(),
    }
}

async fn sign_in(
    State(login): State<Arc<DemoLogin>>,
    Path(issuer_id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(issuer) = login.issuers.get(&issuer_id) else { return not_found() };
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let query = form.get("request").cloned().unwrap_or_default();
    let request = match auth_request(&login, issuer, &query) {
        Ok(r) => r,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    if form.get("action").map(String::as_str) == Some("cancel") {
        return back_to(&request.redirect_uri, &[("error", "access_denied"), ("state", &request.state)]);
    }
    let (login_id, password) = (form.get("login_id").map(String::as_str), form.get("password").map(String::as_str));
    let now = chrono::Utc::now().timestamp();
    let member = match login.attempt(&issuer_id, login_id.unwrap_or_default(), password.unwrap_or_default(), now) {
        Ok(member) => member,
        Err(Refused::WrongPassword) => {
            return (
                StatusCode::UNAUTHORIZED,
                login_form(&issuer_id, issuer, &query, "会員IDまたはパスワードが正しくありません。"),
            )
                .into_response();
        }
        Err(Refused::Throttled) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, LOCKOUT_SECS.to_string())],
                login_form(
                    &issuer_id,
                    issuer,
                    &query,
                    "ログインの失敗が続いたため、この会員IDはしばらくご利用いただけません。時間をおいてお試しください。",
                ),
            )
                .into_response();
        }
    };
    let grant = Grant {
        issuer_id: issuer_id.clone(),
        member_ref: member.member_ref.clone(),
        redirect_uri: request.redirect_uri.clone(),
        nonce: request.nonce,
        challenge: request.challenge,
        expires_at: chrono::Utc::now().timestamp() + CODE_TTL_SECS,
    };
    match login.new_code(grant) {
        Some(code) => back_to(&request.redirect_uri, &[("code", &code), ("state", &request.state)]),
        None => back_to(&request.redirect_uri, &[("error", "temporarily_unavailable"), ("state", &request.state)]),
    }
}

fn token_error(status: StatusCode, error: &str) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], axum::Json(serde_json::json!({ "error": error }))).into_response()
}

/// The client id and secret of an `Authorization: Basic` header.
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(value.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((unescape(id)?, unescape(secret)?))
}

async fn token(
    State(login): State<Arc<DemoLogin>>,
    Path(issuer_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(issuer) = login.issuers.get(&issuer_id) else { return not_found() };
    let client_ok = basic_auth(&headers).is_some_and(|(id, secret)| {
        id == issuer.client.client_id
            && cardlink_auth::constant_time_eq(secret.as_bytes(), issuer.client.client_secret.as_bytes())
    });
    if !client_ok {
        return token_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if get("grant_type") != "authorization_code" {
        return token_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    // Single use: the code is gone whatever happens next.
    let grant = login.grants.lock().unwrap_or_else(PoisonError::into_inner).remove(&code_key(get("code")));
    let now = chrono::Utc::now().timestamp();
    let Some(grant) = grant.filter(|g| g.issuer_id == issuer_id && g.expires_at > now) else {
        return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let challenge = B64.encode(Sha256::digest(get("code_verifier").as_bytes()));
    if get("redirect_uri") != grant.redirect_uri
        || !cardlink_auth::constant_time_eq(challenge.as_bytes(), grant.challenge.as_bytes())
    {
        return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let Some((_, member)) = issuer.members.get(&grant.member_ref) else {
        return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let accounts: Vec<serde_json::Value> = member
        .accounts
        .iter()
        .map(|(account_ref, label)| serde_json::json!({ "account_ref": account_ref, "label": label }))
        .collect();
    let id_token = login.key.sign_jwt(&serde_json::json!({
        "iss": issuer.client.issuer_url,
        "sub": member.member_ref,
        "aud": issuer.client.client_id,
        "iat": now,
        "exp": now + ID_TOKEN_TTL_SECS,
        "nonce": grant.nonce,
        "name": member.display_name,
        ACCOUNT_CLAIM: accounts,
    }));
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({
            "access_token": B64.encode(rand::random::<[u8; 32]>()),
            "token_type": "Bearer",
            "expires_in": ID_TOKEN_TTL_SECS,
            "id_token": id_token,
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_must_name_the_client_its_redirect_pkce_and_a_nonce() {
        let mut login = DemoLogin::new("http://127.0.0.1:1", "http://127.0.0.1:1/oidc/callback");
        login.add_issuer("iss-a", "A");
        let issuer = &login.issuers["iss-a"];
        let good = "response_type=code&client_id=cardlink&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Foidc%2Fcallback\
                    &scope=openid+profile&state=s&nonce=n&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM\
                    &code_challenge_method=S256";
        assert!(auth_request(&login, issuer, good).is_ok());
        for (from, to) in [
            ("client_id=cardlink", "client_id=other"),
            ("redirect_uri=http", "redirect_uri=https"),
            ("code_challenge_method=S256", "code_challenge_method=plain"),
            ("&nonce=n", ""),
            ("scope=openid+profile", "scope=profile"),
        ] {
            assert!(auth_request(&login, issuer, &good.replace(from, to)).is_err(), "{to}");
        }
    }

    #[test]
    fn members_sign_in_with_their_own_password_only() {
        let mut login = DemoLogin::new("http://127.0.0.1:1", "http://127.0.0.1:1/oidc/callback");
        login.add_issuer("iss-a", "A");
        let member = DemoMember { member_ref: "m-1".into(), display_name: "M".into(), accounts: vec![] };
        login.add_member("iss-a", member, "pw");
        assert!(login.sign_in_member("iss-a", "m-1", "pw").is_some());
        assert!(login.sign_in_member("iss-a", "m-1", "wrong").is_none());
        assert!(login.sign_in_member("iss-b", "m-1", "pw").is_none());
    }

    #[test]
    fn repeated_failures_lock_a_member_id_for_a_while_and_only_that_one() {
        let mut login = DemoLogin::new("http://127.0.0.1:1", "http://127.0.0.1:1/oidc/callback");
        login.add_issuer("iss-a", "A");
        for id in ["m-1", "m-2"] {
            let member = DemoMember { member_ref: id.into(), display_name: "M".into(), accounts: vec![] };
            login.add_member("iss-a", member, "pw");
        }
        let t = 1_000_000;
        for n in 0..MAX_FAILED_SIGN_INS {
            assert_eq!(login.attempt("iss-a", "m-1", "guess", t + i64::from(n)).err(), Some(Refused::WrongPassword));
        }
        // Now even the right password is refused, without being looked at.
        assert_eq!(login.attempt("iss-a", "m-1", "pw", t + 10).err(), Some(Refused::Throttled));
        assert!(login.attempt("iss-a", "m-2", "pw", t + 10).is_ok(), "another member id is not affected");
        // After the lockout, the member signs in, and that clears the count.
        assert!(login.attempt("iss-a", "m-1", "pw", t + LOCKOUT_SECS).is_ok());
        assert_eq!(login.attempt("iss-a", "m-1", "guess", t + LOCKOUT_SECS + 1).err(), Some(Refused::WrongPassword));
        assert!(login.attempt("iss-a", "m-1", "pw", t + LOCKOUT_SECS + 2).is_ok());
    }

    #[test]
    fn client_credentials_are_read_from_basic_auth() {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode("cardlink:s%3A1"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
        assert_eq!(basic_auth(&headers), Some(("cardlink".into(), "s:1".into())));
    }
}
