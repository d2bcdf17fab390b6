//! Durations written the way Kubernetes and Go tools write them: `60s`, `10ms`, `6h`, `1h30m`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A span of time from the config. A bare number is refused: `60` could mean seconds or
/// milliseconds, and a wrong guess makes a timeout 1000 times off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// Why text is not a duration; displays as the message an operator sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration (use e.g. 60s, 10ms, 6h or 1h30m)")]
pub struct DurationError(String);

const UNITS: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || DurationError(text.to_owned());
        let mut rest = text;
        let mut total_nanos: u128 = 0;
        if rest.is_empty() {
            return Err(error());
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(error());
            }
            let number: u128 = rest[..digits].parse().map_err(|_| error())?;
            rest = &rest[digits..];
            let unit_len = rest
                .char_indices()
                .find(|(_, c)| c.is_ascii_digit())
                .map_or(rest.len(), |(i, _)| i);
            let unit = &rest[..unit_len];
            let (_, nanos_per_unit) = UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .ok_or_else(error)?;
            total_nanos = number
                .checked_mul(*nanos_per_unit)
                .and_then(|n| total_nanos.checked_add(n))
                .ok_or_else(error)?;
            rest = &rest[unit_len..];
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| error())?;
        // The remainder of a division by 10^9 always fits in u32.
        let subsec = (total_nanos % 1_000_000_000) as u32;
        Ok(Self(std::time::Duration::new(secs, subsec)))
    }
}

impl fmt::Display for Duration {
    /// Go's style (`1h40m`, `10ms`), so what we print can be pasted back into the config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        let mut rest = nanos;
        for (name, size) in UNITS.iter().rev().filter(|(name, _)| *name != "µs") {
            if rest >= *size {
                write!(f, "{}{name}", rest / size)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::time::Duration {
        text.parse::<Duration>()
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .get()
    }

    #[test]
    fn parses_single_and_compound_units() {
        assert_eq!(parse("60s"), std::time::Duration::from_secs(60));
        assert_eq!(parse("10ms"), std::time::Duration::from_millis(10));
        assert_eq!(parse("6h"), std::time::Duration::from_secs(6 * 3600));
        assert_eq!(parse("1h30m"), std::time::Duration::from_secs(5400));
        assert_eq!(parse("1m0s"), std::time::Duration::from_secs(60));
        assert_eq!(parse("250us"), std::time::Duration::from_micros(250));
        assert_eq!(parse("250µs"), std::time::Duration::from_micros(250));
        assert_eq!(parse("7ns"), std::time::Duration::from_nanos(7));
        assert_eq!(parse("0s"), std::time::Duration::ZERO);
    }

    #[test]
    fn refuses_bare_numbers_unknown_units_and_junk() {
        for bad in [
            "",
            "60",
            "s",
            "10 s",
            "1.5s",
            "-1s",
            "10d",
            "1h30",
            "ms10",
            "1S",
            "99999999999999999999h",
        ] {
            let err = bad.parse::<Duration>().expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!("{bad:?} is not a duration (use e.g. 60s, 10ms, 6h or 1h30m)")
            );
        }
    }

    #[test]
    fn displays_in_a_form_that_parses_back() {
        for (text, shown) in [
            ("100s", "1m40s"),
            ("10ms", "10ms"),
            ("6h", "6h"),
            ("0s", "0s"),
            ("1500ms", "1s500ms"),
        ] {
            let d: Duration = text.parse().expect(text);
            assert_eq!(d.to_string(), shown);
            assert_eq!(shown.parse::<Duration>().expect(shown), d);
        }
    }
}
