//! Rate-limit and destructive-budget counting over the `gait.gate.rate_limit_state` document (contract §3.4
//! CLI post-processing). Pure: the caller loads the file, passes `now`, and saves the state under its lock.
//!
//! Counter key: `window|scope|bucket_start(RFC 3339, UTC)|scope_key`, scope key `tool`, `identity` or
//! `tool|identity`. A request over the limit is refused without being counted; counters of other buckets of the
//! same window are pruned when a request is counted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::gotime::GoTime;
use crate::policy::RateLimitPolicy;
use crate::text::lower_trim;

/// Schema id of the state file.
pub const RATE_LIMIT_STATE_SCHEMA_ID: &str = "gait.gate.rate_limit_state";
/// Schema version of the state file.
pub const RATE_LIMIT_STATE_SCHEMA_VERSION: &str = "1.0.0";
/// Largest state file [`RateLimitState::from_json`] reads.
pub const MAX_RATE_LIMIT_STATE_BYTES: usize = 16 * 1024 * 1024;

/// The persisted counters (Gait's `.gait-out/gate_rate_limits.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitState {
    counters: BTreeMap<String, i64>,
}

/// Where one request is counted: its counter key and the parts it is made of.
struct KeyParts {
    counter_key: String,
    window: String,
    bucket: String,
    scope: String,
    scope_key: String,
}

#[derive(Serialize, Deserialize)]
struct PersistedState {
    #[serde(default)]
    schema_id: String,
    #[serde(default)]
    schema_version: String,
    #[serde(default)]
    counters: Option<Vec<PersistedCounter>>,
}

#[derive(Serialize, Deserialize)]
struct PersistedCounter {
    #[serde(default)]
    key: String,
    #[serde(default)]
    count: i64,
}

/// The outcome of one rate-limit check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RateLimitDecision {
    /// The request was within the limit (and was counted).
    pub allowed: bool,
    /// Requests per window.
    pub limit: i64,
    /// Requests counted in the current bucket, including this one when allowed.
    pub used: i64,
    /// Requests left in the current bucket.
    pub remaining: i64,
    /// `tool|identity|tool_identity`.
    pub scope: String,
    /// The scope key (`tool`, `identity` or `tool|identity`).
    pub key: String,
}

/// The state file or a limit is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// The state file is not JSON of the expected shape.
    #[error("parse rate limit state: {0}")]
    Parse(#[from] serde_json::Error),
    /// The state file exceeds [`MAX_RATE_LIMIT_STATE_BYTES`].
    #[error(
        "rate limit state is {size} bytes, over the {max} byte limit: delete the state file to reset it"
    )]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The window is not `minute` or `hour`.
    #[error("unsupported rate_limit window: {0}")]
    Window(String),
    /// The scope is not `tool`, `identity` or `tool_identity`.
    #[error("unsupported rate_limit scope: {0}")]
    Scope(String),
    /// `now` cannot be printed as an RFC 3339 bucket.
    #[error("rate limit bucket: {0}")]
    Time(#[from] crate::gotime::TimeError),
}

impl RateLimitState {
    /// An empty state (no file yet).
    pub fn new() -> RateLimitState {
        RateLimitState::default()
    }

    /// Read the state file content; unknown fields are ignored, empty keys and non-positive counts dropped.
    pub fn from_json(bytes: &[u8]) -> Result<RateLimitState, RateLimitError> {
        if bytes.len() > MAX_RATE_LIMIT_STATE_BYTES {
            return Err(RateLimitError::TooLarge {
                size: bytes.len(),
                max: MAX_RATE_LIMIT_STATE_BYTES,
            });
        }
        let persisted: PersistedState = serde_json::from_slice(bytes)?;
        let mut counters = BTreeMap::new();
        for counter in persisted.counters.unwrap_or_default() {
            let key = counter.key.trim();
            if key.is_empty() || counter.count <= 0 {
                continue;
            }
            counters.insert(key.to_owned(), counter.count);
        }
        Ok(RateLimitState { counters })
    }

    /// A state holding `counters` (a store that keeps them elsewhere loads them back); like
    /// [`RateLimitState::from_json`], empty keys and non-positive counts are dropped.
    pub fn from_counters(counters: impl IntoIterator<Item = (String, i64)>) -> RateLimitState {
        RateLimitState {
            counters: counters
                .into_iter()
                .filter(|(key, count)| !key.trim().is_empty() && *count > 0)
                .collect(),
        }
    }

