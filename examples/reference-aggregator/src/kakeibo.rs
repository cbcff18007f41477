//! 家計簿: monthly card spending by category.
//!
//! A purchase reaches the stream as several events: the authorisation (未確定), then either its
//! posting (確定, same `issuer_transaction_id`) or its reversal (取消); later perhaps a refund
//! (返品, its own id, pointing at the original). The book keeps one entry per
//! `(issuer, account, issuer_transaction_id)` and lets each event move it on, so a purchase is
//! counted once — as pending until it posts — and a refund is a negative entry in the month it
//! happened. Months are the month of use (利用日, Asia/Tokyo), as household budgets count them.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::category::Category;
use crate::v1;

/// How far a purchase has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Pending,
    Posted,
    Reversed,
}

#[derive(Clone, Debug)]
struct Entry {
    month: String,
    category: Category,
    amount: i64,
    state: State,
}

/// Spending of one month in one category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// 確定: posted purchases less refunds.
    pub posted: i64,
    /// 未確定: authorised, not yet posted.
    pub pending: i64,
    pub purchases: u32,
}

/// The household book.
#[derive(Debug, Default)]
pub struct Kakeibo {
    entries: HashMap<(String, String, String), Entry>,
    /// Events that were not yen card spending (statements, foreign-only amounts, consent notices).
    pub skipped: u64,
}

fn month_of(local_date: &str) -> String {
    local_date.get(..7).unwrap_or(local_date).to_owned()
}

impl Kakeibo {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one delivery into the book.
    pub fn apply(&mut self, delivery: &v1::Delivery) {
        let Some(v1::delivery::Event::Transaction(t)) = &delivery.event else {
            self.skipped += 1;
            return;
        };
        let purchase_like = matches!(
            v1::TransactionCategory::try_from(t.category),
            Ok(v1::TransactionCategory::Purchase | v1::TransactionCategory::CashAdvance)
        );
        let Some(amount) = crate::yen(t.amount.as_ref()).filter(|_| purchase_like) else {
            self.skipped += 1;
            return;
        };
        let category = Category::of_mcc(t.merchant.as_ref().map(|m| m.mcc.as_str()).filter(|m| !m.is_empty()));
        let key = |id: &str| (t.issuer_id.clone(), t.account_ref.clone(), id.to_owned());
        match v1::TransactionKind::try_from(t.kind) {
            Ok(v1::TransactionKind::Authorized) => {
                // A posting that arrived first (another partition never reorders one account,
                // but a replay may start mid-way) stays posted.
                self.entries.entry(key(&t.issuer_transaction_id)).or_insert(Entry {
                    month: month_of(&t.local_date),
                    category,
                    amount,
                    state: State::Pending,
                });
            }
            Ok(v1::TransactionKind::Posted) => {
                let entry = Entry { month: month_of(&t.local_date), category, amount, state: State::Posted };
                self.entries.insert(key(&t.issuer_transaction_id), entry);
            }
            Ok(v1::TransactionKind::Reversed) => {
                let id = if t.original_transaction_id.is_empty() {
                    &t.issuer_transaction_id
                } else {
                    &t.original_transaction_id
                };
                if let Some(entry) = self.entries.get_mut(&key(id))
                    && entry.state == State::Pending
                {
                    entry.state = State::Reversed;
                }
            }
            Ok(v1::TransactionKind::Refunded) => {
                // Its own id; the amount is already negative.
                let entry = Entry { month: month_of(&t.local_date), category, amount, state: State::Posted };
                self.entries.insert(key(&t.issuer_transaction_id), entry);
            }
            _ => self.skipped += 1,
        }
    }

    /// Month → category → totals.
    pub fn summary(&self) -> BTreeMap<String, BTreeMap<Category, Totals>> {
        let mut out: BTreeMap<String, BTreeMap<Category, Totals>> = BTreeMap::new();
        for e in self.entries.values() {
            let totals = out.entry(e.month.clone()).or_default().entry(e.category).or_default();
            match e.state {
                State::Posted => {
                    totals.posted += e.amount;
                    if e.amount > 0 {
                        totals.purchases += 1;
                    }
                }
                State::Pending => {
                    totals.pending += e.amount;
                    totals.purchases += 1;
                }
                State::Reversed => {}
            }
        }
        out
    }

