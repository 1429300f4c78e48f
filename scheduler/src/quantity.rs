//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`) parsed into integers.

use crate::Error;

/// Parses a quantity into thousandths of its unit, rounding up as `Quantity.MilliValue()` does.
pub fn parse_milli(s: &str) -> Result<i64, Error> {
    let bad = || Error::Quantity(s.to_owned());
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return Err(bad());
    }
    let (neg, body) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_end);
    if num.is_empty() || num == "." {
        return Err(bad());
    }
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if frac_part.contains('.') || int_part.len() + frac_part.len() > 30 {
        return Err(bad());
    }
    // mantissa * 10^-scale
    let digits = format!("{int_part}{frac_part}");
    let mantissa: i128 = digits.parse().map_err(|_| bad())?;
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
    // value in milli = mantissa * bin_mult * 10^(dec_exp + 3), rounded up.
    let e = dec_exp + 3;
    let base = mantissa.checked_mul(bin_mult).ok_or_else(bad)?;
    let milli = if e >= 0 {
        base.checked_mul(10i128.checked_pow(e as u32).ok_or_else(bad)?)
            .ok_or_else(bad)?
    } else {
        let d = 10i128.checked_pow((-e) as u32).ok_or_else(bad)?;
        (base + d - 1) / d
    };
    let milli = if neg { -milli } else { milli };
    i64::try_from(milli).map_err(|_| bad())
}

/// Parses a quantity into whole units, rounding up as `Quantity.Value()` does.
pub fn parse_value(s: &str) -> Result<i64, Error> {
    let m = parse_milli(s)?;
    Ok(if m >= 0 { (m + 999) / 1000 } else { m / 1000 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_suffixes() {
        let cases: &[(&str, i64, i64)] = &[
            ("100m", 100, 1),
            ("1", 1000, 1),
            ("1.5", 1500, 2),
            ("0.1", 100, 1),
            ("128Mi", 128 * 1024 * 1024 * 1000, 128 * 1024 * 1024),
            ("1Gi", (1 << 30), 1 << 30),
            ("1G", 1_000_000_000_000, 1_000_000_000),
            ("2e3", 2_000_000, 2000),
            ("1k", 1_000_000, 1000),
            ("250u", 1, 1),
            ("0", 0, 0),
        ];
        for (s, milli, value) in cases {
            let m = parse_milli(s).unwrap();
            if *s == "1Gi" {
                assert_eq!(m, (1i64 << 30) * 1000);
            } else {
                assert_eq!(m, *milli, "{s}");
            }
            assert_eq!(parse_value(s).unwrap(), *value, "{s}");
        }
        for bad in ["", "abc", "1Qi", "1..2", ".", "1e99"] {
            assert!(parse_milli(bad).is_err(), "{bad}");
        }
    }
}
