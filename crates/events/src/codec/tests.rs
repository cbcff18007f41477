use super::*;
use crate::model::CardTransaction;
use crate::samples;
use proptest::prelude::*;

fn every_sample() -> Vec<Event> {
    vec![
        Event::Transaction(samples::transaction("iss-a", "acct-1", 1)),
        Event::Transaction(samples::foreign_installment_transaction("iss-a", "acct-1")),
        Event::Statement(samples::statement("iss-a", "acct-1")),
    ]
}

#[test]
fn every_sample_round_trips() {
    for event in every_sample() {
        let encoded = encode(&event).expect("encodes");
        assert_eq!(decode(&encoded.bytes).expect("decodes"), event);
    }
}

#[test]
fn the_direct_decoder_reads_what_the_value_path_reads() {
    for event in every_sample() {
        let bytes = encode(&event).expect("encodes").bytes;
        let reference = match &event {
            Event::Transaction(_) => decode_via_value(&bytes).map(Event::Transaction),
            Event::Statement(_) => decode_via_value(&bytes).map(Event::Statement),
        }
        .expect("decodes");
        assert_eq!(decode(&bytes).expect("decodes"), reference);
    }
}

#[test]
fn the_fast_encoder_writes_the_same_bytes_as_the_reference_path() {
    for event in every_sample() {
        let version = Schemas::get().latest(event.record_type());
        let fast = encode(&event).expect("encodes").bytes;
        let reference = match &event {
            Event::Transaction(t) => encode_via_value(version, t),
            Event::Statement(s) => encode_via_value(version, s),
        }
        .expect("encodes");
        assert_eq!(&fast[HEADER_LEN..], &reference[..], "{event:?}");
    }
}

#[test]
fn a_record_that_does_not_fit_fails_without_spoiling_the_next() {
    // An audit event is not a card transaction: its shape fails the transaction schema.
    let audit = crate::AuditEvent::now(crate::ActorType::Issuer, "iss-a", "x", "y", crate::AuditOutcome::Denied);
    assert!(encode_record(RecordType::CardTransaction, &audit).is_err());
    let event = every_sample().swap_remove(0);
    let bytes = encode(&event).expect("encodes").bytes;
    assert_eq!(decode(&bytes).expect("decodes"), event);
}

#[test]
fn encoded_value_has_single_object_header_of_latest_schema() {
    let event = Event::Statement(samples::statement("iss-a", "acct-1"));
    let encoded = encode(&event).expect("encodes");
    assert_eq!(&encoded.bytes[..2], &SINGLE_OBJECT_MARKER);
    let latest = Schemas::get().latest(RecordType::Statement);
    assert_eq!(peek_fingerprint(&encoded.bytes).expect("header"), latest.fingerprint);
    assert_eq!(encoded.fingerprint, latest.fingerprint);
}

#[test]
fn short_value_is_rejected_without_panic() {
    for len in 0..HEADER_LEN {
        let bytes = vec![0xC3; len];
        assert!(matches!(decode(&bytes), Err(CodecError::TooShort { len: l }) if l == len));
    }
}

#[test]
fn value_without_marker_is_rejected() {
    let mut bytes = encode(&every_sample()[0]).expect("encodes").bytes;
    bytes[0] = b'{';
    assert!(matches!(decode(&bytes), Err(CodecError::BadMarker)));
}

