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
            chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.timestamp_millis())
        }
        _ => None,
    }
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

/// The current time as [`ARRIVAL_TIME`] wants it.
pub fn now_rfc3339() -> String {
    rfc3339(chrono::Utc::now())
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
    let mut out = [0u8; 27];
    let mut put = |at: usize, width: usize, mut n: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    put(17, 2, t.second());
    put(20, 6, micros);
    for (i, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        out[i] = c;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

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
