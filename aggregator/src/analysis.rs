//! Fleet analytics (issue 12): incident families with their priority and next-best-fix, posture, and the
//! change-management gate — computed by the pure `gait-analysis` crate over state the upkeep job
//! ([`upkeep`]) keeps precomputed from the evidence index, so a query reads small tables, never the index.
//!
//! - **Scope.** Every read takes the caller's `Authorized<BindingScope>` (an org, a project or an environment
//!   of it) and asks the store for rows inside that scope only: a family seen in two projects shows a reader of
//!   one project that project's occurrences, agents, environments and representatives, nothing else.
//! - **Determinism.** Families, scores and posture are functions of the indexed evidence alone (sums, minima,
//!   maxima, sets), so shuffled or redelivered ingest gives the same answers; ties sort by family id.
//! - **Exports.** [`csv_families`] and [`csv_posture`] render the same rows as CSV, each row carrying the
//!   evidence digests (representatives) or the scope and day it came from.

pub mod feed;
pub mod upkeep;

use std::collections::{BTreeMap, BTreeSet};

use gait_analysis::family::{Family, Fingerprint};
use gait_analysis::fix::{FixContext, LineageVersion, Suggestion, next_best_fix};
use gait_analysis::gate::{
    GateInputs, GatePolicy, GateVerdict, ProjectRegress, RegressOutcome, change_gate,
    regress_posture,
};
use gait_analysis::posture::{
    AgentState, ApprovalHealth, ApprovalOutcome, FleetPosture, FleetThresholds, approvals, fleet,
    per_mille,
};
use gait_analysis::priority::{Priority, PriorityInputs, RiskClass, Severity, priority};
use gait_store::{
    AgentFilter, AnalysisFilter, BindingScope, FamilyScope, MAX_AGENT_PAGE, Store, StoreError,
    Tenant,
};
use serde::{Deserialize, Serialize};

use crate::auth::{Authorized, Target};

/// Environment names read as production for blast radius (case-insensitive) unless `analysis.production_envs`
/// names others.
pub const PRODUCTION_ENVS: [&str; 3] = ["prod", "production", "prd"];
/// Families returned when `limit` is absent.
pub const DEFAULT_FAMILIES: u32 = 50;
/// Most families one listing returns.
pub const MAX_FAMILIES: u32 = 1_000;
/// Posture window when `days` is absent.
pub const DEFAULT_DAYS: u32 = 7;
/// Longest posture window.
pub const MAX_DAYS: u32 = 90;
/// Days a verdict-shift read covers by default.
pub const DEFAULT_SHIFT_DAYS: u32 = 30;
/// A family whose last occurrence is older than this is not open (the change gate ignores it).
pub const OPEN_WINDOW_MS: i64 = 7 * upkeep::DAY_MS;
/// Priority at or above which an open family fails the change gate.
pub const CRITICAL_SCORE: u32 = 100;
/// Agents not seen for this long are stale.
pub const STALE_AFTER_MS: i64 = 15 * 60 * 1000;
/// Certificates expiring within this are flagged.
pub const CERT_WARNING_MS: i64 = 7 * upkeep::DAY_MS;
/// An environment whose newest evidence is older than this is quiet (flagged in the posture).
pub const QUIET_AFTER_MS: i64 = upkeep::DAY_MS;
/// Most agents one posture read counts.
pub const MAX_POSTURE_AGENTS: usize = 100_000;

/// Why an analytics read was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// A parameter is malformed or out of range; the message names it and what to pass.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// No such family in the caller's scope.
    #[error("{0}")]
    NotFound(String),
    /// A feature the gate reads (conformance, rollouts) failed.
    #[error("{what}: {message}")]
    Dependency { what: &'static str, message: String },
    /// Stored analytics state contradicts itself (a bug or a damaged database).
    #[error("analytics state is inconsistent: {0}")]
    Corrupt(String),
    /// The request contradicts the merges in force (already merged, or merging into a merged family).
    #[error("{0}")]
    Conflict(String),
    /// The audit entry of a merge or split could not be appended (nothing was changed).
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Appends the audit entry of a merge or split of `family` (an org-wide object) in the operation's transaction.
async fn audit_family<const N: usize>(
    tx: &mut gait_store::StoreTx,
    actor: &str,
    action: &str,
    org: &gait_store::Org,
    family: &str,
    details: [(&str, &String); N],
) -> Result<(), AnalysisError> {
    crate::audit::append_draft(
        tx,
        gait_audit::EntryDraft {
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: crate::audit::scope_target(
                &BindingScope::org(org.clone()),
                "incident_family",
                family,
            ),
            before: None,
            after: None,
            details: Some(
                details
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.clone().into()))
                    .collect(),
            ),
        },
    )
    .await?;
    Ok(())
}

/// The family each merged family reads as. Chains are followed to their end (merging a family that others were
/// merged into carries them along); a cycle (two merges that raced before the lock existed, or a damaged table)
/// reads as the smallest family on the cycle, so every replica and reader agrees. Linear in the merges.
fn merge_roots(merges: &[gait_store::FamilyMerge]) -> BTreeMap<String, String> {
    let into: BTreeMap<&str, &str> = merges
        .iter()
        .map(|m| (m.family.as_str(), m.into_family.as_str()))
        .collect();
    let mut resolved: BTreeMap<&str, &str> = BTreeMap::new();
    for start in into.keys() {
        if resolved.contains_key(start) {
            continue;
        }
        let mut path: Vec<&str> = Vec::new();
        let mut at = *start;
        let root = loop {
            if let Some(root) = resolved.get(at) {
                break *root;
            }
            if let Some(pos) = path.iter().position(|p| *p == at) {
                break path[pos..].iter().copied().min().unwrap_or(at);
            }
            match into.get(at) {
                Some(next) => {
                    path.push(at);
                    at = next;
                }
                None => break at,
            }
        };
        for p in path {
            resolved.insert(p, root);
        }
    }
    resolved
        .into_iter()
        .filter(|(f, r)| f != r)
        .map(|(f, r)| (f.to_owned(), r.to_owned()))
        .collect()
}

fn invalid(field: &'static str, message: impl Into<String>) -> AnalysisError {
    AnalysisError::Invalid {
        field,
        message: message.into(),
    }
}

/// Query parameters of the family listing.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamiliesQuery {
    /// The org again (optional; must be the path's when given, as access requests spell their scope).
    pub org: Option<String>,
    /// Narrow to a project of the org.
    pub project: Option<String>,
    /// Narrow to an environment (with `project`).
    pub env: Option<String>,
    /// Families to return, highest priority first (1..=1000, default 50).
    pub limit: Option<u32>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// Query parameters of the posture read.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureQuery {
    /// As [`FamiliesQuery::org`].
    pub org: Option<String>,
    pub project: Option<String>,
    pub env: Option<String>,
    /// Days back from today, UTC (1..=90, default 7).
    pub days: Option<u32>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// The scope an org route's `project`/`env` parameters name (what the caller must be authorized for); a
/// `query_org` that is not the path's org is refused.
pub fn scope_of(
    org: gait_store::Org,
    query_org: Option<&str>,
    project: Option<&str>,
    env: Option<&str>,
) -> Result<BindingScope, AnalysisError> {
    if let Some(q) = query_org
        && q != org.as_str()
    {
        return Err(invalid(
            "org",
            format!("the query names org {q:?} but the path {org}: name one org"),
        ));
    }
    let project = project
        .map(|p| {
            p.parse::<gait_store::Project>()
                .map_err(|e| invalid("project", format!("{p:?}: {e}")))
        })
        .transpose()?;
    let env = env
        .map(|e| {
            e.parse::<gait_store::Env>()
                .map_err(|err| invalid("env", format!("{e:?}: {err}")))
        })
        .transpose()?;
    BindingScope::from_parts(Some(org), project, env).ok_or_else(|| {
        invalid(
            "env",
            "an environment is named within a project: pass project too",
        )
    })
}

