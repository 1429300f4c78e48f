//! Cron schedules as the CronJob controller reads them (robfig/cron's standard parser, which
//! upstream uses; read, not copied): five fields `minute hour day-of-month month
//! day-of-week`, each a comma list of `*`, `?`, `N`, `A-B`, with an optional `/STEP`; month
//! and weekday names (`JAN`, `mon`); the descriptors `@yearly`/`@annually`, `@monthly`,
//! `@weekly`, `@daily`/`@midnight`, `@hourly`; and a `CRON_TZ=Zone ` or `TZ=Zone ` prefix.
//!
//! Day matching follows robfig: when either day field is a bare `*`/`?`, both must match;
//! otherwise either may. Times are civil times in the schedule's zone (IANA names through
//! jiff's bundled database); a civil time in a DST gap fires at the shifted instant.

use k8s_openapi::jiff::civil::DateTime;
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{Timestamp, ToSpan};

/// A schedule that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid schedule {schedule:?}: {why}")]
pub struct ParseError {
    /// The schedule.
    pub schedule: String,
    /// What is wrong.
    pub why: String,
}

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// Either day field was a bare `*` or `?`.
    day_star: bool,
    /// The `CRON_TZ=`/`TZ=` zone name, if any.
    pub zone: Option<String>,
}

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DOW: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// Bounded search: robfig gives up after five years.
const MAX_YEARS: i16 = 5;
const MAX_STEPS: u32 = 200_000;

fn value(s: &str, b: &Bounds) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(b.min + u32::try_from(i).unwrap_or(0));
    }
    s.parse::<u32>().map_err(|_| format!("bad value {s:?}"))
}

