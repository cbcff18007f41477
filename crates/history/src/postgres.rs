//! The production history store: PostgreSQL (or Citus), through a bounded connection pool.
//!
//! The database is named by a URL (`postgres://user:password@host:5432/cardlink`, or the key/value
//! form libpq takes). Statements are prepared once per connection (the pool caches them). For
//! Citus, create the tables with [`crate::sql::postgres_schema`], then distribute them by the
//! account (`docs/operations.md`).

use std::str::FromStr as _;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures::future::try_join_all;
use tokio_postgres::{NoTls, Row};

use crate::{
    Applied, Batch, HistoryStore, StatementQuery, StatementRow, StoreError, TransactionQuery, TransactionRow, Version,
    Watermark, page, sql, start_key, statement_start,
};

/// Connections held at most by default: enough for the indexer and a replica's concurrent reads.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// The PostgreSQL history store.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("PostgresStore").field("status", &self.pool.status()).finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// A store on the database `url`, holding at most `max_connections` connections. Nothing is
    /// contacted until the first call.
    pub fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        // The parse error could echo the URL, password included: say only what is wrong in kind.
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|_| StoreError::Url("not a PostgreSQL URL (postgres://user@host:port/database)".into()))?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool =
            Pool::builder(manager).max_size(max_connections).build().map_err(|e| StoreError::Pool(e.to_string()))?;
        Ok(Self { pool })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Pool(other.to_string()),
        })
    }
}

fn transaction_row(row: &Row) -> Result<TransactionRow, StoreError> {
    Ok(TransactionRow {
        account_key: row.try_get(0)?,
        transaction_id: row.try_get(1)?,
        occurred_at_micros: row.try_get(2)?,
        billing_month: row.try_get(3)?,
        kind: row.try_get(4)?,
        partition: row.try_get(5)?,
        version: row.try_get(6)?,
        payload: row.try_get(7)?,
    })
}

fn statement_row(row: &Row) -> Result<StatementRow, StoreError> {
    Ok(StatementRow {
        account_key: row.try_get(0)?,
        statement_id: row.try_get(1)?,
        billing_month: row.try_get(2)?,
        status: row.try_get(3)?,
        partition: row.try_get(4)?,
        version: row.try_get(5)?,
        payload: row.try_get(6)?,
    })
}

impl HistoryStore for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(self.client().await?.batch_execute(&sql::postgres_schema()).await?)
    }

    async fn apply(&self, batch: &Batch) -> Result<Applied, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut applied = Applied::default();
        // Pipelined: every statement of the batch is sent before the first answer is awaited
        // (tokio-postgres queues them on the connection in order, and the server runs them in
        // that order), so a batch costs about one round trip instead of one per row.
        let owned = tx;
        let tx = &owned;
        let upsert = &tx.prepare_cached(sql::UPSERT_TRANSACTION).await?;
        let written = try_join_all(batch.transactions.iter().map(|t| async move {
            tx.query_opt(
                upsert,
                &[
                    &t.account_key,
                    &t.transaction_id,
                    &t.occurred_at_micros,
                    &t.billing_month,
                    &t.kind,
                    &t.partition,
                    &t.version,
                    &t.payload,
                ],
            )
            .await
        }))
        .await?;
        written.iter().for_each(|w| applied.record(w.is_some()));
        let upsert = &tx.prepare_cached(sql::UPSERT_STATEMENT).await?;
        let written = try_join_all(batch.statements.iter().map(|s| async move {
            tx.query_opt(
                upsert,
                &[&s.account_key, &s.statement_id, &s.billing_month, &s.status, &s.partition, &s.version, &s.payload],
            )
            .await
        }))
        .await?;
        written.iter().for_each(|w| applied.record(w.is_some()));
        let raise = &tx.prepare_cached(sql::RAISE_WATERMARK).await?;
        try_join_all(
            batch
                .watermarks
                .iter()
                .map(|w| async move { tx.execute(raise, &[&w.topic, &w.partition, &w.next_offset]).await }),
        )
        .await?;
        owned.commit().await?;
        Ok(applied)
    }

    async fn watermarks(&self) -> Result<Vec<Watermark>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(sql::WATERMARKS, &[]).await?;
        rows.iter()
            .map(|r| Ok(Watermark { topic: r.try_get(0)?, partition: r.try_get(1)?, next_offset: r.try_get(2)? }))
            .collect()
    }

    async fn transactions(&self, query: &TransactionQuery) -> Result<Vec<TransactionRow>, StoreError> {
        let limit = page(query.limit)?;
        let (key_time, key_id) = start_key(query);
        let text = match query.order {
            crate::Order::NewestFirst => sql::transactions_newest_first(),
            crate::Order::OldestFirst => sql::transactions_oldest_first(),
        };
        let month = query.billing_month.as_deref().unwrap_or_default();
        let client = self.client().await?;
        let statement = client.prepare_cached(&text).await?;
        let rows = client
            .query(
                &statement,
                &[&query.account_key, &query.from_micros, &query.to_micros, &month, &key_time, &key_id, &limit],
            )
            .await?;
        rows.iter().map(transaction_row).collect()
    }

    async fn transaction(&self, account_key: &str, transaction_id: &str) -> Result<Option<TransactionRow>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql::transaction_by_id()).await?;
        client.query_opt(&statement, &[&account_key, &transaction_id]).await?.as_ref().map(transaction_row).transpose()
    }

    async fn statements(&self, query: &StatementQuery) -> Result<Vec<StatementRow>, StoreError> {
        let limit = page(query.limit)?;
        let (key_month, key_id) = statement_start(query);
        let client = self.client().await?;
        let statement = client.prepare_cached(sql::STATEMENTS).await?;
        let rows = client
            .query(&statement, &[&query.account_key, &query.from_month, &query.to_month, &key_month, &key_id, &limit])
            .await?;
        rows.iter().map(statement_row).collect()
    }

    async fn transactions_changed_since(
        &self,
        account_key: &str,
        after: Version,
        limit: u32,
    ) -> Result<Vec<TransactionRow>, StoreError> {
        let limit = page(limit)?;
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql::transactions_changed_since()).await?;
        let rows = client.query(&statement, &[&account_key, &after, &limit]).await?;
        rows.iter().map(transaction_row).collect()
    }

    async fn remove_older(&self, before_micros: i64, before_month: &str, limit: u32) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let limit = i64::from(limit);
        let transactions = tx.execute(sql::REMOVE_OLD_TRANSACTIONS, &[&before_micros, &limit]).await?;
        let left = limit.saturating_sub(i64::try_from(transactions).unwrap_or(i64::MAX));
        let statements = tx.execute(sql::REMOVE_OLD_STATEMENTS, &[&before_month, &left]).await?;
        tx.commit().await?;
        Ok(transactions + statements)
    }
}
