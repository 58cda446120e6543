//! The registry of immutable policy versions per org. A version is identified by its Gait policy digest
//! (parse → normalize → digest, the digest agents put in every decision as `policy_digest`), so re-uploading
//! the same content, comments and key order aside, finds the existing version: the first upload's bytes,
//! author and message are kept. A push is validated before any transaction: a refused policy names its key
//! and line and stores nothing. Each stored push appends a `policy.push` audit entry in the same transaction.
//!
//! A version's warnings are computed once, at push, and stored with it (migration 0021), so a listing never
//! parses the versions it shows; only versions pushed before 0021 are parsed when listed. Listings are newest
//! first, a page at a time, with the last digest of a page as the cursor of the next (review M7).

use gait_policy::Policy;
use gait_store::{NewPolicyVersion, Org, StoredPolicyVersion};
use serde::{Deserialize, Serialize};

use super::diff::{self, PolicyDiff, Warning};
use super::{Registry, RegistryError, validate};
use crate::clock::unix_ms;

/// Longest version message in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Name a version gets when the push names none.
pub const DEFAULT_NAME: &str = "policy.yaml";
/// Versions one listing page holds unless the caller asks for fewer.
pub const DEFAULT_PAGE: u32 = 100;

/// A warning of a version as stored with it and shown (the shape of [`Warning`], owned).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionWarning {
    /// Stable code (see [`Warning::code`]).
    pub code: String,
    /// The dotted field it is about.
    pub field: String,
    /// What it means and what to do.
    pub message: String,
}

impl From<Warning> for VersionWarning {
    fn from(w: Warning) -> Self {
        VersionWarning {
            code: w.code.to_owned(),
            field: w.field,
            message: w.message,
        }
    }
}

/// One page of an org's versions, newest first.
#[derive(Clone, Debug, Serialize)]
pub struct VersionPage {
    /// The versions.
    pub versions: Vec<PolicyVersion>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<String>,
}

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
    pub warnings: Vec<VersionWarning>,
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

pub(crate) fn check_digest(field: &'static str, digest: &str) -> Result<(), RegistryError> {
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

/// The warnings of `policy`, as stored with its version.
fn warnings_of(policy: &Policy) -> Vec<VersionWarning> {
    diff::warnings(policy)
        .into_iter()
        .map(VersionWarning::from)
        .collect()
}

/// The view of a stored version with `warnings`.
fn view(stored: StoredPolicyVersion, warnings: Vec<VersionWarning>) -> PolicyVersion {
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
        warnings,
    }
}

/// The stored warnings of a version, or, for one pushed before they were stored (or unreadable), those of its
/// parsed YAML.
fn stored_warnings(stored: &StoredPolicyVersion) -> Result<Vec<VersionWarning>, RegistryError> {
    if let Some(json) = &stored.warnings_json {
        match serde_json::from_str(json) {
            Ok(warnings) => return Ok(warnings),
            Err(error) => tracing::warn!(digest = %stored.version.digest, %error,
                "stored warnings of a policy version do not read; computing them from its YAML"),
        }
    }
    if stored.yaml.is_empty() {
        return Ok(Vec::new());
    }
    Ok(warnings_of(&stored_policy(stored)?))
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
            warnings_json: serde_json::to_string(&warnings_of(&policy)).ok(),
        };
        if req.dry_run {
            let existing = self.store.policy_version(org, &digest).await?;
            let stored = existing.unwrap_or_else(|| as_stored(&new));
            return Ok(Pushed {
                version: view(stored, warnings_of(&policy)),
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
            version: view(stored, warnings_of(&policy)),
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
        Ok((view(stored, warnings_of(&policy)), yaml))
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

    /// A page of the org's versions, newest first: at most `limit` (default [`DEFAULT_PAGE`], at most
    /// [`gait_store::MAX_POLICY_PAGE`]), older than version `before` when given (which must exist).
    pub async fn versions(
        &self,
        org: &Org,
        before: Option<&str>,
        limit: Option<u32>,
    ) -> Result<VersionPage, RegistryError> {
        if let Some(b) = before {
            self.stored_bytes(org, b).await.map_err(|e| match e {
                RegistryError::Field { message, .. } => RegistryError::Field {
                    field: "before",
                    message,
                },
                other => other,
            })?;
        }
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > gait_store::MAX_POLICY_PAGE {
            return Err(RegistryError::Field {
                field: "limit",
                message: format!(
                    "{limit}: ask for 1 to {} versions",
                    gait_store::MAX_POLICY_PAGE
                ),
            });
        }
        // One more than the page tells whether another page follows.
        let mut stored = self.store.policy_versions(org, before, limit + 1).await?;
        let more = stored.len() > limit as usize;
        stored.truncate(limit as usize);
        let next_before = more
            .then(|| stored.last().map(|s| s.version.digest.clone()))
            .flatten();
        let versions = stored
            .into_iter()
            .map(|s| {
                let warnings = stored_warnings(&s)?;
                Ok(view(s, warnings))
            })
            .collect::<Result<Vec<_>, RegistryError>>()?;
        Ok(VersionPage {
            versions,
            next_before,
        })
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
        warnings_json: new.warnings_json.clone(),
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
