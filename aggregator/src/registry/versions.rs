//! The registry of immutable policy versions per org. A version is identified by its Gait policy digest
//! (parse → normalize → digest, the digest agents put in every decision as `policy_digest`), so re-uploading
//! the same content, comments and key order aside, finds the existing version: the first upload's bytes,
//! author and message are kept. A push is validated before any transaction: a refused policy names its key
//! and line and stores nothing. Each stored push appends a `policy.push` audit entry in the same transaction.

use gait_policy::Policy;
use gait_store::{NewPolicyVersion, Org, StoredPolicyVersion};
use serde::Serialize;

use super::diff::{self, PolicyDiff, Warning};
use super::{Registry, RegistryError, validate};
use crate::clock::unix_ms;

/// Longest version message in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Name a version gets when the push names none.
pub const DEFAULT_NAME: &str = "policy.yaml";

/// A push: a policy to add to an org's registry.
#[derive(Clone, Debug)]
pub struct PushRequest {
    /// The version's name: the policy's file name in the bundles that carry it (`[A-Za-z0-9._-]`, ending
    /// `.yaml` or `.yml`).
    pub name: String,
    /// The Gait policy YAML.
    pub yaml: String,
    /// What changed and why.
    pub message: String,
    /// The version it derives from (a digest of the same org).
    pub parent: Option<String>,
    /// The authenticated caller (never taken from the body).
    pub author: String,
    /// Validate and report, store nothing.
    pub dry_run: bool,
}

/// A policy version as the API and CLI show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyVersion {
    /// The org.
    pub org: Org,
    /// The Gait policy digest: the version's id.
    pub digest: String,
    /// Its name (bundle file name).
    pub name: String,
    /// Who pushed it first.
    pub author: String,
    /// The message of the first push.
    pub message: String,
    /// The version it derives from.
    pub parent: Option<String>,
    /// Number of rules.
    pub rule_count: u32,
    /// `default_verdict`.
    pub default_verdict: String,
    /// When it was stored, Unix ms.
    pub created_unix_ms: i64,
    /// SHA-256 of the stored YAML bytes.
    pub sha256: String,
    /// Length of the stored YAML bytes.
    pub size: u64,
    /// Risky content (see [`diff::warnings`]).
    pub warnings: Vec<Warning>,
}

/// What a push did.
#[derive(Clone, Debug, Serialize)]
pub struct Pushed {
    /// The version (the existing one when the content was known).
    #[serde(flatten)]
    pub version: PolicyVersion,
    /// Whether this push added it (false: it existed, or a dry run).
    pub created: bool,
    /// Whether this was a dry run (nothing stored).
    pub dry_run: bool,
}

fn check_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && (name.ends_with(".yaml") || name.ends_with(".yml"));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Field {
            field: "name",
            message: format!(
                "`{name}` is not a policy file name: use 1-128 characters [A-Za-z0-9._-], starting with a letter or digit, ending in .yaml or .yml"
            ),
        })
    }
}

fn check_digest(field: &'static str, digest: &str) -> Result<(), RegistryError> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(RegistryError::Field {
            field,
            message: format!("`{digest}` is not a policy digest (64 lowercase hex characters)"),
        })
    }
}

/// The view of a stored version; its warnings come from its policy.
fn view(stored: StoredPolicyVersion, policy: &Policy) -> PolicyVersion {
    let v = stored.version;
    PolicyVersion {
        org: v.org,
        digest: v.digest,
        name: v.name,
        author: v.author,
        message: v.message,
        parent: v.parent_digest,
        rule_count: v.rule_count,
        default_verdict: v.default_verdict,
        created_unix_ms: v.created_unix_ms,
        sha256: stored.sha256,
        size: stored.size,
        warnings: diff::warnings(policy),
    }
}

/// Parses a stored version's bytes (they were valid when pushed; a failure means the engine changed).
fn stored_policy(stored: &StoredPolicyVersion) -> Result<Policy, RegistryError> {
    validate::parse(&stored.yaml).map_err(|rejection| RegistryError::Rejected {
        name: stored.version.name.clone(),
        rejection,
    })
}

