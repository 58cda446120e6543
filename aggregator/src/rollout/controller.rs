//! The rollout controller: drives every progressing rollout, once per deployment.
//!
//! Each replica runs this task; only the one holding the `rollout-controller` leader lease
//! ([`gait_store::Store::try_lead`], a PostgreSQL advisory lock on a dedicated connection) acts. The others retry
//! the lease every tick, so when the leader dies another replica takes over within a tick or two of PostgreSQL
//! noticing. The lease is not the fence: every transition is a compare-and-set on the rollout's version, so a
//! leader that lost its lock mid-pass cannot overwrite what the new leader or an operator did.
//!
//! A pass reads the progressing rollouts from the store and, for each, publishes its step's bundles or judges
//! the step by its gates ([`super::Rollouts::drive`]). Everything a pass needs is in the store (the step, when
//! it started, what was published where), so a restarted controller resumes where the last one stopped.

use std::sync::Arc;
use std::time::Duration;

use gait_runtime::Tasks;
use gait_store::{LeaderLease, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Rollouts;

/// How often the controller looks at the progressing rollouts (and a follower at the lease).
pub const TICK: Duration = Duration::from_secs(1);
/// The leader lease's name.
pub const LEASE: &str = "rollout-controller";

/// Starts the controller task on this replica; `replica` names it in the timeline (`controller:<replica>`).
pub fn spawn(
    tasks: &Tasks,
    rollouts: Arc<Rollouts>,
    store: Store,
    metrics: Arc<crate::metrics::Metrics>,
    replica: String,
    token: CancellationToken,
) {
    tasks.spawn_essential("rollout-controller", async move {
        let actor = format!("controller:{replica}");
        info!(%actor, "rollout controller started");
        let mut lease: Option<LeaderLease> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {}
                _ = rollouts.nudged() => {}
            }
            if let Some(held) = lease.as_mut()
                && !held.still_held().await
            {
                warn!(%actor, "rollout controller lost its leader lease");
                lease = None;
                metrics.rollout_controller_leader.set(0);
            }
            if lease.is_none() {
                match store.try_lead(LEASE).await {
                    Ok(Some(l)) => {
                        info!(%actor, "rollout controller leads this deployment");
                        lease = Some(l);
                        metrics.rollout_controller_leader.set(1);
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        warn!(%actor, error = %e, "rollout controller could not try the leader lease");
                        continue;
                    }
                }
            }
            pass(&rollouts, &store, &actor).await;
            metrics.rollout_controller_passes.inc();
        }
        if let Some(l) = lease.take() {
            l.release().await;
            metrics.rollout_controller_leader.set(0);
        }
        Ok::<(), std::convert::Infallible>(())
    });
}

/// One pass over the progressing rollouts.
async fn pass(rollouts: &Rollouts, store: &Store, actor: &str) {
    let rows = match store
        .rollouts_in_state(super::State::Progressing.as_str())
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            warn!(error = %e, "rollout controller could not list rollouts");
            return;
        }
    };
    for row in rows {
        if let Err(e) = rollouts.drive(&row, actor).await {
            warn!(org = %row.org, rollout = %row.id, step = row.step, error = %e,
                "rollout controller step failed; retrying next tick");
        }
    }
}
