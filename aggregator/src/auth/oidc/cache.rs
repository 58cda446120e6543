//! The verified-token cache of [`super::OidcVerifier`]: operators' clients send one bearer token for many requests
//! until it expires, so the signature of a token already verified is not checked again on every request.
//!
//! Design and the rules it keeps:
//! - **Key: SHA-256 of the whole token string.** The token itself is never stored (nor logged); a token that
//!   differs in any byte hashes elsewhere, so a tampered token can never hit an entry of the genuine one.
//! - **Only verified tokens enter.** [`TokenCache::insert`] is called after the full check (signature and every
//!   claim) succeeded; a refused token is never stored, so a flood of distinct invalid tokens costs lookups, not
//!   memory.
//! - **Bounded.** At most `auth.oidc.token_cache_size` entries (quick_cache's S3-FIFO eviction; the shards are
//!   chosen so their capacities add up to exactly that size); `0` turns the cache off.
//! - **A hit re-checks what can change after the verify:** that the key which verified the token is still the one
//!   the current key set finds for the token's `kid` and algorithm (same [`crate::auth::jwks::Key::fingerprint`]),
//!   else the entry is dropped and the token verified afresh (so a key removed from the JWKS stops its tokens at
//!   the refresh, with the same reason as uncached); and `exp`/`nbf` against the current clock with the same
//!   leeway, through the same functions as a fresh verify. Everything else a fresh verify checks is a function of
//!   the token's bytes and of configuration that is fixed for the verifier's lifetime.
//! - **In memory only**: a restart or a new verifier starts empty.

use std::sync::Arc;

use jsonwebtoken::Algorithm;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use quick_cache::sync::Cache;

use super::OperatorIdentity;
use crate::auth::jwks::{KeySet, Lookup};

/// Largest `auth.oidc.token_cache_size`.
pub const MAX_TOKEN_CACHE_SIZE: u64 = 100_000;
/// `auth.oidc.token_cache_size` when not set.
pub const DEFAULT_TOKEN_CACHE_SIZE: u64 = 4_096;

/// The cache key: SHA-256 of the whole bearer token.
pub type TokenDigest = [u8; 32];

