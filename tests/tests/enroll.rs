//! Enrollment end to end with the real binaries: `gait-aggregator join-token create`, `gait-agent enroll`, then
//! `gait-agent run` connects with the certificate it was issued and ships; expired, used-up and other-scope
//! tokens enroll nothing.
#![allow(clippy::disallowed_methods)] // tests read the clock and spawn freely

use std::path::Path;
use std::process::Output;

use anyhow::{Context as _, Result, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, hermetic, http_json, wait_for};
use serde_json::{Value, json};

/// An agent with its configuration, registry key and local API set up but no certificate yet: the files
/// `pki issue-agent` wrote are removed, so only enrollment can give it one.
fn unenrolled_agent(agg: &Aggregator, dir: &Path, env: &str, id: &str) -> Result<Agent> {
    let agent = Agent::enroll(agg, dir, "acme", "web", env, id)?;
    for name in ["agent.pem", "agent.key", "ca.pem"] {
        std::fs::remove_file(dir.join(name))?;
    }
    Ok(agent)
}

/// Mints a join token through the API.
fn mint(agg: &Aggregator, env: &str, ttl_seconds: u64, uses: u32) -> Result<Value> {
    let (status, v) = http_json(
        "POST",
        &agg.url(&format!(
            "/v1/orgs/acme/projects/web/envs/{env}/join-tokens"
        )),
        Some(&agg.token),
        Some(json!({ "ttl_seconds": ttl_seconds, "uses": uses })),
    )?;
    ensure!(status == 201, "mint: {status} {v}");
    Ok(v)
}

/// Runs `gait-agent enroll` for the agent in `dir` (files per its agent.yaml), expecting acme/web/`expect`.
fn enroll(agg: &Aggregator, dir: &Path, token: &str, id: &str, expect: &str) -> Result<Output> {
    Ok(hermetic("gait-agent")
        .arg("enroll")
        .arg("--aggregator")
        .arg(format!("http://{}", agg.http))
        .arg("--config")
        .arg(dir.join("agent.yaml"))
        .args([
            "--agent-id",
            id,
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            expect,
            "--json",
        ])
        .env("GAIT_JOIN_TOKEN", token)
        .output()?)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn an_agent_enrolled_with_a_join_token_connects_and_ships() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    // The CLI prints the token alone on stdout.
    let out = hermetic("gait-aggregator")
        .args([
            "join-token",
            "create",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
        ])
        .args(["--ttl", "10m", "--uses", "1"])
        .arg("--server")
        .arg(format!("http://{}", agg.http))
        .arg("--token-file")
        .arg(agg.data_dir.join("admin.token"))
        .output()?;
    ensure!(out.status.success(), "join-token create: {}", text(&out));
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    ensure!(token.starts_with("gjt1_"), "{token}");

    let dir = tmp.path().join("a1");
    let mut agent = unenrolled_agent(&agg, &dir, "prod", "e2e-enrolled")?;
    let out = enroll(&agg, &dir, &token, "e2e-enrolled", "prod")?;
    ensure!(out.status.success(), "enroll: {}", text(&out));
    let enrolled: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        enrolled["agent"] == "spiffe://gait.local/org/acme/project/web/env/prod/agent/e2e-enrolled",
        "{enrolled}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("agent.key"))?
            .permissions()
            .mode();
        ensure!(mode & 0o777 == 0o600, "agent.key mode {mode:o}");
    }
    agent.start()?;
    let seq = agent.append("block", "app.decision", json!({"n": 1}))?;
    ensure!(seq.is_some(), "the record was shed");
    let records = wait_for(PATIENCE, "the enrolled agent's record committed", || {
        agg.records("acme", "web", "prod", "e2e-enrolled")
            .ok()
            .filter(|r| !r.is_empty())
    })
    .with_context(|| agent.log())?;
    ensure!(records.len() == 1, "{records:?}");

    // The aggregator knows it by the certificate enrollment issued.
    let listed = agg.agents("acme")?;
    let row = listed
        .iter()
        .find(|a| a["agent_id"] == "e2e-enrolled")
        .context("agent not listed")?;
    ensure!(
        row["cert_serial"] == enrolled["serial"],
        "{row} vs {enrolled}"
    );
    ensure!(
        row["cert_not_after_unix_ms"].as_i64()
            == enrolled["not_after_unix"].as_i64().map(|s| s * 1000),
        "expiry column: {row} vs {enrolled}"
    );

    // Minting the token and issuing the certificate are in the audit log, with their actors.
    let actions = agg.audit_actions()?;
    let find = |action: &str| actions.iter().find(|(a, _)| a == action).map(|(_, e)| e);
    let minted = find("join_token.create").context("no join_token.create entry")?;
    ensure!(minted["actor"] == "admin-token", "{minted}");
    let issued = find("pki.enroll").context("no pki.enroll entry")?;
    ensure!(
        issued["target"]["id"] == enrolled["serial"]
            && issued["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("agent:")),
        "{issued}"
    );

    // The one use is gone: a second agent enrolls nothing.
    let dir2 = tmp.path().join("a2");
    unenrolled_agent(&agg, &dir2, "prod", "e2e-second")?;
    let out = enroll(&agg, &dir2, &token, "e2e-second", "prod")?;
    ensure!(out.status.code() == Some(65), "second use: {}", text(&out));
    ensure!(text(&out).contains("no uses left"), "{}", text(&out));
    ensure!(!dir2.join("agent.pem").exists() && !dir2.join("agent.key").exists());
    Ok(())
}

