//! The PAN guard: no card number may reach the bus.
//!
//! A possible card number (PAN) is any 13 to 19 digits that pass the Luhn check, written
//! together or with up to two separators between digits ("4111 1111 1111 1111",
//! "4111-1111-1111-1111", "4111.1111.1111.1111", "4111/1111/1111/1111", "4111  1111 …").
//! Separators are spaces (including no-break, thin and figure spaces), hyphens and dashes, '.'
//! and '/'; zero-width characters are ignored altogether, as they are invisible. Full-width
//! digits and separators (０-９, '　', '－', '‐', '．', '／') count too, since Japanese systems
//! produce them.
//!
//! Digits are grouped by separators into chains; every run of consecutive groups in a chain that
//! holds 13 to 19 digits is checked, so a PAN written next to another number
//! is still found. A PAN glued to other digits ("00" + PAN, PAN + "1234") is found too: any 13
//! to 19 digits inside a longer run count when they also begin and are as long as a card number
//! of a major brand (Visa, Mastercard, Amex, JCB, Diners, Discover, UnionPay) — without that
//! rule nearly every reference number of 20 digits or more would hold a Luhn-valid window. In
//! identifiers the other digits must be on one side only, four at most ([`Glued::AtAnEnd`]): long numeric
//! identifiers such as acquirer reference numbers are common, card numbers glued inside them
//! on both sides are not. Ordinary values stay clear: amounts use commas, phone numbers and dates have
//! fewer than 13 digits. Two dates in a row ("2026-11-23 2026-11-24") hold 16 digits and pass
//! Luhn about one time in ten; such text belongs in date fields, not in free text.
//!
//! Text shaped like a UUID (8-4-4-4-12 hex digits) is an identifier, not a number, and is passed
//! over: random UUIDs often hold hyphen-joined digit runs that would otherwise pass Luhn.
//!
//! The guard only answers yes or no: the digits it found are never returned, logged or stored.

/// Where a card number glued to other digits is looked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Glued {
    /// Anywhere inside a longer run of digits ("7" + PAN + "9"): free text.
    Anywhere,
    /// Only with up to four other digits on one side ("00" + PAN, PAN + "0001"), how an
    /// identifier built from a card number looks. Long numeric identifiers (an acquirer reference
    /// number has 23 digits) would otherwise be refused far too often; see `docs/issuers.md`.
    AtAnEnd,
}

/// Whether free text (`text`) contains a possible card number.
pub fn contains_pan(text: &str) -> bool {
    contains_pan_glued(text, Glued::Anywhere)
}

/// Whether an identifier (`text`) contains a possible card number.
pub fn identifier_contains_pan(text: &str) -> bool {
    contains_pan_glued(text, Glued::AtAnEnd)
}

