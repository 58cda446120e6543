//! Why a bundle could not be built, inspected or verified, with stable machine codes for refusal reports.

use crate::Scope;

/// A bundle was refused (or could not be built). Every variant has a stable [`code`](BundleError::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The bundle document is larger than the limit.
    #[error("bundle is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Size of the offered (or built) document.
        size: usize,
        /// The limit that applied.
        limit: usize,
    },
    /// Not a well-formed bundle document: JSON syntax, a missing or unknown field, a bad value. The message
    /// names the field (dotted path) and what is expected.
    #[error("malformed bundle: {0}")]
    Malformed(String),
    /// `schema_id` / `schema_version` name a document this build does not understand.
    #[error(
        "unsupported bundle schema {schema_id:?} version {schema_version:?}: expected gait.fleet.policy_bundle 1.x"
    )]
    UnsupportedSchema {
        /// `schema_id` found.
        schema_id: String,
        /// `schema_version` found.
        schema_version: String,
    },
    /// The signing key is not in the trust root.
    #[error("bundle is signed by key {key_id:?}, which is not in the trust root")]
    UnknownKey {
        /// `signature.key_id` of the bundle.
        key_id: String,
    },
    /// The signature does not verify over the manifest.
    #[error("bundle signature is invalid: {0}")]
    BadSignature(String),
    /// A listed file's bytes do not match the manifest's sha256 or size.
    #[error("policy file {name:?} does not match the sha256/size listed in the manifest")]
    FileDigestMismatch {
        /// File name.
        name: String,
    },
    /// A file listed in the manifest is absent from `files`.
    #[error("policy file {name:?} is listed in the manifest but missing from the bundle")]
    MissingFile {
        /// File name.
        name: String,
    },
    /// `files` holds a file the manifest does not list.
    #[error("bundle carries file {name:?}, which the manifest does not list")]
    UnlistedFile {
        /// File name.
        name: String,
    },
    /// The bundle is for another org/project/env.
    #[error("bundle is for scope {got}, expected {expected}")]
    ScopeMismatch {
        /// The scope the verifier serves (boxed to keep the error small).
        expected: Box<Scope>,
        /// The scope in the manifest.
        got: Box<Scope>,
    },
    /// `now` is at or after the manifest's `not_after`.
    #[error("bundle expired at {not_after}")]
    Expired {
        /// `not_after` from the manifest (RFC 3339).
        not_after: String,
    },
    /// The epoch is not newer than the one the verifier already has (replay or rollback).
    #[error("bundle epoch {offered} is not newer than the current epoch {current}")]
    StaleEpoch {
        /// Epoch in the manifest.
        offered: u64,
        /// Epoch the verifier already has.
        current: u64,
    },
    /// The signing key, or a key of the endorsement chain leading to it, has been revoked.
    #[error(
        "bundle key {key_id} is revoked: the agent no longer accepts bundles signed by it or endorsed through it"
    )]
    KeyRevoked {
        /// The revoked key id.
        key_id: String,
    },
    /// A link of the endorsement chain (`manifest.trust.keys`) does not verify, loops or is too long.
    #[error("bundle key endorsement refused: {0}")]
    BadEndorsement(String),
}

impl BundleError {
    /// Every [`code`](BundleError::code), in declaration order: the bounded set a receiver of refusal reports
    /// may use as metric labels (anything else an agent reports is not one of these).
    pub const CODES: [&'static str; 13] = [
        "bundle_too_large",
        "bundle_malformed",
        "bundle_schema_unsupported",
        "bundle_key_unknown",
        "bundle_signature_invalid",
        "bundle_file_digest_mismatch",
        "bundle_file_missing",
        "bundle_file_unlisted",
        "bundle_scope_mismatch",
        "bundle_expired",
        "bundle_epoch_stale",
        "bundle_key_revoked",
        "bundle_bad_endorsement",
    ];

    /// Stable machine code for reports and metrics labels (e.g. the `code` of a wire `Refusal`).
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::TooLarge { .. } => "bundle_too_large",
            BundleError::Malformed(_) => "bundle_malformed",
            BundleError::UnsupportedSchema { .. } => "bundle_schema_unsupported",
            BundleError::UnknownKey { .. } => "bundle_key_unknown",
            BundleError::BadSignature(_) => "bundle_signature_invalid",
            BundleError::FileDigestMismatch { .. } => "bundle_file_digest_mismatch",
            BundleError::MissingFile { .. } => "bundle_file_missing",
            BundleError::UnlistedFile { .. } => "bundle_file_unlisted",
            BundleError::ScopeMismatch { .. } => "bundle_scope_mismatch",
            BundleError::Expired { .. } => "bundle_expired",
            BundleError::StaleEpoch { .. } => "bundle_epoch_stale",
            BundleError::KeyRevoked { .. } => "bundle_key_revoked",
            BundleError::BadEndorsement(_) => "bundle_bad_endorsement",
        }
    }

    /// Whether the bundle is authentic but merely not applicable here and now (wrong scope, expired, not newer),
    /// as opposed to corrupt, forged or unverifiable.
    pub fn is_authentic(&self) -> bool {
        matches!(
            self,
            BundleError::ScopeMismatch { .. }
                | BundleError::Expired { .. }
                | BundleError::StaleEpoch { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_lists_the_code_of_every_variant_once() {
        let scope = || Box::new(Scope::from_parts("a", "b", "c").expect("scope"));
        let every = [
            BundleError::TooLarge { size: 2, limit: 1 },
            BundleError::Malformed(String::new()),
            BundleError::UnsupportedSchema {
                schema_id: String::new(),
                schema_version: String::new(),
            },
            BundleError::UnknownKey {
                key_id: String::new(),
            },
            BundleError::BadSignature(String::new()),
            BundleError::FileDigestMismatch {
                name: String::new(),
            },
            BundleError::MissingFile {
                name: String::new(),
            },
            BundleError::UnlistedFile {
                name: String::new(),
            },
            BundleError::ScopeMismatch {
                expected: scope(),
                got: scope(),
            },
            BundleError::Expired {
                not_after: String::new(),
            },
            BundleError::StaleEpoch {
                offered: 1,
                current: 1,
            },
            BundleError::KeyRevoked {
                key_id: String::new(),
            },
            BundleError::BadEndorsement(String::new()),
        ];
        let codes: Vec<&str> = every.iter().map(BundleError::code).collect();
        assert_eq!(codes, BundleError::CODES);
    }
}
