//! Domain types (`cardlink-events`) to their protobuf messages, and back where a message from
//! outside names a domain value (scopes).
//!
//! Domain → protobuf cannot fail. Protobuf → domain for whole events is validation with per-field
//! reasons and lives with the ingest service; the few small conversions every service shares
//! ([`scopes`]) are here, so that no service reaches into another for them.

use cardlink_events as ev;
use cardlink_events::consent::{ConsentEvent, ConsentStatus};
use cardlink_events::registry::Scope;
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
    let ev::Merchant { name_as_printed, normalized_name, mcc, industry_code, country } = m;
    v1::Merchant {
        name_as_printed: name_as_printed.clone(),
        normalized_name: normalized_name.clone().unwrap_or_default(),
        mcc: mcc.clone().unwrap_or_default(),
        industry_code: industry_code.clone().unwrap_or_default(),
        country: country.clone().unwrap_or_default(),
    }
}

/// A transaction as its message. The domain type is taken apart field by field (no `..`), so a
/// field added to it does not compile here until the message carries it too
/// (`docs/contributing.md`).
pub fn transaction(t: &ev::CardTransaction) -> v1::CardTransaction {
    let ev::CardTransaction {
        event_id,
        issuer_id,
        account_ref,
        card: ev::CardRef { last4, holder: card_holder },
        kind: transaction_kind,
        category: transaction_category,
        issuer_transaction_id,
        original_transaction_id,
        occurred_at,
        local_date,
        posted_date,
        amount,
        foreign,
        merchant: transaction_merchant,
        payment: ev::PaymentPlan { method, installment_count, installment_number, installment_fee },
        billing_month,
        channel: transaction_channel,
        instrument: transaction_instrument,
        points_earned,
    } = t;
    v1::CardTransaction {
        event_id: event_id.to_string(),
        issuer_id: issuer_id.clone(),
        account_ref: account_ref.clone(),
        card: Some(v1::CardRef { last4: last4.clone().unwrap_or_default(), holder: holder(*card_holder) as i32 }),
        kind: kind(*transaction_kind) as i32,
        category: category(*transaction_category) as i32,
        issuer_transaction_id: issuer_transaction_id.clone(),
        original_transaction_id: original_transaction_id.clone().unwrap_or_default(),
        occurred_at: Some(timestamp(*occurred_at)),
        local_date: date(*local_date),
        posted_date: opt_date(*posted_date),
        amount: Some(money(amount)),
        foreign: foreign.as_ref().map(|ev::ForeignAmount { amount, fx_rate, fx_rate_date, overseas_fee }| {
            v1::ForeignAmount {
                amount: Some(money(amount)),
                fx_rate: fx_rate.clone(),
                fx_rate_date: opt_date(*fx_rate_date),
                overseas_fee: overseas_fee.as_ref().map(money),
            }
        }),
        merchant: transaction_merchant.as_ref().map(merchant),
        payment: Some(v1::PaymentPlan {
            method: payment_method(*method) as i32,
            installment_count: *installment_count,
            installment_number: *installment_number,
            installment_fee: installment_fee.as_ref().map(money),
        }),
        billing_month: billing_month.clone().unwrap_or_default(),
        channel: channel(*transaction_channel) as i32,
        instrument: instrument(*transaction_instrument) as i32,
        points_earned: *points_earned,
    }
}

