//! Go `time` semantics that reach policy digests: `time.ParseDuration` / `Duration.String`. The one
//! `GoTime` (strict RFC 3339 as Go parses and prints it) lives in `gait-canon` and is re-exported here.

pub use gait_canon::gotime::{GoTime, TimeError};

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
