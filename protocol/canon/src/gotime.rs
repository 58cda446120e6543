//! Go `time.Time` as it appears in Gait documents and digests: strict RFC 3339 parsing as
//! `time.Time.UnmarshalJSON` does it, Go's `RFC3339Nano` printing (trailing fractional zeros trimmed, `Z` for a
//! zero offset), the zero time `0001-01-01T00:00:00Z`, and serde that never omits a time (Go does not).
//!
//! A `GoTime` keeps the offset it was parsed with, as Go's `time.Time` keeps its location; [`GoTime::parse_rfc3339`]
//! and [`GoTime::from_offset_date_time`] give the UTC instant, which is what policy digests and rate-limit
//! buckets use.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Go's zero time as `encoding/json` prints it.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A point in time with nanosecond precision and the offset it was written with; the default is Go's zero
/// time. Equality and order compare instants.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoTime(OffsetDateTime);

/// A timestamp was not RFC 3339 as Go accepts it, or cannot be printed as Go's JSON encoder prints it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` with in-range fields.
    #[error("parsing time {0:?} as RFC 3339: expected YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM)")]
    Invalid(String),
    /// The year is outside 0..=9999, which Go refuses to marshal.
    #[error("time {0:?} is outside the years 0..9999")]
    OutOfRange(String),
}

impl Default for GoTime {
    fn default() -> Self {
        GoTime::ZERO
    }
}

impl GoTime {
    /// Go's zero `time.Time`.
    pub const ZERO: GoTime = GoTime(OffsetDateTime::new_utc(
        match Date::from_ordinal_date(1, 1) {
            Ok(date) => date,
            Err(_) => panic!("0001-01-01 is a valid date"),
        },
        Time::MIDNIGHT,
    ));

    /// Go's zero time.
    pub fn zero() -> GoTime {
        GoTime::ZERO
    }

    /// The current wall-clock time in UTC.
    #[allow(clippy::disallowed_methods)] // the Gait CLI's clock: callers that can take `now` as an argument do
    pub fn now_utc() -> GoTime {
        GoTime(OffsetDateTime::now_utc())
    }

    /// Whether this is Go's zero time (`IsZero`, an unset field).
    pub fn is_zero(&self) -> bool {
        *self == GoTime::ZERO
    }

    /// Wrap a date-time, keeping its offset.
    pub fn from_datetime(value: OffsetDateTime) -> GoTime {
        GoTime(value)
    }

    /// The date-time, in the offset it carries.
    pub fn datetime(&self) -> OffsetDateTime {
        self.0
    }

    /// Wrap an arbitrary instant, converted to UTC.
    pub fn from_offset_date_time(value: OffsetDateTime) -> GoTime {
        GoTime(value.to_offset(UtcOffset::UTC))
    }

    /// The instant in UTC.
    pub fn to_offset_date_time(self) -> OffsetDateTime {
        self.0.to_offset(UtcOffset::UTC)
    }

    /// The same instant in UTC (Go's `t.UTC()`).
    pub fn to_utc(&self) -> GoTime {
        GoTime(self.0.to_offset(UtcOffset::UTC))
    }

    /// Seconds since the Unix epoch (negative before 1970).
    pub fn unix_timestamp(self) -> i64 {
        self.0.unix_timestamp()
    }

    /// Parse like Go's `time.Time.UnmarshalJSON`: strict RFC 3339 (uppercase `T` and `Z`, no second 60, offset
    /// hours below 24), keeping the offset. Fractional seconds beyond nine digits are truncated, as Go does.
    pub fn parse(text: &str) -> Result<GoTime, TimeError> {
        parse_rfc3339(text.as_bytes()).ok_or_else(|| TimeError::Invalid(text.to_owned()))
    }

    /// [`GoTime::parse`], then converted to UTC.
    pub fn parse_rfc3339(text: &str) -> Result<GoTime, TimeError> {
        let parsed = GoTime::parse(text)?;
        parsed
            .0
            .checked_to_offset(UtcOffset::UTC)
            .map(GoTime)
            .ok_or_else(|| TimeError::Invalid(text.to_owned()))
    }

    /// Go's `t.Format(time.RFC3339Nano)`: trailing fractional zeros trimmed, `Z` for a zero offset.
    pub fn to_rfc3339_nano(&self) -> String {
        format_rfc3339_nano(self.0)
    }

    /// Go's `MarshalJSON` text: [`GoTime::to_rfc3339_nano`], but an error for years outside 0..=9999.
    pub fn marshal_text(self) -> Result<String, TimeError> {
        if !(0..=9999).contains(&self.0.year()) {
            return Err(TimeError::OutOfRange(format!("{}", self.0)));
        }
        Ok(self.to_rfc3339_nano())
    }

