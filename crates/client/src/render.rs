//! One delivery as a person or a program reads it: a table row, or a JSON line with stable
//! field names (what `cardlink aggregator subscribe --format json` prints, one per line).

use cardlink_api::v1;
use serde_json::{Value, json};

/// The table's header line.
pub const TABLE_HEADER: &str =
    "kind        consent            account            date        amount            merchant / detail";

/// An amount in its currency's units (`minor_units` are yen for JPY, cents for USD …).
pub fn money(m: Option<&v1::Money>) -> String {
    let Some(m) = m else { return String::new() };
    let exponent = match m.currency.as_str() {
        "JPY" | "KRW" => 0,
        _ => 2,
    };
    if exponent == 0 {
        format!("{} {}", m.minor_units, m.currency)
    } else {
        let sign = if m.minor_units < 0 { "-" } else { "" };
        let abs = m.minor_units.unsigned_abs();
        format!("{sign}{}.{:02} {}", abs / 100, abs % 100, m.currency)
    }
}

fn enum_name(name: Option<&str>) -> String {
    name.unwrap_or("UNSPECIFIED").to_owned()
}

fn truncate(text: &str, width: usize) -> String {
    let mut out: String = text.chars().take(width).collect();
    if text.chars().count() > width {
        out.pop();
        out.push('…');
    }
    out
}

/// One delivery as a line of the table.
pub fn table_row(d: &v1::Delivery) -> String {
    let (kind, account, date, amount, detail) = match &d.event {
        Some(v1::delivery::Event::Transaction(t)) => (
            "transaction",
            t.account_ref.clone(),
            t.local_date.clone(),
            money(t.amount.as_ref()),
            t.merchant.as_ref().map(|m| m.name_as_printed.clone()).unwrap_or_default(),
        ),
        Some(v1::delivery::Event::Statement(s)) => (
            "statement",
            s.account_ref.clone(),
            s.due_date.clone(),
            money(s.total.as_ref()),
            format!("{} billing", s.billing_month),
        ),
        Some(v1::delivery::Event::ConsentChange(c)) => {
            let status = c
                .consent
                .as_ref()
                .and_then(|c| v1::ConsentStatus::try_from(c.status).ok())
                .map(|s| s.as_str_name().trim_start_matches("CONSENT_STATUS_").to_owned())
                .unwrap_or_default();
            ("consent", String::new(), String::new(), String::new(), status)
        }
        None => ("unknown", String::new(), String::new(), String::new(), String::new()),
    };
    format!(
        "{kind:<11} {:<18} {:<18} {date:<11} {amount:>17} {}",
        truncate(&d.consent_id, 18),
        truncate(&account, 18),
        truncate(&detail, 40)
    )
}

/// One delivery as a JSON object.
pub fn json(d: &v1::Delivery) -> Value {
    match &d.event {
        Some(v1::delivery::Event::Transaction(t)) => json!({
            "kind": "transaction",
            "consent_id": d.consent_id,
            "event_id": t.event_id,
            "issuer_id": t.issuer_id,
            "account": t.account_ref,
            "transaction_id": t.issuer_transaction_id,
            "status": enum_name(v1::TransactionKind::try_from(t.kind).ok().map(|k| k.as_str_name())),
            "category": enum_name(v1::TransactionCategory::try_from(t.category).ok().map(|k| k.as_str_name())),
            "local_date": t.local_date,
            "billing_month": t.billing_month,
            "amount_minor": t.amount.as_ref().map(|m| m.minor_units),
            "currency": t.amount.as_ref().map(|m| m.currency.clone()),
            "merchant": t.merchant.as_ref().map(|m| json!({
                "name": m.name_as_printed, "normalized": m.normalized_name, "mcc": m.mcc, "country": m.country,
            })),
        }),
        Some(v1::delivery::Event::Statement(s)) => json!({
            "kind": "statement",
            "consent_id": d.consent_id,
            "event_id": s.event_id,
            "issuer_id": s.issuer_id,
            "account": s.account_ref,
            "statement_id": s.statement_id,
            "billing_month": s.billing_month,
            "closing_date": s.closing_date,
            "due_date": s.due_date,
            "total_minor": s.total.as_ref().map(|m| m.minor_units),
            "currency": s.total.as_ref().map(|m| m.currency.clone()),
        }),
        Some(v1::delivery::Event::ConsentChange(c)) => json!({
            "kind": "consent",
            "consent_id": d.consent_id,
            "status": c.consent.as_ref().and_then(|c| v1::ConsentStatus::try_from(c.status).ok()).map(|s| s.as_str_name()),
        }),
        None => json!({"kind": "unknown", "consent_id": d.consent_id}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_use_their_currencys_units() {
        assert_eq!(money(Some(&v1::Money { minor_units: 1980, currency: "JPY".into() })), "1980 JPY");
        assert_eq!(money(Some(&v1::Money { minor_units: -1234, currency: "USD".into() })), "-12.34 USD");
        assert_eq!(money(None), "");
    }

    #[test]
    fn a_transaction_renders_as_a_row_and_as_json() {
        let d = v1::Delivery {
            consent_id: "c-1".into(),
            event: Some(v1::delivery::Event::Transaction(v1::CardTransaction {
                event_id: "e-1".into(),
                account_ref: "p-abc".into(),
                local_date: "2026-11-24".into(),
                amount: Some(v1::Money { minor_units: 880, currency: "JPY".into() }),
                merchant: Some(v1::Merchant { name_as_printed: "コンビニ 新宿店".into(), ..Default::default() }),
                kind: v1::TransactionKind::Posted as i32,
                ..Default::default()
            })),
            published_at: None,
            version: 0,
            from_history: false,
        };
        let row = table_row(&d);
        assert!(row.starts_with("transaction") && row.contains("880 JPY") && row.contains("コンビニ"), "{row}");
        let j = json(&d);
        assert_eq!(j["amount_minor"], 880);
        assert_eq!(j["status"], "TRANSACTION_KIND_POSTED");
        assert_eq!(j["merchant"]["name"], "コンビニ 新宿店");
    }
}
