//! One subscription's response stream, as tonic sends it.
//!
//! A stream that starts from a cursor first relays what its catch-up reader (a task of its own,
//! holding one of the bounded reader permits) finds between the cursor and the hub's position at
//! registration (a stream that starts with a backfill first relays its history, the same way:
//! `crate::backfill`); then it says it is caught up and serves live deliveries straight from its hub
//! queue, a heartbeat every [`HEARTBEAT_EVERY`] while quiet, and a reconnect status at shutdown.
//! It ends within the revocation bound once its credential is revoked or expired or the
//! aggregator suspended, and at its maximum age ([`Standing`]). The revocation bound also holds
//! at send time: each event delivery is checked again as it leaves the queue (a slow client's
//! queue can be long), and nothing is sent while the views are stale.
//!
//! The stream is polled by the connection that carries it: a live delivery goes from the hub's
//! queue to the wire with no task or channel of its own in between — with many streams each
//! getting a few events, that hop was a wake-up per delivery. Dropping the stream (the client went
//! away, or it ended) removes its hub slot at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cardlink_api::convert::timestamp;
use cardlink_api::status::{status, to_status};
use cardlink_api::{Reason, v1};
use futures::Stream;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tonic::Status;

use cardlink_authn::Standing;

use crate::access::AccessLog;
use crate::catch_up::CatchUp;
use crate::delivery::{Origin, Outgoing};
use crate::hub::Hub;
use crate::metrics::StreamMetrics;
use crate::streams::Registration;

/// How often an idle stream gets a heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// How often a stream held back by stale views looks again.
const STALE_RETRY: Duration = Duration::from_millis(10);

#[derive(Debug)]
enum Phase {
    CatchingUp(CatchUp),
    /// Live; `greeted` once the caught-up heartbeat went out.
    Live {
        greeted: bool,
    },
    Done,
}

/// The instruments and records a stream keeps per delivery.
#[derive(Debug)]
pub struct Recorders {
    pub access: AccessLog,
    pub live: StreamMetrics,
    pub catch_up: StreamMetrics,
}

/// The response stream of one `Subscribe` call.
pub struct SubscribeStream {
    phase: Phase,
    hub: Hub,
    aggregator: String,
    registration: Registration,
    /// The cursor just after the last delivery sent.
    last_sent: String,
    heartbeat: Interval,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Ends the stream once its credential no longer stands, or at its maximum age.
    standing: Standing,
    /// Armed while the consent or registry view is behind the revocation bound: nothing is
    /// sent until they are fresh again.
    stale: Option<Pin<Box<tokio::time::Sleep>>>,
    recorders: Recorders,
}

impl std::fmt::Debug for SubscribeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeStream")
            .field("aggregator", &self.aggregator)
            .field("id", &self.registration.id)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl SubscribeStream {
    /// A stream registered on `hub` as `registration`, starting at `initial` (encoded), with the
    /// catch-up reader's hand-over if it starts before the live tail.
    pub fn new(
        hub: Hub,
        aggregator: String,
        registration: Registration,
        initial: String,
        catch_up: Option<CatchUp>,
        (mut shutdown, standing): (watch::Receiver<bool>, Standing),
        recorders: Recorders,
    ) -> Self {
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT_EVERY, HEARTBEAT_EVERY);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let shutdown = Box::pin(async move {
            // A dropped sender means the service is going away too.
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        });
        let phase = match catch_up {
            Some(catch_up) => Phase::CatchingUp(catch_up),
            None => Phase::Live { greeted: false },
        };
        Self {
            phase,
            hub,
            aggregator,
            registration,
            last_sent: initial,
            heartbeat,
            shutdown,
            standing,
            stale: None,
            recorders,
        }
    }

    /// The cursor a heartbeat carries. The hub's cursor for the stream also covers records it
    /// passed over (so a quiet stream's cursor stays current), but it may cover deliveries still
    /// queued for the client: it is only safe once the queue is empty, checked after reading it
    /// (the hub advances the cursor and queues under one lock). Otherwise, the last delivery's.
    fn heartbeat(&mut self) -> v1::SubscribeResponse {
        self.heartbeat.reset();
        let cursor = match self.hub.cursor(&self.aggregator, self.registration.id) {
            Some(cursor) if self.registration.rx.is_empty() => cursor,
            _ => self.last_sent.clone(),
        };
        let at = now();
        v1::SubscribeResponse {
            deliveries: Vec::new(),
            heartbeat: Some(v1::Heartbeat { at: Some(at), caught_up: true, backfill: Vec::new() }),
            cursor,
            sent_at: Some(at),
        }
    }

    /// The response for a delivery, if it may still be sent: an event under a consent revoked
    /// (or a connection or aggregator suspended) since it was queued is dropped here, at send
    /// time, and one on a credential revoked since the last standing check ends the stream.
    /// Consent-change notices always go.
    fn deliver(
        &mut self,
        live: bool,
        delivery: Box<v1::Delivery>,
        cursor: String,
        origin: Option<Arc<Origin>>,
    ) -> Result<Option<v1::SubscribeResponse>, Status> {
        let event =
            matches!(delivery.event, Some(v1::delivery::Event::Transaction(_) | v1::delivery::Event::Statement(_)));
        if event {
            // Before the cursor moves: the client resumes before this delivery.
            self.standing.check_now()?;
        }
        // Resuming after this cursor is right whether or not the delivery goes out.
        self.last_sent.clone_from(&cursor);
        if event && !self.hub.still_entitled(&delivery.consent_id, &self.aggregator) {
            return Ok(None);
        }
        self.recorders.access.record(&delivery);
        let metrics = if live { &self.recorders.live } else { &self.recorders.catch_up };
        let span = metrics.delivering(origin.as_deref());
        metrics.delivered(origin.as_deref(), span);
        Ok(Some(v1::SubscribeResponse { deliveries: vec![*delivery], heartbeat: None, cursor, sent_at: Some(now()) }))
    }

    /// Pending while the views are behind the revocation bound (polled again shortly).
    fn poll_fresh(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.hub.fresh() {
            self.stale = None;
            return Poll::Ready(());
        }
        let retry = self.stale.get_or_insert_with(|| Box::pin(tokio::time::sleep(STALE_RETRY)));
        if retry.as_mut().poll(cx).is_ready() {
            // Not fresh yet: wait another round.
            retry.as_mut().reset(tokio::time::Instant::now() + STALE_RETRY);
            let _ = retry.as_mut().poll(cx);
        }
        Poll::Pending
    }

    /// Ends the stream with `status` (the next poll ends it).
    fn end(&mut self, status: Status) -> Poll<Option<Result<v1::SubscribeResponse, Status>>> {
        self.phase = Phase::Done;
        Poll::Ready(Some(Err(status)))
    }
}

