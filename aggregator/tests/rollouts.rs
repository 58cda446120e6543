//! Rollout building blocks in process, on both store backends: the leader lease is held by one holder at a time
//! and passes on when released; a rollout transition is a compare-and-set (a stale version writes nothing);
//! a cohort bundle is offered to the agents its audience admits and to no other, also after a cold start; and
//! creating a rollout refuses unpinned targets, unknown candidates and a second rollout on one environment.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use gait_aggregator::registry::pin::{EnvSettings, StagedPublish};
use gait_aggregator::registry::versions::PushRequest;
use gait_aggregator::registry::{Audience, BundleDefaults, Registry};
use gait_aggregator::rollout::plan::{Plan, Step, Target};
use gait_aggregator::rollout::{RolloutError, Rollouts};
use gait_store::testing::TestStore;
use gait_store::{AgentKey, PinKind, RolloutTransition, Tenant};

fn registry(db: &TestStore) -> Registry {
    Registry::new(
        db.store().clone(),
        gait_canon::sign::SigningKey::from_seed(&[9; 32]),
        BundleDefaults::default(),
        Arc::new(gait_aggregator::metrics::Metrics::new()),
    )
}

async fn push(reg: &Registry, n: u32) -> Result<String> {
    let yaml = format!(
        "default_verdict: block\nrules:\n  - name: allow-{n}\n    effect: allow\n    match:\n      tool_names: [tool.{n}]\n"
    );
    let pushed = reg
        .push(
            &"acme".parse()?,
            PushRequest {
                name: "base.yaml".into(),
                yaml,
                message: format!("v{n}"),
                parent: None,
                author: "alice".into(),
                dry_run: false,
            },
        )
        .await?;
    Ok(pushed.version.digest)
}

async fn the_leader_lease_has_one_holder(db: &TestStore) -> Result<()> {
    let store = db.store();
    let first = store
        .try_lead("rollout-controller")
        .await?
        .context("first")?;
    let second = store.try_lead("rollout-controller").await?;
    if store.backend() == "postgres" {
        ensure!(second.is_none(), "a second holder while the first holds");
        ensure!(
            store.try_lead("another-job").await?.is_some(),
            "leases of other jobs are independent"
        );
        first.release().await;
        ensure!(
            store.try_lead("rollout-controller").await?.is_some(),
            "released, the lease passes on"
        );
    } else {
        ensure!(second.is_some(), "SQLite: one process, always the leader");
    }
    Ok(())
}

/// Every agent is offered the cohort's epoch (2) iff the audience admits it, else the pinned one (1).
async fn check(
    reg: &Registry,
    prod: &Tenant,
    agents: &[String],
    audience: &Audience,
) -> Result<()> {
    let mut members = 0;
    for a in agents {
        let key = AgentKey::new(prod.clone(), a.parse()?);
        let offered = reg.offered_to(&key).await?.context("offered")?.epoch;
        let member = audience.admits(a, &Default::default());
        members += usize::from(member);
        ensure!(
            offered == if member { 2 } else { 1 },
            "{a}: offered epoch {offered}, member {member}"
        );
        // A waiting agent outside the cohort is not woken by it.
        let waited = reg.wait_newer(&key, 1, Duration::ZERO).await?;
        ensure!(waited.is_some() == member, "{a}: waited {waited:?}");
    }
    // The hash is fixed, so the count is too; both kinds of agent must be present for the test to mean anything.
    ensure!(
        (1..agents.len()).contains(&members),
        "{members} of {} in the cohort",
        agents.len()
    );
    Ok(())
}

async fn cohort_bundles_reach_their_audience_only(db: &TestStore) -> Result<()> {
    let reg = registry(db);
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    let (v1, v2) = (push(&reg, 1).await?, push(&reg, 2).await?);
    reg.pin(&prod, &v1, None, "alice", PinKind::Pin, None)
        .await?;
    let audience = Audience {
        rollout_id: "r-test".into(),
        labels: Default::default(),
        percent_bp: 3_000,
    };
    let staged = reg
        .publish_staged(
            &prod,
            StagedPublish {
                baseline: v1.clone(),
                candidate: Some((v2.clone(), gait_bundle::Stage::Observe)),
                rollback: None,
                audience: Some(audience.clone()),
                settings: EnvSettings::default(),
                actor: "controller:test".into(),
            },
        )
        .await?;
    ensure!(staged.epoch == 2, "{staged:?}");
    let agents: Vec<String> = (0..40).map(|i| format!("agent-{i}")).collect();
    check(&reg, &prod, &agents, &audience).await?;
    // A cold registry (another replica, a restart) loads the same offers from the store.
    check(&registry(db), &prod, &agents, &audience).await?;
    // A bundle without an audience (the rollback, the last step's pin) reaches everyone.
    let pinned = reg
        .pin(&prod, &v2, None, "alice", PinKind::Rollout, Some("r-test"))
        .await?;
    for a in &agents {
        let key = AgentKey::new(prod.clone(), a.parse()?);
        ensure!(
            reg.offered_to(&key).await?.context("offered")?.epoch == pinned.bundle.epoch,
            "{a}"
        );
    }
    Ok(())
}

