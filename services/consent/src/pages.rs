//! The consent page: where a member, signed in at their card company, approves or denies an
//! aggregator's request.
//!
//! `GET /consent/{id}` shows the request; `POST /consent/{id}/login` sends the member to their
//! card company's OpenID Provider ([`crate::login`]); the provider sends them back to
//! `GET /oidc/callback`, which shows their accounts and the requested scopes to choose from;
//! `POST /consent/{id}/decision` records the choice and redirects the browser to the
//! aggregator's `redirect_uri` with the one-time `code` (or `error=access_denied`) and `state`.
//! Between the callback and the decision the member travels in a short-lived ticket signed with
//! the service's secret, so the page keeps no session state. A failed sign-in is a page saying
//! what happened and an audit record (`consent.sign_in`, FAILED, with its reason), never a
//! consent.
//!
//! `/member` is the member's own page: sign in at the card company, see every consent given
//! (to whom, which data, until when) and revoke any of them at once.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use cardlink_api::ApiError as _;
use cardlink_events::consent::{ConsentEvent, ConsentStatus};
use cardlink_events::registry::{IssuerLogin, Scope};
use cardlink_serving::html::{self, Nav, esc};
use cardlink_views::access::AccessHistory;
use cardlink_views::follow::Followed;
use chrono::Utc;

use crate::lifecycle::Approval;
use crate::login::{CALLBACK_PATH, JWKS_PATH, LoginError, Member, Pending, Purpose, RelyingParty, SESSION_COOKIE};
use crate::service::{Consents, SignIn};

/// How long a signed-in member has to decide.
pub const TICKET_TTL_SECS: i64 = 600;
/// Largest form body accepted.
const MAX_FORM_BYTES: usize = 16 * 1024;

#[derive(Clone, Debug)]
pub struct PageState {
    pub consents: Consents,
    pub login: Arc<RelyingParty>,
    pub secret: Arc<[u8]>,
    /// Who received what: shown on the member's page.
    pub access: Followed<AccessHistory>,
    /// Whether the pages are served over https (the session cookie is then `Secure`).
    pub secure: bool,
}

pub fn router(state: PageState) -> Router {
    Router::new()
        .route("/consent/{id}", get(show))
        .route("/consent/{id}/login", post(login))
        .route("/consent/{id}/decision", post(decide))
        .route("/member", get(member_login_page))
        .route("/member/login", post(member_login))
        .route("/member/revoke", post(member_revoke))
        .route(CALLBACK_PATH, get(callback))
        .route(JWKS_PATH, get(jwks))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(state)
}

fn scope_label(s: Scope) -> &'static str {
    s.label_ja()
}

fn page(title: &str, body: &str) -> Html<String> {
    html::page(title, Nav::None, body)
}

fn member_page(title: &str, body: &str) -> Html<String> {
    html::page(title, Nav::Member, body)
}

fn error_page(status: StatusCode, message: &str) -> Response {
    (status, page("cardlink", &format!("<h1>ご利用いただけません</h1><p>{}</p>", esc(message)))).into_response()
}

fn request_summary(c: &ConsentEvent, aggregator_name: &str) -> String {
    let scopes: String = c.requested_scopes.iter().map(|s| format!("<li>{}</li>", scope_label(*s))).collect();
    format!(
        "<div class=\"box\"><p><b>{}</b> が、あなたのカード情報の参照を求めています。</p>\
         <p>利用目的: {}</p><p>期間: {} 日間</p>{}<p>対象となる情報:</p><ul>{}</ul>\
         <p>お選びいただいた後の戻り先: <b class=\"destination\">{}</b></p></div>",
        esc(aggregator_name),
        esc(&c.purpose),
        c.duration_days,
        match c.history_days {
            0 => "<p>過去の明細: 提供しません（同意した時点以降の情報のみ）</p>".to_owned(),
            days => format!("<p>過去の明細: 同意の日から遡って <b>{days} 日分</b>も提供します</p>"),
        },
        scopes,
        esc(&destination(&c.redirect_uri))
    )
}

/// Where the member will be sent after deciding, as they can judge it: the site (scheme, host
/// and port of the registered redirect URI).
fn destination(redirect_uri: &str) -> String {
    url::Url::parse(redirect_uri).map_or_else(|_| redirect_uri.to_owned(), |u| u.origin().ascii_serialization())
}

