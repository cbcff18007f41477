//! Backfill: a stream that starts with its consents' history from the history store, then goes on
//! live from exactly where that history ends — one cursor throughout.
//!
//! At the start the store's watermarks are read (before any row): every record before them is in
//! the store. The stream's live part starts there ([`Start::After`] those positions, through the
//! ordinary catch-up reader, then the hub), so anything that changed after the watermarks arrives
//! on the stream with a higher version, and nothing before them is missed. The history rows are
//! read after the watermarks, so some may already show newer states: their versions (bus offsets,
//! on every delivery) say so, and clients keep the highest per transaction.
//!
//! The catch-up from the watermarks passes over an issuer's historical load (history, not news),
//! so the watermarks must be past every record the stream's hub had read when it registered: a
//! new backfill first waits, up to [`INDEXED_WITHIN`], for the indexer to get there (it lags after
//! a large load), and fails with `HISTORY_UNAVAILABLE` if it does not — never with part of the
//! history silently missing.
//!
//! Consents go one at a time in id order; within one, account by account, transactions newest
//! first, then statements newest first. Every delivery's cursor holds how far the backfill has come
//! ([`BackfillState`]), so a stream killed mid-history resumes exactly after its last delivery. A
//! heartbeat with [`v1::BackfillProgress`] says when a consent is done.
//!
//! Entitlement is checked as for live deliveries: each page re-reads the consent's grant on fresh
//! views (a revoked consent's history stops within the revocation bound, and the stream's send-time
//! check drops anything still queued), and every row is projected by the same projection.
//! Backfills are bounded per replica ([`MAX_BACKFILLS`]); a backfill whose client does not read
//! waits on its bounded queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cardlink_api::v1;
use cardlink_bus::Topic;
use cardlink_entitlement::cursor::{BackfillPosition, BackfillState, Cursor, EventTopic, MAX_BACKFILL_CONSENTS};
use cardlink_entitlement::projection::project;
use cardlink_events::Event;
use cardlink_events::registry::Scope;
use cardlink_history::{AnyStore, HistoryStore, StatementQuery, TransactionKey, TransactionQuery, Watermark};
use cardlink_views::consent::Grant;
use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::catch_up::{CatchUp, CatchUpError, CatchUpReaders, Start};
use crate::delivery::Outgoing;
use crate::hub::Hub;
use crate::streams::Filters;

/// A stored row as a backfill sends it: version, payload, and its keyset key (occurred_at
/// micros or 0, billing month or "", issuer id).
type Row = (i64, Vec<u8>, (i64, String, String));

/// Backfills reading the store at once per replica; others wait their turn.
pub const MAX_BACKFILLS: usize = 8;
/// Rows read from the store per query.
pub const PAGE: u32 = 200;
/// How long a new backfill waits for the history store to hold every record its stream's hub had
/// read when the stream registered (the indexer lags behind a card company's large load).
pub const INDEXED_WITHIN: Duration = Duration::from_secs(120);
/// How often a waiting backfill reads the store's watermarks again.
const INDEXED_POLL: Duration = Duration::from_millis(250);

/// Why a backfill cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(
        "this deployment's subscription service has no history store (CARDLINK_HISTORY_STORE): backfill is not available"
    )]
    NotConfigured,
    #[error("a backfill may name at most {MAX_BACKFILL_CONSENTS} consents")]
    TooManyConsents,
}

impl cardlink_api::ApiError for BackfillError {
    fn reason(&self) -> cardlink_api::Reason {
        match self {
            Self::NotConfigured => cardlink_api::Reason::BackfillUnavailable,
            Self::TooManyConsents => cardlink_api::Reason::InvalidArgument,
        }
    }
}

/// The history store as the subscription service reads it, and the bound on backfills.
#[derive(Clone, Debug)]
pub struct Backfills {
    store: AnyStore,
    permits: Arc<Semaphore>,
}

impl Backfills {
    pub fn new(store: AnyStore) -> Self {
        Self { store, permits: Arc::new(Semaphore::new(MAX_BACKFILLS)) }
    }

