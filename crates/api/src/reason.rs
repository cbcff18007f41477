//! Every reason a cardlink call or record can fail, in one enum: the vocabulary clients branch on.
//!
//! A reason is the stable, machine-readable half of an error (the message is for people). Each
//! has its gRPC status code, whether trying again later can succeed, and a one-line meaning; the
//! table in `docs/reasons.md` is generated from [`Reason::ALL`] and a test fails if it differs.
//! Reasons are added, never renamed: a rename is a breaking change for every client
//! (`CHANGELOG.md`).
//!
//! Services do not build `Status` themselves: their typed errors implement [`ApiError`] and
//! [`crate::status::to_status`] writes the reason once, to `google.rpc.ErrorInfo` and the
//! `cardlink-reason` response metadata. Clients read it back with [`Reason::of`].

use std::fmt;

use tonic::Code;

/// Where a reason appears: as a failed call's status, or in a `RecordResult` of a publish whose
/// call succeeded (the other records of the batch went through).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    Call,
    Record,
    /// Either: as the status of a whole call, or as one record's result.
    Both,
    /// A line of an issuer's batch file that the file adapter could not read (in its rejects
    /// file; nothing was sent).
    Line,
    /// A member's sign-in at their card company, from the consent or member page: in the audit
    /// record, with a page telling the member what happened (no consent is given).
    SignIn,
}

impl Applies {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Record => "record",
            Self::Both => "call, record",
            Self::Line => "file line",
            Self::SignIn => "member sign-in",
        }
    }
}

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $code:ident, $applies:ident, $retry:literal, $meaning:literal; )+) => {
        /// A stable reason code. `as_str` is what goes on the wire.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Reason {
            $( $(#[$doc])* #[doc = $meaning] $variant, )+
        }

        impl Reason {
            /// Every reason, in the order of the documentation table.
            pub const ALL: &'static [Reason] = &[ $( Reason::$variant, )+ ];

            /// The wire form (SCREAMING_SNAKE_CASE).
            pub const fn as_str(self) -> &'static str {
                match self { $( Self::$variant => $name, )+ }
            }

            /// The gRPC status code a call failing for this reason ends with.
            pub const fn code(self) -> Code {
                match self { $( Self::$variant => Code::$code, )+ }
            }

            /// Where the reason appears.
            pub const fn applies(self) -> Applies {
                match self { $( Self::$variant => Applies::$applies, )+ }
            }

            /// Whether sending the same call (or record) again later can succeed.
            pub const fn is_retriable(self) -> bool {
                match self { $( Self::$variant => $retry, )+ }
            }

            /// What the reason means, in one line.
            pub const fn meaning(self) -> &'static str {
                match self { $( Self::$variant => $meaning, )+ }
            }

            /// The reason named `name` on the wire, if it is one of ours.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $( $name => Some(Self::$variant), )+ _ => None }
            }
        }
    };
}

