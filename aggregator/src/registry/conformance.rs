//! Conformance to an org's required baseline (issue 13 item 6).
//!
//! An org may declare one baseline: a minimum policy version (a registry digest) and/or rule names every policy
//! in force must carry. A policy conforms to the minimum when its Gait digest IS that version or DESCENDS from
//! it through the registry's `parent` links; the walk up the lineage is bounded ([`MAX_WALK`] steps) and stops
//! at a cycle or a parent the registry does not have (then: not a descendant).
//!
//! What is checked is the policy of record, read from bundle bytes, never from the pin table alone: for each
//! environment its newest bundle (a legacy `publish`, a pin, a rollback or a rollout step may have put it
//! there); for each agent the stored bundle whose digest it reported active (`agents.active_bundle_digest`;
//! an agent that never reported one does not conform: "no bundle reported"). Staged candidates are ignored.
//! Every policy file of a bundle must conform to the minimum, and the required rules must each be in at least
//! one of them. Bundles are parsed once per answer (cached by bundle digest) and at most [`MAX_AGENTS`]
//! agents are evaluated per answer (`truncated` says when more matched).
//!
//! Every answer names the reasons and a remedy: the `policy pin` command of the newest registry version that
//! conforms, else what to push. A project conforms when all its environments and agents do. Setting and
//! clearing the baseline are audited (`policy.baseline_set`, `policy.baseline_clear`) in their transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use gait_store::{
    AgentActiveBundle, ConformanceBaseline, ConformanceFilter, LineageEntry, Org, Tenant,
};
use serde::Serialize;

use super::versions::audit;
use super::{Registry, RegistryError, validate};
use crate::clock::unix_ms;

/// Most agents one conformance answer evaluates.
pub const MAX_AGENTS: u32 = 10_000;
/// Most parent links followed from one version looking for the minimum.
pub const MAX_WALK: usize = 10_000;
/// Most registry versions parsed looking for one that carries the required rules (the remedy).
const MAX_REMEDY_PARSES: usize = 256;

/// A baseline to set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaselineRequest {
    /// The minimum version's digest.
    pub min_digest: Option<String>,
    /// Rule names every policy in force must carry.
    pub required_rules: Vec<String>,
}

/// One policy file in force (a bundle's policy, not its staged candidate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInForce {
    /// Its file name in the bundle.
    pub file: String,
    /// Its Gait policy digest.
    pub digest: String,
    /// Its rule names.
    pub rules: BTreeSet<String>,
}

/// The org's version lineage: each version's parent, newest first for the remedy.
#[derive(Clone, Debug, Default)]
pub struct Lineage {
    parents: HashMap<String, Option<String>>,
    newest_first: Vec<String>,
}

impl Lineage {
    /// The lineage of `entries` (any order).
    pub fn new(entries: impl IntoIterator<Item = LineageEntry>) -> Self {
        let mut all: Vec<LineageEntry> = entries.into_iter().collect();
        all.sort_by(|a, b| (b.created_unix_ms, &b.digest).cmp(&(a.created_unix_ms, &a.digest)));
        Self {
            newest_first: all.iter().map(|e| e.digest.clone()).collect(),
            parents: all.into_iter().map(|e| (e.digest, e.parent)).collect(),
        }
    }

    /// Whether the registry has `digest`.
    pub fn contains(&self, digest: &str) -> bool {
        self.parents.contains_key(digest)
    }

    /// Whether `digest` is `min` or descends from it through parent links. Bounded by [`MAX_WALK`]; a cycle or
    /// a missing parent ends the walk (not a descendant).
    pub fn descends_from(&self, digest: &str, min: &str) -> bool {
        let mut seen = HashSet::new();
        let mut at = digest;
        for _ in 0..=MAX_WALK {
            if at == min {
                return true;
            }
            if !seen.insert(at) {
                return false;
            }
            match self.parents.get(at) {
                Some(Some(parent)) => at = parent,
                _ => return false,
            }
        }
        false
    }

