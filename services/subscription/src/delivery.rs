//! A delivery as a stream receives it — the projected event or consent change, the cursor just
//! after it, its publication time and the record it came from — built here and nowhere else.
//!
//! Three paths deliver: the shared reader ([`crate::dispatch`]), a stream's catch-up reader
//! ([`crate::catch_up`]) and consent notices ([`crate::notices`]). Building every delivery in one
//! place keeps the cursor and `published_at` set the same way on all of them.

use std::sync::Arc;

use cardlink_api::convert::timestamp;
use cardlink_api::v1;
use cardlink_bus::{Record, RecordHeaders, RecordRef, Topic};
use opentelemetry::Context;

/// Where a delivered record came from: the trace it belongs to, when it was published, and its
/// place on the bus (for its delivery span and latency).
#[derive(Debug)]
pub struct Origin {
    /// The producer's span (from the record's `traceparent`); empty when it has none.
    pub parent: Context,
    /// The record's timestamp (set by the producer when it was published), ms since the epoch.
    pub published_ms: Option<i64>,
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
}

impl Origin {
    pub fn of(record: &Record) -> Self {
        Self::at(
            record.headers.traceparent.as_deref(),
            record.timestamp_ms,
            (record.topic, record.partition, record.offset),
        )
    }

    /// [`Origin::of`] a borrowed record whose headers the caller parsed.
    pub fn of_ref(record: &RecordRef<'_>, headers: &RecordHeaders) -> Self {
        Self::at(
            headers.traceparent.as_deref(),
            record.timestamp_ms(),
            (record.topic(), record.partition(), record.offset()),
        )
    }

    fn at(traceparent: Option<&str>, published_ms: Option<i64>, (topic, partition, offset): (Topic, i32, i64)) -> Self {
        Self {
            parent: cardlink_telemetry::propagation::from_traceparent(traceparent),
            published_ms,
            topic,
            partition,
            offset,
        }
    }

    /// When the record was published (its Kafka timestamp), for `Delivery.published_at`.
    fn published_at(&self) -> Option<prost_types::Timestamp> {
        self.published_ms.and_then(chrono::DateTime::from_timestamp_millis).map(timestamp)
    }
}

/// What a stream receives.
#[derive(Debug)]
pub enum Outgoing {
    /// One delivery, the cursor just after it, and where its record came from (none for
    /// consent changes). Boxed: a queue allocates its slots in blocks up front, and an idle
    /// stream should not hold a block of full-size deliveries (680 bytes each, 48 boxed).
    Delivery { delivery: Box<v1::Delivery>, cursor: String, origin: Option<Arc<Origin>> },
    /// The stream's queue overflowed; resume from the last cursor.
    FellBehind,
    /// A backfill finished a consent; `cursor` is after it.
    Progress { progress: v1::BackfillProgress, cursor: String },
}

impl Outgoing {
    /// An event as projected for one aggregator (`crate::projection`), read from the record
    /// `origin` describes; `cursor` covers it.
    pub fn event(projected: &v1::Delivery, origin: &Arc<Origin>, cursor: String) -> Self {
        let mut delivery = Box::new(projected.clone());
        delivery.published_at = origin.published_at();
        delivery.version = u64::try_from(origin.offset).unwrap_or(0);
        Self::Delivery { delivery, cursor, origin: Some(Arc::clone(origin)) }
    }

    /// A row of the history store, projected by a backfill (`crate::backfill`); `cursor` covers it.
    pub fn history(delivery: v1::Delivery, cursor: String) -> Self {
        Self::Delivery { delivery: Box::new(delivery), cursor, origin: None }
    }

    /// A change of one of the aggregator's consents (`consent` as the aggregator sees it).
    /// Consent changes are live notices, not bus positions: `cursor` is the stream's current one.
    pub fn consent_change(consent: &v1::Consent, cursor: String) -> Self {
        let delivery = Box::new(v1::Delivery {
            event: Some(v1::delivery::Event::ConsentChange(v1::ConsentChange { consent: Some(consent.clone()) })),
            consent_id: consent.consent_id.clone(),
            published_at: None,
            version: 0,
            from_history: false,
        });
        Self::Delivery { delivery, cursor, origin: None }
    }
}
