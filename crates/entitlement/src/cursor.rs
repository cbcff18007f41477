//! Cursors: where a subscription stream is, as an opaque string the aggregator hands back.
//!
//! A cursor holds, per event-topic partition, the next offset to deliver. It is bound to one
//! aggregator and authenticated with an HMAC under the service's secret, so it cannot be forged,
//! edited, or used by another aggregator: `cur1.<base64url(payload)>.<base64url(mac)>`.
//! Positions only move forward: [`Cursor::advance`] never goes back, so resuming from any cursor
//! a stream has handed out continues exactly after what it covered (no gap).
//!
//! A stream that starts with a backfill (history from the store, then live) also carries how far
//! the backfill has come ([`BackfillState`]); its positions are then where live continues once the
//! backfill is done. Such cursors are version 2 (positions counted, then the state); cursors
//! without a backfill keep version 1's bytes.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use cardlink_api::{ApiError, Reason};
use cardlink_bus::Topic;

const PREFIX: &str = "cur1";
const VERSION: u8 = 1;
/// Positions, then a backfill's state.
const VERSION_BACKFILL: u8 = 2;
/// Consents a backfill may name.
pub const MAX_BACKFILL_CONSENTS: usize = 100;
/// Truncated MAC length: 128 bits.
const MAC_LEN: usize = 16;
/// Longest cursor accepted, in bytes (a few hundred partitions).
pub const MAX_CURSOR_BYTES: usize = 8 * 1024;

/// An event topic a cursor covers (its code is what the cursor's bytes hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventTopic {
    Transactions = 1,
    Statements = 2,
}

impl EventTopic {
    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Transactions),
            2 => Some(Self::Statements),
            _ => None,
        }
    }

    /// The event topic `topic` is, if it is one (cursors cover only the event topics).
    pub fn of(topic: Topic) -> Option<Self> {
        match topic {
            Topic::Transactions => Some(Self::Transactions),
            Topic::Statements => Some(Self::Statements),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("not a cardlink cursor")]
    Malformed,
    #[error("the cursor was altered or not issued by this service")]
    Tampered,
    #[error("the cursor belongs to another aggregator")]
    WrongAggregator,
}

impl ApiError for CursorError {
    fn reason(&self) -> Reason {
        match self {
            Self::Malformed => Reason::CursorMalformed,
            Self::Tampered => Reason::CursorTampered,
            Self::WrongAggregator => Reason::CursorNotYours,
        }
    }
}

/// How far a backfill has come. Consents are backfilled one at a time in id order; within one,
/// account by account (in the consent's order), transactions newest first, then statements
/// newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackfillState {
    /// When the backfill began (microseconds): without named consents, it covers the consents
    /// active then.
    pub started_at: i64,
    /// The consents named (empty: every consent of the aggregator active at `started_at`).
    pub named: Vec<String>,
    /// Consents with an id up to this one are done ("" none yet).
    pub done_through: String,
    /// Where the consent being delivered stands.
    pub current: Option<BackfillPosition>,
}

/// Within one consent: the account, the kind of data, and the last row delivered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackfillPosition {
    pub consent_id: String,
    /// Index into the consent's accounts.
    pub account: usize,
    /// Statements (else transactions).
    pub statements: bool,
    /// The last row delivered: (occurred_at micros or 0, billing month or "", issuer id).
    pub after: Option<(i64, String, String)>,
    /// History deliveries made under the consent so far.
    pub delivered: u64,
}

/// A stream position: next offset to deliver per (topic, partition), and a backfill's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub aggregator_id: String,
    positions: BTreeMap<(EventTopic, i32), i64>,
    /// Set while a backfill is not done (boxed: most cursors have none).
    pub backfill: Option<Box<BackfillState>>,
}

impl Cursor {
    pub fn new(aggregator_id: &str) -> Self {
        Self { aggregator_id: aggregator_id.to_owned(), positions: BTreeMap::new(), backfill: None }
    }

