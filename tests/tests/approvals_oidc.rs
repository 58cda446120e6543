//! End to end, on real processes, with several operators signed in at a real OpenID provider
//! (`tests/oidc/provider.js`, the OpenID-certified `oidc-provider` package; each client there is one operator
//! whose access tokens carry its own `groups`): role bindings by group from the config file (approver for
//! `security` at the org and for `payments-team` at the project, viewer for `observers`), and an approval policy
//! from the config file (`approvals.policies`: quorum 2, one approver from `security` AND one from
//! `payments-team`). The agent's `require_approval` decision raises the request; a viewer gets 403 on approve;
//! one approver approving twice counts once; two members of `security` do not satisfy the AND; a member of each
//! group does, and the issued tokens make the agent's retry pass. Every operator's decision is in the audit log
//! as `oidc:<issuer>#<client id>`, the policy's creation as `config`; a restart with the same file appends no
//! policy entry, and the API cannot overwrite the file's policy (409).
//!
//! The requester rule (the requester never approves) is not exercised here: the agent names its local caller
//! (`uid:<n>`, `token:<id>`), which no OIDC operator is; aggregator/tests/approvals.rs covers it.
//!
//! Needs Node.js (`node`) and `npm ci` in `tests/oidc` (scripts/test.sh runs it). Without node the test is
//! skipped with a loud message — except under `CI=true`, where that is a failure.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gait_e2e::{Agent, Aggregator, OidcProvider, PATIENCE, http_json, wait_for};
use serde_json::{Value, json};

const POLICY: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: allow\nrules:\n  - name: approve-drops\n    priority: 1\n    effect: require_approval\n    match:\n      tool_names: [db.drop]\n";
const REQUESTS: &str = "/v1/orgs/acme/projects/payments/envs/prod/approvals";

/// The real provider, with the operators' clients this test registers.
struct Provider {
    idp: OidcProvider,
}

impl Provider {
    fn start(keys: &Path) -> anyhow::Result<Provider> {
        Ok(Provider {
            idp: OidcProvider::start(keys)?,
        })
    }

    /// A client-credentials access token of operator `client` (its secret is `<client>-secret`).
    fn token(&self, client: &str) -> anyhow::Result<String> {
        let rest = self
            .idp
            .issuer
            .strip_prefix("http://")
            .context("http issuer")?;
        let host = rest.split('/').next().unwrap_or(rest);
        let body = "grant_type=client_credentials&scope=api";
        let basic = STANDARD.encode(format!("{client}:{client}-secret"));
        let mut stream = std::net::TcpStream::connect(host)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "POST /token HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\nauthorization: Basic {basic}\r\n\
             content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        let json_start = raw.find('{').context("token answer without JSON")?;
        let json_end = raw.rfind('}').map_or(raw.len(), |i| i + 1);
        let answer: Value = serde_json::from_str(&raw[json_start..json_end])
            .with_context(|| format!("token answer: {raw}"))?;
        Ok(answer["access_token"]
            .as_str()
            .with_context(|| format!("no access_token for {client}: {answer}"))?
            .to_owned())
    }

    /// The actor the aggregator records for operator `client`.
    fn actor(&self, client: &str) -> String {
        format!("oidc:{}#{client}", self.idp.issuer)
    }
}

fn intent(table: &str) -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-12-01T09:00:00Z",
        "producer_version": "e2e",
        "tool_name": "db.drop",
        "args": {"table": table},
        "targets": [{"kind": "table", "value": table, "operation": "delete", "destructive": true}],
        "arg_provenance": [{"arg_path": "$.table", "source": "user"}],
        "context": {"identity": "payments-bot", "workspace": "/srv/agents/payments", "risk_class": "low",
                    "phase": "apply"}
    })
}

fn evaluate(agent: &Agent, token: &str, body: &Value) -> anyhow::Result<Value> {
    let (status, answer) = http_json(
        "POST",
        &format!("http://{}/v1/gate/evaluate", agent.api),
        Some(token),
        Some(body.clone()),
    )?;
    ensure!(status == 200, "evaluate answered {status}: {answer}");
    Ok(answer)
}

