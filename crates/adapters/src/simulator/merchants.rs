//! Merchants a Japanese card member meets, with their MCCs and typical amounts.

/// What kind of spending a merchant stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// コンビニ
    ConvenienceStore,
    /// スーパー
    Supermarket,
    /// 交通系
    Transport,
    /// EC (online shops)
    Online,
    /// 公共料金 and phone bills, charged monthly
    Utility,
    Restaurant,
    Department,
    /// 海外: abroad, in a foreign currency
    Abroad,
}

#[derive(Clone, Copy, Debug)]
pub struct Merchant {
    /// As it appears on statements: often half-width katakana or upper-case romaji.
    pub printed: &'static str,
    pub mcc: &'static str,
    pub segment: Segment,
    /// Typical amount range in minor units of `currency`.
    pub min: i64,
    pub max: i64,
    pub currency: &'static str,
    pub country: &'static str,
    /// Relative frequency.
    pub weight: u32,
}

// A table row constructor: positional arguments keep the table below readable.
#[allow(clippy::too_many_arguments)]
const fn m(
    printed: &'static str,
    mcc: &'static str,
    segment: Segment,
    min: i64,
    max: i64,
    currency: &'static str,
    country: &'static str,
    weight: u32,
) -> Merchant {
    Merchant { printed, mcc, segment, min, max, currency, country, weight }
}

use Segment::*;

pub const MERCHANTS: &[Merchant] = &[
    m("ｾﾌﾞﾝｲﾚﾌﾞﾝ", "5499", ConvenienceStore, 120, 2_500, "JPY", "JP", 30),
    m("ﾛｰｿﾝ", "5499", ConvenienceStore, 120, 2_000, "JPY", "JP", 22),
    m("ﾌｧﾐﾘｰﾏｰﾄ", "5499", ConvenienceStore, 120, 2_000, "JPY", "JP", 22),
    m("ｲｵﾝ", "5411", Supermarket, 800, 12_000, "JPY", "JP", 14),
    m("ｲﾄｰﾖｰｶﾄﾞｰ", "5411", Supermarket, 800, 10_000, "JPY", "JP", 8),
    m("ﾗｲﾌ", "5411", Supermarket, 500, 8_000, "JPY", "JP", 8),
    m("ﾓﾊﾞｲﾙｽｲｶ", "4111", Transport, 1_000, 5_000, "JPY", "JP", 12),
    m("JR東日本 えきねっと", "4112", Transport, 2_000, 30_000, "JPY", "JP", 4),
    m("ﾄｳｷｮｳﾒﾄﾛ", "4111", Transport, 180, 1_000, "JPY", "JP", 6),
    m("AMAZON.CO.JP", "5942", Online, 500, 40_000, "JPY", "JP", 18),
    m("ﾗｸﾃﾝｲﾁﾊﾞ", "5999", Online, 800, 30_000, "JPY", "JP", 10),
    m("ﾒﾙｶﾘ", "5999", Online, 300, 15_000, "JPY", "JP", 5),
    m("ﾄｳｷｮｳﾃﾞﾝﾘｮｸ", "4900", Utility, 3_000, 18_000, "JPY", "JP", 3),
    m("ﾄｳｷｮｳｶﾞｽ", "4900", Utility, 2_000, 12_000, "JPY", "JP", 3),
    m("NTTﾄﾞｺﾓ", "4814", Utility, 2_000, 12_000, "JPY", "JP", 3),
    m("ｽｼﾛｰ", "5812", Restaurant, 800, 6_000, "JPY", "JP", 6),
    m("ﾏｸﾄﾞﾅﾙﾄﾞ", "5814", Restaurant, 300, 2_000, "JPY", "JP", 8),
    m("ﾀｶｼﾏﾔ", "5311", Department, 3_000, 120_000, "JPY", "JP", 3),
    m("ﾋﾞｯｸｶﾒﾗ", "5732", Department, 1_000, 200_000, "JPY", "JP", 3),
    m("STARBUCKS SEATTLE", "5814", Abroad, 450, 2_500, "USD", "US", 1),
    m("HOTEL HONOLULU", "7011", Abroad, 15_000, 90_000, "USD", "US", 1),
    m("LOTTE DUTY FREE SEOUL", "5309", Abroad, 20_000, 800_000, "KRW", "KR", 1),
    m("GALERIES LAFAYETTE PARIS", "5311", Abroad, 3_000, 60_000, "EUR", "FR", 1),
];

/// The simulated FX rate of `currency`: millionths of a yen per minor unit, and the rate as
/// the issuer states it (yen per major unit).
pub fn fx_rate(currency: &str) -> (i64, &'static str) {
    match currency {
        "USD" => (1_501_200, "150.12"),
        "EUR" => (1_623_300, "162.33"),
        "KRW" => (109_100, "0.1091"),
        _ => (1_000_000, "1"),
    }
}
