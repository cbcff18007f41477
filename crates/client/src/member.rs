//! The member's side of the consent page, played without a browser: sign in at the issuer's
//! page and approve (or deny) a request. `cardlink dev` uses it to create its demo consents
//! through the real flow, and tests use it where a real browser is not the point.

use std::net::SocketAddr;

use crate::ClientError;
use crate::http::request;

/// Where the page sent the member's browser back to: the aggregator's redirect URI with
/// `code` and `state` (or `error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub location: String,
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

/// Signs in as `login_id` at the consent page `authorization_url` points to and decides:
/// approve with every account and scope the page offers, or deny.
pub async fn decide(
    authorization_url: &str,
    login_id: &str,
    password: &str,
    approve: bool,
) -> Result<Redirect, ClientError> {
    let url = url::Url::parse(authorization_url).map_err(|e| ClientError::Page(format!("{authorization_url}: {e}")))?;
    let addr: SocketAddr = url
        .socket_addrs(|| Some(80))
        .ok()
        .and_then(|a| a.first().copied())
        .ok_or_else(|| ClientError::Page(format!("{authorization_url}: no address")))?;
    let path = url.path().trim_end_matches('/').to_owned();
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("login_id", login_id)
        .append_pair("password", password)
        .finish();
    let signed_in = request(addr, "POST", &format!("{path}/login"), Some(&form)).await?;
    if signed_in.status != 200 {
        return Err(ClientError::Page(format!("sign-in answered {}", signed_in.status)));
    }
    let ticket = values(&signed_in.body, "ticket")
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Page("no ticket after sign-in (wrong credentials?)".into()))?;
    let mut decision = form_urlencoded::Serializer::new(String::new());
    decision.append_pair("ticket", &ticket).append_pair("decision", if approve { "approve" } else { "deny" });
    for account in values(&signed_in.body, "account") {
        decision.append_pair("account", &account);
    }
    for scope in values(&signed_in.body, "scope") {
        decision.append_pair("scope", &scope);
    }
    let decided = request(addr, "POST", &format!("{path}/decision"), Some(&decision.finish())).await?;
    let location = decided
        .header("location")
        .ok_or_else(|| ClientError::Page(format!("the decision answered {} without a redirect", decided.status)))?
        .to_owned();
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
