//! Retention: history older than the configured window is removed in small batches, with a pause
//! between them, so the deletes never hold the indexer's writes up for long. Every replica runs
//! it; the deletes are idempotent, so running twice only finds less to do.

use std::time::Duration;

use cardlink_history::HistoryStore;
use tokio::sync::watch;

use crate::service::retention_cutoff;

/// Rows removed per statement at most.
pub const BATCH: u32 = 1_000;
/// The pause between batches while there is more to remove.
pub const PAUSE: Duration = Duration::from_millis(200);
/// How often retention looks for old rows once none are left.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Removes everything older than `months` months in batches of `batch` until none is left, then
/// waits `every`; stops when `shutdown` changes. Returns the rows removed in all.
pub async fn run(
    store: impl HistoryStore,
    months: u32,
    batch: u32,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> u64 {
    let mut removed_total = 0;
    loop {
        let (before, before_month) = retention_cutoff(chrono::Utc::now(), months);
        let wait = match store.remove_older(before, &before_month, batch).await {
            Ok(removed) => {
                removed_total += removed;
                if removed > 0 {
                    tracing::info!(removed, before_month = %before_month, "history retention removed old rows");
                }
                if removed >= u64::from(batch) { PAUSE } else { every }
            }
            Err(e) => {
                tracing::warn!(error = %e, "history retention failed; trying again later");
                every.min(Duration::from_secs(60))
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return removed_total,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use cardlink_history::sqlite::SqliteStore;
    use cardlink_history::{Batch, Order, StatementQuery, StatementRow, TransactionQuery, TransactionRow};

    use super::*;

    fn txn(id: &str, at: chrono::DateTime<chrono::Utc>) -> TransactionRow {
        TransactionRow {
            account_key: "iss-a/acct-1".into(),
            transaction_id: id.into(),
            occurred_at_micros: at.timestamp_micros(),
            billing_month: None,
            kind: 2,
            partition: 0,
            version: 1,
            payload: Vec::new(),
        }
    }

    fn statement(id: &str, month: &str) -> StatementRow {
        StatementRow {
            account_key: "iss-a/acct-1".into(),
            statement_id: id.into(),
            billing_month: month.into(),
            status: 2,
            partition: 0,
            version: 1,
            payload: Vec::new(),
        }
    }

    /// Everything older than the window goes, in batches; nothing inside it does.
    #[tokio::test]
    async fn retention_removes_what_is_older_than_the_window_in_batches() {
        let store = SqliteStore::in_memory().unwrap_or_else(|e| panic!("{e}"));
        store.migrate().await.unwrap_or_else(|e| panic!("{e}"));
        let now = chrono::Utc::now();
        let old = now - chrono::TimeDelta::days(31 * 26);
        let recent = now - chrono::TimeDelta::days(31 * 23);
        let mut transactions: Vec<TransactionRow> = (0..7).map(|i| txn(&format!("old-{i}"), old)).collect();
        transactions.push(txn("recent", recent));
        let this_month = format!("{}", now.format("%Y-%m"));
        let statements = vec![statement("old", "2020-01"), statement("now", &this_month)];
        let batch = Batch { transactions, statements, watermarks: Vec::new() };
        store.apply(&batch).await.unwrap_or_else(|e| panic!("{e}"));

        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(store.clone(), 25, 2, Duration::from_secs(3600), stopped));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let all = TransactionQuery {
            account_key: "iss-a/acct-1".into(),
            from_micros: i64::MIN,
            to_micros: i64::MAX,
            order: Order::OldestFirst,
            billing_month: None,
            after: None,
            limit: 100,
        };
        loop {
            let left = store.transactions(&all).await.unwrap_or_else(|e| panic!("{e}"));
            if left.len() == 1 {
                assert_eq!(left[0].transaction_id, "recent");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "old rows left: {}", left.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.send_replace(true);
        let removed = task.await.unwrap_or_default();
        assert_eq!(removed, 8, "7 transactions and 1 statement, in batches of 2");
        let statements = store
            .statements(&StatementQuery {
                account_key: "iss-a/acct-1".into(),
                from_month: "0000-01".into(),
                to_month: "9999-12".into(),
                after: None,
                limit: 10,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(statements.iter().map(|s| s.statement_id.as_str()).collect::<Vec<_>>(), ["now"]);
    }
}
