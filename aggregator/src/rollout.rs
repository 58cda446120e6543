//! Staged rollouts (issue 13 items 3 and 5): a candidate registry version goes through a plan's steps
//! (observe → dry_run → enforce, each for a cohort of agents and a bake time) over target environments, gated
//! by what the cohort reports, and rolls back by itself when a gate fails.
//!
//! - **Cohorts** are audiences of bundles: a step publishes a new epoch offered only to its cohort (agents
//!   admitted by [`crate::registry::Audience`]: the plan's labels and a stable hash of rollout and agent ids);
//!   everyone else stays on the bundle they have. The last step pins the candidate for every agent.
//! - **States**: `progressing` → (`paused` ↔ `progressing`) → `completed` | `rolled_back` | `aborted`;
//!   `retry` starts a rolled-back or aborted rollout again at step 0 (same cohorts, the next attempt; the new
//!   epochs supersede whatever the last attempt left, so there is nothing to clean up).
//! - **Every transition** (the controller's or an operator's) is a compare-and-set on the rollout's version,
//!   committed with its timeline event and its audit entry.
//! - **The controller** ([`controller`]) drives progressing rollouts: it runs once per deployment (a leader
//!   lease) and resumes from the stored state after a restart; bake times run from the stored step start.

pub mod controller;
pub mod gates;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;

use gait_bundle::Stage;
use gait_store::{
    AgentId, DecisionStatsQuery, EnvAgent, NewRollout, Org, PinKind, RolloutEvent, RolloutRow,
    RolloutTargetRow, RolloutTransition, Store, StoreError, Tenant,
};
use serde::Serialize;

use crate::clock::unix_ms;
use crate::registry::pin::StagedPublish;
use crate::registry::{Audience, Registry, RegistryError};
use gates::{GateResult, StepFacts, Verdict};
use plan::Plan;

/// Why a rollout operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit: {0}")]
    Audit(String),
}

/// A rollout's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Progressing,
    Paused,
    Completed,
    RolledBack,
    Aborted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Progressing => "progressing",
            State::Paused => "paused",
            State::Completed => "completed",
            State::RolledBack => "rolled_back",
            State::Aborted => "aborted",
        }
    }

    fn parse(text: &str) -> Result<Self, RolloutError> {
        Ok(match text {
            "progressing" => State::Progressing,
            "paused" => State::Paused,
            "completed" => State::Completed,
            "rolled_back" => State::RolledBack,
            "aborted" => State::Aborted,
            other => {
                return Err(RolloutError::Store(StoreError::Corrupt {
                    table: "rollouts",
                    reason: format!("state {other:?}"),
                }));
            }
        })
    }
}

/// What an operator does to a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop at the current step (nothing is published or rolled back).
    Pause,
    /// Continue a paused rollout at its step.
    Resume,
    /// Go to the next step now, past the bake time, the gates and the blast-radius cap.
    Promote,
    /// Stop and roll every target back to its baseline.
    Abort,
    /// Start a rolled-back or aborted rollout again at step 0.
    Retry,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Abort => "abort",
            Action::Retry => "retry",
        }
    }
}

/// A rollout as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Rollout {
    pub id: String,
    pub org: String,
    pub candidate_digest: String,
    pub plan: Plan,
    pub state: State,
    /// The current step (index into `plan.steps`).
    pub step: u32,
    pub attempt: u32,
    pub reason: String,
    /// Whether the current step's bundles are published.
    pub step_published: bool,
    pub step_started_unix_ms: i64,
    pub created_by: String,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    pub targets: Vec<TargetView>,
}

/// A target environment of a rollout.
#[derive(Clone, Debug, Serialize)]
pub struct TargetView {
    pub project: String,
    pub env: String,
    /// The version the environment was pinned to when the rollout began (what a rollback restores).
    pub baseline_digest: String,
    /// The last bundle the rollout published there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_step: Option<u32>,
}

/// The rollout health view (issue 13 item 5).
#[derive(Clone, Debug, Serialize)]
pub struct Health {
    pub rollout: Rollout,
    /// The current step's stage, share and bake time.
    pub stage: Stage,
    pub percent: f64,
    pub bake_seconds: u64,
    /// Seconds of bake left (0 once baked; absent before the step is published).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bake_remaining_seconds: Option<u64>,
    pub gates: Vec<GateResult>,
    pub verdict: Verdict,
    /// Summed over the targets.
    pub facts: StepFacts,
    pub per_target: Vec<TargetHealth>,
    pub timeline: Vec<RolloutEvent>,
}

