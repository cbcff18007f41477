//! One conformance suite for every history store: SQLite (in a file), and PostgreSQL on a
//! throwaway cluster this binary starts once ([`cardlink_testkit::postgres`]).
//!
//! Each case uses accounts of its own, so the cases share one database.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use cardlink_history::postgres::PostgresStore;
use cardlink_history::sqlite::SqliteStore;
use cardlink_history::{
    Applied, Batch, HistoryStore, MAX_PAGE, Order, StatementQuery, StatementRow, StoreError, TransactionKey,
    TransactionQuery, TransactionRow, Watermark,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;

const AUTHORIZED: i32 = 1;
const POSTED: i32 = 2;
const REFUNDED: i32 = 4;

fn txn(account: &str, id: &str, at: i64, kind: i32, version: i64) -> TransactionRow {
    TransactionRow {
        account_key: account.to_owned(),
        transaction_id: id.to_owned(),
        occurred_at_micros: at,
        billing_month: Some("2026-12".into()),
        kind,
        partition: 0,
        version,
        payload: format!("{id}@{version}").into_bytes(),
    }
}

fn statement(account: &str, id: &str, month: &str, status: i32, version: i64) -> StatementRow {
    StatementRow {
        account_key: account.to_owned(),
        statement_id: id.to_owned(),
        billing_month: month.to_owned(),
        status,
        partition: 0,
        version,
        payload: format!("{id}@{version}").into_bytes(),
    }
}

fn rows(transactions: Vec<TransactionRow>) -> Batch {
    Batch { transactions, ..Batch::default() }
}

fn query(account: &str, order: Order, limit: u32) -> TransactionQuery {
    TransactionQuery {
        account_key: account.into(),
        from_micros: 0,
        to_micros: i64::MAX,
        order,
        billing_month: None,
        after: None,
        limit,
    }
}

/// Every page of `query`, each row once, in order.
async fn all_pages(store: &impl HistoryStore, mut query: TransactionQuery) -> Vec<TransactionRow> {
    let mut out: Vec<TransactionRow> = Vec::new();
    loop {
        let page = store.transactions(&query).await.unwrap();
        let Some(last) = page.last() else { return out };
        query.after = Some(TransactionKey {
            occurred_at_micros: last.occurred_at_micros,
            transaction_id: last.transaction_id.clone(),
        });
        out.extend(page);
    }
}

/// A transaction keeps one row through its states; an older version never replaces a newer one.
async fn one_row_per_transaction_newest_version_wins(store: &impl HistoryStore) {
    let a = "iss-a/versions";
    let applied = store.apply(&rows(vec![txn(a, "tx-1", 100, AUTHORIZED, 5)])).await.unwrap();
    assert_eq!(applied, Applied { written: 1, stale: 0 });
    let applied = store.apply(&rows(vec![txn(a, "tx-1", 100, POSTED, 3)])).await.unwrap();
    assert_eq!(applied, Applied { written: 0, stale: 1 }, "an older version is not applied");
    let applied = store.apply(&rows(vec![txn(a, "tx-1", 100, POSTED, 7), txn(a, "tx-1", 100, REFUNDED, 7)])).await;
    assert_eq!(applied.unwrap(), Applied { written: 1, stale: 1 }, "the same version again changes nothing");
    let row = store.transaction(a, "tx-1").await.unwrap().unwrap();
    assert_eq!((row.kind, row.version, row.payload), (POSTED, 7, b"tx-1@7".to_vec()));
    assert!(store.transaction(a, "tx-2").await.unwrap().is_none());
    assert!(store.transaction("iss-b/versions", "tx-1").await.unwrap().is_none(), "another account's id");
}

/// Watermarks only rise, and are written with their rows.
async fn watermarks_only_rise(store: &impl HistoryStore) {
    let mark = |topic: &str, partition, next_offset| Watermark { topic: topic.into(), partition, next_offset };
    let batch = Batch { watermarks: vec![mark("wm.t", 0, 10), mark("wm.t", 1, 4)], ..Batch::default() };
    store.apply(&batch).await.unwrap();
    let batch = Batch { watermarks: vec![mark("wm.t", 0, 8), mark("wm.t", 1, 9)], ..Batch::default() };
    store.apply(&batch).await.unwrap();
    let marks: Vec<Watermark> = store.watermarks().await.unwrap().into_iter().filter(|w| w.topic == "wm.t").collect();
    assert_eq!(marks, vec![mark("wm.t", 0, 10), mark("wm.t", 1, 9)]);
}

/// Keyset pages in a total order: every row once, in order, both ways; the range and the
/// account are respected; pages continue right while rows are written between them.
async fn pages_never_miss_or_repeat_a_row(store: &impl HistoryStore) {
    let a = "iss-a/pages";
    // 25 rows, several sharing a time (ties are ordered by id).
    let batch: Vec<TransactionRow> =
        (0..25).map(|i| txn(a, &format!("tx-{i:02}"), 1_000 + (i / 3), POSTED, i)).collect();
    store.apply(&rows(batch.clone())).await.unwrap();
    store.apply(&rows(vec![txn("iss-a/other", "tx-00", 1_000, POSTED, 1)])).await.unwrap();
    let mut expected: Vec<(i64, String)> =
        batch.iter().map(|r| (r.occurred_at_micros, r.transaction_id.clone())).collect();
    expected.sort();

    let key = |r: &TransactionRow| (r.occurred_at_micros, r.transaction_id.clone());
    let oldest: Vec<_> = all_pages(store, query(a, Order::OldestFirst, 7)).await.iter().map(key).collect();
    assert_eq!(oldest, expected);
    let newest: Vec<_> = all_pages(store, query(a, Order::NewestFirst, 7)).await.iter().map(key).collect();
    assert_eq!(newest, expected.iter().rev().cloned().collect::<Vec<_>>());

    // A range: [1_002, 1_005).
    let ranged = TransactionQuery { from_micros: 1_002, to_micros: 1_005, ..query(a, Order::OldestFirst, 4) };
    let got: Vec<_> = all_pages(store, ranged).await.iter().map(key).collect();
    assert_eq!(got, expected.iter().filter(|(t, _)| (1_002..1_005).contains(t)).cloned().collect::<Vec<_>>());

    // Rows written between pages (new ones, and new versions of seen ones) do not shift the pages.
    let mut q = query(a, Order::NewestFirst, 5);
    let mut seen = Vec::new();
    let mut round = 0;
    loop {
        let page = store.transactions(&q).await.unwrap();
        let Some(last) = page.last() else { break };
        q.after = Some(TransactionKey {
            occurred_at_micros: last.occurred_at_micros,
            transaction_id: last.transaction_id.clone(),
        });
        seen.extend(page.iter().map(key));
        round += 1;
        let newer = txn(a, &format!("tx-new-{round}"), 5_000, POSTED, 100 + round);
        let update = txn(a, "tx-24", 1_008, REFUNDED, 200 + round);
        store.apply(&rows(vec![newer, update])).await.unwrap();
    }
    assert_eq!(seen, expected.iter().rev().cloned().collect::<Vec<_>>(), "rows written meanwhile moved the pages");

    let too_big = store.transactions(&query(a, Order::NewestFirst, MAX_PAGE + 1)).await.unwrap_err();
    assert!(matches!(too_big, StoreError::PageTooLarge(_)), "{too_big}");
}

/// What changed after a version, oldest version first.
/// A billing month (請求月) selects its transactions only, paged like any listing.
async fn transactions_of_one_billing_month(store: &impl HistoryStore) {
    let a = "iss-a/months";
    let mut batch = Vec::new();
    for i in 0..9 {
        let mut row = txn(a, &format!("tx-{i}"), 2_000 + i, POSTED, i);
        row.billing_month = match i % 3 {
            0 => Some("2026-10".into()),
            1 => Some("2026-11".into()),
            _ => None,
        };
        batch.push(row);
    }
    store.apply(&rows(batch)).await.unwrap();
    let october = TransactionQuery { billing_month: Some("2026-10".into()), ..query(a, Order::OldestFirst, 2) };
    let ids: Vec<String> = all_pages(store, october).await.into_iter().map(|r| r.transaction_id).collect();
    assert_eq!(ids, ["tx-0", "tx-3", "tx-6"]);
    let none = TransactionQuery { billing_month: Some("2026-09".into()), ..query(a, Order::NewestFirst, 10) };
    assert!(store.transactions(&none).await.unwrap().is_empty());
}

async fn changes_since_a_version(store: &impl HistoryStore) {
    let a = "iss-a/changes";
    store.apply(&rows((0..6).map(|i| txn(a, &format!("tx-{i}"), 10, AUTHORIZED, 10 + i)).collect())).await.unwrap();
    store.apply(&rows(vec![txn(a, "tx-0", 10, POSTED, 30)])).await.unwrap();
    let changed = store.transactions_changed_since(a, 12, 100).await.unwrap();
    let ids: Vec<(String, i64)> = changed.iter().map(|r| (r.transaction_id.clone(), r.version)).collect();
    let expected: Vec<(String, i64)> =
        [("tx-3", 13), ("tx-4", 14), ("tx-5", 15), ("tx-0", 30)].iter().map(|(i, v)| ((*i).to_owned(), *v)).collect();
    assert_eq!(ids, expected);
    assert_eq!(store.transactions_changed_since(a, 12, 2).await.unwrap().len(), 2);
}

/// Statements by billing month, newest first, 確定前 → 確定後 as versions of one row.
async fn statements_by_month(store: &impl HistoryStore) {
    let a = "iss-a/statements";
    let months = ["2026-07", "2026-08", "2026-09", "2026-10", "2026-11"];
    let batch: Vec<StatementRow> =
        months.iter().enumerate().map(|(i, m)| statement(a, &format!("st-{m}"), m, 1, i as i64)).collect();
    store.apply(&Batch { statements: batch, ..Batch::default() }).await.unwrap();
    let confirmed = statement(a, "st-2026-11", "2026-11", 2, 99);
    let stale = statement(a, "st-2026-11", "2026-11", 1, 50);
    let applied = store.apply(&Batch { statements: vec![confirmed, stale], ..Batch::default() }).await.unwrap();
    assert_eq!(applied, Applied { written: 1, stale: 1 });

    let mut q = StatementQuery {
        account_key: a.into(),
        from_month: "2026-08".into(),
        to_month: "2026-11".into(),
        after: None,
        limit: 3,
    };
    let first = store.statements(&q).await.unwrap();
    assert_eq!(first.iter().map(|s| s.billing_month.as_str()).collect::<Vec<_>>(), ["2026-11", "2026-10", "2026-09"]);
    assert_eq!(first[0].status, 2, "the confirmed version");
    let last = first.last().unwrap();
    q.after = Some((last.billing_month.clone(), last.statement_id.clone()));
    let second = store.statements(&q).await.unwrap();
    assert_eq!(second.iter().map(|s| s.billing_month.as_str()).collect::<Vec<_>>(), ["2026-08"]);
}

/// Retention removes old rows in batches of at most the limit, nothing newer.
async fn retention_in_small_batches(store: &impl HistoryStore) {
    let a = "iss-a/retention";
    store.apply(&rows((0..10).map(|i| txn(a, &format!("old-{i}"), -1_000 + i, POSTED, i)).collect())).await.unwrap();
    store.apply(&rows(vec![txn(a, "recent", 50, POSTED, 20)])).await.unwrap();
    let old = statement(a, "st-old", "2000-01", 2, 1);
    store.apply(&Batch { statements: vec![old], ..Batch::default() }).await.unwrap();
    let mut removed = 0;
    loop {
        let n = store.remove_older(0, "2001-01", 4).await.unwrap();
        assert!(n <= 4, "a batch removed {n}");
        if n == 0 {
            break;
        }
        removed += n;
    }
    assert!(removed >= 11, "the ten old transactions and the old statement, at least: {removed}");
    let left = all_pages(store, query(a, Order::OldestFirst, 100)).await;
    assert_eq!(left.iter().map(|r| r.transaction_id.as_str()).collect::<Vec<_>>(), ["recent"]);
}

/// Versions applied in any order and any number of times leave the newest of each transaction.
async fn any_order_of_versions_ends_at_the_newest(store: &impl HistoryStore, account: &str, writes: &[(u8, i64)]) {
    let mut newest: BTreeMap<String, i64> = BTreeMap::new();
    for chunk in writes.chunks(3) {
        let batch = chunk.iter().map(|(id, v)| txn(account, &format!("tx-{id}"), 10, POSTED, *v)).collect();
        store.apply(&rows(batch)).await.unwrap();
        for (id, v) in chunk {
            let n = newest.entry(format!("tx-{id}")).or_insert(*v);
            *n = (*n).max(*v);
        }
    }
    let stored: BTreeMap<String, i64> = all_pages(store, query(account, Order::OldestFirst, 100))
        .await
        .into_iter()
        .map(|r| {
            assert_eq!(r.payload, format!("{}@{}", r.transaction_id, r.version).into_bytes());
            (r.transaction_id, r.version)
        })
        .collect();
    assert_eq!(stored, newest);
}

async fn suite(store: &impl HistoryStore) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap(); // again: nothing changes
    one_row_per_transaction_newest_version_wins(store).await;
    watermarks_only_rise(store).await;
    pages_never_miss_or_repeat_a_row(store).await;
    transactions_of_one_billing_month(store).await;
    changes_since_a_version(store).await;
    statements_by_month(store).await;
    retention_in_small_batches(store).await;
    let writes: Vec<(u8, i64)> = (0..40).map(|i| ((i * 7 % 5) as u8, (i * 37 % 23) as i64)).collect();
    any_order_of_versions_ends_at_the_newest(store, "iss-a/shuffled", &writes).await;
}