#[test]
fn expired_and_other_scope_tokens_enroll_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let dir = tmp.path().join("a1");
    unenrolled_agent(&agg, &dir, "prod", "e2e-refused")?;

    // A token for another environment than the agent means to join: refused, and its use is kept.
    let dev = mint(&agg, "dev", 600, 1)?;
    let token = dev["token"].as_str().context("token")?;
    let out = enroll(&agg, &dir, token, "e2e-refused", "prod")?;
    ensure!(out.status.code() == Some(65), "other scope: {}", text(&out));
    ensure!(text(&out).contains("acme/web/dev"), "{}", text(&out));
    ensure!(!dir.join("agent.pem").exists() && !dir.join("agent.key").exists());
    let (_, listed) = agg.get("/v1/orgs/acme/projects/web/envs/dev/join-tokens")?;
    ensure!(listed["join_tokens"][0]["uses_left"] == 1, "{listed}");

    // An expired token: minted for one second, used once the aggregator lists it as expired.
    let short = mint(&agg, "prod", 1, 5)?;
    wait_for(PATIENCE, "the token to expire", || {
        let (_, v) = agg
            .get("/v1/orgs/acme/projects/web/envs/prod/join-tokens")
            .ok()?;
        (v["join_tokens"][0]["state"] == "expired").then_some(())
    })?;
    let out = enroll(
        &agg,
        &dir,
        short["token"].as_str().context("token")?,
        "e2e-refused",
        "prod",
    )?;
    ensure!(out.status.code() == Some(65), "expired: {}", text(&out));
    ensure!(text(&out).contains("expired"), "{}", text(&out));
    ensure!(!dir.join("agent.pem").exists());

    // A revoked token.
    let revoked = mint(&agg, "prod", 600, 5)?;
    let id = revoked["token_id"].as_str().context("id")?;
    let (status, v) = http_json(
        "DELETE",
        &agg.url(&format!(
            "/v1/orgs/acme/projects/web/envs/prod/join-tokens/{id}"
        )),
        Some(&agg.token),
        None,
    )?;
    ensure!(status == 200, "{status} {v}");
    let out = enroll(
        &agg,
        &dir,
        revoked["token"].as_str().context("token")?,
        "e2e-refused",
        "prod",
    )?;
    ensure!(
        out.status.code() == Some(65) && text(&out).contains("revoked"),
        "{}",
        text(&out)
    );
    ensure!(!dir.join("agent.pem").exists());
    ensure!(
        agg.agents("acme")?
            .iter()
            .all(|a| a["agent_id"] != "e2e-refused")
    );
    Ok(())
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[test]
fn an_enrolled_agent_renews_across_an_aggregator_restart_and_keeps_shipping() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // Certificates of 60 s: renewed 35 s after issue (a third of the 75 s window, backdating included, left).
    let config = tmp.path().join("aggregator.yaml");
    std::fs::write(&config, "enroll:\n  certificate_validity_seconds: 60\n")?;
    let config_arg = config.to_string_lossy().into_owned();
    let mut agg = Aggregator::start_with(
        &tmp.path().join("agg"),
        None,
        "127.0.0.1:0".parse()?,
        "127.0.0.1:0".parse()?,
        &["--config", &config_arg],
    )?;
    let token = mint(&agg, "prod", 600, 1)?;
    let dir = tmp.path().join("a1");
    let mut agent = unenrolled_agent(&agg, &dir, "prod", "e2e-renewing")?;
    let out = enroll(
        &agg,
        &dir,
        token["token"].as_str().context("token")?,
        "e2e-renewing",
        "prod",
    )?;
    ensure!(out.status.success(), "enroll: {}", text(&out));
    let enrolled: Value = serde_json::from_slice(&out.stdout)?;
    let first_not_after = enrolled["not_after_unix"].as_i64().context("not_after")?;
    let first_cert = std::fs::read(dir.join("agent.pem"))?;
    let first_key = std::fs::read(dir.join("agent.key"))?;
    agent.start()?;
    let status = agent.status()?;
    ensure!(
        status["certificate"]["not_after"] == first_not_after,
        "{status}"
    );

    // Restarted before the renewal is due: the agent reconnects and renews over its new connection.
    agg.restart()?;
    let renewed = wait_for(2 * PATIENCE, "the agent to renew its certificate", || {
        let now = std::fs::read(dir.join("agent.pem")).ok()?;
        (now != first_cert).then_some(now)
    })
    .with_context(|| format!("{}\n{}", agent.log(), agg.log()))?;
    ensure!(
        std::fs::read(dir.join("agent.key"))? != first_key,
        "the key was not rotated"
    );
    ensure!(!renewed.is_empty());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("agent.key"))?
            .permissions()
            .mode();
        ensure!(mode & 0o777 == 0o600, "agent.key mode {mode:o}");
    }
    let status = wait_for(PATIENCE, "status to show the new expiry", || {
        let s = agent.status().ok()?;
        (s["certificate"]["not_after"].as_i64()? > first_not_after).then_some(s)
    })?;
    ensure!(status["certificate"]["renewal_due"] == false, "{status}");
    ensure!(
        agg.metric("gait_aggregator_certificates_issued_total{kind=\"renew\"}")? == 1,
        "the renewal was not counted once"
    );

    // Once the first certificate has expired, a restarted aggregator takes the agent back with the new one.
    wait_for(2 * PATIENCE, "the first certificate to expire", || {
        (unix_now() > first_not_after + 1).then_some(())
    })?;
    agg.restart()?;
    agent.append("block", "app.decision", json!({"after": "renewal"}))?;
    wait_for(PATIENCE, "the record shipped after the renewal", || {
        agg.records("acme", "web", "prod", "e2e-renewing")
            .ok()
            .filter(|r| !r.is_empty())
    })
    .with_context(|| format!("{}\n{}", agent.log(), agg.log()))?;
    let row = agg
        .agents("acme")?
        .into_iter()
        .find(|a| a["agent_id"] == "e2e-renewing")
        .context("agent not listed")?;
    ensure!(
        row["cert_serial"] != enrolled["serial"],
        "still the enrolled certificate: {row}"
    );
    Ok(())
}

