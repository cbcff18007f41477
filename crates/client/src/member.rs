//! The member's side of the consent page, played without a browser: sign in at the demo card
//! company's login (the OpenID Provider `cardlink dev` runs for each demo issuer) and approve
//! (or deny) a request. `cardlink dev` uses it to create its demo consents through the real
//! flow, and tests use it where a real browser is not the point.

use std::net::SocketAddr;

use crate::ClientError;
use crate::http::{Response, request, request_with_cookie};

/// Where the page sent the member's browser back to: the aggregator's redirect URI with
/// `code` and `state` (or `error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub location: String,
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

fn parse_url(text: &str) -> Result<(url::Url, SocketAddr), ClientError> {
    let url = url::Url::parse(text).map_err(|e| ClientError::Page(format!("{text}: {e}")))?;
    let addr = url
        .socket_addrs(|| Some(80))
        .ok()
        .and_then(|a| a.first().copied())
        .ok_or_else(|| ClientError::Page(format!("{text}: no address")))?;
    Ok((url, addr))
}

/// The path and query of `url`, as a request line names them.
fn target(url: &url::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

fn location(response: &Response, step: &str) -> Result<String, ClientError> {
    response
        .header("location")
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Page(format!("{step} answered {} without a redirect", response.status)))
}

/// Signs in as `login_id` at the demo card company the consent page `authorization_url` points
/// to, and decides: approve with every account and scope the page offers, or deny.
pub async fn decide(
    authorization_url: &str,
    login_id: &str,
    password: &str,
    approve: bool,
) -> Result<Redirect, ClientError> {
    let (consent_url, addr) = parse_url(authorization_url)?;
    let path = consent_url.path().trim_end_matches('/').to_owned();
    // The consent page sends the browser to the card company, with its sign-in cookie.
    let started = request(addr, "POST", &format!("{path}/login"), Some("")).await?;
    let session = started.cookies();
    let (provider_url, provider_addr) = parse_url(&location(&started, "the consent page's sign-in")?)?;
    let login_page = request(provider_addr, "GET", &target(&provider_url), None).await?;
    let auth_request = values(&login_page.body, "request")
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Page(format!("the card company's login answered {}", login_page.status)))?;
    let credentials = form_urlencoded::Serializer::new(String::new())
        .append_pair("request", &auth_request)
        .append_pair("login_id", login_id)
        .append_pair("password", password)
        .append_pair("action", "login")
        .finish();
    let signed_in = request(provider_addr, "POST", provider_url.path(), Some(&credentials)).await?;
    if signed_in.status == 401 {
        return Err(ClientError::Page(format!("the card company refused {login_id}: wrong password?")));
    }
    let (callback_url, callback_addr) = parse_url(&location(&signed_in, "the card company's login")?)?;
    let choices = request_with_cookie(callback_addr, "GET", &target(&callback_url), None, Some(&session)).await?;
    let ticket = values(&choices.body, "ticket")
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Page(format!("no ticket after sign-in (the page answered {})", choices.status)))?;
    let mut decision = form_urlencoded::Serializer::new(String::new());
    decision.append_pair("ticket", &ticket).append_pair("decision", if approve { "approve" } else { "deny" });
    for account in values(&choices.body, "account") {
        decision.append_pair("account", &account);
    }
    for scope in values(&choices.body, "scope") {
        decision.append_pair("scope", &scope);
    }
    let decided = request(addr, "POST", &format!("{path}/decision"), Some(&decision.finish())).await?;
    let location = location(&decided, "the decision")?;
    let parsed = url::Url::parse(&location).map_err(|e| ClientError::Page(format!("redirect {location}: {e}")))?;
    let param = |name: &str| parsed.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    Ok(Redirect { code: param("code"), state: param("state"), error: param("error"), location })
}

/// The `value` of every form input named `name` in `html` (the page's own markup: attributes
/// in `name="…" value="…"` order, values HTML-escaped).
pub fn values(html: &str, name: &str) -> Vec<String> {
    let needle = format!("name=\"{name}\" value=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest.find('"').map(|end| unescape(&rest[..end]))
        })
        .collect()
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_found_and_unescaped() {
        let html = r#"<input type="hidden" name="ticket" value="a.b"><input type="checkbox" name="account" value="x&amp;1" checked><input name="account" value="y">"#;
        assert_eq!(values(html, "ticket"), ["a.b"]);
        assert_eq!(values(html, "account"), ["x&1", "y"]);
        assert!(values(html, "scope").is_empty());
    }
}
