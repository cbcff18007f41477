use super::*;
use cardlink_api::convert;
use cardlink_events::samples;

fn tx_record(t: v1::CardTransaction) -> v1::IngestRecord {
    v1::IngestRecord { event: Some(v1::ingest_record::Event::Transaction(t)) }
}

fn sample_tx() -> v1::CardTransaction {
    convert::transaction(&samples::foreign_installment_transaction("iss-a", "acct-1"))
}

fn rejection(t: v1::CardTransaction) -> Rejection {
    validate_record("iss-a", &tx_record(t)).expect_err("rejected")
}

#[test]
fn domain_events_survive_protobuf_and_validation() {
    for event in [
        ev::Event::Transaction(samples::transaction("iss-a", "acct-1", 3)),
        ev::Event::Transaction(samples::foreign_installment_transaction("iss-a", "acct-1")),
        ev::Event::Statement(samples::statement("iss-a", "acct-1")),
    ] {
        let record = convert::ingest_record(&event);
        assert_eq!(validate_record("iss-a", &record).expect("valid"), event);
    }
}

#[test]
fn empty_issuer_in_record_means_the_caller() {
    let mut t = sample_tx();
    t.issuer_id.clear();
    let ev::Event::Transaction(tx) = validate_record("iss-a", &tx_record(t)).expect("valid") else { panic!() };
    assert_eq!(tx.issuer_id, "iss-a");
}

#[test]
fn pan_in_any_text_field_is_rejected_naming_the_field() {
    // Synthetic test PAN, only here to prove the guard.
    const PAN: &str = "4111 1111 1111 1111";
    type Mutation = Box<dyn Fn(&mut v1::CardTransaction)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "merchant.name_as_printed",
            Box::new(|t| t.merchant.as_mut().unwrap().name_as_printed = format!("SHOP {PAN}")),
        ),
        ("account_ref", Box::new(|t| t.account_ref = PAN.replace(' ', "-"))),
        ("issuer_transaction_id", Box::new(|t| t.issuer_transaction_id = PAN.replace(' ', ""))),
        ("merchant.normalized_name", Box::new(|t| t.merchant.as_mut().unwrap().normalized_name = format!("店{PAN}"))),
    ];
    for (field, mutate) in cases {
        let mut t = sample_tx();
        mutate(&mut t);
        let r = rejection(t);
        assert_eq!((r.reason, r.field.as_str()), (R::PanDetected, field));
        assert!(!r.message.contains("4111"), "the message must not repeat the number");
    }
}

#[test]
fn pan_is_reported_even_when_other_fields_are_wrong() {
    let mut t = sample_tx();
    t.event_id = "not-a-uuid".into();
    t.amount = Some(v1::Money { minor_units: 1, currency: "YEN".into() });
    t.merchant.as_mut().unwrap().name_as_printed = "5555555555554444".into();
    assert_eq!(rejection(t).reason, R::PanDetected);
}