/// `GAIT_DATABASE_URL=<url>` when the aggregator runs on PostgreSQL (the CA commands need its database).
fn database_env(agg: &Aggregator) -> Vec<(&'static str, String)> {
    agg.database_url
        .iter()
        .map(|url| ("GAIT_DATABASE_URL", url.clone()))
        .collect()
}

/// Runs `gait-aggregator pki rotate-ca` (with `extra` flags) on the aggregator's data directory.
fn rotate_ca(agg: &Aggregator, extra: &[&str]) -> Result<()> {
    let out = hermetic("gait-aggregator")
        .args(["pki", "rotate-ca"])
        .args(extra)
        .arg("--data-dir")
        .arg(&agg.data_dir)
        .envs(database_env(agg))
        .output()?;
    ensure!(out.status.success(), "rotate-ca {extra:?}: {}", text(&out));
    Ok(())
}

/// Appends one record through `agent` and waits until the aggregator committed `count` records of it.
fn ships(agg: &Aggregator, agent: &Agent, count: usize) -> Result<()> {
    agent.append("block", "app.decision", json!({"count": count}))?;
    wait_for(PATIENCE, "the agent's record committed", || {
        agg.records(&agent.org, &agent.project, &agent.env, &agent.id)
            .ok()
            .filter(|r| r.len() >= count)
    })
    .with_context(|| {
        format!(
            "agent {} log:\n{}\naggregator log:\n{}",
            agent.id,
            agent.log(),
            agg.log()
        )
    })?;
    Ok(())
}

