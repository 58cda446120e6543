//! Operators' lookups in the evidence index: decisions and artifacts by run id, artifact digest, policy digest,
//! agent, environment, verdict, stage, kind and time, scoped to what the caller was granted.
//!
//! - **Scope**: every lookup takes the caller's `Authorized<T>` over an org or an environment; the store is
//!   asked only for rows inside that scope (an org operator may narrow to a project or environment of the org;
//!   an environment operator names nothing else — a `project` or `env` parameter that differs from the path is
//!   refused).
//! - **Order and paging**: newest first by position in the index (the order records were committed), keyset
//!   paged with an opaque `cursor` (`next_cursor` of the previous page). A page holds a row once, and paging on
//!   never repeats or skips a row that was already indexed when the first page was read.
//! - **Time**: `from` (inclusive) and `to` (exclusive) bound when the aggregator received the record, as unix
//!   milliseconds or RFC 3339 (`2026-12-05T10:00:00Z`).
//! - **Refusals**: every parameter is checked before the store is asked; a bad one is [`EvidenceError::Invalid`]
//!   naming it (the HTTP edge answers 400).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gait_artifact::evidence::ArtifactKind;
use gait_bundle::Stage;
use gait_policy::Verdict;
use gait_store::{
    AgentId, EvidenceClass, EvidenceFilter, IndexedRecord, MAX_EVIDENCE_PAGE, Store, StoreError,
};
use serde::{Deserialize, Serialize};

use super::index::{DECISION_KIND, MAX_INDEXED_TEXT_BYTES, is_digest};
use crate::auth::{Authorized, Target};

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 100;

/// Most rows one page returns.
pub const MAX_LIMIT: u32 = MAX_EVIDENCE_PAGE;

/// The cursor's prefix inside its base64url text (a later cursor format takes another).
const CURSOR_PREFIX: &str = "ev1:";

/// Why a lookup was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// A parameter is malformed or out of range; the message names it and what to pass.
    #[error("{field}: {message}")]
    Invalid {
        /// The query parameter.
        field: &'static str,
        /// What is wrong and what to pass instead.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> EvidenceError {
    EvidenceError::Invalid {
        field,
        message: message.into(),
    }
}

/// Which listing: every indexed record, or artifacts only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// Decisions and artifacts (`…/evidence/records`); `kind` is a record kind.
    Records,
    /// Artifact records (`…/evidence/artifacts`); `kind` is an artifact kind (`runpack`, …).
    Artifacts,
}

/// The query parameters of a lookup, as given (all optional); [`EvidenceIndex::list`] checks them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceQuery {
    /// Project of the org (org route only).
    pub project: Option<String>,
    /// Environment (org route only).
    pub env: Option<String>,
    /// Agent id.
    pub agent: Option<String>,
    /// Record kind (`gate.decision`, `artifact.runpack`, …) for records; artifact kind for artifacts.
    pub kind: Option<String>,
    /// Enforced verdict (`allow`, `block`, `require_approval`, `dry_run`); a trace artifact's verdict.
    pub verdict: Option<String>,
    /// Stage of the decision (`enforce`, `observe`, `dry_run`).
    pub stage: Option<String>,
    /// Gait policy digest (64 lowercase hex).
    pub policy_digest: Option<String>,
    /// Artifact SHA-256 (64 lowercase hex).
    pub sha256: Option<String>,
    /// A run id an artifact concerns.
    pub run_id: Option<String>,
    /// Received at or after: unix ms or RFC 3339.
    pub from: Option<String>,
    /// Received before: unix ms or RFC 3339.
    pub to: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<u32>,
}

/// One page of a lookup.
#[derive(Debug, Serialize)]
pub struct EvidencePage {
    /// The rows, newest first.
    pub records: Vec<IndexedRecord>,
    /// Pass as `cursor` for the next page; absent when this page is the last.
    pub next_cursor: Option<String>,
}

/// The evidence index as operators read it.
#[derive(Clone, Debug)]
pub struct EvidenceIndex {
    store: Store,
}

impl EvidenceIndex {
    /// The index `store` holds.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// One page of `listing` inside the caller's scope (an org or an environment) under `query`.
    pub async fn list<T: Target>(
        &self,
        caller: &Authorized<T>,
        listing: Listing,
        query: &EvidenceQuery,
    ) -> Result<EvidencePage, EvidenceError> {
        let filter = filter(&caller.target().scope(), listing, query)?;
        let records = self.store.evidence(&filter).await?;
        let next_cursor = (records.len() == filter.limit as usize)
            .then(|| records.last().map(|r| encode_cursor(r.id)))
            .flatten();
        Ok(EvidencePage {
            records,
            next_cursor,
        })
    }
}

