//! The extensions Knative's brokers add to events, shared by the ingress (which stamps
//! them) and the dispatcher (which reads, strips and sets them).

use crate::{AttrRef, AttributeValue, Event};

/// When the broker accepted the event (RFC 3339).
pub const ARRIVAL_TIME: &str = "knativearrivaltime";
/// Hops an event may still make through replies; internal, never delivered.
pub const BROKER_TTL: &str = "knativebrokerttl";
/// The TTL the ingress gives an event that has none.
pub const DEFAULT_TTL: i32 = 255;
/// On a dead-lettered event: the URL whose delivery failed.
pub const ERROR_DEST: &str = "knativeerrordest";
/// On a dead-lettered event: the last HTTP status (absent without a response).
pub const ERROR_CODE: &str = "knativeerrorcode";
/// On a dead-lettered event: base64 of at most [`ERROR_DATA_MAX`] bytes of the last
/// response body.
pub const ERROR_DATA: &str = "knativeerrordata";
/// Bytes of an error response body kept in [`ERROR_DATA`].
pub const ERROR_DATA_MAX: usize = 1024;

/// The event's TTL if it carries a valid one (an integer, or a string holding one).
pub fn ttl(event: &Event) -> Option<i32> {
    match event.attribute(BROKER_TTL)? {
        AttrRef::Integer(n) => Some(n),
        AttrRef::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Sets the TTL.
pub fn set_ttl(event: &mut Event, ttl: i32) {
    event.set_extension(BROKER_TTL, AttributeValue::Integer(ttl));
}

/// Stamps the arrival time: now, in RFC 3339 with microseconds.
pub fn stamp_arrival(event: &mut Event, now: &str) {
    event.set_extension(ARRIVAL_TIME, AttributeValue::String(now.to_owned()));
}

/// What an ingress (HTTP or gRPC) does to every event it accepts: stamps the arrival
/// time and the hop budget (Knative's loop guard). An event without a valid TTL gets
/// [`DEFAULT_TTL`]; one that has used it up is refused.
pub fn stamp_ingress(event: &mut Event, now: &str) -> Result<(), crate::EventError> {
    stamp_arrival(event, now);
    match ttl(event) {
        Some(n) if n <= 0 => Err(crate::EventError::attr(
            BROKER_TTL,
            format!("{BROKER_TTL}: {n}: the event has used up its hops (a reply loop?)"),
        )),
        Some(n) => {
            set_ttl(event, n);
            Ok(())
        }
        None => {
            set_ttl(event, DEFAULT_TTL);
            Ok(())
        }
    }
}

/// When the ingress accepted the event (Unix ms), from its [`ARRIVAL_TIME`].
pub fn arrival_ms(event: &Event) -> Option<i64> {
    match event.extension(ARRIVAL_TIME) {
        Some(AttributeValue::String(s) | AttributeValue::Timestamp(s)) => {
            stamped_ms(s).or_else(|| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|t| t.timestamp_millis())
            })
        }
        _ => None,
    }
}

/// Unix ms of a time in the form the ingress stamps (`2026-12-04T16:34:44.123456Z`,
/// UTC, six fractional digits), read digit by digit; `None` for any other form
/// (then chrono's full RFC 3339 parser reads it). Every delivery reads its event's
/// arrival time.
fn stamped_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 27 || b[26] != b'Z' {
        return None;
    }
    let seps = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ];
    if seps.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u64> {
        b[from..to].iter().try_fold(0u64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let micros = num(20, 26)?;
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if year < 1970 || day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    i64::try_from(secs * 1000 + micros / 1000).ok()
}

/// Days from 1970-01-01 to a date on or after it (Howard Hinnant's
/// `days_from_civil`, the inverse of [`civil_from_days`]).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the Unix epoch, now (negative before it). From the system
/// clock directly: chrono's `Utc::now().timestamp_millis()` builds a calendar date
/// first and takes several times as long, on paths that stamp every event.
pub fn now_ms() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The current time as [`ARRIVAL_TIME`] wants it: from the system clock, the date
/// worked out from the day number directly (chrono's `Utc::now` builds a calendar
/// date and its accessors take it apart again: several times the cost, on every
/// accepted event).
pub fn now_rfc3339() -> String {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => rfc3339_unix(d.as_secs(), d.subsec_micros()),
        Err(_) => rfc3339(chrono::Utc::now()),
    }
}

/// `secs` seconds and `micros` microseconds after the Unix epoch, as [`rfc3339`]
/// writes it.
fn rfc3339_unix(secs: u64, micros: u32) -> String {
    let days = secs / 86_400;
    let rem = (secs % 86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    if year > 9999 {
        let t = chrono::DateTime::from_timestamp(secs as i64, micros * 1000).unwrap_or_default();
        return rfc3339(t);
    }
    write_rfc3339(
        [year, month, day, rem / 3600, rem / 60 % 60, rem % 60],
        micros,
    )
}

/// Year, month and day of the `days`-th day after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + u64::from(month <= 2)) as u32;
    (year, month, day)
}

/// `ms` (milliseconds since the epoch) in RFC 3339 with milliseconds, UTC
/// (`2026-12-04T16:34:44.123Z`): how cemesh shows the times it keeps as numbers.
pub fn rfc3339_millis(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `t` in RFC 3339 with microseconds, UTC (`2026-12-04T16:34:44.123456Z`): written
/// digit by digit, as it is stamped on every accepted event (chrono's formatter
/// goes through `fmt` and costs several times more).
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    }
    let micros = t.timestamp_subsec_micros().min(999_999);
    write_rfc3339(
        [
            year as u32,
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
        ],
        micros,
    )
}

