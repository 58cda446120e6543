//! The aggregator's shutdown announcement. When the aggregator stops it closes every agent connection with
//! [`CLOSE_SHUTDOWN`] and a reason that tells the fleet over how long a window to spread its redials
//! (`reconnect_spread_ms=N`), sized by the aggregator from how many agents it is dropping and how many
//! handshakes a second it is configured to take. Agents wait a uniformly random part of that window before their
//! first redial, so a restart is met by a steady stream of handshakes instead of all of them in one instant.
//! While it drains, the stopping aggregator answers no new connection attempt: an agent whose draw fell into the
//! drain is not refused but retransmits its `Initial` (QUIC's probe timeout, about a second), and the aggregator
//! that replaces it answers.
//!
//! The reason stays human-readable (it shows up in logs as is); agents that do not understand the hint fall
//! back to their ordinary jittered backoff.

use std::time::Duration;

/// QUIC application close code of an aggregator that is shutting down (defined with the others in
/// [`crate::close`]).
pub use crate::close::CLOSE_SHUTDOWN;

/// Largest spread an agent accepts from a close reason; a larger (or hostile) value is clamped to this.
pub const MAX_RECONNECT_SPREAD: Duration = Duration::from_secs(300);

const SPREAD_KEY: &str = "reconnect_spread_ms=";

/// The close reason announcing a shutdown with a redial window of `spread`.
pub fn shutdown_reason(spread: Duration) -> Vec<u8> {
    let ms = spread.min(MAX_RECONNECT_SPREAD).as_millis();
    format!("aggregator shutting down; {SPREAD_KEY}{ms}").into_bytes()
}

/// The redial window announced in a close reason, clamped to [`MAX_RECONNECT_SPREAD`]; `None` when the
/// reason carries no (well-formed) hint.
pub fn announced_spread(reason: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(reason).ok()?;
    let start = text.find(SPREAD_KEY)? + SPREAD_KEY.len();
    let digits = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .filter(|d| !d.is_empty() && d.len() <= 12)?;
    let ms: u64 = digits.parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_RECONNECT_SPREAD))
}

/// The window an aggregator announces when it drops `open` connections and the fleet should come back at
/// about `per_second` handshakes a second: `open / per_second`, at least one second (`per_second` 0 is
/// treated as 1).
pub fn spread_for(open: usize, per_second: u32) -> Duration {
    let per_second = u64::from(per_second.max(1));
    let open = u64::try_from(open).unwrap_or(u64::MAX);
    let ms = open.saturating_mul(1000) / per_second;
    Duration::from_millis(ms).clamp(Duration::from_secs(1), MAX_RECONNECT_SPREAD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reason_round_trips_and_reads_as_text() {
        let reason = shutdown_reason(Duration::from_millis(7_250));
        assert_eq!(
            std::str::from_utf8(&reason).unwrap(),
            "aggregator shutting down; reconnect_spread_ms=7250"
        );
        assert_eq!(
            announced_spread(&reason),
            Some(Duration::from_millis(7_250))
        );
    }

    #[test]
    fn reasons_without_a_hint_give_none() {
        for reason in [
            &b"aggregator shutting down"[..],
            b"reconnect_spread_ms=",
            b"reconnect_spread_ms=abc",
            b"reconnect_spread_ms=-5",
            b"reconnect_spread_ms=99999999999999999999",
            b"\xff\xfe",
        ] {
            assert_eq!(announced_spread(reason), None, "{reason:?}");
        }
    }

    #[test]
    fn hostile_spreads_are_clamped() {
        assert_eq!(
            announced_spread(b"x; reconnect_spread_ms=999999999999"),
            Some(MAX_RECONNECT_SPREAD)
        );
        assert_eq!(
            shutdown_reason(Duration::from_secs(10_000)),
            shutdown_reason(MAX_RECONNECT_SPREAD)
        );
    }

    #[test]
    fn spread_scales_with_the_fleet() {
        assert_eq!(spread_for(0, 1000), Duration::from_secs(1));
        assert_eq!(spread_for(10_000, 1000), Duration::from_secs(10));
        assert_eq!(spread_for(10_000, 2500), Duration::from_secs(4));
        assert_eq!(spread_for(5, 0), Duration::from_secs(5));
        assert_eq!(spread_for(usize::MAX, 1), MAX_RECONNECT_SPREAD);
    }

    proptest! {
        #[test]
        fn any_reason_parses_without_panic(reason in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Some(d) = announced_spread(&reason) {
                prop_assert!(d <= MAX_RECONNECT_SPREAD);
            }
        }

        #[test]
        fn announced_round_trips(ms in 0u64..300_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(announced_spread(&shutdown_reason(d)), Some(d));
        }
    }
}
