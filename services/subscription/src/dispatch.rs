//! Dispatch: one shared read of the bus, handed to every entitled stream.
//!
//! One reader per process tails the event topics. For each record it looks up the consent view
//! once, by the record's key (`issuer_id/account_ref`) — before anything is decoded, so a record
//! nobody may have costs a lookup — decodes the event once, and queues one projected delivery for
//! each stream of each entitled aggregator: the work per event grows with the entitled streams,
//! not with the connected ones.
//!
//! Nothing is dispatched on stale views: before each record the reader waits until the consent
//! and registry views reflect every change written up to [`VIEW_FRESHNESS`] ago, so a
//! revocation or a suspension (of the connection or of the aggregator) holds from then on, within
//! the [`REVOCATION_BOUND`] as the client sees it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cardlink_bus::{BusError, Consumer, RecordRef, StartAt, Topic};
use chrono::Utc;
use tokio::sync::watch;

use crate::cursor::EventTopic;
use crate::delivery::{Origin, Outgoing};
use crate::hub::Hub;
use crate::projection::project_for;
use crate::streams::Registered;

// Shared with the history service, which answers under the same bound.
pub use cardlink_entitlement::{REVOCATION_BOUND, VIEW_FRESHNESS};

/// How often a paused reader looks again at the consent view's freshness.
const FRESHNESS_POLL: Duration = Duration::from_millis(10);

impl Hub {
    /// Waits until the consent and registry views reflect every change written up to
    /// [`VIEW_FRESHNESS`] ago. Normally immediate; while a view lags (its follower is slow or
    /// cut off from the bus), deliveries pause rather than go out on stale consents or
    /// suspensions. Returns false if `give_up` completed first (shutdown, a client gone).
    pub async fn wait_until_fresh(&self, give_up: impl std::future::Future<Output = ()>) -> bool {
        let mut give_up = std::pin::pin!(give_up);
        let mut warned = false;
        loop {
            if self.fresh() {
                return true;
            }
            if !warned {
                tracing::warn!("consent or registry view is behind the revocation bound; deliveries paused");
                warned = true;
            }
            tokio::select! {
                () = &mut give_up => return false,
                _ = tokio::time::sleep(FRESHNESS_POLL) => {}
            }
        }
    }

    /// Hands one record to every entitled stream. Called by the reader, in partition order.
    /// A record no connected stream may receive costs its key's lookups: its body is not decoded
    /// and its headers are not parsed.
    pub fn dispatch(&self, record: &RecordRef<'_>) {
        if EventTopic::of(record.topic()).is_none() {
            return;
        }
        // Every record's header is checked (cheap), whoever it is for: one this release cannot
        // read is recorded, not silently passed over. Its body is decoded below only if someone
        // may receive it; a body that fails then is recorded the same way.
        let header_readable = match cardlink_events::codec::check_event_writer(record.payload()) {
            Ok(()) => true,
            Err(e) => {
                self.undecodable(&record.to_record(), &e);
                false
            }
        };
        let key = record.key_str().unwrap_or_default();
        let mut grants = self.consents.read(|v| v.grants(key));
        // Only where the issuer's connection with the aggregator, and the aggregator, are active.
        let issuer = record.issuer_id().unwrap_or_default();
        self.registry.read(|r| grants.retain(|g| r.is_connected(issuer, &g.aggregator_id)));
        let now = Utc::now();
        // Made on the first delivery only: most records of a busy bus go to nobody.
        let mut origin: Option<Arc<Origin>> = None;
        let mut registered = self.streams.write();
        let Registered { by_aggregator, position, events_in } = &mut *registered;
        position.insert((record.topic(), record.partition()), record.offset() + 1);
        if let Some(issuer) = record.issuer_id() {
            match events_in.get_mut(issuer) {
                Some(n) => *n += 1,
                None => {
                    events_in.insert(issuer.to_owned(), 1);
                }
            }
        }
        // Decided under the lock that registration takes, so a stream registering now either
        // sees this record live or in its catch-up, never neither. An issuer's load of past
        // records is history (History, backfill), not news: the streams' cursors pass over it.
        if !grants.iter().any(|g| by_aggregator.contains_key(&*g.aggregator_id)) {
            return;
        }
        let headers = record.headers();
        if headers.historical {
            return;
        }
        let event = match cardlink_events::decode(record.payload()) {
            Ok(event) => event,
            Err(e) => {
                if header_readable {
                    self.undecodable(&record.to_record(), &e); // a known header over a body that is not
                }
                return;
            }
        };
        let event = &event;
        let mut fallen = Vec::new();
        for (i, grant) in grants.iter().enumerate() {
            let aggregator = &*grant.aggregator_id;
            if grants[..i].iter().any(|g| &*g.aggregator_id == aggregator) {
                continue; // this aggregator was served by its first grant
            }
            let Some(slots) = by_aggregator.get_mut(aggregator) else { continue };
            // One projection per entitled aggregator (its first grant that covers the event),
            // shared by all of its streams.
            let Some(projected) = project_for(event, &grants[i..], aggregator, &self.secret, now) else {
                continue;
            };
            for slot in slots.iter_mut() {
                if !slot.filters.wants(event) {
                    continue;
                }
                let origin = origin.get_or_insert_with(|| Arc::new(Origin::of_ref(record, &headers)));
                let out = Outgoing::event(&projected, origin, slot.cursor(position).encode(&self.secret));
                if slot.tx.try_send(out).is_err() {
                    fallen.push((aggregator.to_owned(), slot.id));
                }
            }
        }
        for (aggregator, id) in fallen {
            registered.drop_fallen(&aggregator, id);
        }
    }
}

/// The shared reader: tails the event topics from their ends and dispatches every record. An
/// error it returns marks the hub as stopped ([`Hub::reader_stopped`]), which readiness reports.
pub async fn run_reader(hub: Hub, consumer: Consumer, shutdown: watch::Receiver<bool>) -> Result<(), BusError> {
    let read = read_and_dispatch(&hub, consumer, shutdown).await;
    if read.is_err() {
        hub.reader_stopped.store(true, Ordering::Relaxed);
    }
    read
}

async fn read_and_dispatch(hub: &Hub, consumer: Consumer, mut shutdown: watch::Receiver<bool>) -> Result<(), BusError> {
    let mut positions = Vec::new();
    for topic in [Topic::Transactions, Topic::Statements] {
        let partitions = consumer.partition_count(topic).await?;
        for p in 0..partitions {
            let (_, end) = consumer.watermarks(topic, p).await?;
            hub.streams.write().position.insert((topic, p), end);
            positions.push((topic, p, StartAt::Offset(end)));
        }
    }
    consumer.assign(&positions)?;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            record = consumer.recv_ref_retrying("hub reader") => {
                let record = record?;
                hub.wait_until_fresh(async {
                    let _ = shutdown.changed().await;
                })
                .await;
                hub.dispatch(&record);
            }
        }
    }
}
