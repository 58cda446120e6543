//! The daemon's bound on its rate-limit state: at most `gate.rate_limit.max_keys` counters and
//! [`MAX_STATE_BYTES`] of them, so unique identities cannot grow the state to its 16 MiB cap within one
//! bucket (the attack: 4,101 intents with unique 4 KB identities in 20 s).
//!
//! Counting stays Gait's ([`RateLimitState::enforce`]); this only decides whether a request that needs a *new*
//! counter may have one. The eviction rule never lets a key over its limit escape more cheaply than a new key
//! would:
//! 1. a key already counted is always counted again (an over-limit key stays blocked);
//! 2. a new key at the bound first evicts the least recently used counters whose count is *below* the limit
//!    they were counted under (such a key, when it returns, starts again at zero: exactly what a new identity
//!    would get, so nothing is gained by being evicted);
//! 3. a counter at or over its limit, or one whose limit this process has not seen (counted before a restart
//!    or by a `gait` CLI sharing the file) is never evicted;
//! 4. when nothing can be evicted the new key is refused: the request is blocked (`rate_limit_exceeded` and
//!    `agent_rate_limit_state_full`), logged at ERROR and counted ([`KEYS_REFUSED`]), instead of the old
//!    behaviour of resetting every counter. Expired buckets are pruned before anything is evicted (and by the
//!    daemon's counters every second), so room returns with the next bucket at the latest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use gait_policy::gate::{
    MAX_RATE_LIMIT_STATE_BYTES, RateLimitDecision, RateLimitError, RateLimitState,
};
use gait_policy::gotime::GoTime;
use gait_policy::policy::RateLimitPolicy;

/// Default `gate.rate_limit.max_keys`.
pub const DEFAULT_MAX_KEYS: usize = 1024;
/// Most bytes the counters may take in the state file: a quarter of [`MAX_RATE_LIMIT_STATE_BYTES`], so the
/// file stays well under the cap whatever the identities' length.
pub const MAX_STATE_BYTES: usize = MAX_RATE_LIMIT_STATE_BYTES / 4;
/// Bytes of the pretty-printed file around one counter besides its quoted key (indentation, field names and
/// a count of up to 20 digits).
const ENTRY_OVERHEAD: usize = 64;
/// Reason code added when a new counter was refused because the state is full.
pub const REASON_STATE_FULL: &str = "agent_rate_limit_state_full";

/// Counters evicted to make room since start (`gait_agent_rate_limit_keys_evicted_total`).
pub static KEYS_EVICTED: AtomicU64 = AtomicU64::new(0);
/// New counters refused because nothing could be evicted since start
/// (`gait_agent_rate_limit_keys_refused_total`).
pub static KEYS_REFUSED: AtomicU64 = AtomicU64::new(0);
/// Counters in the state after the last decision (`gait_agent_rate_limit_keys`).
pub static KEYS_TRACKED: AtomicU64 = AtomicU64::new(0);

/// The bound, and what this process knows of each counter (its limit and when it was last counted).
#[derive(Debug)]
pub struct KeyBound {
    max_keys: usize,
    max_bytes: usize,
    uses: Mutex<Uses>,
}

/// A mirror of the state's keys with what eviction needs; rebuilt when the state's key count differs (buckets
/// pruned, another process wrote the file, first decision after a start).
#[derive(Debug, Default)]
struct Uses {
    tick: u64,
    keys: HashMap<String, KeyUse>,
    /// Sum of [`KeyUse::bytes`].
    bytes: usize,
}

#[derive(Debug, Clone, Copy)]
struct KeyUse {
    /// The limit the key was last counted under; `None` when this process never counted it (not evictable).
    limit: Option<i64>,
    last_used: u64,
    bytes: usize,
}

impl Uses {
    fn sync(&mut self, state: &RateLimitState) {
        if self.keys.len() == state.len() {
            return;
        }
        self.keys.retain(|k, _| state.count(k) > 0);
        for (k, _) in state.counters() {
            if !self.keys.contains_key(k) {
                self.keys.insert(
                    k.to_owned(),
                    KeyUse {
                        limit: None,
                        last_used: 0,
                        bytes: entry_bytes(k),
                    },
                );
            }
        }
        self.bytes = self.keys.values().map(|u| u.bytes).sum();
    }
}

/// One bounded count: Gait's decision, and whether it was refused because the state is full.
#[derive(Debug, Clone)]
pub struct Counted {
    /// The rate-limit decision (not allowed when refused).
    pub decision: RateLimitDecision,
    /// The request needed a new counter and the state had no room for it.
    pub state_full: bool,
}

impl KeyBound {
    /// At most `max_keys` counters and [`MAX_STATE_BYTES`] of them.
    pub fn new(max_keys: usize) -> KeyBound {
        KeyBound::with_bytes(max_keys, MAX_STATE_BYTES)
    }

