//! End to end: role bindings on the real binary. The config file's `auth.bindings` are applied at start and
//! replaced as a set when the file changes; `gait-aggregator access grant|list|revoke` manage API bindings;
//! a config binding cannot be revoked through the API; `auth.admin_token` decides what the admin token may do
//! (`bootstrap`: role bindings only, `disabled`: refused).
#![allow(clippy::disallowed_methods)] // tests spawn freely

use std::path::Path;
use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_e2e::{Aggregator, hermetic};
use serde_json::Value;

fn access(agg: &Aggregator, args: &[&str]) -> anyhow::Result<Output> {
    let server = format!("http://{}", agg.http);
    let token = agg.data_dir.join("admin.token");
    hermetic("gait-aggregator")
        .arg("access")
        .args(args)
        .arg("--server")
        .arg(&server)
        .arg("--token-file")
        .arg(&token)
        .output()
        .context("run gait-aggregator access")
}

fn json_of(out: &Output) -> anyhow::Result<Value> {
    ensure!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("--json output is JSON")
}

fn write_config(path: &Path, admin_token: &str, bindings: &str) -> anyhow::Result<()> {
    std::fs::write(
        path,
        format!("auth:\n  admin_token: {admin_token}\n  bindings:\n{bindings}"),
    )?;
    Ok(())
}

fn start(dir: &Path, config: &Path) -> anyhow::Result<Aggregator> {
    let any = "127.0.0.1:0".parse()?;
    let config = config.to_string_lossy().into_owned();
    Aggregator::start_with(dir, None, any, any, &["--config", &config])
}