/// `[year, month, day, hour, minute, second]` and microseconds, digit by digit.
fn write_rfc3339(parts: [u32; 6], micros: u32) -> String {
    let [year, month, day, hour, minute, second] = parts;
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    // Two digits at a time.
    let mut pair = |at: usize, n: u32| {
        out[at] = b'0' + (n / 10 % 10) as u8;
        out[at + 1] = b'0' + (n % 10) as u8;
    };
    pair(0, year / 100);
    pair(2, year % 100);
    pair(5, month);
    pair(8, day);
    pair(11, hour);
    pair(14, minute);
    pair(17, second);
    pair(20, micros / 10_000);
    pair(22, micros / 100 % 100);
    pair(24, micros % 100);
    // All ASCII by construction: the check is a few word compares.
    std::str::from_utf8(&out).map_or_else(|_| String::new(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds and microseconds after the epoch through 1970-2400, a week and an hour
    /// apart (so every weekday, month and leap rule comes up), each at its day's
    /// first and last microsecond and at noon.
    fn samples() -> impl Iterator<Item = (u64, u32)> {
        (0..13_569_465_600u64)
            .step_by(86_400 * 7 + 3_601)
            .flat_map(|secs| {
                let day = secs - secs % 86_400;
                [(day, 0), (day + 86_399, 999_999), (day + 43_210, 123_456)]
            })
    }

    #[test]
    fn the_stamp_from_the_system_clock_is_what_chrono_writes() {
        for (s, micros) in samples() {
            let t = chrono::DateTime::from_timestamp(s as i64, micros * 1000).unwrap();
            assert_eq!(
                rfc3339_unix(s, micros),
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
        }
        for day in [11_016u64, 11_017, 11_075, 11_076, 47_540, 47_541, 2_932_896] {
            let s = day * 86_400;
            let t = chrono::DateTime::from_timestamp(s as i64, 0).unwrap();
            assert_eq!(rfc3339_unix(s, 0), rfc3339(t), "day {day}");
        }
        // Past year 9999: chrono's own format, as before.
        assert_eq!(
            rfc3339_unix(253_402_300_800, 5),
            "+10000-01-01T00:00:00.000005Z"
        );
    }

    #[test]
    fn a_stamped_arrival_time_is_read_as_chrono_reads_it() {
        for (s, micros) in samples() {
            let text = rfc3339_unix(s, micros);
            let chrono = chrono::DateTime::parse_from_rfc3339(&text).unwrap();
            assert_eq!(stamped_ms(&text), Some(chrono.timestamp_millis()), "{text}");
        }
        // Not the stamp's form, or not a time: left to chrono (which refuses the bad).
        for other in [
            "2026-12-04T16:34:44Z",
            "2026-12-04T16:34:44.123+01:00",
            "2026-12-04t16:34:44.123456Z",
            "2026-02-29T00:00:00.000000Z",
            "2024-13-01T00:00:00.000000Z",
            "2024-12-01T24:00:00.000000Z",
            "2024-12-01T00:00:60.000000Z",
            "1969-12-31T23:59:59.999999Z",
            "2024-1x-01T00:00:00.000000Z",
        ] {
            assert_eq!(stamped_ms(other), None, "{other}");
        }
        assert_eq!(
            stamped_ms("2024-02-29T12:00:00.000999Z"),
            Some(1_709_208_000_000)
        );
    }

    #[test]
    fn now_in_milliseconds_is_chronos() {
        let before = chrono::Utc::now().timestamp_millis();
        let now = now_ms();
        let after = chrono::Utc::now().timestamp_millis();
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );
    }

    #[test]
    fn the_stamp_is_what_chrono_writes() {
        for (secs, nanos) in [
            (0, 0),
            (1_796_401_292, 123_456_789),
            (1_796_401_292, 999_999_999),
            (951_782_400, 1_000),     // 2000-02-29
            (253_402_300_799, 5_000), // 9999-12-31T23:59:59
        ] {
            let t = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
            assert_eq!(
                rfc3339(t),
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
        }
    }

    #[test]
    fn ingress_stamping() {
        let mut e = Event::new("1", "/s", "t");
        stamp_ingress(&mut e, "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(ttl(&e), Some(DEFAULT_TTL));
        assert!(e.extension(ARRIVAL_TIME).is_some());
        set_ttl(&mut e, 0);
        let err = stamp_ingress(&mut e, "2026-01-01T00:00:00Z").unwrap_err();
        assert_eq!(err.attribute.as_deref(), Some(BROKER_TTL));
    }

    #[test]
    fn ttl_reads_integers_and_numeric_strings() {
        let mut e = Event::new("1", "/s", "t");
        assert_eq!(ttl(&e), None);
        set_ttl(&mut e, 7);
        assert_eq!(ttl(&e), Some(7));
        e.set_extension(BROKER_TTL, AttributeValue::String(" 12".into()));
        assert_eq!(ttl(&e), Some(12));
        e.set_extension(BROKER_TTL, AttributeValue::String("XYZ".into()));
        assert_eq!(ttl(&e), None);
    }
}