/// The store filter of `query` inside `scope`.
fn filter(
    scope: &gait_store::BindingScope,
    listing: Listing,
    q: &EvidenceQuery,
) -> Result<EvidenceFilter, EvidenceError> {
    let org = scope
        .org_part()
        .cloned()
        .ok_or_else(|| invalid("org", "name the org to look in"))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid(
            "limit",
            format!("{limit} is out of range 1..={MAX_LIMIT}"),
        ));
    }
    let mut f = EvidenceFilter::org(org, limit);
    f.project = narrow("project", scope.project_part(), q.project.as_deref())?;
    f.env = narrow("env", scope.env_part(), q.env.as_deref())?;
    f.agent_id = q
        .agent
        .as_deref()
        .map(|a| {
            AgentId::try_from(a.to_owned()).map_err(|e| invalid("agent", format!("{a:?}: {e}")))
        })
        .transpose()?;
    match listing {
        Listing::Records => {
            f.kind = q
                .kind
                .as_deref()
                .map(|k| {
                    if k == DECISION_KIND || ArtifactKind::from_record_kind(k).is_some() {
                        Ok(k.to_owned())
                    } else {
                        Err(invalid(
                            "kind",
                            format!(
                                "{k:?} is not an indexed record kind: use gate.decision, artifact.runpack, \
                                 artifact.trace, artifact.regress_result or artifact.junit"
                            ),
                        ))
                    }
                })
                .transpose()?;
        }
        Listing::Artifacts => {
            f.class = Some(EvidenceClass::Artifact);
            f.kind = q
                .kind
                .as_deref()
                .map(|k| {
                    ArtifactKind::parse(k)
                        .map(|a| a.record_kind().to_owned())
                        .ok_or_else(|| {
                            invalid(
                                "kind",
                                format!(
                                    "{k:?} is not an artifact kind: use runpack, trace, regress_result or junit"
                                ),
                            )
                        })
                })
                .transpose()?;
        }
    }
    f.verdict = q
        .verdict
        .as_deref()
        .map(|v| {
            Verdict::parse(v)
                .map(|v| v.as_str().to_owned())
                .ok_or_else(|| {
                    invalid(
                        "verdict",
                        format!(
                            "{v:?} is not a verdict: use allow, block, require_approval or dry_run"
                        ),
                    )
                })
        })
        .transpose()?;
    f.stage = q
        .stage
        .as_deref()
        .map(|s| {
            Stage::parse(s)
                .map(|s| s.as_str().to_owned())
                .ok_or_else(|| {
                    invalid(
                        "stage",
                        format!("{s:?} is not a stage: use enforce, observe or dry_run"),
                    )
                })
        })
        .transpose()?;
    f.policy_digest = digest("policy_digest", q.policy_digest.as_deref())?;
    f.sha256 = digest("sha256", q.sha256.as_deref())?;
    f.run_id = q
        .run_id
        .as_deref()
        .map(|r| {
            if r.is_empty() || r.len() > MAX_INDEXED_TEXT_BYTES || r.chars().any(char::is_control) {
                Err(invalid(
                    "run_id",
                    format!(
                        "must be 1 to {MAX_INDEXED_TEXT_BYTES} bytes without control characters"
                    ),
                ))
            } else {
                Ok(r.to_owned())
            }
        })
        .transpose()?;
    f.received_from_ms = q.from.as_deref().map(|t| time("from", t)).transpose()?;
    f.received_to_ms = q.to.as_deref().map(|t| time("to", t)).transpose()?;
    if let (Some(from), Some(to)) = (f.received_from_ms, f.received_to_ms)
        && from > to
    {
        return Err(invalid(
            "from",
            format!("{from} is after to ({to}): the window is [from, to)"),
        ));
    }
    f.before_id = q.cursor.as_deref().map(decode_cursor).transpose()?;
    Ok(f)
}

/// A project or env narrowing: free inside an org, fixed (and only repeatable as is) inside an environment.
fn narrow<T>(
    field: &'static str,
    fixed: Option<&T>,
    given: Option<&str>,
) -> Result<Option<T>, EvidenceError>
where
    T: Clone + AsRef<str> + TryFrom<String, Error = gait_identity::IdError>,
{
    match (fixed, given) {
        (Some(fixed), Some(given)) if fixed.as_ref() != given => Err(invalid(
            field,
            format!(
                "{given:?} differs from the path's {:?}: leave it out or use the org route",
                fixed.as_ref()
            ),
        )),
        (Some(fixed), _) => Ok(Some(fixed.clone())),
        (None, Some(given)) => T::try_from(given.to_owned())
            .map(Some)
            .map_err(|e| invalid(field, format!("{given:?}: {e}"))),
        (None, None) => Ok(None),
    }
}

fn digest(field: &'static str, value: Option<&str>) -> Result<Option<String>, EvidenceError> {
    match value {
        Some(v) if is_digest(v) => Ok(Some(v.to_owned())),
        Some(v) => Err(invalid(
            field,
            format!("{v:?} is not a SHA-256 digest: pass 64 lowercase hex characters, no prefix"),
        )),
        None => Ok(None),
    }
}

