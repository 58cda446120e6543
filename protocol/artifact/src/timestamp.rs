//! Go `time.Time` as it appears in Gait JSON: RFC 3339 in, Go's RFC3339Nano out (trailing fractional zeros
//! trimmed, `Z` for a zero offset), and the zero time `0001-01-01T00:00:00Z` where Go would emit it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Go's zero time as `encoding/json` prints it.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A timestamp field of a Gait artifact. Go never omits `time.Time` fields, so neither does this type: a missing
/// or null value decodes to the zero time and serializes as [`ZERO_TIME`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GoTime(OffsetDateTime);

/// A timestamp string is not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {value:?} is not RFC 3339 (expected e.g. 2026-02-05T00:00:00Z)")]
pub struct TimeError {
    /// The rejected text.
    pub value: String,
}

impl GoTime {
    /// Go's zero time.
    pub fn zero() -> Self {
        Self(time::macros::datetime!(0001-01-01 00:00:00 UTC))
    }

    /// The current wall-clock time in UTC.
    pub fn now_utc() -> Self {
        Self(OffsetDateTime::now_utc())
    }

    /// Parse RFC 3339 text (with optional fractional seconds) as Go's `time.Time` JSON decoder does.
    pub fn parse(text: &str) -> Result<Self, TimeError> {
        let err = || TimeError {
            value: text.to_owned(),
        };
        // Go's strict RFC 3339 parser wants an uppercase `T` and `Z` and rejects second 60; the time crate is
        // more lenient (space or `t` separator, lowercase `z`, leap seconds folded into :59.999999999).
        let bytes = text.as_bytes();
        if bytes.get(10) != Some(&b'T') || bytes.get(17..19) == Some(b"60") || text.ends_with('z') {
            return Err(err());
        }
        OffsetDateTime::parse(text, &Rfc3339)
            .map(Self)
            .map_err(|_| err())
    }

    /// Wrap a date-time.
    pub fn from_datetime(t: OffsetDateTime) -> Self {
        Self(t)
    }

    /// The date-time.
    pub fn datetime(&self) -> OffsetDateTime {
        self.0
    }

    /// Whether this is Go's zero time (an unset field).
    pub fn is_zero(&self) -> bool {
        *self == Self::zero()
    }

    /// The same instant in UTC (Go's `t.UTC()`).
    pub fn to_utc(&self) -> Self {
        Self(self.0.to_offset(UtcOffset::UTC))
    }

    /// Go's `t.Format(time.RFC3339Nano)`.
    pub fn to_rfc3339_nano(&self) -> String {
        format_rfc3339_nano(self.0)
    }
}

impl Default for GoTime {
    fn default() -> Self {
        Self::zero()
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

    fn from_str(s: &str) -> Result<Self, TimeError> {
        Self::parse(s)
    }
}

impl Serialize for GoTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339_nano())
    }
}

impl<'de> Deserialize<'de> for GoTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Go leaves a time untouched (zero) for JSON null.
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(Self::zero()),
            Some(text) => Self::parse(&text).map_err(serde::de::Error::custom),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_time_prints_like_go() {
        assert_eq!(GoTime::zero().to_string(), ZERO_TIME);
        assert!(GoTime::default().is_zero());
        assert_eq!(GoTime::parse(ZERO_TIME).unwrap(), GoTime::zero());
    }

    #[test]
    fn fractional_seconds_are_trimmed_and_utc_offsets_become_z() {
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
    }

    #[test]
    fn non_rfc3339_text_is_rejected() {
        for bad in [
            "not-a-date",
            "2026-02-05",
            "2026-02-05 00:00:00Z",
            "2026-02-05t00:00:00Z",
            "2026-02-05T00:00:00z",
            "2026-02-05T23:59:60Z",
            "",
        ] {
            assert!(GoTime::parse(bad).is_err(), "{bad}");
        }
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
    }
}
