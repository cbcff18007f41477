//! What an aggregator is entitled to receive, decided in one place for every way it receives it —
//! the live stream, its catch-up, and history listings:
//!
//! - [`projection`]: one event, as one aggregator may see it under one grant — scopes applied,
//!   the data window and expiry enforced, the issuer's ids replaced by the aggregator's pseudonyms.
//! - [`access`]: the record of what was provided to whom (the APPI record), tallied per consent
//!   and kind of data and written to the audit topic — by the stream and by History alike.
//! - [`cursor`]: an opaque, tamper-evident position on the bus bound to one aggregator; the
//!   subscription service resumes from it, and a history listing hands one out so the stream
//!   continues with every change after the listing.

pub mod access;
pub mod cursor;
pub mod projection;

use std::time::Duration;

/// The revocation bound: once `RevokeConsent` (or a suspension, or a credential's revocation)
/// has returned, nothing under it is sent later than this after (by the message's `sent_at`: a
/// client that stops reading still finds, later, what was sent before).
pub const REVOCATION_BOUND: Duration = Duration::from_secs(1);

/// How fresh the consent and registry views must be for anything to be dispatched or sent: they
/// reflect every change written up to this long ago. Shorter than [`REVOCATION_BOUND`]: the rest
/// is for the check and the encoding on a loaded machine (the fault suite's consent churn, on a
/// 2-core CI machine, needed it).
pub const VIEW_FRESHNESS: Duration = Duration::from_millis(750);