    /// At most `max_keys` counters and `max_bytes` of them in the file.
    pub fn with_bytes(max_keys: usize, max_bytes: usize) -> KeyBound {
        KeyBound {
            max_keys: max_keys.max(1),
            max_bytes,
            uses: Mutex::new(Uses::default()),
        }
    }

    /// Most counters held.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// [`RateLimitState::enforce`] within the bound (rule in the module docs).
    pub fn enforce(
        &self,
        state: &mut RateLimitState,
        limit: &RateLimitPolicy,
        tool_name: &str,
        identity: &str,
        now: GoTime,
    ) -> Result<Counted, RateLimitError> {
        let Some(key) = RateLimitState::counter_key(limit, tool_name, identity, now)? else {
            return Ok(Counted {
                decision: state.enforce(limit, tool_name, identity, now)?,
                state_full: false,
            });
        };
        let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
        uses.sync(state);
        uses.tick += 1;
        let tick = uses.tick;
        if state.count(&key) == 0 && !self.make_room(state, &mut uses, &key, now) {
            let refused = KEYS_REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
            if refused.is_power_of_two() {
                tracing::error!(
                    counters = state.len(),
                    max_keys = self.max_keys,
                    refused,
                    "rate-limit state is full of counters at their limit: new identities are blocked \
                     (agent_rate_limit_state_full) until the bucket ends; raise gate.rate_limit.max_keys if \
                     this is legitimate traffic"
                );
            }
            KEYS_TRACKED.store(len_u64(state), Ordering::Relaxed);
            let mut parts = key.splitn(4, '|').skip(1);
            let scope = parts.next().unwrap_or_default().to_owned();
            let scope_key = parts.nth(1).unwrap_or_default().to_owned();
            return Ok(Counted {
                decision: RateLimitDecision {
                    allowed: false,
                    limit: limit.requests,
                    used: 0,
                    remaining: 0,
                    scope,
                    key: scope_key,
                },
                state_full: true,
            });
        }
        let decision = state.enforce(limit, tool_name, identity, now)?;
        let bytes = entry_bytes(&key);
        if let Some(old) = uses.keys.insert(
            key,
            KeyUse {
                limit: Some(limit.requests),
                last_used: tick,
                bytes,
            },
        ) {
            uses.bytes = uses.bytes.saturating_sub(old.bytes);
        }
        uses.bytes += bytes;
        // Counting a new bucket prunes the window's older buckets (Gait's rule): mirror that now.
        uses.sync(state);
        KEYS_TRACKED.store(len_u64(state), Ordering::Relaxed);
        Ok(Counted {
            decision,
            state_full: false,
        })
    }

    /// Makes room for the new `key`: drops the counters of buckets that are over at `now` (they can never
    /// count again), then evicts the least recently used counters below their limit until it fits, and, while
    /// such counters remain, a sixteenth of the bound more (so the sort runs once per many new keys, not at
    /// each). False, with nothing evicted, when it cannot fit.
    fn make_room(
        &self,
        state: &mut RateLimitState,
        uses: &mut Uses,
        key: &str,
        now: GoTime,
    ) -> bool {
        let need = entry_bytes(key);
        let fits = |count: usize, bytes: usize, slack: bool| {
            let (keys, room) = if slack {
                (self.max_keys / 16, self.max_bytes / 16)
            } else {
                (0, 0)
            };
            count + keys < self.max_keys && bytes + need + room <= self.max_bytes
        };
        if fits(state.len(), uses.bytes, false) {
            return true;
        }
        if state.prune_expired(now) > 0 {
            uses.sync(state);
            if fits(state.len(), uses.bytes, false) {
                return true;
            }
        }
        let (mut count, mut bytes) = (state.len(), uses.bytes);
        let mut candidates: Vec<(u64, &str, usize)> = uses
            .keys
            .iter()
            .filter(|(k, u)| u.limit.is_some_and(|limit| state.count(k) < limit))
            .map(|(k, u)| (u.last_used, k.as_str(), u.bytes))
            .collect();
        candidates.sort_unstable();
        let mut evict = Vec::new();
        for (_, k, b) in candidates {
            if fits(count, bytes, true) {
                break;
            }
            count -= 1;
            bytes = bytes.saturating_sub(b);
            evict.push(k.to_owned());
        }
        if !fits(count, bytes, false) {
            return false;
        }
        KEYS_EVICTED.fetch_add(evict.len() as u64, Ordering::Relaxed);
        for k in evict {
            state.remove(&k);
            if let Some(u) = uses.keys.remove(&k) {
                uses.bytes = uses.bytes.saturating_sub(u.bytes);
            }
        }
        true
    }
}

/// Bytes one counter takes in the pretty-printed file.
fn entry_bytes(key: &str) -> usize {
    serde_json::to_string(key).map_or(key.len() * 6, |quoted| quoted.len()) + ENTRY_OVERHEAD
}

fn len_u64(state: &RateLimitState) -> u64 {
    u64::try_from(state.len()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