#[tokio::test]
async fn the_sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("history.db")).unwrap();
    suite(&store).await;
    // Reopened, the file holds everything.
    drop(store);
    let store = SqliteStore::open(&dir.path().join("history.db")).unwrap();
    assert!(store.transaction("iss-a/versions", "tx-1").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgresql_store_conforms() {
    let server = tokio::task::spawn_blocking(cardlink_testkit::postgres::TestPostgres::start).await.unwrap().unwrap();
    let store = PostgresStore::connect(&server.url(), 4).unwrap();
    suite(&store).await;
    // Random orders of versions, as the property test below gives SQLite, a few on PostgreSQL.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for case in 0..8 {
        let writes = writes_strategy().new_tree(&mut runner).unwrap().current();
        any_order_of_versions_ends_at_the_newest(&store, &format!("iss-a/prop-{case}"), &writes).await;
    }
    // A bad URL says so without echoing it.
    let e = PostgresStore::connect("postgres://u:secret@host:port/db", 1).unwrap_err().to_string();
    assert!(!e.contains("secret"), "{e}");
}

fn writes_strategy() -> impl Strategy<Value = Vec<(u8, i64)>> {
    proptest::collection::vec((0u8..6, 0i64..50), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn replays_and_reorderings_leave_the_newest_version(writes in writes_strategy()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let store = SqliteStore::in_memory().unwrap();
            store.migrate().await.unwrap();
            any_order_of_versions_ends_at_the_newest(&store, "iss-a/prop", &writes).await;
            // Everything again (a replay after an indexer restart): nothing changes.
            any_order_of_versions_ends_at_the_newest(&store, "iss-a/prop", &writes).await;
        });
    }
}
