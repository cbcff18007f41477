//! One line of an issuer file into a card transaction, or a rejection that names the field.
//!
//! Lines are decoded one at a time (Shift_JIS never uses the newline byte inside a character),
//! so one undecodable line is rejected on its own and its neighbours still go through.

use std::collections::HashMap;

use cardlink_api::Reason;
use cardlink_events as ev;
use sha2::{Digest, Sha256};

use super::mapping::{Column, Field, FormatKind, Mapping};
use super::normalize;

/// Why a line could not become a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineRejection {
    /// Stable code: MISSING_FIELD, UNPARSEABLE_AMOUNT, UNPARSEABLE_DATE, UNMAPPED_VALUE,
    /// ENCODING_ERROR, SHORT_LINE, MALFORMED_CSV, INVALID_NUMBER.
    pub reason: Reason,
    pub field: String,
    pub message: String,
}

fn reject(reason: Reason, field: Field, message: impl Into<String>) -> LineRejection {
    LineRejection { reason, field: field.name().to_owned(), message: message.into() }
}

/// What a line turned out to be.
// Nearly every line is a record; boxing it would allocate per line for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// Blank, skipped by `skip_lines`, the header, or not a data record.
    Skipped,
    Record(Result<ev::CardTransaction, LineRejection>),
}

/// A problem with the whole file, not one line.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the header has no column {0:?} (mapped in fields)")]
    MissingColumn(String),
    #[error("the header line is not valid {encoding}: fix the file or the mapping's encoding")]
    HeaderEncoding { encoding: &'static str },
}

/// Parses the lines of one file, in order.
#[derive(Debug)]
pub struct Parser {
    mapping: Mapping,
    issuer_id: String,
    columns: Option<HashMap<String, usize>>,
    lines_seen: usize,
}

enum Values<'a> {
    Csv(Vec<String>),
    Fixed(&'a [u8]),
}

