//! The set of public keys an agent accepts bundle signatures from, indexed by key id.

use gait_canon::sign::PublicKey;
use std::collections::BTreeMap;

/// Trusted bundle signing keys by key id (lowercase hex SHA-256 of the raw public key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustRoot {
    keys: BTreeMap<String, PublicKey>,
}

impl TrustRoot {
    /// A trust root holding `keys`; duplicates collapse.
    pub fn from_public_keys(keys: Vec<PublicKey>) -> Self {
        let mut root = TrustRoot::default();
        for key in keys {
            root.insert(key);
        }
        root
    }

    /// Add a key; returns false if it was already trusted.
    pub fn insert(&mut self, key: PublicKey) -> bool {
        self.keys.insert(key.key_id(), key).is_none()
    }

    /// The trusted key with this id.
    pub fn get(&self, key_id: &str) -> Option<&PublicKey> {
        self.keys.get(key_id)
    }

    /// Trusted key ids, sorted.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Number of trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted (every bundle is then refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