/// A statement as its message (taken apart field by field, as [`transaction`]).
pub fn statement(s: &ev::Statement) -> v1::Statement {
    let ev::Statement {
        event_id,
        statement_id,
        issuer_id,
        account_ref,
        status,
        billing_month,
        period_start,
        closing_date,
        due_date,
        total,
        breakdown,
        charges,
        revolving_balance,
        minimum_payment,
        points_balance,
    } = s;
    v1::Statement {
        event_id: event_id.to_string(),
        statement_id: statement_id.clone(),
        issuer_id: issuer_id.clone(),
        account_ref: account_ref.clone(),
        status: statement_status(*status) as i32,
        billing_month: billing_month.clone(),
        period_start: date(*period_start),
        closing_date: date(*closing_date),
        due_date: date(*due_date),
        total: Some(money(total)),
        breakdown: breakdown
            .iter()
            .map(|b| v1::MethodAmount { method: payment_method(b.method) as i32, amount: Some(money(&b.amount)) })
            .collect(),
        charges: charges
            .iter()
            .map(|c| v1::Charge { kind: charge_kind(c.kind) as i32, amount: Some(money(&c.amount)) })
            .collect(),
        revolving_balance: revolving_balance.as_ref().map(money),
        minimum_payment: minimum_payment.as_ref().map(money),
        points_balance: *points_balance,
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

pub fn scope(s: Scope) -> v1::Scope {
    match s {
        Scope::Transactions => v1::Scope::Transactions,
        Scope::MerchantDetail => v1::Scope::MerchantDetail,
        Scope::Statements => v1::Scope::Statements,
    }
}

/// A scope value in a request that is not one of cardlink's scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("scope {0} is not TRANSACTIONS, MERCHANT_DETAIL or STATEMENTS")]
pub struct UnknownScope(pub i32);

impl crate::ApiError for UnknownScope {
    fn reason(&self) -> crate::Reason {
        crate::Reason::InvalidScopes
    }
}

/// The scopes a request names. An unknown or unspecified value is refused rather than dropped,
/// which would quietly change what the caller asked for.
pub fn scopes(values: &[i32]) -> Result<Vec<Scope>, UnknownScope> {
    values
        .iter()
        .map(|&v| match v1::Scope::try_from(v) {
            Ok(v1::Scope::Transactions) => Ok(Scope::Transactions),
            Ok(v1::Scope::MerchantDetail) => Ok(Scope::MerchantDetail),
            Ok(v1::Scope::Statements) => Ok(Scope::Statements),
            _ => Err(UnknownScope(v)),
        })
        .collect()
}

pub fn consent_status(s: ConsentStatus) -> v1::ConsentStatus {
    match s {
        ConsentStatus::Requested => v1::ConsentStatus::Requested,
        ConsentStatus::Active => v1::ConsentStatus::Active,
        ConsentStatus::Denied => v1::ConsentStatus::Denied,
        ConsentStatus::Revoked => v1::ConsentStatus::Revoked,
        ConsentStatus::Expired => v1::ConsentStatus::Expired,
    }
}

/// A consent as a protobuf message, each account id as `account_ref` gives it: the issuer's own
/// (issuers, members) or the aggregator's pseudonym (aggregators; see `cardlink_auth`).
pub fn consent(c: &ConsentEvent, account_ref: impl Fn(&str) -> String) -> v1::Consent {
    v1::Consent {
        consent_id: c.consent_id.clone(),
        issuer_id: c.issuer_id.clone(),
        aggregator_id: c.aggregator_id.clone(),
        scopes: c.scopes.iter().map(|s| scope(*s) as i32).collect(),
        account_refs: c.account_refs.iter().map(|a| account_ref(a)).collect(),
        status: consent_status(c.status) as i32,
        purpose: c.purpose.clone(),
        granted_at: c.granted_at.map(timestamp),
        expires_at: c.expires_at.map(timestamp),
        revoked_at: c.ended_at.filter(|_| c.status == ConsentStatus::Revoked).map(timestamp),
        data_from: c.data_from().map(timestamp),
        history_days: u32::try_from(c.history_days).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_and_unknown_ones_are_refused() {
        let all = [Scope::Transactions, Scope::MerchantDetail, Scope::Statements];
        let wire: Vec<i32> = all.iter().map(|s| scope(*s) as i32).collect();
        assert_eq!(scopes(&wire), Ok(all.to_vec()));
        assert_eq!(scopes(&[v1::Scope::Unspecified as i32]), Err(UnknownScope(0)));
        assert_eq!(scopes(&[99]), Err(UnknownScope(99)));
    }
}