reasons! {
    // Who is calling (every service).
    CredentialMissing = "CREDENTIAL_MISSING", Unauthenticated, Call, false,
        "No credential was sent: send `authorization: Bearer <token>`.";
    CredentialMalformed = "CREDENTIAL_MALFORMED", Unauthenticated, Call, false,
        "The `authorization` value is not `Bearer <token>`, or the token is not a cardlink token.";
    CredentialInvalid = "CREDENTIAL_INVALID", Unauthenticated, Call, false,
        "The token's signature does not verify, it was signed with an unknown key, or it is not a configured bootstrap key.";
    CredentialExpired = "CREDENTIAL_EXPIRED", Unauthenticated, Call, false,
        "The credential has expired: rotate it.";
    CredentialRevoked = "CREDENTIAL_REVOKED", Unauthenticated, Call, false,
        "The credential was revoked, or the registry does not know it.";
    StreamMaxAge = "STREAM_MAX_AGE", Unavailable, Call, true,
        "A stream reached its maximum age: authenticate again (with your current credential) and resume from your last cursor.";
    ParticipantSuspended = "PARTICIPANT_SUSPENDED", PermissionDenied, Call, false,
        "The calling participant is suspended in the registry.";
    IssuersOnly = "ISSUERS_ONLY", PermissionDenied, Call, false,
        "Only a card issuer may make this call.";
    AggregatorsOnly = "AGGREGATORS_ONLY", PermissionDenied, Call, false,
        "Only an aggregator may make this call.";
    Forbidden = "FORBIDDEN", PermissionDenied, Call, false,
        "The caller may not change this registry entry.";
    // Registry.
    NotFound = "NOT_FOUND", NotFound, Call, false,
        "The named participant, connection or credential is not registered.";
    AlreadyExists = "ALREADY_EXISTS", AlreadyExists, Call, false,
        "A participant with this id is already registered.";
    InvalidArgument = "INVALID_ARGUMENT", InvalidArgument, Call, false,
        "A field of the request is missing or malformed (the message names it).";
    // Consent.
    ConsentNotFound = "CONSENT_NOT_FOUND", NotFound, Call, false,
        "No such consent.";
    NotYourConsent = "NOT_YOUR_CONSENT", PermissionDenied, Call, false,
        "The consent belongs to another participant.";
    WrongConsentState = "WRONG_CONSENT_STATE", FailedPrecondition, Call, false,
        "The consent is in a state that does not allow this change (e.g. revoking a denied request).";
    NotConnected = "NOT_CONNECTED", FailedPrecondition, Call, false,
        "The issuer has no active connection with the aggregator.";
    ScopeNotConnected = "SCOPE_NOT_CONNECTED", FailedPrecondition, Call, false,
        "A requested scope is not enabled on the issuer's connection with the aggregator.";
    InvalidScopes = "INVALID_SCOPES", InvalidArgument, Call, false,
        "No scope, an unknown scope, or a scope wider than the request's.";
    InvalidDuration = "INVALID_DURATION", InvalidArgument, Call, false,
        "The consent's duration is outside what is allowed.";
    InvalidHistoryDays = "INVALID_HISTORY_DAYS", InvalidArgument, Call, false,
        "The consent request asks for more history than allowed (0 to 730 days before the grant).";
    InvalidRedirectUri = "INVALID_REDIRECT_URI", InvalidArgument, Call, false,
        "The redirect URI is not one the aggregator registered (exactly; a loopback http URI with any port), or cannot be registered.";
    InvalidCodeChallenge = "INVALID_CODE_CHALLENGE", InvalidArgument, Call, false,
        "The PKCE code challenge is not S256 (43 base64url characters).";
    InvalidPurpose = "INVALID_PURPOSE", InvalidArgument, Call, false,
        "The purpose is empty or too long.";
    InvalidState = "INVALID_STATE", InvalidArgument, Call, false,
        "The `state` is longer than 512 bytes or holds control characters.";
    TooManyPendingRequests = "TOO_MANY_PENDING_REQUESTS", ResourceExhausted, Call, true,
        "The aggregator has as many undecided consent requests as allowed; each ends when decided or after 30 minutes.";
    NoAccounts = "NO_ACCOUNTS", InvalidArgument, Call, false,
        "An approval named no account.";
    InvalidCode = "INVALID_CODE", PermissionDenied, Call, false,
        "The authorisation code is unknown, expired or already used.";
    PkceMismatch = "PKCE_MISMATCH", PermissionDenied, Call, false,
        "The PKCE code verifier does not match the request's challenge.";
    RedirectUriMismatch = "REDIRECT_URI_MISMATCH", PermissionDenied, Call, false,
        "The redirect URI differs from the one the request named.";
    NotConfirmed = "NOT_CONFIRMED", Unavailable, Call, false,
        "The consent change was written but not read back in time to confirm it; read the consent to see whether it took effect (an exchange: start a new authorisation).";
    MemberRefRequired = "MEMBER_REF_REQUIRED", InvalidArgument, Call, false,
        "The call must name the member (`member_ref`).";
    // Subscription.
    CursorMalformed = "CURSOR_MALFORMED", InvalidArgument, Call, false,
        "The cursor is not a cardlink cursor.";
    CursorTampered = "CURSOR_TAMPERED", InvalidArgument, Call, false,
        "The cursor was altered or not issued by this deployment.";
    CursorNotYours = "CURSOR_NOT_YOURS", InvalidArgument, Call, false,
        "The cursor belongs to another aggregator.";
    CursorOutOfRange = "CURSOR_OUT_OF_RANGE", OutOfRange, Call, false,
        "The cursor points outside what the bus retains (too old, or past a recreated topic's end).";
    InvalidPositionName = "INVALID_POSITION_NAME", InvalidArgument, Call, false,
        "A named position must be 1 to 64 letters, digits, `-`, `_` or `.`.";
    PositionNotFound = "POSITION_NOT_FOUND", NotFound, Call, false,
        "No position was acknowledged under this name.";
    TooManyPositions = "TOO_MANY_POSITIONS", ResourceExhausted, Call, false,
        "The aggregator has as many named positions as allowed; acknowledge under a name it already uses.";
    UnknownEventKind = "UNKNOWN_EVENT_KIND", InvalidArgument, Call, false,
        "An event kind filter is not TRANSACTION, STATEMENT or CONSENT.";
    TooManyIssuerFilters = "TOO_MANY_ISSUER_FILTERS", InvalidArgument, Call, false,
        "The stream names more issuers in its filter than allowed.";
    TooManyStreams = "TOO_MANY_STREAMS", ResourceExhausted, Call, false,
        "The aggregator already holds as many open streams as allowed.";
    FellBehind = "FELL_BEHIND", ResourceExhausted, Call, true,
        "The stream's client read too slowly and the stream was ended; resume from the last cursor.";
    ServerShuttingDown = "SERVER_SHUTTING_DOWN", Unavailable, Call, true,
        "The service is restarting; resume from the last cursor.";
    // History.
    ConsentEnded = "CONSENT_ENDED", PermissionDenied, Call, false,
        "The consent is not active (revoked, expired, or not granted yet): nothing may be read under it.";
    ScopeNotGranted = "SCOPE_NOT_GRANTED", PermissionDenied, Call, false,
        "The consent does not grant the kind of data asked for (TRANSACTIONS for transactions, STATEMENTS for statements).";
    AccountRequired = "ACCOUNT_REQUIRED", InvalidArgument, Call, false,
        "The consent covers several accounts: name one (`account_ref`, as the consent shows it).";
    AccountNotInConsent = "ACCOUNT_NOT_IN_CONSENT", NotFound, Call, false,
        "The account is not one the consent covers (use the `account_ref` the consent shows this aggregator).";
    PageTokenInvalid = "PAGE_TOKEN_INVALID", InvalidArgument, Call, false,
        "The page token is not one this deployment issued, or was altered.";
    PageTokenMismatch = "PAGE_TOKEN_MISMATCH", InvalidArgument, Call, false,
        "The page token belongs to another listing: every field but page_size must be as in the request that began it.";
    HistoryUnavailable = "HISTORY_UNAVAILABLE", Unavailable, Call, true,
        "The history store did not answer, or (a backfill) has not yet indexed everything on the bus when it started; retry later.";
    BackfillUnavailable = "BACKFILL_UNAVAILABLE", FailedPrecondition, Call, false,
        "This deployment's subscription service has no history store: a stream cannot start with a backfill (use History).";
    // Ingest.
    TooManyRecords = "TOO_MANY_RECORDS", InvalidArgument, Call, false,
        "The publish call holds more records than allowed; split it.";
    NotReady = "NOT_READY", Unavailable, Call, true,
        "The service is still catching up with the bus; retry shortly.";
    UndecodableRecord = "UNDECODABLE_RECORD", Internal, Record, false,
        "A record on an event topic could not be decoded by this release (a newer schema version, or bytes ingest did not write); it was skipped, dead-lettered on the audit topic, and can be redelivered once a release reads it.";
    IssuerMismatch = "ISSUER_MISMATCH", PermissionDenied, Both, false,
        "The call or record names an issuer other than the caller.";
    MissingField = "MISSING_FIELD", InvalidArgument, Record, false,
        "A required field is empty.";
    InvalidField = "INVALID_FIELD", InvalidArgument, Record, false,
        "A field has a value of the wrong shape (not a UUID, an unknown enum value, …).";
    FieldTooLong = "FIELD_TOO_LONG", InvalidArgument, Record, false,
        "A text field is longer than its limit.";
    InvalidCurrency = "INVALID_CURRENCY", InvalidArgument, Record, false,
        "Not an ISO 4217 alphabetic currency code.";
    InvalidAmount = "INVALID_AMOUNT", InvalidArgument, Record, false,
        "An amount out of range or of the wrong sign for its kind.";
    InvalidDate = "INVALID_DATE", InvalidArgument, Record, false,
        "Not a valid date, month or instant, or out of the accepted range.";
    InstallmentsMismatch = "INSTALLMENTS_MISMATCH", InvalidArgument, Record, false,
        "The payment method and the installment count disagree.";
    InvalidKindTransition = "INVALID_KIND_TRANSITION", InvalidArgument, Record, false,
        "The kind needs a field it lacks or has one it must not (a refund without its original).";
    PanDetected = "PAN_DETECTED", InvalidArgument, Record, false,
        "A text field holds what may be a card number; the record was not stored.";
    RecordTooLarge = "RECORD_TOO_LARGE", InvalidArgument, Record, false,
        "The encoded record is larger than the bus accepts.";
    InFlight = "IN_FLIGHT", Aborted, Record, true,
        "The same event is being published by another call right now; retry.";
    NoResult = "NO_RESULT", Internal, Record, true,
        "The service returned no result for this record (reported by the client libraries); send it again.";
    // Member sign-in at the issuer's OpenID Provider (consent and member pages).
    LoginNotConfigured = "LOGIN_NOT_CONFIGURED", FailedPrecondition, SignIn, false,
        "The issuer has not registered its OpenID Provider (`SetIssuerLogin`), or the consent service lacks its client secret or key.";
    LoginProviderUnavailable = "LOGIN_PROVIDER_UNAVAILABLE", Unavailable, SignIn, true,
        "The issuer's OpenID Provider could not be reached, or its discovery document or keys could not be read.";
    LoginCancelled = "LOGIN_CANCELLED", PermissionDenied, SignIn, false,
        "The member cancelled at the provider (`access_denied`), or the provider refused the sign-in.";
    LoginSessionInvalid = "LOGIN_SESSION_INVALID", PermissionDenied, SignIn, false,
        "The browser came back without the sign-in it started here, with another `state`, or too late: start again.";
    LoginTokenRejected = "LOGIN_TOKEN_REJECTED", Unauthenticated, SignIn, false,
        "The provider refused the code, or its ID token failed verification (signature, `iss`, `aud`, `exp`, `nonce`).";
    LoginReplayed = "LOGIN_REPLAYED", Unauthenticated, SignIn, false,
        "This sign-in's nonce was already used: an ID token or callback was replayed.";
    MemberWithoutAccounts = "MEMBER_WITHOUT_ACCOUNTS", PermissionDenied, SignIn, false,
        "The provider named no card accounts of the member in the configured claim (or not the ones the request needs).";
    // Batch files (the file adapter, before anything is sent).
    LineTooLong = "LINE_TOO_LONG", InvalidArgument, Line, false,
        "The line is longer than the adapter reads.";
    EncodingError = "ENCODING_ERROR", InvalidArgument, Line, false,
        "The line holds bytes that are not valid in the file's encoding.";
    MalformedCsv = "MALFORMED_CSV", InvalidArgument, Line, false,
        "The line is not valid CSV.";
    ShortLine = "SHORT_LINE", InvalidArgument, Line, false,
        "The fixed-width line is shorter than the mapping's fields.";
    InvalidNumber = "INVALID_NUMBER", InvalidArgument, Line, false,
        "A number field is not a whole number, or out of range.";
    UnparseableDate = "UNPARSEABLE_DATE", InvalidArgument, Line, false,
        "A date or month field is not in a format the adapter reads.";
    UnparseableAmount = "UNPARSEABLE_AMOUNT", InvalidArgument, Line, false,
        "An amount field is not a whole amount.";
    UnmappedValue = "UNMAPPED_VALUE", InvalidArgument, Line, false,
        "A coded field's value is not in the mapping.";
    // Any service.
    BusUnavailable = "BUS_UNAVAILABLE", Unavailable, Both, true,
        "Kafka did not answer or acknowledge in time; retry later.";
}