/// One target's share of the current step.
#[derive(Clone, Debug, Serialize)]
pub struct TargetHealth {
    pub project: String,
    pub env: String,
    pub facts: StepFacts,
    /// Cohort agents not yet running the step's bundle (at most 20).
    pub not_adopted: Vec<String>,
}

fn corrupt(reason: String) -> RolloutError {
    RolloutError::Store(StoreError::Corrupt {
        table: "rollouts",
        reason,
    })
}

fn plan_of(row: &RolloutRow) -> Result<Plan, RolloutError> {
    serde_json::from_str(&row.plan_json)
        .map_err(|e| corrupt(format!("plan_json of {}: {e}", row.id)))
}

fn tenant_of(org: &Org, t: &RolloutTargetRow) -> Tenant {
    Tenant::new(org.clone(), t.project.clone(), t.env.clone())
}

fn new_id() -> Result<String, RolloutError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| RolloutError::Audit(format!("random id: {e}")))?;
    Ok(format!("r-{}", hex::encode(bytes)))
}

/// The rollout service: operator actions, health, and the controller's step (see the module docs).
pub struct Rollouts {
    store: Store,
    registry: Arc<Registry>,
    /// Wakes the controller at once (after a create, resume, promote or retry on this replica).
    nudge: tokio::sync::Notify,
}

impl Rollouts {
    pub fn new(store: Store, registry: Arc<Registry>) -> Self {
        Self {
            store,
            registry,
            nudge: tokio::sync::Notify::new(),
        }
    }

    /// Wait until an operator action asks the controller to look again.
    pub async fn nudged(&self) {
        self.nudge.notified().await;
    }

    /// Starts a rollout of the org's registry version `candidate` with `plan`. Every target must be pinned
    /// (its pin is the baseline a rollback restores), run the baseline, and have no other rollout running.
    pub async fn create(
        &self,
        org: &Org,
        id: Option<&str>,
        candidate: &str,
        plan: Plan,
        actor: &str,
    ) -> Result<Rollout, RolloutError> {
        plan.validate()?;
        if self.store.policy_version(org, candidate).await?.is_none() {
            return Err(RolloutError::Field {
                field: "candidate".into(),
                message: format!(
                    "{candidate} is not a policy version of {org}; push it first (`gait-aggregator policy push`)"
                ),
            });
        }
        let mut targets = Vec::new();
        for t in &plan.targets {
            let tenant = Tenant::from_parts(org.as_str(), &t.project, &t.env).map_err(|e| {
                RolloutError::Field {
                    field: "targets".into(),
                    message: e.to_string(),
                }
            })?;
            let Some(pin) = self.registry.current_pin(&tenant).await? else {
                return Err(RolloutError::Conflict(format!(
                    "{tenant} is not pinned to a registry version, so a rollback would have nothing to restore; \
                     pin its current policy first (`gait-aggregator policy pin`)"
                )));
            };
            if pin.pin.digest == candidate {
                return Err(RolloutError::Conflict(format!(
                    "{tenant} already enforces {candidate}"
                )));
            }
            targets.push((tenant.project, tenant.env, pin.pin.digest));
        }
        let id = match id {
            Some(id) => {
                let ok = !id.is_empty()
                    && id.len() <= gait_store::MAX_ROLLOUT_ID_BYTES
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !ok {
                    return Err(RolloutError::Field {
                        field: "id".into(),
                        message: format!(
                            "use 1-{} characters [A-Za-z0-9_-]",
                            gait_store::MAX_ROLLOUT_ID_BYTES
                        ),
                    });
                }
                id.to_owned()
            }
            None => new_id()?,
        };
        let now = unix_ms();
        let new = NewRollout {
            org: org.clone(),
            id: id.clone(),
            candidate_digest: candidate.to_owned(),
            plan_json: serde_json::to_string(&plan)
                .map_err(|e| RolloutError::Audit(format!("plan: {e}")))?,
            created_by: actor.to_owned(),
            created_unix_ms: now,
            targets: targets.clone(),
        };
        self.store
            .transaction(async |tx| {
                if tx.rollout(org, &id).await?.is_some() {
                    return Err(RolloutError::Conflict(format!(
                        "{org} already has a rollout {id}; choose another id"
                    )));
                }
                for (project, env, _) in &targets {
                    let tenant = Tenant::new(org.clone(), project.clone(), env.clone());
                    if let Some(other) = tx.rollout_running_on(&tenant).await? {
                        return Err(RolloutError::Conflict(format!(
                            "rollout {other} is still running on {tenant}; abort it or wait for it to end"
                        )));
                    }
                }
                tx.insert_rollout(&new).await?;
                let event = RolloutEvent {
                    id: 0,
                    at_unix_ms: now,
                    kind: "created".into(),
                    from_state: String::new(),
                    to_state: State::Progressing.as_str().into(),
                    step: 0,
                    attempt: 1,
                    reason: format!("{} steps over {} environments", plan.steps.len(), targets.len()),
                    gates_json: None,
                    actor: actor.to_owned(),
                };
                tx.insert_rollout_event(org, &id, &event).await?;
                let mut details = serde_json::Map::new();
                details.insert("candidate".into(), candidate.into());
                details.insert(
                    "plan".into(),
                    serde_json::to_value(&plan).unwrap_or_default(),
                );
                audit(tx, org, &id, actor, "rollout.create", None, State::Progressing, details).await
            })
            .await?;
        tracing::info!(%org, rollout = %id, %candidate, %actor, "rollout created");
        self.nudge.notify_one();
        self.get(org, &id).await
    }

