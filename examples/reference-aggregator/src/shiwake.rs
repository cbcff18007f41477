//! 仕訳: a small business's journal from its card's stream.
//!
//! - A posted purchase: 借方 the expense account of its MCC ([`Category::account`]) / 貸方
//!   未払金, on its 利用日. Without merchant detail the debit is 仮払金 (to be classified).
//! - A refund: the reverse entry, on its own date.
//! - An overseas purchase's 海外事務手数料: its own line to 支払手数料.
//! - A confirmed statement (請求確定): 借方 未払金 / 貸方 普通預金 for the total, on its 支払日 —
//!   the card bill paid from the bank account. Provisional statements are not booked.
//! - Authorisations and their reversals are not booked: nothing is owed until a purchase posts.
//!
//! Each entry carries the event id it came from, so an at-least-once repeat is recognised and
//! booked once. [`Journal::csv`] writes the columns most Japanese bookkeeping packages import
//! (日付, 借方勘定科目, 借方金額, 貸方勘定科目, 貸方金額, 摘要). Consumption tax classification is
//! left to the bookkeeper: card data does not carry the tax breakdown of a receipt.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::category::Category;
use crate::v1;

/// The credit side of card spending: the card company is owed.
pub const PAYABLE: &str = "未払金";
/// Where the card bill is paid from.
pub const BANK: &str = "普通預金";
/// Overseas transaction fees.
pub const FEES: &str = "支払手数料";

/// One journal line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub date: String,
    pub debit: &'static str,
    pub credit: &'static str,
    /// Yen, positive.
    pub amount: i64,
    pub memo: String,
    pub event_id: String,
}

/// The journal.
#[derive(Debug, Default)]
pub struct Journal {
    pub entries: Vec<JournalEntry>,
    seen: HashSet<(String, String)>,
    /// Deliveries that book nothing (authorisations, reversals, provisional statements …).
    pub not_booked: u64,
}

fn memo(t: &v1::CardTransaction) -> String {
    let merchant = t.merchant.as_ref().map(|m| m.name_as_printed.as_str()).filter(|m| !m.is_empty());
    let mut memo = format!("カード利用 {}", merchant.unwrap_or("（店名なし）"));
    if let Some(f) = t.foreign.as_ref().and_then(|f| f.amount.as_ref()) {
        let _ = write!(memo, " {} {}", f.minor_units, f.currency);
    }
    memo
}

impl Journal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Books one delivery (once, however often it is delivered).
    pub fn apply(&mut self, delivery: &v1::Delivery) {
        let booked = match &delivery.event {
            Some(v1::delivery::Event::Transaction(t)) => {
                if !self.seen.insert((t.issuer_id.clone(), t.event_id.clone())) {
                    return;
                }
                self.transaction(t)
            }
            Some(v1::delivery::Event::Statement(s)) => {
                if !self.seen.insert((s.issuer_id.clone(), s.event_id.clone())) {
                    return;
                }
                self.statement(s)
            }
            _ => false,
        };
        if !booked {
            self.not_booked += 1;
        }
    }

    fn transaction(&mut self, t: &v1::CardTransaction) -> bool {
        let Some(amount) = crate::yen(t.amount.as_ref()) else { return false };
        let category = Category::of_mcc(t.merchant.as_ref().map(|m| m.mcc.as_str()).filter(|m| !m.is_empty()));
        let date = if t.local_date.is_empty() { t.posted_date.clone() } else { t.local_date.clone() };
        let (debit, credit) = match v1::TransactionKind::try_from(t.kind) {
            Ok(v1::TransactionKind::Posted) if amount >= 0 => (category.account(), PAYABLE),
            Ok(v1::TransactionKind::Posted | v1::TransactionKind::Refunded) => (PAYABLE, category.account()),
            _ => return false,
        };
        self.entries.push(JournalEntry {
            date: date.clone(),
            debit,
            credit,
            amount: amount.abs(),
            memo: memo(t),
            event_id: t.event_id.clone(),
        });
        if v1::TransactionKind::try_from(t.kind) == Ok(v1::TransactionKind::Posted)
            && let Some(fee) = t.foreign.as_ref().and_then(|f| crate::yen(f.overseas_fee.as_ref())).filter(|f| *f > 0)
        {
            self.entries.push(JournalEntry {
                date,
                debit: FEES,
                credit: PAYABLE,
                amount: fee,
                memo: format!("海外事務手数料 {}", memo(t)),
                event_id: t.event_id.clone(),
            });
        }
        true
    }

    fn statement(&mut self, s: &v1::Statement) -> bool {
        let confirmed = v1::StatementStatus::try_from(s.status) == Ok(v1::StatementStatus::Confirmed);
        let Some(total) = crate::yen(s.total.as_ref()).filter(|t| *t > 0 && confirmed) else { return false };
        self.entries.push(JournalEntry {
            date: s.due_date.clone(),
            debit: PAYABLE,
            credit: BANK,
            amount: total,
            memo: format!("カード利用代金 {}月請求分 引落", s.billing_month),
            event_id: s.event_id.clone(),
        });
        true
    }

    /// The journal as CSV, in date order.
    pub fn csv(&self) -> String {
        let mut entries: Vec<&JournalEntry> = self.entries.iter().collect();
        entries.sort_by(|a, b| a.date.cmp(&b.date));
        let mut out = String::from(CSV_HEADER);
        out.push_str(&rows(entries));
        out
    }

    /// The CSV lines of the entries booked since the first `from`, in the order they were
    /// booked (for a journal that follows the live stream).
    pub fn csv_rows(&self, from: usize) -> String {
        rows(self.entries.iter().skip(from))
    }

    /// Debit minus credit of `account` over the journal (未払金 goes negative as spending
    /// accrues and back up as bills are paid).
    pub fn balance(&self, account: &str) -> i64 {
        self.entries
            .iter()
            .map(|e| if e.debit == account { e.amount } else { 0 } - if e.credit == account { e.amount } else { 0 })
            .sum()
    }
}

