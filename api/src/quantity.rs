//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`): parsed into integers with
//! upstream's rounding, and formatted back in canonical form.
//!
//! One parser for every crate (scheduler requests, kubelet limits and downward API, quota
//! usage): they must agree on what `0.1` or `1e3` is, so none keeps its own copy.

/// A string that is not a Kubernetes quantity, or one too large for an `i64` of milli-units.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid quantity {0:?}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' and fit in 63 bits of milli-units"
)]
pub struct QuantityError(pub String);

/// Longest quantity string accepted: bounds the work done on hostile input.
const MAX_LEN: usize = 64;

/// Parses a quantity into thousandths of its unit, rounding up as `Quantity.MilliValue()`
/// does (`100m` -> 100, `1` -> 1000, `1Ki` -> 1,024,000, `250u` -> 1).
pub fn parse_milli(s: &str) -> Result<i64, QuantityError> {
    let bad = || QuantityError(s.chars().take(MAX_LEN).collect());
    let t = s.trim();
    if t.is_empty() || t.len() > MAX_LEN {
        return Err(bad());
    }
    let (neg, body) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_end);
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(bad());
    }
    if frac_part.contains('.') || int_part.len() + frac_part.len() > 30 {
        return Err(bad());
    }
    // value = mantissa * bin_mult * 10^dec_exp
    let mantissa: i128 = format!("{int_part}{frac_part}")
        .parse()
        .map_err(|_| bad())?;
    let mut dec_exp: i32 = -(frac_part.len() as i32);
    let mut bin_mult: i128 = 1;
    match suffix {
        "" => {}
        "n" => dec_exp -= 9,
        "u" => dec_exp -= 6,
        "m" => dec_exp -= 3,
        "k" => dec_exp += 3,
        "M" => dec_exp += 6,
        "G" => dec_exp += 9,
        "T" => dec_exp += 12,
        "P" => dec_exp += 15,
        "E" => dec_exp += 18,
        "Ki" => bin_mult = 1 << 10,
        "Mi" => bin_mult = 1 << 20,
        "Gi" => bin_mult = 1 << 30,
        "Ti" => bin_mult = 1 << 40,
        "Pi" => bin_mult = 1 << 50,
        "Ei" => bin_mult = 1 << 60,
        other => {
            let exp = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))
                .ok_or_else(bad)?;
            let e: i32 = exp.parse().map_err(|_| bad())?;
            if !(-30..=30).contains(&e) {
                return Err(bad());
            }
            dec_exp += e;
        }
    }
    // In milli-units: mantissa * bin_mult * 10^(dec_exp + 3), rounded up (away from zero
    // for positive values, as upstream never loses the last milli-unit of a request).
    let e = dec_exp + 3;
    let base = mantissa.checked_mul(bin_mult).ok_or_else(bad)?;
    let milli = if e >= 0 {
        base.checked_mul(10i128.checked_pow(e as u32).ok_or_else(bad)?)
            .ok_or_else(bad)?
    } else {
        let d = 10i128.checked_pow(e.unsigned_abs()).ok_or_else(bad)?;
        (base + d - 1) / d
    };
    i64::try_from(if neg { -milli } else { milli }).map_err(|_| bad())
}

/// Parses a quantity into whole units, rounding up as `Quantity.Value()` does
/// (`1m` -> 1, `128Mi` -> 134217728).
pub fn parse_value(s: &str) -> Result<i64, QuantityError> {
    Ok(milli_to_value(parse_milli(s)?))
}

/// Whole units of a milli-unit count, rounded up like `Quantity.Value()`.
pub fn milli_to_value(milli: i64) -> i64 {
    if milli >= 0 {
        milli / 1000 + i64::from(milli % 1000 != 0)
    } else {
        milli / 1000
    }
}

/// Canonical decimal form of a milli-unit count, as upstream prints CPU: whole units when
/// exact (`2`), else milli-units (`250m`).
pub fn format_decimal_milli(milli: i64) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

/// Canonical binary form of a byte count, as upstream prints memory: the largest binary
/// suffix that divides it exactly (`134217728` -> `128Mi`, `1000` -> `1000`).
pub fn format_binary(value: i64) -> String {
    const SUFFIXES: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    if value != 0 {
        for (suffix, shift) in SUFFIXES {
            let unit = 1i64 << shift;
            if value % unit == 0 {
                return format!("{}{suffix}", value / unit);
            }
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_suffix_with_upstream_rounding() {
        let cases: &[(&str, i64, i64)] = &[
            ("100m", 100, 1),
            ("1", 1000, 1),
            ("1.5", 1500, 2),
            ("0.1", 100, 1),
            (".5", 500, 1),
            ("+2", 2000, 2),
            ("-1.5", -1500, -1),
            ("128Mi", 128 * 1024 * 1024 * 1000, 128 * 1024 * 1024),
            ("1Ki", 1_024_000, 1024),
            ("1G", 1_000_000_000_000, 1_000_000_000),
            ("2e3", 2_000_000, 2000),
            ("1E-3", 1, 1),
            ("1k", 1_000_000, 1000),
            ("250u", 1, 1),
            ("1n", 1, 1),
            ("0", 0, 0),
            (" 3 ", 3000, 3),
        ];
        for (s, milli, value) in cases {
            assert_eq!(parse_milli(s), Ok(*milli), "{s}");
            assert_eq!(parse_value(s), Ok(*value), "{s}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_quantity() {
        for bad in [
            "", "abc", "1Qi", "1..2", ".", "1e99", "--1", "1 Gi", "Mi", "8Ei", "1e",
        ] {
            assert!(parse_milli(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_milli(&"9".repeat(65)).is_err());
    }

    #[test]
    fn formats_round_trip() {
        for m in [0, 1, 250, 1000, 2500, 64_000] {
            assert_eq!(parse_milli(&format_decimal_milli(m)), Ok(m));
        }
        assert_eq!(format_decimal_milli(2000), "2");
        assert_eq!(format_decimal_milli(250), "250m");
        assert_eq!(format_binary(128 << 20), "128Mi");
        assert_eq!(format_binary(1000), "1000");
        assert_eq!(format_binary(0), "0");
        for v in [0, 1, 1000, 1 << 10, 3 << 30, 5 << 40] {
            assert_eq!(parse_value(&format_binary(v)), Ok(v));
        }
    }
}
