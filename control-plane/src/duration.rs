//! Durations as users write them: ISO 8601 in Knative fields (`PT0.2S`, `PT1M`), and
//! humane forms in cemesh's own config (`200ms`, `5s`, `1m`, `2h`), and byte sizes;
//! with a typed error that names the input and the form expected.

use std::time::Duration;

/// Why a duration or size does not parse; each message names the input and the
/// form expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("{0:?} is not an ISO 8601 duration such as PT0.2S or PT1M")]
    NotIso8601(String),
    #[error("{0:?} is not a duration such as 200ms, 5s or 1m")]
    NotDuration(String),
    #[error("{input:?}: unknown unit {unit:?} (use {expected})")]
    UnknownUnit {
        input: String,
        unit: String,
        expected: &'static str,
    },
    #[error("{input:?}: {reason}")]
    OutOfRange { input: String, reason: String },
    #[error("{0:?} is not a size such as 1MiB or 65536")]
    NotSize(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// A duration in cemesh's own config (`200ms`, `5s`, `1m`), typed: a config file
/// with a bad one is refused with its file, line and field at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumaneDuration(pub Duration);

impl<'de> serde::Deserialize<'de> for HumaneDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_humane(&s)
            .map(HumaneDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses an ISO 8601 duration (`PnDTnHnMnS`, fractional seconds allowed; years and
/// months are refused because their length varies).
pub fn parse_iso8601(s: &str) -> Result<Duration, ParseError> {
    let err = || ParseError::NotIso8601(s.to_owned());
    let rest = s.strip_prefix('P').ok_or_else(err)?;
    if rest.is_empty() {
        return Err(err());
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return Err(err()),
        None => (rest, None),
    };
    let mut total = 0f64;
    let mut take = |part: &str, units: &[(char, f64)]| -> Result<(), ParseError> {
        let mut num = String::new();
        let mut allowed = units.iter();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                num.push(if c == ',' { '.' } else { c });
                continue;
            }
            let factor = loop {
                match allowed.next() {
                    Some((u, f)) if *u == c => break *f,
                    Some(_) => continue,
                    None => return Err(err()),
                }
            };
            let n: f64 = num.parse().map_err(|_| err())?;
            total += n * factor;
            num.clear();
        }
        if num.is_empty() {
            Ok(())
        } else {
            Err(err())
        }
    };
    take(date, &[('W', 604_800.0), ('D', 86_400.0)])?;
    if let Some(t) = time {
        take(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    Duration::try_from_secs_f64(total).map_err(|_| err())
}

/// Parses `250ms`, `5s`, `1.5m`, `2h`, `1d`; a bare number is seconds.
pub fn parse_humane(s: &str) -> Result<Duration, ParseError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| ParseError::NotDuration(s.to_owned()))?;
    let factor = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            return Err(ParseError::UnknownUnit {
                input: s.to_owned(),
                unit: other.to_owned(),
                expected: "ms, s, m, h or d",
            })
        }
    };
    Duration::try_from_secs_f64(n * factor).map_err(|e| ParseError::OutOfRange {
        input: s.to_owned(),
        reason: e.to_string(),
    })
}

/// Parses byte sizes: `1048576`, `64KiB`, `1MiB`, `1MB`, `2GiB`.
pub fn parse_bytes(s: &str) -> Result<u64, ParseError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| ParseError::NotSize(s.to_owned()))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "KB" | "kB" | "K" | "k" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        other => {
            return Err(ParseError::UnknownUnit {
                input: s.to_owned(),
                unit: other.to_owned(),
                expected: "B, KiB, MiB or GiB",
            })
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| ParseError::TooLarge(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601() {
        assert_eq!(parse_iso8601("PT0.2S").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_iso8601("PT1M").unwrap(), Duration::from_secs(60));
        assert_eq!(
            parse_iso8601("P1DT1H").unwrap(),
            Duration::from_secs(90_000)
        );
        assert_eq!(parse_iso8601("PT1M30S").unwrap(), Duration::from_secs(90));
        for bad in ["", "P", "PT", "1S", "PT1X", "P1Y", "PTS", "PT1S1M"] {
            assert!(parse_iso8601(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn humane_and_bytes() {
        assert_eq!(parse_humane("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_humane("5").unwrap(), Duration::from_secs(5));
        assert!(parse_humane("5 parsecs").is_err());
        assert_eq!(parse_bytes("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert!(parse_bytes("lots").is_err());
    }
}
