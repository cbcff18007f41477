//! The consent page: where a member, signed in at their card company, approves or denies an
//! aggregator's request.
//!
//! `GET /consent/{id}` shows the request and the issuer's sign-in; `POST /consent/{id}/login`
//! signs the member in and shows their accounts and the requested scopes to choose from;
//! `POST /consent/{id}/decision` records the choice and redirects the browser to the
//! aggregator's `redirect_uri` with the one-time `code` (or `error=access_denied`) and `state`.
//! Between the two posts the member's identity travels in a short-lived ticket signed with the
//! service's secret, so the page keeps no session state.
//!
//! `/member` is the member's own page: sign in at the card company, see every consent given
//! (to whom, which data, until when) and revoke any of them at once.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use cardlink_events::consent::{ConsentEvent, ConsentStatus};
use cardlink_events::registry::Scope;
use cardlink_serving::html::{self, Nav, esc};
use cardlink_views::access::AccessHistory;
use cardlink_views::follow::Followed;
use chrono::Utc;

use crate::lifecycle::Approval;
use crate::members::{Member, MemberDirectory};
use crate::service::Consents;

/// How long a signed-in member has to decide.
pub const TICKET_TTL_SECS: i64 = 600;
/// Largest form body accepted.
const MAX_FORM_BYTES: usize = 16 * 1024;

#[derive(Clone, Debug)]
pub struct PageState {
    pub consents: Consents,
    pub members: Arc<dyn MemberDirectory>,
    pub secret: Arc<[u8]>,
    /// Who received what: shown on the member's page.
    pub access: Followed<AccessHistory>,
}

pub fn router(state: PageState) -> Router {
    Router::new()
        .route("/consent/{id}", get(show))
        .route("/consent/{id}/login", post(login))
        .route("/consent/{id}/decision", post(decide))
        .route("/member", get(member_login_page))
        .route("/member/login", post(member_login))
        .route("/member/revoke", post(member_revoke))
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
         <p>利用目的: {}</p><p>期間: {} 日間</p><p>対象となる情報:</p><ul>{}</ul></div>",
        esc(aggregator_name),
        esc(&c.purpose),
        c.duration_days,
        scopes
    )
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

