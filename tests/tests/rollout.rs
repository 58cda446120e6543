//! End to end (issue 13 items 3 and 5), real `gait-aggregator` and ten real `gait-agent` processes: a rollout
//! at `observe` for a 30 % cohort reaches exactly the agents the documented cohort hash names, and no other;
//! a candidate that blocks what the baseline allows trips the verdict-difference gate from the decisions the
//! cohort makes, and the controller rolls every agent back to the baseline by itself; the health API shows the
//! gates and the timeline with why each transition happened. Then `retry` starts again with the same cohort,
//! the aggregator is killed (-9) during the bake and restarted — the rollout resumes at the same step, with the
//! same start, without repeating a transition — and `promote` pins the candidate for every agent.
#![allow(clippy::disallowed_methods)]

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, POLICY_V1, POLICY_V2, hermetic, http_json, wait_for};
use serde_json::{Value, json};

const AGENTS: usize = 10;

fn intent(tool: &str) -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-12-01T09:00:00Z",
        "producer_version": "e2e",
        "tool_name": tool,
        "args": {"path": "/srv"},
        "targets": [{"kind": "path", "value": "/srv", "operation": "read"}],
        "arg_provenance": [{"arg_path": "$.path", "source": "user"}],
        "context": {"identity": "bot", "workspace": "/srv", "risk_class": "low", "phase": "apply"}
    })
}

/// The agent's decision on `tool`: the whole answer.
fn decide(agent: &Agent, tool: &str) -> anyhow::Result<Value> {
    let token = agent.api_token()?;
    let (status, answer) = http_json(
        "POST",
        &format!("http://{}/v1/gate/evaluate", agent.api),
        Some(&token),
        Some(intent(tool)),
    )?;
    ensure!(status == 200, "evaluate: {status} {answer}");
    Ok(answer)
}

fn rollout(agg: &Aggregator, id: &str) -> anyhow::Result<Value> {
    agg.call("GET", &format!("/v1/orgs/acme/rollouts/{id}"), None)
}

fn wait_state(agg: &Aggregator, id: &str, state: &str) -> anyhow::Result<Value> {
    wait_for(PATIENCE, &format!("rollout {id} {state}"), || {
        rollout(agg, id).ok().filter(|r| r["state"] == state)
    })
    .with_context(|| {
        let health = http_json(
            "GET",
            &agg.url(&format!("/v1/orgs/acme/rollouts/{id}/health")),
            Some(&agg.token),
            None,
        );
        format!("health: {health:?}")
    })
}

/// A rollout id whose 30 % cohort among `ids` has three members (the hash is fixed, so this is deterministic).
fn id_with_cohort_of_three(ids: &[String]) -> (String, Vec<String>) {
    (0..)
        .map(|n| format!("tighten-reads-{n}"))
        .find_map(|id| {
            let cohort: Vec<String> = ids
                .iter()
                .filter(|a| gait_bundle::cohort::in_cohort(&id, a, 3_000))
                .cloned()
                .collect();
            (cohort.len() == 3).then_some((id, cohort))
        })
        .expect("some id has a cohort of three")
}