#[test]
fn agents_offline_through_a_whole_ca_rotation_reconnect_after_it() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    // One agent enrolled with a join token, one hand-minted with `pki issue-agent`: both hold only the old CA.
    let token = mint(&agg, "prod", 600, 2)?;
    let token = token["token"].as_str().context("token")?.to_owned();
    let enrolled_dir = tmp.path().join("enrolled");
    let mut enrolled = unenrolled_agent(&agg, &enrolled_dir, "prod", "e2e-sleeper")?;
    let out = enroll(&agg, &enrolled_dir, &token, "e2e-sleeper", "prod")?;
    ensure!(out.status.success(), "enroll: {}", text(&out));
    let mut minted = Agent::enroll(
        &agg,
        &tmp.path().join("minted"),
        "acme",
        "web",
        "prod",
        "e2e-minted",
    )?;
    for agent in [&mut enrolled, &mut minted] {
        agent.start()?;
        ships(&agg, agent, 1)?;
        agent.stop();
    }

    // Rotation starts while both are stopped: a new CA issues, the old one stays trusted.
    agg.stop();
    rotate_ca(&agg, &[])?;
    agg.restart()?;
    // An agent enrolled during the overlap gets both CAs and connects.
    let fresh_dir = tmp.path().join("fresh");
    let mut fresh = unenrolled_agent(&agg, &fresh_dir, "prod", "e2e-fresh")?;
    let out = enroll(&agg, &fresh_dir, &token, "e2e-fresh", "prod")?;
    ensure!(
        out.status.success(),
        "enroll during the overlap: {}",
        text(&out)
    );
    let bundle = std::fs::read_to_string(fresh_dir.join("ca.pem"))?;
    ensure!(bundle.matches("BEGIN CERTIFICATE").count() == 2, "{bundle}");
    fresh.start()?;
    ships(&agg, &fresh, 1)?;

    // The rotation finishes: the server certificate moves to the new CA, the old CA key is gone.
    agg.stop();
    rotate_ca(&agg, &["--finish"])?;
    ensure!(!agg.data_dir.join("pki").join("ca-previous.key").exists());
    agg.restart()?;
    // Both phases are in the audit log, by the local operator who ran them.
    let rotations: Vec<Value> = agg
        .audit_actions()?
        .into_iter()
        .filter(|(action, _)| action == "pki.rotate_ca")
        .map(|(_, entry)| entry)
        .collect();
    ensure!(
        rotations.len() == 2
            && rotations[0]["target"]["id"] == "start"
            && rotations[1]["target"]["id"] == "finish"
            && rotations
                .iter()
                .all(|e| e["actor"].as_str().is_some_and(|a| a.starts_with("local:"))),
        "rotation entries: {rotations:?}"
    );

    // The sleepers come back holding only the old CA and certificates it issued: they verify the server
    // through the cross-signed CA and are still trusted, so they connect and ship.
    for (agent, dir) in [
        (&mut enrolled, &enrolled_dir),
        (&mut minted, &tmp.path().join("minted")),
    ] {
        let ca = std::fs::read_to_string(dir.join("ca.pem"))?;
        ensure!(
            ca.matches("BEGIN CERTIFICATE").count() == 1,
            "{} holds more than the old CA",
            agent.id
        );
        agent.start()?;
        ships(&agg, agent, 2)?;
    }
    // The agent of the overlap reconnected to the restarted aggregator too.
    ships(&agg, &fresh, 2)?;
    Ok(())
}

