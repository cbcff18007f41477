//! The domain events cardlink carries: card transactions and statements.
//!
//! These types are defined once and converted at the edges: to Avro on the bus (see
//! [`crate::codec`]) and to protobuf on gRPC (in the services). Field names and enum symbols
//! match `schemas/*/v*.avsc` exactly, because the Avro encoding goes through serde.
//!
//! Money is always an integer in minor units with its ISO 4217 currency; a decimal that has no
//! integer form (an FX rate) is a decimal string. Nothing here is a float.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An event's unique id. Serialised as the hyphenated text form, which is what Avro's `uuid`
/// logical type on a `string` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// A deterministic id derived from `name` within the issuer's namespace, so that re-sending the
    /// same source record always yields the same id (and the bus can de-duplicate it).
    pub fn derived(issuer_id: &str, name: &str) -> Self {
        let namespace = Uuid::new_v5(&CARDLINK_NAMESPACE, issuer_id.as_bytes());
        Self(Uuid::new_v5(&namespace, name.as_bytes()))
    }
}

/// Root namespace for name-based (v5) event ids. Fixed forever: changing it changes every
/// derived id and so defeats de-duplication of re-sent files.
const CARDLINK_NAMESPACE: Uuid = Uuid::from_u128(0x6361_7264_6c69_6e6b_8000_0000_0000_0001);

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Uuid::encode_buffer();
        s.serialize_str(self.0.hyphenated().encode_lower(&mut buf))
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Uuid::parse_str(&text).map(EventId).map_err(serde::de::Error::custom)
    }
}

/// An amount of money: integer minor units of an ISO 4217 currency.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub minor_units: i64,
    pub currency: String,
}

impl Money {
    pub fn jpy(yen: i64) -> Self {
        Self { minor_units: yen, currency: "JPY".to_owned() }
    }
}

/// Whose card of the account was used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CardHolder {
    /// 本会員
    Principal,
    /// 家族カード / 家族会員
    Family,
}

/// A card of the account, never by its number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CardRef {
    /// At most the last four digits.
    pub last4: Option<String>,
    pub holder: CardHolder,
}

/// The lifecycle state a transaction event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TransactionKind {
    /// 未確定: authorised, not yet posted; may still change or disappear.
    Authorized,
    /// 確定: posted by the issuer.
    Posted,
    /// 取消: an authorisation or posting was cancelled.
    Reversed,
    /// 返品: a refund of `original_transaction_id`.
    Refunded,
}

/// What the money was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TransactionCategory {
    /// ショッピング
    Purchase,
    /// キャッシング
    CashAdvance,
    Fee,
    Interest,
    Payment,
    Adjustment,
    /// What a reader sees for a category added after it was built.
    Unknown,
}

/// How the member pays it back (支払区分).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentMethod {
    /// 1回払い (一括)
    LumpSum,
    /// 2回払い
    TwoPayments,
    /// 分割
    Installments,
    /// リボ
    Revolving,
    /// ボーナス一括
    BonusLumpSum,
    /// ボーナス分割
    BonusInstallments,
}

impl PaymentMethod {
    /// Whether the plan is paid over several statements and so has an installment count.
    pub fn has_installments(self) -> bool {
        matches!(self, Self::Installments | Self::BonusInstallments)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PaymentPlan {
    pub method: PaymentMethod,
    /// 支払回数, for installment plans.
    pub installment_count: Option<i32>,
    /// 何回目, where the issuer reports it.
    pub installment_number: Option<i32>,
    /// 分割手数料 for the whole plan.
    pub installment_fee: Option<Money>,
}

impl PaymentPlan {
    pub fn lump_sum() -> Self {
        Self {
            method: PaymentMethod::LumpSum,
            installment_count: None,
            installment_number: None,
            installment_fee: None,
        }
    }
}

/// How the card was presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Channel {
    InStore,
    Contactless,
    Online,
    Recurring,
    Atm,
    Unknown,
}

/// The payment instrument (the 2019 cashless guideline covers more than credit cards).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstrumentType {
    Credit,
    Debit,
    Prepaid,
    CodePayment,
    Unknown,
}

/// The original amount of a use in another currency and how it was converted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ForeignAmount {
    pub amount: Money,
    /// Billing-currency units per foreign unit, as a decimal string.
    pub fx_rate: String,
    #[serde(with = "avro_date_opt")]
    pub fx_rate_date: Option<NaiveDate>,
    pub overseas_fee: Option<Money>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Merchant {
    /// 利用店名 as the issuer received it.
    pub name_as_printed: String,
    pub normalized_name: Option<String>,
    /// ISO 18245 MCC, 4 digits.
    pub mcc: Option<String>,
    /// The issuer's 業種コード.
    pub industry_code: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country: Option<String>,
}

