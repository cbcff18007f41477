//! The one place a cardlink error becomes a gRPC `Status`.
//!
//! Every cardlink error reaches clients as a `Status` with the reason's code, whose details hold
//! a standard `google.rpc.ErrorInfo` (reason + domain `cardlink.v1`), which gRPC libraries in
//! every language can read, and whose `cardlink-reason` metadata carries the same reason for
//! clients that only see headers. Services implement [`ApiError`] for their typed errors and call
//! [`to_status`]; nothing else constructs a cardlink `Status`.

use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic_types::{ErrorDetails, StatusExt};

use crate::reason::{ApiError, Reason};

/// The `ErrorInfo.domain` of every cardlink error.
pub const ERROR_DOMAIN: &str = "cardlink.v1";
/// Response metadata key carrying the reason.
pub const REASON_METADATA: &str = "cardlink-reason";

/// A typed error as the client sees it: its reason's code, the reason, and its message.
pub fn to_status<E: ApiError + ?Sized>(error: &E) -> Status {
    status(error.reason(), error.to_string())
}

/// [`to_status`] taking the error by value, for `map_err`.
pub fn into_status<E: ApiError>(error: E) -> Status {
    to_status(&error)
}

/// A `Status` for `reason` with a human `message`.
pub fn status(reason: Reason, message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_error_info(
        reason.as_str(),
        ERROR_DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    let mut status = Status::with_error_details(reason.code(), message, details);
    status.metadata_mut().insert(REASON_METADATA, MetadataValue::from_static(reason.as_str()));
    status
}

/// The reason a `Status` carries as text, if any (also one a newer server added that this
/// version does not know; [`Reason::of`] gives the typed one).
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn reason_survives_in_details_and_metadata() {
        let s = status(Reason::IssuerMismatch, "nope");
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(reason(&s).as_deref(), Some("ISSUER_MISMATCH"));
        assert_eq!(Reason::of(&s), Some(Reason::IssuerMismatch));
        assert_eq!(s.metadata().get(REASON_METADATA).and_then(|v| v.to_str().ok()), Some("ISSUER_MISMATCH"));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the thing is {0}")]
    struct Thing(u8);
    impl ApiError for Thing {
        fn reason(&self) -> Reason {
            Reason::NotFound
        }
    }

    #[test]
    fn a_typed_error_keeps_its_message_and_gets_its_reasons_code() {
        let s = to_status(&Thing(7));
        assert_eq!((s.code(), s.message()), (Code::NotFound, "the thing is 7"));
        assert_eq!(Reason::of(&s), Some(Reason::NotFound));
        assert_eq!(Reason::of(&Status::internal("plain")), None);
    }
}