impl Parser {
    pub fn new(mapping: Mapping, issuer_id: &str) -> Self {
        Self { mapping, issuer_id: issuer_id.to_owned(), columns: None, lines_seen: 0 }
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Parses the next physical line (without its line terminator).
    pub fn parse_line(&mut self, raw: &[u8]) -> Result<Line, FileError> {
        self.lines_seen += 1;
        let mut raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if self.lines_seen == 1 {
            raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
        }
        if self.lines_seen <= self.mapping.format.skip_lines || raw.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Line::Skipped);
        }
        match self.mapping.format.kind {
            FormatKind::Csv => self.csv_line(raw),
            FormatKind::Fixed => Ok(self.fixed_line(raw)),
        }
    }

    fn decode<'a>(&self, bytes: &'a [u8]) -> Option<std::borrow::Cow<'a, str>> {
        let (text, had_errors) = self.mapping.format.encoding.encoding_rs().decode_without_bom_handling(bytes);
        (!had_errors).then_some(text)
    }

    fn csv_line(&mut self, raw: &[u8]) -> Result<Line, FileError> {
        let encoding = self.mapping.format.encoding.encoding_rs().name();
        let Some(text) = self.decode(raw) else {
            if self.mapping.format.header && self.columns.is_none() {
                return Err(FileError::HeaderEncoding { encoding });
            }
            return Ok(Line::Record(Err(LineRejection {
                reason: Reason::EncodingError,
                field: String::new(),
                message: format!("the line is not valid {encoding}"),
            })));
        };
        let fields = match split_csv(&text, self.mapping.format.delimiter) {
            Some(fields) => fields,
            None => {
                return Ok(Line::Record(Err(LineRejection {
                    reason: Reason::MalformedCsv,
                    field: String::new(),
                    message: "the line is not well-formed CSV (unbalanced quotes?)".into(),
                })));
            }
        };
        if self.mapping.format.header && self.columns.is_none() {
            let columns: HashMap<String, usize> =
                fields.iter().enumerate().map(|(i, name)| (normalize::text(name), i)).collect();
            for column in self.mapping.fields.values() {
                if let Column::Named { column } = column
                    && !columns.contains_key(&normalize::text(column))
                {
                    return Err(FileError::MissingColumn(column.clone()));
                }
            }
            self.columns = Some(columns);
            return Ok(Line::Skipped);
        }
        Ok(Line::Record(self.transaction(raw, &Values::Csv(fields))))
    }

    fn fixed_line(&self, raw: &[u8]) -> Line {
        if let Some(filter) = &self.mapping.format.record_type {
            let slice = raw.get(filter.start - 1..(filter.start - 1 + filter.length).min(raw.len()));
            if slice != Some(filter.equals.as_bytes()) {
                return Line::Skipped;
            }
        }
        Line::Record(self.transaction(raw, &Values::Fixed(raw)))
    }

    /// The value of `field` on this line: `Ok(None)` when not mapped or blank.
    fn get(&self, values: &Values<'_>, field: Field) -> Result<Option<String>, LineRejection> {
        let Some(column) = self.mapping.fields.get(&field) else { return Ok(None) };
        let raw: String = match (column, values) {
            (Column::Value { value }, _) => value.clone(),
            (Column::Named { column }, Values::Csv(fields)) => {
                let index = self.columns.as_ref().and_then(|c| c.get(&normalize::text(column))).copied();
                index.and_then(|i| fields.get(i)).cloned().unwrap_or_default()
            }
            (Column::Index { index }, Values::Csv(fields)) => fields.get(index - 1).cloned().unwrap_or_default(),
            (Column::Bytes { start, length }, Values::Fixed(raw)) => {
                let end = start - 1 + length;
                let slice = raw.get(start - 1..end).ok_or_else(|| {
                    reject(
                        Reason::ShortLine,
                        field,
                        format!("the line has {} bytes; this field ends at byte {end}", raw.len()),
                    )
                })?;
                self.decode(slice)
                    .ok_or_else(|| {
                        reject(Reason::EncodingError, field, "bytes that are not valid in the file's encoding")
                    })?
                    .into_owned()
            }
            // Mapping::check rules out the other combinations.
            _ => String::new(),
        };
        let trimmed = raw.trim_matches(|c: char| c.is_whitespace() || c == '\u{3000}');
        Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
    }

    /// The value after the mapping's `[values.<field>]` table, normalised.
    fn mapped(&self, values: &Values<'_>, field: Field) -> Result<Option<String>, LineRejection> {
        let Some(raw) = self.get(values, field)? else { return Ok(None) };
        let key = normalize::text(&raw);
        match self.mapping.values.get(&field) {
            Some(table) => {
                let hit = table.iter().find(|(k, _)| normalize::text(k) == key).map(|(_, v)| v.clone());
                Ok(Some(hit.unwrap_or(key)))
            }
            None => Ok(Some(key)),
        }
    }

    fn require(&self, values: &Values<'_>, field: Field) -> Result<String, LineRejection> {
        self.get(values, field)?.ok_or_else(|| reject(Reason::MissingField, field, "empty or not mapped"))
    }

    fn integer(&self, values: &Values<'_>, field: Field) -> Result<Option<i64>, LineRejection> {
        self.get(values, field)?
            .map(|v| normalize::amount(&v).ok_or_else(|| reject(Reason::InvalidNumber, field, "not a whole number")))
            .transpose()
    }

    fn transaction(&self, raw: &[u8], values: &Values<'_>) -> Result<ev::CardTransaction, LineRejection> {
        let account_ref = normalize::text(&self.require(values, Field::AccountRef)?);
        let used = self.require(values, Field::UsedAt)?;
        let occurred_at = normalize::instant(&used).ok_or_else(|| {
            reject(Reason::UnparseableDate, Field::UsedAt, "a date such as 2026/11/23, 20261123 or 2026-11-23")
        })?;
        let local_date = occurred_at.with_timezone(&normalize::jst()).date_naive();
        let posted_date = self
            .get(values, Field::PostedDate)?
            .map(|d| {
                normalize::date(&d)
                    .ok_or_else(|| reject(Reason::UnparseableDate, Field::PostedDate, "a date such as 2026/11/23"))
            })
            .transpose()?;
        let amount_text = self.require(values, Field::Amount)?;
        let minor_units = normalize::amount(&amount_text)
            .ok_or_else(|| reject(Reason::UnparseableAmount, Field::Amount, "a whole amount such as ¥1,234 or -500"))?;
        let currency = self
            .get(values, Field::Currency)?
            .map(|c| normalize::text(&c).to_uppercase())
            .unwrap_or_else(|| "JPY".into());

        let kind = match self.mapped(values, Field::Kind)? {
            None => {
                if posted_date.is_some() {
                    ev::TransactionKind::Posted
                } else {
                    ev::TransactionKind::Authorized
                }
            }
            Some(v) => kind(&v).ok_or_else(|| unmapped(Field::Kind, "AUTHORIZED, POSTED, REVERSED or REFUNDED"))?,
        };
        let (method, count_from_method) = match self.mapped(values, Field::PaymentMethod)? {
            None => (ev::PaymentMethod::LumpSum, None),
            Some(v) => payment_method(&v).ok_or_else(|| {
                unmapped(Field::PaymentMethod, "1回, 2回, 分割, リボ, ボーナス一括, ボーナス分割 or a cardlink symbol")
            })?,
        };
        let installment_count = match self.integer(values, Field::InstallmentCount)? {
            Some(n) => Some(
                i32::try_from(n).map_err(|_| reject(Reason::InvalidNumber, Field::InstallmentCount, "out of range"))?,
            ),
            None => count_from_method,
        };
        // A count of 1 in a 支払回数 column of a lump-sum line carries no information.
        let installment_count = if method.has_installments() { installment_count } else { None };
        let installment_number = self
            .integer(values, Field::InstallmentNumber)?
            .map(|n| {
                i32::try_from(n).map_err(|_| reject(Reason::InvalidNumber, Field::InstallmentNumber, "out of range"))
            })
            .transpose()?;

        let issuer_transaction_id = match self.get(values, Field::IssuerTransactionId)? {
            Some(id) => normalize::text(&id),
            // No id in the file: the line's content is its identity, so re-sending the same file
            // yields the same ids. (A UUID, not raw hex: long digit runs in hex could look like a
            // card number to the PAN guard.)
            None => format!("line-{}", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &Sha256::digest(raw))),
        };
        let kind_name = format!("{kind:?}").to_uppercase();
        let event_id = ev::EventId::derived(&self.issuer_id, &format!("{issuer_transaction_id}/{kind_name}"));

        let merchant = self.get(values, Field::MerchantName)?.map(|name| {
            Ok::<_, LineRejection>(ev::Merchant {
                normalized_name: Some(normalize::text(&name)),
                name_as_printed: name,
                mcc: self.get(values, Field::Mcc)?.map(|m| normalize::text(&m)),
                industry_code: self.get(values, Field::IndustryCode)?.map(|m| normalize::text(&m)),
                country: self.get(values, Field::Country)?.map(|c| normalize::text(&c).to_uppercase()),
            })
        });
        let foreign = match self.integer(values, Field::ForeignAmount)? {
            None => None,
            Some(units) => Some(ev::ForeignAmount {
                amount: ev::Money {
                    minor_units: units,
                    currency: self
                        .get(values, Field::ForeignCurrency)?
                        .map(|c| normalize::text(&c).to_uppercase())
                        .ok_or_else(|| {
                            reject(Reason::MissingField, Field::ForeignCurrency, "a foreign amount needs its currency")
                        })?,
                },
                fx_rate: self
                    .get(values, Field::FxRate)?
                    .map(|r| normalize::text(&r).replace(',', ""))
                    .ok_or_else(|| reject(Reason::MissingField, Field::FxRate, "a foreign amount needs its rate"))?,
                fx_rate_date: None,
                overseas_fee: None,
            }),
        };

        Ok(ev::CardTransaction {
            event_id,
            issuer_id: self.issuer_id.clone(),
            account_ref,
            card: ev::CardRef {
                last4: self.get(values, Field::CardLast4)?.map(|l| normalize::text(&l)),
                holder: match self.mapped(values, Field::CardHolder)? {
                    None => ev::CardHolder::Principal,
                    Some(v) => holder(&v).ok_or_else(|| {
                        unmapped(Field::CardHolder, "本人/本会員, 家族/家族会員, PRINCIPAL or FAMILY")
                    })?,
                },
            },
            kind,
            category: match self.mapped(values, Field::Category)? {
                None => ev::TransactionCategory::Purchase,
                Some(v) => category(&v)
                    .ok_or_else(|| unmapped(Field::Category, "ショッピング, キャッシング or a cardlink symbol"))?,
            },
            original_transaction_id: self.get(values, Field::OriginalTransactionId)?.map(|v| normalize::text(&v)),
            issuer_transaction_id,
            occurred_at,
            local_date,
            posted_date,
            amount: ev::Money { minor_units, currency },
            foreign,
            merchant: merchant.transpose()?,
            payment: ev::PaymentPlan { method, installment_count, installment_number, installment_fee: None },
            billing_month: self
                .get(values, Field::BillingMonth)?
                .map(|m| {
                    normalize::month(&m).ok_or_else(|| {
                        reject(Reason::UnparseableDate, Field::BillingMonth, "a month such as 2026/12 or 202612")
                    })
                })
                .transpose()?,
            channel: match self.mapped(values, Field::Channel)? {
                None => ev::Channel::Unknown,
                Some(v) => channel(&v)
                    .ok_or_else(|| unmapped(Field::Channel, "IN_STORE, CONTACTLESS, ONLINE, RECURRING, ATM"))?,
            },
            instrument: match self.mapped(values, Field::Instrument)? {
                None => ev::InstrumentType::Credit,
                Some(v) => {
                    instrument(&v).ok_or_else(|| unmapped(Field::Instrument, "CREDIT, DEBIT, PREPAID, CODE_PAYMENT"))?
                }
            },
            points_earned: self.integer(values, Field::Points)?,
        })
    }
}

