//! The indexer against a real broker and the embedded store: states of one transaction make one
//! row, statements go 確定前 → 確定後, restarts and replays change nothing, a new store behind an
//! old group is indexed from the start, replicas share the partitions, and a record it cannot read
//! is passed over without stopping the rest.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cardlink_bus::{Consumer, Topic};
use cardlink_events::{Event, StatementStatus, TransactionKind, samples};
use cardlink_history::sqlite::SqliteStore;
use cardlink_history::{HistoryStore, Order, TransactionQuery};
use cardlink_history_service::indexer::{self, GROUP, Progress};
use cardlink_testkit::{TEST_EVENT_PARTITIONS, TestBus};
use tokio::sync::watch;

const WITHIN: Duration = Duration::from_secs(30);

/// A running indexer: its progress, and how to stop it.
struct Running {
    progress: watch::Receiver<Progress>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), indexer::IndexError>>,
}

impl Running {
    async fn stop(self) {
        self.stop.send_replace(true);
        self.task.await.unwrap().unwrap();
    }
}

fn start(bus: &TestBus, store: &SqliteStore, group: &str) -> Running {
    let consumer = Consumer::group_member(bus.config(), group).unwrap();
    let (progress_tx, progress) = watch::channel(Progress::default());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(indexer::run(store.clone(), consumer, progress_tx, stop_rx));
    Running { progress, stop, task }
}

fn transaction(account: &str, n: u32, kind: TransactionKind) -> Event {
    let mut t = samples::transaction("iss-a", account, n);
    t.kind = kind;
    // Each state of a transaction is an event of its own.
    t.event_id = cardlink_events::EventId::derived("iss-a", &format!("{account}/tx-{n}/{kind:?}"));
    Event::Transaction(t)
}

async fn publish(bus: &TestBus, events: &[Event]) {
    let producer = bus.producer().unwrap();
    for e in events {
        producer.publish(e, None).await.unwrap();
    }
}