/// `POST …/approvals/{id}/approve` as the bearer of `token`.
fn approve(agg: &Aggregator, token: &str, id: u64) -> anyhow::Result<(u16, Value)> {
    http_json(
        "POST",
        &agg.url(&format!("{REQUESTS}/{id}/approve")),
        Some(token),
        Some(json!({"reason": "CHG-42"})),
    )
}

/// The two-group approval policy with `quorum`, as an `approvals.policies` entry.
fn drops_policy(quorum: u32) -> String {
    format!(
        "    - {{ name: drops, org: acme, project: payments, tools: [db.*], quorum: {quorum}, \
         groups: [security, payments-team], max_token_ttl_seconds: 600 }}\n"
    )
}

/// The config file: OIDC at `issuer`, role bindings by group and `policies` (`approvals.policies` entries).
fn config_yaml(issuer: &str, policies: &str) -> String {
    format!(
        "auth:\n  admin_token: admin\n  oidc:\n    issuer: {issuer}\n    audience: gait-aggregator\n  bindings:\n    \
         - {{ group: security, role: approver, org: acme }}\n    \
         - {{ group: payments-team, role: approver, org: acme, project: payments }}\n    \
         - {{ group: observers, role: viewer, org: acme }}\n\
         approvals:\n  policies:\n{policies}"
    )
}

