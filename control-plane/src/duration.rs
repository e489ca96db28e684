//! Durations as users write them: ISO 8601 in Knative fields (`PT0.2S`, `PT1M`), and
//! humane forms in cemesh's own config (`200ms`, `5s`, `1m`, `2h`).

use std::time::Duration;

/// Parses an ISO 8601 duration (`PnDTnHnMnS`, fractional seconds allowed; years and
/// months are refused because their length varies).
pub fn parse_iso8601(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not an ISO 8601 duration such as PT0.2S or PT1M");
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
    let mut take = |part: &str, units: &[(char, f64)]| -> Result<(), String> {
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
pub fn parse_humane(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 200ms, 5s or 1m"))?;
    let factor = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Duration::try_from_secs_f64(n * factor).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses byte sizes: `1048576`, `64KiB`, `1MiB`, `1MB`, `2GiB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 1MiB or 65536"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "KB" | "kB" | "K" | "k" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
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
