//! The mapping file (TOML): how one issuer's file layout maps to card transactions.
//!
//! ```toml
//! [format]
//! kind = "csv"            # or "fixed" (固定長)
//! encoding = "shift_jis"  # or "utf-8"; shift_jis means Windows-31J / CP932
//! header = true           # csv: the first line names the columns
//!
//! [fields]
//! account_ref = { column = "会員番号" }        # csv, by header name
//! amount      = { index = 6 }                  # csv, 1-based column
//! local_date  = { start = 9, length = 8 }      # fixed: 1-based byte positions
//! currency    = { value = "JPY" }              # a constant
//!
//! [values.payment_method]                      # the issuer's codes -> cardlink's
//! "1回" = "LUMP_SUM"
//! "分割" = "INSTALLMENTS"
//! ```
//!
//! Fixed-width positions count bytes in the file's encoding, as COBOL copybooks do: a full-width
//! character is two bytes in Shift_JIS.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub format: Format,
    pub fields: BTreeMap<Field, Column>,
    /// Per field: the issuer's value -> cardlink's symbol.
    #[serde(default)]
    pub values: BTreeMap<Field, BTreeMap<String, String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatKind {
    Csv,
    Fixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Encoding {
    #[serde(rename = "utf-8", alias = "utf8")]
    Utf8,
    #[serde(rename = "shift_jis", alias = "cp932", alias = "sjis", alias = "windows-31j")]
    ShiftJis,
}

impl Encoding {
    pub fn encoding_rs(self) -> &'static encoding_rs::Encoding {
        match self {
            // encoding_rs's Shift_JIS is the WHATWG one, i.e. Windows-31J (CP932) with NEC and
            // IBM extensions — what Japanese Windows and mainframe exports actually contain.
            Self::ShiftJis => encoding_rs::SHIFT_JIS,
            Self::Utf8 => encoding_rs::UTF_8,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Format {
    pub kind: FormatKind,
    pub encoding: Encoding,
    /// csv: whether the first (non-skipped) line holds column names.
    #[serde(default = "yes")]
    pub header: bool,
    /// csv: the field delimiter.
    #[serde(default = "comma")]
    pub delimiter: char,
    /// Lines to skip at the start (titles, notices).
    #[serde(default)]
    pub skip_lines: usize,
    /// fixed: only lines whose bytes at this position equal `equals` are data records
    /// (header, trailer and end records are skipped, and counted).
    pub record_type: Option<RecordTypeFilter>,
}

fn yes() -> bool {
    true
}

fn comma() -> char {
    ','
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordTypeFilter {
    pub start: usize,
    pub length: usize,
    pub equals: String,
}

/// Where a field's value comes from.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Column {
    /// csv: by header name.
    Named { column: String },
    /// csv: by 1-based position.
    Index { index: usize },
    /// fixed: 1-based byte start and byte length.
    Bytes { start: usize, length: usize },
    /// The same value on every line.
    Value { value: String },
}

/// The fields a file can fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    AccountRef,
    CardLast4,
    CardHolder,
    Kind,
    Category,
    IssuerTransactionId,
    OriginalTransactionId,
    /// Date (and time) of use; with only a date, midnight Tokyo time.
    UsedAt,
    PostedDate,
    Amount,
    Currency,
    MerchantName,
    Mcc,
    IndustryCode,
    Country,
    PaymentMethod,
    InstallmentCount,
    InstallmentNumber,
    BillingMonth,
    Channel,
    Instrument,
    ForeignAmount,
    ForeignCurrency,
    FxRate,
    Points,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Self::AccountRef => "account_ref",
            Self::CardLast4 => "card_last4",
            Self::CardHolder => "card_holder",
            Self::Kind => "kind",
            Self::Category => "category",
            Self::IssuerTransactionId => "issuer_transaction_id",
            Self::OriginalTransactionId => "original_transaction_id",
            Self::UsedAt => "used_at",
            Self::PostedDate => "posted_date",
            Self::Amount => "amount",
            Self::Currency => "currency",
            Self::MerchantName => "merchant_name",
            Self::Mcc => "mcc",
            Self::IndustryCode => "industry_code",
            Self::Country => "country",
            Self::PaymentMethod => "payment_method",
            Self::InstallmentCount => "installment_count",
            Self::InstallmentNumber => "installment_number",
            Self::BillingMonth => "billing_month",
            Self::Channel => "channel",
            Self::Instrument => "instrument",
            Self::ForeignAmount => "foreign_amount",
            Self::ForeignCurrency => "foreign_currency",
            Self::FxRate => "fx_rate",
            Self::Points => "points",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("cannot read mapping {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("mapping {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("mapping: fields.{field}: {problem}")]
    Invalid { field: &'static str, problem: String },
}

impl Mapping {
    pub fn load(path: &Path) -> Result<Self, MappingError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| MappingError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|e| match e {
            MappingError::Parse { source, .. } => MappingError::Parse { path: path.display().to_string(), source },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, MappingError> {
        let mapping: Mapping =
            toml::from_str(text).map_err(|source| MappingError::Parse { path: "<text>".into(), source })?;
        mapping.check()?;
        Ok(mapping)
    }

    /// Checks that columns suit the format and the required fields are mapped.
    fn check(&self) -> Result<(), MappingError> {
        for required in [Field::AccountRef, Field::UsedAt, Field::Amount] {
            if !self.fields.contains_key(&required) {
                return Err(MappingError::Invalid {
                    field: required.name(),
                    problem: "required, but not mapped".into(),
                });
            }
        }
        for (field, column) in &self.fields {
            let problem = match (self.format.kind, column) {
                (FormatKind::Csv, Column::Bytes { .. }) => {
                    Some("byte positions are for fixed-width files; use column or index")
                }
                (FormatKind::Fixed, Column::Named { .. } | Column::Index { .. }) => {
                    Some("fixed-width files need byte positions: { start, length }")
                }
                (FormatKind::Csv, Column::Named { .. }) if !self.format.header => {
                    Some("named columns need `header = true`")
                }
                (_, Column::Index { index: 0 }) => Some("indexes start at 1"),
                (_, Column::Bytes { start: 0, .. }) => Some("byte positions start at 1"),
                (_, Column::Bytes { length: 0, .. }) => Some("length must be at least 1"),
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(MappingError::Invalid { field: field.name(), problem: problem.into() });
            }
        }
        Ok(())
    }
}
