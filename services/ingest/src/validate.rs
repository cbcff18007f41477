//! From an issuer's protobuf record to a domain event, or a [`Rejection`] naming the field.
//!
//! Checks, in order: the PAN guard over every text field (first, so a card number is reported as
//! such whatever else is wrong), the issuer, then every field's shape and the rules between
//! fields: currency codes, amount ranges and signs, dates, installments versus payment method,
//! and what each kind needs (a refund names its original transaction).

use cardlink_api::v1;
use cardlink_events as ev;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use crate::currency::is_iso4217;
use crate::pan::{contains_pan, identifier_contains_pan};
use cardlink_api::Reason as R;

use crate::outcome::Rejection;

/// Longest id (event, account, transaction, statement) accepted, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Longest free text (merchant names) accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 256;
/// Largest absolute amount accepted, in minor units (10^13: ten trillion yen).
pub const MAX_ABS_AMOUNT: i64 = 10_000_000_000_000;
/// Accepted years for dates and instants.
const YEARS: std::ops::RangeInclusive<i32> = 2000..=2100;
/// Longest installment plan accepted.
const MAX_INSTALLMENTS: i32 = 120;

type Result<T> = std::result::Result<T, Rejection>;

/// Validates one record published by `issuer_id`.
pub fn validate_record(issuer_id: &str, record: &v1::IngestRecord) -> Result<ev::Event> {
    match &record.event {
        None => Err(Rejection::new(R::MissingField, "event", "the record holds neither a transaction nor a statement")),
        Some(v1::ingest_record::Event::Transaction(t)) => {
            guard_pans(&transaction_texts(t))?;
            transaction(issuer_id, t).map(ev::Event::Transaction)
        }
        Some(v1::ingest_record::Event::Statement(s)) => {
            guard_pans(&statement_texts(s))?;
            statement(issuer_id, s).map(ev::Event::Statement)
        }
    }
}

/// Fields holding identifiers: a card number glued to other digits counts there only with the
/// other digits on one side ([`crate::pan::Glued`]).
const IDENTIFIERS: [&str; 6] =
    ["event_id", "issuer_id", "account_ref", "issuer_transaction_id", "original_transaction_id", "statement_id"];