fn filter_of(scope: &BindingScope) -> Result<AnalysisFilter, AnalysisError> {
    let org = scope
        .org_part()
        .cloned()
        .ok_or_else(|| invalid("org", "name the org to read"))?;
    Ok(AnalysisFilter {
        org,
        project: scope.project_part().cloned(),
        env: scope.env_part().cloned(),
        family: None,
    })
}

/// Output format of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// `json` or `csv` (default json).
pub fn format_of(text: Option<&str>) -> Result<Format, AnalysisError> {
    match text.unwrap_or("json") {
        "json" => Ok(Format::Json),
        "csv" => Ok(Format::Csv),
        other => Err(invalid(
            "format",
            format!("{other:?} is not a format: use json or csv"),
        )),
    }
}

/// One family as a reader of some scope sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FamilyView {
    /// The family id (fingerprint hash).
    pub family: String,
    /// Stable key for downstream systems.
    pub dedup_key: String,
    /// Fingerprint algorithm version.
    pub fingerprint_version: u32,
    /// `decision` or `regress_failure`.
    pub kind: String,
    pub tool: String,
    pub verdict: String,
    /// What went into the fingerprint.
    pub inputs: serde_json::Value,
    /// Occurrences inside the scope.
    pub occurrences: u64,
    pub first_seen_unix_ms: i64,
    pub last_seen_unix_ms: i64,
    /// Agents reached inside the scope.
    pub agents: u64,
    /// Projects reached inside the scope.
    pub projects: u64,
    /// Environments reached, as `project/env`.
    pub environments: Vec<String>,
    /// Of which production.
    pub production_environments: u64,
    /// Highest risk class seen.
    pub risk_class: RiskClass,
    /// A call was destructive.
    pub destructive: bool,
    /// A call sent data out or carried tainted data.
    pub egress_or_taint: bool,
    /// Strongest verdict seen.
    pub severity: Severity,
    /// Evidence digests showing it, smallest first: each environment's smallest (an intent digest for a
    /// decision, the SHA-256 of a regress result), at most five.
    pub representatives: Vec<String>,
    /// The score and its parts.
    pub priority: Priority,
    /// Families an operator merged into this one (their occurrences, agents and environments are counted here).
    pub merged: Vec<String>,
    /// Next-best-fix suggestions (filled for a single family, empty in listings).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suggestions: Vec<Suggestion>,
}

/// A page of families, highest priority first.
#[derive(Clone, Debug, Serialize)]
pub struct FamiliesReport {
    /// The scope read (`org`, `org/project` or `org/project/env`).
    pub scope: String,
    /// Families in the scope, in total.
    pub total: u64,
    /// The first `limit` of them by priority.
    pub families: Vec<FamilyView>,
}

fn risk_of(rank: u8) -> RiskClass {
    match rank {
        3 => RiskClass::Critical,
        2 => RiskClass::High,
        1 => RiskClass::Medium,
        _ => RiskClass::Low,
    }
}

fn severity_of(rank: u8) -> Severity {
    match rank {
        3 => Severity::Block,
        2 => Severity::RequireApproval,
        1 => Severity::WouldBlock,
        _ => Severity::Allow,
    }
}

/// The analytics service.
#[derive(Clone)]
pub struct Analytics {
    store: Store,
    registry: std::sync::Arc<crate::registry::Registry>,
    production: std::sync::Arc<[String]>,
}