    /// The cursor a new backfill starts from: a fresh state naming `consent_ids` (empty: every
    /// active consent). Its positions are the store's watermarks, set once the store holds what
    /// the stream's hub had read ([`Backfills::spawn`]).
    pub fn start(aggregator_id: &str, consent_ids: &[String], now: DateTime<Utc>) -> Result<Cursor, BackfillError> {
        if consent_ids.len() > MAX_BACKFILL_CONSENTS {
            return Err(BackfillError::TooManyConsents);
        }
        let mut cursor = Cursor::new(aggregator_id);
        let mut named = consent_ids.to_vec();
        named.sort();
        named.dedup();
        cursor.backfill = Some(Box::new(BackfillState {
            started_at: now.timestamp_micros(),
            named,
            done_through: String::new(),
            current: None,
        }));
        Ok(cursor)
    }

    /// Runs the backfill `cursor` holds, then the catch-up from its positions to `until` (where
    /// the stream joined the hub), on one channel: the stream sees one reader.
    pub fn spawn(
        &self,
        hub: &Hub,
        catch_up: &CatchUpReaders,
        aggregator: String,
        filters: Filters,
        cursor: Cursor,
        until: HashMap<(Topic, i32), i64>,
    ) -> CatchUp {
        let (tx, rx) = mpsc::channel(crate::catch_up::CATCH_UP_BUFFER);
        let (done_tx, done) = oneshot::channel();
        let (backfills, hub, readers) = (self.clone(), hub.clone(), catch_up.clone());
        tokio::spawn(async move {
            let result = async {
                let cursor = if is_new(&cursor) { backfills.at_indexed(cursor, &until, &tx).await? } else { cursor };
                let mut live = backfills.run(&hub, &aggregator, &filters, cursor, &tx).await?;
                live.backfill = None;
                readers.read_gap(&hub, &aggregator, &filters, Start::After(live), &until, &tx).await
            }
            .await;
            let _ = done_tx.send(result);
            drop(tx);
        });
        CatchUp { rx, done }
    }