fn guard_pans(texts: &[(&'static str, &str)]) -> Result<()> {
    for (field, text) in texts {
        let found = if IDENTIFIERS.contains(field) { identifier_contains_pan(text) } else { contains_pan(text) };
        if found {
            return Err(Rejection::new(
                R::PanDetected,
                *field,
                "the field contains what may be a card number; card numbers must never be sent",
            ));
        }
    }
    Ok(())
}

/// Every text field of a transaction, with its path. The messages are taken apart field by
/// field (no `..`): a field added to the proto does not compile here until it is either listed
/// for the guard or named as not text (`docs/contributing.md`).
fn transaction_texts(t: &v1::CardTransaction) -> Vec<(&'static str, &str)> {
    let v1::CardTransaction {
        event_id,
        issuer_id,
        account_ref,
        card,
        kind: _,
        category: _,
        issuer_transaction_id,
        original_transaction_id,
        occurred_at: _,
        local_date,
        posted_date,
        amount: _,
        foreign,
        merchant,
        payment: _,
        billing_month,
        channel: _,
        instrument: _,
        points_earned: _,
    } = t;
    let mut texts = vec![
        ("event_id", event_id.as_str()),
        ("issuer_id", issuer_id.as_str()),
        ("account_ref", account_ref.as_str()),
        ("issuer_transaction_id", issuer_transaction_id.as_str()),
        ("original_transaction_id", original_transaction_id.as_str()),
        ("local_date", local_date.as_str()),
        ("posted_date", posted_date.as_str()),
        ("billing_month", billing_month.as_str()),
    ];
    if let Some(v1::CardRef { last4, holder: _ }) = card {
        texts.push(("card.last4", last4.as_str()));
    }
    if let Some(v1::Merchant { name_as_printed, normalized_name, mcc, industry_code, country }) = merchant {
        texts.extend([
            ("merchant.name_as_printed", name_as_printed.as_str()),
            ("merchant.normalized_name", normalized_name.as_str()),
            ("merchant.mcc", mcc.as_str()),
            ("merchant.industry_code", industry_code.as_str()),
            ("merchant.country", country.as_str()),
        ]);
    }
    if let Some(v1::ForeignAmount { amount: _, fx_rate, fx_rate_date, overseas_fee: _ }) = foreign {
        texts.extend([("foreign.fx_rate", fx_rate.as_str()), ("foreign.fx_rate_date", fx_rate_date.as_str())]);
    }
    texts
}

/// Every text field of a statement (taken apart field by field, as above).
fn statement_texts(s: &v1::Statement) -> Vec<(&'static str, &str)> {
    let v1::Statement {
        event_id,
        statement_id,
        issuer_id,
        account_ref,
        status: _,
        billing_month,
        period_start,
        closing_date,
        due_date,
        total: _,
        breakdown: _,
        charges: _,
        revolving_balance: _,
        minimum_payment: _,
        points_balance: _,
    } = s;
    vec![
        ("event_id", event_id.as_str()),
        ("statement_id", statement_id.as_str()),
        ("issuer_id", issuer_id.as_str()),
        ("account_ref", account_ref.as_str()),
        ("billing_month", billing_month.as_str()),
        ("period_start", period_start.as_str()),
        ("closing_date", closing_date.as_str()),
        ("due_date", due_date.as_str()),
    ]
}

fn transaction(issuer_id: &str, t: &v1::CardTransaction) -> Result<ev::CardTransaction> {
    let kind = match v1::TransactionKind::try_from(t.kind) {
        Ok(v1::TransactionKind::Authorized) => ev::TransactionKind::Authorized,
        Ok(v1::TransactionKind::Posted) => ev::TransactionKind::Posted,
        Ok(v1::TransactionKind::Reversed) => ev::TransactionKind::Reversed,
        Ok(v1::TransactionKind::Refunded) => ev::TransactionKind::Refunded,
        Ok(v1::TransactionKind::Unspecified) => return Err(missing("kind")),
        Err(_) => return Err(invalid("kind", "unknown transaction kind")),
    };
    let category = match v1::TransactionCategory::try_from(t.category) {
        Ok(v1::TransactionCategory::Purchase) | Ok(v1::TransactionCategory::Unspecified) => {
            ev::TransactionCategory::Purchase
        }
        Ok(v1::TransactionCategory::CashAdvance) => ev::TransactionCategory::CashAdvance,
        Ok(v1::TransactionCategory::Fee) => ev::TransactionCategory::Fee,
        Ok(v1::TransactionCategory::Interest) => ev::TransactionCategory::Interest,
        Ok(v1::TransactionCategory::Payment) => ev::TransactionCategory::Payment,
        Ok(v1::TransactionCategory::Adjustment) => ev::TransactionCategory::Adjustment,
        Err(_) => return Err(invalid("category", "unknown category")),
    };
    let card = t.card.as_ref().ok_or_else(|| missing("card"))?;
    let last4 = optional_text(&card.last4);
    if let Some(l4) = &last4
        && (l4.len() > 4 || !l4.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid("card.last4", "at most the last four digits of the card number, digits only"));
    }
    let holder = match v1::CardHolder::try_from(card.holder) {
        Ok(v1::CardHolder::Principal) | Ok(v1::CardHolder::Unspecified) => ev::CardHolder::Principal,
        Ok(v1::CardHolder::Family) => ev::CardHolder::Family,
        Err(_) => return Err(invalid("card.holder", "unknown card holder type")),
    };

    let amount = money("amount", t.amount.as_ref())?;
    let posted_date = optional_date("posted_date", &t.posted_date)?;
    let original_transaction_id = optional_id("original_transaction_id", &t.original_transaction_id)?;
    let issuer_transaction_id = required_id("issuer_transaction_id", &t.issuer_transaction_id)?;
    match kind {
        ev::TransactionKind::Authorized if posted_date.is_some() => {
            return Err(Rejection::new(
                R::InvalidKindTransition,
                "posted_date",
                "an AUTHORIZED transaction is not posted yet",
            ));
        }
        ev::TransactionKind::Posted if posted_date.is_none() => {
            return Err(Rejection::new(
                R::InvalidKindTransition,
                "posted_date",
                "a POSTED transaction needs its posted date",
            ));
        }
        ev::TransactionKind::Refunded => {
            if original_transaction_id.is_none() {
                return Err(Rejection::new(
                    R::InvalidKindTransition,
                    "original_transaction_id",
                    "a REFUNDED transaction must name the transaction it refunds",
                ));
            }
            if amount.minor_units > 0 {
                return Err(Rejection::new(
                    R::InvalidAmount,
                    "amount.minor_units",
                    "a refund is a credit: its amount is zero or negative",
                ));
            }
        }
        _ => {}
    }
    if original_transaction_id.as_deref() == Some(issuer_transaction_id.as_str())
        && kind == ev::TransactionKind::Refunded
    {
        return Err(Rejection::new(
            R::InvalidKindTransition,
            "original_transaction_id",
            "a refund cannot refund itself",
        ));
    }

    let payment = payment_plan(t.payment.as_ref())?;
    let foreign = t.foreign.as_ref().map(foreign_amount).transpose()?;
    if let Some(f) = &foreign
        && f.amount.currency == amount.currency
    {
        return Err(invalid("foreign.amount.currency", "the foreign amount is in the billing currency"));
    }

    Ok(ev::CardTransaction {
        event_id: event_id(&t.event_id)?,
        issuer_id: record_issuer(issuer_id, &t.issuer_id)?,
        account_ref: required_id("account_ref", &t.account_ref)?,
        card: ev::CardRef { last4, holder },
        kind,
        category,
        issuer_transaction_id,
        original_transaction_id,
        occurred_at: instant("occurred_at", t.occurred_at.as_ref())?,
        local_date: date("local_date", &t.local_date)?,
        posted_date,
        amount,
        foreign,
        merchant: t.merchant.as_ref().map(merchant).transpose()?,
        payment,
        billing_month: optional_month("billing_month", &t.billing_month)?,
        channel: match v1::Channel::try_from(t.channel) {
            Ok(v1::Channel::InStore) => ev::Channel::InStore,
            Ok(v1::Channel::Contactless) => ev::Channel::Contactless,
            Ok(v1::Channel::Online) => ev::Channel::Online,
            Ok(v1::Channel::Recurring) => ev::Channel::Recurring,
            Ok(v1::Channel::Atm) => ev::Channel::Atm,
            Ok(v1::Channel::Unspecified) => ev::Channel::Unknown,
            Err(_) => return Err(invalid("channel", "unknown channel")),
        },
        instrument: match v1::InstrumentType::try_from(t.instrument) {
            Ok(v1::InstrumentType::Credit) => ev::InstrumentType::Credit,
            Ok(v1::InstrumentType::Debit) => ev::InstrumentType::Debit,
            Ok(v1::InstrumentType::Prepaid) => ev::InstrumentType::Prepaid,
            Ok(v1::InstrumentType::CodePayment) => ev::InstrumentType::CodePayment,
            Ok(v1::InstrumentType::Unspecified) => ev::InstrumentType::Unknown,
            Err(_) => return Err(invalid("instrument", "unknown instrument type")),
        },
        points_earned: t.points_earned,
    })
}

fn statement(issuer_id: &str, s: &v1::Statement) -> Result<ev::Statement> {
    let status = match v1::StatementStatus::try_from(s.status) {
        Ok(v1::StatementStatus::Provisional) => ev::StatementStatus::Provisional,
        Ok(v1::StatementStatus::Confirmed) => ev::StatementStatus::Confirmed,
        Ok(v1::StatementStatus::Unspecified) => return Err(missing("status")),
        Err(_) => return Err(invalid("status", "unknown statement status")),
    };
    let period_start = date("period_start", &s.period_start)?;
    let closing_date = date("closing_date", &s.closing_date)?;
    let due_date = date("due_date", &s.due_date)?;
    if period_start > closing_date {
        return Err(Rejection::new(R::InvalidDate, "period_start", "the period starts after its closing date"));
    }
    if due_date < closing_date {
        return Err(Rejection::new(R::InvalidDate, "due_date", "the payment date is before the closing date"));
    }
    let total = money("total", s.total.as_ref())?;
    let mut breakdown = Vec::with_capacity(s.breakdown.len());
    for b in &s.breakdown {
        breakdown.push(ev::MethodAmount {
            method: method("breakdown.method", b.method)?,
            amount: same_currency("breakdown.amount", money("breakdown.amount", b.amount.as_ref())?, &total)?,
        });
    }
    let mut charges = Vec::with_capacity(s.charges.len());
    for c in &s.charges {
        let kind = match v1::ChargeKind::try_from(c.kind) {
            Ok(v1::ChargeKind::AnnualFee) => ev::ChargeKind::AnnualFee,
            Ok(v1::ChargeKind::Insurance) => ev::ChargeKind::Insurance,
            Ok(v1::ChargeKind::AtmFee) => ev::ChargeKind::AtmFee,
            Ok(v1::ChargeKind::CashAdvance) => ev::ChargeKind::CashAdvance,
            Ok(v1::ChargeKind::Interest) => ev::ChargeKind::Interest,
            Ok(v1::ChargeKind::LateFee) => ev::ChargeKind::LateFee,
            Ok(v1::ChargeKind::Other) | Ok(v1::ChargeKind::Unspecified) => ev::ChargeKind::Other,
            Err(_) => return Err(invalid("charges.kind", "unknown charge kind")),
        };
        charges.push(ev::Charge {
            kind,
            amount: same_currency("charges.amount", money("charges.amount", c.amount.as_ref())?, &total)?,
        });
    }
    let parts: i64 =
        breakdown.iter().map(|b| b.amount.minor_units).chain(charges.iter().map(|c| c.amount.minor_units)).sum();
    if !(breakdown.is_empty() && charges.is_empty()) && parts != total.minor_units {
        return Err(Rejection::new(R::InvalidAmount, "total", "the breakdown and charges do not add up to the total"));
    }
    Ok(ev::Statement {
        event_id: event_id(&s.event_id)?,
        statement_id: required_id("statement_id", &s.statement_id)?,
        issuer_id: record_issuer(issuer_id, &s.issuer_id)?,
        account_ref: required_id("account_ref", &s.account_ref)?,
        status,
        billing_month: optional_month("billing_month", &s.billing_month)?.ok_or_else(|| missing("billing_month"))?,
        period_start,
        closing_date,
        due_date,
        total,
        breakdown,
        charges,
        revolving_balance: s.revolving_balance.as_ref().map(|m| money("revolving_balance", Some(m))).transpose()?,
        minimum_payment: s.minimum_payment.as_ref().map(|m| money("minimum_payment", Some(m))).transpose()?,
        points_balance: s.points_balance,
    })
}

fn payment_plan(p: Option<&v1::PaymentPlan>) -> Result<ev::PaymentPlan> {
    let Some(p) = p else { return Ok(ev::PaymentPlan::lump_sum()) };
    let method = method("payment.method", p.method)?;
    if method.has_installments() {
        match p.installment_count {
            Some(n) if (2..=MAX_INSTALLMENTS).contains(&n) => {}
            Some(_) => {
                return Err(Rejection::new(
                    R::InstallmentsMismatch,
                    "payment.installment_count",
                    format!("an installment plan has 2 to {MAX_INSTALLMENTS} payments"),
                ));
            }
            None => {
                return Err(Rejection::new(
                    R::InstallmentsMismatch,
                    "payment.installment_count",
                    "an installment plan needs its number of payments",
                ));
            }
        }
    } else if p.installment_count.is_some_and(|n| n != 1) {
        return Err(Rejection::new(
            R::InstallmentsMismatch,
            "payment.installment_count",
            "only 分割 and ボーナス分割 plans have several payments",
        ));
    }
    if let (Some(number), Some(count)) = (p.installment_number, p.installment_count)
        && !(1..=count).contains(&number)
    {
        return Err(Rejection::new(
            R::InstallmentsMismatch,
            "payment.installment_number",
            "the installment number is not within the plan",
        ));
    }
    Ok(ev::PaymentPlan {
        method,
        installment_count: if method.has_installments() { p.installment_count } else { None },
        installment_number: p.installment_number,
        installment_fee: p.installment_fee.as_ref().map(|m| money("payment.installment_fee", Some(m))).transpose()?,
    })
}

fn method(field: &'static str, value: i32) -> Result<ev::PaymentMethod> {
    Ok(match v1::PaymentMethod::try_from(value) {
        Ok(v1::PaymentMethod::LumpSum) | Ok(v1::PaymentMethod::Unspecified) => ev::PaymentMethod::LumpSum,
        Ok(v1::PaymentMethod::TwoPayments) => ev::PaymentMethod::TwoPayments,
        Ok(v1::PaymentMethod::Installments) => ev::PaymentMethod::Installments,
        Ok(v1::PaymentMethod::Revolving) => ev::PaymentMethod::Revolving,
        Ok(v1::PaymentMethod::BonusLumpSum) => ev::PaymentMethod::BonusLumpSum,
        Ok(v1::PaymentMethod::BonusInstallments) => ev::PaymentMethod::BonusInstallments,
        Err(_) => return Err(invalid(field, "unknown payment method")),
    })
}

fn foreign_amount(f: &v1::ForeignAmount) -> Result<ev::ForeignAmount> {
    let rate = f.fx_rate.trim();
    let decimal_ok = !rate.is_empty()
        && rate.len() <= 32
        && rate.bytes().filter(|b| *b == b'.').count() <= 1
        && rate.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !rate.starts_with('.')
        && !rate.ends_with('.')
        && rate.bytes().any(|b| (b'1'..=b'9').contains(&b));
    if !decimal_ok {
        return Err(invalid("foreign.fx_rate", "a positive decimal such as 151.235"));
    }
    Ok(ev::ForeignAmount {
        amount: money("foreign.amount", f.amount.as_ref())?,
        fx_rate: rate.to_owned(),
        fx_rate_date: optional_date("foreign.fx_rate_date", &f.fx_rate_date)?,
        overseas_fee: f.overseas_fee.as_ref().map(|m| money("foreign.overseas_fee", Some(m))).transpose()?,
    })
}

fn merchant(m: &v1::Merchant) -> Result<ev::Merchant> {
    let name = text("merchant.name_as_printed", &m.name_as_printed)?;
    if name.is_empty() {
        return Err(missing("merchant.name_as_printed"));
    }
    let mcc = optional_text(&m.mcc);
    if let Some(mcc) = &mcc
        && (mcc.len() != 4 || !mcc.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid("merchant.mcc", "an MCC is four digits"));
    }
    let country = optional_text(&m.country);
    if let Some(c) = &country
        && (c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Err(invalid("merchant.country", "an ISO 3166-1 alpha-2 code such as JP"));
    }
    Ok(ev::Merchant {
        name_as_printed: name,
        normalized_name: optional_text(&text("merchant.normalized_name", &m.normalized_name)?),
        mcc,
        industry_code: optional_id("merchant.industry_code", &m.industry_code)?,
        country,
    })
}