    /// Versions newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = &str> {
        self.newest_first.iter().map(String::as_str)
    }
}

/// Why `policies` do not conform to `baseline` (empty: they conform).
pub fn evaluate(
    baseline: &ConformanceBaseline,
    lineage: &Lineage,
    policies: &[PolicyInForce],
) -> Vec<String> {
    let mut reasons = Vec::new();
    if policies.is_empty() {
        reasons.push("the bundle enforces no policy".to_owned());
        return reasons;
    }
    if let Some(min) = &baseline.min_digest {
        for p in policies {
            if !lineage.descends_from(&p.digest, min) {
                let unknown = if lineage.contains(&p.digest) {
                    ""
                } else {
                    " (it is not in the registry)"
                };
                reasons.push(format!(
                    "policy gait digest {} ({}) is not version {min} or a descendant{unknown}",
                    p.digest, p.file
                ));
            }
        }
    }
    for rule in &baseline.required_rules {
        if !policies.iter().any(|p| p.rules.contains(rule)) {
            reasons.push(format!("rule `{rule}` missing"));
        }
    }
    reasons
}

/// Where a conformance answer applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scope {
    /// The project.
    pub project: String,
    /// The environment.
    pub env: String,
    /// The agent, for an agent's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// The conformance of one environment or agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScopeConformance {
    /// Which environment or agent.
    pub scope: Scope,
    /// Whether it conforms.
    pub conformant: bool,
    /// What is missing (empty when it conforms).
    pub reasons: Vec<String>,
    /// What to do to conform (`None` when it conforms).
    pub remedy: Option<String>,
    /// The bundle in force: the environment's newest, or the one the agent reported active.
    pub bundle_epoch: Option<u64>,
    /// That bundle's digest.
    pub bundle_digest: Option<String>,
    /// Gait digests of the policies in force.
    pub policies: Vec<String>,
}

/// One project's roll-up: it conforms when all its environments and agents do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProjectConformance {
    /// The project.
    pub project: String,
    /// Whether all its answered environments and agents conform.
    pub conformant: bool,
    /// Environments answered.
    pub envs: u64,
    /// Of them, not conforming.
    pub nonconformant_envs: u64,
    /// Agents answered.
    pub agents: u64,
    /// Of them, not conforming.
    pub nonconformant_agents: u64,
}

/// A conformance answer.
#[derive(Clone, Debug, Serialize)]
pub struct ConformanceReport {
    /// The org.
    pub org: Org,
    /// The baseline checked.
    pub baseline: ConformanceBaseline,
    /// Whether everything answered conforms.
    pub conformant: bool,
    /// Per project roll-ups, sorted.
    pub projects: Vec<ProjectConformance>,
    /// Environments then their agents, sorted by project, env, agent.
    pub results: Vec<ScopeConformance>,
    /// True when more than [`MAX_AGENTS`] agents matched and only the first were answered.
    pub truncated: bool,
}

/// The roll-up of `results` per project.
pub fn roll_up(results: &[ScopeConformance]) -> Vec<ProjectConformance> {
    let mut by: BTreeMap<&str, ProjectConformance> = BTreeMap::new();
    for r in results {
        let p = by
            .entry(r.scope.project.as_str())
            .or_insert_with(|| ProjectConformance {
                project: r.scope.project.clone(),
                conformant: true,
                envs: 0,
                nonconformant_envs: 0,
                agents: 0,
                nonconformant_agents: 0,
            });
        let bad = u64::from(!r.conformant);
        if r.scope.agent.is_some() {
            p.agents += 1;
            p.nonconformant_agents += bad;
        } else {
            p.envs += 1;
            p.nonconformant_envs += bad;
        }
        p.conformant &= r.conformant;
    }
    by.into_values().collect()
}

/// The `policy pin` command of `digest` for `tenant`.
pub fn pin_command(tenant: &Tenant, digest: &str) -> String {
    format!(
        "gait-aggregator policy pin {digest} --org {} --project {} --env {}",
        tenant.org, tenant.project, tenant.env
    )
}

