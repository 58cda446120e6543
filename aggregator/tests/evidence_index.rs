//! The evidence index over the real router, intake and store (SQLite, and PostgreSQL when configured): batches
//! committed through the intake are indexed by the real extraction; lookups by policy digest, verdict, stage,
//! run id and digest; the org and environment routes keep to their scope, and an operator bound to one
//! environment never reads another's rows; pages chain with the cursor; every bad parameter is a 400 naming it.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::sync::Arc;

use anyhow::{Context as _, Result, ensure};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use gait_aggregator::api::router;
use gait_aggregator::auth::{AdminTokenMode, Authorizer, Operator, Permission, Principal};
use gait_aggregator::evidence::query::{EvidenceIndex, EvidenceQuery, Listing};
use gait_aggregator::fleet::intake::Intake;
use gait_canon::sign::SigningKey;
use gait_store::testing::TestStore;
use gait_store::{
    AgentHello, AgentKey, BindingScope, BindingSource, NewRecord, RoleBinding, SubjectKind, Tenant,
};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::common;

const TOKEN: &str = "test-admin-token";
const NOW: i64 = 1_764_000_000_000;

fn hex64(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

fn key(env: &str, agent: &str) -> AgentKey {
    AgentKey::new(
        Tenant::from_parts("acme", "web", env).expect("tenant"),
        agent.parse().expect("agent id"),
    )
}

fn hash(seq: u64, salt: u8) -> [u8; 32] {
    if seq == 0 {
        return [0; 32];
    }
    let mut h = [salt; 32];
    h[..8].copy_from_slice(&seq.to_be_bytes());
    h
}

fn record(seq: u64, salt: u8, kind: &str, payload: Value) -> NewRecord {
    NewRecord {
        seq,
        prev_hash: hash(seq - 1, salt),
        hash: hash(seq, salt),
        class: "decision".into(),
        kind: kind.into(),
        created_unix_ms: NOW,
        bundle_epoch: None,
        bundle_digest: None,
        bundle_since_ms: None,
        payload: payload.to_string().into_bytes(),
    }
}

/// A decision payload as the agent's local API writes it.
fn decision(verdict: &str, policy: char, stage: &str) -> Value {
    json!({
        "schema": "gait.agent.gate_decision",
        "tool_name": "fs.write",
        "verdict": verdict,
        "enforced_verdict": verdict,
        "policy_verdict": verdict,
        "reason_codes": [],
        "violations": [],
        "matched_rule": "r1",
        "enforcement": "policy",
        "stale": false,
        "policy_name": "prod.yaml",
        "policy_digest": hex64(policy),
        "intent_digest": hex64('1'),
        "trace_id": "0123456789abcdef01234567",
        "trace_key_id": "k1",
        "stage": {"stage": stage, "candidate": null, "candidate_digest": null, "active_verdict": verdict,
                  "candidate_verdict": null, "would_have_blocked": false},
        "agent_decided_unix_ms": NOW,
    })
}

/// An `artifact.runpack` payload (`gait_artifact::evidence::ArtifactRecord`).
fn runpack(run_id: &str, sha: char) -> Value {
    json!({
        "schema": gait_artifact::evidence::ARTIFACT_RECORD_SCHEMA,
        "artifact_kind": "runpack",
        "sha256": hex64(sha),
        "size_bytes": 1234,
        "file_name": format!("runpack_{run_id}.zip"),
        "source": "push",
        "signature_status": "verified",
        "run_ids": [run_id],
        "producer_version": "0.9.0",
    })
}

async fn commit(intake: &Intake, k: &AgentKey, records: &[NewRecord]) -> Result<()> {
    intake.commit_batch(k, records, &[], &[], NOW).await?;
    Ok(())
}

async fn get(app: &axum::Router, uri: &str) -> Result<(StatusCode, Value)> {
    let req = Request::builder()
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())?;
    let resp = app.clone().oneshot(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes)?))
}

