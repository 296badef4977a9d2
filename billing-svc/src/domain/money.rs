//! Money formatting for providers that speak decimal strings (Alipay's yuan with two decimals).
//!
//! Amounts live in minor units (fen) everywhere in billing; these functions convert at the wire
//! with integer arithmetic only, so no amount is ever rounded through a float.

/// Why a yuan string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("empty amount")]
    Empty,
    /// Anything but digits with an optional `.` and one or two decimals (signs, spaces, exponents).
    #[error("malformed amount {0:?}")]
    Malformed(String),
    #[error("amount {0:?} has more than two decimals")]
    TooManyDecimals(String),
    #[error("amount {0:?} does not fit in 64 bits of fen")]
    Overflow(String),
}

/// Formats minor units as yuan with exactly two decimals: 1999 → `19.99`, 5 → `0.05`.
pub fn format_yuan(amount_minor: i64) -> String {
    let sign = if amount_minor < 0 { "-" } else { "" };
    // unsigned_abs: i64::MIN has no positive i64 counterpart.
    let magnitude = amount_minor.unsigned_abs();
    format!("{sign}{}.{:02}", magnitude / 100, magnitude % 100)
}

/// Parses a non-negative yuan amount (`19.99`, `19.9`, `19`) into minor units.
pub fn parse_yuan(text: &str) -> Result<i64, MoneyError> {
    if text.is_empty() {
        return Err(MoneyError::Empty);
    }
    let malformed = || MoneyError::Malformed(text.to_owned());
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    if whole.is_empty() || !whole.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(malformed());
    }
    let fraction_fen = match fraction {
        None => 0,
        Some(digits) => {
            if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(malformed());
            }
            if digits.len() > 2 {
                return Err(MoneyError::TooManyDecimals(text.to_owned()));
            }
            // "9" means 90 fen, "09" means 9 fen.
            digits
                .bytes()
                .chain(std::iter::repeat(b'0'))
                .take(2)
                .fold(0_i64, |fen, digit| fen * 10 + i64::from(digit - b'0'))
        }
    };
    let overflow = || MoneyError::Overflow(text.to_owned());
    let yuan = whole.bytes().try_fold(0_i64, |yuan, digit| {
        yuan.checked_mul(10)?.checked_add(i64::from(digit - b'0'))
    });
    yuan.ok_or_else(overflow)?
        .checked_mul(100)
        .and_then(|fen| fen.checked_add(fraction_fen))
        .ok_or_else(overflow)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn formats_with_exactly_two_decimals() {
        assert_eq!(format_yuan(1999), "19.99");
        assert_eq!(format_yuan(5), "0.05");
        assert_eq!(format_yuan(100), "1.00");
        assert_eq!(format_yuan(0), "0.00");
        assert_eq!(format_yuan(10), "0.10");
        assert_eq!(format_yuan(-1999), "-19.99");
        assert_eq!(format_yuan(i64::MAX), "92233720368547758.07");
        assert_eq!(format_yuan(i64::MIN), "-92233720368547758.08");
    }

    #[test]
    fn parses_zero_one_or_two_decimals() {
        assert_eq!(parse_yuan("19.99"), Ok(1999));
        assert_eq!(parse_yuan("19.9"), Ok(1990));
        assert_eq!(parse_yuan("19"), Ok(1900));
        assert_eq!(parse_yuan("0.05"), Ok(5));
        assert_eq!(parse_yuan("0.5"), Ok(50));
        assert_eq!(parse_yuan("0"), Ok(0));
        assert_eq!(parse_yuan("007.00"), Ok(700));
        assert_eq!(parse_yuan("100000000.00"), Ok(10_000_000_000));
    }

    #[test]
    fn parses_up_to_the_largest_amount_and_refuses_one_fen_more() {
        assert_eq!(parse_yuan("92233720368547758.07"), Ok(i64::MAX));
        assert_eq!(
            parse_yuan("92233720368547758.08"),
            Err(MoneyError::Overflow("92233720368547758.08".to_owned()))
        );
        assert!(matches!(
            parse_yuan("92233720368547759"),
            Err(MoneyError::Overflow(_))
        ));
        assert!(matches!(
            parse_yuan("99999999999999999999999"),
            Err(MoneyError::Overflow(_))
        ));
    }

    #[test]
    fn refuses_what_is_not_a_plain_decimal() {
        assert_eq!(parse_yuan(""), Err(MoneyError::Empty));
        for text in [
            "-1.00", "+1.00", " 1.00", "1.00 ", "1 .00", "1.", ".5", ".", "1.2.3", "1,00", "1e2",
            "NaN", "１.00", "0x10", "1._0",
        ] {
            assert_eq!(
                parse_yuan(text),
                Err(MoneyError::Malformed(text.to_owned())),
                "{text:?}"
            );
        }
        assert_eq!(
            parse_yuan("19.999"),
            Err(MoneyError::TooManyDecimals("19.999".to_owned()))
        );
        assert_eq!(
            parse_yuan("0.000"),
            Err(MoneyError::TooManyDecimals("0.000".to_owned()))
        );
    }

    proptest! {
        #[test]
        fn parsing_a_formatted_amount_gives_it_back(amount in 0..=i64::MAX) {
            prop_assert_eq!(parse_yuan(&format_yuan(amount)), Ok(amount));
        }

        #[test]
        fn one_decimal_means_tens_of_fen(yuan in 0..=1_000_000_000_i64, tenths in 0..=9_i64) {
            prop_assert_eq!(parse_yuan(&format!("{yuan}.{tenths}")), Ok(yuan * 100 + tenths * 10));
        }

        #[test]
        fn parsing_never_panics(text in "\\PC{0,24}") {
            let _ = parse_yuan(&text);
        }
    }
}