fn money(field: &'static str, m: Option<&v1::Money>) -> Result<ev::Money> {
    let m = m.ok_or_else(|| missing(field))?;
    if !is_iso4217(&m.currency) {
        return Err(Rejection::new(
            R::InvalidCurrency,
            format!("{field}.currency"),
            "not an ISO 4217 currency code (e.g. JPY, USD)",
        ));
    }
    if m.minor_units.unsigned_abs() > MAX_ABS_AMOUNT.unsigned_abs() {
        return Err(Rejection::new(R::InvalidAmount, format!("{field}.minor_units"), "amount out of range"));
    }
    Ok(ev::Money { minor_units: m.minor_units, currency: m.currency.clone() })
}

fn same_currency(field: &'static str, m: ev::Money, total: &ev::Money) -> Result<ev::Money> {
    if m.currency != total.currency {
        return Err(Rejection::new(
            R::InvalidCurrency,
            format!("{field}.currency"),
            "differs from the total's currency",
        ));
    }
    Ok(m)
}

fn event_id(text: &str) -> Result<ev::EventId> {
    if text.is_empty() {
        return Err(missing("event_id"));
    }
    Uuid::parse_str(text)
        .map(ev::EventId)
        .map_err(|_| invalid("event_id", "a UUID such as 6f1c0c1e-3b8e-4d8a-9a63-2f4c5b7e9d10"))
}

