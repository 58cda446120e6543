//! The bound under the attack (5,000 intents with unique 4 KB identities in one hour bucket) and the
//! eviction rule.
#![allow(clippy::disallowed_methods)] // tests read the clock

use super::*;

fn hourly(requests: i64) -> RateLimitPolicy {
    RateLimitPolicy {
        requests,
        window: "hour".into(),
        scope: "identity".into(),
    }
}

fn at(text: &str) -> GoTime {
    GoTime::parse_rfc3339(text).unwrap()
}

/// A 4 KB identity unique to `i`.
fn big_identity(i: usize) -> String {
    let mut id = format!("user-{i:06}-");
    while id.len() < 4096 {
        id.push('x');
    }
    id
}

#[test]
fn five_thousand_unique_4kb_identities_stay_under_the_bound_and_an_over_limit_key_stays_blocked() {
    let bound = KeyBound::new(DEFAULT_MAX_KEYS);
    let limit = hourly(2);
    let mut state = RateLimitState::new();
    let now = at("2026-02-05T10:30:00Z");
    for _ in 0..2 {
        assert!(
            bound
                .enforce(&mut state, &limit, "t", "attacker", now)
                .unwrap()
                .decision
                .allowed
        );
    }
    let over = bound
        .enforce(&mut state, &limit, "t", "attacker", now)
        .unwrap();
    assert!(!over.decision.allowed && !over.state_full, "{over:?}");

    let mut most_keys = 0;
    for i in 0..5_000 {
        let counted = bound
            .enforce(&mut state, &limit, "t", &big_identity(i), now)
            .unwrap();
        assert!(
            counted.decision.allowed,
            "new identity {i} refused: {counted:?}"
        );
        most_keys = most_keys.max(state.len());
        if i % 250 == 0 || i == 4_999 {
            let attacker = bound
                .enforce(&mut state, &limit, "t", "attacker", now)
                .unwrap();
            assert!(
                !attacker.decision.allowed,
                "the over-limit key escaped after {i} unique identities: {attacker:?}"
            );
            assert_eq!(
                state.count("hour|identity|2026-02-05T10:00:00Z|attacker"),
                2
            );
            let file = state.to_json_pretty().len();
            assert!(
                file <= MAX_STATE_BYTES + 1024,
                "state file {file} bytes after {i} identities, bound {MAX_STATE_BYTES}"
            );
        }
    }
    assert!(most_keys <= DEFAULT_MAX_KEYS, "{most_keys} counters");
    let file = state.to_json_pretty().len();
    assert!(
        file < MAX_RATE_LIMIT_STATE_BYTES / 2,
        "the file ({file} bytes) stays well under the {MAX_RATE_LIMIT_STATE_BYTES}-byte cap"
    );
}

#[test]
fn the_least_recently_used_key_below_its_limit_is_evicted_first() {
    let bound = KeyBound::with_bytes(3, usize::MAX);
    let limit = hourly(5);
    let mut state = RateLimitState::new();
    let now = at("2026-02-05T10:30:00Z");
    for id in ["a", "b", "c"] {
        bound.enforce(&mut state, &limit, "t", id, now).unwrap();
    }
    // "a" is used again, so "b" is now the least recently used.
    bound.enforce(&mut state, &limit, "t", "a", now).unwrap();
    let d = bound.enforce(&mut state, &limit, "t", "d", now).unwrap();
    assert!(d.decision.allowed && !d.state_full);
    assert_eq!(state.len(), 3);
    assert_eq!(
        state.count("hour|identity|2026-02-05T10:00:00Z|b"),
        0,
        "b evicted"
    );
    assert_eq!(
        state.count("hour|identity|2026-02-05T10:00:00Z|a"),
        2,
        "a kept"
    );
    assert_eq!(
        state.count("hour|identity|2026-02-05T10:00:00Z|c"),
        1,
        "c kept"
    );
}

#[test]
fn when_every_key_is_at_its_limit_a_new_key_is_refused_and_nothing_is_reset() {
    let bound = KeyBound::with_bytes(2, usize::MAX);
    let limit = hourly(1);
    let mut state = RateLimitState::new();
    let now = at("2026-02-05T10:30:00Z");
    for id in ["a", "b"] {
        assert!(
            bound
                .enforce(&mut state, &limit, "t", id, now)
                .unwrap()
                .decision
                .allowed
        );
    }
    let refused_before = KEYS_REFUSED.load(Ordering::Relaxed);
    let c = bound.enforce(&mut state, &limit, "t", "c", now).unwrap();
    assert!(!c.decision.allowed && c.state_full, "{c:?}");
    assert_eq!(c.decision.key, "c");
    assert_eq!(c.decision.scope, "identity");
    assert!(KEYS_REFUSED.load(Ordering::Relaxed) > refused_before);
    assert_eq!(state.len(), 2, "nothing reset");
    assert!(
        !bound
            .enforce(&mut state, &limit, "t", "a", now)
            .unwrap()
            .decision
            .allowed
    );
    // The next bucket starts afresh (Gait prunes the window's old buckets when it counts).
    let later = at("2026-02-05T11:00:01Z");
    assert!(
        bound
            .enforce(&mut state, &limit, "t", "c", later)
            .unwrap()
            .decision
            .allowed
    );
}

#[test]
fn keys_counted_before_a_restart_are_never_evicted() {
    let limit = hourly(5);
    let now = at("2026-02-05T10:30:00Z");
    let mut state = RateLimitState::new();
    for id in ["a", "b"] {
        state.enforce(&limit, "t", id, now).unwrap();
    }
    // A fresh process: it does not know the limit "a" and "b" were counted under.
    let bound = KeyBound::with_bytes(2, usize::MAX);
    let c = bound.enforce(&mut state, &limit, "t", "c", now).unwrap();
    assert!(c.state_full, "{c:?}");
    assert_eq!(state.len(), 2);
}

#[test]
fn the_byte_budget_bounds_long_identities_below_the_key_cap() {
    let bound = KeyBound::with_bytes(1_000, 64 * 1024);
    let limit = hourly(3);
    let mut state = RateLimitState::new();
    let now = at("2026-02-05T10:30:00Z");
    for i in 0..200 {
        assert!(
            bound
                .enforce(&mut state, &limit, "t", &big_identity(i), now)
                .unwrap()
                .decision
                .allowed
        );
        assert!(state.to_json_pretty().len() <= 64 * 1024 + 1024);
    }
    assert!(
        state.len() < 20,
        "{} counters of 4 KB in 64 KiB",
        state.len()
    );
}