/// Runs `gait-aggregator pki retire-ca --json` (with `extra` flags) on the aggregator's data directory.
fn retire_ca(agg: &Aggregator, extra: &[&str]) -> Result<(Option<i32>, Value, String)> {
    let out = hermetic("gait-aggregator")
        .args(["pki", "retire-ca", "--json"])
        .args(extra)
        .arg("--data-dir")
        .arg(&agg.data_dir)
        .envs(database_env(agg))
        .output()?;
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok((out.status.code(), json, text(&out)))
}

/// The agent ids in a `retire-ca --json` list (`holders` or `cut_off`).
fn agent_ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["agent_id"].as_str())
        .collect()
}

/// `gait-aggregator agents --org acme --json` through the CLI: the row of agent `id`.
fn listed(agg: &Aggregator, id: &str) -> Result<Value> {
    let out = hermetic("gait-aggregator")
        .args(["agents", "--org", "acme", "--json"])
        .arg("--server")
        .arg(format!("http://{}", agg.http))
        .arg("--token-file")
        .arg(agg.data_dir.join("admin.token"))
        .output()?;
    ensure!(out.status.success(), "agents: {}", text(&out));
    let all: Value = serde_json::from_slice(&out.stdout)?;
    all["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["agent_id"] == id)
        .cloned()
        .with_context(|| format!("{id} not listed: {all}"))
}

/// On SQLite and, with `GAIT_TEST_DATABASE_URL` set (as `scripts/test.sh` does), on PostgreSQL.
/// One test per backend, so the two (each waits some 35 s for a renewal) run side by side.
mod retiring_the_old_ca_waits_for_its_agents_then_refuses_their_certificates {
    use anyhow::{Context as _, Result};

    #[test]
    fn sqlite() -> Result<()> {
        super::retire_on(None).context("sqlite")
    }

    #[test]
    fn postgres() -> Result<()> {
        match crate::support::fresh_postgres()? {
            Some((_rt, db)) => super::retire_on(Some(db.url())).context("postgres"),
            None => Ok(()),
        }
    }
}

fn retire_on(database_url: Option<&str>) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // Enrolled certificates of 60 s (the shortest allowed): renewal is due 35 s after issue (a third of the 75 s
    // window, backdating included, left). The renewing agent is stopped right after its first record, long
    // before that, so it is seen on the old CA first.
    let config = tmp.path().join("aggregator.yaml");
    std::fs::write(&config, "enroll:\n  certificate_validity_seconds: 60\n")?;
    let config_arg = config.to_string_lossy().into_owned();
    let mut agg = Aggregator::start_with(
        &tmp.path().join("agg"),
        database_url,
        "127.0.0.1:0".parse()?,
        "127.0.0.1:0".parse()?,
        &["--config", &config_arg],
    )?;
    // One agent enrolled with a join token (it renews during the overlap), one hand-minted (it never does).
    let token = mint(&agg, "prod", 600, 1)?;
    let renewing_dir = tmp.path().join("renewing");
    let mut renewing = unenrolled_agent(&agg, &renewing_dir, "prod", "e2e-renewing")?;
    let out = enroll(
        &agg,
        &renewing_dir,
        token["token"].as_str().context("token")?,
        "e2e-renewing",
        "prod",
    )?;
    ensure!(out.status.success(), "enroll: {}", text(&out));
    let old_cert = std::fs::read(renewing_dir.join("agent.pem"))?;
    renewing.start()?;
    ships(&agg, &renewing, 1)?;
    // Stopped well before its renewal is due: it holds the old CA's certificate until it runs again.
    renewing.stop();
    let mut minted = Agent::enroll(
        &agg,
        &tmp.path().join("minted"),
        "acme",
        "web",
        "prod",
        "e2e-minted",
    )?;
    minted.start()?;
    ships(&agg, &minted, 1)?;

    // The hand-minted certificate's expiry is in the inventory as soon as the agent connected.
    let not_after = minted.status()?["certificate"]["not_after"]
        .as_i64()
        .context("the agent reports no certificate expiry")?;
    let row = listed(&agg, "e2e-minted")?;
    ensure!(
        row["cert_not_after_unix_ms"].as_i64() == Some(not_after * 1000),
        "hand-minted expiry: {row} (agent says {not_after})"
    );
    ensure!(
        row["cert_issuer"]
            .as_str()
            .is_some_and(|i| i.contains("Gait fleet CA")),
        "{row}"
    );
    // And in the table: 89 whole days left on a 90-day certificate issued just now.
    let out = hermetic("gait-aggregator")
        .args(["agents", "--org", "acme"])
        .arg("--server")
        .arg(format!("http://{}", agg.http))
        .arg("--token-file")
        .arg(agg.data_dir.join("admin.token"))
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let cert_column = header.iter().position(|c| *c == "CERT(days)");
    let minted_row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("e2e-minted "))
        .unwrap_or("")
        .split_whitespace()
        .collect();
    ensure!(
        out.status.success() && cert_column.is_some_and(|i| minted_row.get(i) == Some(&"89")),
        "agents table: {table}"
    );

    // Retiring before any rotation retires nothing.
    let (code, _, said) = retire_ca(&agg, &[])?;
    ensure!(
        code == Some(1) && said.contains("nothing to retire"),
        "{code:?} {said}"
    );

    // The whole rotation; the hand-minted agent stays connected through it (via the cross certificate).
    agg.stop();
    rotate_ca(&agg, &[])?;
    let (code, _, said) = retire_ca(&agg, &[])?;
    ensure!(
        code == Some(1) && said.contains("not finished"),
        "{code:?} {said}"
    );
    rotate_ca(&agg, &["--finish"])?;
    agg.restart()?;
    ships(&agg, &minted, 2)?;

    // Both agents still hold only the old CA's certificates: retiring is refused (EX_TEMPFAIL), naming them.
    let (code, refused, said) = retire_ca(&agg, &[])?;
    ensure!(code == Some(75), "retire with holders: {code:?} {said}");
    ensure!(
        refused["retired"] == false
            && agent_ids(&refused["holders"]) == ["e2e-minted", "e2e-renewing"],
        "{refused}"
    );
    ensure!(
        said.contains("acme/web/prod/e2e-minted") && said.contains("acme/web/prod/e2e-renewing"),
        "{said}"
    );
    let pki = agg.data_dir.join("pki");
    ensure!(pki.join("ca-previous.pem").exists() && pki.join("ca-bundle.pem").exists());

    // The enrolled agent comes back and renews from the new CA: it no longer holds the retired one.
    renewing.start()?;
    wait_for(3 * PATIENCE, "the agent to renew its certificate", || {
        let now = std::fs::read(renewing_dir.join("agent.pem")).ok()?;
        (now != old_cert).then_some(())
    })
    .with_context(|| format!("{}\n{}", renewing.log(), agg.log()))?;
    let (code, refused, said) = retire_ca(&agg, &[])?;
    ensure!(code == Some(75), "retire with one holder: {code:?} {said}");
    ensure!(
        agent_ids(&refused["holders"]) == ["e2e-minted"],
        "{refused}"
    );

    // Forced: the retired CA and the cross certificate leave the trust; the cut-off agent is named and audited.
    let (code, retired, said) = retire_ca(&agg, &["--force"])?;
    ensure!(code == Some(0), "retire --force: {code:?} {said}");
    ensure!(
        retired["retired"] == true && agent_ids(&retired["cut_off"]) == ["e2e-minted"],
        "{retired}"
    );
    for gone in ["ca-previous.pem", "ca-cross.pem", "ca-bundle.pem"] {
        ensure!(!pki.join(gone).exists(), "{gone} survived the retirement");
    }
    let entry = agg
        .audit_actions()?
        .into_iter()
        .find(|(action, _)| action == "pki.retire_ca")
        .map(|(_, entry)| entry)
        .context("no pki.retire_ca entry")?;
    ensure!(
        entry["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("local:"))
            && entry["details"]["forced"] == true,
        "{entry}"
    );

    // From the next start the old CA's certificate is refused at the handshake (no session resumes past the
    // retirement); the renewed agent connects and ships.
    let refused_before =
        agg.metric("gait_aggregator_connections_refused_total{stage=\"handshake\"}")?;
    agg.restart()?;
    ships(&agg, &renewing, 2)?;
    wait_for(PATIENCE, "the old CA's agent to be refused", || {
        let now = agg
            .metric("gait_aggregator_connections_refused_total{stage=\"handshake\"}")
            .ok()?;
        (now > refused_before).then_some(())
    })
    .with_context(|| format!("{}\n{}", minted.log(), agg.log()))?;
    let tries = minted.reconnects()?;
    wait_for(PATIENCE, "the old CA's agent to fail twice more", || {
        (minted.reconnects().ok()? >= tries + 2).then_some(())
    })
    .with_context(|| minted.log())?;
    ensure!(minted.status()?["connected"] == false, "{}", minted.log());
    minted.append("block", "app.decision", json!({"after": "retire"}))?;
    ensure!(
        agg.records("acme", "web", "prod", "e2e-minted")?.len() == 2,
        "a record of the cut-off agent arrived"
    );
    // Even an agent that trusts the new CA is refused by the aggregator while it presents the old CA's
    // certificate: that CA is no longer a trust anchor.
    minted.stop();
    std::fs::copy(pki.join("ca.pem"), tmp.path().join("minted").join("ca.pem"))?;
    let refused_before =
        agg.metric("gait_aggregator_connections_refused_total{stage=\"handshake\"}")?;
    minted.start()?;
    wait_for(
        PATIENCE,
        "the aggregator to refuse the old CA's certificate",
        || {
            let now = agg
                .metric("gait_aggregator_connections_refused_total{stage=\"handshake\"}")
                .ok()?;
            (now > refused_before && minted.reconnects().ok()? >= 2).then_some(())
        },
    )
    .with_context(|| format!("{}\n{}", minted.log(), agg.log()))?;
    ensure!(minted.status()?["connected"] == false, "{}", minted.log());
    ensure!(
        agg.records("acme", "web", "prod", "e2e-minted")?.len() == 2,
        "a record of the cut-off agent arrived"
    );
    let row = listed(&agg, "e2e-renewing")?;
    let renewed_not_after = renewing.status()?["certificate"]["not_after"]
        .as_i64()
        .context("renewed expiry")?;
    ensure!(
        row["cert_not_after_unix_ms"].as_i64() == Some(renewed_not_after * 1000)
            && row["cert_issuer"] != listed(&agg, "e2e-minted")?["cert_issuer"],
        "{row}"
    );
    Ok(())
}
