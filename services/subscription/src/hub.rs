//! The hub: one replica's shared fan-out state — the open streams, the consent and registry
//! views every delivery is decided on (a consent covers the event, and its issuer's connection
//! with the aggregator and the aggregator itself are active), the key of pseudonyms and cursors,
//! and whether the shared reader still runs. One handle, cheap to clone, that each job works through:
//!
//! - [`crate::streams`]: the stream registry (who is connected, their queues and positions);
//! - [`crate::dispatch`]: the shared reader and the revocation wait, handing each record to every
//!   entitled stream;
//! - [`crate::catch_up`]: a stream's own reader from its cursor up to where it joined the hub;
//! - [`crate::notices`]: consent changes told to the aggregator's streams;
//! - [`crate::delivery`]: how a delivery is built, for all three.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cardlink_views::consent::ConsentView;
use cardlink_views::follow::Followed;
use cardlink_views::registry::RegistryView;

use crate::cursor::Cursor;
use crate::streams::{Filters, Registration, StreamRegistry};

/// The shared fan-out state; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    pub(crate) streams: StreamRegistry,
    pub(crate) consents: Followed<ConsentView>,
    /// Suspensions: a suspended connection or aggregator gets nothing, whatever its consents.
    pub(crate) registry: Followed<RegistryView>,
    pub(crate) secret: Arc<[u8]>,
    /// Set when the shared reader has stopped for good (an error retrying cannot fix): no
    /// stream would get anything more, so the replica is no longer ready.
    pub(crate) reader_stopped: Arc<AtomicBool>,
    /// Where records the reader cannot decode are reported (none: counted and logged only).
    dead_letters: Option<tokio::sync::mpsc::Sender<crate::dead_letter::Undecodable>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("streams", &self.streams).finish_non_exhaustive()
    }
}

impl Hub {
    /// `secret` keys both the account pseudonyms and the cursors.
    pub fn new(consents: Followed<ConsentView>, registry: Followed<RegistryView>, secret: Arc<[u8]>) -> Self {
        Self {
            streams: StreamRegistry::default(),
            consents,
            registry,
            secret,
            reader_stopped: Arc::default(),
            dead_letters: None,
        }
    }

    /// The open streams.
    /// Reports the records the shared reader cannot decode to `dead_letters`
    /// ([`crate::dead_letter`]).
    pub fn with_dead_letters(
        mut self,
        dead_letters: tokio::sync::mpsc::Sender<crate::dead_letter::Undecodable>,
    ) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// A record of an event topic this release cannot decode: counted, logged, dead-lettered.
    pub(crate) fn undecodable(&self, record: &cardlink_bus::Record, error: &cardlink_events::CodecError) {
        let undecodable = crate::dead_letter::Undecodable::of(record, error);
        cardlink_telemetry::undecodable_record(record.topic.suffix(), "dead_lettered");
        tracing::error!(record = %undecodable.resource(), %error, "an event record cannot be decoded by this release; skipped and dead-lettered");
        if let Some(tx) = &self.dead_letters
            && tx.try_send(undecodable).is_err()
        {
            tracing::error!(record = %record.offset, "dead-letter queue full: this one is only in the log and the metric");
        }
    }

    pub fn streams(&self) -> &StreamRegistry {
        &self.streams
    }

    /// Adds a stream (see [`StreamRegistry::register`]).
    pub fn register(&self, aggregator_id: &str, filters: Filters, start: &Cursor) -> Registration {
        self.streams.register(aggregator_id, filters, start)
    }

    /// The current cursor of a registered stream (for heartbeats).
    pub fn cursor(&self, aggregator_id: &str, id: u64) -> Option<String> {
        self.streams.cursor(aggregator_id, id, &self.secret)
    }

    /// Whether the shared reader stopped with an error: the service serves nothing more.
    pub fn reader_stopped(&self) -> bool {
        self.reader_stopped.load(Ordering::Relaxed)
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    pub fn consents(&self) -> &Followed<ConsentView> {
        &self.consents
    }

    pub fn registry(&self) -> &Followed<RegistryView> {
        &self.registry
    }

    /// Whether both views reflect every change written up to [`crate::dispatch::VIEW_FRESHNESS`] ago.
    pub(crate) fn fresh(&self) -> bool {
        let bound = crate::dispatch::VIEW_FRESHNESS;
        self.consents.is_fresh(bound) && self.registry.is_fresh(bound)
    }

    /// Whether an event delivery under `consent_id` may still go to `aggregator_id` now: the
    /// consent is active and the connection and the aggregator are. Asked again at send time,
    /// so a delivery queued for a slow client does not outlive a revocation or suspension.
    pub(crate) fn still_entitled(&self, consent_id: &str, aggregator_id: &str) -> bool {
        let now = chrono::Utc::now();
        let issuer = self.consents.read(|v| {
            v.consent(consent_id)
                .filter(|c| c.is_active_at(now) && c.aggregator_id() == aggregator_id)
                .map(|c| c.issuer_id().to_owned())
        });
        issuer.is_some_and(|issuer| self.connected(&issuer, aggregator_id))
    }

    /// Whether `issuer_id` may share with `aggregator_id` now: their connection and the
    /// aggregator are active.
    pub(crate) fn connected(&self, issuer_id: &str, aggregator_id: &str) -> bool {
        self.registry.read(|r| r.is_connected(issuer_id, aggregator_id))
    }
}