/// The CSV header of [`Journal::csv`].
pub const CSV_HEADER: &str = "日付,借方勘定科目,借方金額,貸方勘定科目,貸方金額,摘要,イベントID\n";

fn rows<'a>(entries: impl IntoIterator<Item = &'a JournalEntry>) -> String {
    let mut out = String::new();
    for e in entries {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{}",
            e.date.replace('-', "/"),
            e.debit,
            e.amount,
            e.credit,
            e.amount,
            csv_field(&e.memo),
            e.event_id
        );
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kakeibo::tests::tx;
    use v1::TransactionKind::{Authorized, Posted, Refunded};

    fn statement(status: v1::StatementStatus, total: i64) -> v1::Delivery {
        v1::Delivery {
            event: Some(v1::delivery::Event::Statement(v1::Statement {
                event_id: format!("s-{status:?}"),
                issuer_id: "iss-a".into(),
                status: status as i32,
                billing_month: "2026-12".into(),
                due_date: "2026-12-10".into(),
                total: Some(v1::Money { minor_units: total, currency: "JPY".into() }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn purchases_refunds_and_the_paid_bill_balance_the_payable() {
        let mut j = Journal::new();
        j.apply(&tx(Authorized, "t1", "", "2026-11-03", 5_500, Some("4111")));
        j.apply(&tx(Posted, "t1", "", "2026-11-03", 5_500, Some("4111")));
        j.apply(&tx(Posted, "t1", "", "2026-11-03", 5_500, Some("4111"))); // repeat
        j.apply(&tx(Posted, "t2", "", "2026-11-05", 2_000, Some("5942")));
        j.apply(&tx(Refunded, "t3", "t2", "2026-11-09", -2_000, Some("5942")));
        j.apply(&statement(v1::StatementStatus::Provisional, 5_500));
        j.apply(&statement(v1::StatementStatus::Confirmed, 5_500));
        assert_eq!(j.entries.len(), 4, "{:#?}", j.entries);
        assert_eq!(j.not_booked, 2, "the authorisation and the provisional statement");
        assert_eq!(j.balance("旅費交通費"), 5_500);
        assert_eq!(j.balance("新聞図書費"), 0);
        assert_eq!(j.balance(PAYABLE), 0, "the bill paid what the purchases owed");
        assert_eq!(j.balance(BANK), -5_500);
        let csv = j.csv();
        assert!(csv.starts_with("日付,借方勘定科目"));
        assert!(csv.contains("2026/11/03,旅費交通費,5500,未払金,5500,カード利用 ｲｵﾝ"), "{csv}");
        assert!(csv.contains("2026/12/10,未払金,5500,普通預金,5500"), "{csv}");
    }

    #[test]
    fn unclassified_spending_goes_to_suspense_and_memos_are_quoted() {
        let mut j = Journal::new();
        j.apply(&tx(Posted, "t1", "", "2026-11-03", 800, None));
        assert_eq!(j.entries[0].debit, "仮払金");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}
