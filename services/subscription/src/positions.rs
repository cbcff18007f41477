//! Named positions: an aggregator acknowledges a cursor under a name and later resumes from the
//! name, without storing cursors itself. Positions are records on the compacted positions topic
//! (`aggregator_id/name` → latest cursor), read back into [`PositionsView`] by every replica.

use std::collections::HashMap;
use std::sync::PoisonError;

use cardlink_bus::{BusError, Producer, RecordRef};
use cardlink_events::{RecordType, SubscriptionPosition};
use cardlink_views::follow::{Followed, Materialize};
use chrono::Utc;

use cardlink_api::{ApiError, Reason};

use crate::cursor::{Cursor, CursorError};

/// Longest position name.
pub const MAX_NAME_CHARS: usize = 64;
/// Named positions one aggregator may keep (each lives forever on the compacted positions topic
/// and in every replica's memory). Acknowledging under a name already used always works.
pub const MAX_POSITIONS_PER_AGGREGATOR: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum PositionError {
    #[error("position names are 1-64 letters, digits, '-', '_' or '.'")]
    InvalidName,
    #[error(transparent)]
    Cursor(#[from] CursorError),
    #[error("no position named {0:?}")]
    Unknown(String),
    #[error(
        "the aggregator already keeps {MAX_POSITIONS_PER_AGGREGATOR} named positions; acknowledge under one of their names"
    )]
    TooMany,
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl ApiError for PositionError {
    fn reason(&self) -> Reason {
        match self {
            Self::InvalidName => Reason::InvalidPositionName,
            Self::Cursor(c) => c.reason(),
            Self::Unknown(_) => Reason::PositionNotFound,
            Self::TooMany => Reason::TooManyPositions,
            Self::Bus(_) => Reason::BusUnavailable,
        }
    }
}

/// Latest cursor per (aggregator, name), and the topic offset it came from.
#[derive(Debug, Default)]
pub struct PositionsView {
    latest: HashMap<(String, String), (i64, String)>,
    /// Names kept per aggregator.
    names: HashMap<String, usize>,
}

impl PositionsView {
    fn apply_at(&mut self, position: SubscriptionPosition, offset: i64) {
        let key = (position.aggregator_id, position.name);
        if self.latest.get(&key).is_some_and(|(seen, _)| *seen >= offset) {
            return;
        }
        if !self.latest.contains_key(&key) {
            *self.names.entry(key.0.clone()).or_default() += 1;
        }
        self.latest.insert(key, (offset, position.cursor));
    }

    /// Whether `aggregator_id` may acknowledge under `name`: a name it uses, or room for one more.
    fn has_room(&self, aggregator_id: &str, name: &str) -> bool {
        self.latest.contains_key(&(aggregator_id.to_owned(), name.to_owned()))
            || self.names.get(aggregator_id).is_none_or(|n| *n < MAX_POSITIONS_PER_AGGREGATOR)
    }

    pub fn cursor(&self, aggregator_id: &str, name: &str) -> Option<&str> {
        self.latest.get(&(aggregator_id.to_owned(), name.to_owned())).map(|(_, c)| c.as_str())
    }
}

impl Materialize for PositionsView {
    type Decoded = SubscriptionPosition;

    fn decode(record: &RecordRef<'_>) -> Option<SubscriptionPosition> {
        cardlink_events::decode_record(record.payload(), RecordType::SubscriptionPosition).ok()
    }

    fn apply(&mut self, position: SubscriptionPosition, offset: i64) -> bool {
        self.apply_at(position, offset);
        true
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&name.chars().count())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Stores `cursor_text` (which must be this aggregator's, from this service) under `name`.
pub async fn acknowledge(
    producer: &Producer,
    positions: &Followed<PositionsView>,
    secret: &[u8],
    aggregator_id: &str,
    name: &str,
    cursor_text: &str,
) -> Result<(), PositionError> {
    if !valid_name(name) {
        return Err(PositionError::InvalidName);
    }
    Cursor::decode(secret, cursor_text, aggregator_id)?;
    if !positions.read(|v| v.has_room(aggregator_id, name)) {
        return Err(PositionError::TooMany);
    }
    let position = SubscriptionPosition {
        aggregator_id: aggregator_id.to_owned(),
        name: name.to_owned(),
        cursor: cursor_text.to_owned(),
        acknowledged_at: Utc::now(),
    };
    let key = format!("{aggregator_id}/{name}");
    let delivered = producer.publish_record(RecordType::SubscriptionPosition, &key, &key, &position).await?;
    positions.view.write().unwrap_or_else(PoisonError::into_inner).apply_at(position, delivered.offset);
    Ok(())
}

/// The cursor stored under `name` for `aggregator_id`.
pub fn resolve(
    positions: &Followed<PositionsView>,
    secret: &[u8],
    aggregator_id: &str,
    name: &str,
) -> Result<Cursor, PositionError> {
    let text = positions
        .read(|v| v.cursor(aggregator_id, name).map(str::to_owned))
        .ok_or_else(|| PositionError::Unknown(name.to_owned()))?;
    Ok(Cursor::decode(secret, &text, aggregator_id)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(aggregator: &str, name: &str) -> SubscriptionPosition {
        SubscriptionPosition {
            aggregator_id: aggregator.into(),
            name: name.into(),
            cursor: "c".into(),
            acknowledged_at: Utc::now(),
        }
    }

    #[test]
    fn an_aggregator_keeps_only_so_many_names_and_may_always_reuse_one() {
        let mut view = PositionsView::default();
        for (offset, n) in (0..MAX_POSITIONS_PER_AGGREGATOR).enumerate() {
            view.apply_at(position("agg-x", &format!("p{n}")), i64::try_from(offset).unwrap());
            // Read back again: still one name.
            view.apply_at(position("agg-x", &format!("p{n}")), i64::try_from(offset).unwrap());
        }
        assert!(!view.has_room("agg-x", "one-more"));
        assert!(view.has_room("agg-x", "p0"), "a name in use can be acknowledged again");
        assert!(view.has_room("agg-y", "p0"), "another aggregator has its own room");
    }
}