#[test]
fn a_cohort_rollout_trips_its_gate_rolls_back_resumes_after_a_kill_and_promotes()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    // The baseline allows reads and lists; the candidate allows only reads: it blocks what the baseline allows.
    let baseline = agg.push_policy("acme", POLICY_V2, "reads and lists")?;
    let candidate = agg.push_policy("acme", POLICY_V1, "reads only")?;
    let ids: Vec<String> = (0..AGENTS).map(|i| format!("agent-{i}")).collect();
    let mut agents = Vec::new();
    for id in &ids {
        let mut a = Agent::enroll(&agg, &tmp.path().join(id), "acme", "web", "prod", id)?;
        a.start()?;
        agents.push(a);
    }
    agg.call(
        "PUT",
        "/v1/orgs/acme/projects/web/envs/prod/pin",
        Some(json!({"digest": baseline})),
    )?;
    for a in &agents {
        a.wait_active_epoch(1, "baseline pinned")?;
    }

    let (id, cohort) = id_with_cohort_of_three(&ids);
    let plan = json!({
        "targets": [{"project": "web", "env": "prod"}],
        "steps": [
            {"stage": "observe", "percent": 30, "bake_seconds": 3600},
            {"stage": "enforce", "percent": 100}
        ],
        "gates": {"max_diff_rate": 0.0, "min_samples": 3, "min_adoption": 0.9}
    });
    let created = agg.call(
        "POST",
        "/v1/orgs/acme/rollouts",
        Some(json!({"id": id, "candidate": candidate, "plan": plan})),
    )?;
    ensure!(created["state"] == "progressing", "{created}");

    // Exactly the hashed cohort gets the observe bundle (epoch 2); everyone else stays on epoch 1.
    for a in agents.iter().filter(|a| cohort.contains(&a.id)) {
        a.wait_active_epoch(2, "cohort on the observe bundle")?;
        let d = decide(a, "tool.read")?;
        ensure!(
            d["stage"]["stage"] == "observe"
                && d["stage"]["candidate_digest"] == candidate.as_str(),
            "{}: {d}",
            a.id
        );
    }
    wait_for(PATIENCE, "the step is published", || {
        rollout(&agg, &id)
            .ok()
            .filter(|r| r["step_published"] == true)
    })?;
    for a in agents.iter().filter(|a| !cohort.contains(&a.id)) {
        ensure!(
            a.active_epoch() == Some(1),
            "{} is outside the cohort {cohort:?} but left epoch 1",
            a.id
        );
        let d = decide(a, "tool.read")?;
        ensure!(d["stage"]["stage"] == "enforce", "{}: {d}", a.id);
    }

    // The inventory compares each agent with what is offered to it: nobody is "behind" for being outside the
    // cohort.
    // (Waits until the aggregator stored every cohort agent's report of the observe bundle.)
    let settled = |inventory: &[Value]| {
        inventory.len() == AGENTS
            && inventory.iter().all(|entry| {
                let id = entry["agent_id"].as_str().unwrap_or_default();
                let want = if cohort.iter().any(|c| c == id) { 2 } else { 1 };
                entry["latest_epoch"] == 2
                    && entry["target_epoch"] == want
                    && entry["behind"] == false
            })
    };
    wait_for(PATIENCE, "the inventory shows nobody behind", || {
        agg.agents("acme").ok().filter(|inv| settled(inv))
    })
    .with_context(|| format!("inventory: {:?}", agg.agents("acme")))?;

    // The cohort lists: the baseline allows, the candidate (in shadow) blocks: verdict differences.
    for a in agents.iter().filter(|a| cohort.contains(&a.id)) {
        let d = decide(a, "tool.list")?;
        ensure!(
            d["verdict"] == "allow" && d["stage"]["candidate_verdict"] == "block",
            "{}: {d}",
            a.id
        );
    }
    let rolled = wait_state(&agg, &id, "rolled_back")?;
    ensure!(
        rolled["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("verdict_diff_rate"),
        "{rolled}"
    );
    // Every agent ends on the baseline, by a rollback bundle (epoch 3) for everyone.
    for a in &agents {
        a.wait_active_epoch(3, "rolled back")?;
        let d = decide(a, "tool.list")?;
        ensure!(
            d["policy_digest"] == baseline.as_str()
                && d["verdict"] == "allow"
                && d["stage"]["stage"] == "enforce",
            "{}: {d}",
            a.id
        );
    }
    let health = agg.call("GET", &format!("/v1/orgs/acme/rollouts/{id}/health"), None)?;
    let kinds: Vec<&str> = health["timeline"]
        .as_array()
        .context("timeline")?
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    ensure!(
        kinds == ["created", "step", "rolled_back"],
        "timeline {kinds:?}: {health}"
    );
    let failed = &health["timeline"][2];
    ensure!(
        failed["actor"]
            .as_str()
            .unwrap_or_default()
            .starts_with("controller:")
            && failed["gates_json"]
                .as_str()
                .unwrap_or_default()
                .contains("verdict_diff_rate"),
        "{failed}"
    );

    // The CLI shows the same: the failed gate in the timeline, the rollout in the list.
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = hermetic("gait-aggregator")
            .arg("rollout")
            .args(args)
            .args(["--org", "acme", "--server"])
            .arg(agg.url(""))
            .arg("--token-file")
            .arg(agg.data_dir.join("admin.token"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "rollout {args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text)
    };
    let shown = cli(&["health", &id])?;
    ensure!(
        shown.contains("rolled_back") && shown.contains("verdict_diff_rate"),
        "{shown}"
    );
    let listed: Value = serde_json::from_str(&cli(&["list", "--json"])?)?;
    ensure!(listed["rollouts"][0]["id"] == id.as_str(), "{listed}");

    // Retry: the same cohort gets the observe bundle again (epoch 4).
    agg.call("POST", &format!("/v1/orgs/acme/rollouts/{id}/retry"), None)?;
    for a in agents.iter().filter(|a| cohort.contains(&a.id)) {
        a.wait_active_epoch(4, "cohort on the retried observe bundle")?;
    }
    let before = wait_for(PATIENCE, "the retried step is published", || {
        rollout(&agg, &id)
            .ok()
            .filter(|r| r["step_published"] == true && r["attempt"] == 2)
    })?;
    let events_before =
        agg.call("GET", &format!("/v1/orgs/acme/rollouts/{id}/health"), None)?["timeline"]
            .as_array()
            .map(Vec::len)
            .unwrap_or_default();

    // Killed during the bake and restarted: the same step, the same start, no transition repeated.
    agg.kill9();
    agg.restart()?;
    wait_for(PATIENCE, "the restarted controller made two passes", || {
        (agg.metric("gait_aggregator_rollout_controller_passes_total")
            .ok()?
            >= 2)
            .then_some(())
    })?;
    let after = rollout(&agg, &id)?;
    ensure!(
        after["state"] == "progressing"
            && after["step"] == before["step"]
            && after["step_started_unix_ms"] == before["step_started_unix_ms"],
        "before {before}\nafter {after}"
    );
    let events_after =
        agg.call("GET", &format!("/v1/orgs/acme/rollouts/{id}/health"), None)?["timeline"]
            .as_array()
            .map(Vec::len)
            .unwrap_or_default();
    ensure!(
        events_after == events_before,
        "{events_before} -> {events_after} events"
    );
    for a in &agents {
        let want = if cohort.contains(&a.id) { 4 } else { 3 };
        ensure!(a.active_epoch() == Some(want), "{} left epoch {want}", a.id);
    }

    // Promote: the last step pins the candidate for every agent, and the rollout completes.
    agg.call(
        "POST",
        &format!("/v1/orgs/acme/rollouts/{id}/promote"),
        Some(json!({"reason": "reviewed the diff"})),
    )?;
    for a in &agents {
        a.wait_active_epoch(5, "candidate pinned for everyone")?;
        let d = decide(a, "tool.list")?;
        ensure!(
            d["policy_digest"] == candidate.as_str() && d["verdict"] == "block",
            "{}: {d}",
            a.id
        );
    }
    let done = wait_state(&agg, &id, "completed")?;
    let (_, pins) = agg.get("/v1/orgs/acme/projects/web/envs/prod/pins")?;
    let newest = &pins["pins"][0];
    ensure!(
        newest["kind"] == "rollout"
            && newest["rollout_id"] == id.as_str()
            && newest["digest"] == candidate.as_str(),
        "{newest}\n{done}"
    );
    let actions: Vec<String> = agg.audit_actions()?.into_iter().map(|(a, _)| a).collect();
    for want in [
        "rollout.create",
        "rollout.step",
        "rollout.rolled_back",
        "rollout.retry",
        "rollout.promote",
    ] {
        ensure!(
            actions.iter().any(|a| a == want),
            "no {want} in {actions:?}"
        );
    }
    Ok(())
}