/// The record's issuer must be the caller's (an empty one means the caller's).
fn record_issuer(issuer_id: &str, field: &str) -> Result<String> {
    if field.is_empty() || field == issuer_id {
        Ok(issuer_id.to_owned())
    } else {
        Err(Rejection::new(
            R::IssuerMismatch,
            "issuer_id",
            "a record can only be published under the caller's own issuer id",
        ))
    }
}

fn required_id(field: &'static str, value: &str) -> Result<String> {
    optional_id(field, value)?.ok_or_else(|| missing(field))
}

fn optional_id(field: &'static str, value: &str) -> Result<Option<String>> {
    if value.chars().count() > MAX_ID_CHARS {
        return Err(Rejection::new(R::FieldTooLong, field, format!("at most {MAX_ID_CHARS} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "control characters are not allowed"));
    }
    Ok(optional_text(value))
}

fn text(field: &'static str, value: &str) -> Result<String> {
    if value.chars().count() > MAX_TEXT_CHARS {
        return Err(Rejection::new(R::FieldTooLong, field, format!("at most {MAX_TEXT_CHARS} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "control characters are not allowed"));
    }
    Ok(value.trim().to_owned())
}

fn optional_text(value: &str) -> Option<String> {
    let v = value.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

fn date(field: &'static str, value: &str) -> Result<NaiveDate> {
    optional_date(field, value)?.ok_or_else(|| missing(field))
}

fn optional_date(field: &'static str, value: &str) -> Result<Option<NaiveDate>> {
    if value.is_empty() {
        return Ok(None);
    }
    let d = iso_date(value)
        .or_else(|| NaiveDate::parse_from_str(value, "%Y-%m-%d").ok())
        .ok_or_else(|| Rejection::new(R::InvalidDate, field, "a date as YYYY-MM-DD"))?;
    if !YEARS.contains(&chrono::Datelike::year(&d)) {
        return Err(Rejection::new(R::InvalidDate, field, "year out of the accepted range 2000-2100"));
    }
    Ok(Some(d))
}

/// `YYYY-MM-DD` read directly: the shape nearly every record's dates have, several times faster
/// than chrono's format parser (which still reads whatever else it accepts).
fn iso_date(value: &str) -> Option<NaiveDate> {
    let b = value.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| {
        b.get(range)?.iter().try_fold(0u32, |n, c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    };
    NaiveDate::from_ymd_opt(i32::try_from(number(0..4)?).ok()?, number(5..7)?, number(8..10)?)
}

fn optional_month(field: &'static str, value: &str) -> Result<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    optional_date(field, &format!("{value}-01"))
        .map_err(|_| Rejection::new(R::InvalidDate, field, "a month as YYYY-MM"))?;
    if value.len() != 7 {
        return Err(Rejection::new(R::InvalidDate, field, "a month as YYYY-MM"));
    }
    Ok(Some(value.to_owned()))
}

fn instant(field: &'static str, value: Option<&prost_types::Timestamp>) -> Result<DateTime<Utc>> {
    let ts = value.ok_or_else(|| missing(field))?;
    let nanos = u32::try_from(ts.nanos).map_err(|_| Rejection::new(R::InvalidDate, field, "negative nanoseconds"))?;
    let t = DateTime::from_timestamp(ts.seconds, nanos)
        .ok_or_else(|| Rejection::new(R::InvalidDate, field, "instant out of range"))?;
    if !YEARS.contains(&chrono::Datelike::year(&t)) {
        return Err(Rejection::new(R::InvalidDate, field, "year out of the accepted range 2000-2100"));
    }
    Ok(t)
}

fn missing(field: &'static str) -> Rejection {
    Rejection::new(R::MissingField, field, "required")
}

fn invalid(field: &'static str, message: &'static str) -> Rejection {
    Rejection::new(R::InvalidField, field, message)
}

#[cfg(test)]
mod tests;
