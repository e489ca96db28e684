//! Durations as users write them: ISO 8601 in Knative fields (`PT0.2S`, `PT1M`), and
//! humane forms in cemesh's own config (`200ms`, `5s`, `1m`, `2h`), and byte sizes;
//! with a typed error that names the input and the form expected.

use std::time::Duration;

/// Why a duration or size does not parse; each message names the input and the
/// form expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("{0:?} is not an ISO 8601 duration: expected PnYnMnWnDTnHnMnS (each part optional, T before hours, minutes and seconds), such as PT0.2S, PT1M30S or P1D")]
    NotIso8601(String),
    #[error("{0:?} is negative; expected a duration of zero or more, such as PT0.2S")]
    Negative(String),
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

/// Parses an ISO 8601 duration as Knative does (its `period.Parse`): `P`, then years,
/// months, weeks and days in any order, then `T` and hours, minutes and seconds in any
/// order, each at most once, decimals with `.` or `,`; a leading `+`; `P0` is zero.
/// Years and months count as their average length (365.2425 and 30.436875 days), as
/// Knative's `DurationApprox`. A negative period is refused: no Knative field means it.
pub fn parse_iso8601(s: &str) -> Result<Duration, ParseError> {
    let err = || ParseError::NotIso8601(s.to_owned());
    if s.starts_with('-') {
        return Err(ParseError::Negative(s.to_owned()));
    }
    let unsigned = s.strip_prefix('+').unwrap_or(s);
    if unsigned == "P0" {
        return Ok(Duration::ZERO);
    }
    let rest = unsigned.strip_prefix('P').ok_or_else(err)?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    const DAY: f64 = 86_400.0;
    let mut components = 0;
    let mut total = 0f64;
    let mut take = |part: &str, units: &[(char, f64)]| -> Result<(), ParseError> {
        let mut seen = Vec::new();
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                num.push(if c == ',' { '.' } else { c });
                continue;
            }
            let factor = units
                .iter()
                .find(|(u, _)| *u == c)
                .map(|(_, f)| *f)
                .ok_or_else(err)?;
            if seen.contains(&c) {
                return Err(err());
            }
            seen.push(c);
            let n: f64 = num.parse().map_err(|_| err())?;
            total += n * factor;
            components += 1;
            num.clear();
        }
        if num.is_empty() {
            Ok(())
        } else {
            Err(err())
        }
    };
    take(
        date,
        &[
            ('Y', 365.2425 * DAY),
            ('M', 30.436875 * DAY),
            ('W', 7.0 * DAY),
            ('D', DAY),
        ],
    )?;
    if let Some(t) = time {
        take(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    if components == 0 {
        return Err(err());
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
        // Every form Knative's period.Parse takes.
        assert_eq!(parse_iso8601("PT0,5S").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_iso8601("PT1S1M").unwrap(), Duration::from_secs(61));
        assert_eq!(parse_iso8601("+PT2S").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_iso8601("P0").unwrap(), Duration::ZERO);
        assert_eq!(parse_iso8601("PT0S").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_iso8601("P1W1D").unwrap(),
            Duration::from_secs(8 * 86_400)
        );
        assert_eq!(
            parse_iso8601("P1Y").unwrap(),
            Duration::from_secs_f64(365.2425 * 86_400.0)
        );
        assert_eq!(
            parse_iso8601("P1M").unwrap(),
            Duration::from_secs_f64(30.436875 * 86_400.0)
        );
        for bad in [
            "", "P", "PT", "1S", "PT1X", "PTS", "PT1S1S", "P1H", "PT1D", "pt1s",
        ] {
            let e = parse_iso8601(bad).unwrap_err().to_string();
            assert!(e.contains("expected PnYnMnWnDTnHnMnS"), "{bad}: {e}");
        }
        assert!(parse_iso8601("-PT1S")
            .unwrap_err()
            .to_string()
            .contains("is negative"));
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
