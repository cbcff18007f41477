//! Domain events (`cardlink-events`) to their protobuf messages.
//!
//! This direction cannot fail. The other direction, protobuf from outside to domain, is
//! validation with per-field reason codes and lives with the ingest service.

use cardlink_events as ev;
use chrono::{DateTime, NaiveDate, Utc};

use crate::v1;

pub fn date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn opt_date(d: Option<NaiveDate>) -> String {
    d.map(date).unwrap_or_default()
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    // timestamp_subsec_nanos is < 2e9 (leap seconds), always within i32.
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos().min(999_999_999) as i32 }
}

pub fn money(m: &ev::Money) -> v1::Money {
    v1::Money { minor_units: m.minor_units, currency: m.currency.clone() }
}

pub fn kind(k: ev::TransactionKind) -> v1::TransactionKind {
    match k {
        ev::TransactionKind::Authorized => v1::TransactionKind::Authorized,
        ev::TransactionKind::Posted => v1::TransactionKind::Posted,
        ev::TransactionKind::Reversed => v1::TransactionKind::Reversed,
        ev::TransactionKind::Refunded => v1::TransactionKind::Refunded,
    }
}

pub fn category(c: ev::TransactionCategory) -> v1::TransactionCategory {
    use ev::TransactionCategory as C;
    match c {
        C::Purchase => v1::TransactionCategory::Purchase,
        C::CashAdvance => v1::TransactionCategory::CashAdvance,
        C::Fee => v1::TransactionCategory::Fee,
        C::Interest => v1::TransactionCategory::Interest,
        C::Payment => v1::TransactionCategory::Payment,
        C::Adjustment => v1::TransactionCategory::Adjustment,
        C::Unknown => v1::TransactionCategory::Unspecified,
    }
}

pub fn payment_method(m: ev::PaymentMethod) -> v1::PaymentMethod {
    use ev::PaymentMethod as M;
    match m {
        M::LumpSum => v1::PaymentMethod::LumpSum,
        M::TwoPayments => v1::PaymentMethod::TwoPayments,
        M::Installments => v1::PaymentMethod::Installments,
        M::Revolving => v1::PaymentMethod::Revolving,
        M::BonusLumpSum => v1::PaymentMethod::BonusLumpSum,
        M::BonusInstallments => v1::PaymentMethod::BonusInstallments,
    }
}

pub fn channel(c: ev::Channel) -> v1::Channel {
    use ev::Channel as C;
    match c {
        C::InStore => v1::Channel::InStore,
        C::Contactless => v1::Channel::Contactless,
        C::Online => v1::Channel::Online,
        C::Recurring => v1::Channel::Recurring,
        C::Atm => v1::Channel::Atm,
        C::Unknown => v1::Channel::Unspecified,
    }
}

pub fn instrument(i: ev::InstrumentType) -> v1::InstrumentType {
    use ev::InstrumentType as I;
    match i {
        I::Credit => v1::InstrumentType::Credit,
        I::Debit => v1::InstrumentType::Debit,
        I::Prepaid => v1::InstrumentType::Prepaid,
        I::CodePayment => v1::InstrumentType::CodePayment,
        I::Unknown => v1::InstrumentType::Unspecified,
    }
}

pub fn holder(h: ev::CardHolder) -> v1::CardHolder {
    match h {
        ev::CardHolder::Principal => v1::CardHolder::Principal,
        ev::CardHolder::Family => v1::CardHolder::Family,
    }
}

pub fn statement_status(s: ev::StatementStatus) -> v1::StatementStatus {
    match s {
        ev::StatementStatus::Provisional => v1::StatementStatus::Provisional,
        ev::StatementStatus::Confirmed => v1::StatementStatus::Confirmed,
    }
}