    /// The summary as the app shows it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (month, categories) in self.summary() {
            let posted: i64 = categories.values().map(|t| t.posted).sum();
            let pending: i64 = categories.values().map(|t| t.pending).sum();
            let _ = writeln!(out, "{month}  確定 {}円  未確定 {}円", crate::grouped(posted), crate::grouped(pending));
            let mut rows: Vec<_> = categories.into_iter().collect();
            rows.sort_by_key(|(_, t)| std::cmp::Reverse(t.posted + t.pending));
            for (category, t) in rows {
                let _ = writeln!(
                    out,
                    "  {:<16} {:>12}円  (未確定 {:>9}円, {} 件)",
                    category.kakeibo(),
                    crate::grouped(t.posted),
                    crate::grouped(t.pending),
                    t.purchases
                );
            }
        }
        if out.is_empty() {
            out.push_str("（まだ利用明細がありません）\n");
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A delivered transaction (what the stream hands an aggregator).
    pub fn tx(
        kind: v1::TransactionKind,
        id: &str,
        original: &str,
        date: &str,
        yen: i64,
        mcc: Option<&str>,
    ) -> v1::Delivery {
        v1::Delivery {
            consent_id: "c-1".into(),
            event: Some(v1::delivery::Event::Transaction(v1::CardTransaction {
                event_id: format!("{id}/{kind:?}"),
                issuer_id: "iss-a".into(),
                account_ref: "acc_1".into(),
                kind: kind as i32,
                category: v1::TransactionCategory::Purchase as i32,
                issuer_transaction_id: id.into(),
                original_transaction_id: original.into(),
                local_date: date.into(),
                amount: Some(v1::Money { minor_units: yen, currency: "JPY".into() }),
                merchant: mcc.map(|m| v1::Merchant {
                    name_as_printed: "ｲｵﾝ".into(),
                    mcc: m.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            published_at: None,
            version: 0,
            from_history: false,
        }
    }

    use v1::TransactionKind::{Authorized, Posted, Refunded, Reversed};

    #[test]
    fn a_purchase_counts_once_pending_then_posted() {
        let mut book = Kakeibo::new();
        book.apply(&tx(Authorized, "t1", "", "2026-11-03", 3_000, Some("5411")));
        let pending = book.summary()["2026-11"][&Category::Food];
        assert_eq!((pending.posted, pending.pending, pending.purchases), (0, 3_000, 1));
        book.apply(&tx(Posted, "t1", "", "2026-11-03", 3_000, Some("5411")));
        let posted = book.summary()["2026-11"][&Category::Food];
        assert_eq!((posted.posted, posted.pending, posted.purchases), (3_000, 0, 1));
        // The same posting again (at-least-once) changes nothing.
        book.apply(&tx(Posted, "t1", "", "2026-11-03", 3_000, Some("5411")));
        assert_eq!(book.summary()["2026-11"][&Category::Food], posted);
    }

    #[test]
    fn reversals_drop_the_pending_amount_and_refunds_count_in_their_month() {
        let mut book = Kakeibo::new();
        book.apply(&tx(Authorized, "t1", "", "2026-11-03", 1_200, Some("4111")));
        book.apply(&tx(Reversed, "t1", "t1", "2026-11-03", -1_200, Some("4111")));
        book.apply(&tx(Posted, "t2", "", "2026-11-20", 8_000, Some("5311")));
        book.apply(&tx(Refunded, "t3", "t2", "2026-12-01", -8_000, Some("5311")));
        let s = book.summary();
        assert_eq!(s["2026-11"][&Category::Transport], Totals::default());
        assert_eq!(s["2026-11"][&Category::Shopping].posted, 8_000);
        assert_eq!(s["2026-12"][&Category::Shopping].posted, -8_000);
        assert!(book.render().contains("買い物"));
    }

    #[test]
    fn without_merchant_detail_spending_is_unclassified_and_other_events_are_skipped() {
        let mut book = Kakeibo::new();
        book.apply(&tx(Posted, "t1", "", "2026-11-03", 500, None));
        book.apply(&v1::Delivery {
            event: Some(v1::delivery::Event::Statement(v1::Statement::default())),
            ..Default::default()
        });
        assert_eq!(book.summary()["2026-11"][&Category::Unclassified].posted, 500);
        assert_eq!(book.skipped, 1);
        assert!(book.render().contains("未分類"));
    }
}
