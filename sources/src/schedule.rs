//! A `PingSource` schedule as Knative reads it (robfig/cron's standard parser): five
//! cron fields, the `@yearly` ... `@hourly` nicknames, `@every <duration>`, and
//! `CRON_TZ=`/`TZ=` prefixes, in an IANA time zone (`spec.timezone`, default UTC).
//! The cron fields are evaluated by `croner` (POSIX/Vixie semantics: day of month and
//! day of week ORed); `@every` and the prefixes, which croner does not know, are
//! read here.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// When a source fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Cron fields in a time zone.
    Cron { cron: Box<Cron>, tz: Tz },
    /// `@every 30s`: at this interval after the last firing.
    Every(Duration),
}

/// Why a schedule or time zone is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("{0:?} is not a cron schedule: {1} (five fields: minute hour day-of-month month day-of-week, a nickname such as @hourly, or @every 10m)")]
    Cron(String, String),
    #[error("{0:?} is not a duration for @every (e.g. 30s, 5m, 1h30m; at least 1s)")]
    Every(String),
    #[error("{0:?} is not an IANA time zone (e.g. Europe/Lisbon, UTC)")]
    TimeZone(String),
}

impl Schedule {
    /// Reads `schedule` (an empty one is Knative's default, `* * * * *`) in
    /// `timezone` (default UTC).
    pub fn parse(schedule: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let mut tz = match timezone.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => parse_tz(t)?,
            None => Tz::UTC,
        };
        let mut rest = schedule.trim();
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(p) = rest.strip_prefix(prefix) {
                let (zone, after) = p.split_once(char::is_whitespace).unwrap_or((p, ""));
                tz = parse_tz(zone)?;
                rest = after.trim();
            }
        }
        if rest.is_empty() {
            rest = "* * * * *";
        }
        if let Some(d) = rest.strip_prefix("@every") {
            let d = d.trim();
            return match parse_go_duration(d) {
                Some(d) if d >= Duration::from_secs(1) => Ok(Schedule::Every(d)),
                _ => Err(ScheduleError::Every(d.to_owned())),
            };
        }
        if rest.split_whitespace().count() != 5 && !rest.starts_with('@') {
            return Err(ScheduleError::Cron(
                schedule.to_owned(),
                format!("{} fields", rest.split_whitespace().count()),
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(rest)
            .map_err(|e| ScheduleError::Cron(schedule.to_owned(), e.to_string()))?;
        Ok(Schedule::Cron {
            cron: Box::new(cron),
            tz,
        })
    }

    /// The first firing strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(d) => Some(t + chrono::Duration::from_std(*d).ok()?),
            Schedule::Cron { cron, tz } => cron
                .find_next_occurrence(&t.with_timezone(tz), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    /// The last firing due at or before `now` that comes after `last`, if any: a tick
    /// due while the process was down, fired once after a restart however many were
    /// missed.
    pub fn missed(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let first = self.next_after(last)?;
        if first > now {
            return None;
        }
        match self {
            Schedule::Every(d) => {
                let step = chrono::Duration::from_std(*d).ok()?;
                let n = (now - first).num_milliseconds() / step.num_milliseconds().max(1);
                Some(first + step * i32::try_from(n).ok()?)
            }
            Schedule::Cron { cron, tz } => cron
                .find_previous_occurrence(&now.with_timezone(tz), true)
                .ok()
                .map(|d| d.with_timezone(&Utc))
                .filter(|d| *d >= first),
        }
    }
}

fn parse_tz(t: &str) -> Result<Tz, ScheduleError> {
    t.parse::<Tz>()
        .map_err(|_| ScheduleError::TimeZone(t.to_owned()))
}

/// A Go duration as robfig/cron's `@every` takes it: `1h30m`, `45s`, `1.5h`, `500ms`.
fn parse_go_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_end..];
    }
    total.is_finite().then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_fields_nicknames_and_time_zones() {
        let s = Schedule::parse("*/15 * * * *", None).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T10:07:00Z")),
            Some(at("2026-01-01T10:15:00Z"))
        );
        let s = Schedule::parse("@hourly", None).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T10:07:00Z")),
            Some(at("2026-01-01T11:00:00Z"))
        );
        // 09:00 in Lisbon is 09:00 UTC in winter, 08:00 UTC in summer.
        let s = Schedule::parse("0 9 * * *", Some("Europe/Lisbon")).unwrap();
        assert_eq!(
            s.next_after(at("2026-07-01T00:00:00Z")),
            Some(at("2026-07-01T08:00:00Z"))
        );
        let s = Schedule::parse("CRON_TZ=Asia/Tokyo 0 9 * * *", None).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T01:00:00Z")),
            Some(at("2026-01-02T00:00:00Z"))
        );
        // Knative's default.
        let s = Schedule::parse("", None).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T10:07:30Z")),
            Some(at("2026-01-01T10:08:00Z"))
        );
    }

    #[test]
    fn every_takes_go_durations() {
        let s = Schedule::parse("@every 1h30m", None).unwrap();
        assert_eq!(s, Schedule::Every(Duration::from_secs(5400)));
        assert_eq!(
            Schedule::parse("@every 2s", None).unwrap(),
            Schedule::Every(Duration::from_secs(2))
        );
        assert!(Schedule::parse("@every 10", None).is_err());
        assert!(Schedule::parse("@every 10ms", None).is_err());
    }

    #[test]
    fn bad_schedules_and_zones_are_named() {
        let e = Schedule::parse("* * * *", None).unwrap_err();
        assert!(e.to_string().contains("4 fields"), "{e}");
        let e = Schedule::parse("0 0 * * * *", None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("\"0 0 * * * *\" is not a cron schedule"),
            "{e}"
        );
        let e = Schedule::parse("61 * * * *", None).unwrap_err();
        assert!(e.to_string().starts_with("\"61 * * * *\""), "{e}");
        assert_eq!(
            Schedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::TimeZone("Mars/Olympus".into())
        );
    }

    #[test]
    fn ticks_missed_while_down_fire_once() {
        let s = Schedule::parse("*/5 * * * *", None).unwrap();
        let last = at("2026-01-01T10:00:00Z");
        assert_eq!(s.missed(last, at("2026-01-01T10:04:00Z")), None);
        assert_eq!(
            s.missed(last, at("2026-01-01T10:17:00Z")),
            Some(at("2026-01-01T10:15:00Z"))
        );
        let s = Schedule::parse("@every 10s", None).unwrap();
        assert_eq!(
            s.missed(last, at("2026-01-01T10:00:35Z")),
            Some(at("2026-01-01T10:00:30Z"))
        );
    }
}
