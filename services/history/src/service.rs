//! The History API as plain async functions: each call bound to the calling aggregator and one of
//! its active consents, read from the store, and projected exactly as the live stream projects.
//!
//! A call is answered only on views at most [`VIEW_FRESHNESS`] old (the same bound the stream
//! keeps), so a revoked consent, a suspended connection or a suspended aggregator reads nothing
//! more after the revocation bound — the next page of a listing begun before answers
//! `CONSENT_ENDED`.
//!
//! Every item answered is recorded like a stream's delivery ([`AccessLog`]): the member's page
//! shows what each aggregator read.
//!
//! Listings are keyset pages in a total order (time then id; month then id), so pages never miss
//! or repeat a row while the indexer writes. Before the first page reads any row, the store's
//! watermarks are taken as the listing's changes cursor: every event published after them comes
//! through `Subscribe(cursor)`, so a listing plus its stream miss nothing (rows read later may
//! already show newer states; their versions say so).

use std::sync::Arc;
use std::time::Duration;

use cardlink_api::{ApiError, Reason, convert, v1};
use cardlink_entitlement::VIEW_FRESHNESS;
use cardlink_entitlement::access::AccessLog;
use cardlink_entitlement::cursor::Cursor;
use cardlink_entitlement::projection::project;
use cardlink_events::Event;
use cardlink_events::registry::Scope;
use cardlink_history::{
    HistoryStore, MAX_PAGE, Order, StatementQuery, StatementRow, StoreError, TransactionKey, TransactionQuery,
    TransactionRow,
};
use cardlink_views::consent::{ConsentView, Grant};
use cardlink_views::follow::Followed;
use cardlink_views::registry::RegistryView;
use chrono::{DateTime, Datelike as _, Utc};

use crate::page::{After, Listing, PageToken, TokenError, listing_digest};