/// One field: (bits, was it a bare star).
fn field(expr: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in expr.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                Some(s.parse::<u32>().map_err(|_| format!("bad step {s:?}"))?),
            ),
            None => (part, None),
        };
        let (mut lo, mut hi, is_star) = if range == "*" || range == "?" {
            (b.min, b.max, true)
        } else if let Some((a, z)) = range.split_once('-') {
            (value(a, b)?, value(z, b)?, false)
        } else {
            let v = value(range, b)?;
            (v, v, false)
        };
        if let Some(st) = step {
            if st == 0 {
                return Err("step of zero".into());
            }
            if !is_star && !range.contains('-') {
                hi = b.max; // `N/S` means `N-max/S`
            }
        }
        if lo < b.min || hi > b.max || lo > hi {
            return Err(format!("{part:?} is outside {}-{}", b.min, b.max));
        }
        let st = step.unwrap_or(1);
        star |= is_star && st == 1;
        while lo <= hi {
            bits |= 1u64 << lo;
            lo += st;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    /// Parses a schedule.
    pub fn parse(spec: &str) -> Result<Self, ParseError> {
        let err = |why: String| ParseError {
            schedule: spec.to_string(),
            why,
        };
        let mut s = spec.trim();
        let mut zone = None;
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = s.strip_prefix(prefix) {
                let (z, r) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| err("a time zone and nothing else".into()))?;
                zone = Some(z.to_string());
                s = r.trim();
            }
        }
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            d if d.starts_with('@') => return Err(err(format!("unsupported descriptor {d:?}"))),
            other => other,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(err(format!("expected 5 fields, found {}", f.len())));
        }
        let (minute, _) = field(f[0], &MINUTE).map_err(err)?;
        let (hour, _) = field(f[1], &HOUR).map_err(err)?;
        let (dom, dom_star) = field(f[2], &DOM).map_err(err)?;
        let (month, _) = field(f[3], &MONTH).map_err(err)?;
        let (dow, dow_star) = field(f[4], &DOW).map_err(err)?;
        Ok(Self {
            minute,
            hour,
            dom,
            month,
            dow,
            day_star: dom_star || dow_star,
            zone,
        })
    }

    fn has(bits: u64, v: i8) -> bool {
        u32::try_from(v).is_ok_and(|v| bits & (1u64 << v) != 0)
    }

    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = Self::has(self.dom, dt.day());
        let dow = Self::has(self.dow, dt.weekday().to_sunday_zero_offset());
        if self.day_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time strictly after `after` at which the schedule fires in `tz`; None when
    /// it never fires within five years.
    pub fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = tz.to_datetime(after);
        // The next whole minute.
        let mut t = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.year().saturating_add(MAX_YEARS);
        for _ in 0..MAX_STEPS {
            if t.year() > limit {
                return None;
            }
            if !Self::has(self.month, t.month()) {
                t = t
                    .first_of_month()
                    .start_of_day()
                    .checked_add(1.month())
                    .ok()?;
                continue;
            }
            if !self.day_matches(t) {
                t = t.start_of_day().checked_add(1.day()).ok()?;
                continue;
            }
            if !Self::has(self.hour, t.hour()) {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if !Self::has(self.minute, t.minute()) {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            let ts = tz.to_ambiguous_timestamp(t).compatible().ok()?;
            if ts > after {
                return Some(ts);
            }
            // A repeated (fall-back) hour already passed in absolute time.
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// The latest firing time in `(earliest, now]`, and how many firings that interval
    /// holds, counted up to `cap + 1` (upstream warns past 100 missed starts).
    pub fn most_recent(
        &self,
        earliest: Timestamp,
        now: Timestamp,
        tz: &TimeZone,
        cap: u32,
    ) -> (Option<Timestamp>, u32) {
        // Count forward from `earliest`, at most cap+1 firings.
        let mut count = 0;
        let mut t = earliest;
        let mut last = None;
        while count <= cap {
            match self.next(t, tz) {
                Some(n) if n <= now => {
                    count += 1;
                    last = Some(n);
                    t = n;
                }
                _ => return (last, count),
            }
        }
        // More than `cap`: find the latest one from windows ending at `now`, widening.
        for hours in [1i64, 24, 24 * 32, 24 * 367, 24 * 367 * 5] {
            let from = now
                .checked_sub(hours.hours())
                .unwrap_or(earliest)
                .max(earliest);
            let mut t = from;
            let mut latest = None;
            for _ in 0..MAX_STEPS {
                match self.next(t, tz) {
                    Some(n) if n <= now => {
                        latest = Some(n);
                        t = n;
                    }
                    _ => break,
                }
            }
            if latest.is_some() {
                return (latest, count);
            }
        }
        (last, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn utc() -> TimeZone {
        TimeZone::UTC
    }

    #[test]
    fn next_times_table() {
        let cases = [
            (
                "*/1 * * * *",
                "2026-01-01T00:00:30Z",
                "2026-01-01T00:01:00Z",
            ),
            (
                "*/15 * * * *",
                "2026-01-01T00:01:00Z",
                "2026-01-01T00:15:00Z",
            ),
            ("5 4 * * *", "2026-01-01T04:05:00Z", "2026-01-02T04:05:00Z"),
            ("0 0 1 1 *", "2026-03-01T00:00:00Z", "2027-01-01T00:00:00Z"),
            ("@hourly", "2026-01-01T10:59:59Z", "2026-01-01T11:00:00Z"),
            ("@daily", "2026-01-01T10:00:00Z", "2026-01-02T00:00:00Z"),
            ("@weekly", "2026-01-01T10:00:00Z", "2026-01-04T00:00:00Z"), // a Sunday
            (
                "0 9 * * MON-FRI",
                "2026-01-02T10:00:00Z",
                "2026-01-05T09:00:00Z",
            ),
            (
                "0 0 * FEB *",
                "2026-03-01T00:00:00Z",
                "2027-02-01T00:00:00Z",
            ),
            (
                "30 2 29 2 *",
                "2026-01-01T00:00:00Z",
                "2028-02-29T02:30:00Z",
            ),
            (
                "0 12 1-7/3 * ?",
                "2026-01-02T00:00:00Z",
                "2026-01-04T12:00:00Z",
            ),
            ("0 0 13 * 5", "2026-02-01T00:00:00Z", "2026-02-06T00:00:00Z"), // dom OR dow
            (
                "10,20 1 * * *",
                "2026-01-01T01:10:00Z",
                "2026-01-01T01:20:00Z",
            ),
            (
                "0 22/1 * * *",
                "2026-01-01T21:00:00Z",
                "2026-01-01T22:00:00Z",
            ),
        ];
        for (spec, after, want) in cases {
            let s = Schedule::parse(spec).unwrap();
            assert_eq!(
                s.next(at(after), &utc()),
                Some(at(want)),
                "{spec} after {after}"
            );
        }
    }

    #[test]
    fn zones_and_dst() {
        let s = Schedule::parse("CRON_TZ=America/New_York 30 2 * * *").unwrap();
        let tz = TimeZone::get(s.zone.as_deref().unwrap()).unwrap();
        // 02:30 EST is 07:30Z.
        assert_eq!(
            s.next(at("2026-01-10T00:00:00Z"), &tz),
            Some(at("2026-01-10T07:30:00Z"))
        );
        // 2026-03-08 02:30 does not exist (spring forward): fires at 03:30 EDT = 07:30Z.
        assert_eq!(
            s.next(at("2026-03-08T00:00:00Z"), &tz),
            Some(at("2026-03-08T07:30:00Z"))
        );
        let t = Schedule::parse("TZ=Asia/Tokyo 0 9 * * *").unwrap();
        assert_eq!(t.zone.as_deref(), Some("Asia/Tokyo"));
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        assert_eq!(
            t.next(at("2026-01-01T00:00:00Z"), &tokyo),
            Some(at("2026-01-02T00:00:00Z"))
        );
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 7",
            "*/0 * * * *",
            "5-1 * * * *",
            "@every 5m",
            "x * * * *",
            "CRON_TZ=UTC",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        assert!(Schedule::parse("0 0 * jan,Dec sun").is_ok());
    }

    #[test]
    fn most_recent_and_missed_counts() {
        let s = Schedule::parse("*/1 * * * *").unwrap();
        let (t, n) = s.most_recent(
            at("2026-01-01T00:00:00Z"),
            at("2026-01-01T00:05:30Z"),
            &utc(),
            100,
        );
        assert_eq!((t, n), (Some(at("2026-01-01T00:05:00Z")), 5));
        let (t, n) = s.most_recent(
            at("2026-01-01T00:05:00Z"),
            at("2026-01-01T00:05:30Z"),
            &utc(),
            100,
        );
        assert_eq!((t, n), (None, 0));
        // A day of missed minutes: more than the cap, and still the latest time.
        let (t, n) = s.most_recent(
            at("2026-01-01T00:00:00Z"),
            at("2026-01-02T00:00:10Z"),
            &utc(),
            100,
        );
        assert_eq!((t, n), (Some(at("2026-01-02T00:00:00Z")), 101));
        let y = Schedule::parse("@yearly").unwrap();
        let (t, n) = y.most_recent(
            at("2020-06-01T00:00:00Z"),
            at("2026-06-01T00:00:00Z"),
            &utc(),
            100,
        );
        assert_eq!((t, n), (Some(at("2026-01-01T00:00:00Z")), 6));
    }
}
