//! A point in a broker's log as users write it: in `cemesh.dev/start`, in
//! `cemesh replay --from/--to` and `cemesh reset-cursor --to`.

use cemesh_channels::StartAt;

/// Why a replay or a cursor move was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Channel(#[from] cemesh_channels::ChannelError),
}

/// Where in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Earliest,
    Latest,
    /// An offset (the same in every partition of a Kafka topic).
    Offset(u64),
    /// A time (Unix ms): the first event that arrived at or after it.
    Time(i64),
}

impl Point {
    /// Reads `earliest`, `latest`, an offset (digits), an RFC 3339 time, or, when
    /// `now_ms` is given, a duration ago (`10m`, `1h30m`, `PT1H`).
    pub fn parse(s: &str, now_ms: Option<i64>) -> Result<Point, String> {
        let s = s.trim();
        match s {
            "earliest" => return Ok(Point::Earliest),
            "latest" | "now" => return Ok(Point::Latest),
            _ => {}
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Point::Offset)
                .map_err(|_| format!("{s:?}: offset too large"));
        }
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            return Ok(Point::Time(t.timestamp_millis()));
        }
        if let Some(now) = now_ms {
            let ago =
                crate::duration::parse_humane(s).or_else(|_| crate::duration::parse_iso8601(s));
            if let Ok(d) = ago {
                return Ok(Point::Time(now.saturating_sub(d.as_millis() as i64)));
            }
        }
        let kinds = if now_ms.is_some() {
            "an offset, an RFC 3339 time or a duration ago (10m)"
        } else {
            "an offset or an RFC 3339 time"
        };
        Err(format!("{s:?} is not earliest, latest, {kinds}"))
    }

    /// Where a subscription starting here starts.
    pub fn start_at(self) -> StartAt {
        match self {
            Point::Earliest => StartAt::Earliest,
            Point::Latest => StartAt::Latest,
            Point::Offset(o) => StartAt::Offset(o),
            Point::Time(ms) => StartAt::Time(ms.max(0) as u64),
        }
    }

    /// The time, when the point is one.
    pub fn time(self) -> Option<i64> {
        match self {
            Point::Time(ms) => Some(ms),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_read_as_written() {
        assert_eq!(Point::parse("earliest", None), Ok(Point::Earliest));
        assert_eq!(Point::parse("latest", None), Ok(Point::Latest));
        assert_eq!(Point::parse("42", None), Ok(Point::Offset(42)));
        assert_eq!(
            Point::parse("2026-12-04T10:00:00Z", None),
            Ok(Point::Time(1_796_378_400_000))
        );
        assert_eq!(
            Point::parse("10m", Some(1_000_000)),
            Ok(Point::Time(400_000))
        );
        assert!(Point::parse("10m", None).unwrap_err().contains("RFC 3339"));
        assert!(Point::parse("soon", Some(0))
            .unwrap_err()
            .contains("a duration ago"));
    }
}