    /// `cursor` (a new backfill's) at the store's watermarks, once they are past `until` on every
    /// indexed partition: waits up to [`INDEXED_WITHIN`] for the indexer.
    async fn at_indexed(
        &self,
        cursor: Cursor,
        until: &HashMap<(Topic, i32), i64>,
        tx: &mpsc::Sender<Outgoing>,
    ) -> Result<Cursor, CatchUpError> {
        let deadline = tokio::time::Instant::now() + INDEXED_WITHIN;
        loop {
            let marks = self.store.watermarks().await.map_err(store_error)?;
            let behind = unindexed(&marks, until);
            if behind == 0 {
                let mut at = Cursor::at_watermarks(
                    &cursor.aggregator_id,
                    marks.iter().map(|w| (w.topic.as_str(), w.partition, w.next_offset)),
                );
                at.backfill = cursor.backfill;
                return Ok(at);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CatchUpError::HistoryBehind { behind, waited: INDEXED_WITHIN });
            }
            tracing::debug!(behind, "a backfill waits for the history indexer");
            tokio::select! {
                _ = tx.closed() => return Err(CatchUpError::Closed),
                _ = tokio::time::sleep(INDEXED_POLL) => {}
            }
        }
    }

    /// Delivers the history `cursor`'s backfill state has left; returns the cursor after it.
    async fn run(
        &self,
        hub: &Hub,
        aggregator: &str,
        filters: &Filters,
        mut cursor: Cursor,
        tx: &mpsc::Sender<Outgoing>,
    ) -> Result<Cursor, CatchUpError> {
        let Some(mut state) = cursor.backfill.take() else { return Ok(cursor) };
        let _permit = self.permits.acquire().await.map_err(|_| CatchUpError::Closed)?;
        loop {
            if !hub.wait_until_fresh(tx.closed()).await {
                return Err(CatchUpError::Closed);
            }
            let position = match state.current.take() {
                Some(p) => p,
                None => match next_consent(hub, aggregator, &state) {
                    Some(consent_id) => {
                        BackfillPosition { consent_id, account: 0, statements: false, after: None, delivered: 0 }
                    }
                    None => return Ok(cursor),
                },
            };
            let (position, paged) = self.page(hub, aggregator, filters, &cursor, &state, position, tx).await?;
            match paged {
                Paged::More => state.current = Some(position),
                Paged::Done | Paged::Ended => {
                    state.done_through.clone_from(&position.consent_id);
                    let progress = v1::BackfillProgress {
                        consent_id: position.consent_id.clone(),
                        delivered: position.delivered,
                        complete: paged == Paged::Done,
                    };
                    let mut after = cursor.clone();
                    after.backfill = Some(state.clone());
                    send(tx, Outgoing::Progress { progress, cursor: after.encode(&hub.secret) }).await?;
                }
            }
        }
    }

    /// Delivers one page of `position`'s consent; returns where it stands after it.
    #[allow(clippy::too_many_arguments)]
    async fn page(
        &self,
        hub: &Hub,
        aggregator: &str,
        filters: &Filters,
        cursor: &Cursor,
        state: &BackfillState,
        mut position: BackfillPosition,
        tx: &mpsc::Sender<Outgoing>,
    ) -> Result<(BackfillPosition, Paged), CatchUpError> {
        let now = Utc::now();
        let Some(Bound { grant, account_key, accounts }) = bind(hub, aggregator, &position, now) else {
            return Ok((position, Paged::Ended));
        };
        let wanted = |scope: Scope| grant.scopes.contains(scope);
        let rows: Vec<Row> = if !position.statements {
            if !(filters.transactions && wanted(Scope::Transactions)) {
                Vec::new()
            } else {
                let after = position
                    .after
                    .as_ref()
                    .map(|(t, _, id)| TransactionKey { occurred_at_micros: *t, transaction_id: id.clone() });
                let query = TransactionQuery::newest_since(&account_key, grant.data_from_micros, after, PAGE);
                let rows = self.store.transactions(&query).await.map_err(store_error)?;
                rows.into_iter()
                    .map(|r| (r.version, r.payload, (r.occurred_at_micros, String::new(), r.transaction_id)))
                    .collect()
            }
        } else if !(filters.statements && wanted(Scope::Statements)) {
            Vec::new()
        } else {
            let query = StatementQuery {
                account_key: account_key.clone(),
                from_month: cardlink_history::month_of(grant.data_from_micros),
                to_month: "9999-12".into(),
                after: position.after.as_ref().map(|(_, m, id)| (m.clone(), id.clone())),
                limit: PAGE,
            };
            let rows = self.store.statements(&query).await.map_err(store_error)?;
            rows.into_iter().map(|r| (r.version, r.payload, (0, r.billing_month, r.statement_id))).collect()
        };
        let full = rows.len() == PAGE as usize;
        for (version, payload, key) in rows {
            position.after = Some(key);
            let Some(delivery) = delivery(hub, &payload, version, &grant, filters, now) else { continue };
            position.delivered += 1;
            let mut after = cursor.clone();
            after.backfill = Some(Box::new(BackfillState { current: Some(position.clone()), ..state.clone() }));
            send(tx, Outgoing::history(delivery, after.encode(&hub.secret))).await?;
        }
        if full {
            return Ok((position, Paged::More));
        }
        // This kind of this account is done: statements next, or the next account.
        position.after = None;
        if !position.statements {
            position.statements = true;
            return Ok((position, Paged::More));
        }
        position.statements = false;
        position.account += 1;
        let done = position.account >= accounts;
        Ok((position, if done { Paged::Done } else { Paged::More }))
    }
}

/// Whether `cursor` is a backfill that has not begun (no consent done, none under way): its
/// positions are not set yet. Cursors handed to clients always have one or the other.
fn is_new(cursor: &Cursor) -> bool {
    cursor.backfill.as_ref().is_some_and(|s| s.done_through.is_empty() && s.current.is_none())
}

/// Records before `until` (next offsets per partition) on the indexed topics that the store's
/// watermarks do not cover yet.
fn unindexed(marks: &[Watermark], until: &HashMap<(Topic, i32), i64>) -> u64 {
    until
        .iter()
        .filter(|((topic, _), _)| EventTopic::of(*topic).is_some())
        .map(|(&(topic, partition), &end)| {
            let indexed = marks
                .iter()
                .find(|w| w.partition == partition && w.topic == topic.suffix())
                .map_or(0, |w| w.next_offset);
            u64::try_from(end - indexed).unwrap_or(0)
        })
        .sum()
}

/// Where a consent's backfill stands after a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Paged {
    More,
    /// Every account's history was delivered.
    Done,
    /// The consent is no longer active (or its connection suspended): nothing more goes under it.
    Ended,
}

/// The next consent to backfill after `state.done_through`, in id order.
fn next_consent(hub: &Hub, aggregator: &str, state: &BackfillState) -> Option<String> {
    let after = state.done_through.as_str();
    if !state.named.is_empty() {
        return state.named.iter().find(|id| id.as_str() > after).cloned();
    }
    let started = DateTime::from_timestamp_micros(state.started_at)?;
    hub.consents.read(|view| {
        view.consents()
            .filter(|c| {
                c.aggregator_id() == aggregator
                    && c.consent_id() > after
                    && c.is_active_at(started)
                    && c.granted_at().is_some_and(|g| g <= started)
            })
            .map(|c| c.consent_id())
            .min()
            .map(str::to_owned)
    })
}