/// Waits until `done` holds of the store.
async fn until<F, Fut>(what: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all(account: &str) -> TransactionQuery {
    TransactionQuery {
        account_key: format!("iss-a/{account}"),
        from_micros: 0,
        to_micros: i64::MAX,
        order: Order::OldestFirst,
        billing_month: None,
        after: None,
        limit: 1_000,
    }
}

#[tokio::test]
async fn the_store_follows_the_bus_one_row_per_transaction_and_statement() {
    let bus = TestBus::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("history.db")).unwrap();
    store.migrate().await.unwrap();

    let mut provisional = samples::statement("iss-a", "acct-1");
    provisional.status = StatementStatus::Provisional;
    let mut confirmed = provisional.clone();
    confirmed.status = StatementStatus::Confirmed;
    confirmed.event_id = cardlink_events::EventId::derived("iss-a", "acct-1/statement/confirmed");
    publish(
        &bus,
        &[
            transaction("acct-1", 1, TransactionKind::Authorized),
            transaction("acct-1", 2, TransactionKind::Posted),
            transaction("acct-1", 1, TransactionKind::Posted),
            transaction("acct-2", 1, TransactionKind::Posted),
            Event::Statement(provisional),
            Event::Statement(confirmed),
        ],
    )
    .await;

    let running = start(&bus, &store, GROUP);
    until("tx-1 posted", || async {
        store.transaction("iss-a/acct-1", "tx-1").await.unwrap().is_some_and(|r| r.kind == 2)
    })
    .await;
    until("every record applied", || async { store.transactions(&all("acct-2")).await.unwrap().len() == 1 }).await;
    let rows = store.transactions(&all("acct-1")).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| (r.transaction_id.as_str(), r.kind)).collect::<Vec<_>>(),
        [("tx-1", 2), ("tx-2", 2)]
    );
    let statements = store
        .statements(&cardlink_history::StatementQuery {
            account_key: "iss-a/acct-1".into(),
            from_month: "2000-01".into(),
            to_month: "2100-12".into(),
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(statements.len(), 1, "確定前 and 確定後 are one statement");
    assert_eq!(statements[0].status, 2);

    // The watermarks cover every record, and the indexer says it is current.
    let mut progress = running.progress.clone();
    tokio::time::timeout(WITHIN, progress.wait_for(|p| p.caught_up && p.lag == Some(0))).await.unwrap().unwrap();
    let marks = store.watermarks().await.unwrap();
    let consumer = bus.consumer("check").unwrap();
    for topic in [Topic::Transactions, Topic::Statements] {
        for partition in 0..consumer.partition_count(topic).await.unwrap() {
            let (_, end) = consumer.watermarks(topic, partition).await.unwrap();
            if end > 0 {
                let mark = marks.iter().find(|w| w.topic == topic.suffix() && w.partition == partition).unwrap();
                assert_eq!(mark.next_offset, end, "{topic:?}/{partition}");
            }
        }
    }

    // Restarted, the group goes on where it committed; what comes later is indexed.
    running.stop().await;
    let running = start(&bus, &store, GROUP);
    publish(&bus, &[transaction("acct-1", 1, TransactionKind::Refunded)]).await;
    until("the refund", || async {
        store.transaction("iss-a/acct-1", "tx-1").await.unwrap().is_some_and(|r| r.kind == 4)
    })
    .await;
    // And it says it is current: partitions with nothing new since the restart are as far as the
    // store holds, not lagging from their first record.
    let mut progress = running.progress.clone();
    tokio::time::timeout(WITHIN, progress.wait_for(|p| p.lag == Some(0))).await.unwrap().unwrap();
    running.stop().await;

    // A replay of the whole bus (a new group) changes nothing: every version is already there.
    let before = store.transactions(&all("acct-1")).await.unwrap();
    let replay = start(&bus, &store, "history-replay");
    let mut progress = replay.progress.clone();
    tokio::time::timeout(WITHIN, progress.wait_for(|p| p.caught_up)).await.unwrap().unwrap();
    assert_eq!(store.transactions(&all("acct-1")).await.unwrap(), before);
    replay.stop().await;

    // A new, empty store behind the same group (a restored or replaced database): the store's
    // watermarks say what is indexed, not the group's offsets — everything is indexed again.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = SqliteStore::open(&fresh_dir.path().join("history.db")).unwrap();
    fresh.migrate().await.unwrap();
    let running = start(&bus, &fresh, GROUP);
    until("the whole history in the new store", || async {
        fresh.transactions(&all("acct-1")).await.unwrap() == before
            && fresh.transactions(&all("acct-2")).await.unwrap().len() == 1
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn replicas_share_the_partitions_and_an_unreadable_record_stops_nothing() {
    let bus = TestBus::start().await.unwrap();
    let store = SqliteStore::in_memory().unwrap();
    store.migrate().await.unwrap();
    let a = start(&bus, &store, GROUP);
    let b = start(&bus, &store, GROUP);
    // The group has split the partitions between the two.
    let (mut pa, mut pb) = (a.progress.clone(), b.progress.clone());
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let (sa, sb) = (pa.borrow_and_update().assigned.clone(), pb.borrow_and_update().assigned.clone());
        if !sa.is_empty()
            && !sb.is_empty()
            && sa.len() + sb.len() == 2 * usize::try_from(TEST_EVENT_PARTITIONS).unwrap()
        {
            assert!(sa.iter().all(|p| !sb.contains(p)), "{sa:?} / {sb:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the group never split the partitions: {sa:?} / {sb:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    bus.write_raw(Topic::Transactions, "iss-a/acct-0", b"not an event").await.unwrap();
    let events: Vec<Event> =
        (0..40).map(|n| transaction(&format!("acct-{}", n % 8), n, TransactionKind::Posted)).collect();
    publish(&bus, &events).await;
    until("all 40 transactions", || async {
        let mut n = 0;
        for account in 0..8 {
            n += store.transactions(&all(&format!("acct-{account}"))).await.unwrap().len();
        }
        n == 40
    })
    .await;
    // Both members indexed their share.
    let shares = [a.progress.borrow().applied.len(), b.progress.borrow().applied.len()];
    assert!(shares.iter().all(|n| *n > 0), "partitions applied per member: {shares:?}");
    a.stop().await;
    b.stop().await;
}