fn seqs(page: &Value) -> Vec<(String, u64)> {
    page["records"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["env"].as_str().unwrap_or_default().to_owned(),
                r["seq"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// prod/agent-1: block (policy a), allow (policy b, observe), a runpack of run_7; dev/agent-2: block (policy
/// a) and a runpack of run_7 with another digest; a producer's own record that is not indexed.
async fn seed(db: &TestStore) -> Result<()> {
    let store = db.store();
    let intake = Intake::new(store.clone());
    for k in [key("prod", "agent-1"), key("dev", "agent-2")] {
        store
            .agent_connected(&k, &hello(), NOW)
            .await
            .context("connect")?;
    }
    commit(
        &intake,
        &key("prod", "agent-1"),
        &[
            record(1, 1, "gate.decision", decision("block", 'a', "enforce")),
            record(2, 1, "gate.decision", decision("allow", 'b', "observe")),
            record(3, 1, "artifact.runpack", runpack("run_7", 'e')),
            record(4, 1, "producer.own", json!({"verdict": "block"})),
        ],
    )
    .await?;
    commit(
        &intake,
        &key("dev", "agent-2"),
        &[
            record(1, 2, "gate.decision", decision("block", 'a', "enforce")),
            record(2, 2, "artifact.runpack", runpack("run_7", 'f')),
        ],
    )
    .await?;
    ensure!(store.count_records(&key("prod", "agent-1")).await? == 4);
    Ok(())
}

fn hello() -> AgentHello {
    AgentHello {
        cert_serial: "0a1b2c".parse().expect("serial"),
        cert_not_after_unix_ms: NOW + 86_400_000,
        cert_issuer: String::new(),
        remote_addr: "10.0.0.7:4433".into(),
        agent_version: "0.1.0".into(),
        active_bundle: None,
        received_bundle: None,
        outbox_depth: 0,
        shed_total: 0,
    }
}

gait_store::store_tests!(
    lookups_find_decisions_and_artifacts_within_the_route_scope,
    an_environment_operator_reads_only_its_environment,
    pages_chain_with_the_cursor,
    every_bad_parameter_is_a_400_naming_it,
);

async fn lookups_find_decisions_and_artifacts_within_the_route_scope(db: &TestStore) -> Result<()> {
    seed(db).await?;
    let app = router(common::app_state(db, TOKEN, SigningKey::generate()));
    let org = "/v1/orgs/acme/evidence";
    let prod = "/v1/orgs/acme/projects/web/envs/prod/evidence";

    let (status, page) = get(&app, &format!("{org}/records")).await?;
    ensure!(status == StatusCode::OK, "{page}");
    // Five indexed (the producer's own record is committed, not indexed), newest first.
    ensure!(
        seqs(&page)
            == vec![
                ("dev".into(), 2),
                ("dev".into(), 1),
                ("prod".into(), 3),
                ("prod".into(), 2),
                ("prod".into(), 1)
            ],
        "{page}"
    );
    ensure!(page["next_cursor"].is_null(), "{page}");

    let by_policy = format!("{org}/records?policy_digest={}&verdict=block", hex64('a'));
    let (_, page) = get(&app, &by_policy).await?;
    ensure!(
        seqs(&page) == vec![("dev".into(), 1), ("prod".into(), 1)],
        "{page}"
    );
    let first = &page["records"][1];
    ensure!(
        first["agent_id"] == "agent-1"
            && first["class"] == "decision"
            && first["kind"] == "gate.decision"
            && first["stage"] == "enforce"
            && first["tool_name"] == "fs.write"
            && first["policy_name"] == "prod.yaml",
        "{first}"
    );
    let (_, page) = get(&app, &format!("{org}/records?stage=observe")).await?;
    ensure!(seqs(&page) == vec![("prod".into(), 2)], "{page}");
    let (_, page) = get(&app, &format!("{org}/records?env=dev&kind=gate.decision")).await?;
    ensure!(seqs(&page) == vec![("dev".into(), 1)], "{page}");

    let (_, page) = get(&app, &format!("{org}/artifacts?run_id=run_7")).await?;
    ensure!(
        seqs(&page) == vec![("dev".into(), 2), ("prod".into(), 3)],
        "{page}"
    );
    let artifact = &page["records"][1];
    ensure!(
        artifact["sha256"] == hex64('e')
            && artifact["artifact_kind"] == "runpack"
            && artifact["run_ids"] == json!(["run_7"])
            && artifact["size_bytes"] == 1234,
        "{artifact}"
    );
    let (_, page) = get(
        &app,
        &format!("{org}/artifacts?sha256={}&kind=runpack", hex64('f')),
    )
    .await?;
    ensure!(seqs(&page) == vec![("dev".into(), 2)], "{page}");

    // The environment route sees its environment only, whatever it asks for.
    let (_, page) = get(&app, &format!("{prod}/artifacts?run_id=run_7")).await?;
    ensure!(seqs(&page) == vec![("prod".into(), 3)], "{page}");
    let (_, page) = get(&app, &format!("{prod}/records?verdict=block")).await?;
    ensure!(seqs(&page) == vec![("prod".into(), 1)], "{page}");
    // Another org's view is empty.
    let (status, page) = get(&app, "/v1/orgs/globex/evidence/records").await?;
    ensure!(status == StatusCode::OK && seqs(&page).is_empty(), "{page}");
    Ok(())
}

fn env_operator() -> (Authorizer, Arc<Principal>) {
    let auth = Authorizer::new(AdminTokenMode::Disabled);
    auth.load(&[RoleBinding {
        id: 1,
        kind: SubjectKind::User,
        subject: "dana".into(),
        role: "auditor".into(),
        scope: BindingScope::env(
            "acme".parse().expect("org"),
            "web".parse().expect("project"),
            "prod".parse().expect("env"),
        ),
        source: BindingSource::Api,
        created_by: "test".into(),
        created_unix_ms: 0,
    }]);
    let who = Arc::new(Principal::Operator(Operator {
        issuer: "https://idp.example".into(),
        subject: "dana".into(),
        groups: Vec::new(),
    }));
    (auth, who)
}

async fn an_environment_operator_reads_only_its_environment(db: &TestStore) -> Result<()> {
    seed(db).await?;
    let index = EvidenceIndex::new(db.store().clone());
    let (auth, dana) = env_operator();
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    let dev = Tenant::from_parts("acme", "web", "dev")?;
    let org: gait_store::Org = "acme".parse()?;
    // Bound to prod: not to dev, not to the whole org.
    ensure!(
        auth.authorize(dana.clone(), Permission::EvidenceRead, dev)
            .is_err()
    );
    ensure!(
        auth.authorize(dana.clone(), Permission::EvidenceRead, org)
            .is_err()
    );
    let caller = auth
        .authorize(dana, Permission::EvidenceRead, prod)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let all = index
        .list(&caller, Listing::Records, &EvidenceQuery::default())
        .await?;
    ensure!(
        all.records.len() == 3 && all.records.iter().all(|r| r.env.as_str() == "prod"),
        "{all:?}"
    );
    let artifacts = index
        .list(
            &caller,
            Listing::Artifacts,
            &EvidenceQuery {
                run_id: Some("run_7".into()),
                ..EvidenceQuery::default()
            },
        )
        .await?;
    ensure!(
        artifacts.records.len() == 1 && artifacts.records[0].env.as_str() == "prod",
        "{artifacts:?}"
    );
    // Naming the other environment is refused, not answered.
    let other = index
        .list(
            &caller,
            Listing::Records,
            &EvidenceQuery {
                env: Some("dev".into()),
                ..EvidenceQuery::default()
            },
        )
        .await;
    ensure!(other.is_err(), "{other:?}");
    Ok(())
}

async fn pages_chain_with_the_cursor(db: &TestStore) -> Result<()> {
    let store = db.store();
    let intake = Intake::new(store.clone());
    let k = key("prod", "agent-1");
    store.agent_connected(&k, &hello(), NOW).await?;
    let records: Vec<NewRecord> = (1..=25)
        .map(|s| record(s, 1, "gate.decision", decision("allow", 'a', "enforce")))
        .collect();
    commit(&intake, &k, &records).await?;
    let app = router(common::app_state(db, TOKEN, SigningKey::generate()));
    let mut seen = Vec::new();
    let mut uri = "/v1/orgs/acme/projects/web/envs/prod/evidence/records?limit=10".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = get(&app, &uri).await?;
        ensure!(status == StatusCode::OK, "{page}");
        pages += 1;
        seen.extend(seqs(&page).into_iter().map(|(_, s)| s));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                uri = format!(
                    "/v1/orgs/acme/projects/web/envs/prod/evidence/records?limit=10&cursor={cursor}"
                );
            }
            None => break,
        }
        ensure!(pages < 10, "the cursor does not advance");
    }
    ensure!(pages == 3, "{pages} pages");
    ensure!(seen == (1..=25).rev().collect::<Vec<u64>>(), "{seen:?}");
    Ok(())
}

