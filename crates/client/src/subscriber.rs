//! A subscription that survives restarts and reconnects, following the cursor rules of
//! docs/aggregators.md: process, then remember; de-duplicate on `(issuer_id, event_id)`;
//! reconnect from the last processed cursor when the service restarts or the stream fell
//! behind; stop on anything retrying cannot fix.
//!
//! A response counts as processed when the caller asks for the next one: [`Resumable::next`]
//! first saves the previous response's cursor (to the cursor file, if there is one), then
//! returns the next response. A crash while the caller handles a response therefore replays that
//! response on restart, and de-duplication drops what was already handled.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use cardlink_api::{Reason, v1};
use tonic::Code;

use crate::ClientError;
use crate::aggregator::Aggregator;
use crate::cursor_file::CursorFile;

/// Where a stream starts when there is no saved cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// From now on.
    Now,
    /// Everything still retained that the consents cover.
    Earliest,
    /// After a named position saved with `Acknowledge`.
    Position(String),
    /// After this cursor.
    Cursor(String),
    /// The history of these consents (empty: every active one) from the history store, then live.
    Backfill(Vec<String>),
}

/// Event ids remembered for de-duplication. At-least-once repeats come from one replayed
/// response, so a window far larger than a response is enough.
pub const DEDUP_WINDOW: usize = 100_000;
/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One response, with repeats removed.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub deliveries: Vec<v1::Delivery>,
    /// The response was a heartbeat; `caught_up` when the stream reached the live tail.
    pub heartbeat: Option<v1::Heartbeat>,
    pub cursor: String,
    /// Deliveries dropped as repeats of ones already returned.
    pub repeats: usize,
}

/// What happened besides data: told to the caller so a CLI can say it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The stream ended with a status retrying fixes; reconnecting after `after`.
    Reconnecting {
        reason: String,
        after: Duration,
    },
    Connected,
}

/// `(issuer_id, event_id)` of the last [`DEDUP_WINDOW`] events.
#[derive(Debug, Default)]
struct Seen {
    set: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
}

impl Seen {
    /// True the first time a key is offered.
    fn first(&mut self, key: (String, String)) -> bool {
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > DEDUP_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// The de-duplication key of a delivery; consent changes have none (each is a new state).
pub fn event_key(d: &v1::Delivery) -> Option<(String, String)> {
    match &d.event {
        Some(v1::delivery::Event::Transaction(t)) => Some((t.issuer_id.clone(), t.event_id.clone())),
        Some(v1::delivery::Event::Statement(s)) => Some((s.issuer_id.clone(), s.event_id.clone())),
        _ => None,
    }
}

/// Whether a stream that ended with `status` is worth reopening from the last cursor.
pub fn retryable(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::Unknown => true,
        Code::ResourceExhausted => Reason::of(status) == Some(Reason::FellBehind),
        _ => false,
    }
}

/// A resumable subscription.
#[derive(Debug)]
pub struct Resumable {
    client: Aggregator,
    kinds: Vec<v1::EventKind>,
    issuer_ids: Vec<String>,
    start: Start,
    cursor_file: Option<CursorFile>,
    /// Cursor of the last response returned; saved when the caller asks for the next.
    pending: Option<String>,
    /// The last processed cursor: where a reconnect resumes.
    processed: Option<String>,
    stream: Option<tonic::Streaming<v1::SubscribeResponse>>,
    reconnect: bool,
    backoff: Duration,
    seen: Seen,
}

impl Resumable {
    /// A subscription for `kinds` and `issuer_ids` (empty: all), starting from the cursor in
    /// `cursor_file` if it holds one, else from `start`.
    pub fn new(
        client: Aggregator,
        kinds: Vec<v1::EventKind>,
        issuer_ids: Vec<String>,
        start: Start,
        cursor_file: Option<CursorFile>,
    ) -> Result<Self, ClientError> {
        let saved = match &cursor_file {
            Some(file) => file.load()?,
            None => None,
        };
        Ok(Self {
            client,
            kinds,
            issuer_ids,
            start,
            cursor_file,
            pending: None,
            processed: saved,
            stream: None,
            reconnect: true,
            backoff: FIRST_BACKOFF,
            seen: Seen::default(),
        })
    }

    /// Stop at the first ended stream instead of reconnecting.
    pub fn without_reconnect(mut self) -> Self {
        self.reconnect = false;
        self
    }

    /// The last processed cursor (what a restart resumes from).
    pub fn processed_cursor(&self) -> Option<&str> {
        self.processed.as_deref()
    }