fn plan(targets: &[(&str, &str)]) -> Plan {
    Plan {
        targets: targets
            .iter()
            .map(|(p, e)| Target {
                project: (*p).into(),
                env: (*e).into(),
            })
            .collect(),
        labels: Default::default(),
        steps: vec![
            Step {
                stage: gait_bundle::Stage::Observe,
                percent: 30.0,
                bake_seconds: 60,
            },
            Step {
                stage: gait_bundle::Stage::Enforce,
                percent: 100.0,
                bake_seconds: 0,
            },
        ],
        gates: Default::default(),
        blast_radius: Default::default(),
    }
}

async fn creation_checks_its_targets_and_transitions_are_compare_and_set(
    db: &TestStore,
) -> Result<()> {
    let reg = Arc::new(registry(db));
    let rollouts = Rollouts::new(db.store().clone(), reg.clone());
    let org = "acme".parse()?;
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    let (v1, v2) = (push(&reg, 1).await?, push(&reg, 2).await?);
    let err = rollouts
        .create(&org, None, &v2, plan(&[("web", "prod")]), "alice")
        .await
        .unwrap_err();
    ensure!(
        matches!(err, RolloutError::Conflict(ref m) if m.contains("not pinned")),
        "{err}"
    );
    reg.pin(&prod, &v1, None, "alice", PinKind::Pin, None)
        .await?;
    let err = rollouts
        .create(
            &org,
            None,
            &"0".repeat(64),
            plan(&[("web", "prod")]),
            "alice",
        )
        .await
        .unwrap_err();
    ensure!(
        matches!(err, RolloutError::Field { ref field, .. } if field == "candidate"),
        "{err}"
    );
    let r = rollouts
        .create(&org, Some("first"), &v2, plan(&[("web", "prod")]), "alice")
        .await?;
    ensure!(r.targets[0].baseline_digest == v1, "{r:?}");
    let err = rollouts
        .create(&org, None, &v2, plan(&[("web", "prod")]), "bob")
        .await
        .unwrap_err();
    ensure!(
        matches!(err, RolloutError::Conflict(ref m) if m.contains("still running")),
        "{err}"
    );

    // A transition made against an old version writes nothing.
    let row = db.store().rollout(&org, "first").await?.context("row")?;
    let to = RolloutTransition {
        state: "paused".into(),
        step: 0,
        attempt: 1,
        reason: "test".into(),
        step_published: false,
        step_started_unix_ms: row.step_started_unix_ms,
        updated_unix_ms: row.updated_unix_ms,
    };
    let mut tx = db.store().begin().await?;
    ensure!(
        tx.transition_rollout(&org, "first", row.version, &to)
            .await?
    );
    ensure!(
        !tx.transition_rollout(&org, "first", row.version, &to)
            .await?,
        "the same version twice"
    );
    tx.commit().await?;
    // Operator actions follow the state machine.
    let resumed = rollouts
        .act(
            &org,
            "first",
            gait_aggregator::rollout::Action::Resume,
            "",
            "alice",
        )
        .await?;
    ensure!(resumed.state == gait_aggregator::rollout::State::Progressing);
    let err = rollouts
        .act(
            &org,
            "first",
            gait_aggregator::rollout::Action::Retry,
            "",
            "alice",
        )
        .await
        .unwrap_err();
    ensure!(
        matches!(err, RolloutError::Conflict(_)),
        "retry while progressing: {err}"
    );
    Ok(())
}