    /// The org's rollouts, newest first.
    pub async fn list(&self, org: &Org) -> Result<Vec<Rollout>, RolloutError> {
        let rows = self
            .store
            .rollouts(org, gait_store::MAX_ROLLOUT_PAGE)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let targets = self.store.rollout_targets(org, &row.id).await?;
            out.push(view(&row, &targets)?);
        }
        Ok(out)
    }

    /// The org's rollout `id`.
    pub async fn get(&self, org: &Org, id: &str) -> Result<Rollout, RolloutError> {
        let (row, targets) = self.load(org, id).await?;
        view(&row, &targets)
    }

    async fn load(
        &self,
        org: &Org,
        id: &str,
    ) -> Result<(RolloutRow, Vec<RolloutTargetRow>), RolloutError> {
        let row = self
            .store
            .rollout(org, id)
            .await?
            .ok_or_else(|| RolloutError::NotFound(format!("{org} has no rollout {id}")))?;
        let targets = self.store.rollout_targets(org, id).await?;
        Ok((row, targets))
    }

    /// Health of rollout `id`: the current step's gates, per target, and the timeline.
    pub async fn health(&self, org: &Org, id: &str) -> Result<Health, RolloutError> {
        let (row, targets) = self.load(org, id).await?;
        let plan = plan_of(&row)?;
        let step = step_of(&plan, row.step)?;
        let now = unix_ms();
        let (facts, per_target) = self.facts(&row, &plan, &targets, now).await?;
        let (gates, verdict) = gates::evaluate(
            &plan.gates,
            step.stage,
            &facts,
            phase(&row, &plan, step, now),
        );
        let bake_remaining_seconds = row.step_published.then(|| {
            let end = row.step_started_unix_ms + (step.bake_seconds as i64) * 1000;
            u64::try_from((end - now).max(0) / 1000).unwrap_or(0)
        });
        Ok(Health {
            stage: step.stage,
            percent: step.percent,
            bake_seconds: step.bake_seconds,
            bake_remaining_seconds,
            gates,
            verdict,
            facts,
            per_target,
            timeline: self.store.rollout_events(org, id).await?,
            rollout: view(&row, &targets)?,
        })
    }

    /// The agents of each target in the current step's cohort, and what they reported since the step began.
    async fn facts(
        &self,
        row: &RolloutRow,
        plan: &Plan,
        targets: &[RolloutTargetRow],
        now: i64,
    ) -> Result<(StepFacts, Vec<TargetHealth>), RolloutError> {
        let step = step_of(plan, row.step)?;
        let audience = self.audience(row, plan, row.step)?;
        let mut total = StepFacts::default();
        let mut per_target = Vec::with_capacity(targets.len());
        for t in targets {
            let tenant = tenant_of(&row.org, t);
            let cohort = self.cohort(&tenant, audience.as_ref()).await?;
            // Adopted: running the bundle this step published there, or a newer one.
            let published = t
                .bundle_epoch
                .filter(|_| t.step == Some(row.step) && t.attempt == Some(row.attempt));
            let (adopted, not_adopted): (Vec<&EnvAgent>, Vec<&EnvAgent>) =
                cohort.iter().partition(|a| {
                    published.is_some_and(|e| a.active_bundle_epoch.is_some_and(|have| have >= e))
                });
            let mut facts = StepFacts {
                cohort: cohort.len() as u64,
                adopted: adopted.len() as u64,
                stats: Default::default(),
            };
            if row.step_published && !cohort.is_empty() {
                let agents: Option<Vec<AgentId>> = (cohort.len() <= gait_store::MAX_STATS_AGENTS)
                    .then(|| cohort.iter().map(|a| a.agent_id.clone()).collect());
                let staged = step.stage != Stage::Enforce;
                facts.stats = self
                    .store
                    .decision_stats(&DecisionStatsQuery {
                        tenant: tenant.clone(),
                        candidate_digest: staged.then(|| row.candidate_digest.clone()),
                        policy_digest: (!staged).then(|| row.candidate_digest.clone()),
                        agents,
                        since_received_ms: row.step_started_unix_ms,
                        until_received_ms: now + 1,
                    })
                    .await?;
            }
            add(&mut total, &facts);
            per_target.push(TargetHealth {
                project: t.project.as_str().to_owned(),
                env: t.env.as_str().to_owned(),
                facts,
                not_adopted: not_adopted
                    .iter()
                    .take(20)
                    .map(|a| a.agent_id.as_str().to_owned())
                    .collect(),
            });
        }
        Ok((total, per_target))
    }

    /// The audience of step `step` (`None` for the last step, which every agent gets).
    fn audience(
        &self,
        row: &RolloutRow,
        plan: &Plan,
        step: u32,
    ) -> Result<Option<Audience>, RolloutError> {
        let s = step_of(plan, step)?;
        let last = step as usize + 1 == plan.steps.len();
        Ok(
            (!last && (!s.is_everyone() || !plan.labels.is_empty())).then(|| Audience {
                rollout_id: row.id.clone(),
                labels: plan.labels.clone(),
                percent_bp: s.percent_bp(),
            }),
        )
    }

    /// The agents of `tenant` admitted by `audience` (every agent when `None`).
    async fn cohort(
        &self,
        tenant: &Tenant,
        audience: Option<&Audience>,
    ) -> Result<Vec<EnvAgent>, RolloutError> {
        let agents = self.store.env_agents(tenant).await?;
        let Some(audience) = audience else {
            return Ok(agents);
        };
        let labels: BTreeMap<AgentId, BTreeMap<String, String>> = if audience.labels.is_empty() {
            BTreeMap::new()
        } else {
            crate::registry::env_labels(&self.store, tenant).await?
        };
        let none = BTreeMap::new();
        Ok(agents
            .into_iter()
            .filter(|a| {
                audience.admits(
                    a.agent_id.as_str(),
                    labels.get(&a.agent_id).unwrap_or(&none),
                )
            })
            .collect())
    }

    /// An operator's action on rollout `id` (see [`Action`]).
    pub async fn act(
        &self,
        org: &Org,
        id: &str,
        action: Action,
        reason: &str,
        actor: &str,
    ) -> Result<Rollout, RolloutError> {
        if reason.len() > 512 || reason.chars().any(char::is_control) {
            return Err(RolloutError::Field {
                field: "reason".into(),
                message: "at most 512 bytes without control characters".into(),
            });
        }
        let (row, targets) = self.load(org, id).await?;
        let plan = plan_of(&row)?;
        let state = State::parse(&row.state)?;
        let why = |default: &str| {
            if reason.trim().is_empty() {
                format!("{default} by {actor}")
            } else {
                format!("{default} by {actor}: {reason}")
            }
        };
        let refuse = || {
            RolloutError::Conflict(format!(
                "rollout {id} is {}: {} does not apply",
                state.as_str(),
                action.as_str()
            ))
        };
        let now = unix_ms();
        let keep = |to: State, reason: String| RolloutTransition {
            state: to.as_str().into(),
            reason,
            updated_unix_ms: now,
            ..transition_keep(&row)
        };
        let (to, kind) = match (action, state) {
            (Action::Pause, State::Progressing) => (keep(State::Paused, why("paused")), "paused"),
            (Action::Resume, State::Paused) => (keep(State::Progressing, String::new()), "resumed"),
            (Action::Promote, State::Progressing | State::Paused) => {
                if !row.step_published {
                    return Err(RolloutError::Conflict(format!(
                        "step {} of rollout {id} is still being published; promote once it is",
                        row.step
                    )));
                }
                if row.step as usize + 1 == plan.steps.len() {
                    (keep(State::Completed, why("completed")), "completed")
                } else {
                    (
                        RolloutTransition {
                            state: State::Progressing.as_str().into(),
                            step: row.step + 1,
                            attempt: row.attempt,
                            reason: String::new(),
                            step_published: false,
                            step_started_unix_ms: now,
                            updated_unix_ms: now,
                        },
                        "promoted",
                    )
                }
            }
            (Action::Abort, State::Progressing | State::Paused) => {
                (keep(State::Aborted, why("aborted")), "aborted")
            }
            (Action::Retry, State::RolledBack | State::Aborted) => (
                RolloutTransition {
                    state: State::Progressing.as_str().into(),
                    step: 0,
                    attempt: row.attempt + 1,
                    reason: String::new(),
                    step_published: false,
                    step_started_unix_ms: now,
                    updated_unix_ms: now,
                },
                "retried",
            ),
            _ => return Err(refuse()),
        };
        let event_reason = if to.reason.is_empty() {
            why(kind)
        } else {
            to.reason.clone()
        };
        let applied = self
            .transition(
                &row,
                &to,
                kind,
                &event_reason,
                None,
                actor,
                &format!("rollout.{}", action.as_str()),
            )
            .await?;
        if !applied {
            return Err(RolloutError::Conflict(format!(
                "rollout {id} changed meanwhile; look at it again and retry"
            )));
        }
        if action == Action::Abort {
            self.roll_back(
                &row,
                &targets,
                &format!("rollout {id} aborted by {actor}"),
                actor,
            )
            .await?;
        }
        if action == Action::Promote && to.state == State::Completed.as_str() {
            tracing::info!(%org, rollout = %id, "rollout completed by promote");
        }
        self.nudge.notify_one();
        self.get(org, id).await
    }

    /// Sets (replaces) an agent's labels, and wakes its environment's waiting agents to re-check cohorts.
    pub async fn set_labels(
        &self,
        tenant: &Tenant,
        agent: &AgentId,
        labels: &BTreeMap<String, String>,
        actor: &str,
    ) -> Result<(), RolloutError> {
        if labels.len() > 32 {
            return Err(RolloutError::Field {
                field: "labels".into(),
                message: "at most 32 labels".into(),
            });
        }
        plan::validate_labels(labels)?;
        let json = serde_json::to_string(labels).map_err(|e| RolloutError::Audit(e.to_string()))?;
        self.store
            .transaction(async |tx| {
                tx.set_agent_labels(tenant, agent, &json, unix_ms()).await?;
                let mut details = serde_json::Map::new();
                details.insert(
                    "labels".into(),
                    serde_json::to_value(labels).unwrap_or_default(),
                );
                crate::audit::append_draft(
                    tx,
                    gait_audit::EntryDraft {
                        actor: actor.to_owned(),
                        action: "agent.labels_set".into(),
                        target: crate::audit::tenant_target(tenant, "agent", agent.as_str()),
                        before: None,
                        after: None,
                        details: Some(details),
                    },
                )
                .await
                .map(|_| ())
                .map_err(audit_err)
            })
            .await?;
        self.registry.labels_changed(tenant);
        Ok(())
    }

    /// One transition in one transaction: the compare-and-set, the timeline event and the audit entry.
    /// `false` when the rollout changed meanwhile (nothing written).
    #[allow(clippy::too_many_arguments)]
    async fn transition(
        &self,
        row: &RolloutRow,
        to: &RolloutTransition,
        kind: &str,
        reason: &str,
        gates_json: Option<String>,
        actor: &str,
        action: &str,
    ) -> Result<bool, RolloutError> {
        let applied = self
            .store
            .transaction(async |tx| {
                if !tx
                    .transition_rollout(&row.org, &row.id, row.version, to)
                    .await?
                {
                    return Ok(false);
                }
                let event = RolloutEvent {
                    id: 0,
                    at_unix_ms: to.updated_unix_ms,
                    kind: kind.to_owned(),
                    from_state: row.state.clone(),
                    to_state: to.state.clone(),
                    step: to.step,
                    attempt: to.attempt,
                    reason: reason.to_owned(),
                    gates_json: gates_json.clone(),
                    actor: actor.to_owned(),
                };
                tx.insert_rollout_event(&row.org, &row.id, &event).await?;
                let mut details = serde_json::Map::new();
                details.insert("step".into(), to.step.into());
                details.insert("attempt".into(), to.attempt.into());
                if !reason.is_empty() {
                    details.insert("reason".into(), reason.into());
                }
                audit(
                    tx,
                    &row.org,
                    &row.id,
                    actor,
                    action,
                    Some(&row.state),
                    State::parse(&to.state)?,
                    details,
                )
                .await?;
                Ok::<_, RolloutError>(true)
            })
            .await?;
        if applied {
            tracing::info!(org = %row.org, rollout = %row.id, from = %row.state, to = %to.state, step = to.step,
                %kind, %reason, %actor, "rollout transition");
        }
        Ok(applied)
    }

    /// Rolls every target the rollout published in back to its baseline (a signed rollback bundle for every
    /// agent). Targets still on their baseline are left alone.
    async fn roll_back(
        &self,
        row: &RolloutRow,
        targets: &[RolloutTargetRow],
        reason: &str,
        actor: &str,
    ) -> Result<(), RolloutError> {
        let mut failed = Vec::new();
        for t in targets {
            let tenant = tenant_of(&row.org, t);
            let Some(pin) = self.registry.current_pin(&tenant).await? else {
                continue;
            };
            let latest = self.registry.latest(&tenant).await?;
            if latest.is_none_or(|b| b.epoch == pin.pin.bundle_epoch) {
                // Nothing was published over the pin (or the pin is the rollout's own final step, which a
                // rollback after completion does not undo).
                continue;
            }
            let reason = truncate(reason, crate::registry::pin::MAX_REASON_BYTES);
            if let Err(e) = self.registry.rollback(&tenant, None, &reason, actor).await {
                tracing::error!(%tenant, rollout = %row.id, error = %e, "rollout rollback of an environment failed");
                failed.push(format!("{tenant}: {e}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(RolloutError::Conflict(format!(
                "rolling back failed in {}; roll them back by hand (`gait-aggregator policy rollback`)",
                failed.join("; ")
            )))
        }
    }

    /// Publishes the bundles of the rollout's current step in every target that does not have them yet, each
    /// recording itself in the target row in its own publish transaction (so a restart publishes only what is
    /// missing).
    async fn publish_step(
        &self,
        row: &RolloutRow,
        plan: &Plan,
        targets: &[RolloutTargetRow],
        actor: &str,
    ) -> Result<Vec<u64>, RolloutError> {
        let step = step_of(plan, row.step)?;
        let last = row.step as usize + 1 == plan.steps.len();
        let audience = self.audience(row, plan, row.step)?;
        let mut epochs = Vec::with_capacity(targets.len());
        for t in targets {
            if t.step == Some(row.step) && t.attempt == Some(row.attempt) {
                epochs.push(t.bundle_epoch.unwrap_or_default());
                continue;
            }
            let tenant = tenant_of(&row.org, t);
            let (org, id, step_no, attempt) =
                (row.org.clone(), row.id.clone(), row.step, row.attempt);
            let record: &crate::registry::AlsoInTx<'_, ()> = &|tx, epoch, digest| {
                let (org, id, tenant, digest) =
                    (org.clone(), id.clone(), tenant.clone(), digest.to_owned());
                Box::pin(async move {
                    tx.set_rollout_target_bundle(
                        &org, &id, &tenant, step_no, attempt, epoch, &digest,
                    )
                    .await?;
                    Ok(())
                })
            };
            let epoch = if last {
                // The last step is a pin for every agent. A pin cannot run the target row's update in its own
                // transaction, so a controller that stopped in between finds its pin in force and records it.
                let current = self.registry.current_pin(&tenant).await?;
                let (epoch, digest) = match current {
                    Some(p)
                        if p.pin.rollout_id.as_deref() == Some(row.id.as_str())
                            && p.pin.digest == row.candidate_digest
                            && p.pin.created_unix_ms >= row.step_started_unix_ms =>
                    {
                        (p.pin.bundle_epoch, p.pin.bundle_digest)
                    }
                    _ => {
                        let outcome = self
                            .registry
                            .pin(
                                &tenant,
                                &row.candidate_digest,
                                None,
                                actor,
                                PinKind::Rollout,
                                Some(&row.id),
                            )
                            .await?;
                        (outcome.bundle.epoch, outcome.bundle.digest)
                    }
                };
                self.store
                    .transaction(async |tx| {
                        tx.set_rollout_target_bundle(
                            &row.org, &row.id, &tenant, step_no, attempt, epoch, &digest,
                        )
                        .await
                    })
                    .await?;
                epoch
            } else {
                let settings = self.registry.pinned_settings(&tenant).await?;
                let staged = StagedPublish {
                    baseline: if step.stage == Stage::Enforce {
                        row.candidate_digest.clone()
                    } else {
                        t.baseline_digest.clone()
                    },
                    candidate: (step.stage != Stage::Enforce)
                        .then(|| (row.candidate_digest.clone(), step.stage)),
                    rollback: None,
                    audience: audience.clone(),
                    settings,
                    actor: actor.to_owned(),
                };
                self.registry
                    .publish_staged_with(&tenant, staged, record)
                    .await?
                    .epoch
            };
            epochs.push(epoch);
        }
        Ok(epochs)
    }

    /// One controller pass over a progressing rollout: publish its step, or judge it by its gates.
    pub async fn drive(&self, row: &RolloutRow, actor: &str) -> Result<(), RolloutError> {
        let plan = plan_of(row)?;
        let step = step_of(&plan, row.step)?.clone();
        let targets = self.store.rollout_targets(&row.org, &row.id).await?;
        let now = unix_ms();
        if !row.step_published {
            let epochs = match self.publish_step(row, &plan, &targets, actor).await {
                Ok(e) => e,
                Err(RolloutError::Registry(e)) if e.is_client_error() => {
                    let to = RolloutTransition {
                        state: State::Paused.as_str().into(),
                        reason: format!("publishing step {} failed: {e}", row.step),
                        updated_unix_ms: now,
                        ..transition_keep(row)
                    };
                    let reason = to.reason.clone();
                    self.transition(row, &to, "paused", &reason, None, actor, "rollout.pause")
                        .await?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let to = RolloutTransition {
                step_published: true,
                step_started_unix_ms: now,
                updated_unix_ms: now,
                ..transition_keep(row)
            };
            let reason = format!(
                "step {}: {} at {}% published (epochs {:?}), bake {} s",
                row.step,
                step.stage.as_str(),
                step.percent,
                epochs,
                step.bake_seconds
            );
            self.transition(row, &to, "step", &reason, None, actor, "rollout.step")
                .await?;
            return Ok(());
        }
        let (facts, _) = self.facts(row, &plan, &targets, now).await?;
        let (results, verdict) = gates::evaluate(
            &plan.gates,
            step.stage,
            &facts,
            phase(row, &plan, &step, now),
        );
        let gates_json = serde_json::to_string(&serde_json::json!({
            "gates": results, "facts": facts,
        }))
        .ok();
        match verdict {
            Verdict::Waiting => Ok(()),
            Verdict::Fail(reason) => {
                // Roll back first: it is idempotent (a target already on its pin is left alone), so a failed
                // or interrupted rollback is simply tried again at the next pass, the rollout still
                // progressing, until every target is back; only then is the rollout marked rolled back.
                self.roll_back(
                    row,
                    &targets,
                    &format!("rollout {}: {reason}", row.id),
                    actor,
                )
                .await?;
                let to = RolloutTransition {
                    state: State::RolledBack.as_str().into(),
                    reason: reason.clone(),
                    updated_unix_ms: now,
                    ..transition_keep(row)
                };
                self.transition(
                    row,
                    &to,
                    "rolled_back",
                    &reason,
                    gates_json,
                    actor,
                    "rollout.rolled_back",
                )
                .await?;
                Ok(())
            }
            Verdict::Inconclusive(reason) => {
                let to = RolloutTransition {
                    state: State::Paused.as_str().into(),
                    reason: format!("inconclusive: {reason}; promote, resume or abort"),
                    updated_unix_ms: now,
                    ..transition_keep(row)
                };
                let r = to.reason.clone();
                self.transition(row, &to, "paused", &r, gates_json, actor, "rollout.pause")
                    .await?;
                Ok(())
            }
            Verdict::Pass => {
                if row.step as usize + 1 == plan.steps.len() {
                    let to = RolloutTransition {
                        state: State::Completed.as_str().into(),
                        reason: "every step passed".into(),
                        updated_unix_ms: now,
                        ..transition_keep(row)
                    };
                    self.transition(
                        row,
                        &to,
                        "completed",
                        "every step passed",
                        gates_json,
                        actor,
                        "rollout.complete",
                    )
                    .await?;
                    return Ok(());
                }
                let next = row.step + 1;
                if let Some(reason) = self.over_cap(row, &plan, next, &targets).await? {
                    let to = RolloutTransition {
                        state: State::Paused.as_str().into(),
                        reason: format!("blast radius: {reason}; promote to continue"),
                        updated_unix_ms: now,
                        ..transition_keep(row)
                    };
                    let r = to.reason.clone();
                    self.transition(row, &to, "paused", &r, gates_json, actor, "rollout.pause")
                        .await?;
                    return Ok(());
                }
                let to = RolloutTransition {
                    state: State::Progressing.as_str().into(),
                    step: next,
                    reason: String::new(),
                    step_published: false,
                    step_started_unix_ms: now,
                    updated_unix_ms: now,
                    attempt: row.attempt,
                };
                let reason = format!("step {} passed its gates", row.step);
                self.transition(
                    row,
                    &to,
                    "advanced",
                    &reason,
                    gates_json,
                    actor,
                    "rollout.advance",
                )
                .await?;
                self.nudge.notify_one();
                Ok(())
            }
        }
    }

    /// Why step `next` would exceed the plan's blast-radius cap, if it would.
    async fn over_cap(
        &self,
        row: &RolloutRow,
        plan: &Plan,
        next: u32,
        targets: &[RolloutTargetRow],
    ) -> Result<Option<String>, RolloutError> {
        let cap = &plan.blast_radius;
        if step_of(plan, next)?.stage != Stage::Enforce
            || (cap.max_agents.is_none() && cap.max_projects.is_none())
        {
            return Ok(None);
        }
        let audience = self.audience(row, plan, next)?;
        let mut agents = 0u64;
        let mut projects = std::collections::BTreeSet::new();
        for t in targets {
            let n = self
                .cohort(&tenant_of(&row.org, t), audience.as_ref())
                .await?
                .len() as u64;
            agents += n;
            if n > 0 {
                projects.insert(t.project.clone());
            }
        }
        if let Some(max) = cap.max_agents
            && agents > max
        {
            return Ok(Some(format!(
                "step {next} would make {agents} agents enforce; the cap is {max}"
            )));
        }
        if let Some(max) = cap.max_projects
            && projects.len() as u64 > max
        {
            return Ok(Some(format!(
                "step {next} would make {} projects enforce; the cap is {max}",
                projects.len()
            )));
        }
        Ok(None)
    }
}

fn transition_keep(row: &RolloutRow) -> RolloutTransition {
    RolloutTransition {
        state: row.state.clone(),
        step: row.step,
        attempt: row.attempt,
        reason: row.reason.clone(),
        step_published: row.step_published,
        step_started_unix_ms: row.step_started_unix_ms,
        updated_unix_ms: row.updated_unix_ms,
    }
}

fn step_of(plan: &Plan, step: u32) -> Result<&plan::Step, RolloutError> {
    plan.steps.get(step as usize).ok_or_else(|| {
        corrupt(format!(
            "step {step} is not in a plan of {}",
            plan.steps.len()
        ))
    })
}

/// Where the step is in its bake time and adoption grace.
fn phase(row: &RolloutRow, plan: &Plan, step: &plan::Step, now: i64) -> gates::Phase {
    let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000);
    let baked = row
        .step_started_unix_ms
        .saturating_add(secs(step.bake_seconds));
    if !row.step_published || now < baked {
        gates::Phase::Baking
    } else if now < baked.saturating_add(secs(plan.gates.adoption_timeout_seconds)) {
        gates::Phase::Adopting
    } else {
        gates::Phase::Due
    }
}