// The error is the page to show; it is built once per request, so its size does not matter.
#[allow(clippy::result_large_err)]
fn pending(state: &PageState, id: &str) -> Result<(ConsentEvent, String), Response> {
    let consent = state
        .consents
        .read(|b| b.get(id).cloned())
        .ok_or_else(|| error_page(StatusCode::NOT_FOUND, "この同意リクエストは見つかりません。"))?;
    if consent.status != ConsentStatus::Requested || consent.expires_at.is_some_and(|e| Utc::now() >= e) {
        return Err(error_page(StatusCode::GONE, "この同意リクエストは期限切れか、すでに処理されています。"));
    }
    let name = state
        .consents
        .registry()
        .read(|r| r.aggregator(&consent.aggregator_id).map(|a| a.name.clone()))
        .unwrap_or_else(|| consent.aggregator_id.clone());
    Ok((consent, name))
}

fn issuer_name(state: &PageState, issuer_id: &str) -> String {
    state
        .consents
        .registry()
        .read(|r| r.issuer(issuer_id).map(|i| i.name.clone()))
        .unwrap_or_else(|| issuer_id.to_owned())
}

fn issuer_login(state: &PageState, issuer_id: &str) -> Result<IssuerLogin, LoginError> {
    state
        .consents
        .registry()
        .read(|r| r.issuer(issuer_id).and_then(|i| i.login.clone()))
        .ok_or_else(|| LoginError::NotConfigured(format!("issuer {issuer_id} has registered no OpenID Provider")))
}