/// What to do when no registry version conforms.
fn push_advice(baseline: &ConformanceBaseline) -> String {
    let rules = baseline
        .required_rules
        .iter()
        .map(|r| format!("`{r}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match (&baseline.min_digest, rules.is_empty()) {
        (Some(min), true) => format!("push a version that descends from {min}, then pin it"),
        (Some(min), false) => {
            format!(
                "push a version that descends from {min} and carries rules {rules}, then pin it"
            )
        }
        (None, _) => format!("push a version that carries rules {rules}, then pin it"),
    }
}

/// Parses the policies in force of a bundle (candidates ignored).
fn policies_in_force(bytes: &[u8]) -> Result<Vec<PolicyInForce>, String> {
    let (manifest, files) = gait_bundle::open_unverified(bytes)
        .map_err(|e| format!("the bundle does not open: {e}"))?;
    manifest
        .policies
        .iter()
        .map(|entry| {
            let text = files
                .get(&entry.name)
                .ok_or_else(|| format!("the bundle lacks its policy file {}", entry.name))?;
            let policy = validate::parse(text)
                .map_err(|e| format!("policy {} does not parse: {e}", entry.name))?;
            Ok(PolicyInForce {
                file: entry.name.clone(),
                digest: policy.digest(),
                rules: policy.rules.iter().map(|r| r.name.clone()).collect(),
            })
        })
        .collect()
}

type Parsed = Result<Arc<Vec<PolicyInForce>>, String>;

/// Bundles parsed during one answer, by bundle digest.
#[derive(Default)]
struct BundleCache {
    parsed: HashMap<String, Parsed>,
}

fn check_rule_names(rules: &[String]) -> Result<Vec<String>, RegistryError> {
    let set: BTreeSet<String> = rules.iter().map(|r| r.trim().to_owned()).collect();
    if set.len() > gait_store::MAX_REQUIRED_RULES {
        return Err(RegistryError::Field {
            field: "required_rules",
            message: format!("at most {} rule names", gait_store::MAX_REQUIRED_RULES),
        });
    }
    for r in &set {
        if r.is_empty()
            || r.len() > gait_store::MAX_RULE_NAME_BYTES
            || r.chars().any(char::is_control)
        {
            return Err(RegistryError::Field {
                field: "required_rules",
                message: format!(
                    "`{r}` is not a rule name: 1 to {} bytes without control characters",
                    gait_store::MAX_RULE_NAME_BYTES
                ),
            });
        }
    }
    Ok(set.into_iter().collect())
}

fn baseline_details(b: Option<&ConformanceBaseline>) -> serde_json::Value {
    match b {
        Some(b) => {
            serde_json::json!({ "min_digest": b.min_digest, "required_rules": b.required_rules })
        }
        None => serde_json::Value::Null,
    }
}

fn baseline_target(org: &Org) -> gait_audit::Target {
    gait_audit::Target {
        org: Some(org.as_str().to_owned()),
        project: None,
        env: None,
        kind: "conformance_baseline".into(),
        id: org.as_str().to_owned(),
    }
}

impl Registry {
    /// The org's baseline, or [`RegistryError::NotFound`] saying how to set one.
    pub async fn baseline(&self, org: &Org) -> Result<ConformanceBaseline, RegistryError> {
        self.store.conformance_baseline(org).await?.ok_or_else(|| {
            RegistryError::NotFound(format!(
                "org {org} has no conformance baseline; set one with `gait-aggregator policy baseline set \
                 --org {org} --min DIGEST` and/or `--require-rule NAME`"
            ))
        })
    }

    /// Set (replace) the org's baseline. An unknown `min_digest` is refused naming it; nothing is stored.
    pub async fn set_baseline(
        &self,
        org: &Org,
        req: BaselineRequest,
        actor: &str,
    ) -> Result<ConformanceBaseline, RegistryError> {
        let required_rules = check_rule_names(&req.required_rules)?;
        if let Some(d) = &req.min_digest
            && !(d.len() == 64 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        {
            return Err(RegistryError::Field {
                field: "min_digest",
                message: format!("`{d}` is not a policy digest (64 lowercase hex characters)"),
            });
        }
        if req.min_digest.is_none() && required_rules.is_empty() {
            return Err(RegistryError::Field {
                field: "min_digest",
                message: "give min_digest and/or required_rules; to remove the baseline, clear it \
                          (`gait-aggregator policy baseline clear`)"
                    .into(),
            });
        }
        let baseline = ConformanceBaseline {
            org: org.clone(),
            min_digest: req.min_digest,
            required_rules,
            set_by: actor.to_owned(),
            set_unix_ms: unix_ms(),
        };
        self.store
            .transaction(async |tx| {
                if let Some(d) = &baseline.min_digest
                    && tx.policy_version(org, d).await?.is_none()
                {
                    return Err(RegistryError::Field {
                        field: "min_digest",
                        message: format!(
                            "no version {d} in org {org}'s registry; push it first (see `gait-aggregator \
                             policy list --org {org}`)"
                        ),
                    });
                }
                let before = tx.conformance_baseline(org).await?;
                tx.put_conformance_baseline(&baseline).await?;
                let mut details = serde_json::Map::new();
                details.insert("min_digest".into(), baseline.min_digest.clone().into());
                details.insert(
                    "required_rules".into(),
                    baseline.required_rules.clone().into(),
                );
                details.insert("previous".into(), baseline_details(before.as_ref()));
                audit(
                    tx,
                    actor,
                    "policy.baseline_set",
                    baseline_target(org),
                    before
                        .as_ref()
                        .and_then(|b| b.min_digest.as_ref())
                        .map(|d| format!("sha256:{d}")),
                    baseline.min_digest.as_ref().map(|d| format!("sha256:{d}")),
                    details,
                )
                .await
            })
            .await?;
        tracing::info!(%org, min_digest = ?baseline.min_digest, rules = baseline.required_rules.len(),
            %actor, "conformance baseline set");
        Ok(baseline)
    }

    /// Remove the org's baseline; [`RegistryError::NotFound`] when it has none.
    pub async fn clear_baseline(
        &self,
        org: &Org,
        actor: &str,
    ) -> Result<ConformanceBaseline, RegistryError> {
        let cleared = self
            .store
            .transaction(async |tx| {
                let Some(before) = tx.conformance_baseline(org).await? else {
                    return Err(RegistryError::NotFound(format!(
                        "org {org} has no conformance baseline: nothing to clear"
                    )));
                };
                tx.delete_conformance_baseline(org).await?;
                let mut details = serde_json::Map::new();
                details.insert("previous".into(), baseline_details(Some(&before)));
                audit(
                    tx,
                    actor,
                    "policy.baseline_clear",
                    baseline_target(org),
                    before.min_digest.as_ref().map(|d| format!("sha256:{d}")),
                    None,
                    details,
                )
                .await?;
                Ok::<_, RegistryError>(before)
            })
            .await?;
        tracing::info!(%org, %actor, "conformance baseline cleared");
        Ok(cleared)
    }

    /// The conformance of the org's environments and agents selected by `filter` (see the module docs).
    pub async fn conformance(
        &self,
        org: &Org,
        filter: &ConformanceFilter,
    ) -> Result<ConformanceReport, RegistryError> {
        let baseline = self.baseline(org).await?;
        let lineage = Lineage::new(self.store.policy_lineage(org).await?);
        let target = self.newest_conforming(org, &baseline, &lineage).await?;
        let mut cache = BundleCache::default();
        let heads = self.store.bundle_heads(org, filter).await?;
        let mut agents = self
            .store
            .agents_active_bundles(org, filter, MAX_AGENTS + 1)
            .await?;
        let truncated = agents.len() > MAX_AGENTS as usize;
        agents.truncate(MAX_AGENTS as usize);

        let remedy_for = |tenant: &Tenant| match &target {
            Some(d) => pin_command(tenant, d),
            None => push_advice(&baseline),
        };
        // Each environment: its newest bundle; environments whose agents exist but that have no bundle too.
        let mut envs: BTreeMap<Tenant, ScopeConformance> = BTreeMap::new();
        for head in &heads {
            let parsed = self.parsed(&mut cache, &head.tenant, &head.digest).await?;
            let (reasons, policies) = match &parsed {
                Ok(p) => (
                    evaluate(&baseline, &lineage, p),
                    p.iter().map(|p| p.digest.clone()).collect(),
                ),
                Err(e) => (vec![format!("bundle epoch {}: {e}", head.epoch)], vec![]),
            };
            envs.insert(
                head.tenant.clone(),
                scope_answer(
                    &head.tenant,
                    None,
                    reasons,
                    remedy_for(&head.tenant),
                    Some(head.epoch),
                    Some(head.digest.clone()),
                    policies,
                ),
            );
        }
        for a in &agents {
            envs.entry(a.tenant.clone()).or_insert_with(|| {
                scope_answer(
                    &a.tenant,
                    None,
                    vec!["no bundle published to this environment".to_owned()],
                    remedy_for(&a.tenant),
                    None,
                    None,
                    vec![],
                )
            });
        }
        let heads_by: HashMap<&Tenant, u64> = heads.iter().map(|h| (&h.tenant, h.epoch)).collect();
        let mut per_env: BTreeMap<Tenant, Vec<ScopeConformance>> = BTreeMap::new();
        for a in &agents {
            let env_ok = envs.get(&a.tenant).is_some_and(|e| e.conformant);
            let answer = self
                .agent_answer(
                    &mut cache,
                    &baseline,
                    &lineage,
                    a,
                    env_ok,
                    heads_by.get(&a.tenant).copied(),
                    &remedy_for,
                )
                .await?;
            per_env.entry(a.tenant.clone()).or_default().push(answer);
        }
        let mut results = Vec::new();
        for (tenant, env) in envs {
            if filter.agent.is_none() {
                results.push(env);
            }
            results.extend(per_env.remove(&tenant).unwrap_or_default());
        }
        // A selection that matches nothing is an error, not a vacuous pass: a mistyped `--env` must not
        // turn a pipeline's gate green.
        let narrowed = filter.project.is_some() || filter.env.is_some() || filter.agent.is_some();
        if narrowed && results.is_empty() {
            return Err(RegistryError::NotFound(format!(
                "no environment with a bundle and no agent of org {org} matches{}{}{}; see `gait-aggregator \
                 agents --org {org}`",
                filter
                    .project
                    .as_ref()
                    .map(|p| format!(" project {p}"))
                    .unwrap_or_default(),
                filter
                    .env
                    .as_ref()
                    .map(|e| format!(" env {e}"))
                    .unwrap_or_default(),
                filter
                    .agent
                    .as_ref()
                    .map(|a| format!(" agent {a}"))
                    .unwrap_or_default(),
            )));
        }
        let conformant = results.iter().all(|r| r.conformant);
        Ok(ConformanceReport {
            org: org.clone(),
            projects: roll_up(&results),
            baseline,
            conformant,
            results,
            truncated,
        })
    }

    /// One agent's answer: the policies of the bundle it reported active.
    #[allow(clippy::too_many_arguments)]
    async fn agent_answer(
        &self,
        cache: &mut BundleCache,
        baseline: &ConformanceBaseline,
        lineage: &Lineage,
        a: &AgentActiveBundle,
        env_conforms: bool,
        env_epoch: Option<u64>,
        remedy_for: &(dyn Fn(&Tenant) -> String + Sync),
    ) -> Result<ScopeConformance, RegistryError> {
        let agent = Some(a.agent_id.to_string());
        let wait = |epoch: Option<u64>| {
            format!(
                "the environment conforms: have the agent activate its current bundle{} (is it connected? \
                 `gait-aggregator agents --org {} --project {} --env {}`)",
                epoch.map(|e| format!(" (epoch {e})")).unwrap_or_default(),
                a.tenant.org,
                a.tenant.project,
                a.tenant.env
            )
        };
        // When the environment conforms, the agent only has to activate its bundle; else the environment's fix.
        let remedy = if env_conforms {
            wait(env_epoch)
        } else {
            remedy_for(&a.tenant)
        };
        let Some(digest) = &a.active_digest else {
            return Ok(scope_answer(
                &a.tenant,
                agent,
                vec!["no bundle reported".to_owned()],
                remedy,
                None,
                None,
                vec![],
            ));
        };
        let parsed = self.parsed(cache, &a.tenant, digest).await?;
        let (reasons, policies) = match &parsed {
            Ok(p) => (
                evaluate(baseline, lineage, p),
                p.iter().map(|p| p.digest.clone()).collect(),
            ),
            Err(e) => (vec![format!("active bundle {digest}: {e}")], vec![]),
        };
        Ok(scope_answer(
            &a.tenant,
            agent,
            reasons,
            remedy,
            a.active_epoch,
            Some(digest.clone()),
            policies,
        ))
    }

    /// The policies in force of `tenant`'s bundle `digest`, parsed once per answer.
    async fn parsed(
        &self,
        cache: &mut BundleCache,
        tenant: &Tenant,
        digest: &str,
    ) -> Result<Parsed, RegistryError> {
        if let Some(p) = cache.parsed.get(digest) {
            return Ok(p.clone());
        }
        let parsed = match self.store.bundle_by_digest(tenant, digest).await? {
            Some(bytes) => policies_in_force(&bytes).map(Arc::new),
            None => Err(
                "the aggregator has no bundle with this digest in the agent's environment".into(),
            ),
        };
        cache.parsed.insert(digest.to_owned(), parsed.clone());
        Ok(parsed)
    }

    /// The newest registry version that conforms to `baseline` on its own, if any (the remedy's pin target).
    async fn newest_conforming(
        &self,
        org: &Org,
        baseline: &ConformanceBaseline,
        lineage: &Lineage,
    ) -> Result<Option<String>, RegistryError> {
        let mut parses = 0;
        for digest in lineage.newest_first() {
            if let Some(min) = &baseline.min_digest
                && !lineage.descends_from(digest, min)
            {
                continue;
            }
            if baseline.required_rules.is_empty() {
                return Ok(Some(digest.to_owned()));
            }
            parses += 1;
            if parses > MAX_REMEDY_PARSES {
                break;
            }
            let Some(stored) = self.store.policy_version(org, digest).await? else {
                continue;
            };
            let Ok(policy) = validate::parse(&stored.yaml) else {
                continue;
            };
            let in_force = PolicyInForce {
                file: stored.version.name.clone(),
                digest: digest.to_owned(),
                rules: policy.rules.iter().map(|r| r.name.clone()).collect(),
            };
            if evaluate(baseline, lineage, std::slice::from_ref(&in_force)).is_empty() {
                return Ok(Some(digest.to_owned()));
            }
        }
        Ok(None)
    }
}

fn scope_answer(
    tenant: &Tenant,
    agent: Option<String>,
    reasons: Vec<String>,
    remedy: String,
    bundle_epoch: Option<u64>,
    bundle_digest: Option<String>,
    policies: Vec<String>,
) -> ScopeConformance {
    let conformant = reasons.is_empty();
    ScopeConformance {
        scope: Scope {
            project: tenant.project.to_string(),
            env: tenant.env.to_string(),
            agent,
        },
        conformant,
        reasons,
        remedy: (!conformant).then_some(remedy),
        bundle_epoch,
        bundle_digest,
        policies,
    }
}

#[cfg(test)]
mod tests;