pub fn charge_kind(k: ev::ChargeKind) -> v1::ChargeKind {
    use ev::ChargeKind as K;
    match k {
        K::AnnualFee => v1::ChargeKind::AnnualFee,
        K::Insurance => v1::ChargeKind::Insurance,
        K::AtmFee => v1::ChargeKind::AtmFee,
        K::CashAdvance => v1::ChargeKind::CashAdvance,
        K::Interest => v1::ChargeKind::Interest,
        K::LateFee => v1::ChargeKind::LateFee,
        K::Other => v1::ChargeKind::Other,
    }
}

pub fn merchant(m: &ev::Merchant) -> v1::Merchant {
    v1::Merchant {
        name_as_printed: m.name_as_printed.clone(),
        normalized_name: m.normalized_name.clone().unwrap_or_default(),
        mcc: m.mcc.clone().unwrap_or_default(),
        industry_code: m.industry_code.clone().unwrap_or_default(),
        country: m.country.clone().unwrap_or_default(),
    }
}

pub fn transaction(t: &ev::CardTransaction) -> v1::CardTransaction {
    v1::CardTransaction {
        event_id: t.event_id.to_string(),
        issuer_id: t.issuer_id.clone(),
        account_ref: t.account_ref.clone(),
        card: Some(v1::CardRef {
            last4: t.card.last4.clone().unwrap_or_default(),
            holder: holder(t.card.holder) as i32,
        }),
        kind: kind(t.kind) as i32,
        category: category(t.category) as i32,
        issuer_transaction_id: t.issuer_transaction_id.clone(),
        original_transaction_id: t.original_transaction_id.clone().unwrap_or_default(),
        occurred_at: Some(timestamp(t.occurred_at)),
        local_date: date(t.local_date),
        posted_date: opt_date(t.posted_date),
        amount: Some(money(&t.amount)),
        foreign: t.foreign.as_ref().map(|f| v1::ForeignAmount {
            amount: Some(money(&f.amount)),
            fx_rate: f.fx_rate.clone(),
            fx_rate_date: opt_date(f.fx_rate_date),
            overseas_fee: f.overseas_fee.as_ref().map(money),
        }),
        merchant: t.merchant.as_ref().map(merchant),
        payment: Some(v1::PaymentPlan {
            method: payment_method(t.payment.method) as i32,
            installment_count: t.payment.installment_count,
            installment_number: t.payment.installment_number,
            installment_fee: t.payment.installment_fee.as_ref().map(money),
        }),
        billing_month: t.billing_month.clone().unwrap_or_default(),
        channel: channel(t.channel) as i32,
        instrument: instrument(t.instrument) as i32,
        points_earned: t.points_earned,
    }
}

pub fn statement(s: &ev::Statement) -> v1::Statement {
    v1::Statement {
        event_id: s.event_id.to_string(),
        statement_id: s.statement_id.clone(),
        issuer_id: s.issuer_id.clone(),
        account_ref: s.account_ref.clone(),
        status: statement_status(s.status) as i32,
        billing_month: s.billing_month.clone(),
        period_start: date(s.period_start),
        closing_date: date(s.closing_date),
        due_date: date(s.due_date),
        total: Some(money(&s.total)),
        breakdown: s
            .breakdown
            .iter()
            .map(|b| v1::MethodAmount { method: payment_method(b.method) as i32, amount: Some(money(&b.amount)) })
            .collect(),
        charges: s
            .charges
            .iter()
            .map(|c| v1::Charge { kind: charge_kind(c.kind) as i32, amount: Some(money(&c.amount)) })
            .collect(),
        revolving_balance: s.revolving_balance.as_ref().map(money),
        minimum_payment: s.minimum_payment.as_ref().map(money),
        points_balance: s.points_balance,
    }
}

/// An event as an ingest record.
pub fn ingest_record(e: &ev::Event) -> v1::IngestRecord {
    let event = match e {
        ev::Event::Transaction(t) => v1::ingest_record::Event::Transaction(transaction(t)),
        ev::Event::Statement(s) => v1::ingest_record::Event::Statement(statement(s)),
    };
    v1::IngestRecord { event: Some(event) }
}
