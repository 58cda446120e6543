//! The one place the agent reads the wall clock.
//!
//! Decisions (bundle validity, context age, rate-limit windows, approval tokens), record timestamps and the
//! last-contact time all read the time here, so a later clock abstraction (a test clock, a skew check) has one
//! seam to replace. `clippy.toml` forbids wall-clock reads anywhere else; monotonic timers (`Instant`, tokio)
//! are not wall-clock reads and stay where they are used.

#![allow(clippy::disallowed_methods)] // the one place the agent reads the wall clock

use gait_canon::gotime::GoTime;
use time::OffsetDateTime;

/// The current UTC time.
pub fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The current UTC time as Gait's Go-compatible timestamp.
pub fn now_go() -> GoTime {
    GoTime::now_utc()
}

/// Milliseconds since the Unix epoch (negative before 1970, saturating far in the future).
pub fn unix_ms() -> i64 {
    i64::try_from(now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readings_agree_and_move_forward() {
        let first = unix_ms();
        let utc = now_utc();
        let go = now_go();
        let last = unix_ms();
        let utc_ms = i64::try_from(utc.unix_timestamp_nanos() / 1_000_000).expect("in range");
        assert!(
            first <= utc_ms && utc_ms <= last,
            "{first} <= {utc_ms} <= {last}"
        );
        assert!(
            first > 1_600_000_000_000,
            "the clock reads after 2020: {first}"
        );
        assert!(!go.is_zero());
    }
}
