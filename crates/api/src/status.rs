//! gRPC errors with a stable, machine-readable reason.
//!
//! Every cardlink error reaches clients as a `Status` whose details hold a standard
//! `google.rpc.ErrorInfo` (reason + domain `cardlink.v1`), which gRPC libraries in every language
//! can read, and whose `cardlink-reason` metadata carries the same reason for clients that only
//! see headers. Services map their typed errors here, in one place each.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every cardlink error.
pub const ERROR_DOMAIN: &str = "cardlink.v1";
/// Response metadata key carrying the reason.
pub const REASON_METADATA: &str = "cardlink-reason";

/// A `Status` with `code`, a stable `reason` (SCREAMING_SNAKE_CASE) and a human message.
pub fn status(code: Code, reason: &'static str, message: impl Into<String>) -> Status {
    let details =
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::<String, String>::new());
    let mut status = Status::with_error_details(code, message, details);
    status.metadata_mut().insert(REASON_METADATA, MetadataValue::from_static(reason));
    status
}

/// The stable reason of a cardlink `Status`, if it has one.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_survives_in_details_and_metadata() {
        let s = status(Code::PermissionDenied, "ISSUER_MISMATCH", "nope");
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(reason(&s).as_deref(), Some("ISSUER_MISMATCH"));
        assert_eq!(s.metadata().get(REASON_METADATA).and_then(|v| v.to_str().ok()), Some("ISSUER_MISMATCH"));
    }
}
