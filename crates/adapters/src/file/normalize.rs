//! What issuers' files really contain, turned into clean values.
//!
//! - Text: NFKC folds half-width katakana (ｾﾌﾞﾝ → セブン) and full-width letters and digits
//!   (ＡＢＣ１２３ → ABC123); runs of spaces (including the ideographic space) become one.
//! - Amounts: `1,234`, `¥1,234`, `￥１，２３４`, `1234円`, and negatives as `-1,234` or with the
//!   accounting markers `▲` / `△`.
//! - Dates: `2026/11/23`, `2026/1/5`, `20261123`, `2026-11-23`, `2026年11月23日`.
//! - Times: a date followed by `HH:MM` or `HH:MM:SS` (Asia/Tokyo).

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc};
use unicode_normalization::UnicodeNormalization;

/// Asia/Tokyo has had no daylight saving since 1951: a fixed +09:00.
pub fn jst() -> FixedOffset {
    FixedOffset::east_opt(9 * 3600).expect("+09:00 is a valid offset")
}

/// NFKC, trimmed, with inner whitespace runs collapsed to one ASCII space.
pub fn text(raw: &str) -> String {
    let folded: String = raw.nfkc().collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An integer amount in minor units.
pub fn amount(raw: &str) -> Option<i64> {
    let t = text(raw);
    let mut negative = false;
    let mut digits = String::with_capacity(t.len());
    for (i, c) in t.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            ',' | '¥' | '円' | ' ' | '\\' => {}
            '-' | '−' | '▲' | '△' if i == 0 || digits.is_empty() => negative = true,
            _ => return None,
        }
    }
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let value: i64 = digits.parse().ok()?;
    Some(if negative { -value } else { value })
}

/// A calendar date in one of the formats issuers use.
pub fn date(raw: &str) -> Option<NaiveDate> {
    let t = text(raw);
    let t = t.replace(['年', '月'], "/").replace('日', "");
    let t = t.trim();
    if t.len() == 8 && t.bytes().all(|b| b.is_ascii_digit()) {
        return NaiveDate::parse_from_str(t, "%Y%m%d").ok();
    }
    let parts: Vec<&str> = t.split(['/', '-', '.']).collect();
    if parts.len() != 3 || parts[0].len() != 4 {
        return None;
    }
    let y: i32 = parts[0].parse().ok()?;
    let m: u32 = parts[1].parse().ok()?;
    let d: u32 = parts[2].parse().ok()?;
    NaiveDate::from_ymd_opt(y, m, d)
}

/// An instant: a date and an optional time of day, in Asia/Tokyo.
pub fn instant(raw: &str) -> Option<DateTime<Utc>> {
    let t = text(raw).replace('T', " ");
    let (day, time) = match t.split_once(' ') {
        Some((d, tm)) => (d, Some(tm)),
        None => (t.as_str(), None),
    };
    let date = date(day)?;
    let time = match time {
        None => NaiveTime::MIN,
        Some(tm) => {
            NaiveTime::parse_from_str(tm, "%H:%M:%S").or_else(|_| NaiveTime::parse_from_str(tm, "%H:%M")).ok()?
        }
    };
    jst().from_local_datetime(&date.and_time(time)).single().map(|t| t.with_timezone(&Utc))
}

/// `YYYY-MM` from `2026/12`, `202612`, `2026-12`, `2026年12月`.
pub fn month(raw: &str) -> Option<String> {
    let t = text(raw).replace('年', "/").replace('月', "");
    let t = t.trim();
    let (y, m) = if t.len() == 6 && t.bytes().all(|b| b.is_ascii_digit()) {
        (t[..4].parse::<i32>().ok()?, t[4..].parse::<u32>().ok()?)
    } else {
        let (y, m) = t.split_once(['/', '-'])?;
        (y.parse().ok()?, m.parse().ok()?)
    };
    NaiveDate::from_ymd_opt(y, m, 1).map(|_| format!("{y:04}-{m:02}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_folds_half_width_katakana_and_full_width_alphanumerics() {
        assert_eq!(text("ｾﾌﾞﾝｲﾚﾌﾞﾝ  ｼﾌﾞﾔ"), "セブンイレブン シブヤ");
        assert_eq!(text("ＡＭＡＺＯＮ．ＣＯ．ＪＰ　１２３"), "AMAZON.CO.JP 123");
        assert_eq!(text("  ﾛｰｿﾝ\u{3000}"), "ローソン");
    }

    #[test]
    fn amounts_as_issuers_write_them() {
        for (raw, want) in [
            ("1,234", Some(1234)),
            ("¥1,234", Some(1234)),
            ("￥１，２３４", Some(1234)),
            ("1234円", Some(1234)),
            ("-1,234", Some(-1234)),
            ("▲1,234", Some(-1234)),
            ("△500", Some(-500)),
            ("0", Some(0)),
            ("", None),
            ("12.50", None),
            ("1,2a4", None),
            ("9999999999999999", None),
        ] {
            assert_eq!(amount(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn dates_in_every_issuer_format() {
        let want = NaiveDate::from_ymd_opt(2026, 11, 23);
        for raw in ["2026/11/23", "20261123", "2026-11-23", "２０２６/１１/２３", "2026年11月23日"] {
            assert_eq!(date(raw), want, "{raw:?}");
        }
        assert_eq!(date("2026/1/5"), NaiveDate::from_ymd_opt(2026, 1, 5));
        for raw in ["2026/13/01", "2026/02/30", "23/11/2026", "", "20261"] {
            assert_eq!(date(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn instants_are_tokyo_time() {
        let t = instant("2026/11/23 09:30").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-23T00:30:00+00:00");
        assert_eq!(instant("20261123").unwrap().to_rfc3339(), "2026-11-22T15:00:00+00:00");
        assert!(instant("2026/11/23 25:00").is_none());
    }

    #[test]
    fn months() {
        for raw in ["2026/12", "202612", "2026-12", "2026年12月"] {
            assert_eq!(month(raw).as_deref(), Some("2026-12"), "{raw:?}");
        }
        assert_eq!(month("2026/13"), None);
    }
}