impl Reason {
    /// The reason of a cardlink `Status`, if it carries one this version knows.
    pub fn of(status: &tonic::Status) -> Option<Self> {
        crate::status::reason(status).as_deref().and_then(Self::from_name)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed library error that reaches clients: its reason, and its `Display` as the message.
/// Implemented once per error type; [`crate::status::to_status`] does the rest.
pub trait ApiError: std::error::Error {
    fn reason(&self) -> Reason;
}

/// The reference table of every reason, as `docs/reasons.md` holds it.
pub fn markdown_table() -> String {
    let mut out = String::from("| reason | gRPC code | appears on | retry | meaning |\n|---|---|---|---|---|\n");
    for r in Reason::ALL {
        out.push_str(&format!(
            "| `{}` | `{:?}` | {} | {} | {} |\n",
            r.as_str(),
            r.code(),
            r.applies().as_str(),
            if r.is_retriable() { "yes" } else { "no" },
            r.meaning().replace('|', "\\|"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_reason_has_one_name_and_reads_back() {
        let mut names = HashSet::new();
        for &r in Reason::ALL {
            assert!(names.insert(r.as_str()), "{} named twice", r.as_str());
            assert_eq!(Reason::from_name(r.as_str()), Some(r));
            assert!(r.as_str().chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{r}");
            assert_ne!(r.code(), Code::Ok, "{r}");
            assert!(!r.meaning().is_empty());
        }
        assert_eq!(Reason::from_name("SOMETHING_ELSE"), None);
    }

    /// The contract, spelled out: changing a reason's code is a breaking change (CHANGELOG.md).
    #[test]
    fn every_reason_and_its_code() {
        use Code::*;
        let expected: &[(&str, Code)] = &[
            ("CREDENTIAL_MISSING", Unauthenticated),
            ("CREDENTIAL_MALFORMED", Unauthenticated),
            ("CREDENTIAL_INVALID", Unauthenticated),
            ("CREDENTIAL_EXPIRED", Unauthenticated),
            ("CREDENTIAL_REVOKED", Unauthenticated),
            ("STREAM_MAX_AGE", Unavailable),
            ("PARTICIPANT_SUSPENDED", PermissionDenied),
            ("ISSUERS_ONLY", PermissionDenied),
            ("AGGREGATORS_ONLY", PermissionDenied),
            ("FORBIDDEN", PermissionDenied),
            ("NOT_FOUND", NotFound),
            ("ALREADY_EXISTS", AlreadyExists),
            ("INVALID_ARGUMENT", InvalidArgument),
            ("CONSENT_NOT_FOUND", NotFound),
            ("NOT_YOUR_CONSENT", PermissionDenied),
            ("WRONG_CONSENT_STATE", FailedPrecondition),
            ("NOT_CONNECTED", FailedPrecondition),
            ("SCOPE_NOT_CONNECTED", FailedPrecondition),
            ("INVALID_SCOPES", InvalidArgument),
            ("INVALID_DURATION", InvalidArgument),
            ("INVALID_HISTORY_DAYS", InvalidArgument),
            ("INVALID_REDIRECT_URI", InvalidArgument),
            ("INVALID_CODE_CHALLENGE", InvalidArgument),
            ("INVALID_PURPOSE", InvalidArgument),
            ("INVALID_STATE", InvalidArgument),
            ("TOO_MANY_PENDING_REQUESTS", ResourceExhausted),
            ("NO_ACCOUNTS", InvalidArgument),
            ("INVALID_CODE", PermissionDenied),
            ("PKCE_MISMATCH", PermissionDenied),
            ("REDIRECT_URI_MISMATCH", PermissionDenied),
            ("NOT_CONFIRMED", Unavailable),
            ("MEMBER_REF_REQUIRED", InvalidArgument),
            ("CURSOR_MALFORMED", InvalidArgument),
            ("CURSOR_TAMPERED", InvalidArgument),
            ("CURSOR_NOT_YOURS", InvalidArgument),
            ("CURSOR_OUT_OF_RANGE", OutOfRange),
            ("INVALID_POSITION_NAME", InvalidArgument),
            ("POSITION_NOT_FOUND", NotFound),
            ("TOO_MANY_POSITIONS", ResourceExhausted),
            ("UNKNOWN_EVENT_KIND", InvalidArgument),
            ("TOO_MANY_ISSUER_FILTERS", InvalidArgument),
            ("TOO_MANY_STREAMS", ResourceExhausted),
            ("FELL_BEHIND", ResourceExhausted),
            ("SERVER_SHUTTING_DOWN", Unavailable),
            ("CONSENT_ENDED", PermissionDenied),
            ("SCOPE_NOT_GRANTED", PermissionDenied),
            ("ACCOUNT_REQUIRED", InvalidArgument),
            ("ACCOUNT_NOT_IN_CONSENT", NotFound),
            ("PAGE_TOKEN_INVALID", InvalidArgument),
            ("PAGE_TOKEN_MISMATCH", InvalidArgument),
            ("HISTORY_UNAVAILABLE", Unavailable),
            ("BACKFILL_UNAVAILABLE", FailedPrecondition),
            ("TOO_MANY_RECORDS", InvalidArgument),
            ("NOT_READY", Unavailable),
            ("UNDECODABLE_RECORD", Internal),
            ("ISSUER_MISMATCH", PermissionDenied),
            ("MISSING_FIELD", InvalidArgument),
            ("INVALID_FIELD", InvalidArgument),
            ("FIELD_TOO_LONG", InvalidArgument),
            ("INVALID_CURRENCY", InvalidArgument),
            ("INVALID_AMOUNT", InvalidArgument),
            ("INVALID_DATE", InvalidArgument),
            ("INSTALLMENTS_MISMATCH", InvalidArgument),
            ("INVALID_KIND_TRANSITION", InvalidArgument),
            ("PAN_DETECTED", InvalidArgument),
            ("RECORD_TOO_LARGE", InvalidArgument),
            ("IN_FLIGHT", Aborted),
            ("NO_RESULT", Internal),
            ("LOGIN_NOT_CONFIGURED", FailedPrecondition),
            ("LOGIN_PROVIDER_UNAVAILABLE", Unavailable),
            ("LOGIN_CANCELLED", PermissionDenied),
            ("LOGIN_SESSION_INVALID", PermissionDenied),
            ("LOGIN_TOKEN_REJECTED", Unauthenticated),
            ("LOGIN_REPLAYED", Unauthenticated),
            ("MEMBER_WITHOUT_ACCOUNTS", PermissionDenied),
            ("LINE_TOO_LONG", InvalidArgument),
            ("ENCODING_ERROR", InvalidArgument),
            ("MALFORMED_CSV", InvalidArgument),
            ("SHORT_LINE", InvalidArgument),
            ("INVALID_NUMBER", InvalidArgument),
            ("UNPARSEABLE_DATE", InvalidArgument),
            ("UNPARSEABLE_AMOUNT", InvalidArgument),
            ("UNMAPPED_VALUE", InvalidArgument),
            ("BUS_UNAVAILABLE", Unavailable),
        ];
        let actual: Vec<(&str, Code)> = Reason::ALL.iter().map(|r| (r.as_str(), r.code())).collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn only_transient_reasons_are_retriable() {
        let retriable: Vec<&str> = Reason::ALL.iter().filter(|r| r.is_retriable()).map(|r| r.as_str()).collect();
        assert_eq!(
            retriable,
            [
                "STREAM_MAX_AGE",
                "TOO_MANY_PENDING_REQUESTS",
                "FELL_BEHIND",
                "SERVER_SHUTTING_DOWN",
                "HISTORY_UNAVAILABLE",
                "NOT_READY",
                "IN_FLIGHT",
                "NO_RESULT",
                "LOGIN_PROVIDER_UNAVAILABLE",
                "BUS_UNAVAILABLE"
            ]
        );
    }

    /// `docs/reasons.md` is generated from the enum; regenerate it with
    /// `CARDLINK_WRITE_DOCS=1 cargo test -p cardlink-api`.
    #[test]
    fn the_documented_table_is_the_enum() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/reasons.md");
        let doc = std::fs::read_to_string(path).unwrap_or_default();
        let table = markdown_table();
        const BEGIN: &str = "<!-- reasons:begin (generated from crates/api/src/reason.rs) -->\n";
        const END: &str = "<!-- reasons:end -->";
        if std::env::var_os("CARDLINK_WRITE_DOCS").is_some() {
            let (head, tail) = match (doc.find(BEGIN), doc.find(END)) {
                (Some(b), Some(e)) => (&doc[..b], &doc[e..]),
                _ => (doc.as_str(), END),
            };
            std::fs::write(path, format!("{head}{BEGIN}{table}{tail}")).unwrap();
            return;
        }
        let between = doc.split_once(BEGIN).and_then(|(_, rest)| rest.split_once(END)).map(|(t, _)| t);
        assert_eq!(
            between,
            Some(table.as_str()),
            "docs/reasons.md differs from Reason::ALL: regenerate with CARDLINK_WRITE_DOCS=1 cargo test -p cardlink-api"
        );
    }
}
