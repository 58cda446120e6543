//! End to end, on real processes: fleet analytics (issue 12). Two agents of `acme/web/prod` and one of
//! `acme/web/dev` under a policy that blocks destructive deletes and allows reads make decisions through their
//! local API; the aggregator's upkeep folds them into families; `gait-aggregator families --json` lists the
//! destructive block in production first with its score breakdown, `family` shows what went into its
//! fingerprint and its suggestions, `families --csv` exports the same rows with evidence digests, `posture`
//! counts every decision, and `change-gate` fails prod (an open critical family) with exit 1 and passes an
//! environment with no evidence. Runs on SQLite and, with `GAIT_TEST_DATABASE_URL` set, on PostgreSQL.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::path::Path;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, http_json, wait_for};
use serde_json::{Value, json};

const POLICY: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n  - name: no-delete\n    priority: 10\n    effect: block\n    match:\n      tool_names: [tool.delete]\n    reason_codes: [delete_blocked]\n  - name: allow-read\n    priority: 20\n    effect: allow\n    match:\n      tool_names: [tool.read]\n    reason_codes: [read_allowed]\n";

fn intent(tool: &str, path: &str, risk: &str, destructive: bool) -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-12-01T09:00:00Z",
        "producer_version": "e2e",
        "tool_name": tool,
        "args": {"path": path},
        "targets": [{"kind": "path", "value": path, "operation": if destructive { "delete" } else { "read" },
                     "endpoint_class": if destructive { "fs.delete" } else { "fs.read" },
                     "destructive": destructive}],
        "context": {"identity": "worker", "workspace": "/srv/app", "risk_class": risk}
    })
}

fn decide(agent: &Agent, body: Value, want: &str) -> anyhow::Result<()> {
    let token = agent.api_token()?;
    let (status, answer) = http_json(
        "POST",
        &format!("http://{}/v1/gate/evaluate", agent.api),
        Some(&token),
        Some(body),
    )?;
    ensure!(
        status == 200 && answer["verdict"] == want,
        "evaluate answered {status}: {answer}"
    );
    Ok(())
}

fn publish(agg: &Aggregator, dir: &Path, env: &str) -> anyhow::Result<()> {
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY)?;
    let out = agg
        .operator_command(&["publish", "--org", "acme", "--project", "web", "--env", env])
        .arg("--policy")
        .arg(&policy)
        .output()?;
    ensure!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs an analytics command; its exit code and stdout (followed by stderr when it failed).
fn run(agg: &Aggregator, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let out = agg.operator_command(args).output()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    Ok((out.status.code(), text))
}

/// Runs an analytics command with `--json`-style output; its stdout as JSON.
fn json_of(agg: &Aggregator, args: &[&str]) -> anyhow::Result<Value> {
    let out = agg.operator_command(args).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{args:?} exited {:?}: {stdout}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).with_context(|| format!("{args:?}: {stdout}"))
}

#[test]
fn families_posture_and_the_change_gate_from_real_agents() -> anyhow::Result<()> {
    let postgres = crate::support::fresh_postgres()?;
    scenario(None).context("sqlite")?;
    if let Some((_rt, db)) = &postgres {
        scenario(Some(db.url())).context("postgres")?;
    }
    Ok(())
}

