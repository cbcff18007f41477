//! Page tokens: where a listing continues, as an opaque string the aggregator hands back.
//!
//! A token is sealed (HMAC under the deployment's secret, [`cardlink_auth::seal`]) so it cannot be
//! forged or edited, and it names the listing it belongs to — a digest of the caller, the consent,
//! the account and every filter as the first request gave them — so it cannot be used with other
//! filters or by another aggregator (AIP-158: only `page_size` may change between pages). It also
//! carries what the first page resolved once for the whole listing: the time range (a default
//! "now" must not move between pages), when the listing began, and its changes cursor.

use serde::{Deserialize, Serialize};

/// Longest page token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4 * 1024;

/// What each kind of listing seals its tokens for (a transaction token is no statement token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    Transactions,
    Statements,
}

impl Listing {
    fn purpose(self) -> &'static str {
        match self {
            Self::Transactions => "history-transactions-page",
            Self::Statements => "history-statements-page",
        }
    }
}

/// The digest that binds a token to one listing: the caller and the request's fields as given
/// (not as defaulted), each length-prefixed so no two field lists share a digest.
pub fn listing_digest(secret: &[u8], fields: &[&str]) -> String {
    let mut parts: Vec<Vec<u8>> = Vec::with_capacity(fields.len());
    for f in fields {
        let mut p = (f.len() as u64).to_be_bytes().to_vec();
        p.extend_from_slice(f.as_bytes());
        parts.push(p);
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let mac = cardlink_auth::hmac_sha256(secret, &refs);
    hex_of(&mac[..16])
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last item of the page a token continues after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum After {
    /// (occurred_at microseconds, issuer transaction id).
    Transaction(i64, String),
    /// (billing month, issuer statement id).
    Statement(String, String),
}

/// What a page token holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageToken {
    pub listing: String,
    /// The range the first page resolved: microseconds `[from, to)` for transactions.
    pub from: i64,
    pub to: i64,
    pub after: After,
    /// When the listing began (microseconds).
    pub as_of: i64,
    pub changes_cursor: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the page token is not one this deployment issued, or was altered")]
    Invalid,
    #[error("the page token belongs to another listing: every field but page_size must be as in the first request")]
    Mismatch,
}

impl PageToken {
    pub fn seal(&self, secret: &[u8], listing: Listing) -> String {
        // A token is serialised from our own types: it cannot fail.
        let payload = serde_json::to_vec(self).unwrap_or_default();
        cardlink_auth::seal(secret, listing.purpose(), &payload)
    }

    /// The token `text`, if it was sealed here for `listing` and belongs to the listing whose
    /// digest is `expected`.
    pub fn open(secret: &[u8], listing: Listing, text: &str, expected: &str) -> Result<Self, TokenError> {
        if text.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid);
        }
        let payload = cardlink_auth::unseal(secret, listing.purpose(), text).ok_or(TokenError::Invalid)?;
        let token: Self = serde_json::from_slice(&payload).map_err(|_| TokenError::Invalid)?;
        if !cardlink_auth::constant_time_eq(token.listing.as_bytes(), expected.as_bytes()) {
            return Err(TokenError::Mismatch);
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SECRET: &[u8] = b"history-secret-0123456789abcdefg";

    fn token(listing: &str) -> PageToken {
        PageToken {
            listing: listing.to_owned(),
            from: 1,
            to: 2,
            after: After::Transaction(5, "tx-1".into()),
            as_of: 3,
            changes_cursor: "cur1.x.y".into(),
        }
    }

    #[test]
    fn a_token_opens_only_for_its_listing_and_kind() {
        let digest = listing_digest(SECRET, &["agg-x", "cns-1", "acc_1", "", ""]);
        let text = token(&digest).seal(SECRET, Listing::Transactions);
        assert_eq!(PageToken::open(SECRET, Listing::Transactions, &text, &digest), Ok(token(&digest)));
        let other = listing_digest(SECRET, &["agg-x", "cns-1", "acc_1", "2026-10", ""]);
        assert_eq!(PageToken::open(SECRET, Listing::Transactions, &text, &other), Err(TokenError::Mismatch));
        assert_eq!(PageToken::open(SECRET, Listing::Statements, &text, &digest), Err(TokenError::Invalid));
        assert_eq!(
            PageToken::open(b"another-secret-0123456789abcdefg", Listing::Transactions, &text, &digest),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn field_boundaries_matter_to_the_digest() {
        assert_ne!(listing_digest(SECRET, &["ab", "c"]), listing_digest(SECRET, &["a", "bc"]));
    }

    proptest! {
        /// Any change to a token's text is refused, never read as another position.
        #[test]
        fn an_altered_token_is_refused(at in 0usize..400, byte in any::<u8>()) {
            let digest = listing_digest(SECRET, &["agg-x"]);
            let text = token(&digest).seal(SECRET, Listing::Transactions);
            let mut bytes = text.clone().into_bytes();
            let at = at % bytes.len();
            prop_assume!(bytes[at] != byte);
            bytes[at] = byte;
            let altered = String::from_utf8_lossy(&bytes).into_owned();
            prop_assume!(altered != text);
            prop_assert!(PageToken::open(SECRET, Listing::Transactions, &altered, &digest).is_err());
        }
    }
}