/// One card transaction event (利用明細).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CardTransaction {
    pub event_id: EventId,
    pub issuer_id: String,
    /// The issuer's opaque account id; never a card number.
    pub account_ref: String,
    pub card: CardRef,
    pub kind: TransactionKind,
    pub category: TransactionCategory,
    /// Stable from AUTHORIZED to POSTED.
    pub issuer_transaction_id: String,
    /// For refunds and reversals: the transaction undone.
    pub original_transaction_id: Option<String>,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub occurred_at: DateTime<Utc>,
    /// 利用日 in Asia/Tokyo.
    #[serde(with = "avro_date")]
    pub local_date: NaiveDate,
    /// 売上計上日
    #[serde(with = "avro_date_opt")]
    pub posted_date: Option<NaiveDate>,
    /// Positive: a charge to the member; negative: a credit.
    pub amount: Money,
    pub foreign: Option<ForeignAmount>,
    pub merchant: Option<Merchant>,
    pub payment: PaymentPlan,
    /// YYYY-MM
    pub billing_month: Option<String>,
    pub channel: Channel,
    pub instrument: InstrumentType,
    pub points_earned: Option<i64>,
}

/// 確定前 / 確定後
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StatementStatus {
    Provisional,
    Confirmed,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MethodAmount {
    pub method: PaymentMethod,
    pub amount: Money,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChargeKind {
    /// 年会費
    AnnualFee,
    Insurance,
    AtmFee,
    /// キャッシング repayment
    CashAdvance,
    Interest,
    LateFee,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Charge {
    pub kind: ChargeKind,
    pub amount: Money,
}

/// A monthly statement (請求).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Statement {
    pub event_id: EventId,
    pub statement_id: String,
    pub issuer_id: String,
    pub account_ref: String,
    pub status: StatementStatus,
    /// YYYY-MM
    pub billing_month: String,
    #[serde(with = "avro_date")]
    pub period_start: NaiveDate,
    /// 締め日
    #[serde(with = "avro_date")]
    pub closing_date: NaiveDate,
    /// 支払日
    #[serde(with = "avro_date")]
    pub due_date: NaiveDate,
    pub total: Money,
    pub breakdown: Vec<MethodAmount>,
    pub charges: Vec<Charge>,
    pub revolving_balance: Option<Money>,
    pub minimum_payment: Option<Money>,
    pub points_balance: Option<i64>,
}

/// Avro's `date` logical type: days since 1970-01-01 as an `int`.
mod avro_date {
    use chrono::NaiveDate;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn to_days(date: &NaiveDate) -> i32 {
        date.to_epoch_days()
    }

    pub(super) fn from_days<E: serde::de::Error>(days: i32) -> Result<NaiveDate, E> {
        NaiveDate::from_epoch_days(days)
            .ok_or_else(|| E::custom(format!("date out of range: {days} days from 1970-01-01")))
    }

    pub fn serialize<S: Serializer>(date: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(to_days(date))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
        from_days(i32::deserialize(d)?)
    }
}

/// `["null", {"type": "int", "logicalType": "date"}]`
mod avro_date_opt {
    use chrono::NaiveDate;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(date: &Option<NaiveDate>, s: S) -> Result<S::Ok, S::Error> {
        match date {
            Some(date) => s.serialize_some(&super::avro_date::to_days(date)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
        Option::<i32>::deserialize(d)?.map(super::avro_date::from_days).transpose()
    }
}

/// Who acted, in an audit event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActorType {
    Issuer,
    Aggregator,
    Member,
    Operator,
    System,
    Anonymous,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuditOutcome {
    Allowed,
    Denied,
    Succeeded,
    Failed,
}

/// One decision or change, for the audit topic (APPI record of provision to third parties).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub event_id: EventId,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub occurred_at: DateTime<Utc>,
    pub actor_type: ActorType,
    pub actor_id: String,
    pub action: String,
    pub resource: String,
    pub outcome: AuditOutcome,
    pub reason: Option<String>,
    pub issuer_id: Option<String>,
    pub aggregator_id: Option<String>,
    pub member_ref: Option<String>,
    pub consent_id: Option<String>,
    pub data_items: Vec<String>,
    pub trace_id: Option<String>,
    /// How many times this happened (a tally over `period_start..occurred_at`); 1 otherwise.
    /// Records written with schema v1 read as 1.
    #[serde(default = "one")]
    pub count: i64,
    #[serde(default, with = "chrono::serde::ts_microseconds_option")]
    pub period_start: Option<DateTime<Utc>>,
}

fn one() -> i64 {
    1
}

impl AuditEvent {
    /// An event stamped now, with a fresh id and no optional details.
    pub fn now(actor_type: ActorType, actor_id: &str, action: &str, resource: &str, outcome: AuditOutcome) -> Self {
        Self {
            event_id: EventId::random(),
            occurred_at: Utc::now(),
            actor_type,
            actor_id: actor_id.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            outcome,
            reason: None,
            issuer_id: None,
            aggregator_id: None,
            member_ref: None,
            consent_id: None,
            data_items: Vec::new(),
            trace_id: None,
            count: 1,
            period_start: None,
        }
    }

    /// The Kafka key: the issuer's, so one issuer's audit trail stays in order.
    pub fn partition_key(&self) -> &str {
        self.issuer_id.as_deref().unwrap_or(&self.actor_id)
    }
}

/// A named position an aggregator acknowledged (subscription service).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionPosition {
    pub aggregator_id: String,
    pub name: String,
    pub cursor: String,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub acknowledged_at: DateTime<Utc>,
}