#[test]
fn unknown_fingerprint_is_named_in_the_error() {
    let mut bytes = encode(&every_sample()[0]).expect("encodes").bytes;
    bytes[2..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let err = decode(&bytes).expect_err("unknown schema");
    assert_eq!(err.to_string(), "no committed schema has fingerprint 0102030405060708");
}

#[test]
fn truncated_body_never_decodes_to_the_original() {
    // apache-avro reads a union index at end of input as the null branch, so a value cut exactly
    // before a trailing optional field can decode; it must never pass for the original event.
    let event = every_sample().swap_remove(1);
    let bytes = encode(&event).expect("encodes").bytes;
    for cut in HEADER_LEN..bytes.len() {
        if let Ok(decoded) = decode(&bytes[..cut]) {
            assert_ne!(decoded, event, "value cut at {cut} of {} decoded as the original", bytes.len());
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut bytes = encode(&every_sample()[0]).expect("encodes").bytes;
    bytes.extend_from_slice(&[0, 0]);
    assert!(matches!(decode(&bytes), Err(CodecError::TrailingBytes { extra: 2, .. })));
}

#[test]
fn huge_length_prefix_does_not_allocate_unbounded() {
    // Header of the transaction schema, then a string length of ~2^62 for event_id.
    let mut bytes = encode(&every_sample()[0]).expect("encodes").bytes;
    bytes.truncate(HEADER_LEN);
    bytes.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(matches!(decode(&bytes), Err(CodecError::Body { .. })));
}

#[test]
fn partition_key_groups_one_account() {
    let a = Event::Transaction(samples::transaction("iss-a", "acct-1", 1));
    let b = Event::Statement(samples::statement("iss-a", "acct-1"));
    assert_eq!(a.partition_key(), "iss-a/acct-1");
    assert_eq!(a.partition_key(), b.partition_key());
}

#[test]
fn derived_event_ids_are_stable_and_scoped_by_issuer() {
    let a = crate::EventId::derived("iss-a", "tx-1/POSTED");
    assert_eq!(a, crate::EventId::derived("iss-a", "tx-1/POSTED"));
    assert_ne!(a, crate::EventId::derived("iss-b", "tx-1/POSTED"));
    assert_ne!(a, crate::EventId::derived("iss-a", "tx-1/AUTHORIZED"));
}

proptest! {
    #[test]
    fn any_field_values_round_trip(
        n in any::<u32>(),
        amount in any::<i64>(),
        name in "\\PC{0,40}",
        last4 in proptest::option::of("[0-9]{4}"),
        count in proptest::option::of(2i32..=60),
        days in -100_000i32..100_000,
    ) {
        let mut tx = samples::transaction("iss", "acct", n);
        tx.amount.minor_units = amount;
        tx.card.last4 = last4;
        tx.payment.installment_count = count;
        tx.local_date = chrono::NaiveDate::from_epoch_days(days).expect("in range");
        if let Some(m) = tx.merchant.as_mut() {
            m.name_as_printed = name;
        }
        let reference = encode_via_value(Schemas::get().latest(RecordType::CardTransaction), &tx).expect("encodes");
        let event = Event::Transaction(tx);
        let bytes = encode(&event).expect("encodes").bytes;
        prop_assert_eq!(&bytes[HEADER_LEN..], &reference[..], "the fast encoder differs from the reference");
        let Event::Transaction(via_value) = &event else { unreachable!() };
        prop_assert_eq!(&decode_via_value::<CardTransaction>(&bytes).expect("decodes"), via_value);
        prop_assert_eq!(decode(&bytes).expect("decodes"), event);
    }

    /// Any body after a transaction's or a statement's header: the direct decoder never panics,
    /// and accepts exactly what the `Value` path accepts, as the same record.
    #[test]
    fn arbitrary_bytes_never_panic_and_decode_as_the_value_path_does(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        statement in any::<bool>(),
    ) {
        let _ = decode(&bytes);
        let mut with_header = encode(&every_sample()[if statement { 2 } else { 0 }]).expect("encodes").bytes;
        with_header.truncate(HEADER_LEN);
        with_header.extend_from_slice(&bytes);
        let direct = decode(&with_header).ok();
        let reference = if statement {
            decode_via_value(&with_header).ok().map(Event::Statement)
        } else {
            decode_via_value(&with_header).ok().map(Event::Transaction)
        };
        prop_assert_eq!(direct, reference);
    }

    /// Random mutations of a real transaction (most bodies of random bytes fail early; these get
    /// deep into the record): both decoders agree.
    #[test]
    fn mutated_transactions_decode_as_the_value_path_does(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = encode(&every_sample()[1]).expect("encodes").bytes;
        for (at, byte) in flips {
            let i = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
            bytes[i] = byte;
        }
        if truncate {
            bytes.truncate(HEADER_LEN + cut.index(bytes.len() - HEADER_LEN));
        }
        let direct = decode(&bytes).ok();
        let reference = decode_via_value::<CardTransaction>(&bytes).ok().map(Event::Transaction);
        match (&direct, &reference) {
            // apache-avro's `Value` path reads a union it finds the input's end at as null, so a
            // record cut before its last union field passes there; the direct decoder refuses a
            // record that ends early. Only that may differ.
            (None, Some(read)) => {
                let whole = encode(read).expect("encodes").bytes;
                prop_assert!(truncate && whole.len() > bytes.len(), "only a cut record may differ: {read:?}");
            }
            _ => prop_assert_eq!(direct, reference),
        }
    }
}

#[test]
fn audit_events_round_trip_and_are_not_taken_for_card_events() {
    let mut audit = crate::AuditEvent::now(
        crate::ActorType::Issuer,
        "iss-b",
        "ingest.publish",
        "issuer/iss-a",
        crate::AuditOutcome::Denied,
    );
    audit.reason = Some("ISSUER_MISMATCH".into());
    audit.data_items = vec!["transactions".into()];
    let bytes = encode_record(RecordType::AuditEvent, &audit).expect("encodes").bytes;
    let back: crate::AuditEvent = decode_record(&bytes, RecordType::AuditEvent).expect("decodes");
    // Avro keeps microseconds.
    assert_eq!(back.occurred_at.timestamp_micros(), audit.occurred_at.timestamp_micros());
    assert_eq!(back.reason, audit.reason);
    assert_eq!(back.data_items, audit.data_items);
    assert!(matches!(decode(&bytes), Err(CodecError::UnexpectedRecord { found: RecordType::AuditEvent, .. })));
    let tx_bytes = encode(&every_sample()[0]).expect("encodes").bytes;
    assert!(decode_record::<crate::AuditEvent>(&tx_bytes, RecordType::AuditEvent).is_err());
}

#[test]
fn registry_and_consent_events_round_trip() {
    use crate::consent::{ConsentEvent, ConsentStatus};
    use crate::registry::{
        ConnectionEntity, ConnectionStatus, CredentialEntity, Entity, ParticipantRole, RegistryEvent, Scope,
    };
    let now = chrono::DateTime::from_timestamp_micros(chrono::Utc::now().timestamp_micros()).expect("in range");
    for entity in [
        Entity::Connection(ConnectionEntity {
            issuer_id: "iss-a".into(),
            aggregator_id: "agg-x".into(),
            scopes: vec![Scope::Transactions, Scope::Statements],
            status: ConnectionStatus::Active,
            reason: None,
        }),
        Entity::Credential(CredentialEntity {
            credential_id: "c1".into(),
            role: ParticipantRole::Aggregator,
            participant_id: "agg-x".into(),
            issued_at: now,
            expires_at: now,
            revoked_at: Some(now),
        }),
    ] {
        let mut event = RegistryEvent::new(crate::ActorType::Operator, "op", entity);
        event.occurred_at = now;
        let bytes = encode_record(RecordType::RegistryEvent, &event).expect("encodes").bytes;
        assert_eq!(decode_record::<RegistryEvent>(&bytes, RecordType::RegistryEvent).expect("decodes"), event);
    }
    let consent = ConsentEvent {
        event_id: crate::EventId::random(),
        occurred_at: now,
        actor_type: crate::ActorType::Member,
        actor_id: "m1".into(),
        consent_id: "cns-1".into(),
        issuer_id: "iss-a".into(),
        aggregator_id: "agg-x".into(),
        member_ref: Some("m1".into()),
        account_refs: vec!["acct-1".into()],
        requested_scopes: vec![Scope::Transactions, Scope::MerchantDetail],
        scopes: vec![Scope::Transactions],
        status: ConsentStatus::Active,
        purpose: "家計簿".into(),
        redirect_uri: "https://agg.example/cb".into(),
        state: None,
        code_challenge: "abc".into(),
        duration_days: 90,
        history_days: 30,
        created_at: now,
        granted_at: Some(now),
        expires_at: Some(now),
        ended_at: None,
        code_hash: Some("00".into()),
        code_expires_at: Some(now),
        code_redeemed: true,
    };
    let bytes = encode_record(RecordType::ConsentEvent, &consent).expect("encodes").bytes;
    assert_eq!(decode_record::<ConsentEvent>(&bytes, RecordType::ConsentEvent).expect("decodes"), consent);

    // What a producer of consent_event v1 (before `history_days`) wrote is read through schema
    // resolution, the added field at its default.
    let v1 = Schemas::get()
        .versions()
        .iter()
        .find(|v| v.record == RecordType::ConsentEvent && v.version == 1)
        .expect("consent_event v1 is committed");
    let apache_avro::types::Value::Record(fields) = apache_avro::to_value(&consent).expect("to a value") else {
        panic!("a record")
    };
    let fields = fields.into_iter().filter(|(name, _)| name != "history_days").collect();
    let value = apache_avro::types::Value::Record(fields).resolve(&v1.schema).expect("fits v1");
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&v1.schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .expect("writes v1");
    let mut old = SINGLE_OBJECT_MARKER.to_vec();
    old.extend_from_slice(&v1.fingerprint.0);
    old.extend_from_slice(&body);
    let read = decode_record::<ConsentEvent>(&old, RecordType::ConsentEvent).expect("decodes v1");
    assert_eq!(read, ConsentEvent { history_days: 0, ..consent.clone() });

    // The terms a consent view reads: in place from the latest version, through the full decode
    // from v1.
    let terms = with_consent_terms(&bytes, |t| format!("{t:?}")).expect("reads the terms");
    assert_eq!(terms, format!("{:?}", consent.terms()));
    let terms = with_consent_terms(&old, |t| format!("{t:?}")).expect("reads v1's terms");
    assert_eq!(terms, format!("{:?}", read.terms()));
}

#[test]
fn the_consent_terms_reader_walks_the_latest_consent_version() {
    // A new consent_event version must be taught to `consent_terms::read` (until then its records
    // would take the slower full decode): this fails to say so.
    assert_eq!(Schemas::get().latest(RecordType::ConsentEvent).version, consent_terms::VERSION);
}

#[test]
fn consent_terms_are_only_read_from_consent_records() {
    let tx = encode(&every_sample()[0]).expect("encodes").bytes;
    assert!(matches!(
        with_consent_terms(&tx, |_| ()),
        Err(CodecError::UnexpectedRecord { found: RecordType::CardTransaction, .. })
    ));
    assert!(matches!(with_consent_terms(&tx[..4], |_| ()), Err(CodecError::TooShort { .. })));
}

/// A consent event with every field the terms read set from the arguments.
fn consent_with(
    member: Option<String>,
    accounts: Vec<String>,
    scopes: Vec<crate::registry::Scope>,
    status: u8,
    history_days: i32,
    granted: Option<i64>,
    expires: Option<i64>,
) -> crate::consent::ConsentEvent {
    use crate::consent::ConsentStatus;
    let at = |micros: i64| chrono::DateTime::from_timestamp_micros(micros).expect("in range");
    let mut c = samples::active_consent("cns-1", "iss-a", "agg-x", &[], &scopes, at(0), at(1));
    c.member_ref = member;
    c.account_refs = accounts;
    c.status = [
        ConsentStatus::Requested,
        ConsentStatus::Active,
        ConsentStatus::Denied,
        ConsentStatus::Revoked,
        ConsentStatus::Expired,
    ][usize::from(status % 5)];
    c.history_days = history_days;
    c.granted_at = granted.map(at);
    c.expires_at = expires.map(at);
    c.state = Some("xyz".into());
    c
}

/// Both readers' verdicts on `bytes`: the terms, or none.
fn terms_both_ways(bytes: &[u8]) -> (Option<String>, Option<String>) {
    let in_place = with_consent_terms(bytes, |t| format!("{t:?}")).ok();
    let full = decode_record::<crate::consent::ConsentEvent>(bytes, RecordType::ConsentEvent)
        .ok()
        .map(|c| format!("{:?}", c.terms()));
    (in_place, full)
}

#[test]
fn every_one_byte_change_and_every_cut_of_a_consent_reads_as_the_full_decode_reads_it() {
    let consent = consent_with(
        Some("m-001".into()),
        vec!["acct-1".into(), "acct-2".into()],
        vec![crate::registry::Scope::Transactions],
        1,
        30,
        Some(1_000),
        None,
    );
    let bytes = encode_record(RecordType::ConsentEvent, &consent).expect("encodes").bytes;
    let (mut accepted, mut refused) = (0, 0);
    for i in HEADER_LEN..bytes.len() {
        for v in [0u8, 1, 2, 3, 0x30, 0x7f, 0x80, 0xfe, 0xff] {
            let mut changed = bytes.clone();
            changed[i] = v;
            let (in_place, full) = terms_both_ways(&changed);
            assert_eq!(in_place, full, "byte {i} set to {v:#x}");
            if full.is_some() { accepted += 1 } else { refused += 1 }
        }
        let (in_place, full) = terms_both_ways(&bytes[..i]);
        assert_eq!(in_place, full, "cut at {i}");
    }
    assert!(accepted > 0 && refused > 0, "both verdicts exercised: {accepted} accepted, {refused} refused");
}

fn any_scopes() -> impl Strategy<Value = Vec<crate::registry::Scope>> {
    proptest::sample::subsequence(crate::registry::Scope::ALL.to_vec(), 0..=3)
}

proptest! {
    // Reading in place must refuse what the full decode refuses, byte for byte: more cases than
    // the default, mutations biased to the values where Avro's checks sit (0, 1, 2, varint edges).
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Any consent's terms read in place are the terms of the fully decoded record.
    #[test]
    fn consent_terms_read_in_place_are_the_decoded_records(
        member in proptest::option::of("\\PC{0,40}"),
        accounts in proptest::collection::vec("\\PC{0,20}", 0..4),
        scopes in any_scopes(),
        status in any::<u8>(),
        history_days in any::<i32>(),
        granted in proptest::option::of(-8_000_000_000_000_000i64..8_000_000_000_000_000),
        expires in proptest::option::of(-8_000_000_000_000_000i64..8_000_000_000_000_000),
    ) {
        let consent = consent_with(member, accounts, scopes, status, history_days, granted, expires);
        let bytes = encode_record(RecordType::ConsentEvent, &consent).expect("encodes").bytes;
        let terms = with_consent_terms(&bytes, |t| format!("{t:?}")).expect("reads the terms");
        prop_assert_eq!(terms, format!("{:?}", consent.terms()));
    }

    /// Random mutations of a real consent record: the in-place reader accepts exactly what the
    /// full decode accepts, with the same terms.
    #[test]
    fn mutated_consents_read_as_the_full_decode_reads_them(
        flips in proptest::collection::vec(
            (any::<prop::sample::Index>(), prop_oneof![0u8..4, Just(0x7f), Just(0x80), Just(0xff), any::<u8>()]),
            1..4,
        ),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        accounts in 0usize..3,
    ) {
        let consent = consent_with(
            Some("m-001".into()),
            (0..accounts).map(|a| format!("acct-{a}")).collect(),
            vec![crate::registry::Scope::Transactions],
            1,
            30,
            Some(1_000),
            None,
        );
        let mut bytes = encode_record(RecordType::ConsentEvent, &consent).expect("encodes").bytes;
        for (at, byte) in flips {
            let i = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
            bytes[i] = byte;
        }
        if truncate {
            bytes.truncate(HEADER_LEN + cut.index(bytes.len() - HEADER_LEN));
        }
        let (in_place, full) = terms_both_ways(&bytes);
        prop_assert_eq!(in_place, full);
    }

    /// Any body after a consent record's header: no panic, and the same verdict as the full decode.
    #[test]
    fn arbitrary_consent_bodies_read_as_the_full_decode_reads_them(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut with_header = SINGLE_OBJECT_MARKER.to_vec();
        with_header.extend_from_slice(&Schemas::get().latest(RecordType::ConsentEvent).fingerprint.0);
        with_header.extend_from_slice(&bytes);
        let (in_place, full) = terms_both_ways(&with_header);
        prop_assert_eq!(in_place, full);
    }
}