fn unmapped(field: Field, expected: &str) -> LineRejection {
    reject(
        Reason::UnmappedValue,
        field,
        format!("value not in the mapping's [values.{}] table; expected {expected}", field.name()),
    )
}

/// Splits one CSV line. `None` if the quoting is broken.
fn split_csv(line: &str, delimiter: char) -> Option<Vec<String>> {
    let delimiter = u8::try_from(delimiter).ok()?;
    // In well-formed CSV every quote is paired (an escaped quote is doubled); an odd count
    // means a quote left open, which the csv crate would silently run to the end of the line.
    if line.bytes().filter(|b| *b == b'"').count() % 2 == 1 {
        return None;
    }
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).delimiter(delimiter).flexible(true).from_reader(line.as_bytes());
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => Some(record.iter().map(str::to_owned).collect()),
        Ok(false) => Some(Vec::new()),
        Err(_) => None,
    }
}

fn kind(v: &str) -> Option<ev::TransactionKind> {
    Some(match v {
        "AUTHORIZED" | "未確定" | "オーソリ" => ev::TransactionKind::Authorized,
        "POSTED" | "確定" | "売上" => ev::TransactionKind::Posted,
        "REVERSED" | "取消" | "取消し" => ev::TransactionKind::Reversed,
        "REFUNDED" | "返品" => ev::TransactionKind::Refunded,
        _ => return None,
    })
}

