//! Go `time` semantics that reach digests: strict RFC 3339 parsing as `time.Time.UnmarshalJSON` does it,
//! RFC 3339 with nanoseconds as `MarshalJSON` prints it, and `time.ParseDuration` / `Duration.String`.

use std::fmt;

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// A point in time, held in UTC with nanosecond precision; the default is Go's zero time
/// `0001-01-01T00:00:00Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoTime(OffsetDateTime);

/// A timestamp was not RFC 3339 as Go accepts it, or cannot be printed as Go prints it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` with in-range fields.
    #[error("parsing time {0:?} as RFC 3339: expected YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM)")]
    Invalid(String),
    /// After conversion to UTC the year is outside 0..=9999, which Go refuses to marshal.
    #[error("time {0:?} is outside the years 0..9999 once converted to UTC")]
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

    /// Whether this is Go's zero time (`IsZero`).
    pub fn is_zero(&self) -> bool {
        *self == GoTime::ZERO
    }

    /// Wrap an arbitrary instant (converted to UTC).
    pub fn from_offset_date_time(value: OffsetDateTime) -> GoTime {
        GoTime(value.to_offset(UtcOffset::UTC))
    }

    /// The instant as a `time` value in UTC.
    pub fn to_offset_date_time(self) -> OffsetDateTime {
        self.0
    }

    /// Seconds since the Unix epoch (negative before 1970).
    pub fn unix_timestamp(self) -> i64 {
        self.0.unix_timestamp()
    }

    /// Parse like Go's `time.Time.UnmarshalJSON`: strict RFC 3339, any offset, converted to UTC.
    /// Fractional seconds beyond nine digits are truncated, as Go does.
    pub fn parse_rfc3339(text: &str) -> Result<GoTime, TimeError> {
        parse_rfc3339(text.as_bytes()).ok_or_else(|| TimeError::Invalid(text.to_owned()))
    }

    /// Go's RFC 3339 with nanoseconds (`time.RFC3339Nano`) for a UTC time: trailing fractional zeros trimmed,
    /// `Z` suffix, e.g. `2026-11-24T12:24:34.93399407Z`. Fails for years outside 0..=9999 like `MarshalJSON`.
    pub fn to_rfc3339_nano(self) -> Result<String, TimeError> {
        let t = self.0;
        let year = t.year();
        if !(0..=9999).contains(&year) {
            return Err(TimeError::OutOfRange(format!("{t}")));
        }
        let mut out = format!(
            "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
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
        out.push('Z');
        Ok(out)
    }

    /// Start of the UTC minute containing this instant (Go's `Truncate(time.Minute)` for UTC times).
    pub fn truncate_to_minute(self) -> GoTime {
        let t = self.0;
        GoTime(
            t.replace_nanosecond(0)
                .and_then(|t| t.replace_second(0))
                .unwrap_or(t),
        )
    }

    /// Start of the UTC hour containing this instant.
    pub fn truncate_to_hour(self) -> GoTime {
        let t = self.truncate_to_minute().0;
        GoTime(t.replace_minute(0).unwrap_or(t))
    }

    /// Go's `time.RFC3339` (whole seconds) for a UTC time, as used in rate-limit counter keys.
    pub fn to_rfc3339_seconds(self) -> Result<String, TimeError> {
        let whole = GoTime(self.0.replace_nanosecond(0).unwrap_or(self.0));
        whole.to_rfc3339_nano()
    }
}

impl fmt::Display for GoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_rfc3339_nano() {
            Ok(text) => f.write_str(&text),
            Err(_) => write!(f, "{}", self.0),
        }
    }
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
    local.checked_to_offset(UtcOffset::UTC).map(GoTime)
}

/// A Go `time.Duration`: signed nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub i64);

/// `time.ParseDuration` rejected the text; the message is Go's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("time: {0}")]
pub struct DurationError(String);

const NANOS_PER_SECOND: u64 = 1_000_000_000;

fn duration_unit(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SECOND,
        "m" => 60 * NANOS_PER_SECOND,
        "h" => 3600 * NANOS_PER_SECOND,
        _ => return None,
    })
}

