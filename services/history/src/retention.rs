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