    /// The file content Gait writes: 2-space indented JSON, counters sorted by key, trailing newline.
    pub fn to_json_pretty(&self) -> Vec<u8> {
        let persisted = PersistedState {
            schema_id: RATE_LIMIT_STATE_SCHEMA_ID.to_owned(),
            schema_version: RATE_LIMIT_STATE_SCHEMA_VERSION.to_owned(),
            counters: Some(
                self.counters
                    .iter()
                    .filter(|(key, count)| !key.trim().is_empty() && **count > 0)
                    .map(|(key, count)| PersistedCounter {
                        key: key.clone(),
                        count: *count,
                    })
                    .collect(),
            ),
        };
        let mut out = serde_json::to_vec_pretty(&persisted).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The current count of a counter key.
    pub fn count(&self, key: &str) -> i64 {
        self.counters.get(key).copied().unwrap_or(0)
    }

    /// Number of counters held.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Drops the counters whose bucket is over at `now` (a `minute` bucket one minute after its start, an
    /// `hour` bucket one hour after) and keys that are not counter keys; returns how many were dropped. Gait only
    /// prunes a window's old buckets when that window next counts, so buckets of windows and scopes no longer
    /// used stay forever; a long-running agent calls this to keep the state to live buckets. Counting is
    /// unchanged: a dropped bucket could never be counted against again.
    pub fn prune_expired(&mut self, now: GoTime) -> usize {
        let before = self.counters.len();
        let now = now.unix_timestamp();
        self.counters.retain(|key, _| {
            let parts: Vec<&str> = key.splitn(4, '|').collect();
            let [window, _, bucket, _] = parts[..] else {
                return false;
            };
            let length = match window {
                "minute" => 60,
                "hour" => 3600,
                _ => return true,
            };
            match GoTime::parse_rfc3339(bucket) {
                Ok(start) => start.unix_timestamp().saturating_add(length) > now,
                Err(_) => false,
            }
        });
        before - self.counters.len()
    }

    /// The counters held, in key order (`window|scope|bucket|scope_key` and their counts).
    pub fn counters(&self) -> impl Iterator<Item = (&str, i64)> {
        self.counters
            .iter()
            .map(|(key, count)| (key.as_str(), *count))
    }

    /// Drops one counter; returns its count if it was held. A caller bounding the state evicts with it.
    pub fn remove(&mut self, key: &str) -> Option<i64> {
        self.counters.remove(key)
    }

    /// The counter key [`RateLimitState::enforce`] counts a request under (`window|scope|bucket|scope_key`),
    /// or `None` for a limit with `requests <= 0` (never counted).
    pub fn counter_key(
        limit: &RateLimitPolicy,
        tool_name: &str,
        identity: &str,
        now: GoTime,
    ) -> Result<Option<String>, RateLimitError> {
        if limit.requests <= 0 {
            return Ok(None);
        }
        Ok(Some(
            Self::key_parts(limit, tool_name, identity, now)?.counter_key,
        ))
    }

    /// Where one request is counted.
    fn key_parts(
        limit: &RateLimitPolicy,
        tool_name: &str,
        identity: &str,
        now: GoTime,
    ) -> Result<KeyParts, RateLimitError> {
        let scope = match lower_trim(&limit.scope) {
            s if s.is_empty() => "tool_identity".to_owned(),
            s => s,
        };
        let window = match lower_trim(&limit.window) {
            w if w.is_empty() => "minute".to_owned(),
            w => w,
        };
        let bucket_start = match window.as_str() {
            "minute" => now.truncate_to_minute(),
            "hour" => now.truncate_to_hour(),
            _ => return Err(RateLimitError::Window(window)),
        };
        let bucket = bucket_start.to_rfc3339_seconds()?;
        let tool = lower_trim(tool_name);
        let identity = identity.trim();
        let scope_key = match scope.as_str() {
            "tool" => tool,
            "identity" => identity.to_owned(),
            "tool_identity" => format!("{tool}|{identity}"),
            _ => return Err(RateLimitError::Scope(scope)),
        };
        let counter_key = format!("{window}|{scope}|{bucket}|{scope_key}");
        Ok(KeyParts {
            counter_key,
            window,
            bucket,
            scope,
            scope_key,
        })
    }

    /// Check and count one request of a (normalized) intent against `limit` at `now`. A limit with
    /// `requests <= 0` always allows and changes nothing. The state changes only when the request is allowed.
    pub fn enforce(
        &mut self,
        limit: &RateLimitPolicy,
        tool_name: &str,
        identity: &str,
        now: GoTime,
    ) -> Result<RateLimitDecision, RateLimitError> {
        if limit.requests <= 0 {
            return Ok(RateLimitDecision {
                allowed: true,
                ..RateLimitDecision::default()
            });
        }
        let KeyParts {
            counter_key,
            window,
            bucket,
            scope,
            scope_key,
        } = Self::key_parts(limit, tool_name, identity, now)?;

        // The counter's own key always survives the pruning below (same window, same bucket), so its count is
        // read before pruning, and nothing changes when the request is refused.
        let used = self.counters.get(&counter_key).copied().unwrap_or(0);
        if used >= limit.requests {
            return Ok(RateLimitDecision {
                allowed: false,
                limit: limit.requests,
                used,
                remaining: 0,
                scope,
                key: scope_key,
            });
        }
        let used = used + 1;
        self.counters
            .retain(|key, _| Self::kept_when_counting(key, &window, &bucket));
        self.counters.insert(counter_key, used);
        Ok(RateLimitDecision {
            allowed: true,
            limit: limit.requests,
            used,
            remaining: limit.requests - used,
            scope,
            key: scope_key,
        })
    }

    /// Whether `key` stays when a request of `window` is counted in `bucket` (Gait's rule): a counter key of
    /// another window, or of this window's current bucket. Keys that are not counter keys go.
    fn kept_when_counting(key: &str, window: &str, bucket: &str) -> bool {
        let mut parts = key.splitn(4, '|');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(w), Some(_), Some(b), Some(_)) => w != window || b == bucket,
            _ => false,
        }
    }

    /// The destructive budget: the same counting with the tool name prefixed by `destructive_budget|`. Callers
    /// apply it only to intents with a destructive target.
    pub fn enforce_destructive_budget(
        &mut self,
        budget: &RateLimitPolicy,
        tool_name: &str,
        identity: &str,
        now: GoTime,
    ) -> Result<RateLimitDecision, RateLimitError> {
        self.enforce(
            budget,
            &Self::destructive_budget_tool(tool_name),
            identity,
            now,
        )
    }

    /// The tool name the destructive budget counts under (`destructive_budget|<tool>`), for
    /// [`RateLimitState::counter_key`].
    pub fn destructive_budget_tool(tool_name: &str) -> String {
        format!("destructive_budget|{}", tool_name.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: i64, window: &str, scope: &str) -> RateLimitPolicy {
        RateLimitPolicy {
            requests,
            window: window.into(),
            scope: scope.into(),
        }
    }

    fn at(text: &str) -> GoTime {
        GoTime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn counts_until_the_limit_then_refuses_without_counting() {
        let mut state = RateLimitState::new();
        let l = limit(2, "minute", "tool_identity");
        let now = at("2026-02-05T10:42:17Z");
        assert!(
            state
                .enforce(&l, "Tool.Write", "alice", now)
                .unwrap()
                .allowed
        );
        let second = state.enforce(&l, "tool.write", "alice", now).unwrap();
        assert!(second.allowed);
        assert_eq!(second.remaining, 0);
        let third = state.enforce(&l, "tool.write", "alice", now).unwrap();
        assert!(!third.allowed);
        assert_eq!(third.used, 2);
        assert_eq!(
            state.count("minute|tool_identity|2026-02-05T10:42:00Z|tool.write|alice"),
            2
        );
    }

    #[test]
    fn a_new_bucket_prunes_old_counters_of_the_same_window_only() {
        let mut state = RateLimitState::new();
        let minute = limit(1, "minute", "tool");
        let hour = limit(5, "hour", "identity");
        state
            .enforce(&hour, "t", "alice", at("2026-02-05T10:00:10Z"))
            .unwrap();
        state
            .enforce(&minute, "t", "alice", at("2026-02-05T10:00:10Z"))
            .unwrap();
        assert!(
            !state
                .enforce(&minute, "t", "alice", at("2026-02-05T10:00:50Z"))
                .unwrap()
                .allowed
        );
        assert!(
            state
                .enforce(&minute, "t", "alice", at("2026-02-05T10:01:00Z"))
                .unwrap()
                .allowed
        );
        assert_eq!(state.len(), 2, "old minute bucket pruned, hour bucket kept");
        assert_eq!(state.count("hour|identity|2026-02-05T10:00:00Z|alice"), 1);
    }

    #[test]
    fn counter_key_is_the_key_enforce_counts_and_remove_drops_it() {
        let mut state = RateLimitState::new();
        let now = at("2026-02-05T10:42:17Z");
        let l = limit(3, "", "");
        let key = RateLimitState::counter_key(&l, " Tool.Write ", " alice ", now)
            .unwrap()
            .unwrap();
        assert_eq!(
            key,
            "minute|tool_identity|2026-02-05T10:42:00Z|tool.write|alice"
        );
        state.enforce(&l, "tool.write", "alice", now).unwrap();
        assert_eq!(state.counters().collect::<Vec<_>>(), [(key.as_str(), 1)]);
        assert_eq!(state.remove(&key), Some(1));
        assert!(state.is_empty());
        assert_eq!(
            RateLimitState::counter_key(&limit(0, "hour", "tool"), "t", "a", now).unwrap(),
            None
        );
        let tool = RateLimitState::destructive_budget_tool(" tool.delete ");
        assert_eq!(tool, "destructive_budget|tool.delete");
    }

    #[test]
    fn destructive_budget_uses_a_prefixed_tool_key() {
        let mut state = RateLimitState::new();
        let budget = limit(3, "hour", "tool");
        let d = state
            .enforce_destructive_budget(&budget, "tool.delete", "bob", at("2026-02-05T10:30:00Z"))
            .unwrap();
        assert_eq!(d.key, "destructive_budget|tool.delete");
        assert_eq!(
            state.count("hour|tool|2026-02-05T10:00:00Z|destructive_budget|tool.delete"),
            1
        );
    }

    #[test]
    fn state_file_round_trips_sorted_and_drops_junk() {
        let text = br#"{"schema_id":"gait.gate.rate_limit_state","schema_version":"1.0.0","extra":1,
            "counters":[{"key":"b","count":2},{"key":" ","count":5},{"key":"a","count":0},{"key":"c","count":1}]}"#;
        let state = RateLimitState::from_json(text).unwrap();
        let written = String::from_utf8(state.to_json_pretty()).unwrap();
        assert!(written.ends_with("}\n"));
        let value: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(value["counters"][0]["key"], "b");
        assert_eq!(value["counters"][1]["key"], "c");
        assert_eq!(value["counters"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn expired_buckets_of_every_window_are_pruned_and_live_ones_kept() {
        let mut state = RateLimitState::new();
        let t = |s: &str| GoTime::parse_rfc3339(s).unwrap();
        let minute = limit(5, "minute", "tool");
        let hour = limit(5, "hour", "identity");
        state
            .enforce(&minute, "t", "alice", t("2026-02-05T10:00:10Z"))
            .unwrap();
        state
            .enforce(&hour, "t", "alice", t("2026-02-05T10:00:10Z"))
            .unwrap();
        assert_eq!(state.len(), 2);
        // 10:00:59: both buckets live.
        assert_eq!(state.prune_expired(t("2026-02-05T10:00:59Z")), 0);
        // 10:01:00: the minute bucket is over, the hour bucket is not.
        assert_eq!(state.prune_expired(t("2026-02-05T10:01:00Z")), 1);
        assert_eq!(state.count("hour|identity|2026-02-05T10:00:00Z|alice"), 1);
        assert_eq!(state.prune_expired(t("2026-02-05T11:00:00Z")), 1);
        assert!(state.is_empty());
    }

    #[test]
    fn bad_window_or_scope_is_an_error_and_zero_requests_always_allows() {
        let mut state = RateLimitState::new();
        let now = at("2026-02-05T10:30:00Z");
        assert!(
            state
                .enforce(&limit(1, "day", "tool"), "t", "a", now)
                .is_err()
        );
        assert!(
            state
                .enforce(&limit(1, "hour", "team"), "t", "a", now)
                .is_err()
        );
        assert!(
            state
                .enforce(&limit(0, "day", "team"), "t", "a", now)
                .unwrap()
                .allowed
        );
        assert!(state.is_empty());
    }
}
