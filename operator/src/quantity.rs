//! Kubernetes resource quantities (`500m`, `1Gi`, `0.5`, `1e3`) compared by value.
//!
//! The API server stores quantities in canonical form (`1024Mi` comes back as `1Gi`, `0.5` as
//! `500m`), so comparing the strings a user wrote with the ones the server returns would see a
//! difference forever. Values are parsed into an exact rational (a signed integer times a power
//! of ten), so `1Gi` and `1073741824` are equal and `1.5Gi` is greater than `1536Mi - 1`.

use std::cmp::Ordering;

/// A parsed quantity: `mantissa * 10^exponent`, exact.
#[derive(Clone, Copy, Debug)]
pub struct Quantity {
    mantissa: i128,
    exponent: i32,
}

impl Quantity {
    /// Parses the Kubernetes quantity syntax: a signed decimal number followed by a binary suffix
    /// (`Ki` … `Ei`), a decimal suffix (`n`, `u`, `m`, `k`, `M` … `E`) or an exponent (`e3`).
    /// `None` when the text is not a quantity or does not fit in 128 bits.
    pub fn parse(text: &str) -> Option<Quantity> {
        let text = text.trim();
        let number_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(number_end);
        let (negative, digits) = match number.as_bytes().first()? {
            b'-' => (true, &number[1..]),
            b'+' => (false, &number[1..]),
            _ => (false, number),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && fraction.is_empty()
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let mut mantissa: i128 = 0;
        for b in whole.bytes().chain(fraction.bytes()) {
            mantissa = mantissa
                .checked_mul(10)?
                .checked_add(i128::from(b - b'0'))?;
        }
        let mut exponent = -i32::try_from(fraction.len()).ok()?;
        let (multiplier, shift): (i128, i32) = match suffix {
            "" => (1, 0),
            "Ki" => (1 << 10, 0),
            "Mi" => (1 << 20, 0),
            "Gi" => (1 << 30, 0),
            "Ti" => (1 << 40, 0),
            "Pi" => (1 << 50, 0),
            "Ei" => (1 << 60, 0),
            "n" => (1, -9),
            "u" => (1, -6),
            "m" => (1, -3),
            "k" => (1, 3),
            "M" => (1, 6),
            "G" => (1, 9),
            "T" => (1, 12),
            "P" => (1, 15),
            "E" => (1, 18),
            s if s.starts_with(['e', 'E']) && s.len() > 1 => (1, s[1..].parse().ok()?),
            _ => return None,
        };
        mantissa = mantissa.checked_mul(multiplier)?;
        exponent = exponent.checked_add(shift)?;
        if negative {
            mantissa = -mantissa;
        }
        Some(Quantity { mantissa, exponent })
    }

    /// Both values scaled to the same exponent, or `None` when that overflows.
    fn aligned(self, other: Quantity) -> Option<(i128, i128)> {
        let exponent = self.exponent.min(other.exponent);
        let scale = |q: Quantity| {
            let up = u32::try_from(q.exponent - exponent).ok()?;
            q.mantissa.checked_mul(10i128.checked_pow(up)?)
        };
        Some((scale(self)?, scale(other)?))
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.partial_cmp(other) == Some(Ordering::Equal)
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        if let Some((a, b)) = self.aligned(*other) {
            return Some(a.cmp(&b));
        }
        // Exponents too far apart for exact alignment: the magnitudes differ by more than 10^38,
        // so the sign and exponent decide (exact for any quantity a cluster stores).
        let value = |q: &Quantity| q.mantissa as f64 * 10f64.powi(q.exponent);
        value(self).partial_cmp(&value(other))
    }
}

/// Whether two quantity strings have the same value; strings that are not quantities compare as
/// text.
pub fn same_value(a: &str, b: &str) -> bool {
    match (Quantity::parse(a), Quantity::parse(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        Quantity::parse(text).unwrap_or_else(|| panic!("{text} parses"))
    }

    #[test]
    fn canonical_and_user_forms_are_equal() {
        assert_eq!(q("1Gi"), q("1024Mi"));
        assert_eq!(q("0.5"), q("500m"));
        assert_eq!(q("1k"), q("1e3"));
        assert_eq!(q("1073741824"), q("1Gi"));
        assert_eq!(q("1.5Gi"), q("1536Mi"));
        assert_eq!(q("+2"), q("2000m"));
        assert!(same_value("100m", "0.1"));
        assert!(same_value("abc", "abc"));
        assert!(!same_value("1Gi", "1G"));
    }

    #[test]
    fn ordering_is_by_value() {
        assert!(q("2Gi") > q("1Gi"));
        assert!(q("1Gi") > q("1G"));
        assert!(q("999Mi") < q("1Gi"));
        assert!(q("-1") < q("1m"));
        assert!(q("1n") < q("1u"));
        assert!(q("1E") > q("1n"));
    }

    #[test]
    fn malformed_text_is_not_a_quantity() {
        for text in ["", "Gi", "1.2.3", "1Xi", "--1", "1 Gi", ".", "1e"] {
            assert!(Quantity::parse(text).is_none(), "{text:?} must not parse");
        }
        assert!(Quantity::parse(".5").is_some());
    }
}