async fn abort_rolls_every_target_back_and_retry_starts_again(db: &TestStore) -> Result<()> {
    use gait_aggregator::rollout::{Action, State};
    let reg = Arc::new(registry(db));
    let rollouts = Rollouts::new(db.store().clone(), reg.clone());
    let org = "acme".parse()?;
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    let staging = Tenant::from_parts("acme", "web", "staging")?;
    let (v1, v2) = (push(&reg, 1).await?, push(&reg, 2).await?);
    for t in [&prod, &staging] {
        reg.pin(t, &v1, None, "alice", PinKind::Pin, None).await?;
    }
    rollouts
        .create(
            &org,
            Some("r1"),
            &v2,
            plan(&[("web", "prod"), ("web", "staging")]),
            "alice",
        )
        .await?;
    let row = db.store().rollout(&org, "r1").await?.context("row")?;
    rollouts.drive(&row, "controller:test").await?;
    let row = db.store().rollout(&org, "r1").await?.context("row")?;
    ensure!(row.step_published, "{row:?}");
    // A second pass within the bake publishes nothing more.
    rollouts.drive(&row, "controller:test").await?;
    for t in [&prod, &staging] {
        ensure!(
            reg.latest(t).await?.context("latest")?.epoch == 2,
            "{t}: one step bundle"
        );
    }
    let aborted = rollouts
        .act(&org, "r1", Action::Abort, "wrong candidate", "bob")
        .await?;
    ensure!(aborted.state == State::Aborted, "{aborted:?}");
    for t in [&prod, &staging] {
        let pin = reg.current_pin(t).await?.context("pin")?;
        ensure!(
            pin.pin.kind == PinKind::Rollback && pin.pin.digest == v1 && pin.pin.bundle_epoch == 3,
            "{t}: rolled back to the baseline: {pin:?}"
        );
    }
    // Nothing to clean up: retry starts at step 0 again and publishes over the rollback.
    let retried = rollouts.act(&org, "r1", Action::Retry, "", "bob").await?;
    ensure!(retried.state == State::Progressing && retried.attempt == 2 && retried.step == 0);
    let row = db.store().rollout(&org, "r1").await?.context("row")?;
    rollouts.drive(&row, "controller:test").await?;
    for t in [&prod, &staging] {
        ensure!(
            reg.latest(t).await?.context("latest")?.epoch == 4,
            "{t}: retried step"
        );
    }
    let events = db.store().rollout_events(&org, "r1").await?;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    ensure!(
        kinds == ["created", "step", "aborted", "retried", "step"],
        "{kinds:?}"
    );
    Ok(())
}

async fn the_blast_radius_cap_pauses_before_enforcing_until_promoted(db: &TestStore) -> Result<()> {
    use gait_aggregator::rollout::{Action, State};
    use gait_store::{ActiveBundle, AgentHello, BundleReportRow};
    let store = db.store();
    let reg = Arc::new(registry(db));
    let rollouts = Rollouts::new(store.clone(), reg.clone());
    let org = "acme".parse()?;
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    let (v1, v2) = (push(&reg, 1).await?, push(&reg, 2).await?);
    reg.pin(&prod, &v1, None, "alice", PinKind::Pin, None)
        .await?;
    let now = gait_aggregator::clock::unix_ms();
    let agents: Vec<AgentKey> = (0..3)
        .map(|i| Ok(AgentKey::new(prod.clone(), format!("a{i}").parse()?)))
        .collect::<Result<_>>()?;
    for (i, key) in agents.iter().enumerate() {
        let hello = AgentHello {
            cert_serial: format!("0a1b2c{i}0").parse()?,
            cert_not_after_unix_ms: now + 86_400_000,
            cert_issuer: String::new(),
            remote_addr: "10.0.0.7:4433".into(),
            agent_version: "0.1.0".into(),
            active_bundle: None,
            received_bundle: None,
            outbox_depth: 0,
            shed_total: 0,
        };
        store.agent_connected(key, &hello, now).await?;
    }
    let mut p = plan(&[("web", "prod")]);
    p.steps[0] = Step {
        stage: gait_bundle::Stage::DryRun,
        percent: 100.0,
        bake_seconds: 0,
    };
    p.gates.min_samples = 0;
    p.blast_radius.max_agents = Some(2);
    rollouts
        .create(&org, Some("capped"), &v2, p, "alice")
        .await?;
    let row = store.rollout(&org, "capped").await?.context("row")?;
    rollouts.drive(&row, "controller:test").await?;
    // Every agent runs the dry-run bundle: the step passes, but enforcing would reach 3 agents (cap 2).
    let step = reg.latest(&prod).await?.context("step bundle")?;
    for key in &agents {
        let active = ActiveBundle {
            epoch: step.epoch,
            digest: step.digest.clone(),
            since_unix_ms: now,
        };
        store
            .record_bundle_report(key, &BundleReportRow::Activated(active), now)
            .await?;
    }
    let row = store.rollout(&org, "capped").await?.context("row")?;
    rollouts.drive(&row, "controller:test").await?;
    let paused = rollouts.get(&org, "capped").await?;
    ensure!(
        paused.state == State::Paused && paused.step == 0 && paused.reason.contains("blast radius"),
        "{paused:?}"
    );
    ensure!(
        reg.latest(&prod).await?.context("latest")?.epoch == step.epoch,
        "nothing enforced"
    );
    // A human promotes past the cap; the controller then pins the candidate.
    rollouts
        .act(&org, "capped", Action::Promote, "reviewed", "bob")
        .await?;
    let row = store.rollout(&org, "capped").await?.context("row")?;
    rollouts.drive(&row, "controller:test").await?;
    let pin = reg.current_pin(&prod).await?.context("pin")?;
    ensure!(
        pin.pin.kind == PinKind::Rollout && pin.pin.digest == v2,
        "{pin:?}"
    );
    Ok(())
}

gait_store::store_tests!(
    the_blast_radius_cap_pauses_before_enforcing_until_promoted,
    abort_rolls_every_target_back_and_retry_starts_again,
    the_leader_lease_has_one_holder,
    cohort_bundles_reach_their_audience_only,
    creation_checks_its_targets_and_transitions_are_compare_and_set,
);