fn scenario(database_url: Option<&str>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), database_url)?;
    publish(&agg, tmp.path(), "prod")?;
    publish(&agg, tmp.path(), "dev")?;
    let mut agents = Vec::new();
    for (n, env) in [(1, "prod"), (2, "prod"), (3, "dev")] {
        let mut agent = Agent::enroll(
            &agg,
            &tmp.path().join(format!("a{n}")),
            "acme",
            "web",
            env,
            &format!("agent-{n}"),
        )?;
        agent.start()?;
        agent.wait_active_epoch(1, "bundle active")?;
        agents.push(agent);
    }
    // Reads everywhere (allowed, low risk), one destructive delete in prod (blocked).
    let mut decisions = 0;
    for agent in &agents {
        for n in 0..20 {
            decide(
                agent,
                intent("tool.read", &format!("/srv/{}/{n}", agent.id), "low", false),
                "allow",
            )?;
            decisions += 1;
        }
    }
    decide(
        &agents[0],
        intent("tool.delete", "/srv/db", "high", true),
        "block",
    )?;
    decisions += 1;

    // The upkeep folds within a tick of the records arriving.
    let families = wait_for(PATIENCE, "every decision folded into families", || {
        let v = json_of(&agg, &["families", "--org", "acme", "--json"]).ok()?;
        let total: u64 = v["families"]
            .as_array()?
            .iter()
            .map(|f| f["occurrences"].as_u64().unwrap_or(0))
            .sum();
        (total == decisions).then_some(v)
    })?;
    ensure!(families["total"] == 2, "{families}");
    // This aggregator indexed every row itself, after its upkeep took the lead: each range was folded from what
    // its ingest handed the upkeep (`analysis::feed`), none read back.
    let (rows, fed) = wait_for(PATIENCE, "the folded rows counted", || {
        let rows = agg.metric("gait_aggregator_analysis_rows_total").ok()?;
        let fed = agg.metric("gait_aggregator_analysis_fed_rows_total").ok()?;
        (rows >= decisions).then_some((rows, fed))
    })?;
    ensure!(
        rows == decisions && fed == rows,
        "folded {rows} rows of {decisions} decisions, {fed} of them from the feed"
    );
    let top = &families["families"][0];
    ensure!(
        top["tool"] == "tool.delete" && top["verdict"] == "block",
        "{top}"
    );
    ensure!(top["destructive"] == true && top["risk_class"] == "high");
    ensure!(top["production_environments"] == 1, "{top}");
    let noise = &families["families"][1];
    ensure!(
        noise["occurrences"] == 60 && noise["agents"] == 3,
        "{noise}"
    );
    ensure!(top["priority"]["score"].as_u64() > noise["priority"]["score"].as_u64());

    // One family by its dedup key: its fingerprint inputs and suggestions.
    let key = top["dedup_key"].as_str().context("dedup key")?;
    let one = json_of(&agg, &["family", "--org", "acme", key, "--json"])?;
    ensure!(one["inputs"]["matched_rule"] == "no-delete", "{one}");
    ensure!(
        one["inputs"]["reason_codes"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("delete_blocked"))),
        "{one}"
    );
    ensure!(
        one["suggestions"].as_array().is_some_and(|s| !s.is_empty()),
        "{one}"
    );
    let (code, text) = run(&agg, &["family", "--org", "acme", key])?;
    ensure!(code == Some(0) && text.contains("suggestion"), "{text}");

    // The CSV export: a header and one row per family, with the evidence digests.
    let (code, csv) = run(&agg, &["families", "--org", "acme", "--csv"])?;
    ensure!(code == Some(0), "{csv}");
    let rows: Vec<&str> = csv.lines().collect();
    ensure!(
        rows.len() == 3 && rows[0].starts_with("scope,family,"),
        "{csv}"
    );
    let digest = one["representatives"][0]
        .as_str()
        .context("a representative")?;
    ensure!(rows[1].contains(digest), "{csv}");

    let posture = json_of(&agg, &["posture", "--org", "acme", "--json"])?;
    ensure!(posture["decisions"] == decisions, "{posture}");
    ensure!(posture["by_verdict"]["block"] == 1, "{posture}");
    ensure!(posture["agents"]["agents"] == 3, "{posture}");
    let (code, text) = run(&agg, &["posture", "--org", "acme", "--project", "web"])?;
    ensure!(
        code == Some(0)
            && text.contains("tool.delete")
            && text.contains("no runpack in the window listed a tool")
            && text.contains("no runpack call in the window")
            && !text.contains("0 of 0"),
        "{text}"
    );

    // Verdict-mix shifts: every decision is today's, so no day has a baseline to shift from. The answer names its
    // window and rule; a window out of range is refused (exit 65). (The rule and its causes are proven on days of
    // records in aggregator/tests/analysis.rs.)
    let shifts = json_of(
        &agg,
        &[
            "verdict-shifts",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
            "--json",
        ],
    )?;
    ensure!(
        shifts["scope"] == "acme/web/prod"
            && shifts["shifts"] == json!([])
            && shifts["rule"]["threshold_per_mille"] == 200
            && shifts["to_day"]
                .as_i64()
                .zip(shifts["from_day"].as_i64())
                .map(|(t, f)| t - f)
                == Some(29),
        "{shifts}"
    );
    let (code, text) = run(
        &agg,
        &[
            "verdict-shifts",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
            "--tool",
            "tool.read",
        ],
    )?;
    ensure!(
        code == Some(0) && text.contains("0 verdict-mix shift(s)"),
        "{code:?} {text}"
    );
    let (code, text) = run(
        &agg,
        &[
            "verdict-shifts",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
            "--days",
            "0",
        ],
    )?;
    ensure!(code == Some(65) && text.contains("days"), "{code:?} {text}");

    // The gate: prod has an open critical family; dev has only allowed reads; qa has nothing.
    let (code, out) = run(
        &agg,
        &[
            "change-gate",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
        ],
    )?;
    ensure!(
        code == Some(1) && out.contains("FAIL") && out.contains(key),
        "{code:?} {out}"
    );
    let (code, out) = run(
        &agg,
        &[
            "change-gate",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "dev",
            "--json",
        ],
    )?;
    ensure!(code == Some(0), "{code:?} {out}");
    let gate: Value = serde_json::from_str(&out)?;
    ensure!(gate["pass"] == true, "{gate}");
    // A bad scope is refused with exit 65.
    let (code, _) = run(&agg, &["families", "--org", "acme", "--limit", "0"])?;
    ensure!(code == Some(65), "{code:?}");

    // An operator merges the noise into the block: one family counting both; a split gives both back.
    let noise_key = noise["dedup_key"].as_str().context("noise key")?;
    let (code, out) = run(
        &agg,
        &[
            "family-merge",
            "--org",
            "acme",
            noise_key,
            "--into",
            key,
            "--reason",
            "one incident",
        ],
    )?;
    ensure!(
        code == Some(0) && out.contains("now reads as part of"),
        "{code:?} {out}"
    );
    let merged = json_of(&agg, &["families", "--org", "acme", "--json"])?;
    ensure!(
        merged["total"] == 1
            && merged["families"][0]["occurrences"] == decisions
            && merged["families"][0]["merged"].as_array().map(Vec::len) == Some(1),
        "{merged}"
    );
    // Merging it again conflicts (exit 65 with the reason).
    let (code, out) = run(
        &agg,
        &[
            "family-merge",
            "--org",
            "acme",
            noise_key,
            "--into",
            key,
            "--reason",
            "again",
        ],
    )?;
    ensure!(
        code == Some(65) && out.contains("already merged"),
        "{code:?} {out}"
    );
    let (code, out) = run(&agg, &["family-split", "--org", "acme", noise_key])?;
    ensure!(
        code == Some(0) && out.contains("its own family again"),
        "{code:?} {out}"
    );
    let split = json_of(&agg, &["families", "--org", "acme", "--json"])?;
    ensure!(split == families, "{split} != {families}");

    // Call-level coverage: a CI job pushes Gait's conformance runpack (search, fetch, summarize) from prod. The
    // agent decides the runpack's own search call (the same arguments, so the same arguments digest Gait
    // recorded) and a fetch of another URL, both at high risk and blocked by the default verdict. The search call
    // is gated; the fetch call is not, and fetch is a high-risk tool here: a high-risk ungated path.
    let gated_search = json!({
        "schema_id": "gait.gate.intent_request", "schema_version": "1.0.0",
        "created_at": "2026-12-01T09:00:00Z", "producer_version": "e2e",
        "tool_name": "tool.search", "args": {"query": "gait demo: offline verification"}, "targets": [],
        "context": {"identity": "worker", "workspace": "/srv/app", "risk_class": "high"}
    });
    let mut other_fetch = gated_search.clone();
    other_fetch["tool_name"] = json!("tool.fetch");
    other_fetch["args"] = json!({"url": "https://example.local/other"});
    decide(&agents[0], gated_search, "block")?;
    decide(&agents[0], other_fetch, "block")?;
    let runpack = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/artifacts/runpack_run_demo.zip");
    let out = gait_e2e::hermetic("gait-agent")
        .current_dir(&agents[0].dir)
        .arg("push")
        .arg("--config")
        .arg(agents[0].dir.join("agent.yaml"))
        .arg(&runpack)
        .output()?;
    ensure!(
        out.status.success(),
        "push: {}",
        gait_e2e::output_text(&out)
    );
    let coverage = wait_for(
        PATIENCE,
        "the runpack's calls and the decisions folded",
        || {
            let p = json_of(
                &agg,
                &[
                    "posture",
                    "--org",
                    "acme",
                    "--project",
                    "web",
                    "--env",
                    "prod",
                    "--json",
                ],
            )
            .ok()?;
            let c = p["coverage"].clone();
            // The call merge runs a second (`GAIT_CALL_MERGE_LAG_SECONDS`) behind the fold.
            (c["calls_seen"] == 3
                && p["by_verdict"]["block"] == 3
                && c["calls_gated"].as_u64().is_some_and(|n| n >= 1))
            .then_some(c)
        },
    )?;
    ensure!(
        coverage["calls_gated"] == 1
            && coverage["call_coverage_per_mille"] == 333
            && coverage["high_risk_ungated"]
                == json!([{"tool": "tool.fetch", "ungated_calls": 1, "calls": 1,
                           "runpack_sha256": coverage["high_risk_ungated"][0]["runpack_sha256"]}])
            && coverage["high_risk_ungated"][0]["runpack_sha256"]
                .as_str()
                .is_some_and(|s| s.len() == 64),
        "{coverage}"
    );
    let (code, text) = run(
        &agg,
        &[
            "posture",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
        ],
    )?;
    ensure!(
        code == Some(0)
            && text.contains("1 of 3 runpack calls had a gate decision")
            && text.contains("tool.fetch: 1 of 1 calls went through no gate"),
        "{text}"
    );
    Ok(())
}