    fn request(&self) -> v1::SubscribeRequest {
        use v1::subscribe_request::Start as S;
        let start = match (&self.processed, &self.start) {
            (Some(cursor), _) => Some(S::Cursor(cursor.clone())),
            (None, Start::Now) => None,
            (None, Start::Earliest) => Some(S::FromEarliest(true)),
            (None, Start::Position(name)) => Some(S::PositionName(name.clone())),
            (None, Start::Cursor(cursor)) => Some(S::Cursor(cursor.clone())),
            (None, Start::Backfill(consent_ids)) => {
                Some(S::Backfill(v1::Backfill { consent_ids: consent_ids.clone() }))
            }
        };
        v1::SubscribeRequest {
            start,
            kinds: self.kinds.iter().map(|k| *k as i32).collect(),
            issuer_ids: self.issuer_ids.clone(),
        }
    }

    /// Marks the last returned response processed: remembers its cursor (in the file, if any).
    pub fn commit(&mut self) -> Result<(), ClientError> {
        if let Some(cursor) = self.pending.take() {
            if let Some(file) = &self.cursor_file {
                file.save(&cursor)?;
            }
            self.processed = Some(cursor);
        }
        Ok(())
    }

    /// The next response, after committing the previous one. `notice` hears of reconnects.
    pub async fn next(&mut self, mut notice: impl FnMut(Notice)) -> Result<Batch, ClientError> {
        self.commit()?;
        loop {
            if self.stream.is_none() {
                match self.client.subscribe(self.request()).await {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        notice(Notice::Connected);
                    }
                    Err(ClientError::Status(s)) if self.reconnect && retryable(&s) => {
                        self.wait(&s, &mut notice).await;
                        continue;
                    }
                    Err(ClientError::Connect { message, .. }) if self.reconnect => {
                        let s = tonic::Status::unavailable(message);
                        self.wait(&s, &mut notice).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(stream) = self.stream.as_mut() else { continue };
            match stream.message().await {
                Ok(Some(response)) => {
                    self.backoff = FIRST_BACKOFF;
                    return Ok(self.batch(response));
                }
                Ok(None) => {
                    self.stream = None;
                    let s = tonic::Status::unavailable("the stream ended");
                    if !self.reconnect {
                        return Err(ClientError::Status(s));
                    }
                    self.wait(&s, &mut notice).await;
                }
                Err(s) if self.reconnect && retryable(&s) => {
                    self.stream = None;
                    self.wait(&s, &mut notice).await;
                }
                Err(s) => {
                    self.stream = None;
                    return Err(ClientError::Status(s));
                }
            }
        }
    }

    async fn wait(&mut self, status: &tonic::Status, notice: &mut impl FnMut(Notice)) {
        let reason = cardlink_api::status::reason(status).unwrap_or_else(|| format!("{:?}", status.code()));
        notice(Notice::Reconnecting { reason, after: self.backoff });
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn batch(&mut self, response: v1::SubscribeResponse) -> Batch {
        let mut repeats = 0;
        let deliveries = response
            .deliveries
            .into_iter()
            .filter(|d| {
                let first = event_key(d).is_none_or(|key| self.seen.first(key));
                if !first {
                    repeats += 1;
                }
                first
            })
            .collect();
        if !response.cursor.is_empty() {
            self.pending = Some(response.cursor.clone());
        }
        Batch { deliveries, heartbeat: response.heartbeat, cursor: response.cursor, repeats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(issuer: &str, event: &str) -> v1::Delivery {
        v1::Delivery {
            event: Some(v1::delivery::Event::Transaction(v1::CardTransaction {
                issuer_id: issuer.into(),
                event_id: event.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn repeats_are_recognised_by_issuer_and_event_id_within_the_window() {
        let mut seen = Seen::default();
        assert!(seen.first(event_key(&delivery("a", "e1")).unwrap()));
        assert!(!seen.first(event_key(&delivery("a", "e1")).unwrap()));
        assert!(seen.first(event_key(&delivery("b", "e1")).unwrap()), "another issuer's event id is another event");
        for i in 0..DEDUP_WINDOW {
            seen.first(("x".into(), i.to_string()));
        }
        assert!(seen.first(event_key(&delivery("a", "e1")).unwrap()), "forgotten past the window");
        assert!(seen.set.len() <= DEDUP_WINDOW && seen.order.len() <= DEDUP_WINDOW);
        assert_eq!(event_key(&v1::Delivery::default()), None);
    }

    #[test]
    fn only_restarts_and_falling_behind_are_retried() {
        let fell = cardlink_api::status::status(Reason::FellBehind, "slow");
        let too_many = cardlink_api::status::status(Reason::TooManyStreams, "16");
        let shutting = cardlink_api::status::status(Reason::ServerShuttingDown, "bye");
        let range = cardlink_api::status::status(Reason::CursorOutOfRange, "old");
        assert!(retryable(&fell) && retryable(&shutting));
        assert!(!retryable(&too_many) && !retryable(&range));
        assert!(!retryable(&tonic::Status::unauthenticated("revoked")));
    }
}
