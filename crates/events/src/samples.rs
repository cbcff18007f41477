//! Small, valid, synthetic events for tests, examples and docs.
//!
//! They are realistic enough to exercise every field of the schemas, and carry no real card data:
//! account refs are opaque, and `last4` is the only part of a card number that ever appears.
//! The issuer simulator produces realistic volumes; these are for precise assertions.

use chrono::{NaiveDate, TimeZone, Utc};

use crate::model::*;

/// A posted コンビニ purchase in yen, paid in one lump sum. `n` varies the ids and amount.
pub fn transaction(issuer_id: &str, account_ref: &str, n: u32) -> CardTransaction {
    let occurred_at = Utc.with_ymd_and_hms(2026, 11, 20, 3, 15, 0).single().unwrap_or_default()
        + chrono::TimeDelta::seconds(i64::from(n));
    CardTransaction {
        event_id: EventId::derived(issuer_id, &format!("{account_ref}/tx-{n}/POSTED")),
        issuer_id: issuer_id.to_owned(),
        account_ref: account_ref.to_owned(),
        card: CardRef { last4: Some("0042".to_owned()), holder: CardHolder::Principal },
        kind: TransactionKind::Posted,
        category: TransactionCategory::Purchase,
        issuer_transaction_id: format!("tx-{n}"),
        original_transaction_id: None,
        occurred_at,
        local_date: date(2026, 11, 20),
        posted_date: Some(date(2026, 11, 22)),
        amount: Money::jpy(498 + i64::from(n)),
        foreign: None,
        merchant: Some(Merchant {
            name_as_printed: "ｾﾌﾞﾝｲﾚﾌﾞﾝ ｼﾌﾞﾔ".to_owned(),
            normalized_name: Some("セブン-イレブン 渋谷".to_owned()),
            mcc: Some("5499".to_owned()),
            industry_code: None,
            country: Some("JP".to_owned()),
        }),
        payment: PaymentPlan::lump_sum(),
        billing_month: Some("2026-12".to_owned()),
        channel: Channel::Contactless,
        instrument: InstrumentType::Credit,
        points_earned: Some(4),
    }
}

/// A 3-installment online purchase abroad in USD, with FX details, on a family card.
pub fn foreign_installment_transaction(issuer_id: &str, account_ref: &str) -> CardTransaction {
    let mut tx = transaction(issuer_id, account_ref, 7);
    tx.event_id = EventId::derived(issuer_id, &format!("{account_ref}/tx-usd/POSTED"));
    tx.issuer_transaction_id = "tx-usd".to_owned();
    tx.card = CardRef { last4: Some("1881".to_owned()), holder: CardHolder::Family };
    tx.amount = Money::jpy(30_512);
    tx.foreign = Some(ForeignAmount {
        amount: Money { minor_units: 19_999, currency: "USD".to_owned() },
        fx_rate: "150.12".to_owned(),
        fx_rate_date: Some(date(2026, 11, 21)),
        overseas_fee: Some(Money::jpy(489)),
    });
    tx.merchant = Some(Merchant {
        name_as_printed: "EXAMPLE STORE SEATTLE WA".to_owned(),
        normalized_name: Some("Example Store".to_owned()),
        mcc: Some("5732".to_owned()),
        industry_code: Some("E12".to_owned()),
        country: Some("US".to_owned()),
    });
    tx.payment = PaymentPlan {
        method: PaymentMethod::Installments,
        installment_count: Some(3),
        installment_number: Some(1),
        installment_fee: Some(Money::jpy(610)),
    };
    tx.channel = Channel::Online;
    tx
}

/// A confirmed (請求確定) November statement with lump-sum, revolving and an annual fee.
pub fn statement(issuer_id: &str, account_ref: &str) -> Statement {
    Statement {
        event_id: EventId::derived(issuer_id, &format!("{account_ref}/st-2026-12/CONFIRMED")),
        statement_id: format!("{account_ref}-2026-12"),
        issuer_id: issuer_id.to_owned(),
        account_ref: account_ref.to_owned(),
        status: StatementStatus::Confirmed,
        billing_month: "2026-12".to_owned(),
        period_start: date(2026, 10, 16),
        closing_date: date(2026, 11, 15),
        due_date: date(2026, 12, 10),
        total: Money::jpy(58_230),
        breakdown: vec![
            MethodAmount { method: PaymentMethod::LumpSum, amount: Money::jpy(42_100) },
            MethodAmount { method: PaymentMethod::Revolving, amount: Money::jpy(15_000) },
        ],
        charges: vec![Charge { kind: ChargeKind::AnnualFee, amount: Money::jpy(1_130) }],
        revolving_balance: Some(Money::jpy(120_000)),
        minimum_payment: Some(Money::jpy(15_000)),
        points_balance: Some(2_351),
    }
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
}

/// An active consent of `aggregator_id` to the given accounts and scopes at `issuer_id`,
/// granted at `granted_at` and running until `expires_at`.
pub fn active_consent(
    consent_id: &str,
    issuer_id: &str,
    aggregator_id: &str,
    accounts: &[&str],
    scopes: &[crate::registry::Scope],
    granted_at: chrono::DateTime<Utc>,
    expires_at: chrono::DateTime<Utc>,
) -> crate::consent::ConsentEvent {
    crate::consent::ConsentEvent {
        event_id: EventId::random(),
        occurred_at: granted_at,
        actor_type: ActorType::Member,
        actor_id: format!("{issuer_id}/m-001"),
        consent_id: consent_id.to_owned(),
        issuer_id: issuer_id.to_owned(),
        aggregator_id: aggregator_id.to_owned(),
        member_ref: Some("m-001".to_owned()),
        account_refs: accounts.iter().map(|a| (*a).to_owned()).collect(),
        requested_scopes: scopes.to_vec(),
        scopes: scopes.to_vec(),
        status: crate::consent::ConsentStatus::Active,
        purpose: "家計簿アプリでの支出管理".to_owned(),
        redirect_uri: "https://kakeibo.example/callback".to_owned(),
        state: None,
        // RFC 7636 appendix B's challenge; no verifier is needed for an already active consent.
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_owned(),
        duration_days: 365,
        history_days: 0,
        created_at: granted_at,
        granted_at: Some(granted_at),
        expires_at: Some(expires_at),
        ended_at: None,
        code_hash: None,
        code_expires_at: None,
        code_redeemed: true,
    }
}
