//! The store a deployment names by URL: `postgres://…` / `postgresql://…` (production; a managed
//! PostgreSQL or a Citus coordinator) or `sqlite:PATH` (the embedded default). The trait's
//! methods are generic futures, so the choice made at start-up is an enum, not a trait object.

use std::path::PathBuf;

use crate::postgres::PostgresStore;
use crate::sqlite::SqliteStore;
use crate::{
    Applied, Batch, HistoryStore, StatementQuery, StatementRow, StoreError, TransactionQuery, TransactionRow, Version,
    Watermark,
};

/// Where the history store is.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A SQLite database file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (may hold a password: never shown, see `Debug`).
    Postgres(String),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Self::Postgres(_) => f.write_str("postgres://…"),
        }
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, StoreError> {
        let text = text.trim();
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Self::Postgres(text.to_owned()));
        }
        match text.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => Ok(Self::Sqlite(PathBuf::from(path.trim_start_matches("//")))),
            _ => Err(StoreError::Url(
                "expected postgres://USER@HOST:PORT/DATABASE (or postgresql://…) or sqlite:PATH".into(),
            )),
        }
    }
}

/// The history store a [`StoreUrl`] names.
#[derive(Clone, Debug)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl AnyStore {
    /// Opens (SQLite: creates) the store and brings its schema up to date.
    pub async fn open(url: &StoreUrl, max_connections: usize) -> Result<Self, StoreError> {
        let store = match url {
            StoreUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| StoreError::Url(format!("cannot create {}: {e}", dir.display())))?;
                }
                Self::Sqlite(SqliteStore::open(path)?)
            }
            StoreUrl::Postgres(url) => Self::Postgres(PostgresStore::connect(url, max_connections)?),
        };
        store.migrate().await?;
        Ok(store)
    }
}

macro_rules! each {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Self::Sqlite($store) => $call.await,
            Self::Postgres($store) => $call.await,
        }
    };
}

impl HistoryStore for AnyStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        each!(self, s => s.migrate())
    }

    async fn apply(&self, batch: &Batch) -> Result<Applied, StoreError> {
        each!(self, s => s.apply(batch))
    }

    async fn watermarks(&self) -> Result<Vec<Watermark>, StoreError> {
        each!(self, s => s.watermarks())
    }

    async fn transactions(&self, query: &TransactionQuery) -> Result<Vec<TransactionRow>, StoreError> {
        each!(self, s => s.transactions(query))
    }

    async fn transaction(&self, account_key: &str, transaction_id: &str) -> Result<Option<TransactionRow>, StoreError> {
        each!(self, s => s.transaction(account_key, transaction_id))
    }

    async fn statements(&self, query: &StatementQuery) -> Result<Vec<StatementRow>, StoreError> {
        each!(self, s => s.statements(query))
    }

    async fn transactions_changed_since(
        &self,
        account_key: &str,
        after: Version,
        limit: u32,
    ) -> Result<Vec<TransactionRow>, StoreError> {
        each!(self, s => s.transactions_changed_since(account_key, after, limit))
    }

    async fn remove_older(&self, before_micros: i64, before_month: &str, limit: u32) -> Result<u64, StoreError> {
        each!(self, s => s.remove_older(before_micros, before_month, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_store_and_never_show_a_password() {
        let pg: StoreUrl = "postgres://cardlink:s3cret@db:5432/cardlink".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(pg, StoreUrl::Postgres(_)));
        assert!(!format!("{pg:?}").contains("s3cret"));
        assert_eq!(
            "sqlite:/var/lib/cardlink/history.db".parse::<StoreUrl>().ok(),
            Some(StoreUrl::Sqlite("/var/lib/cardlink/history.db".into()))
        );
        assert_eq!("sqlite://data/h.db".parse::<StoreUrl>().ok(), Some(StoreUrl::Sqlite("data/h.db".into())));
        for bad in ["", "sqlite:", "mysql://db/x", "history.db"] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
    }
}
