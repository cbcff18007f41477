//! Registry records: issuers, aggregators, the connections between them, and credentials.
//!
//! Each change is published as the entity's full new state on the compacted registry topic,
//! keyed by [`RegistryEvent::key`], so the topic always holds the latest state of everything
//! and any service rebuilds the registry by reading it from the beginning.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{ActorType, EventId};

/// The kinds of data a consent (and a connection) can cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Scope {
    /// Transactions, without merchant detail.
    Transactions,
    /// Merchant name, MCC and country of transactions.
    MerchantDetail,
    Statements,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Transactions, Scope::MerchantDetail, Scope::Statements];

    /// The scope named by [`Scope::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transactions => "TRANSACTIONS",
            Self::MerchantDetail => "MERCHANT_DETAIL",
            Self::Statements => "STATEMENTS",
        }
    }

    /// What the scope shares, as members read it on the consent and public pages.
    pub fn label_ja(self) -> &'static str {
        match self {
            Self::Transactions => "利用明細（日時・金額・支払区分）",
            Self::MerchantDetail => "利用店名・業種",
            Self::Statements => "請求（締め日・支払日・請求額）",
        }
    }
}

/// A set of scopes as a bitmask: what a consent view keeps per consent instead of a list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(u8);

impl ScopeSet {
    fn bit(scope: Scope) -> u8 {
        match scope {
            Scope::Transactions => 1,
            Scope::MerchantDetail => 2,
            Scope::Statements => 4,
        }
    }

    pub fn of(scopes: &[Scope]) -> Self {
        scopes.iter().fold(Self::default(), |set, s| set.with(*s))
    }

    /// This set and `scope`.
    pub fn with(self, scope: Scope) -> Self {
        Self(self.0 | Self::bit(scope))
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & Self::bit(scope) != 0
    }

    pub fn is_subset_of(self, other: ScopeSet) -> bool {
        self.0 & !other.0 == 0
    }
}

/// A participant id: 2-63 lowercase letters, digits or hyphens, starting with a letter or digit
/// (safe in URLs, Kafka keys and file names).
pub fn is_plain_id(id: &str) -> bool {
    (2..=63).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerEntity {
    pub issuer_id: String,
    pub name: String,
    /// 取扱高 per year, in yen.
    pub annual_volume_jpy: i64,
    /// Where the issuer's members sign in; `None` until the issuer's OpenID Provider is
    /// registered (until then nobody can consent at this issuer).
    #[serde(default)]
    pub login: Option<IssuerLogin>,
}

/// How the consent page authenticates to an issuer's OpenID Provider's token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientAuth {
    /// HTTP Basic with a client secret the consent service holds (never on the bus).
    ClientSecretBasic,
    /// A JWT signed with the consent service's client key (RFC 7523); the provider knows its
    /// public key from the consent service's JWKS.
    PrivateKeyJwt,
}

/// An issuer's OpenID Provider, as registered for member sign-in. Holds nothing secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerLogin {
    /// The provider's issuer identifier (`iss`); discovery is at
    /// `<issuer_url>/.well-known/openid-configuration`.
    pub issuer_url: String,
    /// cardlink's client id at that provider.
    pub client_id: String,
    pub client_auth: ClientAuth,
    /// The ID token or userinfo claim listing the member's card accounts.
    pub account_claim: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AggregatorStatus {
    Active,
    Suspended,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregatorEntity {
    pub aggregator_id: String,
    pub name: String,
    /// 電子決済等代行業 登録番号
    pub registration_number: String,
    pub contact: String,
    pub status: AggregatorStatus,
    /// Where members may be sent back after deciding on a consent ([`redirect_uri_allowed`]).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
}

/// Longest redirect URI, in characters.
pub const MAX_REDIRECT_URI_CHARS: usize = 2_048;
/// Redirect URIs one aggregator may register.
pub const MAX_REDIRECT_URIS: usize = 20;

/// Why a redirect URI cannot be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedirectUriError {
    #[error("not an absolute URL")]
    NotAUrl,
    #[error("longer than {MAX_REDIRECT_URI_CHARS} characters")]
    TooLong,
    #[error("must be https, or http on a loopback address (127.0.0.1 or [::1], RFC 8252)")]
    Scheme,
    #[error("must not carry a user name or password")]
    UserInfo,
    #[error("must not carry a fragment")]
    Fragment,
    #[error("must be written in its normal form (as the URL parser writes it back)")]
    NotNormal,
}

