//! Reconnect delays: exponential backoff with "full jitter", so a fleet that loses its aggregator at the same
//! instant spreads its reconnects over the whole window instead of knocking in lockstep.
//!
//! Attempt `n` (0-based) sleeps a uniformly random duration in `[0, min(cap, base * 2^n)]`. The ceiling stops
//! growing at `cap`; [`Backoff::reset`] returns to attempt 0 once a connection has proven stable. Randomness
//! comes from the operating system (`getrandom`); should that ever fail, the full ceiling is used, which is
//! still bounded and still makes progress.

use std::time::Duration;

/// Default first ceiling. A whole fleet loses its aggregator at once when it restarts: a one-second window
/// spreads the first redials (10,000 agents in 0.2 s overflowed the server socket, costing dropped handshakes
/// a retransmission timeout each; see docs/benchmarks.md).
pub const DEFAULT_BASE: Duration = Duration::from_secs(1);
/// Default largest ceiling.
pub const DEFAULT_CAP: Duration = Duration::from_secs(30);

/// Exponential backoff state for one reconnect loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(DEFAULT_BASE, DEFAULT_CAP)
    }
}

impl Backoff {
    /// A backoff whose first ceiling is `base` and whose ceiling never exceeds `cap` (`cap` is raised to
    /// `base` if smaller).
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// Number of delays handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay, drawn from the operating system's random source.
    pub fn next_delay(&mut self) -> Duration {
        let random = getrandom::u64().unwrap_or(u64::MAX);
        self.next_delay_with(random)
    }

