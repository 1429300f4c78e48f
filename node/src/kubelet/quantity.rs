//! Resource quantities (`100m`, `128Mi`, `1e3`, `2`) as the kubelet needs them: parsed to a
//! rational-free fixed point in milli-units, enough for CPU, memory and storage.

/// A quantity in milli-units (`1` = 1000, `100m` = 100, `1Ki` = 1,024,000). Saturates at
/// `i128::MAX` instead of overflowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Milli(pub i128);

impl Milli {
    /// Whole units rounded up (upstream's `Value()` for a resource quantity).
    pub fn ceil_units(self) -> i128 {
        if self.0 >= 0 {
            (self.0 + 999) / 1000
        } else {
            self.0 / 1000
        }
    }
}

/// Parses a Kubernetes quantity. `None` when it is not one.
pub fn parse(q: &str) -> Option<Milli> {
    let q = q.trim();
    if q.is_empty() || q.len() > 64 {
        return None;
    }
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    // Decimal exponent forms: 1e3, 1E-3.
    let (mult_num, mult_den, exp10): (i128, i128, i32) = match suffix {
        "" => (1, 1, 0),
        "m" => (1, 1000, 0),
        "u" => (1, 1_000_000, 0),
        "n" => (1, 1_000_000_000, 0),
        "k" => (1000, 1, 0),
        "M" => (1_000_000, 1, 0),
        "G" => (1_000_000_000, 1, 0),
        "T" => (1_000_000_000_000, 1, 0),
        "P" => (1_000_000_000_000_000, 1, 0),
        "E" => (1_000_000_000_000_000_000, 1, 0),
        "Ki" => (1 << 10, 1, 0),
        "Mi" => (1 << 20, 1, 0),
        "Gi" => (1 << 30, 1, 0),
        "Ti" => (1 << 40, 1, 0),
        "Pi" => (1 << 50, 1, 0),
        "Ei" => (1 << 60, 1, 0),
        s if s.starts_with(['e', 'E']) => (1, 1, s[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    let (neg, num) = match num.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // value = digits / 10^frac_len * mult * 10^exp10, in milli-units (x1000).
    let digits: i128 = format!("{int}{frac}").parse().ok()?;
    let mut num_v = digits.checked_mul(mult_num)?.checked_mul(1000)?;
    let mut den: i128 = mult_den.checked_mul(10i128.checked_pow(frac.len() as u32)?)?;
    if exp10 >= 0 {
        num_v = num_v.checked_mul(10i128.checked_pow(exp10 as u32)?)?;
    } else {
        den = den.checked_mul(10i128.checked_pow(exp10.unsigned_abs())?)?;
    }
    // Round up like upstream's scaled values (a quantity never loses its last milli-unit).
    let v = (num_v + den - 1) / den;
    Some(Milli(if neg { -v } else { v }))
}

/// A byte count from a quantity (`128Mi` -> 134217728), rounded up.
pub fn bytes(q: &str) -> Option<u64> {
    let v = parse(q)?.ceil_units();
    u64::try_from(v).ok()
}

/// Milli-units of a CPU quantity (`250m` -> 250, `2` -> 2000).
pub fn millicores(q: &str) -> Option<i64> {
    let v = parse(q)?.0;
    i64::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(parse("100m"), Some(Milli(100)));
        assert_eq!(parse("2"), Some(Milli(2000)));
        assert_eq!(parse("1.5"), Some(Milli(1500)));
        assert_eq!(bytes("128Mi"), Some(128 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(millicores("0.1"), Some(100));
        assert_eq!(parse("1Ki").unwrap().ceil_units(), 1024);
        assert_eq!(parse("1m").unwrap().ceil_units(), 1);
        assert_eq!(parse("abc"), None);
        assert_eq!(parse("1Qi"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("."), None);
    }
}
