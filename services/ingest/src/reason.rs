//! Why a record was rejected: a stable reason code, the offending field, and a message.
//!
//! Reason codes are part of the API (clients branch on them); add new ones, never rename. The
//! message explains the problem but never repeats the offending value, which could be personal
//! data or a card number.

use std::fmt;

/// Stable reason codes for rejected records. `as_str` is what goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReasonCode {
    /// A required field is empty.
    MissingField,
    /// A field has a value of the wrong shape (not a UUID, unknown enum value, …).
    InvalidField,
    /// A text field is longer than its limit.
    FieldTooLong,
    /// Not an ISO 4217 alphabetic currency code.
    InvalidCurrency,
    /// An amount out of range or of the wrong sign for its kind.
    InvalidAmount,
    /// Not a valid date, month or instant, or out of the accepted range.
    InvalidDate,
    /// The payment method and the installment count disagree.
    InstallmentsMismatch,
    /// The kind needs a field it lacks or has one it must not (a refund without its original).
    InvalidKindTransition,
    /// The record's issuer id is not the caller's.
    IssuerMismatch,
    /// A possible card number in a text field.
    PanDetected,
    /// The encoded record is larger than the bus accepts.
    RecordTooLarge,
    /// The same event is being published by another call right now; retry.
    InFlight,
    /// Kafka did not take the record; retry later.
    BusUnavailable,
}

impl ReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingField => "MISSING_FIELD",
            Self::InvalidField => "INVALID_FIELD",
            Self::FieldTooLong => "FIELD_TOO_LONG",
            Self::InvalidCurrency => "INVALID_CURRENCY",
            Self::InvalidAmount => "INVALID_AMOUNT",
            Self::InvalidDate => "INVALID_DATE",
            Self::InstallmentsMismatch => "INSTALLMENTS_MISMATCH",
            Self::InvalidKindTransition => "INVALID_KIND_TRANSITION",
            Self::IssuerMismatch => "ISSUER_MISMATCH",
            Self::PanDetected => "PAN_DETECTED",
            Self::RecordTooLarge => "RECORD_TOO_LARGE",
            Self::InFlight => "IN_FLIGHT",
            Self::BusUnavailable => "BUS_UNAVAILABLE",
        }
    }

    /// Whether sending the same record again later can succeed.
    pub fn is_retriable(self) -> bool {
        matches!(self, Self::InFlight | Self::BusUnavailable)
    }

    pub const ALL: [ReasonCode; 13] = [
        Self::MissingField,
        Self::InvalidField,
        Self::FieldTooLong,
        Self::InvalidCurrency,
        Self::InvalidAmount,
        Self::InvalidDate,
        Self::InstallmentsMismatch,
        Self::InvalidKindTransition,
        Self::IssuerMismatch,
        Self::PanDetected,
        Self::RecordTooLarge,
        Self::InFlight,
        Self::BusUnavailable,
    ];
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected record: what, where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: ReasonCode,
    /// Dotted path of the field, e.g. `merchant.name_as_printed`; empty for the whole record.
    pub field: String,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: ReasonCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { reason, field: field.into(), message: message.into() }
    }
}