async fn show(State(state): State<PageState>, Path(id): Path<String>) -> Response {
    let (consent, name) = match pending(&state, &id) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let issuer = issuer_name(&state, &consent.issuer_id);
    page(
        "カード会社でのログイン",
        &format!(
            "<h1>{} でログイン</h1>{}<form method=\"post\" action=\"/consent/{}/login\">\
             <button type=\"submit\" id=\"sign-in\">{} のログイン画面へ</button></form>\
             <p><small>ログインはカード会社の画面で行います。会員IDやパスワードは {} にも cardlink にも渡りません。</small></p>",
            esc(&issuer),
            request_summary(&consent, &name),
            esc(&id),
            esc(&issuer),
            esc(&name)
        ),
    )
    .into_response()
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// What a ticket carries: the consent (or page) it is for, the member, and until when.
#[derive(serde::Serialize, serde::Deserialize)]
struct Ticket {
    purpose: String,
    member: Member,
    expires: i64,
}

fn ticket(secret: &[u8], purpose: &str, member: &Member) -> String {
    let ticket = Ticket {
        purpose: purpose.to_owned(),
        member: member.clone(),
        expires: Utc::now().timestamp() + TICKET_TTL_SECS,
    };
    // Serialising a struct of strings and integers cannot fail.
    cardlink_auth::seal(secret, "ticket", &serde_json::to_vec(&ticket).unwrap_or_default())
}

/// The member a ticket was issued to, if it is genuine, unexpired and for this purpose.
fn check_ticket(secret: &[u8], purpose: &str, ticket: &str) -> Option<Member> {
    let ticket: Ticket = serde_json::from_slice(&cardlink_auth::unseal(secret, "ticket", ticket)?).ok()?;
    (ticket.purpose == purpose && Utc::now().timestamp() < ticket.expires).then_some(ticket.member)
}

/// A failed sign-in: audited, and a page telling the member what happened.
async fn sign_in_failed(state: &PageState, issuer_id: &str, purpose: Option<&Purpose>, error: LoginError) -> Response {
    tracing::warn!(issuer_id, error = %error, reason = error.reason().as_str(), "member sign-in failed");
    let consent_id = match purpose {
        Some(Purpose::Consent(id)) => Some(id.as_str()),
        _ => None,
    };
    state.consents.audit_sign_in(SignIn::Failed { issuer_id, consent_id, error: &error }).await;
    let status = match error {
        LoginError::ProviderUnavailable(_) => StatusCode::BAD_GATEWAY,
        LoginError::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
        LoginError::Session(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    };
    let mut response = error_page(status, error.page_message());
    clear_session(&mut response);
    response
}

fn session_cookie(value: &str, max_age: i64, secure: bool) -> Option<HeaderValue> {
    // Lax: the provider's redirect back is a top-level cross-site navigation.
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path={CALLBACK_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .ok()
}

fn clear_session(response: &mut Response) {
    if let Some(v) = session_cookie("", 0, false) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Sends the browser to `issuer_id`'s provider.
async fn start_sign_in(state: &PageState, issuer_id: &str, purpose: Purpose) -> Response {
    let started = match issuer_login(state, issuer_id) {
        Ok(login) => state.login.begin(issuer_id, &login, purpose.clone()).await,
        Err(e) => Err(e),
    };
    match started {
        Ok((url, pending)) => {
            let cookie = session_cookie(&pending.seal(&state.secret), crate::login::SIGN_IN_TTL_SECS, state.secure);
            match (HeaderValue::from_str(&url), cookie) {
                (Ok(location), Some(cookie)) => {
                    (StatusCode::SEE_OTHER, [(header::LOCATION, location), (header::SET_COOKIE, cookie)])
                        .into_response()
                }
                _ => {
                    sign_in_failed(
                        state,
                        issuer_id,
                        Some(&purpose),
                        LoginError::ProviderUnavailable("unusable authorization URL".into()),
                    )
                    .await
                }
            }
        }
        Err(e) => sign_in_failed(state, issuer_id, Some(&purpose), e).await,
    }
}

async fn login(State(state): State<PageState>, Path(id): Path<String>) -> Response {
    let (consent, _) = match pending(&state, &id) {
        Ok(v) => v,
        Err(r) => return r,
    };
    start_sign_in(&state, &consent.issuer_id, Purpose::Consent(id)).await
}

#[derive(Debug, serde::Deserialize)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// RFC 9207: the provider that answered, where it says so.
    iss: Option<String>,
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Where the provider sends the member back.
async fn callback(
    State(state): State<PageState>,
    headers: HeaderMap,
    Query(params): Query<CallbackParams>,
) -> Response {
    let Some(pending) = cookie(&headers, SESSION_COOKIE).and_then(|c| Pending::open(&state.secret, c)) else {
        return sign_in_failed(
            &state,
            "",
            None,
            LoginError::Session("no sign-in was started from this browser, or it expired"),
        )
        .await;
    };
    let issuer_id = pending.issuer_id.clone();
    let state_matches = params
        .state
        .as_deref()
        .is_some_and(|s| cardlink_auth::constant_time_eq(s.as_bytes(), pending.state.as_bytes()));
    if !state_matches {
        return sign_in_failed(
            &state,
            &issuer_id,
            Some(&pending.purpose),
            LoginError::Session("the state does not match this browser's sign-in"),
        )
        .await;
    }
    if let Some(error) = params.error {
        let detail = match params.error_description {
            Some(d) => format!("{error}: {d}"),
            None => error,
        };
        return sign_in_failed(&state, &issuer_id, Some(&pending.purpose), LoginError::Cancelled(detail)).await;
    }
    let Some(code) = params.code else {
        return sign_in_failed(
            &state,
            &issuer_id,
            Some(&pending.purpose),
            LoginError::Token("the provider sent no code".into()),
        )
        .await;
    };
    let signed_in = match issuer_login(&state, &issuer_id) {
        // A response from another provider than the one the sign-in went to (mix-up attack).
        Ok(login) if params.iss.as_deref().is_some_and(|iss| iss != login.issuer_url) => {
            Err(LoginError::Session("the response names another provider than the issuer's"))
        }
        Ok(login) => state.login.finish(&login, &pending, &code).await,
        Err(e) => Err(e),
    };
    let member = match signed_in {
        Ok(member) => member,
        Err(e) => return sign_in_failed(&state, &issuer_id, Some(&pending.purpose), e).await,
    };
    let consent_id = match &pending.purpose {
        Purpose::Consent(id) => Some(id.as_str()),
        Purpose::MemberPage => None,
    };
    state.consents.audit_sign_in(SignIn::Succeeded { member: &member, consent_id }).await;
    let mut response = match &pending.purpose {
        Purpose::Consent(id) => choose(&state, id, &member),
        Purpose::MemberPage => member_consents(&state, &member, ""),
    };
    clear_session(&mut response);
    response
}

/// The signed-in member chooses accounts and scopes for consent `id`.
fn choose(state: &PageState, id: &str, member: &Member) -> Response {
    let (consent, name) = match pending(state, id) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if consent.issuer_id != member.issuer_id {
        return error_page(StatusCode::FORBIDDEN, "この同意リクエストは別のカード会社のものです。");
    }
    let accounts: String = member
        .accounts
        .iter()
        .map(|(acct, label)| {
            format!(
                "<p><label><input type=\"checkbox\" name=\"account\" value=\"{}\" checked> {}</label></p>",
                esc(acct),
                esc(label)
            )
        })
        .collect();
    let scopes: String = consent
        .requested_scopes
        .iter()
        .map(|s| {
            format!(
                "<p><label><input type=\"checkbox\" name=\"scope\" value=\"{}\" checked> {}</label></p>",
                s.as_str(),
                scope_label(*s)
            )
        })
        .collect();
    page(
        "情報提供への同意",
        &format!(
            "<h1>{} さん</h1>{}<form method=\"post\" action=\"/consent/{}/decision\">\
             <input type=\"hidden\" name=\"ticket\" value=\"{}\">\
             <div class=\"box\"><p>提供するカード:</p>{accounts}</div><div class=\"box\"><p>提供する情報:</p>{scopes}</div>\
             <button type=\"submit\" name=\"decision\" value=\"approve\">同意する</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\">同意しない</button></form>",
            esc(&member.display_name),
            request_summary(&consent, &name),
            esc(id),
            esc(&ticket(&state.secret, id, member))
        ),
    )
    .into_response()
}

fn redirect(uri: &str, params: &[(&str, &str)]) -> Response {
    let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let sep = if uri.contains('?') { '&' } else { '?' };
    let location = format!("{uri}{sep}{query}");
    match HeaderValue::from_str(&location) {
        Ok(value) => (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response(),
        Err(_) => error_page(StatusCode::INTERNAL_SERVER_ERROR, "リダイレクト先が不正です。"),
    }
}

async fn decide(State(state): State<PageState>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let (consent, _) = match pending(&state, &id) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let form = form(&body);
    let Some(member) = field(&form, "ticket").and_then(|t| check_ticket(&state.secret, &id, t)) else {
        return error_page(StatusCode::UNAUTHORIZED, "ログインの有効期限が切れました。もう一度ログインしてください。");
    };
    let state_param = consent.state.clone().unwrap_or_default();
    if field(&form, "decision") != Some("approve") {
        return match state.consents.deny(&member.issuer_id, &id, &member.member_ref).await {
            Ok(c) => redirect(&c.redirect_uri, &[("error", "access_denied"), ("state", &state_param)]),
            Err(e) => error_page(StatusCode::CONFLICT, &e.to_string()),
        };
    }
    // Only the member's own accounts (as their card company named them) can be chosen,
    // whatever the form says.
    let accounts: Vec<String> = form
        .iter()
        .filter(|(k, _)| k == "account")
        .map(|(_, v)| v.clone())
        .filter(|a| member.accounts.iter().any(|(own, _)| own == a))
        .collect();
    let scopes: Vec<Scope> = form
        .iter()
        .filter(|(k, _)| k == "scope")
        .filter_map(|(_, v)| Scope::ALL.into_iter().find(|s| s.as_str() == v))
        .collect();
    let approval = Approval { member_ref: member.member_ref.clone(), account_refs: accounts, scopes };
    match state.consents.approve(&member.issuer_id, &id, approval).await {
        Ok((c, code)) => redirect(&c.redirect_uri, &[("code", &code), ("state", &state_param)]),
        Err(e) => error_page(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// Tickets for the member page are bound to this pseudo consent id.
const MEMBER_PAGE: &str = "member-page";

async fn member_login_page(State(state): State<PageState>) -> Response {
    let mut issuers: Vec<(String, String)> = state
        .consents
        .registry()
        .read(|r| r.issuers().filter(|i| i.login.is_some()).map(|i| (i.issuer_id.clone(), i.name.clone())).collect());
    issuers.sort();
    let options: String =
        issuers.iter().map(|(id, name)| format!("<option value=\"{}\">{}</option>", esc(id), esc(name))).collect();
    member_page(
        "同意の確認と取り消し",
        &format!(
            "<h1>データ提供先の確認</h1><p>カード会社でログインすると、あなたのカード情報を受け取っている事業者と、その内容を確認・取り消しできます。</p>\
             <form method=\"post\" action=\"/member/login\"><p><label>カード会社 <select name=\"issuer_id\">{options}</select></label></p>\
             <button type=\"submit\" id=\"sign-in\">カード会社のログイン画面へ</button></form>"
        ),
    )
    .into_response()
}

fn member_consents(state: &PageState, member: &Member, notice: &str) -> Response {
    let actor =
        crate::lifecycle::Actor::Member { issuer_id: member.issuer_id.clone(), member_ref: member.member_ref.clone() };
    let consents = state.consents.list(&actor, false);
    let ticket = ticket(&state.secret, MEMBER_PAGE, member);
    let now = Utc::now();
    let rows: String = consents
        .iter()
        .map(|c| {
            let name = state.consents.registry().read(|r| r.aggregator(&c.aggregator_id).map(|a| a.name.clone())).unwrap_or(c.aggregator_id.clone());
            let scopes: Vec<&str> = c.scopes.iter().map(|s| scope_label(*s)).collect();
            let status = if c.is_active_at(now) { "有効" } else { match c.status {
                ConsentStatus::Revoked => "取り消し済み",
                ConsentStatus::Denied => "拒否",
                ConsentStatus::Expired => "期限切れ",
                ConsentStatus::Requested => "未回答",
                ConsentStatus::Active => "期限切れ",
            } };
            let until = c.expires_at.map(|e| e.format("%Y-%m-%d").to_string()).unwrap_or_default();
            let action = if c.is_active_at(now) {
                format!(
                    "<form method=\"post\" action=\"/member/revoke\"><input type=\"hidden\" name=\"ticket\" value=\"{}\">\
                     <input type=\"hidden\" name=\"consent_id\" value=\"{}\"><button type=\"submit\">取り消す</button></form>",
                    esc(&ticket),
                    esc(&c.consent_id)
                )
            } else {
                String::new()
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
                esc(&name),
                esc(&c.purpose),
                esc(&scopes.join("、")),
                status,
                until
            )
        })
        .collect();
    let table = if consents.is_empty() {
        "<p>情報を提供している事業者はありません。</p>".to_owned()
    } else {
        format!(
            "<table id=\"consents\"><tr><th>提供先</th><th>利用目的</th><th>情報</th><th>状態</th><th>期限</th><th></th></tr>{rows}</table>"
        )
    };
    let history = access_history(state, member);
    member_page(
        "同意の確認と取り消し",
        &format!(
            "<h1>{} さんの情報提供先</h1>{}{table}<h2>提供の記録</h2>{history}",
            esc(&member.display_name),
            if notice.is_empty() { String::new() } else { format!("<p class=\"box\">{}</p>", esc(notice)) }
        ),
    )
    .into_response()
}

/// The member's access history: which aggregator received which data on which day.
fn access_history(state: &PageState, member: &Member) -> String {
    let entries = state.access.read(|h| h.of_member(&member.issuer_id, &member.member_ref));
    if entries.is_empty() {
        return "<p id=\"access-history\">まだ提供された情報はありません。</p>".to_owned();
    }
    let rows: String = entries
        .iter()
        .map(|e| {
            let name = state
                .consents
                .registry()
                .read(|r| r.aggregator(&e.aggregator_id).map(|a| a.name.clone()))
                .unwrap_or_else(|| e.aggregator_id.clone());
            let item: &str = match Scope::from_name(&e.data_item) {
                Some(scope) => scope_label(scope),
                None => &e.data_item,
            };
            let jst = |t: chrono::DateTime<Utc>| (t + chrono::TimeDelta::hours(9)).format("%H:%M").to_string();
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} 件</td><td>{}〜{}</td></tr>",
                e.day,
                esc(&name),
                esc(item),
                e.count,
                jst(e.first_at),
                jst(e.last_at)
            )
        })
        .collect::<String>();
    format!(
        "<table id=\"access-history\"><tr><th>日付</th><th>提供先</th><th>情報</th><th>件数</th><th>時刻 (日本時間)</th></tr>{rows}</table>"
    )
}

async fn member_login(State(state): State<PageState>, body: axum::body::Bytes) -> Response {
    let form = form(&body);
    let Some(issuer_id) = field(&form, "issuer_id") else {
        return error_page(StatusCode::BAD_REQUEST, "カード会社を選んでください。");
    };
    start_sign_in(&state, issuer_id, Purpose::MemberPage).await
}

async fn member_revoke(State(state): State<PageState>, body: axum::body::Bytes) -> Response {
    let form = form(&body);
    let Some(member) = field(&form, "ticket").and_then(|t| check_ticket(&state.secret, MEMBER_PAGE, t)) else {
        return error_page(StatusCode::UNAUTHORIZED, "ログインの有効期限が切れました。もう一度ログインしてください。");
    };
    let consent_id = field(&form, "consent_id").unwrap_or_default();
    let actor =
        crate::lifecycle::Actor::Member { issuer_id: member.issuer_id.clone(), member_ref: member.member_ref.clone() };
    match state.consents.revoke(&actor, consent_id).await {
        Ok(_) => {
            member_consents(&state, &member, "取り消しました。以後、この事業者にはあなたのカード情報は提供されません。")
        }
        Err(e) => error_page(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// The public key of the consent service's `private_key_jwt` client key.
async fn jwks(State(state): State<PageState>) -> Response {
    ([(header::CACHE_CONTROL, "max-age=300")], axum::Json(state.login.jwks())).into_response()
}