#[test]
fn bindings_from_config_and_cli_and_what_the_admin_token_may_do() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("aggregator.yaml");
    let data = tmp.path().join("agg");
    write_config(
        &config,
        "admin",
        "    - { group: sre, role: viewer, org: acme }\n    - { user: carol, role: auditor }\n",
    )?;
    let mut agg = start(&data, &config)?;

    // The config bindings are there, marked as such.
    let listed = json_of(&access(&agg, &["list", "--json"])?)?;
    let bindings = listed["bindings"].as_array().context("bindings")?;
    ensure!(bindings.len() == 2, "{listed}");
    ensure!(bindings.iter().all(|b| b["source"] == "config"), "{listed}");
    let sre = bindings
        .iter()
        .find(|b| b["subject"] == "sre")
        .context("sre binding")?;
    ensure!(
        sre["scope"]["org"] == "acme" && sre["role"] == "viewer",
        "{sre}"
    );

    // Grant through the CLI: created once, then "already granted" with the same id.
    let granted = json_of(&access(
        &agg,
        &[
            "grant",
            "--json",
            "--user",
            "alice",
            "--role",
            "policy_author",
            "--org",
            "acme",
            "--project",
            "web",
        ],
    )?)?;
    ensure!(granted["created"] == true, "{granted}");
    let alice_id = granted["binding"]["id"].as_u64().context("id")?;
    let again = json_of(&access(
        &agg,
        &[
            "grant",
            "--json",
            "--user",
            "alice",
            "--role",
            "policy_author",
            "--org",
            "acme",
            "--project",
            "web",
        ],
    )?)?;
    ensure!(
        again["created"] == false && again["binding"]["id"] == alice_id,
        "{again}"
    );
    // The grant is in the audit log once, with who granted what where.
    let alice_key = alice_id.to_string();
    let (status, audit) = agg.get("/v1/audit/entries?limit=1000")?;
    ensure!(status == 200, "{status} {audit}");
    let grants: Vec<&Value> = audit["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "binding.grant" && e["actor"] == "admin-token")
        .collect();
    ensure!(
        grants.len() == 1,
        "binding.grant entries by the API: {audit}"
    );
    ensure!(
        grants[0]["actor"] == "admin-token"
            && grants[0]["target"]["org"] == "acme"
            && grants[0]["target"]["project"] == "web"
            && grants[0]["target"]["id"] == alice_key.as_str()
            && grants[0]["details"]["role"] == "policy_author",
        "{}",
        grants[0]
    );
    // The table names the binding, and listing inside a scope filters: acme/web holds only alice's.
    let table = access(&agg, &["list"])?;
    let text = String::from_utf8_lossy(&table.stdout);
    ensure!(
        text.contains("policy_author") && text.contains("acme/web") && text.contains("admin-token"),
        "{text}"
    );
    let inside = json_of(&access(
        &agg,
        &["list", "--json", "--org", "acme", "--project", "web"],
    )?)?;
    ensure!(
        inside["bindings"].as_array().map(Vec::len) == Some(1),
        "{inside}"
    );
    // Bad input is refused naming what is wrong.
    let bad = access(&agg, &["grant", "--group", "x", "--role", "root"])?;
    ensure!(!bad.status.success(), "unknown role accepted");
    ensure!(
        String::from_utf8_lossy(&bad.stderr).contains("platform_admin"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // A config binding is removed in the file, not through the API.
    let sre_id = sre["id"].as_u64().context("id")?.to_string();
    let refused = access(&agg, &["revoke", &sre_id])?;
    ensure!(!refused.status.success());
    ensure!(
        String::from_utf8_lossy(&refused.stderr).contains("config file"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Restart with a changed file: sre goes, dave comes, alice (API) stays; starting twice changes nothing.
    agg.stop();
    write_config(
        &config,
        "admin",
        "    - { user: carol, role: auditor }\n    - { group: dave, role: approver, org: acme }\n",
    )?;
    for _ in 0..2 {
        agg.restart()?;
        let listed = json_of(&access(&agg, &["list", "--json"])?)?;
        let subjects: Vec<&str> = listed["bindings"]
            .as_array()
            .context("bindings")?
            .iter()
            .filter_map(|b| b["subject"].as_str())
            .collect();
        ensure!(
            subjects.len() == 3
                && subjects.contains(&"alice")
                && subjects.contains(&"carol")
                && subjects.contains(&"dave"),
            "{listed}"
        );
        agg.stop();
    }
    agg.restart()?;
    // The file's changes are in the audit log once each, by `config`: sre and carol at the first start, sre out
    // and dave in at the next; the starts that changed nothing added nothing.
    let by_config: Vec<(String, String)> = agg
        .audit_actions()?
        .into_iter()
        .filter(|(_, e)| e["actor"] == "config")
        .map(|(action, e)| {
            (
                action,
                e["details"]["subject"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("binding.grant", "sre"),
        ("binding.grant", "carol"),
        ("binding.revoke", "sre"),
        ("binding.grant", "dave"),
    ]
    .iter()
    .map(|(a, s)| ((*a).to_owned(), (*s).to_owned()))
    .collect();
    ensure!(
        by_config == expected,
        "config binding entries: {by_config:?}"
    );
    let revoked = json_of(&access(&agg, &["revoke", "--json", &alice_id.to_string()])?)?;
    ensure!(revoked["binding"]["subject"] == "alice", "{revoked}");
    let (_, audit) = agg.get("/v1/audit/entries?limit=1000")?;
    ensure!(
        audit["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["action"] == "binding.revoke" && e["target"]["id"] == alice_key.as_str()),
        "no binding.revoke entry: {audit}"
    );
    let gone = access(&agg, &["revoke", &alice_id.to_string()])?;
    ensure!(
        gone.status.code() == Some(1) && String::from_utf8_lossy(&gone.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );

    // Bootstrap: the admin token manages bindings and nothing else.
    agg.stop();
    write_config(
        &config,
        "bootstrap",
        "    - { user: carol, role: auditor }\n",
    )?;
    agg.restart()?;
    let (status, body) = agg.publish(
        "acme",
        "web",
        "prod",
        &[("p.yaml", "default_verdict: allow\n")],
    )?;
    ensure!(status == 403, "bootstrap token published: {status} {body}");
    ensure!(
        body["error"]["code"] == "forbidden"
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("bundle.publish")),
        "{body}"
    );
    ensure!(
        agg.metric("gait_aggregator_http_authz_denials_total{permission=\"bundle.publish\"}")? >= 1,
        "denial not counted"
    );
    json_of(&access(
        &agg,
        &[
            "grant",
            "--json",
            "--group",
            "ops",
            "--role",
            "platform_admin",
        ],
    )?)?;

    // Disabled: refused like any wrong token.
    agg.stop();
    write_config(
        &config,
        "disabled",
        "    - { user: carol, role: auditor }\n",
    )?;
    agg.restart()?;
    let (status, body) = agg.get("/v1/access/bindings")?;
    ensure!(status == 401, "disabled token answered {status} {body}");
    Ok(())
}
