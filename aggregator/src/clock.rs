//! The one place the aggregator reads the wall clock.
//!
//! Every timestamp it stores, signs or compares (record receipt, presence, bundle validity, certificate
//! windows, session-ticket age) comes from here, so a later clock abstraction (a test clock, a skew check)
//! has one seam to replace. Monotonic timers (`Instant`, tokio) are not wall-clock reads and stay where they
//! are used.

#![allow(clippy::disallowed_methods)] // the one place the aggregator reads the wall clock

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// The current UTC time.
pub fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Milliseconds since the Unix epoch (negative before 1970).
pub fn unix_ms() -> i64 {
    (now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Whole seconds since the Unix epoch; 0 if the system clock is set before 1970.
pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The current time as a [`SystemTime`] (for file timestamps).
pub fn system_now() -> SystemTime {
    SystemTime::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_readings_agree() {
        let before = unix_seconds();
        let ms = unix_ms();
        let utc = now_utc().unix_timestamp();
        let after = unix_seconds();
        let ms_secs = u64::try_from(ms / 1000).expect("after 1970");
        assert!(
            before <= ms_secs && ms_secs <= after,
            "{before} {ms} {after}"
        );
        let utc = u64::try_from(utc).expect("after 1970");
        assert!(before <= utc && utc <= after, "{before} {utc} {after}");
    }
}