/// Whether `uri` may be registered as a redirect URI: an absolute https URL with a host, or an
/// http URL on a loopback IP literal for native apps (RFC 8252 §7.3; `localhost` is not one,
/// §8.3); never with a user name, password or fragment, and written in its normal form so that
/// matching it exactly means what it says.
pub fn check_redirect_uri(uri: &str) -> Result<(), RedirectUriError> {
    if uri.chars().count() > MAX_REDIRECT_URI_CHARS {
        return Err(RedirectUriError::TooLong);
    }
    let url = url::Url::parse(uri).map_err(|_| RedirectUriError::NotAUrl)?;
    match url.scheme() {
        "https" if url.host().is_some() => {}
        "http" if is_loopback(&url) => {}
        _ => return Err(RedirectUriError::Scheme),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(RedirectUriError::UserInfo);
    }
    if url.fragment().is_some() {
        return Err(RedirectUriError::Fragment);
    }
    if url.as_str() != uri {
        return Err(RedirectUriError::NotNormal);
    }
    Ok(())
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// Whether a consent request may send the member to `requested`: it equals one of the
/// aggregator's `registered` URIs exactly — except that a registered loopback http URI matches
/// any port, as a native app's listener gets one from the operating system (RFC 8252 §7.3).
pub fn redirect_uri_allowed(registered: &[String], requested: &str) -> bool {
    if check_redirect_uri(requested).is_err() {
        return false;
    }
    registered.iter().any(|r| {
        r == requested
            || match (url::Url::parse(r), url::Url::parse(requested)) {
                (Ok(mut r), Ok(mut q)) if r.scheme() == "http" && is_loopback(&r) && is_loopback(&q) => {
                    // Both loopback: compare without the ports.
                    r.set_port(None).is_ok() && q.set_port(None).is_ok() && r == q
                }
                _ => false,
            }
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionStatus {
    Active,
    Suspended,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionEntity {
    pub issuer_id: String,
    pub aggregator_id: String,
    pub scopes: Vec<Scope>,
    pub status: ConnectionStatus,
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ParticipantRole {
    Issuer,
    Aggregator,
    Operator,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialEntity {
    pub credential_id: String,
    pub role: ParticipantRole,
    pub participant_id: String,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub issued_at: DateTime<Utc>,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub expires_at: DateTime<Utc>,
    #[serde(with = "chrono::serde::ts_microseconds_option")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One registry change: the new state of exactly one entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEvent {
    pub event_id: EventId,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub occurred_at: DateTime<Utc>,
    pub actor_type: ActorType,
    pub actor_id: String,
    pub issuer: Option<IssuerEntity>,
    pub aggregator: Option<AggregatorEntity>,
    pub connection: Option<ConnectionEntity>,
    pub credential: Option<CredentialEntity>,
}

/// The entity a registry event carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entity {
    Issuer(IssuerEntity),
    Aggregator(AggregatorEntity),
    Connection(ConnectionEntity),
    Credential(CredentialEntity),
}

impl RegistryEvent {
    pub fn new(actor_type: ActorType, actor_id: &str, entity: Entity) -> Self {
        let mut event = Self {
            event_id: EventId::random(),
            occurred_at: Utc::now(),
            actor_type,
            actor_id: actor_id.to_owned(),
            issuer: None,
            aggregator: None,
            connection: None,
            credential: None,
        };
        match entity {
            Entity::Issuer(e) => event.issuer = Some(e),
            Entity::Aggregator(e) => event.aggregator = Some(e),
            Entity::Connection(e) => event.connection = Some(e),
            Entity::Credential(e) => event.credential = Some(e),
        }
        event
    }

    /// The entity, if exactly one is set.
    pub fn entity(&self) -> Option<Entity> {
        match (&self.issuer, &self.aggregator, &self.connection, &self.credential) {
            (Some(e), None, None, None) => Some(Entity::Issuer(e.clone())),
            (None, Some(e), None, None) => Some(Entity::Aggregator(e.clone())),
            (None, None, Some(e), None) => Some(Entity::Connection(e.clone())),
            (None, None, None, Some(e)) => Some(Entity::Credential(e.clone())),
            _ => None,
        }
    }

    /// The compacted topic's key: one per entity.
    pub fn key(&self) -> String {
        match self.entity() {
            Some(Entity::Issuer(e)) => format!("issuer/{}", e.issuer_id),
            Some(Entity::Aggregator(e)) => format!("aggregator/{}", e.aggregator_id),
            Some(Entity::Connection(e)) => format!("connection/{}/{}", e.issuer_id, e.aggregator_id),
            Some(Entity::Credential(e)) => format!("credential/{}", e.credential_id),
            None => format!("invalid/{}", self.event_id),
        }
    }
}

#[cfg(test)]
mod redirect_tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_in_normal_form_can_be_registered() {
        for ok in ["https://kakeibo.example/callback", "http://127.0.0.1/callback", "http://[::1]:8080/cb"] {
            assert_eq!(check_redirect_uri(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("http://localhost:1@evil.example/", RedirectUriError::Scheme),
            ("https://localhost:1@evil.example/", RedirectUriError::UserInfo),
            ("http://kakeibo.example/callback", RedirectUriError::Scheme),
            ("http://localhost/callback", RedirectUriError::Scheme),
            ("https://kakeibo.example/callback#x", RedirectUriError::Fragment),
            ("https://KAKEIBO.example/callback", RedirectUriError::NotNormal),
            ("https://kakeibo.example", RedirectUriError::NotNormal),
            ("kakeibo.example/callback", RedirectUriError::NotAUrl),
            ("javascript:alert(1)", RedirectUriError::Scheme),
        ] {
            assert_eq!(check_redirect_uri(bad), Err(why), "{bad}");
        }
        let long = format!("https://kakeibo.example/{}", "p".repeat(MAX_REDIRECT_URI_CHARS));
        assert_eq!(check_redirect_uri(&long), Err(RedirectUriError::TooLong));
    }

    #[test]
    fn a_request_must_name_a_registered_uri_exactly_with_any_port_only_on_loopback() {
        let registered = vec!["https://kakeibo.example/callback".to_owned(), "http://127.0.0.1/callback".to_owned()];
        assert!(redirect_uri_allowed(&registered, "https://kakeibo.example/callback"));
        assert!(redirect_uri_allowed(&registered, "http://127.0.0.1:54321/callback"));
        assert!(redirect_uri_allowed(&registered, "http://127.0.0.1/callback"));
        for refused in [
            "https://kakeibo.example/callback/",
            "https://kakeibo.example/callback?x=1",
            "https://kakeibo.example:8443/callback",
            "https://evil.example/callback",
            "http://localhost:1@evil.example/",
            "http://127.0.0.1:54321/other",
            "http://[::1]:54321/callback",
            "http://localhost:54321/callback",
        ] {
            assert!(!redirect_uri_allowed(&registered, refused), "{refused}");
        }
        assert!(!redirect_uri_allowed(&[], "https://kakeibo.example/callback"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_sets() {
        let s = ScopeSet::of(&[Scope::Transactions, Scope::Statements]);
        assert!(s.contains(Scope::Transactions) && s.contains(Scope::Statements) && !s.contains(Scope::MerchantDetail));
        assert!(ScopeSet::of(&[Scope::Transactions]).is_subset_of(s));
        assert!(!ScopeSet::of(&[Scope::MerchantDetail]).is_subset_of(s));
        assert_eq!(ScopeSet::default().with(Scope::Statements).with(Scope::Transactions), s);
    }
}
