//! Views follow their compacted topics on a real broker.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cardlink_bus::{PolledConsumer, Topic};
use cardlink_events::consent::{ConsentEvent, ConsentStatus};
use cardlink_events::registry::{ConnectionEntity, ConnectionStatus, Entity, RegistryEvent, Scope};
use cardlink_events::{ActorType, RecordType};
use cardlink_testkit::TestBus;
use cardlink_views::consent::ConsentView;
use cardlink_views::follow;
use cardlink_views::registry::RegistryView;
use chrono::{TimeDelta, Utc};
use futures::StreamExt as _;
use tokio::sync::watch;

const WITHIN: Duration = Duration::from_secs(30);

fn consent(id: &str, account: &str, status: ConsentStatus) -> ConsentEvent {
    let now = Utc::now();
    let c = cardlink_events::samples::active_consent(
        id,
        "iss-a",
        "agg-x",
        &[account],
        &[Scope::Transactions],
        now,
        now + TimeDelta::days(30),
    );
    ConsentEvent { status, ..c }
}

#[tokio::test]
async fn a_new_follower_catches_up_and_then_sees_revocations() {
    let bus = TestBus::start().await.unwrap();
    let producer = bus.producer().unwrap();
    for (id, account) in [("c1", "acct-1"), ("c2", "acct-2")] {
        let c = consent(id, account, ConsentStatus::Active);
        producer.publish_record(RecordType::ConsentEvent, id, &c.event_id.to_string(), &c).await.unwrap();
    }

    let (_stop, shutdown) = watch::channel(false);
    let (mut followed, _task) = follow::spawn(
        PolledConsumer::new(bus.config(), "view").unwrap(),
        Topic::Consents,
        ConsentView::new(),
        shutdown,
    );
    tokio::time::timeout(WITHIN, followed.caught_up()).await.expect("caught up");
    assert_eq!(followed.read(|v| v.grants("iss-a/acct-1").len()), 1);
    assert_eq!(followed.read(|v| v.grants("iss-a/acct-2").len()), 1);

    let revoked = consent("c1", "acct-1", ConsentStatus::Revoked);
    producer.publish_record(RecordType::ConsentEvent, "c1", &revoked.event_id.to_string(), &revoked).await.unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while followed.read(|v| !v.grants("iss-a/acct-1").is_empty()) {
        assert!(tokio::time::Instant::now() < deadline, "revocation never reached the view");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(followed.read(|v| v.grants("iss-a/acct-2").len()), 1);

    // The watermark's lag settles at zero once everything is read.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let w = followed.watermark.borrow().clone();
        if w.measured_at.is_some() && w.lag == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lag never settled: {w:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_empty_topic_is_caught_up_at_once_and_registry_changes_arrive() {
    let bus = TestBus::start().await.unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let (mut followed, _task) = follow::spawn(
        PolledConsumer::new(bus.config(), "registry").unwrap(),
        Topic::Registry,
        RegistryView::new(),
        shutdown,
    );
    tokio::time::timeout(WITHIN, followed.caught_up()).await.expect("caught up");
    assert!(!followed.read(|v| v.is_connected("iss-a", "agg-x")));

    let connection = RegistryEvent::new(
        ActorType::Issuer,
        "iss-a",
        Entity::Connection(ConnectionEntity {
            issuer_id: "iss-a".into(),
            aggregator_id: "agg-x".into(),
            scopes: vec![Scope::Transactions],
            status: ConnectionStatus::Active,
            reason: None,
        }),
    );
    let producer = bus.producer().unwrap();
    producer
        .publish_record(RecordType::RegistryEvent, &connection.key(), &connection.event_id.to_string(), &connection)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while followed.read(|v| v.connection("iss-a", "agg-x").is_none()) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Connected needs an active aggregator too.
    assert!(!followed.read(|v| v.is_connected("iss-a", "agg-x")));
}

#[tokio::test]
async fn a_follower_of_a_topic_written_concurrently_catches_up_with_every_record() {
    // Many sends in flight at once, as a burst of consents is written: the batches reach the
    // broker in several orders, and a new follower must still read to the end and say so.
    let bus = TestBus::start().await.unwrap();
    let producer = bus.producer().unwrap();
    let consents: Vec<ConsentEvent> =
        (0..300).map(|i| consent(&format!("c{i}"), &format!("acct-{i}"), ConsentStatus::Active)).collect();
    let producer = &producer;
    let sends = consents.iter().map(|c| async move {
        producer.publish_record(RecordType::ConsentEvent, &c.consent_id, &c.event_id.to_string(), c).await
    });
    let sent: Vec<_> = futures::stream::iter(sends).buffer_unordered(256).collect().await;
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");

    let (_stop, stopped) = watch::channel(false);
    let (mut followed, _task) =
        follow::spawn(PolledConsumer::new(bus.config(), "late").unwrap(), Topic::Consents, ConsentView::new(), stopped);
    tokio::time::timeout(WITHIN, followed.caught_up()).await.expect("caught up");
    assert_eq!(followed.read(|v| v.consents().count()), consents.len());
}

#[tokio::test]
async fn a_record_the_view_cannot_read_stops_it_there_fail_closed() {
    let bus = TestBus::start().await.unwrap();
    let producer = bus.producer().unwrap();
    let publish = |c: ConsentEvent| {
        let producer = producer.clone();
        async move {
            producer.publish_record(RecordType::ConsentEvent, &c.consent_id, &c.event_id.to_string(), &c).await.unwrap()
        }
    };
    publish(consent("c1", "acct-1", ConsentStatus::Active)).await;
    // An unknown schema version (a newer release's header over some body), then the revocation
    // of c1 behind it in the same partition.
    let mut newer = vec![0xC3, 0x01];
    newer.extend_from_slice(&[0xAB; 8]);
    newer.extend_from_slice(b"a body this release cannot read");
    let stuck_at = bus.write_raw(Topic::Consents, "c1", &newer).await.unwrap();
    publish(consent("c1", "acct-1", ConsentStatus::Revoked)).await;

    let (_stop, shutdown) = watch::channel(false);
    let (mut followed, _task) = follow::spawn(
        PolledConsumer::new(bus.config(), "view").unwrap(),
        Topic::Consents,
        ConsentView::new(),
        shutdown,
    );
    // The follower does not hang: it reports where it stopped.
    tokio::time::timeout(WITHIN, followed.caught_up()).await.expect("caught up or stopped");
    let stuck = followed.stuck().expect("stopped at the unreadable record");
    assert_eq!(stuck.offset, stuck_at);
    // Nothing after it was applied (the revocation is not skipped over into a wrong "active"
    // either: the view is simply never fresh again, so nothing is delivered on it).
    assert_eq!(followed.read(|v| v.grants("iss-a/acct-1").len()), 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!followed.is_fresh(Duration::from_secs(1)), "a stopped view must not look fresh");
    assert_eq!(followed.watermark.borrow().next.get(&stuck.partition).copied(), Some(stuck_at));
}

/// A view whose decoding panics on one payload: stands for a bug on the follower's reading side.
struct FragileView;

impl follow::Materialize for FragileView {
    type Decoded = ();

    fn decode(record: &cardlink_bus::RecordRef<'_>) -> Option<()> {
        assert!(record.payload() != b"a payload that panics the reading side", "a decoding bug");
        Some(())
    }

    fn apply(&mut self, (): (), _offset: i64) -> bool {
        true
    }
}

#[tokio::test]
async fn a_follower_whose_reading_side_dies_ends_with_an_error_not_silently() {
    let bus = TestBus::start().await.unwrap();
    bus.write_raw(Topic::Consents, "c1", b"a payload that panics the reading side").await.unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let (_followed, task) =
        follow::spawn(PolledConsumer::new(bus.config(), "fragile").unwrap(), Topic::Consents, FragileView, shutdown);
    let ended =
        tokio::time::timeout(WITHIN, task).await.expect("the follower ends").expect("without a panic of its own");
    assert!(matches!(ended, Err(cardlink_bus::BusError::Task(_))), "{ended:?}");
}

/// Set when the thread that decoded for a [`TracedView`] has ended (its thread-locals dropped).
static TRACED_READER_ENDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Dropped with the thread-locals of the thread that decoded for a [`TracedView`].
struct ReaderMark;

impl Drop for ReaderMark {
    fn drop(&mut self) {
        TRACED_READER_ENDED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

thread_local! {
    static READER_MARK: ReaderMark = const { ReaderMark };
}

/// A view that marks the thread its records are decoded on, to tell when that thread has ended.
struct TracedView;

impl follow::Materialize for TracedView {
    type Decoded = ();

    fn decode(_record: &cardlink_bus::RecordRef<'_>) -> Option<()> {
        READER_MARK.with(|_| ());
        Some(())
    }

    fn apply(&mut self, (): (), _offset: i64) -> bool {
        true
    }
}

/// Whoever awaits the follower's task then stops Kafka (`cardlink dev` stops its embedded
/// broker): the reading side, which holds the consumer, must be gone by then, not still polling.
#[tokio::test]
async fn a_stopped_follower_has_ended_its_reading_side_when_its_task_ends() {
    let bus = TestBus::start().await.unwrap();
    bus.write_raw(Topic::Consents, "c1", b"any record").await.unwrap();
    let (stop, shutdown) = watch::channel(false);
    let (mut followed, task) =
        follow::spawn(PolledConsumer::new(bus.config(), "traced").unwrap(), Topic::Consents, TracedView, shutdown);
    tokio::time::timeout(WITHIN, followed.caught_up()).await.expect("caught up");
    assert!(!TRACED_READER_ENDED.load(std::sync::atomic::Ordering::SeqCst), "the reading side runs while following");

    stop.send(true).unwrap();
    let ended = tokio::time::timeout(WITHIN, task).await.expect("the follower stops").expect("without a panic");
    assert!(ended.is_ok(), "{ended:?}");
    assert!(
        TRACED_READER_ENDED.load(std::sync::atomic::Ordering::SeqCst),
        "the reading side was still running when the follower's task ended"
    );
}
