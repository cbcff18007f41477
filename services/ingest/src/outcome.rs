//! What happened to each record of a batch: accepted, a duplicate, or rejected with a reason.
//!
//! Reasons are `cardlink_api::Reason` (the one vocabulary; clients branch on it). A rejection's
//! message explains the problem but never repeats the offending value, which could be personal
//! data or a card number.

use cardlink_api::Reason;

/// A rejected record: what, where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    /// Dotted path of the field, e.g. `merchant.name_as_printed`; empty for the whole record.
    pub field: String,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: Reason, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { reason, field: field.into(), message: message.into() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected(Rejection),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordResult {
    pub index: usize,
    /// The record's event id as sent (may be empty or malformed when rejected).
    pub event_id: String,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchResult {
    pub batch_id: String,
    pub results: Vec<RecordResult>,
}

impl BatchResult {
    pub fn count(&self, pred: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| pred(&r.outcome)).count()
    }
}