    /// Start of the minute containing this instant (Go's `Truncate(time.Minute)` for UTC times).
    pub fn truncate_to_minute(self) -> GoTime {
        let t = self.0;
        GoTime(
            t.replace_nanosecond(0)
                .and_then(|t| t.replace_second(0))
                .unwrap_or(t),
        )
    }

    /// Start of the hour containing this instant.
    pub fn truncate_to_hour(self) -> GoTime {
        let t = self.truncate_to_minute().0;
        GoTime(t.replace_minute(0).unwrap_or(t))
    }

    /// Go's `time.RFC3339` (whole seconds), as used in rate-limit counter keys; errors like
    /// [`GoTime::marshal_text`].
    pub fn to_rfc3339_seconds(self) -> Result<String, TimeError> {
        GoTime(self.0.replace_nanosecond(0).unwrap_or(self.0)).marshal_text()
    }
}

impl fmt::Display for GoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339_nano())
    }
}

impl fmt::Debug for GoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GoTime({self})")
    }
}

impl std::str::FromStr for GoTime {
    type Err = TimeError;

    fn from_str(s: &str) -> Result<GoTime, TimeError> {
        GoTime::parse(s)
    }
}

impl Serialize for GoTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339_nano())
    }
}

impl<'de> Deserialize<'de> for GoTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<GoTime, D::Error> {
        // Go leaves a time untouched (zero) for JSON null.
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(GoTime::ZERO),
            Some(text) => GoTime::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Format like Go's `time.RFC3339Nano` layout `2006-01-02T15:04:05.999999999Z07:00`.
pub fn format_rfc3339_nano(t: OffsetDateTime) -> String {
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let nanos = t.nanosecond();
    if nanos > 0 {
        let digits = format!("{nanos:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    let offset = t.offset().whole_seconds();
    if offset == 0 {
        out.push('Z');
    } else {
        let sign = if offset < 0 { '-' } else { '+' };
        let abs = offset.unsigned_abs();
        out.push_str(&format!("{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60));
    }
    out
}

fn digits(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0')),
    )
}

fn ranged(bytes: &[u8], min: u32, max: u32) -> Option<u32> {
    digits(bytes).filter(|v| (min..=max).contains(v))
}

fn parse_rfc3339(s: &[u8]) -> Option<GoTime> {
    if s.len() < 19 {
        return None;
    }
    if !(s[4] == b'-' && s[7] == b'-' && s[10] == b'T' && s[13] == b':' && s[16] == b':') {
        return None;
    }
    let year = i32::try_from(ranged(&s[0..4], 0, 9999)?).ok()?;
    let month = Month::try_from(u8::try_from(ranged(&s[5..7], 1, 12)?).ok()?).ok()?;
    let day = u8::try_from(digits(&s[8..10])?).ok()?;
    let hour = u8::try_from(ranged(&s[11..13], 0, 23)?).ok()?;
    let minute = u8::try_from(ranged(&s[14..16], 0, 59)?).ok()?;
    let second = u8::try_from(ranged(&s[17..19], 0, 59)?).ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if rest.len() >= 2 && rest[0] == b'.' && rest[1].is_ascii_digit() {
        let end = 1 + rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        let frac = &rest[1..end];
        let kept = &frac[..frac.len().min(9)];
        nanos = digits(kept)? * 10u32.pow(9 - u32::try_from(kept.len()).ok()?);
        rest = &rest[end..];
    }
    let offset = if rest == b"Z" {
        UtcOffset::UTC
    } else {
        if rest.len() != 6 || !(rest[0] == b'+' || rest[0] == b'-') || rest[3] != b':' {
            return None;
        }
        let hours = i8::try_from(ranged(&rest[1..3], 0, 23)?).ok()?;
        let minutes = i8::try_from(ranged(&rest[4..6], 0, 59)?).ok()?;
        let sign = if rest[0] == b'-' { -1 } else { 1 };
        UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()?
    };
    let time = Time::from_hms_nano(hour, minute, second, nanos).ok()?;
    let local = PrimitiveDateTime::new(date, time).assume_offset(offset);
    Some(GoTime(local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_round_trip_with_trimmed_nanoseconds() {
        let t = GoTime::parse_rfc3339("2026-11-24T12:24:34.933994070Z").unwrap();
        assert_eq!(t.marshal_text().unwrap(), "2026-11-24T12:24:34.93399407Z");
        let whole = GoTime::parse_rfc3339("2026-02-05T00:00:00Z").unwrap();
        assert_eq!(whole.marshal_text().unwrap(), "2026-02-05T00:00:00Z");
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        let t = GoTime::parse_rfc3339("2026-02-05T01:30:00+02:00").unwrap();
        assert_eq!(t.marshal_text().unwrap(), "2026-02-04T23:30:00Z");
    }

    #[test]
    fn zero_time_is_go_zero_and_prints_as_go_does() {
        assert!(GoTime::default().is_zero());
        assert_eq!(GoTime::ZERO.marshal_text().unwrap(), "0001-01-01T00:00:00Z");
        assert!(
            GoTime::parse_rfc3339("0001-01-01T00:00:00Z")
                .unwrap()
                .is_zero()
        );
    }

    #[test]
    fn go_rejected_spellings_are_rejected() {
        for bad in [
            "2026-02-05",
            "2026-02-05 00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-02-05T24:00:00Z",
            "2026-02-05T00:00:60Z",
            "2026-02-05T00:00:00",
            "2026-02-05T00:00:00z",
            "2026-02-05T00:00:00+2400",
            "2026-02-05T00:00:00+24:00",
            "2026-02-05T00:00:00,5Z",
            "2026-02-05T00:00:00.Z",
            "2026-02-05t00:00:00Z",
            "2026-02-05T23:59:60Z",
            "not-a-date",
            "",
        ] {
            assert!(GoTime::parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn more_than_nine_fraction_digits_are_truncated() {
        let t = GoTime::parse_rfc3339("2026-02-05T00:00:00.1234567899Z").unwrap();
        assert_eq!(t.marshal_text().unwrap(), "2026-02-05T00:00:00.123456789Z");
    }

    #[test]
    fn truncation_keeps_the_bucket_start() {
        let t = GoTime::parse_rfc3339("2026-02-05T10:42:17.5Z").unwrap();
        assert_eq!(t.truncate_to_minute().to_string(), "2026-02-05T10:42:00Z");
        assert_eq!(t.truncate_to_hour().to_string(), "2026-02-05T10:00:00Z");
    }

    #[test]
    fn offsets_are_kept_by_parse_and_printed_like_go() {
        let cases = [
            (
                "2026-11-24T12:24:28.86346774Z",
                "2026-11-24T12:24:28.86346774Z",
            ),
            ("2026-02-05T00:00:00.000Z", "2026-02-05T00:00:00Z"),
            ("2026-02-05T00:00:00.100+00:00", "2026-02-05T00:00:00.1Z"),
            ("2026-02-05T01:30:00+01:30", "2026-02-05T01:30:00+01:30"),
            (
                "2026-02-05T00:00:00.000000001-07:00",
                "2026-02-05T00:00:00.000000001-07:00",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(GoTime::parse(input).unwrap().to_string(), want, "{input}");
        }
        assert_eq!(
            GoTime::parse("2026-02-05T01:30:00+01:30").unwrap(),
            GoTime::parse_rfc3339("2026-02-05T00:00:00Z").unwrap(),
            "equality compares instants"
        );
    }

    #[test]
    fn json_null_and_missing_decode_to_zero_and_zero_is_always_emitted() {
        #[derive(Deserialize, Serialize)]
        struct Doc {
            #[serde(default)]
            at: GoTime,
        }
        let doc: Doc = serde_json::from_str(r#"{"at":null}"#).unwrap();
        assert!(doc.at.is_zero());
        let doc: Doc = serde_json::from_str("{}").unwrap();
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            format!(r#"{{"at":"{ZERO_TIME}"}}"#)
        );
        assert!(serde_json::from_str::<Doc>(r#"{"at":"not-a-time"}"#).is_err());
    }

    #[test]
    fn years_before_0_print_but_do_not_marshal() {
        let far = GoTime::from_offset_date_time(time::macros::datetime!(-0001-12-31 00:00:00 UTC));
        assert!(matches!(far.marshal_text(), Err(TimeError::OutOfRange(_))));
        assert!(!far.to_rfc3339_nano().is_empty());
    }

    proptest::proptest! {
        #[test]
        fn printed_utc_times_parse_back_to_the_same_instant(secs in 0i64..253_402_300_799, nanos in 0u32..1_000_000_000) {
            let t = OffsetDateTime::from_unix_timestamp(secs).unwrap().replace_nanosecond(nanos).unwrap();
            let go = GoTime::from_offset_date_time(t);
            let text = go.marshal_text().unwrap();
            proptest::prop_assert_eq!(GoTime::parse_rfc3339(&text).unwrap(), go);
        }
    }
}