/// The method, and a count where the value names one ("3回払い").
fn payment_method(v: &str) -> Option<(ev::PaymentMethod, Option<i32>)> {
    use ev::PaymentMethod as M;
    let v = v.strip_suffix("払い").unwrap_or(v);
    Some(match v {
        "LUMP_SUM" | "1回" | "一括" => (M::LumpSum, None),
        "TWO_PAYMENTS" | "2回" => (M::TwoPayments, None),
        "INSTALLMENTS" | "分割" => (M::Installments, None),
        "REVOLVING" | "リボ" | "リボルビング" => (M::Revolving, None),
        "BONUS_LUMP_SUM" | "ボーナス一括" | "ボーナス1回" => (M::BonusLumpSum, None),
        "BONUS_INSTALLMENTS" | "ボーナス分割" => (M::BonusInstallments, None),
        other => {
            let n: i32 = other.strip_suffix('回')?.parse().ok()?;
            (n >= 3).then_some((M::Installments, Some(n)))?
        }
    })
}

fn holder(v: &str) -> Option<ev::CardHolder> {
    Some(match v {
        "PRINCIPAL" | "本人" | "本会員" | "ご本人" => ev::CardHolder::Principal,
        "FAMILY" | "家族" | "家族会員" | "ご家族" => ev::CardHolder::Family,
        _ => return None,
    })
}

