//! The history store: the latest state of every transaction and statement, per account.
//!
//! Kafka stays the log of record; it has no per-key index, so serving one member's past from it
//! means reading whole partitions. The store keeps one row per transaction (`issuer_transaction_id`:
//! AUTHORIZED → POSTED → REFUNDED stay one row) and one per statement, each the bus record as
//! published plus what reads filter and order on, versioned by the record's bus offset: a row is
//! replaced only by a newer version, so replays and indexer restarts change nothing.
//!
//! Two implementations of one trait ([`HistoryStore`]) with the same schema shape and the same
//! statements ([`sql`]): PostgreSQL for production ([`postgres`]) — every statement on the serving
//! path filters on the account key, the distribution column when the tables are distributed on
//! Citus — and SQLite as the embedded default ([`sqlite`]), so `cardlink dev` and the tests need
//! nothing running. One conformance suite (`tests/conformance.rs`) runs against both.
//!
//! Times are microseconds since the epoch (UTC) in both stores, so the statements are the same text.

use std::future::Future;

mod any;
pub mod postgres;
pub mod sql;
pub mod sqlite;

pub use any::{AnyStore, StoreUrl};

/// The bus key of an account (`issuer_id/account_ref`): every row and every serving-path
/// statement is keyed by it.
pub type AccountKey = String;

/// A version: the bus offset of the record a row holds. An account's records are on one
/// partition (the bus key is the account), so offsets order an account's versions. If an event
/// topic's partition count changes, accounts move partitions and that no longer holds: re-index
/// then (a new indexer group into an empty store).
pub type Version = i64;

/// One transaction's latest state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionRow {
    pub account_key: AccountKey,
    /// `issuer_transaction_id`, the same in every state of the transaction.
    pub transaction_id: String,
    /// When it occurred (利用日時), microseconds since the epoch.
    pub occurred_at_micros: i64,
    /// 請求月 ("YYYY-MM"), when known.
    pub billing_month: Option<String>,
    /// The `TransactionKind` of the latest record (as its protobuf number).
    pub kind: i32,
    pub partition: i32,
    pub version: Version,
    /// The bus record's value as published (Avro single-object encoding).
    pub payload: Vec<u8>,
}

/// One statement's latest state (確定前 → 確定後 are versions of one row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementRow {
    pub account_key: AccountKey,
    pub statement_id: String,
    /// 請求月 ("YYYY-MM").
    pub billing_month: String,
    /// The statement's `StatementStatus` (as its protobuf number).
    pub status: i32,
    pub partition: i32,
    pub version: Version,
    pub payload: Vec<u8>,
}

/// How far the indexer has applied one partition of one topic: every record before
/// `next_offset` is in the store.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watermark {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// What the indexer applies at once: rows and the watermarks they bring the store to, in one
/// database transaction (a watermark never runs ahead of its rows).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub transactions: Vec<TransactionRow>,
    pub statements: Vec<StatementRow>,
    pub watermarks: Vec<Watermark>,
}

/// What applying a batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows written (new, or newer than the stored version).
    pub written: u64,
    /// Rows not written: the store already held that version or a newer one.
    pub stale: u64,
}

impl Applied {
    fn record(&mut self, written: bool) {
        if written {
            self.written += 1;
        } else {
            self.stale += 1;
        }
    }
}

/// Newest or oldest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    NewestFirst,
    OldestFirst,
}

/// Where a transaction page continues: after this (time, id) in the listing's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionKey {
    pub occurred_at_micros: i64,
    pub transaction_id: String,
}

/// One page of an account's transactions that occurred in `[from, to)`.
#[derive(Clone, Debug)]
pub struct TransactionQuery {
    pub account_key: AccountKey,
    pub from_micros: i64,
    pub to_micros: i64,
    pub order: Order,
    /// Only transactions of this billing month (請求月, "YYYY-MM").
    pub billing_month: Option<String>,
    /// The last row of the previous page; `None` for the first page.
    pub after: Option<TransactionKey>,
    pub limit: u32,
}

