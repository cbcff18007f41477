//! Two small aggregators built on cardlink's stream, to show what members consent *for*:
//!
//! - [`kakeibo`]: a household-budget app's monthly spending by category (食費, 交通費 …), with
//!   pending (未確定) and posted (確定) amounts kept apart and a purchase counted once however many
//!   events it went through (authorisation, posting, reversal, refund).
//! - [`shiwake`]: an SME bookkeeping app's journal (仕訳帳) — each posted card purchase as an
//!   expense against 未払金, refunds reversed, each confirmed statement as the payment of
//!   未払金 from the bank account on its 支払日 — as CSV a bookkeeping package imports.
//!
//! [`category`] maps a merchant's MCC to both books' accounts. Both work only from what the
//! consent's scopes deliver: without `MERCHANT_DETAIL` there is no MCC, and the spending lands
//! in 未分類 / 仮払金 for the member to sort out — the visible reason to grant it.
//!
//! The logic is plain functions over `cardlink.v1` messages; the binaries (`kakeibo`,
//! `shiwake`) only subscribe with `cardlink-client` and feed it.

pub mod category;
pub mod kakeibo;
pub mod shiwake;
pub mod stream;

pub use cardlink_api::v1;

/// The yen amount of a `Money` (`None` for another currency: cardlink bills in yen, and the
/// foreign amount travels beside it).
pub fn yen(m: Option<&v1::Money>) -> Option<i64> {
    m.filter(|m| m.currency == "JPY").map(|m| m.minor_units)
}

/// "1,234" with thousands separators.
pub fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    #[test]
    fn amounts_are_grouped_by_thousands() {
        assert_eq!(super::grouped(1_234_567), "1,234,567");
        assert_eq!(super::grouped(-980), "-980");
        assert_eq!(super::grouped(0), "0");
    }
}