async fn every_bad_parameter_is_a_400_naming_it(db: &TestStore) -> Result<()> {
    let app = router(common::app_state(db, TOKEN, SigningKey::generate()));
    let org = "/v1/orgs/acme/evidence";
    let env = "/v1/orgs/acme/projects/web/envs/prod/evidence";
    let cases = [
        (format!("{org}/records?verdict=maybe"), "verdict"),
        (format!("{org}/records?stage=canary"), "stage"),
        (format!("{org}/records?kind=artifact.zip"), "kind"),
        (format!("{org}/artifacts?kind=gate.decision"), "kind"),
        (
            format!("{org}/records?policy_digest=sha256:abc"),
            "policy_digest",
        ),
        (
            format!("{org}/artifacts?sha256={}", "G".repeat(64)),
            "sha256",
        ),
        (format!("{org}/records?limit=1001"), "limit"),
        (format!("{org}/records?limit=0"), "limit"),
        (format!("{org}/records?limit=many"), "limit"),
        (format!("{org}/records?cursor=bm90LWEtY3Vyc29y"), "cursor"),
        (format!("{org}/records?from=2000&to=1000"), "from"),
        (format!("{org}/records?to=tomorrow"), "to"),
        (format!("{org}/records?agent=Agent%201"), "agent"),
        (format!("{org}/records?project=Web"), "project"),
        (format!("{org}/records?colour=red"), "colour"),
        (format!("{env}/records?env=dev"), "env"),
    ];
    for (uri, field) in cases {
        let (status, body) = get(&app, &uri).await?;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            status == StatusCode::BAD_REQUEST && message.contains(field),
            "{uri}: {status} {body}"
        );
    }
    Ok(())
}