#[test]
fn several_oidc_operators_meet_a_config_policy_of_quorum_two_across_two_groups()
-> anyhow::Result<()> {
    if !OidcProvider::ready("tests/tests/approvals_oidc.rs") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let provider = Provider::start(&tmp.path().join("idp-keys"))?;
    let config = tmp.path().join("aggregator.yaml");
    std::fs::write(&config, config_yaml(&provider.idp.issuer, &drops_policy(2)))?;
    let config_arg = config.to_string_lossy().into_owned();
    let mut agg = Aggregator::start_with(
        &tmp.path().join("agg"),
        None,
        "127.0.0.1:0".parse()?,
        "127.0.0.1:0".parse()?,
        &["--config", &config_arg],
    )?;

    // The file's policy is in force, owned by the config; the API cannot overwrite it.
    let (status, listed) = agg.get("/v1/approval-policies?org=acme&project=payments")?;
    ensure!(status == 200, "{status} {listed}");
    let policy = &listed["policies"][0];
    ensure!(
        policy["name"] == "drops"
            && policy["source"] == "config"
            && policy["rules"]["quorum"] == 2
            && policy["rules"]["groups"] == json!(["payments-team", "security"]),
        "{listed}"
    );
    let (status, refused) = http_json(
        "PUT",
        &agg.url("/v1/approval-policies"),
        Some(&agg.token),
        Some(
            json!({"org": "acme", "project": "payments", "name": "drops", "rules": {"quorum": 1}}),
        ),
    )?;
    ensure!(
        status == 409 && refused.to_string().contains("config file"),
        "{status} {refused}"
    );
    let cli = gait_e2e::hermetic("gait-aggregator")
        .args([
            "approvals",
            "policy",
            "set",
            "--org",
            "acme",
            "--project",
            "payments",
            "--name",
            "drops",
            "--quorum",
            "1",
            "--server",
        ])
        .arg(agg.url(""))
        .arg("--token-file")
        .arg(agg.data_dir.join("admin.token"))
        .output()?;
    let stderr = String::from_utf8_lossy(&cli.stderr);
    ensure!(
        !cli.status.success() && stderr.contains("config file"),
        "the CLI overwrote the config's policy: {:?} {stderr}",
        cli.status
    );
    // `approvals policy remove` is refused on it as well, and removes a policy the API set.
    let remove = |name: &str| -> anyhow::Result<std::process::Output> {
        Ok(gait_e2e::hermetic("gait-aggregator")
            .args([
                "approvals",
                "policy",
                "remove",
                "--org",
                "acme",
                "--project",
                "payments",
                "--name",
            ])
            .arg(name)
            .arg("--server")
            .arg(agg.url(""))
            .arg("--token-file")
            .arg(agg.data_dir.join("admin.token"))
            .output()?)
    };
    let out = remove("drops")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("config file"),
        "the CLI removed the config's policy: {:?} {stderr}",
        out.status
    );
    let (status, body) = http_json(
        "PUT",
        &agg.url("/v1/approval-policies"),
        Some(&agg.token),
        Some(
            json!({"org": "acme", "project": "payments", "name": "scratch", "rules": {"quorum": 1}}),
        ),
    )?;
    ensure!(status == 200, "{status} {body}");
    let out = remove("scratch")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("scratch removed"),
        "{:?} {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let (status, published) = agg.publish("acme", "payments", "prod", &[("gate.yaml", POLICY)])?;
    ensure!(status == 201, "publish {status}: {published}");
    let mut agent = Agent::enroll(
        &agg,
        &tmp.path().join("a"),
        "acme",
        "payments",
        "prod",
        "edge",
    )?;
    agent.start()?;
    wait_for(PATIENCE, "bundle active at the agent", || {
        agent.active_epoch().filter(|e| *e >= 1)
    })
    .with_context(|| agent.log())?;
    let local = agent.api_token()?;

    // The runtime asks; the agent answers require_approval and raises the request upstream.
    let first = evaluate(&agent, &local, &intent("ledger"))?;
    ensure!(first["verdict"] == "require_approval", "{first}");
    let request = wait_for(PATIENCE, "the approval request upstream", || {
        let (s, v) = agg.get(&format!("{REQUESTS}?status=pending")).ok()?;
        (s == 200).then_some(())?;
        v["approvals"].as_array()?.first().cloned()
    })
    .with_context(|| agent.log())?;
    ensure!(
        request["intent_digest"] == first["intent_digest"]
            && request["approval_policy"]["name"] == "drops",
        "{request}"
    );
    let id = request["id"].as_u64().context("request id")?;

    let [ana, ben, cho, dee] = ["sec-ana", "sec-ben", "pay-cho", "view-dee"].map(|client| {
        provider
            .token(client)
            .with_context(|| format!("token of {client}"))
    });
    let (ana, ben, cho, dee) = (ana?, ben?, cho?, dee?);

    // A viewer's token is accepted (the provider's keys are fetched on the first one: it lists the org's agents)
    // but a viewer may not approve.
    wait_for(PATIENCE, "the viewer's token accepted", || {
        let (s, _) = http_json("GET", &agg.url("/v1/orgs/acme/agents"), Some(&dee), None).ok()?;
        (s == 200).then_some(())
    })
    .with_context(|| agg.log())?;
    let (status, body) = approve(&agg, &dee, id)?;
    ensure!(status == 403, "a viewer approved: {status} {body}");

    // ana (security) approves twice: recorded once, still pending.
    let (status, once) = approve(&agg, &ana, id)?;
    ensure!(status == 200 && once["recorded"] == true, "{status} {once}");
    let (status, twice) = approve(&agg, &ana, id)?;
    ensure!(
        status == 200
            && twice["recorded"] == false
            && twice["request"]["status"] == "pending"
            && twice["request"]["decisions"].as_array().map(Vec::len) == Some(1),
        "a second approval by one operator counted: {status} {twice}"
    );

    // ben is in security too: two distinct approvers, but payments-team has none of its own.
    let (status, same_group) = approve(&agg, &ben, id)?;
    ensure!(
        status == 200
            && same_group["recorded"] == true
            && same_group["request"]["status"] == "pending"
            && same_group["request"]["missing"]
                .as_str()
                .is_some_and(|m| m.contains("payments-team")),
        "two members of one group satisfied the AND: {status} {same_group}"
    );
    let waiting = evaluate(&agent, &local, &intent("ledger"))?;
    ensure!(waiting["verdict"] == "require_approval", "{waiting}");

    // cho (payments-team) completes it: approved, one token per approver.
    let (status, done) = approve(&agg, &cho, id)?;
    ensure!(
        status == 200
            && done["request"]["status"] == "approved"
            && done["request"]["tokens"].as_array().map(Vec::len) == Some(3),
        "{status} {done}"
    );
    let allowed = wait_for(PATIENCE, "the retry allowed at the agent", || {
        let answer = evaluate(&agent, &local, &intent("ledger")).ok()?;
        (answer["verdict"] == "allow").then_some(answer)
    })
    .with_context(|| agent.log())?;
    ensure!(
        allowed["intent_digest"] == first["intent_digest"],
        "{allowed}"
    );

    // The audit log names each operator by issuer and client id, and the config as the policy's author.
    let entries = agg.audit_actions()?;
    let actors = |action: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|(a, _)| a == action)
            .filter_map(|(_, e)| e["actor"].as_str().map(str::to_owned))
            .collect()
    };
    ensure!(
        actors("approval.approve")
            == [
                provider.actor("sec-ana"),
                provider.actor("sec-ben"),
                provider.actor("pay-cho")
            ],
        "{:?}",
        actors("approval.approve")
    );
    ensure!(
        actors("approval.issue") == [provider.actor("pay-cho")],
        "{:?}",
        actors("approval.issue")
    );
    ensure!(
        actors("approval_policy.set") == ["config", "admin-token"],
        "{:?}",
        actors("approval_policy.set")
    );

    // A restart with the same file changes no policy and appends no policy entry.
    let before = entries.len();
    agent.stop();
    agg.restart()?;
    let after = agg.audit_actions()?;
    let new: Vec<&String> = after[before..].iter().map(|(a, _)| a).collect();
    ensure!(
        !new.iter().any(|a| a.starts_with("approval_policy.")),
        "a restart with the same file changed a policy: {new:?}"
    );
    let (_, listed) = agg.get("/v1/approval-policies?org=acme&project=payments")?;
    ensure!(listed["policies"][0]["version"] == 1, "{listed}");

    // An edited file: the restart replaces the policy with its next version, audited with both digests.
    std::fs::write(&config, config_yaml(&provider.idp.issuer, &drops_policy(3)))?;
    agg.restart()?;
    let (_, listed) = agg.get("/v1/approval-policies?org=acme&project=payments")?;
    ensure!(
        listed["policies"][0]["version"] == 2
            && listed["policies"][0]["rules"]["quorum"] == 3
            && listed["policies"][0]["source"] == "config",
        "{listed}"
    );
    let policy_entries = |entries: &[(String, Value)]| -> Vec<Value> {
        entries
            .iter()
            .filter(|(a, e)| a.starts_with("approval_policy.") && e["actor"] == "config")
            .map(|(_, e)| e.clone())
            .collect()
    };
    let entries = policy_entries(&agg.audit_actions()?);
    let [created, edited] = entries.as_slice() else {
        bail!("not one creation and one edit: {entries:?}");
    };
    ensure!(
        edited["action"] == "approval_policy.set"
            && edited["actor"] == "config"
            && edited["before"] == created["after"]
            && edited["after"]
                .as_str()
                .is_some_and(|a| a.starts_with("sha256:"))
            && edited["after"] != edited["before"],
        "{edited}"
    );

    // A file without the policy: the restart removes it (no longer listed), audited with the digest before.
    std::fs::write(
        &config,
        config_yaml(&provider.idp.issuer, "    []\n").replace("policies:\n    []", "policies: []"),
    )?;
    agg.restart()?;
    let (_, listed) = agg.get("/v1/approval-policies?org=acme&project=payments")?;
    ensure!(
        listed["policies"].as_array().is_some_and(Vec::is_empty),
        "{listed}"
    );
    let entries = policy_entries(&agg.audit_actions()?);
    let removed = entries.last().context("no policy entries")?;
    ensure!(
        entries.len() == 3
            && removed["action"] == "approval_policy.remove"
            && removed["actor"] == "config"
            && removed["before"] == edited["after"]
            && removed.get("after").is_none_or(Value::is_null),
        "{entries:?}"
    );
    Ok(())
}
