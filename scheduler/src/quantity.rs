//! Kubernetes resource quantities for the scheduler: `api::quantity` with this crate's error.

use crate::Error;

/// Parses a quantity into thousandths of its unit, rounding up as `Quantity.MilliValue()` does.
pub fn parse_milli(s: &str) -> Result<i64, Error> {
    api::quantity::parse_milli(s).map_err(|_| Error::Quantity(s.to_owned()))
}

/// Parses a quantity into whole units, rounding up as `Quantity.Value()` does.
pub fn parse_value(s: &str) -> Result<i64, Error> {
    api::quantity::parse_value(s).map_err(|_| Error::Quantity(s.to_owned()))
}