impl Analytics {
    /// The service, reading [`PRODUCTION_ENVS`] as production.
    pub fn new(store: Store, registry: std::sync::Arc<crate::registry::Registry>) -> Self {
        Analytics {
            store,
            registry,
            production: PRODUCTION_ENVS.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    /// Reads the environments named `envs` (case-insensitive) as production instead.
    pub fn with_production_envs(mut self, envs: &[String]) -> Self {
        self.production = envs.iter().cloned().collect();
        self
    }

    fn is_production(&self, env: &str) -> bool {
        self.production.iter().any(|p| p.eq_ignore_ascii_case(env))
    }

    /// Every family in `filter`'s scope, unsorted (the views, without suggestions), merges applied: a merged
    /// family is counted in the family it was merged into. With `filter.family` set, the one group that family
    /// belongs to.
    async fn views(&self, filter: &AnalysisFilter) -> Result<Vec<FamilyView>, AnalysisError> {
        let roots = merge_roots(&self.store.family_merges(&filter.org).await?);
        let root_of = |f: &str| roots.get(f).cloned().unwrap_or_else(|| f.to_owned());
        let (scopes, defs) = match &filter.family {
            // One family: every member of its group, each read inside the scope — and nothing when the family
            // asked for has no occurrence in the scope (a reader never learns of a family outside it).
            Some(family) => {
                if self.store.family_scopes(filter).await?.is_empty() {
                    return Ok(Vec::new());
                }
                let root = root_of(family);
                let mut scopes = Vec::new();
                let mut defs = Vec::new();
                let members = std::iter::once(root.clone()).chain(
                    roots
                        .iter()
                        .filter(|(_, r)| **r == root)
                        .map(|(m, _)| m.clone()),
                );
                for member in members {
                    let one = AnalysisFilter {
                        family: Some(member),
                        ..filter.clone()
                    };
                    scopes.extend(self.store.family_scopes(&one).await?);
                    defs.extend(self.store.family_definitions(&one).await?);
                }
                (scopes, defs)
            }
            None => (
                self.store.family_scopes(filter).await?,
                self.store.family_definitions(filter).await?,
            ),
        };
        let defs: BTreeMap<String, gait_store::FamilyDef> =
            defs.into_iter().map(|d| (d.family.clone(), d)).collect();
        // Group by the family each reads as.
        let mut grouped: BTreeMap<String, BTreeMap<&str, Vec<&FamilyScope>>> = BTreeMap::new();
        for s in &scopes {
            grouped
                .entry(root_of(&s.family))
                .or_default()
                .entry(s.family.as_str())
                .or_default()
                .push(s);
        }
        let unscoped = AnalysisFilter {
            family: None,
            ..filter.clone()
        };
        let mut out = Vec::with_capacity(grouped.len());
        for (root, members) in grouped {
            for family in members.keys() {
                if !defs.contains_key(*family) {
                    // Scope rows are written with their definition in one transaction: absent means corruption.
                    return Err(AnalysisError::Corrupt(format!(
                        "family {family} has occurrences but no definition"
                    )));
                }
            }
            // The group shows as its root when the root has occurrences in this scope, else as its smallest
            // member here (a reader never learns of a family outside its scope).
            let shown = if members.contains_key(root.as_str()) {
                root.clone()
            } else {
                members
                    .keys()
                    .next()
                    .map_or_else(|| root.clone(), |f| (*f).to_owned())
            };
            let def = &defs[shown.as_str()];
            let merged: Vec<String> = members
                .keys()
                .filter(|f| **f != shown)
                .map(|f| (*f).to_owned())
                .collect();
            let rows: Vec<&FamilyScope> = members.values().flatten().copied().collect();
            let mut v = if merged.is_empty() {
                view(def, &rows, |env| self.is_production(env))?
            } else {
                // One row per environment, its agents counted once across the members.
                let names: Vec<String> = members.keys().map(|f| (*f).to_owned()).collect();
                let agents: BTreeMap<(String, String), u64> = self
                    .store
                    .family_agent_counts(&unscoped, &names)
                    .await?
                    .into_iter()
                    .map(|(t, n)| ((t.project.to_string(), t.env.to_string()), n))
                    .collect();
                let combined = combine_by_env(&rows, &agents);
                let refs: Vec<&FamilyScope> = combined.iter().collect();
                view(def, &refs, |env| self.is_production(env))?
            };
            v.merged = merged;
            out.push(v);
        }
        Ok(out)
    }

    /// Merges `family` into `into` (ids or dedup keys) for the whole org: an audited overlay, undone by
    /// [`Self::split`].
    pub async fn merge(
        &self,
        caller: &Authorized<gait_store::Org>,
        family: &str,
        into: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<gait_store::FamilyMerge, AnalysisError> {
        let org = caller.target().clone();
        let family = self.existing(&org, "family", family).await?;
        let into = self.existing(&org, "into", into).await?;
        if family == into {
            return Err(invalid("into", "a family cannot be merged into itself"));
        }
        if reason.trim().is_empty() {
            return Err(invalid("reason", "say why the families are one incident"));
        }
        let merge = gait_store::FamilyMerge {
            org: org.clone(),
            family,
            into_family: into,
            reason: reason.to_owned(),
            merged_by: caller.actor(),
            merged_unix_ms: now_ms,
        };
        let m = merge.clone();
        self.store
            .transaction(async |tx| {
                tx.lock_family_merges(&m.org).await?;
                let merges = tx.family_merges(&m.org).await?;
                if merges.len() >= gait_store::MAX_FAMILY_MERGES as usize {
                    return Err(AnalysisError::Conflict(format!(
                        "org {} holds {} merges, the most it may: split some first",
                        m.org,
                        merges.len()
                    )));
                }
                let roots = merge_roots(&merges);
                if let Some(root) = roots.get(&m.family) {
                    return Err(AnalysisError::Conflict(format!(
                        "family {} is already merged into {root}: split it first",
                        m.family
                    )));
                }
                if let Some(root) = roots.get(&m.into_family) {
                    return Err(AnalysisError::Conflict(format!(
                        "family {} is merged into {root}: merge into {root} instead",
                        m.into_family
                    )));
                }
                if !tx.insert_family_merge(&m).await? {
                    return Err(AnalysisError::Conflict(format!(
                        "family {} is already merged: split it first",
                        m.family
                    )));
                }
                audit_family(
                    tx,
                    &m.merged_by,
                    "family.merge",
                    &m.org,
                    &m.family,
                    [("into", &m.into_family), ("reason", &m.reason)],
                )
                .await
            })
            .await?;
        Ok(merge)
    }

    /// Undoes the merge of `family` (a split): it reads as its own family again. Audited.
    pub async fn split(
        &self,
        caller: &Authorized<gait_store::Org>,
        family: &str,
    ) -> Result<gait_store::FamilyMerge, AnalysisError> {
        let org = caller.target().clone();
        let family = self.existing(&org, "family", family).await?;
        let actor = caller.actor();
        self.store
            .transaction(async |tx| {
                let Some(removed) = tx.delete_family_merge(&org, &family).await? else {
                    return Err(AnalysisError::NotFound(format!(
                        "family {family} is not merged into another"
                    )));
                };
                audit_family(
                    tx,
                    &actor,
                    "family.split",
                    &org,
                    &family,
                    [("from", &removed.into_family)],
                )
                .await?;
                Ok(removed)
            })
            .await
    }

    /// The id of family `id` (an id or a dedup key) of `org`, which must have been seen; `field` names the
    /// parameter in errors.
    async fn existing(
        &self,
        org: &gait_store::Org,
        field: &'static str,
        id: &str,
    ) -> Result<String, AnalysisError> {
        let mut filter = AnalysisFilter::org(org.clone());
        let family = self
            .resolve(&filter, id)
            .await
            .map_err(|e| match e {
                AnalysisError::Invalid { message, .. } => AnalysisError::Invalid { field, message },
                other => other,
            })?
            .ok_or_else(|| AnalysisError::NotFound(format!("{field}: no family {id} in {org}")))?;
        filter.family = Some(family.clone());
        if self.store.family_definitions(&filter).await?.is_empty() {
            return Err(AnalysisError::NotFound(format!(
                "{field}: no family {id} in {org}: list families with `gait-aggregator families`"
            )));
        }
        Ok(family)
    }

    /// Families in the caller's scope, highest priority first (ties by family id).
    pub async fn families<T: Target>(
        &self,
        caller: &Authorized<T>,
        limit: Option<u32>,
    ) -> Result<FamiliesReport, AnalysisError> {
        let limit = limit.unwrap_or(DEFAULT_FAMILIES);
        if !(1..=MAX_FAMILIES).contains(&limit) {
            return Err(invalid(
                "limit",
                format!("{limit} is out of range 1..={MAX_FAMILIES}"),
            ));
        }
        let scope = caller.target().scope();
        let filter = filter_of(&scope)?;
        let mut views = self.views(&filter).await?;
        let total = views.len() as u64;
        sort_by_priority(&mut views);
        views.truncate(limit as usize);
        Ok(FamiliesReport {
            scope: scope.to_string(),
            total,
            families: views,
        })
    }

    /// One family in the caller's scope (by id or dedup key), with its next-best-fix suggestions.
    pub async fn family<T: Target>(
        &self,
        caller: &Authorized<T>,
        id: &str,
    ) -> Result<FamilyView, AnalysisError> {
        let scope = caller.target().scope();
        let mut filter = filter_of(&scope)?;
        let family = self.resolve(&filter, id).await?;
        let mut views = match family {
            Some(family) => {
                filter.family = Some(family);
                self.views(&filter).await?
            }
            None => Vec::new(),
        };
        let Some(mut v) = views.pop() else {
            return Err(AnalysisError::NotFound(format!(
                "family {id} has no occurrence in {scope}: list families with `gait-aggregator families`"
            )));
        };
        // The rollback candidate reads the pin history of the one environment the family is in, when it is in
        // one; across several there is no single history to roll back.
        let mut lineage = Vec::new();
        if let [only] = v.environments.as_slice()
            && let Some((project, env)) = only.split_once('/')
            && let (Ok(project), Ok(env)) = (project.parse(), env.parse())
        {
            let tenant = Tenant::new(filter.org.clone(), project, env);
            for pin in self.store.env_pins(&tenant, 1_000).await? {
                lineage.push(LineageVersion {
                    digest: pin.pin.digest,
                    active_from_unix_ms: pin.pin.created_unix_ms,
                });
            }
        }
        let high_risk = v.risk_class >= RiskClass::High || v.destructive;
        let family = Family {
            fingerprint: Fingerprint {
                version: v.fingerprint_version,
                hash: v.family.clone(),
                inputs: v.inputs.clone(),
            },
            first_seen_unix_ms: v.first_seen_unix_ms,
            last_seen_unix_ms: v.last_seen_unix_ms,
            count: v.occurrences,
            agents: BTreeSet::new(),
            projects: BTreeSet::new(),
            environments: v.environments.iter().cloned().collect(),
            representatives: v.representatives.iter().cloned().collect(),
        };
        // A regress fixture is made from a runpack; a family's representatives are intent digests (decisions)
        // or regress result digests, never a runpack's, so that suggestion would name the wrong artifact.
        v.suggestions = next_best_fix(
            &family,
            &FixContext {
                lineage: &lineage,
                attribution: None,
                high_risk,
            },
        )
        .into_iter()
        .filter(|s| {
            !matches!(
                s.action,
                gait_analysis::fix::Action::AddRegressFixture { .. }
            )
        })
        .collect();
        Ok(v)
    }

    /// A family id (64 hex), or the id of a dedup key (`gfam1-…`) with an occurrence inside `filter`'s scope; an
    /// unknown key and a key of a family outside the scope read the same (`None`), so a scoped reader cannot
    /// probe other scopes.
    async fn resolve(
        &self,
        filter: &AnalysisFilter,
        id: &str,
    ) -> Result<Option<String>, AnalysisError> {
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if id.len() == 64 && hex(id) {
            return Ok(Some(id.to_owned()));
        }
        if let Some(rest) = id.strip_prefix("gfam")
            && let Some((_, prefix)) = rest.split_once('-')
            && prefix.len() == 32
            && hex(prefix)
        {
            return Ok(self.store.family_by_dedup_key(filter, id).await?);
        }
        Err(invalid(
            "family",
            format!("{id:?} is neither a family id (64 hex) nor a dedup key (gfam1-<32 hex>)"),
        ))
    }

    /// Posture of the caller's scope over the last `days` UTC days (today included).
    pub async fn posture<T: Target>(
        &self,
        caller: &Authorized<T>,
        days: Option<u32>,
        now_ms: i64,
    ) -> Result<PostureReport, AnalysisError> {
        let days = days.unwrap_or(DEFAULT_DAYS);
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(invalid(
                "days",
                format!("{days} is out of range 1..={MAX_DAYS}"),
            ));
        }
        let scope = caller.target().scope();
        let filter = filter_of(&scope)?;
        let today = now_ms.div_euclid(upkeep::DAY_MS);
        let from_day = today - i64::from(days) + 1;
        let counts = self
            .store
            .posture_counts(&filter, from_day, today + 1)
            .await?;
        // The regress trend compares the window with the one before it.
        let regress_rows = self
            .store
            .regress_counts(&filter, from_day - i64::from(days), today + 1)
            .await?;
        let agents = self.agent_states(&filter).await?;
        let mut report = posture_report(
            scope.to_string(),
            from_day,
            today,
            &counts,
            &regress_rows,
            &agents,
            now_ms,
            days,
        );
        let timings = self
            .store
            .approval_timings(&filter, from_day * upkeep::DAY_MS)
            .await?;
        report.approvals = approvals(&approval_outcomes(&timings, now_ms));
        report.freshness = self
            .store
            .evidence_freshness(&filter)
            .await?
            .into_iter()
            .map(|f| {
                let age_ms = now_ms.saturating_sub(f.last_seen_unix_ms).max(0);
                EnvFreshness {
                    project: f.project.to_string(),
                    env: f.env.to_string(),
                    last_evidence_unix_ms: f.last_seen_unix_ms,
                    age_ms,
                    quiet: age_ms > QUIET_AFTER_MS,
                }
            })
            .collect();
        let gated: BTreeSet<&str> = counts
            .iter()
            .filter(|c| c.decisions > 0)
            .map(|c| c.tool.as_str())
            .collect();
        let (tools, truncated) = self
            .store
            .runpack_tools(
                &filter,
                from_day * upkeep::DAY_MS,
                (today + 1) * upkeep::DAY_MS,
            )
            .await?;
        // A tool is high-risk here when a gate saw it at high or critical risk in the scope and window: a
        // runpack's call carries no risk class of its own.
        let high_risk: BTreeSet<&str> = counts
            .iter()
            .filter(|c| c.high_risk > 0)
            .map(|c| c.tool.as_str())
            .collect();
        report.coverage = tool_coverage(&tools, &gated, &high_risk);
        report.coverage.truncated = truncated;
        report.freshness.sort_by(|a, b| {
            a.last_evidence_unix_ms
                .cmp(&b.last_evidence_unix_ms)
                .then_with(|| (&a.project, &a.env).cmp(&(&b.project, &b.env)))
        });
        Ok(report)
    }

    async fn agent_states(
        &self,
        filter: &AnalysisFilter,
    ) -> Result<Vec<AgentState>, AnalysisError> {
        let mut out = Vec::new();
        let mut page = AgentFilter::for_org(filter.org.clone());
        page.project = filter.project.clone();
        page.env = filter.env.clone();
        page.limit = Some(MAX_AGENT_PAGE);
        let now = crate::clock::unix_ms();
        loop {
            let rows = self.store.list_agents(&page).await?;
            let full = rows.len() == MAX_AGENT_PAGE as usize;
            for a in &rows {
                out.push(AgentState {
                    connected: now.saturating_sub(a.last_seen_unix_ms) <= STALE_AFTER_MS,
                    last_seen_unix_ms: a.last_seen_unix_ms,
                    active_epoch: a.active_bundle.as_ref().map(|b| b.epoch),
                    target_epoch: a.received_bundle.as_ref().map(|b| b.epoch),
                    // No certificate on record: nothing to expire.
                    cert_not_after_unix_ms: a.cert_not_after_unix_ms.unwrap_or(i64::MAX),
                });
            }
            match rows.last() {
                Some(last) if full && out.len() < MAX_POSTURE_AGENTS => {
                    page.after = Some(last.position());
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Drift attribution in one environment: why run `run` (its most recently recorded runpack there) differs
    /// from `baseline` (that run's most recent runpack, or, when absent, the run's own latest earlier runpack with
    /// other contents), told by comparing their digests (`gait_analysis::drift`): the policy pinned when each was
    /// recorded, every tool call's arguments and result digests, the receipts and the producer version.
    pub async fn drift(
        &self,
        caller: &Authorized<Tenant>,
        run: &str,
        baseline: Option<&str>,
    ) -> Result<DriftReport, AnalysisError> {
        let tenant = caller.target().clone();
        for (field, id) in [("run", Some(run)), ("baseline", baseline)] {
            if let Some(id) = id
                && (id.is_empty()
                    || id.len() > 128
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
            {
                return Err(invalid(
                    field,
                    format!("{id:?} is not a run id ([A-Za-z0-9_-], 1-128)"),
                ));
            }
        }
        if baseline == Some(run) {
            return Err(invalid(
                "baseline",
                "is the run itself: leave it out to compare with the run's earlier runpack",
            ));
        }
        let pins = self.store.env_pins(&tenant, 1_000).await?;
        let mut failing_and_before = self.sides(&tenant, run, &pins).await?;
        if failing_and_before.is_empty() {
            return Err(AnalysisError::NotFound(format!(
                "no runpack of run {run} in {tenant}: push it with `gait-agent push`"
            )));
        }
        let failing = failing_and_before.remove(0);
        let before = match baseline {
            Some(b) => self.sides(&tenant, b, &pins).await?.into_iter().next(),
            None => failing_and_before
                .into_iter()
                .find(|s| s.runpack_sha256 != failing.runpack_sha256),
        };
        let Some(baseline) = before else {
            return Err(AnalysisError::NotFound(match baseline {
                Some(b) => format!("no runpack of baseline run {b} in {tenant}"),
                None => format!(
                    "run {run} has no earlier runpack with other contents in {tenant}: name a baseline run \
                     (`baseline`) to compare it with"
                ),
            }));
        };
        let (mut before_ctx, mut after_ctx) = (baseline.context.clone(), failing.context.clone());
        // A side that listed no calls of a run that had some (an older agent) says nothing about the tools.
        if !baseline.calls_listed || !failing.calls_listed {
            for c in [&mut before_ctx, &mut after_ctx] {
                c.tool_args.clear();
                c.tool_results.clear();
            }
        }
        let attribution = gait_analysis::drift::attribute(&before_ctx, &after_ctx);
        // Calls left out of a record were not compared: no cause found is then not "nothing differs".
        let incomplete = failing.calls_omitted > 0
            || baseline.calls_omitted > 0
            || !baseline.calls_listed
            || !failing.calls_listed;
        Ok(DriftReport {
            scope: tenant.to_string(),
            unattributed: attribution.unattributed() && !incomplete,
            incomplete,
            attribution,
            failing,
            baseline,
        })
    }

    /// The runpacks of `run` in `tenant` as drift sides, most recently recorded first (the newest 20 to arrive).
    async fn sides(
        &self,
        tenant: &Tenant,
        run: &str,
        pins: &[gait_store::StoredPin],
    ) -> Result<Vec<DriftSide>, AnalysisError> {
        let mut f = gait_store::EvidenceFilter::org(tenant.org.clone(), 20);
        f.project = Some(tenant.project.clone());
        f.env = Some(tenant.env.clone());
        f.kind = Some("artifact.runpack".to_owned());
        f.run_id = Some(run.to_owned());
        let mut sides = Vec::new();
        for record in self.store.evidence(&f).await? {
            sides.push((record.id, self.run_side(&record, pins)?));
        }
        sides.sort_by(|(a_id, a), (b_id, b)| {
            b.recorded_unix_ms
                .cmp(&a.recorded_unix_ms)
                .then_with(|| b_id.cmp(a_id))
        });
        Ok(sides.into_iter().map(|(_, s)| s).collect())
    }

    /// What one runpack record saw, as digests.
    fn run_side(
        &self,
        record: &gait_store::IndexedRecord,
        pins: &[gait_store::StoredPin],
    ) -> Result<DriftSide, AnalysisError> {
        let payload = record.artifact.as_ref().ok_or_else(|| {
            AnalysisError::Corrupt(format!("runpack record {} has no payload", record.id))
        })?;
        let artifact: gait_artifact::evidence::ArtifactRecord = serde_json::from_str(payload.get())
            .map_err(|e| AnalysisError::Corrupt(format!("runpack record {}: {e}", record.id)))?;
        // When the run was recorded: the runpack's own time, else when the agent took it in; a time more than 5
        // minutes after the record reached the aggregator (a clock ahead) counts at its arrival.
        let recorded = artifact
            .run_created_unix_ms
            .unwrap_or(record.created_unix_ms)
            .min(record.received_unix_ms.saturating_add(5 * 60_000));
        let mut context = gait_analysis::drift::RunContext {
            // The version pinned in the environment when the run was recorded.
            policy_digest: pins
                .iter()
                .filter(|p| p.pin.created_unix_ms <= recorded)
                .max_by_key(|p| (p.pin.created_unix_ms, p.id))
                .map(|p| p.pin.digest.clone()),
            producer_version: (!artifact.producer_version.is_empty())
                .then(|| artifact.producer_version.clone()),
            ..Default::default()
        };
        let intents = artifact.runpack.as_ref().map_or(0, |r| r.intent_count);
        if let Some(rp) = &artifact.runpack {
            context.receipts_digest = Some(gait_canon::sha256_hex(
                rp.receipt_digest_vector.join("\n").as_bytes(),
            ));
        }
        for (i, call) in artifact.calls.iter().enumerate() {
            // Zero-padded, so the first call that differs is the first cause of its kind.
            let key = format!("{i:04}:{}", call.tool_name);
            context
                .tool_args
                .insert(key.clone(), call.args_digest.clone());
            if !call.result_digest.is_empty() {
                context.tool_results.insert(key, call.result_digest.clone());
            }
        }
        Ok(DriftSide {
            run_id: artifact
                .runpack
                .as_ref()
                .map(|r| r.run_id.clone())
                .unwrap_or_default(),
            runpack_sha256: artifact.sha256.clone(),
            recorded_unix_ms: recorded,
            calls_listed: !artifact.calls.is_empty() || intents == 0,
            calls_omitted: artifact.calls_omitted,
            context,
        })
    }

    /// Shifts in each tool's verdict mix in one environment whose first day is within the last `days` UTC days
    /// (today included), newest first, each attributed (`gait_analysis::shift`). `tool` narrows it to one tool.
    pub async fn verdict_shifts(
        &self,
        caller: &Authorized<Tenant>,
        days: Option<u32>,
        tool: Option<&str>,
        now_ms: i64,
    ) -> Result<ShiftsReport, AnalysisError> {
        let days = days.unwrap_or(DEFAULT_SHIFT_DAYS);
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(invalid(
                "days",
                format!("{days} is out of range 1..={MAX_DAYS}"),
            ));
        }
        if let Some(t) = tool
            && (t.is_empty() || t.len() > crate::evidence::index::MAX_INDEXED_TEXT_BYTES)
        {
            return Err(invalid(
                "tool",
                format!(
                    "must be 1-{} bytes (tool names are indexed that long)",
                    crate::evidence::index::MAX_INDEXED_TEXT_BYTES
                ),
            ));
        }
        let tenant = caller.target();
        let filter = AnalysisFilter::env(tenant);
        let rule = gait_analysis::shift::ShiftRule::default();
        let today = now_ms.div_euclid(upkeep::DAY_MS);
        let from_day = today - i64::from(days) + 1;
        // The rule always runs over the same span, the longest window and the baselines before it, and the
        // window only picks which shifts to show: where the last shift fell decides later baselines, so a
        // shorter read could answer otherwise for the same day.
        let read_from = today + 1 - i64::from(MAX_DAYS) - i64::from(rule.baseline_days);
        let postures = self
            .store
            .tool_posture_counts(&filter, tool, read_from, today + 1)
            .await?;
        let policies = self
            .store
            .policy_counts(&filter, tool, read_from, today + 1)
            .await?;
        let mut tools: BTreeMap<&str, BTreeMap<i64, gait_analysis::shift::ToolDay>> =
            BTreeMap::new();
        for p in &postures {
            let d = tools
                .entry(p.tool.as_str())
                .or_default()
                .entry(p.day)
                .or_insert_with(|| gait_analysis::shift::ToolDay {
                    day: p.day,
                    ..Default::default()
                });
            *d.verdicts.entry(p.verdict.clone()).or_default() += p.decisions;
            *d.stages.entry(p.stage.clone()).or_default() += p.decisions;
            d.high_risk += p.high_risk;
            d.destructive += p.destructive;
        }
        for p in policies
            .iter()
            .filter(|p| p.policy_digest != gait_store::NO_POLICY)
        {
            // A day with decisions has its posture row: a policy row alone adds nothing to compare. Decisions
            // that named no digest are left out: an unknown digest is never a cause.
            if let Some(d) = tools
                .get_mut(p.tool.as_str())
                .and_then(|days| days.get_mut(&p.day))
            {
                *d.policies.entry(p.policy_digest.clone()).or_default() += p.decisions;
            }
        }
        let mut shifts = Vec::new();
        for (name, days) in tools {
            let days: Vec<gait_analysis::shift::ToolDay> = days.into_values().collect();
            for shift in gait_analysis::shift::shifts(&days, &rule) {
                if shift.day >= from_day {
                    shifts.push(ToolShift {
                        tool: name.to_owned(),
                        unattributed: shift.attribution.unattributed(),
                        shift,
                    });
                }
            }
        }
        shifts.sort_by(|a, b| {
            b.shift
                .day
                .cmp(&a.shift.day)
                .then_with(|| a.tool.cmp(&b.tool))
        });
        Ok(ShiftsReport {
            scope: tenant.to_string(),
            from_day,
            to_day: today,
            rule,
            shifts,
        })
    }

    /// The change-management gate of one environment (module docs of `gait_analysis::gate`).
    pub async fn change_gate(
        &self,
        caller: &Authorized<Tenant>,
        policy: &GatePolicy,
        now_ms: i64,
    ) -> Result<GateReport, AnalysisError> {
        let tenant = caller.target().clone();
        let mut inputs = GateInputs {
            conforms: true,
            ..GateInputs::default()
        };
        // Conformance: only when the org requires a baseline.
        if self
            .store
            .conformance_baseline(&tenant.org)
            .await?
            .is_some()
        {
            let filter = gait_store::ConformanceFilter {
                project: Some(tenant.project.to_string()),
                env: Some(tenant.env.to_string()),
                agent: None,
            };
            let report = self
                .registry
                .conformance(&tenant.org, &filter)
                .await
                .map_err(|e| AnalysisError::Dependency {
                    what: "conformance",
                    message: e.to_string(),
                })?;
            if !report.conformant {
                inputs.conforms = false;
                let reasons: Vec<String> = report
                    .results
                    .iter()
                    .filter(|r| !r.conformant)
                    .flat_map(|r| r.reasons.iter().cloned())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                inputs.conformance_reason = Some(reasons.join("; "));
            }
        }
        let filter = AnalysisFilter::env(&tenant);
        let today = now_ms.div_euclid(upkeep::DAY_MS);
        let window = i64::from(DEFAULT_DAYS);
        let regress = self
            .store
            .regress_counts(&filter, today - window + 1, today + 1)
            .await?;
        let (passed, failed) = regress
            .iter()
            .fold((0, 0), |(p, f), r| (p + r.passed, f + r.failed));
        inputs.regress_pass_per_mille =
            (passed + failed > 0).then(|| per_mille(passed, passed + failed));
        let views = self.views(&filter).await?;
        let mut critical: Vec<&FamilyView> = views
            .iter()
            .filter(|v| {
                v.priority.score >= CRITICAL_SCORE
                    && v.severity >= Severity::RequireApproval
                    && now_ms.saturating_sub(v.last_seen_unix_ms) <= OPEN_WINDOW_MS
            })
            .collect();
        critical.sort_by(|a, b| a.dedup_key.cmp(&b.dedup_key));
        inputs.open_critical_families = critical.iter().map(|v| v.dedup_key.clone()).collect();
        inputs.rollouts_in_flight = self.store.rollouts_running_on(&tenant).await?;
        let verdict = change_gate(&inputs, policy);
        Ok(GateReport {
            scope: format!("{}/{}/{}", tenant.org, tenant.project, tenant.env),
            pass: verdict.pass,
            verdict,
            inputs,
            policy: *policy,
        })
    }
}

/// One side of a drift comparison.
#[derive(Clone, Debug, Serialize)]
pub struct DriftSide {
    pub run_id: String,
    /// The runpack compared (the evidence).
    pub runpack_sha256: String,
    /// When the run was recorded (the runpack's `created_at`; else when the agent took it in), Unix ms.
    pub recorded_unix_ms: i64,
    /// Whether the record lists the run's calls (an agent older than call listing sends none).
    pub calls_listed: bool,
    /// Calls the agent did not list (not compared).
    pub calls_omitted: u64,
    /// What it saw, as digests.
    pub context: gait_analysis::drift::RunContext,
}

/// Drift attribution: the failing run against its baseline.
#[derive(Clone, Debug, Serialize)]
pub struct DriftReport {
    /// `org/project/env`.
    pub scope: String,
    /// No cause found in the evidence, with every call compared (the difference is real; its cause is not
    /// recorded).
    pub unattributed: bool,
    /// Some calls were not compared (left out of a record, or not listed by an older agent): no cause found is
    /// then not "nothing differs".
    pub incomplete: bool,
    /// The primary cause and every difference, in precedence order.
    pub attribution: gait_analysis::drift::Attribution,
    pub failing: DriftSide,
    pub baseline: DriftSide,
}

/// One tool's verdict-mix shift.
#[derive(Clone, Debug, Serialize)]
pub struct ToolShift {
    pub tool: String,
    /// No cause found in the evidence (the mix moved; the records do not say why).
    pub unattributed: bool,
    #[serde(flatten)]
    pub shift: gait_analysis::shift::Shift,
}

/// Verdict-mix shifts of one environment.
#[derive(Clone, Debug, Serialize)]
pub struct ShiftsReport {
    /// `org/project/env`.
    pub scope: String,
    /// The window of shift days read (UTC days since the epoch, both included).
    pub from_day: i64,
    pub to_day: i64,
    /// What counts as a shift.
    pub rule: gait_analysis::shift::ShiftRule,
    /// Newest first, then by tool.
    pub shifts: Vec<ToolShift>,
}

/// The change gate's answer with what it read.
#[derive(Clone, Debug, Serialize)]
pub struct GateReport {
    /// `org/project/env`.
    pub scope: String,
    /// Every check passed.
    pub pass: bool,
    #[serde(flatten)]
    pub verdict: GateVerdict,
    /// What the checks read.
    pub inputs: GateInputs,
    /// The thresholds applied.
    pub policy: GatePolicy,
}

fn view(
    def: &gait_store::FamilyDef,
    rows: &[&FamilyScope],
    is_production: impl Fn(&str) -> bool,
) -> Result<FamilyView, AnalysisError> {
    // Each environment's smallest evidence digest; the family shows the smallest few of those.
    let reps: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.representative.as_deref())
        .collect();
    let inputs: serde_json::Value = serde_json::from_str(&def.inputs)
        .map_err(|e| AnalysisError::Corrupt(format!("inputs of family {}: {e}", def.family)))?;
    let occurrences = rows.iter().map(|r| r.occurrences).sum();
    let projects: BTreeSet<&str> = rows.iter().map(|r| r.tenant.project.as_str()).collect();
    let environments: Vec<String> = rows
        .iter()
        .map(|r| format!("{}/{}", r.tenant.project, r.tenant.env))
        .collect();
    let production = rows
        .iter()
        .filter(|r| is_production(r.tenant.env.as_str()))
        .count() as u64;
    let risk = risk_of(rows.iter().map(|r| r.risk_rank).max().unwrap_or(0));
    let severity = severity_of(rows.iter().map(|r| r.severity_rank).max().unwrap_or(0));
    let destructive = rows.iter().any(|r| r.destructive);
    let egress = rows.iter().any(|r| r.egress_or_taint);
    // An agent belongs to one environment, so the environments' counts add up to distinct agents.
    let agents = rows.iter().map(|r| r.agents).sum();
    let score = priority(&PriorityInputs {
        risk_class: risk,
        destructive,
        egress_or_taint: egress,
        severity,
        production_environments: production,
        agents,
        projects: projects.len() as u64,
        count: occurrences,
    });
    Ok(FamilyView {
        family: def.family.clone(),
        dedup_key: def.dedup_key.clone(),
        fingerprint_version: def.version,
        kind: def.kind.clone(),
        tool: def.tool.clone(),
        verdict: def.verdict.clone(),
        inputs,
        occurrences,
        first_seen_unix_ms: rows.iter().map(|r| r.first_seen_unix_ms).min().unwrap_or(0),
        last_seen_unix_ms: rows.iter().map(|r| r.last_seen_unix_ms).max().unwrap_or(0),
        agents,
        projects: projects.len() as u64,
        environments,
        production_environments: production,
        risk_class: risk,
        destructive,
        egress_or_taint: egress,
        severity,
        representatives: reps
            .into_iter()
            .take(gait_store::MAX_REPRESENTATIVES)
            .map(str::to_owned)
            .collect(),
        priority: score,
        merged: Vec::new(),
        suggestions: Vec::new(),
    })
}

/// Highest score first; ties by family id, so the order is the same on every replica.
pub fn sort_by_priority(views: &mut [FamilyView]) {
    views.sort_by(|a, b| {
        b.priority
            .score
            .cmp(&a.priority.score)
            .then_with(|| a.family.cmp(&b.family))
    });
}

/// The scope rows of a merged group, one per environment: sums, minima and maxima of the members' rows, the
/// smallest representative, and `agents` (distinct across members) per environment.
fn combine_by_env(
    rows: &[&FamilyScope],
    agents: &BTreeMap<(String, String), u64>,
) -> Vec<FamilyScope> {
    let mut by: BTreeMap<(String, String), FamilyScope> = BTreeMap::new();
    for r in rows {
        let key = (r.tenant.project.to_string(), r.tenant.env.to_string());
        let n = agents.get(&key).copied().unwrap_or(r.agents);
        by.entry(key)
            .and_modify(|c| {
                c.occurrences += r.occurrences;
                c.first_seen_unix_ms = c.first_seen_unix_ms.min(r.first_seen_unix_ms);
                c.last_seen_unix_ms = c.last_seen_unix_ms.max(r.last_seen_unix_ms);
                c.risk_rank = c.risk_rank.max(r.risk_rank);
                c.destructive |= r.destructive;
                c.egress_or_taint |= r.egress_or_taint;
                c.severity_rank = c.severity_rank.max(r.severity_rank);
                c.representative = match (c.representative.take(), r.representative.clone()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            })
            .or_insert_with(|| FamilyScope {
                agents: n,
                ..(*r).clone()
            });
    }
    by.into_values().collect()
}

/// Decisions of one tool in the window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ToolPosture {
    pub tool: String,
    pub decisions: u64,
    /// By enforced verdict.
    pub by_verdict: BTreeMap<String, u64>,
    /// Decisions at high or critical risk, and of those how many were allowed without a gate stopping them.
    pub high_risk: u64,
    pub high_risk_allowed: u64,
    pub destructive: u64,
}

/// Decisions of one UTC day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DayPosture {
    /// Days since the Unix epoch.
    pub day: i64,
    pub decisions: u64,
    pub by_verdict: BTreeMap<String, u64>,
}

/// Posture of a scope over a window.
#[derive(Clone, Debug, Serialize)]
pub struct PostureReport {
    pub scope: String,
    /// First and last UTC day of the window (days since the Unix epoch).
    pub from_day: i64,
    pub to_day: i64,
    pub decisions: u64,
    pub by_verdict: BTreeMap<String, u64>,
    /// Enforcement stage mix (`enforce`, `observe`, `dry_run`, `none`).
    pub by_stage: BTreeMap<String, u64>,
    /// Decisions stopped (block) or held (require approval), per-mille of all.
    pub gated_per_mille: u32,
    /// High-risk decisions that were allowed, by tool: the paths to look at first.
    pub high_risk_allowed: u64,
    pub tools: Vec<ToolPosture>,
    pub daily: Vec<DayPosture>,
    /// Regress pass rates per project with the trend against the window before (worst first).
    pub regress: Vec<ProjectRegress>,
    /// Agents: disconnected, stale, behind their bundle, certificate expiring.
    pub agents: FleetPosture,
    /// Approval-path health of the requests received in the window.
    pub approvals: ApprovalHealth,
    /// Evidence freshness: the newest folded evidence of each environment, quietest first.
    pub freshness: Vec<EnvFreshness>,
    /// Gated tool coverage: the tools agents called in their runpacks against the tools that went through a
    /// gate, in the scope and window.
    pub coverage: ToolCoverage,
}

/// Tools seen in runpacks against tools with gate decisions (tool level: a tool counts as gated when at least
/// one of its calls in the scope and window went through a gate).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ToolCoverage {
    /// Distinct tools called in the runpacks.
    pub tools_seen: u64,
    /// Of those, tools with gate decisions.
    pub tools_gated: u64,
    /// `tools_gated / tools_seen`, per-mille (1000 when no runpack was indexed).
    pub tool_coverage_per_mille: u32,
    /// Runpack calls, and calls of gated tools.
    pub calls_seen: u64,
    pub calls_of_gated_tools: u64,
    /// Runpack calls with a gate decision in their environment on the same tool and arguments digest, as of
    /// the last call merge (`analysis.call_merge_lag_seconds` behind the rest).
    pub calls_gated: u64,
    /// `calls_gated / calls_seen`, per-mille (1000 when no runpack was indexed).
    pub call_coverage_per_mille: u32,
    /// High-risk ungated paths: tools a gate saw at high or critical risk in the scope and window whose runpack
    /// calls include some with no decision on their tool and arguments digest, most such calls first, each with a
    /// runpack that holds one; at most [`MAX_UNGATED`].
    pub high_risk_ungated: Vec<UngatedCalls>,
    /// Tools called in runpacks that never went through a gate here: the ungated paths, most calls first, each
    /// with the runpack that shows it; at most [`MAX_UNGATED`].
    pub ungated: Vec<gait_store::RunpackTool>,
    /// Ungated tools past [`MAX_UNGATED`], not listed.
    pub ungated_omitted: u64,
    /// More tools were called than one read counts ([`gait_store::MAX_RUNPACK_TOOLS`], the most called are
    /// counted): the figures are a lower bound.
    pub truncated: bool,
}

/// A high-risk tool's runpack calls that went through no gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UngatedCalls {
    pub tool: String,
    /// Its calls with no decision on their tool and arguments digest, of `calls`.
    pub ungated_calls: u64,
    pub calls: u64,
    /// A runpack holding one (the smallest SHA-256).
    pub runpack_sha256: Option<String>,
}

/// Most ungated tools a posture lists.
pub const MAX_UNGATED: usize = 100;

/// Coverage of the runpack tools `seen` by the tools with gate decisions in `gated`, and of their calls by
/// decisions on the same arguments digest; `high_risk` are the tools a gate saw at high or critical risk.
pub fn tool_coverage(
    seen: &[gait_store::RunpackTool],
    gated: &BTreeSet<&str>,
    high_risk: &BTreeSet<&str>,
) -> ToolCoverage {
    let mut c = ToolCoverage::default();
    for t in seen {
        c.tools_seen += 1;
        c.calls_seen += t.calls;
        c.calls_gated += t.gated_calls;
        let ungated_calls = t.calls.saturating_sub(t.gated_calls);
        if ungated_calls > 0 && high_risk.contains(t.tool.as_str()) {
            c.high_risk_ungated.push(UngatedCalls {
                tool: t.tool.clone(),
                ungated_calls,
                calls: t.calls,
                runpack_sha256: t.ungated_runpack_sha256.clone(),
            });
        }
        if gated.contains(t.tool.as_str()) {
            c.tools_gated += 1;
            c.calls_of_gated_tools += t.calls;
        } else {
            c.ungated.push(t.clone());
        }
    }
    c.tool_coverage_per_mille = per_mille(c.tools_gated, c.tools_seen);
    c.call_coverage_per_mille = per_mille(c.calls_gated, c.calls_seen);
    c.high_risk_ungated.sort_by(|a, b| {
        b.ungated_calls
            .cmp(&a.ungated_calls)
            .then_with(|| a.tool.cmp(&b.tool))
    });
    c.high_risk_ungated.truncate(MAX_UNGATED);
    c.ungated
        .sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.tool.cmp(&b.tool)));
    c.ungated_omitted = c.ungated.len().saturating_sub(MAX_UNGATED) as u64;
    c.ungated.truncate(MAX_UNGATED);
    c
}

