//! Cursors: where a subscription stream is, as an opaque string the aggregator hands back.
//!
//! A cursor holds, per event-topic partition, the next offset to deliver. It is bound to one
//! aggregator and authenticated with an HMAC under the service's secret, so it cannot be forged,
//! edited, or used by another aggregator: `cur1.<base64url(payload)>.<base64url(mac)>`.
//! Positions only move forward: [`Cursor::advance`] never goes back, so resuming from any cursor
//! a stream has handed out continues exactly after what it covered (no gap).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use cardlink_api::{ApiError, Reason};
use cardlink_bus::Topic;

const PREFIX: &str = "cur1";
const VERSION: u8 = 1;
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

/// A stream position: next offset to deliver per (topic, partition).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub aggregator_id: String,
    positions: BTreeMap<(EventTopic, i32), i64>,
}

impl Cursor {
    pub fn new(aggregator_id: &str) -> Self {
        Self { aggregator_id: aggregator_id.to_owned(), positions: BTreeMap::new() }
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
        out.push(VERSION);
        let id = self.aggregator_id.as_bytes();
        out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&id[..id.len().min(255)]);
        for ((topic, partition), next) in &self.positions {
            out.push(*topic as u8);
            out.extend_from_slice(&partition.to_be_bytes());
            out.extend_from_slice(&next.to_be_bytes());
        }
        out
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
        if version != VERSION {
            return None;
        }
        let (&len, rest) = rest.split_first()?;
        let (id, mut rest) = rest.split_at_checked(usize::from(len))?;
        let mut cursor = Self::new(std::str::from_utf8(id).ok()?);
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