    /// A cursor at the positions `watermarks` name — (topic name without the deployment's
    /// prefix, partition, next offset), as the history store keeps them: the stream from it
    /// carries everything from those positions on. Other topics are left out.
    pub fn at_watermarks<'a>(aggregator_id: &str, watermarks: impl IntoIterator<Item = (&'a str, i32, i64)>) -> Self {
        let mut cursor = Self::new(aggregator_id);
        for (name, partition, next_offset) in watermarks {
            let topic = Topic::from_suffix(name).and_then(EventTopic::of);
            if let Some(topic) = topic
                && next_offset > 0
            {
                cursor.advance(topic, partition, next_offset - 1);
            }
        }
        cursor
    }

    /// The next offset to deliver on a partition, if the cursor has one.
    pub fn next(&self, topic: EventTopic, partition: i32) -> Option<i64> {
        self.positions.get(&(topic, partition)).copied()
    }

    pub fn positions(&self) -> impl Iterator<Item = ((EventTopic, i32), i64)> + '_ {
        self.positions.iter().map(|(k, v)| (*k, *v))
    }

    /// Records that `offset` on the partition has been delivered. Never moves backwards.
    pub fn advance(&mut self, topic: EventTopic, partition: i32, offset: i64) {
        let next = offset.saturating_add(1);
        let entry = self.positions.entry((topic, partition)).or_insert(next);
        if next > *entry {
            *entry = next;
        }
    }

    fn payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.aggregator_id.len() + self.positions.len() * 13);
        out.push(if self.backfill.is_some() { VERSION_BACKFILL } else { VERSION });
        let id = self.aggregator_id.as_bytes();
        out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&id[..id.len().min(255)]);
        if let Some(state) = &self.backfill {
            out.extend_from_slice(&u32::try_from(self.positions.len()).unwrap_or(u32::MAX).to_be_bytes());
            self.push_positions(&mut out);
            // Serialising our own plain types cannot fail.
            out.extend_from_slice(&serde_json::to_vec(state).unwrap_or_default());
        } else {
            self.push_positions(&mut out);
        }
        out
    }

    fn push_positions(&self, out: &mut Vec<u8>) {
        for ((topic, partition), next) in &self.positions {
            out.push(*topic as u8);
            out.extend_from_slice(&partition.to_be_bytes());
            out.extend_from_slice(&next.to_be_bytes());
        }
    }

    /// The opaque, authenticated form handed to the aggregator.
    pub fn encode(&self, secret: &[u8]) -> String {
        let payload = self.payload();
        let mac = cardlink_auth::hmac_sha256(secret, &[PREFIX.as_bytes(), &payload]);
        format!("{PREFIX}.{}.{}", B64.encode(&payload), B64.encode(&mac[..MAC_LEN]))
    }

    /// Checks and reads a cursor presented by `aggregator_id`.
    pub fn decode(secret: &[u8], text: &str, aggregator_id: &str) -> Result<Self, CursorError> {
        if text.len() > MAX_CURSOR_BYTES {
            return Err(CursorError::Malformed);
        }
        let mut parts = text.split('.');
        let (Some(PREFIX), Some(payload), Some(mac), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CursorError::Malformed);
        };
        let payload = B64.decode(payload).map_err(|_| CursorError::Malformed)?;
        let mac = B64.decode(mac).map_err(|_| CursorError::Malformed)?;
        let expected = cardlink_auth::hmac_sha256(secret, &[PREFIX.as_bytes(), &payload]);
        if !cardlink_auth::constant_time_eq(&mac, &expected[..MAC_LEN]) {
            return Err(CursorError::Tampered);
        }
        let cursor = Self::parse(&payload).ok_or(CursorError::Malformed)?;
        if cursor.aggregator_id != aggregator_id {
            return Err(CursorError::WrongAggregator);
        }
        Ok(cursor)
    }

    fn parse(payload: &[u8]) -> Option<Self> {
        let (&version, rest) = payload.split_first()?;
        if version != VERSION && version != VERSION_BACKFILL {
            return None;
        }
        let (&len, rest) = rest.split_first()?;
        let (id, rest) = rest.split_at_checked(usize::from(len))?;
        let mut cursor = Self::new(std::str::from_utf8(id).ok()?);
        let (mut rest, state) = if version == VERSION_BACKFILL {
            let (count, rest) = rest.split_at_checked(4)?;
            let count = usize::try_from(u32::from_be_bytes(count.try_into().ok()?)).ok()?;
            let (entries, state) = rest.split_at_checked(count.checked_mul(13)?)?;
            let state: BackfillState = serde_json::from_slice(state).ok()?;
            if state.named.len() > MAX_BACKFILL_CONSENTS {
                return None;
            }
            (entries, Some(state))
        } else {
            (rest, None)
        };
        cursor.backfill = state.map(Box::new);
        while !rest.is_empty() {
            let (entry, tail) = rest.split_at_checked(13)?;
            let topic = EventTopic::from_code(entry[0])?;
            let partition = i32::from_be_bytes(entry[1..5].try_into().ok()?);
            let next = i64::from_be_bytes(entry[5..13].try_into().ok()?);
            if partition < 0 || next < 0 {
                return None;
            }
            cursor.positions.insert((topic, partition), next);
            rest = tail;
        }
        Some(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"subscription-secret-0123456789ab";

    fn positions() -> impl Strategy<Value = Vec<(bool, i32, i64)>> {
        proptest::collection::vec((any::<bool>(), 0..64i32, 0..i64::MAX / 2), 0..40)
    }

    fn build(aggregator: &str, entries: &[(bool, i32, i64)]) -> Cursor {
        let mut c = Cursor::new(aggregator);
        for (tx, p, o) in entries {
            c.advance(if *tx { EventTopic::Transactions } else { EventTopic::Statements }, *p, *o);
        }
        c
    }

    #[test]
    fn an_empty_cursor_round_trips() {
        let c = Cursor::new("agg-x");
        assert_eq!(Cursor::decode(SECRET, &c.encode(SECRET), "agg-x"), Ok(c));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for text in ["", "cur1", "cur1..", "cur1.!!.!!", "cur2.AAAA.AAAA", "x.y.z.w"] {
            assert!(Cursor::decode(SECRET, text, "agg-x").is_err(), "{text}");
        }
        assert_eq!(Cursor::decode(SECRET, &"a".repeat(MAX_CURSOR_BYTES + 1), "agg-x"), Err(CursorError::Malformed));
    }

    proptest! {
        #[test]
        fn cursors_round_trip(entries in positions()) {
            let c = build("agg-x", &entries);
            prop_assert_eq!(Cursor::decode(SECRET, &c.encode(SECRET), "agg-x"), Ok(c));
        }

        /// A backfill's progress travels with the positions, whatever it holds.
        #[test]
        fn cursors_with_a_backfill_round_trip(
            entries in positions(),
            named in proptest::collection::vec("[a-z0-9_]{1,40}", 0..5),
            done in "[a-z0-9_]{0,40}",
            current in proptest::option::of(("[a-z0-9_]{1,40}", 0usize..50, any::<bool>(),
                proptest::option::of((any::<i64>(), "[0-9-]{0,7}", "\\PC{0,30}")), any::<u64>())),
        ) {
            let mut c = build("agg-x", &entries);
            c.backfill = Some(Box::new(BackfillState {
                started_at: 1_700_000_000_000_000,
                named,
                done_through: done,
                current: current.map(|(consent_id, account, statements, after, delivered)| {
                    BackfillPosition { consent_id, account, statements, after, delivered }
                }),
            }));
            prop_assert_eq!(Cursor::decode(SECRET, &c.encode(SECRET), "agg-x"), Ok(c));
        }

        #[test]
        fn any_change_to_a_cursor_is_detected(entries in positions(), at in any::<prop::sample::Index>(), to in any::<u8>()) {
            let text = build("agg-x", &entries).encode(SECRET);
            let mut bytes = text.into_bytes();
            let i = at.index(bytes.len());
            prop_assume!(bytes[i] != to);
            bytes[i] = to;
            let Ok(altered) = String::from_utf8(bytes) else { return Ok(()) };
            prop_assert!(Cursor::decode(SECRET, &altered, "agg-x").is_err());
        }

        #[test]
        fn another_aggregator_cannot_use_a_cursor(entries in positions()) {
            let text = build("agg-x", &entries).encode(SECRET);
            prop_assert_eq!(Cursor::decode(SECRET, &text, "agg-y"), Err(CursorError::WrongAggregator));
            prop_assert_eq!(Cursor::decode(b"another-secret-another-secret-xx", &text, "agg-x"), Err(CursorError::Tampered));
        }

        #[test]
        fn positions_never_move_back(entries in positions()) {
            let c = build("agg-x", &entries);
            for (tx, p, _) in &entries {
                let topic = if *tx { EventTopic::Transactions } else { EventTopic::Statements };
                let max = entries
                    .iter()
                    .filter(|(t, q, _)| t == tx && q == p)
                    .map(|(_, _, o)| o + 1)
                    .max();
                prop_assert_eq!(c.next(topic, *p), max);
            }
        }
    }
}