fn contains_pan_glued(text: &str, glued: Glued) -> bool {
    // Fast path: most fields have far fewer than 13 digits.
    if text.chars().filter(|c| digit_value(*c).is_some()).count() < MIN_DIGITS {
        return false;
    }
    let chars = mask_uuids(text);
    let mut groups: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    // Separators seen since the last digit.
    let mut separators = 0usize;
    for c in chars {
        if is_invisible(c) {
            continue;
        }
        if let Some(d) = digit_value(c) {
            if separators > 0 && !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
            separators = 0;
            current.push(d);
        } else if is_separator(c) && !current.is_empty() && separators < MAX_SEPARATORS {
            separators += 1;
        } else {
            // Anything else (or a third separator) ends the chain.
            if !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
            if chain_has_pan(&groups, glued) {
                return true;
            }
            groups.clear();
            separators = 0;
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    chain_has_pan(&groups, glued)
}

const MIN_DIGITS: usize = 13;
/// Separators allowed between two digit groups of one number ("4111  1111": two spaces).
const MAX_SEPARATORS: usize = 2;
const UUID_SHAPE: [usize; 5] = [8, 4, 4, 4, 12];

/// The text's characters with every UUID-shaped run replaced by a neutral letter.
fn mask_uuids(text: &str) -> Vec<char> {
    let mut chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i + 36 <= chars.len() {
        if is_uuid_at(&chars[i..i + 36]) {
            chars[i..i + 36].iter_mut().for_each(|c| *c = 'u');
            i += 36;
        } else {
            i += 1;
        }
    }
    chars
}

fn is_uuid_at(window: &[char]) -> bool {
    let mut pos = 0;
    for (g, len) in UUID_SHAPE.iter().enumerate() {
        if g > 0 {
            if window[pos] != '-' {
                return false;
            }
            pos += 1;
        }
        if !window[pos..pos + len].iter().all(char::is_ascii_hexdigit) {
            return false;
        }
        pos += len;
    }
    true
}
const MAX_DIGITS: usize = 19;

fn chain_has_pan(groups: &[Vec<u8>], glued: Glued) -> bool {
    let digits: Vec<u8> = groups.concat();
    if digits.len() < MIN_DIGITS {
        return false;
    }
    // Where the groups start and end in `digits`.
    let mut bounds = vec![0];
    for group in groups {
        bounds.push(bounds.last().copied().unwrap_or(0) + group.len());
    }
    for start in 0..=digits.len() - MIN_DIGITS {
        for len in MIN_DIGITS..=MAX_DIGITS.min(digits.len() - start) {
            let window = &digits[start..start + len];
            // A number of whole groups is a card number if it passes Luhn. One glued to other
            // digits must also look like a card number (a major brand's prefix and length), or
            // every long reference number would be taken for one.
            let (starts, ends) = (bounds.contains(&start), bounds.contains(&(start + len)));
            let considered = match glued {
                Glued::Anywhere => true,
                Glued::AtAnEnd => (starts || ends) && glued_digits(&bounds, start, len) <= MAX_GLUED_TO_IDENTIFIER,
            };
            let card_like = (starts && ends) || (considered && looks_like_a_card_number(window));
            if card_like && luhn_valid(window) {
                return true;
            }
        }
    }
    false
}

/// Other digits an identifier may hold glued to a card number ("00" + PAN, PAN + "0001").
const MAX_GLUED_TO_IDENTIFIER: usize = 4;

/// How many digits the groups that `start..start + len` touches hold besides it (`bounds`: where
/// the groups start and end, ascending).
fn glued_digits(bounds: &[usize], start: usize, len: usize) -> usize {
    let first = bounds.iter().rev().find(|b| **b <= start).copied().unwrap_or(0);
    let last = bounds.iter().find(|b| **b >= start + len).copied().unwrap_or(start + len);
    last - first - len
}

/// Whether `digits` begin and are as long as a card number of a major brand: Visa (4; 13, 16 or
/// 19 digits), Mastercard (51–55, 2221–2720; 16), American Express (34, 37; 15), JCB
/// (3528–3589; 16–19), Diners Club (300–305, 36, 38, 39; 14–19), Discover (6011, 644–649, 65;
/// 16–19) and UnionPay (62; 16–19).
fn looks_like_a_card_number(digits: &[u8]) -> bool {
    let prefix = |n: usize| digits.iter().take(n).fold(0u32, |acc, d| acc * 10 + u32::from(*d));
    let len = digits.len();
    let long = (16..=19).contains(&len);
    match digits.first() {
        Some(4) => matches!(len, 13 | 16 | 19),
        Some(5) => (51..=55).contains(&prefix(2)) && len == 16,
        Some(2) => (2221..=2720).contains(&prefix(4)) && len == 16,
        Some(3) => match prefix(2) {
            34 | 37 => len == 15,
            35 => (3528..=3589).contains(&prefix(4)) && long,
            30 => (300..=305).contains(&prefix(3)) && (14..=19).contains(&len),
            36 | 38 | 39 => (14..=19).contains(&len),
            _ => false,
        },
        Some(6) => (prefix(4) == 6011 || matches!(prefix(2), 62 | 65) || (644..=649).contains(&prefix(3))) && long,
        _ => false,
    }
}

/// The Luhn (mod 10) check over digit values.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn digit_value(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        // Full-width digits U+FF10..U+FF19.
        '\u{FF10}'..='\u{FF19}' => Some((c as u32 - 0xFF10) as u8),
        _ => None,
    }
}