impl TransactionQuery {
    /// A page of everything the account has from `from_micros` on, newest first — how a backfill
    /// and a lookup by id walk an account's history.
    pub fn newest_since(account_key: &str, from_micros: i64, after: Option<TransactionKey>, limit: u32) -> Self {
        Self {
            account_key: account_key.to_owned(),
            from_micros,
            to_micros: i64::MAX,
            order: Order::NewestFirst,
            billing_month: None,
            after,
            limit,
        }
    }
}

/// One page of an account's statements of the billing months `[from_month, to_month]`
/// ("YYYY-MM"), newest month first; within a month by statement id, descending.
#[derive(Clone, Debug)]
pub struct StatementQuery {
    pub account_key: AccountKey,
    pub from_month: String,
    pub to_month: String,
    /// The (billing month, statement id) of the previous page's last row.
    pub after: Option<(String, String)>,
    pub limit: u32,
}

/// The largest page a query may ask for.
pub const MAX_PAGE: u32 = 1_000;

/// The month ("YYYY-MM", UTC) of an instant in microseconds — where a time window starts among
/// statements, which are kept by month; the earliest month for `i64::MIN`.
pub fn month_of(micros: i64) -> String {
    use chrono::Datelike as _;
    chrono::DateTime::from_timestamp_micros(micros)
        .map_or_else(|| "0000-01".to_owned(), |t| format!("{:04}-{:02}", t.year(), t.month()))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL connection pool: {0}")]
    Pool(String),
    #[error("the history store's database URL is not usable: {0}")]
    Url(String),
    #[error("a page of at most {MAX_PAGE} rows may be asked for, not {0}")]
    PageTooLarge(u32),
    #[error("the store's worker stopped: {0}")]
    Worker(String),
}

/// The history store, whichever database holds it.
pub trait HistoryStore: Send + Sync {
    /// Creates the tables and indexes if missing.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes each row unless the store holds its version or a newer one, and raises each
    /// watermark (never lowers one), in one database transaction.
    fn apply(&self, batch: &Batch) -> impl Future<Output = Result<Applied, StoreError>> + Send;

    /// Every watermark the store holds.
    fn watermarks(&self) -> impl Future<Output = Result<Vec<Watermark>, StoreError>> + Send;

    /// A page of one account's transactions, in a total order (time, then id), so pages never
    /// miss or repeat a row while others are written.
    fn transactions(
        &self,
        query: &TransactionQuery,
    ) -> impl Future<Output = Result<Vec<TransactionRow>, StoreError>> + Send;

    /// One transaction of one account.
    fn transaction(
        &self,
        account_key: &str,
        transaction_id: &str,
    ) -> impl Future<Output = Result<Option<TransactionRow>, StoreError>> + Send;

    /// A page of one account's statements.
    fn statements(&self, query: &StatementQuery) -> impl Future<Output = Result<Vec<StatementRow>, StoreError>> + Send;

    /// One account's transactions written at a version after `after`, oldest version first: what
    /// changed since a reader last looked.
    fn transactions_changed_since(
        &self,
        account_key: &str,
        after: Version,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<TransactionRow>, StoreError>> + Send;

    /// Removes at most `limit` transactions that occurred before `before_micros` and statements
    /// of billing months before `before_month`; returns how many rows went. Retention runs it in
    /// small batches so the indexer is never blocked for long.
    fn remove_older(
        &self,
        before_micros: i64,
        before_month: &str,
        limit: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// `limit` if it is a page size the store serves.
fn page(limit: u32) -> Result<i64, StoreError> {
    if limit > MAX_PAGE {
        return Err(StoreError::PageTooLarge(limit));
    }
    Ok(i64::from(limit))
}

/// The keyset bound a first page starts from: before every row (oldest first) or after every
/// row (newest first).
fn start_key(query: &TransactionQuery) -> (i64, String) {
    match (&query.after, query.order) {
        (Some(k), _) => (k.occurred_at_micros, k.transaction_id.clone()),
        (None, Order::NewestFirst) => (i64::MAX, String::new()),
        (None, Order::OldestFirst) => (i64::MIN, String::new()),
    }
}

/// The keyset bound of a statement page: (month, id).
fn statement_start(query: &StatementQuery) -> (String, String) {
    // "~" sorts after every digit, so ("9999-12~", "") is after every real month.
    query.after.clone().unwrap_or_else(|| ("9999-12~".to_owned(), String::new()))
}
