//! Resource quantities (`100m`, `128Mi`, `1e3`, `2`) as the kubelet needs them, over the one
//! shared parser in `api::quantity`.

/// A quantity in milli-units (`1` = 1000, `100m` = 100, `1Ki` = 1,024,000).
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
    api::quantity::parse_milli(q)
        .ok()
        .map(|m| Milli(i128::from(m)))
}

/// A byte count from a quantity (`128Mi` -> 134217728), rounded up.
pub fn bytes(q: &str) -> Option<u64> {
    u64::try_from(api::quantity::parse_value(q).ok()?).ok()
}

/// Milli-units of a CPU quantity (`250m` -> 250, `2` -> 2000).
pub fn millicores(q: &str) -> Option<i64> {
    api::quantity::parse_milli(q).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(parse("100m"), Some(Milli(100)));
        assert_eq!(parse("2"), Some(Milli(2000)));
        assert_eq!(bytes("128Mi"), Some(128 << 20));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("-1"), None);
        assert_eq!(millicores("0.1"), Some(100));
        assert_eq!(parse("1Ki").unwrap().ceil_units(), 1024);
        assert_eq!(parse("1m").unwrap().ceil_units(), 1);
        assert_eq!(parse("1Qi"), None);
    }
}