fn is_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '-'
            | '.'
            | '/'
            | '\u{00A0}' // no-break space
            | '\u{2007}' // figure space
            | '\u{2009}' // thin space
            | '\u{202F}' // narrow no-break space
            | '\u{3000}' // ideographic space
            | '\u{FF0D}' // full-width hyphen-minus
            | '\u{FF0E}' // full-width full stop
            | '\u{FF0F}' // full-width solidus
            | '\u{2010}'
            | '\u{2011}'
            | '\u{2012}'
            | '\u{2013}'
            | '\u{2212}'
    )
}

/// Characters that do not show: a number split by them reads as one number.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Synthetic test numbers (issuer test ranges), used only to prove the guard works.
    const TEST_PANS: &[&str] =
        &["4111111111111111", "5555555555554444", "378282246310005", "3530111333300000", "6011111111111117"];

    #[test]
    fn finds_test_pans_in_every_common_form() {
        for pan in TEST_PANS {
            assert!(contains_pan(pan), "{pan}");
            let spaced: String = pan
                .chars()
                .collect::<Vec<_>>()
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join(" ");
            assert!(contains_pan(&spaced), "{spaced}");
            assert!(contains_pan(&spaced.replace(' ', "-")), "hyphenated {pan}");
            assert!(contains_pan(&format!("ご利用カード{pan}です")), "embedded {pan}");
            assert!(contains_pan(&format!("ref {pan} 2026")), "next to another number {pan}");
        }
    }

    #[test]
    fn finds_pans_behind_the_separators_and_invisible_characters_people_and_systems_use() {
        for pan in TEST_PANS {
            let groups: Vec<String> =
                pan.chars().collect::<Vec<_>>().chunks(4).map(|c| c.iter().collect::<String>()).collect();
            for separator in ["  ", "\u{00A0}", " \u{00A0}", ".", "/", "\u{202F}", "．", "／", "- "] {
                let text = groups.join(separator);
                assert!(contains_pan(&text), "{pan} joined by {separator:?}");
                assert!(contains_pan(&format!("カード番号:{text}。")), "embedded, joined by {separator:?}");
            }
            for invisible in ["\u{200B}", "\u{200D}", "\u{FEFF}", "\u{2060}", "\u{00AD}"] {
                let text: String = pan.chars().map(|c| format!("{c}{invisible}")).collect();
                assert!(contains_pan(&text), "{pan} with {invisible:?} between every digit");
            }
        }
        // Three separators in a row end a number: these are two numbers.
        assert!(!contains_pan("4111   1111111111111"));
    }

    #[test]
    fn finds_pans_glued_to_other_digits() {
        for pan in TEST_PANS {
            for text in [format!("00{pan}"), format!("{pan}1234"), format!("7{pan}9"), format!("ref 2026{pan}")] {
                assert!(contains_pan(&text), "{text}");
            }
            // Glued to a group of a chain: "1234 00" + PAN.
            assert!(contains_pan(&format!("1234 00{pan}")), "{pan} glued inside a chain");
        }
        // An unbroken 23-digit run holding a test card number.
        assert!(contains_pan("41111111111111111111111"));
    }

    #[test]
    fn how_often_long_reference_numbers_are_taken_for_glued_pans() {
        // Deterministic pseudo-random digits (SplitMix64): how many 20- and 23-digit reference
        // numbers hold a window that passes as a glued card number. Documented in docs/issuers.md.
        let mut state = 0x5EED_u64;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut rate = |len: usize, guard: fn(&str) -> bool| {
            let trials = 20_000;
            let flagged = (0..trials)
                .filter(|_| guard(&(0..len).map(|_| char::from(b'0' + (next() % 10) as u8)).collect::<String>()))
                .count();
            flagged as f64 / f64::from(trials)
        };
        for (len, free_text, identifier) in [(20, 0.35, 0.12), (23, 0.50, 0.04)] {
            let (t, i) = (rate(len, contains_pan), rate(len, identifier_contains_pan));
            eprintln!(
                "{len} random digits taken for a card number: {:.1}% in free text, {:.1}% in an identifier",
                t * 100.0,
                i * 100.0
            );
            assert!(t <= free_text && i <= identifier, "{len} digits: {t}, {i}");
        }
    }

    #[test]
    fn identifiers_built_from_card_numbers_are_found() {
        for pan in TEST_PANS {
            for id in [format!("00{pan}"), format!("{pan}0001"), format!("acct-{pan}"), format!("K{pan}A")] {
                assert!(identifier_contains_pan(&id), "{id}");
            }
        }
    }

    #[test]
    fn finds_full_width_pans() {
        assert!(contains_pan("４１１１　１１１１　１１１１　１１１１"));
        assert!(contains_pan("４１１１－１１１１－１１１１－１１１１"));
    }

    #[test]
    fn leaves_ordinary_values_alone() {
        for text in [
            "1,234,567",
            "¥12,345,678,901",
            "03-1234-5678",
            "090-1234-5678",
            "+81 90 1234 5678",
            "2026-11-23",
            "2026/11/23 12:34:56",
            "2026.11.23",
            "192.168.100.200",
            "11/23 ｾﾌﾞﾝｲﾚﾌﾞﾝ 1/3回",
            "20261123",
            "セブン-イレブン 渋谷店",
            "AMAZON.CO.JP 1234",
            "4111111111111112",        // fails Luhn
            "411111111111",            // 12 digits
            "12000000000000000000000", // 23 digits in one run: a reference number
        ] {
            assert!(!contains_pan(text), "{text}");
        }
    }

    #[test]
    fn uuids_are_identifiers_not_numbers() {
        // Random UUIDs whose hyphen-joined digit runs pass Luhn.
        assert!(!contains_pan("5308928b-8c90-5aa8-8118-2025543448ed"));
        assert!(!contains_pan("event 5308928b-8c90-5aa8-8118-2025543448ed retried"));
        // A PAN next to a UUID is still found.
        assert!(contains_pan("5308928b-8c90-5aa8-8118-2025543448ed 4111111111111111"));
    }

    #[test]
    fn luhn_matches_known_values() {
        assert!(luhn_valid(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
        assert!(!luhn_valid(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 4]));
    }

    /// Makes a Luhn-valid number of `len` digits from `body`.
    fn with_check_digit(mut body: Vec<u8>) -> Vec<u8> {
        body.push(0);
        for check in 0..10 {
            *body.last_mut().expect("non-empty") = check;
            if luhn_valid(&body) {
                break;
            }
        }
        body
    }

    proptest! {
        #[test]
        fn finds_any_luhn_valid_number_however_separated(
            body in proptest::collection::vec(0u8..10, 12..=18),
            cuts in proptest::collection::vec((any::<bool>(), 0u8..3), 19),
            prefix in "[a-zA-Zぁ-んァ-ヶ ]{0,10}",
            suffix in "[a-zA-Zぁ-んァ-ヶ ]{0,10}",
        ) {
            let digits = with_check_digit(body);
            let mut text = String::new();
            for (i, d) in digits.iter().enumerate() {
                if i > 0 && cuts[i].0 {
                    text.push([' ', '-', '\u{3000}'][usize::from(cuts[i].1)]);
                }
                text.push(char::from(b'0' + d));
            }
            // Letters around the number, but not touching it with a separator-like char.
            let text = format!("{prefix}x{text}x{suffix}");
            prop_assert!(contains_pan(&text), "missed {}", text);
        }

        #[test]
        fn ignores_amounts_phone_numbers_and_dates(
            amount in 0u64..1_000_000_000_000,
            area in 10u32..100, mid in 1000u32..10000, last in 1000u32..10000,
            y in 1990i32..2100, m in 1u32..=12, d in 1u32..=28,
        ) {
            let with_commas = {
                let raw = amount.to_string();
                let mut out = String::new();
                for (i, c) in raw.chars().enumerate() {
                    if i > 0 && (raw.len() - i) % 3 == 0 {
                        out.push(',');
                    }
                    out.push(c);
                }
                out
            };
            for text in [
                format!("¥{with_commas}"),
                format!("{with_commas}円"),
                format!("0{area}-{mid}-{last}"),
                format!("{y}-{m:02}-{d:02}"),
                format!("{y}/{m:02}/{d:02}"),
                format!("{y}{m:02}{d:02}"),
                format!("利用日 {y}年{m}月{d}日 金額 {with_commas}円"),
            ] {
                prop_assert!(!contains_pan(&text), "flagged {}", text);
            }
        }
    }
}