/// The consent's grant on the position's account, and that account's key — if the consent is
/// the aggregator's, active now, the account exists, and the card company's connection stands.
fn bind(hub: &Hub, aggregator: &str, position: &BackfillPosition, now: DateTime<Utc>) -> Option<Bound> {
    let (issuer, bound) = hub.consents.read(|v| {
        let consent = v.consent(&position.consent_id)?;
        if consent.aggregator_id() != aggregator || !consent.is_active_at(now) {
            return None;
        }
        let account = consent.account_refs().nth(position.account)?;
        let key = cardlink_events::codec::partition_key(consent.issuer_id(), account);
        let bound = Bound { grant: consent.grant(), account_key: key, accounts: consent.account_refs().count() };
        Some((consent.issuer_id().to_owned(), bound))
    })?;
    hub.connected(&issuer, aggregator).then_some(bound)
}

/// A backfill position bound to its consent: see [`bind`].
struct Bound {
    grant: Grant,
    account_key: String,
    /// How many accounts the consent covers.
    accounts: usize,
}

/// A stored row as the grant's aggregator may receive it, marked as history, with its version.
fn delivery(
    hub: &Hub,
    payload: &[u8],
    version: i64,
    grant: &Grant,
    filters: &Filters,
    now: DateTime<Utc>,
) -> Option<v1::Delivery> {
    let event: Event = match cardlink_events::codec::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, version, "a history row this release cannot read; left out of the backfill");
            return None;
        }
    };
    if !filters.wants(&event) {
        return None;
    }
    let mut delivery = project(&event, grant, &hub.secret, now)?;
    delivery.version = u64::try_from(version).unwrap_or(0);
    delivery.from_history = true;
    Some(delivery)
}

async fn send(tx: &mpsc::Sender<Outgoing>, out: Outgoing) -> Result<(), CatchUpError> {
    tx.send(out).await.map_err(|_| CatchUpError::Closed)
}

fn store_error(e: cardlink_history::StoreError) -> CatchUpError {
    CatchUpError::History(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(topic: Topic, partition: i32, next_offset: i64) -> Watermark {
        Watermark { topic: topic.suffix().to_owned(), partition, next_offset }
    }

    #[test]
    fn only_event_records_before_where_the_stream_joined_must_be_indexed() {
        let until = HashMap::from([
            ((Topic::Transactions, 0), 10),
            ((Topic::Transactions, 1), 5),
            ((Topic::Statements, 0), 3),
            // Not indexed: never waited for.
            ((Topic::Consents, 0), 99),
        ]);
        // Partition 1 never indexed, statements 1 behind, transactions 0 ahead (the indexer
        // may be past this replica's hub).
        let marks = [mark(Topic::Transactions, 0, 12), mark(Topic::Statements, 0, 2)];
        assert_eq!(unindexed(&marks, &until), 5 + 1);
        let caught_up =
            [mark(Topic::Transactions, 0, 10), mark(Topic::Transactions, 1, 5), mark(Topic::Statements, 0, 3)];
        assert_eq!(unindexed(&caught_up, &until), 0);
        assert_eq!(unindexed(&[], &HashMap::new()), 0);
    }

    #[test]
    fn only_a_backfill_that_has_not_begun_has_its_positions_set() {
        let cursor = Backfills::start("agg-x", &["c-2".into(), "c-1".into(), "c-2".into()], Utc::now()).unwrap();
        assert!(is_new(&cursor));
        assert_eq!(cursor.backfill.as_ref().map(|s| s.named.clone()), Some(vec!["c-1".into(), "c-2".into()]));
        let mut begun = cursor.clone();
        if let Some(state) = begun.backfill.as_mut() {
            state.done_through = "c-1".into();
        }
        assert!(!is_new(&begun));
        assert!(!is_new(&Cursor::new("agg-x")), "not a backfill");
        let too_many = vec![String::from("c"); MAX_BACKFILL_CONSENTS + 1];
        assert!(matches!(Backfills::start("agg-x", &too_many, Utc::now()), Err(BackfillError::TooManyConsents)));
    }
}