async fn show(State(state): State<PageState>, Path(id): Path<String>) -> Response {
    let (consent, name) = match pending(&state, &id) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let issuer = state
        .consents
        .registry()
        .read(|r| r.issuer(&consent.issuer_id).map(|i| i.name.clone()))
        .unwrap_or(consent.issuer_id.clone());
    page(
        "カード会社でのログイン",
        &format!(
            "<h1>{} ログイン</h1>{}<form method=\"post\" action=\"/consent/{}/login\">\
             <p><label>会員ID <input name=\"login_id\" autocomplete=\"username\" required></label></p>\
             <p><label>パスワード <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
             <button type=\"submit\">ログイン</button></form>\
             <p><small>パスワードはカード会社にのみ送られ、{} には渡りません。</small></p>",
            esc(&issuer),
            request_summary(&consent, &name),
            esc(&id),
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

fn ticket(secret: &[u8], consent_id: &str, member: &Member) -> String {
    let expires = Utc::now().timestamp() + TICKET_TTL_SECS;
    let payload = format!("{consent_id}\n{}\n{}\n{expires}", member.issuer_id, member.member_ref);
    let mac = cardlink_auth::hmac_sha256(secret, &[payload.as_bytes()]);
    format!("{}.{}", B64.encode(payload.as_bytes()), B64.encode(mac))
}

/// The member a ticket was issued to, if it is genuine, unexpired and for this consent.
fn check_ticket(secret: &[u8], consent_id: &str, ticket: &str) -> Option<(String, String)> {
    let (payload, mac) = ticket.split_once('.')?;
    let payload = B64.decode(payload).ok()?;
    let expected = cardlink_auth::hmac_sha256(secret, &[&payload]);
    let presented = B64.decode(mac).ok()?;
    if !cardlink_auth::constant_time_eq(&presented, &expected) {
        return None;
    }
    let text = String::from_utf8(payload).ok()?;
    let mut parts = text.split('\n');
    let (id, issuer, member, expires) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?.parse::<i64>().ok()?);
    (id == consent_id && Utc::now().timestamp() < expires).then(|| (issuer.to_owned(), member.to_owned()))
}

async fn login(State(state): State<PageState>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let (consent, name) = match pending(&state, &id) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let form = form(&body);
    let (Some(login_id), Some(password)) = (field(&form, "login_id"), field(&form, "password")) else {
        return error_page(StatusCode::BAD_REQUEST, "会員IDとパスワードを入力してください。");
    };
    let Some(member) = state.members.sign_in(&consent.issuer_id, login_id, password) else {
        return error_page(StatusCode::UNAUTHORIZED, "会員IDまたはパスワードが正しくありません。");
    };
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
            esc(&id),
            esc(&ticket(&state.secret, &id, &member))
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
    let Some((issuer_id, member_ref)) = field(&form, "ticket").and_then(|t| check_ticket(&state.secret, &id, t)) else {
        return error_page(StatusCode::UNAUTHORIZED, "ログインの有効期限が切れました。もう一度ログインしてください。");
    };
    let Some(member) = state.members.member(&issuer_id, &member_ref) else {
        return error_page(StatusCode::UNAUTHORIZED, "会員が見つかりません。");
    };
    let state_param = consent.state.clone().unwrap_or_default();
    if field(&form, "decision") != Some("approve") {
        return match state.consents.deny(&issuer_id, &id, &member_ref).await {
            Ok(c) => redirect(&c.redirect_uri, &[("error", "access_denied"), ("state", &state_param)]),
            Err(e) => error_page(StatusCode::CONFLICT, &e.to_string()),
        };
    }
    // Only the member's own accounts can be chosen, whatever the form says.
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
    let approval = Approval { member_ref: member_ref.clone(), account_refs: accounts, scopes };
    match state.consents.approve(&issuer_id, &id, approval).await {
        Ok((c, code)) => redirect(&c.redirect_uri, &[("code", &code), ("state", &state_param)]),
        Err(e) => error_page(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// Tickets for the member page are bound to this pseudo consent id.
const MEMBER_PAGE: &str = "member-page";

async fn member_login_page(State(state): State<PageState>) -> Response {
    let mut issuers: Vec<(String, String)> =
        state.consents.registry().read(|r| r.issuers().map(|i| (i.issuer_id.clone(), i.name.clone())).collect());
    issuers.sort();
    let options: String =
        issuers.iter().map(|(id, name)| format!("<option value=\"{}\">{}</option>", esc(id), esc(name))).collect();
    member_page(
        "同意の確認と取り消し",
        &format!(
            "<h1>データ提供先の確認</h1><p>カード会社の会員IDでログインすると、あなたのカード情報を受け取っている事業者と、その内容を確認・取り消しできます。</p>\
             <form method=\"post\" action=\"/member/login\"><p><label>カード会社 <select name=\"issuer_id\">{options}</select></label></p>\
             <p><label>会員ID <input name=\"login_id\" required></label></p>\
             <p><label>パスワード <input name=\"password\" type=\"password\" required></label></p>\
             <button type=\"submit\">ログイン</button></form>"
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
    let (Some(issuer_id), Some(login_id), Some(password)) =
        (field(&form, "issuer_id"), field(&form, "login_id"), field(&form, "password"))
    else {
        return error_page(StatusCode::BAD_REQUEST, "カード会社・会員ID・パスワードを入力してください。");
    };
    match state.members.sign_in(issuer_id, login_id, password) {
        Some(member) => member_consents(&state, &member, ""),
        None => error_page(StatusCode::UNAUTHORIZED, "会員IDまたはパスワードが正しくありません。"),
    }
}

async fn member_revoke(State(state): State<PageState>, body: axum::body::Bytes) -> Response {
    let form = form(&body);
    let Some((issuer_id, member_ref)) =
        field(&form, "ticket").and_then(|t| check_ticket(&state.secret, MEMBER_PAGE, t))
    else {
        return error_page(StatusCode::UNAUTHORIZED, "ログインの有効期限が切れました。もう一度ログインしてください。");
    };
    let Some(member) = state.members.member(&issuer_id, &member_ref) else {
        return error_page(StatusCode::UNAUTHORIZED, "会員が見つかりません。");
    };
    let consent_id = field(&form, "consent_id").unwrap_or_default();
    let actor = crate::lifecycle::Actor::Member { issuer_id, member_ref };
    match state.consents.revoke(&actor, consent_id).await {
        Ok(_) => {
            member_consents(&state, &member, "取り消しました。以後、この事業者にはあなたのカード情報は提供されません。")
        }
        Err(e) => error_page(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}
