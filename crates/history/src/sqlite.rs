//! The embedded history store: SQLite (bundled), one file or in memory.
//!
//! One connection behind a mutex, used from the blocking pool: SQLite writes one transaction at a
//! time anyway, and reads of one account's page take microseconds. WAL mode lets the file be read
//! by other tools while cardlink writes it.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension as _, Row, params};

use crate::{
    Applied, Batch, HistoryStore, StatementQuery, StatementRow, StoreError, TransactionQuery, TransactionRow, Version,
    Watermark, page, sql, start_key, statement_start,
};

/// The SQLite history store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating) the store in the file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(Self { connection: Arc::new(Mutex::new(connection)) })
    }

    /// A store in memory (tests, a `cardlink dev` without a data directory).
    pub fn in_memory() -> Result<Self, StoreError> {
        Ok(Self { connection: Arc::new(Mutex::new(Connection::open_in_memory()?)) })
    }

    /// Runs `f` on the connection in the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut connection)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }
}

fn transaction_row(row: &Row<'_>) -> rusqlite::Result<TransactionRow> {
    Ok(TransactionRow {
        account_key: row.get(0)?,
        transaction_id: row.get(1)?,
        occurred_at_micros: row.get(2)?,
        billing_month: row.get(3)?,
        kind: row.get(4)?,
        partition: row.get(5)?,
        version: row.get(6)?,
        payload: row.get(7)?,
    })
}

fn statement_row(row: &Row<'_>) -> rusqlite::Result<StatementRow> {
    Ok(StatementRow {
        account_key: row.get(0)?,
        statement_id: row.get(1)?,
        billing_month: row.get(2)?,
        status: row.get(3)?,
        partition: row.get(4)?,
        version: row.get(5)?,
        payload: row.get(6)?,
    })
}

impl HistoryStore for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.with(|c| Ok(c.execute_batch(&sql::sqlite_schema())?)).await
    }

    async fn apply(&self, batch: &Batch) -> Result<Applied, StoreError> {
        let batch = batch.clone();
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut applied = Applied::default();
            {
                let mut upsert = tx.prepare_cached(sql::UPSERT_TRANSACTION)?;
                for t in &batch.transactions {
                    let written = upsert
                        .query_row(
                            params![
                                t.account_key,
                                t.transaction_id,
                                t.occurred_at_micros,
                                t.billing_month,
                                t.kind,
                                t.partition,
                                t.version,
                                t.payload
                            ],
                            |_| Ok(()),
                        )
                        .optional()?;
                    applied.record(written.is_some());
                }
                let mut upsert = tx.prepare_cached(sql::UPSERT_STATEMENT)?;
                for s in &batch.statements {
                    let written = upsert
                        .query_row(
                            params![
                                s.account_key,
                                s.statement_id,
                                s.billing_month,
                                s.status,
                                s.partition,
                                s.version,
                                s.payload
                            ],
                            |_| Ok(()),
                        )
                        .optional()?;
                    applied.record(written.is_some());
                }
                let mut raise = tx.prepare_cached(sql::RAISE_WATERMARK)?;
                for w in &batch.watermarks {
                    raise.execute(params![w.topic, w.partition, w.next_offset])?;
                }
            }
            tx.commit()?;
            Ok(applied)
        })
        .await
    }

    async fn watermarks(&self) -> Result<Vec<Watermark>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare_cached(sql::WATERMARKS)?;
            let rows = statement
                .query_map([], |r| Ok(Watermark { topic: r.get(0)?, partition: r.get(1)?, next_offset: r.get(2)? }))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn transactions(&self, query: &TransactionQuery) -> Result<Vec<TransactionRow>, StoreError> {
        let limit = page(query.limit)?;
        let (key_time, key_id) = start_key(query);
        let text = match query.order {
            crate::Order::NewestFirst => sql::transactions_newest_first(),
            crate::Order::OldestFirst => sql::transactions_oldest_first(),
        };
        let (account, from, to) = (query.account_key.clone(), query.from_micros, query.to_micros);
        let month = query.billing_month.clone().unwrap_or_default();
        self.with(move |c| {
            let mut statement = c.prepare_cached(&text)?;
            let rows =
                statement.query_map(params![account, from, to, month, key_time, key_id, limit], transaction_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn transaction(&self, account_key: &str, transaction_id: &str) -> Result<Option<TransactionRow>, StoreError> {
        let (account, id) = (account_key.to_owned(), transaction_id.to_owned());
        self.with(move |c| {
            let mut statement = c.prepare_cached(&sql::transaction_by_id())?;
            Ok(statement.query_row(params![account, id], transaction_row).optional()?)
        })
        .await
    }

    async fn statements(&self, query: &StatementQuery) -> Result<Vec<StatementRow>, StoreError> {
        let limit = page(query.limit)?;
        let (key_month, key_id) = statement_start(query);
        let (account, from, to) = (query.account_key.clone(), query.from_month.clone(), query.to_month.clone());
        self.with(move |c| {
            let mut statement = c.prepare_cached(sql::STATEMENTS)?;
            let rows = statement.query_map(params![account, from, to, key_month, key_id, limit], statement_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn transactions_changed_since(
        &self,
        account_key: &str,
        after: Version,
        limit: u32,
    ) -> Result<Vec<TransactionRow>, StoreError> {
        let limit = page(limit)?;
        let account = account_key.to_owned();
        self.with(move |c| {
            let mut statement = c.prepare_cached(&sql::transactions_changed_since())?;
            let rows = statement.query_map(params![account, after, limit], transaction_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn remove_older(&self, before_micros: i64, before_month: &str, limit: u32) -> Result<u64, StoreError> {
        let month = before_month.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let transactions = tx.execute(sql::REMOVE_OLD_TRANSACTIONS, params![before_micros, limit])?;
            let left = u64::from(limit).saturating_sub(transactions as u64);
            let statements = tx.execute(sql::REMOVE_OLD_STATEMENTS, params![month, left])?;
            tx.commit()?;
            Ok((transactions + statements) as u64)
        })
        .await
    }
}