/// A message's `sent_at` (and a heartbeat's time): taken as the message leaves for the wire,
/// after its checks.
fn now() -> prost_types::Timestamp {
    timestamp(chrono::Utc::now())
}

fn fell_behind() -> Status {
    status(Reason::FellBehind, "the stream fell behind; resume from your last cursor")
}

impl Stream for SubscribeStream {
    type Item = Result<v1::SubscribeResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if matches!(this.phase, Phase::Done) {
                return Poll::Ready(None);
            }
            if this.shutdown.as_mut().poll(cx).is_ready() {
                return this.end(status(
                    Reason::ServerShuttingDown,
                    "the service is restarting; resume from your last cursor",
                ));
            }
            if let Poll::Ready(lapsed) = this.standing.poll_lapsed(cx) {
                return this.end(lapsed);
            }
            if this.poll_fresh(cx).is_pending() {
                return Poll::Pending;
            }
            match &mut this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::CatchingUp(catch_up) => match catch_up.rx.poll_recv(cx) {
                    Poll::Ready(Some(Outgoing::Delivery { delivery, cursor, origin })) => {
                        match this.deliver(false, delivery, cursor, origin) {
                            Ok(Some(response)) => return Poll::Ready(Some(Ok(response))),
                            Ok(None) => continue,
                            Err(lapsed) => return this.end(lapsed),
                        }
                    }
                    Poll::Ready(Some(Outgoing::FellBehind)) => return this.end(fell_behind()),
                    Poll::Ready(Some(Outgoing::Progress { progress, cursor })) => {
                        this.last_sent.clone_from(&cursor);
                        let at = now();
                        let heartbeat = v1::Heartbeat { at: Some(at), caught_up: false, backfill: vec![progress] };
                        return Poll::Ready(Some(Ok(v1::SubscribeResponse {
                            deliveries: Vec::new(),
                            heartbeat: Some(heartbeat),
                            cursor,
                            sent_at: Some(at),
                        })));
                    }
                    // The reader dropped its sender after saying how it ended.
                    Poll::Ready(None) => match catch_up.done.try_recv() {
                        Ok(Ok(())) => this.phase = Phase::Live { greeted: false },
                        Ok(Err(e)) => return this.end(to_status(&e)),
                        Err(_) => {
                            return this.end(status(
                                Reason::BusUnavailable,
                                "the catch-up reader stopped; resume from your last cursor",
                            ));
                        }
                    },
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Live { greeted } => {
                    if !*greeted {
                        *greeted = true;
                        return Poll::Ready(Some(Ok(this.heartbeat())));
                    }
                    match this.registration.rx.poll_recv(cx) {
                        Poll::Ready(Some(Outgoing::Delivery { delivery, cursor, origin })) => {
                            match this.deliver(true, delivery, cursor, origin) {
                                Ok(Some(response)) => return Poll::Ready(Some(Ok(response))),
                                Ok(None) => continue,
                                Err(lapsed) => return this.end(lapsed),
                            }
                        }
                        Poll::Ready(Some(Outgoing::FellBehind) | None) => return this.end(fell_behind()),
                        // Only a backfill says how far it came, before the stream is live.
                        Poll::Ready(Some(Outgoing::Progress { .. })) => continue,
                        Poll::Pending => {}
                    }
                    if this.heartbeat.poll_tick(cx).is_ready() {
                        return Poll::Ready(Some(Ok(this.heartbeat())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for SubscribeStream {
    fn drop(&mut self) {
        self.hub.streams().unregister(&self.aggregator, self.registration.id);
    }
}