fn add(total: &mut StepFacts, f: &StepFacts) {
    total.cohort += f.cohort;
    total.adopted += f.adopted;
    let (t, s) = (&mut total.stats, &f.stats);
    t.decisions += s.decisions;
    t.agents_reporting += s.agents_reporting;
    t.verdict_diffs += s.verdict_diffs;
    t.new_blocks += s.new_blocks;
    t.candidate_errors += s.candidate_errors;
    t.blocks += s.blocks;
    for (k, v) in &s.diffs_by_reason {
        *t.diffs_by_reason.entry(k.clone()).or_default() += v;
    }
    for (k, v) in &s.diffs_by_tool {
        *t.diffs_by_tool.entry(k.clone()).or_default() += v;
    }
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn view(row: &RolloutRow, targets: &[RolloutTargetRow]) -> Result<Rollout, RolloutError> {
    Ok(Rollout {
        id: row.id.clone(),
        org: row.org.as_str().to_owned(),
        candidate_digest: row.candidate_digest.clone(),
        plan: plan_of(row)?,
        state: State::parse(&row.state)?,
        step: row.step,
        attempt: row.attempt,
        reason: row.reason.clone(),
        step_published: row.step_published,
        step_started_unix_ms: row.step_started_unix_ms,
        created_by: row.created_by.clone(),
        created_unix_ms: row.created_unix_ms,
        updated_unix_ms: row.updated_unix_ms,
        targets: targets
            .iter()
            .map(|t| TargetView {
                project: t.project.as_str().to_owned(),
                env: t.env.as_str().to_owned(),
                baseline_digest: t.baseline_digest.clone(),
                bundle_epoch: t.bundle_epoch,
                bundle_step: t.step,
            })
            .collect(),
    })
}

fn audit_err(e: crate::audit::AuditError) -> RolloutError {
    match e {
        crate::audit::AuditError::Store(e) => RolloutError::Store(e),
        other => RolloutError::Audit(other.to_string()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn audit(
    tx: &mut gait_store::StoreTx,
    org: &Org,
    id: &str,
    actor: &str,
    action: &str,
    before: Option<&str>,
    after: State,
    mut details: serde_json::Map<String, serde_json::Value>,
) -> Result<(), RolloutError> {
    if let Some(b) = before {
        details.insert("from_state".into(), b.into());
    }
    details.insert("to_state".into(), after.as_str().into());
    crate::audit::append_draft(
        tx,
        gait_audit::EntryDraft {
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: gait_audit::Target {
                org: Some(org.as_str().to_owned()),
                project: None,
                env: None,
                kind: "rollout".into(),
                id: id.to_owned(),
            },
            before: None,
            after: None,
            details: Some(details),
        },
    )
    .await
    .map(|_| ())
    .map_err(audit_err)
}