impl GoDuration {
    /// Parse like Go's `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, or a bare `0`.
    pub fn parse(text: &str) -> Result<GoDuration, DurationError> {
        const LIMIT: u64 = 1 << 63;
        let invalid = || DurationError(format!("invalid duration {text:?}"));
        let mut s = text;
        let mut neg = false;
        if let Some(c) = s.chars().next()
            && (c == '-' || c == '+')
        {
            neg = c == '-';
            s = &s[1..];
        }
        if s == "0" {
            return Ok(GoDuration(0));
        }
        if s.is_empty() {
            return Err(invalid());
        }
        let mut total: u64 = 0;
        while !s.is_empty() {
            let first = s.as_bytes()[0];
            if !(first == b'.' || first.is_ascii_digit()) {
                return Err(invalid());
            }
            let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
            let mut whole: u64 = 0;
            for b in s[..int_len].bytes() {
                if whole > LIMIT / 10 {
                    return Err(invalid());
                }
                whole = whole * 10 + u64::from(b - b'0');
                if whole > LIMIT {
                    return Err(invalid());
                }
            }
            s = &s[int_len..];
            let mut frac: u64 = 0;
            let mut scale: f64 = 1.0;
            let mut post = false;
            if let Some(after_dot) = s.strip_prefix('.') {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                let mut overflow = false;
                for b in after_dot[..frac_len].bytes() {
                    if overflow {
                        continue;
                    }
                    if frac > (LIMIT - 1) / 10 {
                        overflow = true;
                        continue;
                    }
                    let next = frac * 10 + u64::from(b - b'0');
                    if next > LIMIT {
                        overflow = true;
                        continue;
                    }
                    frac = next;
                    scale *= 10.0;
                }
                post = frac_len > 0;
                s = &after_dot[frac_len..];
            }
            if int_len == 0 && !post {
                return Err(invalid());
            }
            let unit_len = s
                .bytes()
                .take_while(|b| !(*b == b'.' || b.is_ascii_digit()))
                .count();
            if unit_len == 0 {
                return Err(DurationError(format!("missing unit in duration {text:?}")));
            }
            let unit_text = &s[..unit_len];
            s = &s[unit_len..];
            let unit = duration_unit(unit_text).ok_or_else(|| {
                DurationError(format!("unknown unit {unit_text:?} in duration {text:?}"))
            })?;
            if whole > LIMIT / unit {
                return Err(invalid());
            }
            let mut value = whole * unit;
            if frac > 0 {
                // Same float arithmetic as Go: exact to the nanosecond for fractions of an hour.
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                let extra = (frac as f64 * (unit as f64 / scale)) as u64;
                value = value.checked_add(extra).ok_or_else(invalid)?;
                if value > LIMIT {
                    return Err(invalid());
                }
            }
            total = total.checked_add(value).ok_or_else(invalid)?;
            if total > LIMIT {
                return Err(invalid());
            }
        }
        if neg {
            // total <= 2^63, so the negation always fits.
            return Ok(GoDuration(0i64.wrapping_sub_unsigned(total)));
        }
        i64::try_from(total).map(GoDuration).map_err(|_| invalid())
    }

    /// Go's `Duration.String`: `1h30m0s`, `1.5s`, `300ms`, `1µs`, `0s`.
    pub fn to_go_string(self) -> String {
        let neg = self.0 < 0;
        let mut u = self.0.unsigned_abs();
        let mut out = String::new();
        if u < NANOS_PER_SECOND {
            if u == 0 {
                return "0s".to_owned();
            }
            let (prec, unit) = if u < 1_000 {
                (0, "ns")
            } else if u < 1_000_000 {
                (3, "\u{b5}s")
            } else {
                (6, "ms")
            };
            let (int_part, frac) = split_fraction(u, prec);
            out.push_str(&int_part.to_string());
            out.push_str(&frac);
            out.push_str(unit);
        } else {
            let (secs, frac) = split_fraction(u, 9);
            u = secs;
            let seconds = format!("{}{}s", u % 60, frac);
            u /= 60;
            if u > 0 {
                let minutes = u % 60;
                u /= 60;
                if u > 0 {
                    out.push_str(&format!("{u}h"));
                }
                out.push_str(&format!("{minutes}m"));
            }
            out.push_str(&seconds);
        }
        if neg {
            out.insert(0, '-');
        }
        out
    }
}