/// SHA-256 of `token`, the key it is cached under.
pub fn digest(token: &str) -> TokenDigest {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What a verified token established, and what a hit needs to re-check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The operator (its `expires_unix_s` is the token's `exp`).
    pub identity: OperatorIdentity,
    /// The token's `nbf`, when it has one.
    pub not_before: Option<i64>,
    /// The header's algorithm.
    pub alg: Algorithm,
    /// The header's `kid`, when it has one.
    pub kid: Option<String>,
    /// [`crate::auth::jwks::Key::fingerprint`] of the key that verified the signature.
    pub key_fingerprint: [u8; 32],
}

impl VerifiedToken {
    /// Whether `keys` would verify this token with the same key as when it was verified: the lookup by `kid` and
    /// algorithm finds a key, and it is the same key (a `kid` removed, given to another key, or a kid-less token
    /// that now has two candidate keys all fail).
    pub fn key_still_current(&self, keys: &KeySet) -> bool {
        matches!(
            keys.find(self.kid.as_deref(), self.alg),
            Lookup::Found(key) if key.fingerprint == self.key_fingerprint
        )
    }
}

/// Counters of the cache (registered by [`crate::metrics::Metrics`]).
#[derive(Debug, Clone, Default)]
pub struct TokenCacheMetrics {
    /// Lookups that found an entry (whether the token was then accepted or refused as expired).
    pub hits: Counter,
    /// Lookups that found none (the token was verified in full).
    pub misses: Counter,
    /// Entries held.
    pub entries: Gauge,
}

/// The bounded cache of verified tokens, shared by every request.
pub struct TokenCache {
    entries: Cache<TokenDigest, Arc<VerifiedToken>>,
    size: usize,
    metrics: TokenCacheMetrics,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("size", &self.size)
            .field("len", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache of at most `size` entries; `None` for 0 (caching off).
    pub fn new(size: usize, metrics: TokenCacheMetrics) -> Option<TokenCache> {
        if size == 0 {
            return None;
        }
        // `build` fails only when a capacity is unset; both are.
        let entries = quick_cache::sync::Cache::with_options(
            quick_cache::OptionsBuilder::new()
                .estimated_items_capacity(size)
                .weight_capacity(size as u64)
                .shards(shards_for(size))
                .build()
                .ok()?,
            quick_cache::UnitWeighter,
            Default::default(),
            Default::default(),
        );
        Some(TokenCache {
            entries,
            size,
            metrics,
        })
    }

    /// The entry of `digest`, counted as a hit or a miss.
    pub fn get(&self, digest: &TokenDigest) -> Option<Arc<VerifiedToken>> {
        let found = self.entries.get(digest);
        match found {
            Some(_) => self.metrics.hits.inc(),
            None => self.metrics.misses.inc(),
        };
        found
    }

    /// Stores a token that was just verified in full.
    pub fn insert(&self, digest: TokenDigest, verified: VerifiedToken) {
        self.entries.insert(digest, Arc::new(verified));
        self.count();
    }

    /// Drops the entry of `digest` (its key is gone, or it expired).
    pub fn remove(&self, digest: &TokenDigest) {
        if self.entries.remove(digest).is_some() {
            self.count();
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bound (`auth.oidc.token_cache_size`).
    pub fn size(&self) -> usize {
        self.size
    }

    fn count(&self) {
        self.metrics
            .entries
            .set(i64::try_from(self.entries.len()).unwrap_or(i64::MAX));
    }
}

/// Shards whose capacities add up to exactly `size`: quick_cache rounds each shard's capacity up, so the count
/// must divide `size`; at most 16 (enough for the request concurrency of one aggregator), at least 32 entries
/// each, else one.
fn shards_for(size: usize) -> usize {
    let mut shards = 16;
    while shards > 1 && (!size.is_multiple_of(shards) || size / shards < 32) {
        shards /= 2;
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(subject: &str) -> VerifiedToken {
        VerifiedToken {
            identity: OperatorIdentity {
                issuer: "https://idp.test".to_owned(),
                subject: subject.to_owned(),
                groups: vec!["sre".to_owned()],
                expires_unix_s: 2_000_000_000,
            },
            not_before: None,
            alg: Algorithm::RS256,
            kid: Some("k".to_owned()),
            key_fingerprint: [7; 32],
        }
    }

    #[test]
    fn the_cache_never_holds_more_than_its_size() {
        for size in [1, 2, 3, 31, 32, 64, 100, 1_000, 4_096, 4_097] {
            let metrics = TokenCacheMetrics::default();
            let cache = TokenCache::new(size, metrics.clone()).expect("on");
            for i in 0..size * 3 + 10 {
                let token = format!("token-{i}");
                cache.insert(digest(&token), verified(&token));
                assert!(cache.len() <= size, "size {size}: {} entries", cache.len());
            }
            assert!(cache.len() >= size / 2, "size {size}: only {}", cache.len());
            assert_eq!(metrics.entries.get(), cache.len() as i64);
        }
    }

    #[test]
    fn size_zero_is_no_cache_and_lookups_are_counted() {
        assert!(TokenCache::new(0, TokenCacheMetrics::default()).is_none());
        let metrics = TokenCacheMetrics::default();
        let cache = TokenCache::new(8, metrics.clone()).expect("on");
        let key = digest("a.b.c");
        assert!(cache.get(&key).is_none());
        cache.insert(key, verified("alice"));
        assert_eq!(
            cache.get(&key).expect("hit").identity.subject,
            "alice".to_owned()
        );
        // One byte more or less is another key.
        assert!(cache.get(&digest("a.b.c ")).is_none());
        cache.remove(&key);
        assert!(cache.get(&key).is_none());
        assert_eq!((metrics.hits.get(), metrics.misses.get()), (1, 3));
        assert_eq!(metrics.entries.get(), 0);
    }

    #[test]
    fn shard_capacities_add_up_to_the_size() {
        for size in 1..5_000 {
            let shards = shards_for(size);
            assert!(size.is_multiple_of(shards), "{size}");
            assert!(shards == 1 || size / shards >= 32, "{size}");
        }
        assert_eq!(shards_for(4_096), 16);
    }
}