/// The page size when the request names none.
pub const DEFAULT_PAGE: u32 = 100;
/// A transaction listing's default range: this long before its newest time (CDR's default).
pub const DEFAULT_RANGE: Duration = Duration::from_secs(90 * 86_400);
/// The default retention: 25 months, so 24 full months are always there.
pub const DEFAULT_RETENTION_MONTHS: u32 = 25;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("the consent and registry views are catching up with the bus; retry shortly")]
    NotReady,
    #[error("no consent {0:?}")]
    ConsentNotFound(String),
    #[error("consent {0:?} is another aggregator's")]
    NotYourConsent(String),
    #[error("consent {0:?} is not active (revoked, expired or not granted yet)")]
    ConsentEnded(String),
    #[error("the card company's connection with this aggregator is not active")]
    NotConnected,
    #[error("the consent does not grant {0}")]
    ScopeNotGranted(&'static str),
    #[error("the consent covers several accounts: name one in account_ref")]
    AccountRequired,
    #[error("the consent does not cover account {0:?}")]
    AccountNotInConsent(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no transaction {0:?} in this account's history under this consent")]
    TransactionNotFound(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the history store: {0}")]
    Store(#[from] StoreError),
}

impl ApiError for HistoryError {
    fn reason(&self) -> Reason {
        match self {
            Self::NotReady => Reason::NotReady,
            Self::ConsentNotFound(_) => Reason::ConsentNotFound,
            Self::NotYourConsent(_) => Reason::NotYourConsent,
            Self::ConsentEnded(_) => Reason::ConsentEnded,
            Self::NotConnected => Reason::NotConnected,
            Self::ScopeNotGranted(_) => Reason::ScopeNotGranted,
            Self::AccountRequired => Reason::AccountRequired,
            Self::AccountNotInConsent(_) => Reason::AccountNotInConsent,
            Self::InvalidArgument(_) => Reason::InvalidArgument,
            Self::TransactionNotFound(_) => Reason::NotFound,
            Self::Token(TokenError::Invalid) => Reason::PageTokenInvalid,
            Self::Token(TokenError::Mismatch) => Reason::PageTokenMismatch,
            Self::Store(StoreError::PageTooLarge(_)) => Reason::InvalidArgument,
            Self::Store(_) => Reason::HistoryUnavailable,
        }
    }
}

/// One call's consent, resolved: which account of which issuer, under which grant.
#[derive(Clone, Debug)]
struct Bound {
    issuer_id: String,
    account_key: String,
    grant: Grant,
}

/// The History API over one store.
#[derive(Clone, Debug)]
pub struct History<S> {
    store: S,
    consents: Followed<ConsentView>,
    registry: Followed<RegistryView>,
    secret: Arc<[u8]>,
    retention_months: u32,
    /// What was read, for the audit topic (the member's access history).
    access: AccessLog,
}

impl<S: HistoryStore> History<S> {
    pub fn new(
        store: S,
        consents: Followed<ConsentView>,
        registry: Followed<RegistryView>,
        secret: Arc<[u8]>,
        retention_months: u32,
    ) -> Self {
        Self { store, consents, registry, secret, retention_months, access: AccessLog::default() }
    }

    /// Records every item answered on `access` (written to the audit topic by its flusher).
    pub fn with_access_log(mut self, access: AccessLog) -> Self {
        self.access = access;
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Resolves the call's consent and account, or says why nothing may be read.
    fn bind(
        &self,
        aggregator_id: &str,
        consent_id: &str,
        account_ref: &str,
        now: DateTime<Utc>,
    ) -> Result<Bound, HistoryError> {
        if !(self.consents.is_fresh(VIEW_FRESHNESS) && self.registry.is_fresh(VIEW_FRESHNESS)) {
            return Err(HistoryError::NotReady);
        }
        let ids = cardlink_auth::Pseudonyms::new(&self.secret, aggregator_id);
        let (issuer_id, account, grant) = self.consents.read(|view| {
            let consent =
                view.consent(consent_id).ok_or_else(|| HistoryError::ConsentNotFound(consent_id.to_owned()))?;
            if consent.aggregator_id() != aggregator_id {
                return Err(HistoryError::NotYourConsent(consent_id.to_owned()));
            }
            if !consent.is_active_at(now) {
                return Err(HistoryError::ConsentEnded(consent_id.to_owned()));
            }
            let mut accounts = consent.account_refs();
            let account = match (account_ref.is_empty(), accounts.next(), accounts.next()) {
                (true, Some(only), None) => only,
                (true, _, _) => return Err(HistoryError::AccountRequired),
                (false, _, _) => consent
                    .account_refs()
                    .find(|a| ids.account(consent.issuer_id(), a) == account_ref)
                    .ok_or_else(|| HistoryError::AccountNotInConsent(account_ref.to_owned()))?,
            };
            Ok((consent.issuer_id().to_owned(), account.to_owned(), consent.grant()))
        })?;
        if !self.registry.read(|r| r.is_connected(&issuer_id, aggregator_id)) {
            return Err(HistoryError::NotConnected);
        }
        let account_key = cardlink_events::codec::partition_key(&issuer_id, &account);
        Ok(Bound { issuer_id, account_key, grant })
    }

    /// The oldest instant a grant can read now: its data window, and what retention keeps.
    fn available_from(&self, grant: &Grant, now: DateTime<Utc>) -> i64 {
        grant.data_from_micros.max(retention_cutoff(now, self.retention_months).0)
    }

    /// The store's watermarks as a Subscription cursor for `aggregator_id`: read before any row,
    /// so the stream from it carries every change the listing may not show.
    async fn changes_cursor(&self, aggregator_id: &str) -> Result<String, HistoryError> {
        let marks = self.store.watermarks().await?;
        let cursor =
            Cursor::at_watermarks(aggregator_id, marks.iter().map(|w| (w.topic.as_str(), w.partition, w.next_offset)));
        Ok(cursor.encode(&self.secret))
    }

    pub async fn list_transactions(
        &self,
        aggregator_id: &str,
        request: &v1::ListTransactionsRequest,
        now: DateTime<Utc>,
    ) -> Result<v1::ListTransactionsResponse, HistoryError> {
        let bound = self.bind(aggregator_id, &request.consent_id, &request.account_ref, now)?;
        require(&bound.grant, Scope::Transactions, "TRANSACTIONS")?;
        let oldest = request.oldest_time.as_ref().map(micros).transpose()?;
        let newest = request.newest_time.as_ref().map(micros).transpose()?;
        let month = month_filter(&request.billing_month)?;
        let order = match v1::HistoryOrder::try_from(request.order) {
            Ok(v1::HistoryOrder::OldestFirst) => Order::OldestFirst,
            Ok(v1::HistoryOrder::NewestFirst | v1::HistoryOrder::Unspecified) => Order::NewestFirst,
            Err(_) => return Err(HistoryError::InvalidArgument(format!("unknown order {}", request.order))),
        };
        if let (Some(o), Some(n)) = (oldest, newest)
            && o >= n
        {
            return Err(HistoryError::InvalidArgument("oldest_time must be before newest_time".into()));
        }
        let digest = listing_digest(
            &self.secret,
            &[
                aggregator_id,
                &request.consent_id,
                &request.account_ref,
                &oldest.map(|t| t.to_string()).unwrap_or_default(),
                &newest.map(|t| t.to_string()).unwrap_or_default(),
                &request.billing_month,
                &request.order.to_string(),
            ],
        );
        let available_from = self.available_from(&bound.grant, now);
        let token = match request.page_token.is_empty() {
            false => PageToken::open(&self.secret, Listing::Transactions, &request.page_token, &digest)?,
            true => {
                let to = newest.unwrap_or(i64::MAX);
                let range = i64::try_from(DEFAULT_RANGE.as_micros()).unwrap_or(i64::MAX);
                let from = match (oldest, month) {
                    (Some(o), _) => o,
                    (None, Some(_)) => i64::MIN,
                    (None, None) => to.min(now.timestamp_micros()).saturating_sub(range),
                };
                let after = match order {
                    Order::NewestFirst => After::Transaction(i64::MAX, String::new()),
                    Order::OldestFirst => After::Transaction(i64::MIN, String::new()),
                };
                let changes_cursor = self.changes_cursor(aggregator_id).await?;
                PageToken { listing: digest, from, to, after, as_of: now.timestamp_micros(), changes_cursor }
            }
        };
        let After::Transaction(after_time, after_id) = &token.after else {
            return Err(HistoryError::Token(TokenError::Invalid));
        };
        let limit = page_size(request.page_size);
        let query = TransactionQuery {
            account_key: bound.account_key.clone(),
            from_micros: token.from.max(available_from),
            to_micros: token.to,
            order,
            billing_month: month.map(str::to_owned),
            after: Some(TransactionKey { occurred_at_micros: *after_time, transaction_id: after_id.clone() }),
            limit,
        };
        let rows = self.store.transactions(&query).await?;
        let next_page_token = self.next_page(
            &token,
            Listing::Transactions,
            rows.len() == limit as usize,
            rows.last().map(|last| After::Transaction(last.occurred_at_micros, last.transaction_id.clone())),
        );
        let transactions = rows.iter().filter_map(|r| self.transaction(r, &bound, now)).collect();
        Ok(v1::ListTransactionsResponse {
            transactions,
            next_page_token,
            available_from: Some(timestamp(available_from)),
            as_of: Some(timestamp(token.as_of)),
            changes_cursor: token.changes_cursor,
        })
    }

    /// One transaction by the id the aggregator knows it by. Ids are keyed hashes, so this
    /// reads the account's available history (at most a few thousand rows: 24 months of a card)
    /// until one matches.
    pub async fn get_transaction(
        &self,
        aggregator_id: &str,
        request: &v1::GetTransactionRequest,
        now: DateTime<Utc>,
    ) -> Result<v1::GetTransactionResponse, HistoryError> {
        let bound = self.bind(aggregator_id, &request.consent_id, &request.account_ref, now)?;
        require(&bound.grant, Scope::Transactions, "TRANSACTIONS")?;
        let not_found = || HistoryError::TransactionNotFound(request.transaction_id.clone());
        if request.transaction_id.is_empty() || request.transaction_id.len() > 64 {
            return Err(not_found());
        }
        let ids = cardlink_auth::Pseudonyms::new(&self.secret, aggregator_id);
        let mut query =
            TransactionQuery::newest_since(&bound.account_key, self.available_from(&bound.grant, now), None, MAX_PAGE);
        loop {
            let rows = self.store.transactions(&query).await?;
            if let Some(row) =
                rows.iter().find(|r| ids.transaction(&bound.issuer_id, &r.transaction_id) == request.transaction_id)
            {
                let transaction = self.transaction(row, &bound, now).ok_or_else(not_found)?;
                return Ok(v1::GetTransactionResponse { transaction: Some(transaction) });
            }
            match rows.last() {
                Some(last) if rows.len() == MAX_PAGE as usize => {
                    query.after = Some(TransactionKey {
                        occurred_at_micros: last.occurred_at_micros,
                        transaction_id: last.transaction_id.clone(),
                    });
                }
                _ => return Err(not_found()),
            }
        }
    }

    pub async fn list_statements(
        &self,
        aggregator_id: &str,
        request: &v1::ListStatementsRequest,
        now: DateTime<Utc>,
    ) -> Result<v1::ListStatementsResponse, HistoryError> {
        let bound = self.bind(aggregator_id, &request.consent_id, &request.account_ref, now)?;
        require(&bound.grant, Scope::Statements, "STATEMENTS")?;
        let from_month = month_filter(&request.from_billing_month)?;
        let to_month = month_filter(&request.to_billing_month)?;
        if let (Some(f), Some(t)) = (from_month, to_month)
            && f > t
        {
            return Err(HistoryError::InvalidArgument("from_billing_month must not be after to_billing_month".into()));
        }
        let digest = listing_digest(
            &self.secret,
            &[
                aggregator_id,
                &request.consent_id,
                &request.account_ref,
                &request.from_billing_month,
                &request.to_billing_month,
            ],
        );
        let available_from = self.available_from(&bound.grant, now);
        let token = match request.page_token.is_empty() {
            false => PageToken::open(&self.secret, Listing::Statements, &request.page_token, &digest)?,
            true => PageToken {
                listing: digest,
                from: 0,
                to: 0,
                after: After::Statement("9999-12~".into(), String::new()),
                as_of: now.timestamp_micros(),
                changes_cursor: self.changes_cursor(aggregator_id).await?,
            },
        };
        let After::Statement(after_month, after_id) = &token.after else {
            return Err(HistoryError::Token(TokenError::Invalid));
        };
        // A statement's month is before its closing day, which the data window is checked on
        // (by the projection); months before the window's month hold nothing readable.
        let window_month = cardlink_history::month_of(available_from);
        let limit = page_size(request.page_size);
        let query = StatementQuery {
            account_key: bound.account_key.clone(),
            from_month: from_month.map_or(window_month.clone(), |m| m.to_owned().max(window_month.clone())),
            to_month: to_month.unwrap_or("9999-12").to_owned(),
            after: Some((after_month.clone(), after_id.clone())),
            limit,
        };
        let rows = self.store.statements(&query).await?;
        let next_page_token = self.next_page(
            &token,
            Listing::Statements,
            rows.len() == limit as usize,
            rows.last().map(|last| After::Statement(last.billing_month.clone(), last.statement_id.clone())),
        );
        let statements = rows.iter().filter_map(|r| self.statement(r, &bound, now)).collect();
        Ok(v1::ListStatementsResponse {
            statements,
            next_page_token,
            available_from: Some(timestamp(available_from)),
            as_of: Some(timestamp(token.as_of)),
            changes_cursor: token.changes_cursor,
        })
    }

    /// The token of the page after this one — the same listing, after its `last` row — if this
    /// page was full; else none (the listing is complete).
    fn next_page(&self, token: &PageToken, listing: Listing, full: bool, last: Option<After>) -> String {
        match last {
            Some(after) if full => PageToken { after, ..token.clone() }.seal(&self.secret, listing),
            _ => String::new(),
        }
    }

    /// A stored transaction as the grant's aggregator may see it, with its version.
    fn transaction(&self, row: &TransactionRow, bound: &Bound, now: DateTime<Utc>) -> Option<v1::VersionedTransaction> {
        match self.project(&row.payload, row.version, bound, now)? {
            (v1::delivery::Event::Transaction(t), version) => {
                Some(v1::VersionedTransaction { transaction: Some(t), version })
            }
            _ => None,
        }
    }

    fn statement(&self, row: &StatementRow, bound: &Bound, now: DateTime<Utc>) -> Option<v1::VersionedStatement> {
        match self.project(&row.payload, row.version, bound, now)? {
            (v1::delivery::Event::Statement(s), version) => {
                Some(v1::VersionedStatement { statement: Some(s), version })
            }
            _ => None,
        }
    }

    /// The one projection the live stream uses. A row that does not decode was stored by a
    /// release that could read it; it is logged and left out, never shown half-read.
    fn project(
        &self,
        payload: &[u8],
        version: i64,
        bound: &Bound,
        now: DateTime<Utc>,
    ) -> Option<(v1::delivery::Event, u64)> {
        let event: Event = match cardlink_events::codec::decode(payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, version, "a history row this release cannot read; left out");
                return None;
            }
        };
        let delivery = project(&event, &bound.grant, &self.secret, now)?;
        // Provided to the aggregator: on the member's record, as a stream's deliveries are.
        self.access.record(&delivery);
        Some((delivery.event?, u64::try_from(version).unwrap_or(0)))
    }
}

fn require(grant: &Grant, scope: Scope, name: &'static str) -> Result<(), HistoryError> {
    if grant.scopes.contains(scope) { Ok(()) } else { Err(HistoryError::ScopeNotGranted(name)) }
}

fn page_size(asked: u32) -> u32 {
    match asked {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

fn micros(t: &prost_types::Timestamp) -> Result<i64, HistoryError> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .map(|t| t.timestamp_micros())
        .ok_or_else(|| HistoryError::InvalidArgument("a time is out of range".into()))
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    DateTime::from_timestamp_micros(micros).map_or_else(prost_types::Timestamp::default, convert::timestamp)
}

/// `text` if it is a billing month ("YYYY-MM"); `None` if empty.
fn month_filter(text: &str) -> Result<Option<&str>, HistoryError> {
    if text.is_empty() {
        return Ok(None);
    }
    let valid = text.len() == 7
        && text.as_bytes()[4] == b'-'
        && text[..4].bytes().all(|b| b.is_ascii_digit())
        && text[5..].parse::<u8>().is_ok_and(|m| (1..=12).contains(&m));
    if valid {
        Ok(Some(text))
    } else {
        Err(HistoryError::InvalidArgument(format!("billing month {text:?} is not YYYY-MM")))
    }
}

/// What retention keeps at `now`: transactions that occurred at or after the instant, and
/// statements of the month, `months` months before `now`'s month (its first day, UTC).
pub fn retention_cutoff(now: DateTime<Utc>, months: u32) -> (i64, String) {
    let total = i64::from(now.year()) * 12 + i64::from(now.month0()) - i64::from(months);
    let (year, month0) = (total.div_euclid(12), total.rem_euclid(12));
    let month = format!("{year:04}-{:02}", month0 + 1);
    let first =
        chrono::NaiveDate::from_ymd_opt(i32::try_from(year).unwrap_or(0), u32::try_from(month0 + 1).unwrap_or(1), 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(i64::MIN, |d| d.and_utc().timestamp_micros());
    (first, month)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_whole_months() {
        let now = DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z").unwrap_or_default().with_timezone(&Utc);
        let (micros, month) = retention_cutoff(now, 25);
        assert_eq!(month, "2024-11");
        assert_eq!(cardlink_history::month_of(micros), "2024-11");
        assert_eq!(retention_cutoff(now, 0).1, "2026-12");
        assert_eq!(retention_cutoff(now, 12).1, "2025-12");
    }

    #[test]
    fn billing_months_are_checked() {
        assert_eq!(month_filter("2026-10").ok(), Some(Some("2026-10")));
        assert_eq!(month_filter("").ok(), Some(None));
        for bad in ["2026-13", "2026-00", "2026/10", "26-10", "2026-1", "２０２６-10"] {
            assert!(month_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn page_sizes_default_and_are_capped() {
        assert_eq!(page_size(0), DEFAULT_PAGE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(5_000), MAX_PAGE);
    }
}
