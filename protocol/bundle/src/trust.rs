//! The set of public keys an agent accepts bundle signatures from, indexed by key id, and the endorsement chain
//! that extends it when the registry rotates its signing key (`manifest.trust`).

use crate::BundleError;
use crate::manifest::{KeyEndorsement, MAX_TRUST_LINKS, endorsement_input};
use gait_canon::sign::{PublicKey, Signature, SigningKey, verify_digest_hex};
use std::collections::{BTreeMap, BTreeSet};

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

    /// Stop trusting `key_id`; returns whether it was trusted.
    pub fn remove(&mut self, key_id: &str) -> bool {
        self.keys.remove(key_id).is_some()
    }

    /// The trusted keys, by key id.
    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }
}

/// Sign an endorsement of `new_key` by `endorser`: the link a bundle carries in `manifest.trust.keys` so agents
/// that trust `endorser` come to trust `new_key`.
pub fn endorse(endorser: &SigningKey, new_key: &PublicKey) -> KeyEndorsement {
    let key_id = new_key.key_id();
    let endorsed_by = endorser.public_key().key_id();
    let digest = gait_canon::sha256_hex(&endorsement_input(&key_id, &endorsed_by));
    // The digest is 64 hex characters by construction, so signing cannot fail.
    let sig = endorser
        .sign_digest_hex(&digest)
        .map(|s| s.sig)
        .unwrap_or_default();
    KeyEndorsement {
        key: new_key.to_gait_public_key(),
        key_id,
        endorsed_by,
        sig,
    }
}

/// Check one link's signature with the endorsing key.
pub fn verify_endorsement(link: &KeyEndorsement, endorser: &PublicKey) -> Result<(), BundleError> {
    let key = PublicKey::from_gait_public_key(&link.key)
        .map_err(|e| BundleError::BadEndorsement(format!("key {}: {e}", link.key_id)))?;
    if key.key_id() != link.key_id || endorser.key_id() != link.endorsed_by {
        return Err(BundleError::BadEndorsement(format!(
            "link for key {} names the wrong key or endorser",
            link.key_id
        )));
    }
    let digest = gait_canon::sha256_hex(&endorsement_input(&link.key_id, &link.endorsed_by));
    let sig = Signature {
        alg: gait_canon::sign::ALG_ED25519.to_owned(),
        key_id: link.endorsed_by.clone(),
        sig: link.sig.clone(),
        signed_digest: digest.clone(),
    };
    verify_digest_hex(endorser, &digest, &sig).map_err(|e| {
        BundleError::BadEndorsement(format!(
            "endorsement of key {} by key {}: {e}",
            link.key_id, link.endorsed_by
        ))
    })
}

/// Resolve the key that signed a bundle: trusted directly, or reached by walking `links` back from `signer_id`
/// to a trusted key. Every key on the way must be unrevoked, the walk may take at most [`MAX_TRUST_LINKS`]
/// links and never visit a key twice, and every link is verified with its endorser, starting at the trusted
/// end, so nothing a new key signed is trusted before the chain reaches it. Returns the signing key and the keys
/// the chain adds (oldest first): those on the walk to the signer and every later link a trusted (or just added),
/// unrevoked key endorses, so a bundle signed by the old key during a rotation's overlap already makes the agent
/// trust the new one, and a later revocation of the old key does not cut it off.
pub(crate) fn resolve_signer(
    trust: &TrustRoot,
    revoked: &BTreeSet<String>,
    links: &[KeyEndorsement],
    signer_id: &str,
) -> Result<(PublicKey, Vec<PublicKey>), BundleError> {
    let revoked_err = |key_id: &str| BundleError::KeyRevoked {
        key_id: key_id.to_owned(),
    };
    if revoked.contains(signer_id) {
        return Err(revoked_err(signer_id));
    }
    if let Some(key) = trust.get(signer_id) {
        let added = endorsed_forward(trust, revoked, links, Vec::new())?;
        return Ok((*key, added));
    }
    let mut by_key: BTreeMap<&str, &KeyEndorsement> = BTreeMap::new();
    for link in links {
        if by_key.insert(link.key_id.as_str(), link).is_some() {
            return Err(BundleError::BadEndorsement(format!(
                "key {} is endorsed twice",
                link.key_id
            )));
        }
    }
    // Walk back from the signer to a trusted key.
    let mut path: Vec<&KeyEndorsement> = Vec::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut current = signer_id;
    let root = loop {
        if !seen.insert(current) {
            return Err(BundleError::BadEndorsement(format!(
                "the endorsement chain loops at key {current}"
            )));
        }
        let Some(link) = by_key.get(current) else {
            return Err(BundleError::UnknownKey {
                key_id: signer_id.to_owned(),
            });
        };
        if path.len() == MAX_TRUST_LINKS {
            return Err(BundleError::BadEndorsement(format!(
                "the endorsement chain is longer than {MAX_TRUST_LINKS} links"
            )));
        }
        path.push(link);
        let endorser = link.endorsed_by.as_str();
        if revoked.contains(endorser) {
            return Err(revoked_err(endorser));
        }
        if let Some(key) = trust.get(endorser) {
            break *key;
        }
        current = endorser;
    };
    // Verify forward from the trusted key.
    let mut endorser = root;
    let mut added = Vec::with_capacity(path.len());
    for link in path.iter().rev() {
        verify_endorsement(link, &endorser)?;
        endorser = PublicKey::from_gait_public_key(&link.key)
            .map_err(|e| BundleError::BadEndorsement(format!("key {}: {e}", link.key_id)))?;
        added.push(endorser);
    }
    let added = endorsed_forward(trust, revoked, links, added)?;
    Ok((endorser, added))
}

/// `added` followed by every key of `links` endorsed, link by verified link, by a key of `trust` or of `added`,
/// neither the key nor its endorser revoked and not trusted already. Links from keys this agent does not trust
/// (older ones it never knew) are skipped; a link that does not verify is refused. At most
/// [`MAX_TRUST_LINKS`] links, so the repeated passes stay small.
fn endorsed_forward(
    trust: &TrustRoot,
    revoked: &BTreeSet<String>,
    links: &[KeyEndorsement],
    mut added: Vec<PublicKey>,
) -> Result<Vec<PublicKey>, BundleError> {
    let known = |added: &[PublicKey], key_id: &str| {
        trust
            .get(key_id)
            .copied()
            .or_else(|| added.iter().find(|k| k.key_id() == key_id).copied())
    };
    loop {
        let mut progressed = false;
        for link in links.iter().take(MAX_TRUST_LINKS) {
            if revoked.contains(&link.key_id)
                || revoked.contains(&link.endorsed_by)
                || known(&added, &link.key_id).is_some()
            {
                continue;
            }
            let Some(endorser) = known(&added, &link.endorsed_by) else {
                continue;
            };
            verify_endorsement(link, &endorser)?;
            let key = PublicKey::from_gait_public_key(&link.key)
                .map_err(|e| BundleError::BadEndorsement(format!("key {}: {e}", link.key_id)))?;
            if key.key_id() != link.key_id {
                return Err(BundleError::BadEndorsement(format!(
                    "key {} does not match its key text",
                    link.key_id
                )));
            }
            added.push(key);
            progressed = true;
        }
        if !progressed {
            return Ok(added);
        }
    }
}