/// Unix milliseconds, or an RFC 3339 timestamp.
fn time(field: &'static str, value: &str) -> Result<i64, EvidenceError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
        .ok_or_else(|| {
            invalid(
                field,
                format!(
                    "{value:?} is neither unix milliseconds nor an RFC 3339 time such as 2026-12-05T10:00:00Z"
                ),
            )
        })
}

fn encode_cursor(id: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{id}"))
}

fn decode_cursor(text: &str) -> Result<u64, EvidenceError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|s| s.strip_prefix(CURSOR_PREFIX)?.parse::<u64>().ok())
        .filter(|id| *id > 0 && i64::try_from(*id).is_ok())
        .ok_or_else(|| {
            invalid(
                "cursor",
                "not a cursor of this listing: pass next_cursor of the previous page unchanged",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gait_store::{BindingScope, Env, Org, Project};

    fn org_scope() -> BindingScope {
        BindingScope::org(Org::try_from("acme".to_owned()).expect("org"))
    }

    fn env_scope() -> BindingScope {
        BindingScope::env(
            Org::try_from("acme".to_owned()).expect("org"),
            Project::try_from("web".to_owned()).expect("project"),
            Env::try_from("prod".to_owned()).expect("env"),
        )
    }

    fn refused(scope: &BindingScope, listing: Listing, q: EvidenceQuery) -> &'static str {
        match filter(scope, listing, &q) {
            Err(EvidenceError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal of {q:?}, got {other:?}"),
        }
    }

    #[test]
    fn cursors_round_trip_and_foreign_text_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)).ok(), Some(42));
        for bad in [
            "",
            "42",
            "!!",
            &URL_SAFE_NO_PAD.encode("ev1:-1"),
            &URL_SAFE_NO_PAD.encode("ev2:5"),
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let s = org_scope();
        let q = EvidenceQuery::default;
        let cases: Vec<(EvidenceQuery, &str)> = vec![
            (
                EvidenceQuery {
                    verdict: Some("maybe".into()),
                    ..q()
                },
                "verdict",
            ),
            (
                EvidenceQuery {
                    stage: Some("canary".into()),
                    ..q()
                },
                "stage",
            ),
            (
                EvidenceQuery {
                    kind: Some("gate.other".into()),
                    ..q()
                },
                "kind",
            ),
            (
                EvidenceQuery {
                    policy_digest: Some("sha256:ab".into()),
                    ..q()
                },
                "policy_digest",
            ),
            (
                EvidenceQuery {
                    sha256: Some("A".repeat(64)),
                    ..q()
                },
                "sha256",
            ),
            (
                EvidenceQuery {
                    limit: Some(1001),
                    ..q()
                },
                "limit",
            ),
            (
                EvidenceQuery {
                    limit: Some(0),
                    ..q()
                },
                "limit",
            ),
            (
                EvidenceQuery {
                    cursor: Some("zz".into()),
                    ..q()
                },
                "cursor",
            ),
            (
                EvidenceQuery {
                    from: Some("20".into()),
                    to: Some("10".into()),
                    ..q()
                },
                "from",
            ),
            (
                EvidenceQuery {
                    from: Some("yesterday".into()),
                    ..q()
                },
                "from",
            ),
            (
                EvidenceQuery {
                    agent: Some("Not An Id".into()),
                    ..q()
                },
                "agent",
            ),
            (
                EvidenceQuery {
                    run_id: Some(String::new()),
                    ..q()
                },
                "run_id",
            ),
        ];
        for (query, field) in cases {
            assert_eq!(refused(&s, Listing::Records, query), field);
        }
        assert_eq!(
            refused(
                &s,
                Listing::Artifacts,
                EvidenceQuery {
                    kind: Some("gate.decision".into()),
                    ..q()
                }
            ),
            "kind"
        );
        assert_eq!(
            refused(
                &env_scope(),
                Listing::Records,
                EvidenceQuery {
                    env: Some("dev".into()),
                    ..q()
                }
            ),
            "env"
        );
    }

    #[test]
    fn an_environment_scope_fixes_project_and_env() {
        let f = filter(
            &env_scope(),
            Listing::Artifacts,
            &EvidenceQuery {
                kind: Some("runpack".into()),
                from: Some("2026-12-05T10:00:00Z".into()),
                env: Some("prod".into()),
                ..EvidenceQuery::default()
            },
        )
        .expect("valid");
        assert_eq!(f.project.as_ref().map(|p| p.as_str()), Some("web"));
        assert_eq!(f.env.as_ref().map(|e| e.as_str()), Some("prod"));
        assert_eq!(f.kind.as_deref(), Some("artifact.runpack"));
        assert_eq!(f.class, Some(EvidenceClass::Artifact));
        assert_eq!(f.received_from_ms, Some(1_796_464_800_000));
        assert_eq!(f.limit, DEFAULT_LIMIT);
    }
}