fn category(v: &str) -> Option<ev::TransactionCategory> {
    use ev::TransactionCategory as C;
    Some(match v {
        "PURCHASE" | "ショッピング" => C::Purchase,
        "CASH_ADVANCE" | "キャッシング" => C::CashAdvance,
        "FEE" | "手数料" => C::Fee,
        "INTEREST" | "利息" => C::Interest,
        "PAYMENT" | "入金" => C::Payment,
        "ADJUSTMENT" | "調整" => C::Adjustment,
        _ => return None,
    })
}

fn channel(v: &str) -> Option<ev::Channel> {
    use ev::Channel as C;
    Some(match v {
        "IN_STORE" | "店頭" => C::InStore,
        "CONTACTLESS" | "タッチ" => C::Contactless,
        "ONLINE" | "ネット" | "EC" => C::Online,
        "RECURRING" | "継続" => C::Recurring,
        "ATM" => C::Atm,
        _ => return None,
    })
}

fn instrument(v: &str) -> Option<ev::InstrumentType> {
    use ev::InstrumentType as I;
    Some(match v {
        "CREDIT" | "クレジット" => I::Credit,
        "DEBIT" | "デビット" => I::Debit,
        "PREPAID" | "プリペイド" => I::Prepaid,
        "CODE_PAYMENT" | "コード決済" => I::CodePayment,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAPPINGS: [&str; 2] =
        [include_str!("../../samples/core_export_sjis.toml"), include_str!("../../samples/meisai_web_utf8.toml")];

    #[test]
    fn a_header_without_a_mapped_column_is_a_file_error() {
        let mapping = Mapping::parse(MAPPINGS[1]).expect("sample mapping");
        let mut parser = Parser::new(mapping, "iss");
        let err = parser.parse_line("利用日,金額".as_bytes()).expect_err("columns missing");
        assert!(matches!(err, FileError::MissingColumn(_)), "{err}");
    }

    #[test]
    fn invalid_shift_jis_bytes_reject_only_their_line() {
        let mapping = Mapping::parse(MAPPINGS[0]).expect("sample mapping");
        let mut parser = Parser::new(mapping, "iss");
        let mut line = b"2M0000001010042120261101202611030000000498".to_vec();
        line.extend_from_slice(&[0x82, 0xFF, 0x82, 0xFF]); // not Shift_JIS
        line.resize(98, b' ');
        match parser.parse_line(&line).expect("not a file error") {
            Line::Record(Err(r)) => {
                assert_eq!((r.reason.as_str(), r.field.as_str()), ("ENCODING_ERROR", "merchant_name"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unbalanced_quotes_are_malformed_csv() {
        assert_eq!(split_csv("a,\"b,c", ','), None);
        assert_eq!(split_csv("a,\"b,c\",d", ','), Some(vec!["a".into(), "b,c".into(), "d".into()]));
    }

    proptest! {
        // The fuzz target file_parser, as a property in the normal test run.
        #[test]
        fn any_bytes_never_panic_the_parser(lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..8)) {
            for text in MAPPINGS {
                let mut parser = Parser::new(Mapping::parse(text).expect("sample mapping"), "iss");
                for line in &lines {
                    if parser.parse_line(line).is_err() {
                        break;
                    }
                }
            }
        }
    }
}