    /// The next delay for a given 64-bit random value: `ceiling * random / 2^64`, then the attempt counter
    /// advances. Deterministic, so the bounds can be tested.
    pub fn next_delay_with(&mut self, random: u64) -> Duration {
        let ceiling = self.ceiling().as_nanos();
        // ceiling < 2^64 ns (about 584 years) for any sane cap; u128 arithmetic cannot overflow here.
        let nanos = ceiling.saturating_mul(u128::from(random)) >> 64;
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// A uniformly random delay in `[0, window]`, for a redial window the aggregator announced when it shut
    /// down ([`gait_wire::shutdown`]). The attempt counter is not touched: should that redial fail, the
    /// ordinary backoff follows.
    pub fn within(window: Duration) -> Duration {
        Self::within_with(window, getrandom::u64().unwrap_or(u64::MAX))
    }

    /// The wait before the next redial: a uniformly random part of the window a shutting-down aggregator
    /// announced ([`Backoff::within`]), or else the next backoff delay ([`Backoff::next_delay`]).
    pub fn redial_delay(&mut self, announced: Option<Duration>) -> Duration {
        match announced {
            Some(window) => Self::within(window),
            None => self.next_delay(),
        }
    }

    /// [`Backoff::within`] for a given 64-bit random value (`window * random / 2^64`).
    pub fn within_with(window: Duration, random: u64) -> Duration {
        let nanos = window.as_nanos().saturating_mul(u128::from(random)) >> 64;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The wait before the next redial: another draw of the announced window while `plan` has draws left,
    /// else the next backoff delay ([`Backoff::next_delay`]).
    pub fn after(&mut self, plan: Option<&mut RedialPlan>) -> Duration {
        plan.and_then(RedialPlan::next_delay)
            .unwrap_or_else(|| self.next_delay())
    }

    /// Back to the first, smallest ceiling (call after a connection stayed up long enough to count as stable).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How an agent comes back after its aggregator shut down and announced a redial window
/// ([`gait_wire::shutdown`]). The window is sized to the rate the aggregator measured it can take handshakes at,
/// so a dial that fails inside it (refused because the aggregator is at its handshake bound, or unanswered
/// while it restarts) draws again within **what is left of the window** (at least a tenth of it) rather than
/// falling back to the one-second exponential backoff, which would pile the fleet's second attempts into the
/// first seconds, or drawing from a whole window again, which would leave a tail long after the window ended.
/// After [`RedialPlan::DRAWS`] draws the plan is spent and the exponential backoff takes over: an aggregator
/// that does not come back is not dialled on a short fixed period for ever.
#[derive(Debug, Clone)]
pub struct RedialPlan {
    window: Duration,
    ends: std::time::Instant,
    draws_left: u32,
}

impl RedialPlan {
    /// Draws of the window one announcement gives: the first redial and two more after failed dials.
    pub const DRAWS: u32 = 3;

    /// A plan over an announced `window`, starting now.
    pub fn new(window: Duration) -> Self {
        Self::starting_at(window, std::time::Instant::now())
    }

    /// A plan over `window` announced at `now`.
    pub fn starting_at(window: Duration, now: std::time::Instant) -> Self {
        Self {
            window,
            ends: now + window,
            draws_left: Self::DRAWS,
        }
    }

    /// The next wait, or `None` once the plan is spent.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.next_delay_with(
            std::time::Instant::now(),
            getrandom::u64().unwrap_or(u64::MAX),
        )
    }

    /// [`RedialPlan::next_delay`] at `now` for a given 64-bit random value: uniform over what is left of the
    /// window, at least a tenth of the window.
    pub fn next_delay_with(&mut self, now: std::time::Instant, random: u64) -> Option<Duration> {
        self.draws_left = self.draws_left.checked_sub(1)?;
        let left = self
            .ends
            .saturating_duration_since(now)
            .max(self.window / 10);
        Some(Backoff::within_with(left, random))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn announced_windows_are_spanned() {
        let w = Duration::from_secs(10);
        assert_eq!(Backoff::within_with(w, 0), Duration::ZERO);
        assert_eq!(Backoff::within_with(w, 1 << 63), Duration::from_secs(5));
        let top = Backoff::within_with(w, u64::MAX);
        assert!(top <= w && top > Duration::from_millis(9_999));
    }

    #[test]
    fn an_announced_window_replaces_the_backoff_without_advancing_it() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let w = Duration::from_millis(50);
        assert!(b.redial_delay(Some(w)) <= w);
        assert_eq!(b.attempt(), 0);
        b.redial_delay(None);
        assert_eq!(b.attempt(), 1);
    }

    #[test]
    fn ceiling_doubles_from_base_until_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay_with(0);
        }
        assert_eq!(
            ceilings,
            vec![200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
    }

    #[test]
    fn reset_returns_to_the_base_ceiling() {
        let mut b = Backoff::default();
        for _ in 0..7 {
            b.next_delay_with(u64::MAX);
        }
        assert!(b.ceiling() > DEFAULT_BASE);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), DEFAULT_BASE);
    }

    #[test]
    fn extreme_random_values_map_to_the_ends_of_the_window() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay_with(0), Duration::ZERO);
        let mut b = Backoff::default();
        let top = b.next_delay_with(u64::MAX);
        assert!(top <= DEFAULT_BASE && top > DEFAULT_BASE - Duration::from_micros(1));
    }

    #[test]
    fn os_random_delays_are_not_all_equal() {
        // 32 draws from a 200 ms window at nanosecond resolution: equal draws mean no jitter at all.
        let draws: std::collections::BTreeSet<Duration> =
            (0..32).map(|_| Backoff::default().next_delay()).collect();
        assert!(draws.len() > 1, "{draws:?}");
    }

    #[test]
    fn a_huge_attempt_count_neither_panics_nor_exceeds_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        for _ in 0..200 {
            assert!(b.next_delay_with(u64::MAX) <= Duration::from_secs(5));
        }
    }

    proptest! {
        #[test]
        fn every_delay_is_within_the_current_ceiling_and_the_cap(
            base_ms in 1u64..5_000,
            cap_ms in 1u64..120_000,
            randoms in proptest::collection::vec(any::<u64>(), 1..80),
        ) {
            let mut b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            let cap = Duration::from_millis(cap_ms.max(base_ms));
            let mut previous_ceiling = Duration::ZERO;
            for r in randoms {
                let ceiling = b.ceiling();
                prop_assert!(ceiling >= previous_ceiling, "ceiling shrank");
                prop_assert!(ceiling <= cap);
                let d = b.next_delay_with(r);
                prop_assert!(d <= ceiling, "{d:?} > {ceiling:?}");
                previous_ceiling = ceiling;
            }
        }

        #[test]
        fn delay_grows_with_the_random_value(a in any::<u64>(), b in any::<u64>(), attempt in 0u32..40) {
            let mut x = Backoff::default();
            let mut y = Backoff::default();
            for _ in 0..attempt { x.next_delay_with(0); y.next_delay_with(0); }
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(x.next_delay_with(lo) <= y.next_delay_with(hi));
        }
    }

    #[test]
    fn a_plan_draws_within_what_is_left_of_its_window_three_times_then_backs_off() {
        let w = Duration::from_secs(40);
        let t0 = std::time::Instant::now();
        let mut plan = RedialPlan::starting_at(w, t0);
        // First draw: the whole window.
        assert_eq!(
            plan.next_delay_with(t0, 1 << 63),
            Some(Duration::from_secs(20))
        );
        // Refused 30 s in: only the 10 s left.
        assert_eq!(
            plan.next_delay_with(t0 + Duration::from_secs(30), u64::MAX)
                .map(|d| d <= Duration::from_secs(10) && d > Duration::from_millis(9_999)),
            Some(true)
        );
        // Past the window: a tenth of it (4 s), not a whole window again.
        assert_eq!(
            plan.next_delay_with(t0 + Duration::from_secs(60), 1 << 63),
            Some(Duration::from_secs(2))
        );
        // Spent: the exponential backoff decides, from its first ceiling, not advanced by the plan.
        let mut backoff = Backoff::default();
        assert_eq!(plan.next_delay(), None);
        let d = backoff.after(Some(&mut plan));
        assert!(d <= DEFAULT_BASE);
        assert_eq!(backoff.attempt(), 1);
        assert!(backoff.after(None) <= DEFAULT_BASE * 2);
        // A fresh plan's draws all stay within the window.
        let mut fresh = RedialPlan::new(w);
        for _ in 0..RedialPlan::DRAWS {
            assert!(backoff.after(Some(&mut fresh)) <= w);
        }
    }
}