#[test]
fn each_rule_names_its_reason_and_field() {
    type Case = (R, &'static str, Box<dyn Fn(&mut v1::CardTransaction)>);
    let cases: Vec<Case> = vec![
        (R::MissingField, "event_id", Box::new(|t| t.event_id.clear())),
        (R::InvalidField, "event_id", Box::new(|t| t.event_id = "12345".into())),
        (R::MissingField, "account_ref", Box::new(|t| t.account_ref.clear())),
        (R::IssuerMismatch, "issuer_id", Box::new(|t| t.issuer_id = "iss-b".into())),
        (R::MissingField, "kind", Box::new(|t| t.kind = 0)),
        (R::InvalidField, "kind", Box::new(|t| t.kind = 99)),
        (R::InvalidCurrency, "amount.currency", Box::new(|t| t.amount.as_mut().unwrap().currency = "YEN".into())),
        (R::InvalidAmount, "amount.minor_units", Box::new(|t| t.amount.as_mut().unwrap().minor_units = i64::MAX)),
        (R::MissingField, "amount", Box::new(|t| t.amount = None)),
        (R::InvalidDate, "local_date", Box::new(|t| t.local_date = "2026/11/23".into())),
        (R::InvalidDate, "local_date", Box::new(|t| t.local_date = "2026-02-30".into())),
        (R::InvalidDate, "local_date", Box::new(|t| t.local_date = "1899-01-01".into())),
        (R::InvalidDate, "billing_month", Box::new(|t| t.billing_month = "2026-13".into())),
        (R::MissingField, "occurred_at", Box::new(|t| t.occurred_at = None)),
        (
            R::InstallmentsMismatch,
            "payment.installment_count",
            Box::new(|t| t.payment.as_mut().unwrap().installment_count = None),
        ),
        (
            R::InstallmentsMismatch,
            "payment.installment_count",
            Box::new(|t| t.payment.as_mut().unwrap().installment_count = Some(1)),
        ),
        (
            R::InstallmentsMismatch,
            "payment.installment_number",
            Box::new(|t| t.payment.as_mut().unwrap().installment_number = Some(4)),
        ),
        (
            R::InstallmentsMismatch,
            "payment.installment_count",
            Box::new(|t| {
                let p = t.payment.as_mut().unwrap();
                p.method = v1::PaymentMethod::Revolving as i32;
                p.installment_count = Some(6);
            }),
        ),
        (R::InvalidKindTransition, "posted_date", Box::new(|t| t.kind = v1::TransactionKind::Authorized as i32)),
        (R::InvalidKindTransition, "posted_date", Box::new(|t| t.posted_date.clear())),
        (
            R::InvalidKindTransition,
            "original_transaction_id",
            Box::new(|t| {
                t.kind = v1::TransactionKind::Refunded as i32;
                t.amount.as_mut().unwrap().minor_units = -100;
            }),
        ),
        (
            R::InvalidAmount,
            "amount.minor_units",
            Box::new(|t| {
                t.kind = v1::TransactionKind::Refunded as i32;
                t.original_transaction_id = "tx-1".into();
            }),
        ),
        (R::InvalidField, "card.last4", Box::new(|t| t.card.as_mut().unwrap().last4 = "12345".into())),
        (R::InvalidField, "merchant.mcc", Box::new(|t| t.merchant.as_mut().unwrap().mcc = "54A1".into())),
        (R::InvalidField, "merchant.country", Box::new(|t| t.merchant.as_mut().unwrap().country = "Japan".into())),
        (
            R::FieldTooLong,
            "merchant.name_as_printed",
            Box::new(|t| t.merchant.as_mut().unwrap().name_as_printed = "あ".repeat(300)),
        ),
        (R::InvalidField, "foreign.fx_rate", Box::new(|t| t.foreign.as_mut().unwrap().fx_rate = "1.5e2".into())),
        (
            R::InvalidField,
            "foreign.amount.currency",
            Box::new(|t| t.foreign.as_mut().unwrap().amount.as_mut().unwrap().currency = "JPY".into()),
        ),
    ];
    for (reason, field, mutate) in cases {
        let mut t = sample_tx();
        mutate(&mut t);
        let r = rejection(t);
        assert_eq!((r.reason, r.field.as_str()), (reason, field), "{}", r.message);
    }
}

#[test]
fn statement_rules() {
    let base = || convert::statement(&samples::statement("iss-a", "acct-1"));
    let reject = |s: v1::Statement| {
        validate_record("iss-a", &v1::IngestRecord { event: Some(v1::ingest_record::Event::Statement(s)) })
            .expect_err("rejected")
    };
    let mut s = base();
    s.total.as_mut().unwrap().minor_units += 1;
    assert_eq!(reject(s).reason, R::InvalidAmount);
    let mut s = base();
    s.due_date = "2026-11-01".into();
    assert_eq!(reject(s).field, "due_date");
    let mut s = base();
    s.status = 0;
    assert_eq!(reject(s).reason, R::MissingField);
    let mut s = base();
    s.charges[0].amount.as_mut().unwrap().currency = "USD".into();
    assert_eq!(reject(s).reason, R::InvalidCurrency);
}

#[test]
fn empty_record_is_rejected() {
    let r = validate_record("iss-a", &v1::IngestRecord { event: None }).expect_err("rejected");
    assert_eq!(r.reason, R::MissingField);
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use prost::Message as _;

    proptest! {
        // The fuzz target record_validator, as a property: mutate a valid record's bytes.
        #[test]
        fn mutated_records_never_panic_and_accepted_ones_encode(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = tx_record(sample_tx()).encode_to_vec();
            for (index, value) in flips {
                let i = index.index(bytes.len());
                bytes[i] = value;
            }
            if let Ok(record) = v1::IngestRecord::decode(bytes.as_slice())
                && let Ok(event) = validate_record("iss-a", &record)
            {
                prop_assert!(cardlink_events::encode(&event).is_ok());
            }
        }
    }
}

proptest::proptest! {
    /// The direct reading of `YYYY-MM-DD` agrees with chrono's parser on every text of that
    /// length, dates or not, and reads every date chrono reads in that shape.
    #[test]
    fn iso_dates_read_as_chrono_reads_them(
        year in 0u32..10_000, month in 0u32..14, day in 0u32..33,
        other in "[0-9a-z -]{10}",
    ) {
        let text = format!("{year:04}-{month:02}-{day:02}");
        let chrono = NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok();
        proptest::prop_assert_eq!(iso_date(&text), chrono);
        if let Some(d) = iso_date(&other) {
            proptest::prop_assert_eq!(Some(d), NaiveDate::parse_from_str(&other, "%Y-%m-%d").ok());
        }
    }
}