/// How fresh one environment's evidence is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnvFreshness {
    pub project: String,
    pub env: String,
    /// The newest folded decision or regress failure (agent clock).
    pub last_evidence_unix_ms: i64,
    /// Its age at the time of the read (0 when it is dated in the future).
    pub age_ms: i64,
    /// Older than [`QUIET_AFTER_MS`]: the environment went quiet, or its agents stopped reporting.
    pub quiet: bool,
}

/// Approval requests as approval-path health counts them: a pending request past its expiry is expired, and
/// the time to grant is from its arrival to its approval (both on the aggregator's clock).
pub fn approval_outcomes(
    timings: &[gait_store::ApprovalTiming],
    now_ms: i64,
) -> Vec<ApprovalOutcome> {
    timings
        .iter()
        .map(|t| match t.state {
            gait_store::ApprovalState::Pending if t.expires_unix_ms <= now_ms => {
                ApprovalOutcome::Expired
            }
            gait_store::ApprovalState::Pending => ApprovalOutcome::Pending,
            gait_store::ApprovalState::Approved => ApprovalOutcome::Granted {
                after_ms: u64::try_from(t.updated_unix_ms.saturating_sub(t.received_unix_ms))
                    .unwrap_or(0),
            },
            gait_store::ApprovalState::Denied => ApprovalOutcome::Denied,
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn posture_report(
    scope: String,
    from_day: i64,
    to_day: i64,
    counts: &[gait_store::PostureCount],
    regress: &[gait_store::RegressCount],
    agents: &[AgentState],
    now_ms: i64,
    days: u32,
) -> PostureReport {
    let mut by_verdict: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_stage: BTreeMap<String, u64> = BTreeMap::new();
    let mut tools: BTreeMap<&str, ToolPosture> = BTreeMap::new();
    let mut daily: BTreeMap<i64, DayPosture> = BTreeMap::new();
    let mut decisions = 0u64;
    for c in counts {
        decisions += c.decisions;
        *by_verdict.entry(c.verdict.clone()).or_default() += c.decisions;
        *by_stage.entry(c.stage.clone()).or_default() += c.decisions;
        let t = tools.entry(&c.tool).or_insert_with(|| ToolPosture {
            tool: c.tool.clone(),
            ..ToolPosture::default()
        });
        t.decisions += c.decisions;
        *t.by_verdict.entry(c.verdict.clone()).or_default() += c.decisions;
        t.high_risk += c.high_risk;
        if c.verdict == "allow" {
            t.high_risk_allowed += c.high_risk;
        }
        t.destructive += c.destructive;
        let d = daily.entry(c.day).or_insert_with(|| DayPosture {
            day: c.day,
            ..DayPosture::default()
        });
        d.decisions += c.decisions;
        *d.by_verdict.entry(c.verdict.clone()).or_default() += c.decisions;
    }
    let gated = by_verdict.get("block").copied().unwrap_or(0)
        + by_verdict.get("require_approval").copied().unwrap_or(0);
    let outcomes: Vec<RegressOutcome> = regress
        .iter()
        .map(|r| RegressOutcome {
            project: r.project.to_string(),
            at_unix_ms: r.day * upkeep::DAY_MS,
            passed: r.passed,
            failed: r.failed,
        })
        .collect();
    let tools: Vec<ToolPosture> = tools.into_values().collect();
    PostureReport {
        scope,
        from_day,
        to_day,
        decisions,
        gated_per_mille: per_mille(gated, decisions),
        high_risk_allowed: tools.iter().map(|t| t.high_risk_allowed).sum(),
        by_verdict,
        by_stage,
        tools,
        daily: daily.into_values().collect(),
        regress: regress_posture(
            &outcomes,
            (to_day + 1) * upkeep::DAY_MS,
            i64::from(days) * upkeep::DAY_MS,
        ),
        agents: fleet(
            agents,
            now_ms,
            FleetThresholds {
                stale_after_ms: STALE_AFTER_MS,
                cert_warning_ms: CERT_WARNING_MS,
            },
        ),
        approvals: ApprovalHealth::default(),
        freshness: Vec::new(),
        coverage: ToolCoverage::default(),
    }
}

/// The families as CSV: one row per family, with its representatives (evidence digests) `;`-joined.
pub fn csv_families(report: &FamiliesReport) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "scope",
        "family",
        "dedup_key",
        "kind",
        "tool",
        "verdict",
        "score",
        "privilege",
        "blast_radius",
        "recurrence",
        "occurrences",
        "agents",
        "projects",
        "environments",
        "first_seen_unix_ms",
        "last_seen_unix_ms",
        "representatives",
        "merged",
    ])?;
    for f in &report.families {
        w.write_record([
            report.scope.clone(),
            f.family.clone(),
            f.dedup_key.clone(),
            f.kind.clone(),
            f.tool.clone(),
            f.verdict.clone(),
            f.priority.score.to_string(),
            f.priority.privilege.to_string(),
            f.priority.blast_radius.to_string(),
            f.priority.recurrence.to_string(),
            f.occurrences.to_string(),
            f.agents.to_string(),
            f.projects.to_string(),
            f.environments.join(";"),
            f.first_seen_unix_ms.to_string(),
            f.last_seen_unix_ms.to_string(),
            f.representatives.join(";"),
            f.merged.join(";"),
        ])?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

/// The posture as CSV: one row per day and verdict, then one per tool and verdict.
pub fn csv_posture(report: &PostureReport) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["scope", "row", "day", "tool", "verdict", "decisions"])?;
    for d in &report.daily {
        for (verdict, n) in &d.by_verdict {
            w.write_record([
                report.scope.as_str(),
                "day",
                &d.day.to_string(),
                "",
                verdict,
                &n.to_string(),
            ])?;
        }
    }
    for t in &report.tools {
        for (verdict, n) in &t.by_verdict {
            w.write_record([
                report.scope.as_str(),
                "tool",
                "",
                &t.tool,
                verdict,
                &n.to_string(),
            ])?;
        }
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge(family: &str, into: &str) -> gait_store::FamilyMerge {
        gait_store::FamilyMerge {
            org: "acme".parse().expect("org"),
            family: family.into(),
            into_family: into.into(),
            reason: "r".into(),
            merged_by: "t".into(),
            merged_unix_ms: 0,
        }
    }

    #[test]
    fn a_long_chain_reads_as_its_last_family() {
        let names: Vec<String> = (0..100).map(|i| format!("f{i:03}")).collect();
        let merges: Vec<_> = names.windows(2).map(|w| merge(&w[0], &w[1])).collect();
        let roots = merge_roots(&merges);
        assert_eq!(roots.len(), 99);
        assert!(roots.values().all(|r| r == "f099"), "{roots:?}");
    }

    #[test]
    fn a_cycle_reads_as_its_smallest_member_and_a_lead_into_it_follows() {
        // b -> c -> d -> b is a cycle; a leads into it and sorts below it.
        let merges = [
            merge("a", "c"),
            merge("b", "c"),
            merge("c", "d"),
            merge("d", "b"),
            merge("x", "y"),
        ];
        let roots = merge_roots(&merges);
        for f in ["a", "c", "d"] {
            assert_eq!(
                roots.get(f).map(String::as_str),
                Some("b"),
                "{f}: {roots:?}"
            );
        }
        assert_eq!(roots.get("b"), None, "the cycle's root reads as itself");
        assert_eq!(roots.get("x").map(String::as_str), Some("y"));
        assert!(
            roots.values().all(|r| !roots.contains_key(r)),
            "a root is never merged"
        );
    }
}