impl Registry {
    /// Validate `req.yaml` and add it to `org`'s registry (idempotent by digest). A refused policy returns
    /// [`RegistryError::Rejected`] naming the key and line, before any transaction.
    pub async fn push(&self, org: &Org, req: PushRequest) -> Result<Pushed, RegistryError> {
        check_name(&req.name)?;
        if req.yaml.len() > super::MAX_POLICY_BYTES {
            return Err(RegistryError::Field {
                field: "policy",
                message: format!(
                    "{} bytes; the limit is {}",
                    req.yaml.len(),
                    super::MAX_POLICY_BYTES
                ),
            });
        }
        if req.message.len() > MAX_MESSAGE_BYTES || req.message.chars().any(char::is_control) {
            return Err(RegistryError::Field {
                field: "message",
                message: format!("at most {MAX_MESSAGE_BYTES} bytes without control characters"),
            });
        }
        if let Some(p) = &req.parent {
            check_digest("parent", p)?;
        }
        let policy =
            validate::parse(req.yaml.as_bytes()).map_err(|rejection| RegistryError::Rejected {
                name: req.name.clone(),
                rejection,
            })?;
        let digest = policy.digest();
        let yaml = req.yaml.into_bytes();
        let new = NewPolicyVersion {
            org: org.clone(),
            digest: digest.clone(),
            name: req.name,
            sha256: gait_canon::sha256_hex(&yaml),
            yaml,
            author: req.author,
            message: req.message,
            parent_digest: req.parent,
            rule_count: u32::try_from(policy.rules.len()).unwrap_or(u32::MAX),
            default_verdict: policy.default_verdict.as_str().to_owned(),
            created_unix_ms: unix_ms(),
        };
        if req.dry_run {
            let existing = self.store.policy_version(org, &digest).await?;
            let stored = existing.unwrap_or_else(|| as_stored(&new));
            return Ok(Pushed {
                version: view(stored, &policy),
                created: false,
                dry_run: true,
            });
        }
        let (created, stored) = self
            .store
            .transaction(async |tx| {
                if let Some(parent) = &new.parent_digest
                    && tx.policy_version(org, parent).await?.is_none()
                {
                    return Err(RegistryError::NotFound(format!(
                        "parent: no version {parent} in org {org}; push the parent first or leave --parent out"
                    )));
                }
                let created = tx.insert_policy_version(&new).await?;
                let stored = tx.policy_version(org, &new.digest).await?.ok_or_else(|| {
                    RegistryError::Conflict(format!("version {} vanished", new.digest))
                })?;
                if created {
                    let mut details = serde_json::Map::new();
                    details.insert("name".into(), new.name.clone().into());
                    details.insert("rule_count".into(), new.rule_count.into());
                    details.insert("message".into(), new.message.clone().into());
                    audit(
                        tx,
                        &new.author,
                        "policy.push",
                        gait_audit::Target {
                            org: Some(org.as_str().to_owned()),
                            project: None,
                            env: None,
                            kind: "policy_version".into(),
                            id: new.digest.clone(),
                        },
                        new.parent_digest.as_ref().map(|p| format!("sha256:{p}")),
                        Some(format!("sha256:{}", new.digest)),
                        details,
                    )
                    .await?;
                }
                Ok::<_, RegistryError>((created, stored))
            })
            .await?;
        if created {
            tracing::info!(%org, digest = %stored.version.digest, name = %stored.version.name,
                author = %stored.version.author, "policy version pushed");
        }
        Ok(Pushed {
            version: view(stored, &policy),
            created,
            dry_run: false,
        })
    }

    /// The org's version `digest` with its YAML, or [`RegistryError::NotFound`].
    pub async fn version(
        &self,
        org: &Org,
        digest: &str,
    ) -> Result<(PolicyVersion, String), RegistryError> {
        let (stored, policy) = self.stored_version(org, digest).await?;
        let yaml = String::from_utf8_lossy(&stored.yaml).into_owned();
        Ok((view(stored, &policy), yaml))
    }

    /// The stored version, unparsed (it was validated when pushed; a publish validates it again).
    pub(crate) async fn stored_bytes(
        &self,
        org: &Org,
        digest: &str,
    ) -> Result<StoredPolicyVersion, RegistryError> {
        check_digest("digest", digest)?;
        self.store.policy_version(org, digest).await?.ok_or_else(|| {
            RegistryError::NotFound(format!(
                "no policy version {digest} in org {org}; see `gait-aggregator policy list --org {org}`"
            ))
        })
    }

    /// The stored version and its parsed policy.
    pub(crate) async fn stored_version(
        &self,
        org: &Org,
        digest: &str,
    ) -> Result<(StoredPolicyVersion, Policy), RegistryError> {
        let stored = self.stored_bytes(org, digest).await?;
        let policy = stored_policy(&stored)?;
        Ok((stored, policy))
    }

    /// The org's versions, oldest first.
    pub async fn versions(&self, org: &Org) -> Result<Vec<PolicyVersion>, RegistryError> {
        let stored = self
            .store
            .policy_versions(org, gait_store::MAX_POLICY_PAGE)
            .await?;
        stored
            .into_iter()
            .map(|s| {
                let policy = stored_policy(&s)?;
                Ok(view(s, &policy))
            })
            .collect()
    }

    /// The semantic diff from version `from` to version `to` of `org`.
    pub async fn diff(&self, org: &Org, from: &str, to: &str) -> Result<PolicyDiff, RegistryError> {
        let (_, a) = self.stored_version(org, from).await?;
        let (_, b) = self.stored_version(org, to).await?;
        Ok(diff::diff(&a, &b))
    }
}

/// What a dry run shows for content not stored yet.
fn as_stored(new: &NewPolicyVersion) -> StoredPolicyVersion {
    StoredPolicyVersion {
        version: gait_store::PolicyVersionMeta {
            org: new.org.clone(),
            digest: new.digest.clone(),
            name: new.name.clone(),
            author: new.author.clone(),
            message: new.message.clone(),
            parent_digest: new.parent_digest.clone(),
            rule_count: new.rule_count,
            default_verdict: new.default_verdict.clone(),
            created_unix_ms: new.created_unix_ms,
        },
        sha256: new.sha256.clone(),
        size: new.yaml.len() as u64,
        yaml: new.yaml.clone(),
    }
}

/// Appends one registry audit entry in `tx`.
pub(crate) async fn audit(
    tx: &mut gait_store::StoreTx,
    actor: &str,
    action: &str,
    target: gait_audit::Target,
    before: Option<String>,
    after: Option<String>,
    details: serde_json::Map<String, serde_json::Value>,
) -> Result<(), RegistryError> {
    crate::audit::append_draft(
        tx,
        gait_audit::EntryDraft {
            actor: actor.to_owned(),
            action: action.to_owned(),
            target,
            before,
            after,
            details: Some(details),
        },
    )
    .await
    .map(|_| ())
    .map_err(|e| match e {
        crate::audit::AuditError::Store(e) => RegistryError::Store(e),
        other => RegistryError::Audit(other.to_string()),
    })
}