/// Split `v` into `v / 10^prec` and the fraction text (`.5`, `.25`, or empty), trailing zeros dropped.
fn split_fraction(v: u64, prec: u32) -> (u64, String) {
    if prec == 0 {
        return (v, String::new());
    }
    let base = 10u64.pow(prec);
    let frac = v % base;
    if frac == 0 {
        return (v / base, String::new());
    }
    let width = usize::try_from(prec).unwrap_or(9);
    let digits = format!("{frac:0width$}");
    (v / base, format!(".{}", digits.trim_end_matches('0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_round_trip_with_trimmed_nanoseconds() {
        let t = GoTime::parse_rfc3339("2026-11-24T12:24:34.933994070Z").unwrap();
        assert_eq!(
            t.to_rfc3339_nano().unwrap(),
            "2026-11-24T12:24:34.93399407Z"
        );
        let whole = GoTime::parse_rfc3339("2026-02-05T00:00:00Z").unwrap();
        assert_eq!(whole.to_rfc3339_nano().unwrap(), "2026-02-05T00:00:00Z");
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        let t = GoTime::parse_rfc3339("2026-02-05T01:30:00+02:00").unwrap();
        assert_eq!(t.to_rfc3339_nano().unwrap(), "2026-02-04T23:30:00Z");
    }

    #[test]
    fn zero_time_is_go_zero_and_prints_as_go_does() {
        assert!(GoTime::default().is_zero());
        assert_eq!(
            GoTime::ZERO.to_rfc3339_nano().unwrap(),
            "0001-01-01T00:00:00Z"
        );
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
        ] {
            assert!(GoTime::parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn more_than_nine_fraction_digits_are_truncated() {
        let t = GoTime::parse_rfc3339("2026-02-05T00:00:00.1234567899Z").unwrap();
        assert_eq!(
            t.to_rfc3339_nano().unwrap(),
            "2026-02-05T00:00:00.123456789Z"
        );
    }

    #[test]
    fn truncation_keeps_the_bucket_start() {
        let t = GoTime::parse_rfc3339("2026-02-05T10:42:17.5Z").unwrap();
        assert_eq!(t.truncate_to_minute().to_string(), "2026-02-05T10:42:00Z");
        assert_eq!(t.truncate_to_hour().to_string(), "2026-02-05T10:00:00Z");
    }

    #[test]
    fn durations_parse_and_print_like_go() {
        let cases = [
            ("1h", "1h0m0s"),
            ("90m", "1h30m0s"),
            ("1.5h", "1h30m0s"),
            ("0.5s", "500ms"),
            ("1500ms", "1.5s"),
            ("1us", "1\u{b5}s"),
            ("1\u{3bc}s", "1\u{b5}s"),
            ("2h45m30.5s", "2h45m30.5s"),
            ("10ns", "10ns"),
            ("0", "0s"),
            ("-3m", "-3m0s"),
            ("+24h", "24h0m0s"),
        ];
        for (input, printed) in cases {
            let d = GoDuration::parse(input).unwrap();
            assert_eq!(d.to_go_string(), printed, "{input}");
        }
    }

    #[test]
    fn bad_durations_carry_go_messages() {
        assert_eq!(
            GoDuration::parse("10").unwrap_err().to_string(),
            "time: missing unit in duration \"10\""
        );
        assert_eq!(
            GoDuration::parse("5d").unwrap_err().to_string(),
            "time: unknown unit \"d\" in duration \"5d\""
        );
        assert!(GoDuration::parse("").is_err());
        assert!(GoDuration::parse(".s").is_err());
        assert!(GoDuration::parse("9999999999999999999h").is_err());
    }
}
