//! Fleet analytics over the real intake, evidence index, upkeep job and store (SQLite, and PostgreSQL when
//! configured): the same corpus ingested in order, and shuffled with redeliveries and upkeep at random points,
//! gives identical families, scores and posture; one destructive block in production outranks ten thousand
//! low-risk allows; an auditor of one project sees nothing of another in any report, export or family; two
//! upkeep runs racing count each row once; the HTTP routes answer JSON, CSV and the change gate, and refuse bad
//! parameters naming them.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use gait_aggregator::analysis::feed::Feed;
use gait_aggregator::analysis::upkeep::{
    CALLS_JOB, MERGE_ROWS, catch_up, catch_up_fed, fold_up, merge_calls_with, unmerged,
};
use gait_aggregator::analysis::{AnalysisError, Analytics, csv_families};
use gait_aggregator::api::router;
use gait_aggregator::auth::{AdminTokenMode, Authorizer, Operator, Permission, Principal};
use gait_aggregator::fleet::intake::Intake;
use gait_aggregator::registry::{BundleDefaults, Registry};
use gait_canon::sign::SigningKey;
use gait_store::testing::TestStore;
use gait_store::{
    AgentHello, AgentKey, AnalysisFilter, ApprovalState, BindingScope, BindingSource, CallMarking,
    NewApprovalRequest, NewRecord, RoleBinding, Store, SubjectKind, Tenant,
};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::common;

const TOKEN: &str = "test-admin-token";
const HOUR: i64 = 3_600_000;
/// Gaps in ids settle at once here: tests have no writer in flight when they fold.
const SETTLED: Duration = Duration::ZERO;

fn now() -> i64 {
    gait_aggregator::clock::unix_ms()
}

fn hex64(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

fn hash(seq: u64, salt: u16) -> [u8; 32] {
    if seq == 0 {
        return [0; 32];
    }
    let mut h = [0u8; 32];
    h[..2].copy_from_slice(&salt.to_be_bytes());
    h[2..10].copy_from_slice(&seq.to_be_bytes());
    h[31] = 1;
    h
}

fn record(seq: u64, salt: u16, kind: &str, created: i64, payload: &Value) -> NewRecord {
    NewRecord {
        seq,
        prev_hash: hash(seq - 1, salt),
        hash: hash(seq, salt),
        class: "decision".into(),
        kind: kind.into(),
        created_unix_ms: created,
        bundle_epoch: None,
        bundle_digest: None,
        bundle_since_ms: None,
        payload: payload.to_string().into_bytes(),
    }
}

/// What one corpus record is.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Low-risk read, allowed.
    AllowRead,
    /// Destructive high-risk delete, blocked.
    BlockDelete,
    /// Egress needing approval.
    ApproveEgress,
    /// Dry run that would have blocked.
    DryRunWrite,
    /// A regress result.
    Regress { pass: bool },
}

const SHAPES: [Shape; 6] = [
    Shape::AllowRead,
    Shape::BlockDelete,
    Shape::ApproveEgress,
    Shape::DryRunWrite,
    Shape::Regress { pass: true },
    Shape::Regress { pass: false },
];

/// A decision payload as the agent's local API writes it (with its intent profile).
fn decision(
    tool: &str,
    verdict: &str,
    codes: &[&str],
    rule: &str,
    profile: Value,
    intent: char,
) -> Value {
    json!({
        "schema": "gait.agent.gate_decision",
        "tool_name": tool,
        "verdict": verdict,
        "enforced_verdict": verdict,
        "policy_verdict": verdict,
        "reason_codes": codes,
        "violations": [],
        "matched_rule": rule,
        "enforcement": "policy",
        "stale": false,
        "policy_name": "base.yaml",
        "policy_digest": hex64('a'),
        "intent_digest": hex64(intent),
        "trace_id": "0123456789abcdef01234567",
        "trace_key_id": "k1",
        "stage": {"stage": "enforce", "candidate": null, "candidate_digest": null, "active_verdict": verdict,
                  "candidate_verdict": null, "would_have_blocked": false},
        "intent_profile": profile,
        "agent_decided_unix_ms": 0,
    })
}

fn payload(shape: Shape, n: u64) -> (&'static str, Value) {
    // Evidence digests vary per record (so representatives are chosen), fingerprints do not.
    let digest = char::from_digit((n % 16) as u32, 16).unwrap_or('0');
    match shape {
        Shape::AllowRead => (
            "gate.decision",
            decision(
                "fs.read",
                "allow",
                &[],
                "read-ok",
                json!({"risk_class": "low", "endpoint_classes": ["fs.read"]}),
                digest,
            ),
        ),
        Shape::BlockDelete => (
            "gate.decision",
            decision(
                "tool.delete",
                "block",
                &["destructive_operation", "blocked_by_rule"],
                "no-delete",
                json!({"risk_class": "high", "endpoint_classes": ["fs.delete"], "destructive": true}),
                digest,
            ),
        ),
        Shape::ApproveEgress => (
            "gate.decision",
            decision(
                "http.post",
                "require_approval",
                &["approval_required"],
                "egress",
                json!({"risk_class": "medium", "endpoint_classes": ["net.http"]}),
                digest,
            ),
        ),
        Shape::DryRunWrite => (
            "gate.decision",
            decision(
                "fs.write",
                "dry_run",
                &["plan_phase_non_destructive"],
                "plan-only",
                json!({"risk_class": "medium", "endpoint_classes": ["fs.write"]}),
                digest,
            ),
        ),
        Shape::Regress { pass } => (
            "artifact.regress_result",
            json!({
                "schema": gait_artifact::evidence::ARTIFACT_RECORD_SCHEMA,
                "artifact_kind": "regress_result",
                "sha256": hex64(digest),
                "size_bytes": 100,
                "file_name": "regress_result.json",
                "source": "push",
                "signature_status": "not_applicable",
                "run_ids": ["run_1"],
                "producer_version": "0.9.0",
                "regress": {
                    "regress_status": if pass { "pass" } else { "fail" },
                    "regress_fixture_set": "default",
                    "grader_count": 2,
                    "failed_graders": if pass { json!([]) } else { json!(["diff"]) },
                    "top_failure_reason": if pass { "" } else { "result_digest_changed" },
                },
            }),
        ),
    }
}

/// The corpus: per agent (project, env, id, salt), its records in seq order.
fn corpus(org: &str, base: i64) -> Vec<(AgentKey, Vec<NewRecord>)> {
    let agents = [
        ("web", "prod", "a1", 1u16),
        ("web", "prod", "a2", 2),
        ("web", "dev", "a3", 3),
        ("billing", "prod", "b1", 4),
        ("billing", "staging", "b2", 5),
    ];
    agents
        .iter()
        .map(|(project, env, id, salt)| {
            let key = AgentKey::new(
                Tenant::from_parts(org, project, env).expect("tenant"),
                id.parse().expect("agent id"),
            );
            let records = (1..=36u64)
                .map(|seq| {
                    let shape = SHAPES[((seq * 7 + u64::from(*salt)) % 6) as usize];
                    let (kind, p) = payload(shape, seq * 3 + u64::from(*salt));
                    // Spread over three days, so posture has several.
                    let created = base - (seq as i64 % 3) * 24 * HOUR - seq as i64 * 1000;
                    record(seq, *salt, kind, created, &p)
                })
                .collect();
            (key, records)
        })
        .collect()
}

fn hello() -> AgentHello {
    AgentHello {
        cert_serial: "0a1b2c".parse().expect("serial"),
        cert_not_after_unix_ms: now() + 30 * 24 * HOUR,
        cert_issuer: String::new(),
        remote_addr: "10.0.0.7:4433".into(),
        agent_version: "0.1.0".into(),
        active_bundle: None,
        received_bundle: None,
        outbox_depth: 0,
        shed_total: 0,
    }
}

/// A small deterministic generator (xorshift), so a failing order can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Ingests `corpus` in order, whole agents at a time, folding at the end.
async fn ingest_in_order(store: &Store, corpus: &[(AgentKey, Vec<NewRecord>)]) -> Result<()> {
    let intake = Intake::new(store.clone());
    for (key, records) in corpus {
        store.agent_connected(key, &hello(), now()).await?;
        for chunk in records.chunks(10) {
            intake.commit_batch(key, chunk, &[], &[], now()).await?;
        }
    }
    catch_up(store, SETTLED).await?;
    Ok(())
}

/// Ingests `corpus` in a shuffled order: every record shuffled across agents into batches of random size, a
/// third of the batches delivered twice, upkeep folding at random points in between.
async fn ingest_shuffled(
    store: &Store,
    corpus: &[(AgentKey, Vec<NewRecord>)],
    seed: u64,
) -> Result<()> {
    let intake = Intake::new(store.clone());
    let mut rng = Rng(seed.max(1));
    let mut all: Vec<(usize, NewRecord)> = corpus
        .iter()
        .enumerate()
        .flat_map(|(i, (_, rs))| rs.iter().cloned().map(move |r| (i, r)))
        .collect();
    for i in (1..all.len()).rev() {
        let j = rng.below(i + 1);
        all.swap(i, j);
    }
    for (key, _) in corpus {
        store.agent_connected(key, &hello(), now()).await?;
    }
    let mut rest = all.as_slice();
    while !rest.is_empty() {
        let take = (1 + rng.below(12)).min(rest.len());
        let (batch, tail) = rest.split_at(take);
        rest = tail;
        // One agent per batch: group this slice by agent, each group in seq order (a batch is ordered).
        for (agent, (key, _)) in corpus.iter().enumerate() {
            let mut mine: Vec<NewRecord> = batch
                .iter()
                .filter(|(a, _)| *a == agent)
                .map(|(_, r)| r.clone())
                .collect();
            if mine.is_empty() {
                continue;
            }
            mine.sort_by_key(|r| r.seq);
            intake.commit_batch(key, &mine, &[], &[], now()).await?;
            if rng.below(3) == 0 {
                intake.commit_batch(key, &mine, &[], &[], now()).await?;
            }
        }
        if rng.below(4) == 0 {
            catch_up(store, SETTLED).await?;
        }
    }
    catch_up(store, SETTLED).await?;
    Ok(())
}

fn analytics(store: &Store) -> Analytics {
    let registry = Arc::new(Registry::new(
        store.clone(),
        SigningKey::generate(),
        BundleDefaults::default(),
        Arc::new(gait_aggregator::metrics::Metrics::new()),
    ));
    Analytics::new(store.clone(), registry)
}

fn admin() -> (Authorizer, Arc<Principal>) {
    (
        Authorizer::new(AdminTokenMode::Admin),
        Arc::new(Principal::AdminToken),
    )
}

/// The families and posture of `org` as JSON, with the org's name taken out (two orgs hold the same corpus).
async fn snapshot(a: &Analytics, org: &str, at: i64) -> Result<Value> {
    let (auth, who) = admin();
    let caller = auth
        .authorize(
            who,
            Permission::EvidenceRead,
            BindingScope::org(org.parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let families = a.families(&caller, Some(1000)).await?;
    let posture = a.posture(&caller, Some(7), at).await?;
    let mut v = json!({ "families": families, "posture": posture });
    v["families"]["scope"] = Value::Null;
    v["posture"]["scope"] = Value::Null;
    Ok(v)
}

gait_store::store_tests!(
    shuffled_and_redelivered_ingest_gives_identical_families_scores_and_posture,
    one_destructive_block_in_production_outranks_ten_thousand_low_risk_allows,
    an_auditor_of_one_project_sees_nothing_of_another,
    racing_upkeep_counts_each_row_once,
    the_http_routes_answer_json_csv_and_the_gate,
    posture_counts_approval_health_and_freshness_inside_the_scope,
    a_future_dated_record_counts_at_its_arrival_and_a_late_one_at_its_own_time,
    production_is_what_the_operator_names,
    a_merge_reads_two_families_as_one_and_a_split_gives_them_back_audited,
    merged_families_count_shared_agents_once_follow_chains_and_stay_in_scope,
    coverage_names_the_tools_runpacks_called_without_a_gate,
    the_call_merge_gates_a_call_whichever_came_first_and_only_behind_the_fold,
    both_ways_of_marking_calls_gate_the_same_calls,
    fed_merges_gate_the_same_calls_as_merges_that_read_back,
    drift_is_attributed_to_the_policy_the_tool_or_nothing,
    the_feed_folds_exactly_what_reading_the_range_back_folds,
    verdict_shifts_are_attributed_to_the_policy_the_tool_the_stage_or_nothing,
);

async fn shuffled_and_redelivered_ingest_gives_identical_families_scores_and_posture(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let base = now();
    ingest_in_order(store, &corpus("ordered", base)).await?;
    let a = analytics(store);
    let want = snapshot(&a, "ordered", base).await?;
    // The corpus has families of every shape and counts everything once.
    let families = want["families"]["families"]
        .as_array()
        .context("families")?;
    ensure!(families.len() == 5, "{}", want["families"]);
    let total: u64 = families
        .iter()
        .map(|f| f["occurrences"].as_u64().unwrap_or(0))
        .sum();
    let failures = corpus("ordered", base)
        .iter()
        .flat_map(|(_, rs)| rs.iter())
        .filter(|r| String::from_utf8_lossy(&r.payload).contains("\"fail\""))
        .count() as u64;
    let decisions = corpus("ordered", base)
        .iter()
        .flat_map(|(_, rs)| rs.iter())
        .filter(|r| r.kind == "gate.decision")
        .count() as u64;
    ensure!(
        total == decisions + failures,
        "{total} != {decisions} + {failures}"
    );
    ensure!(want["posture"]["decisions"].as_u64() == Some(decisions));
    for seed in [7u64, 1234, 99_991] {
        let org = format!("shuffled-{seed}");
        ingest_shuffled(store, &corpus(&org, base), seed).await?;
        let got = snapshot(&a, &org, base).await?;
        ensure!(got == want, "seed {seed} differs:\n{got:#}\nwant\n{want:#}");
    }
    Ok(())
}

async fn one_destructive_block_in_production_outranks_ten_thousand_low_risk_allows(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let intake = Intake::new(store.clone());
    let base = now();
    // Ten thousand allowed low-risk reads from 20 dev agents.
    for agent in 0..20u16 {
        let key = AgentKey::new(
            Tenant::from_parts("acme", "web", "dev")?,
            format!("noise-{agent}").parse()?,
        );
        store.agent_connected(&key, &hello(), base).await?;
        let records: Vec<NewRecord> = (1..=500u64)
            .map(|seq| {
                let (kind, p) = payload(Shape::AllowRead, seq);
                record(seq, 100 + agent, kind, base - seq as i64, &p)
            })
            .collect();
        for chunk in records.chunks(250) {
            intake.commit_batch(&key, chunk, &[], &[], base).await?;
        }
    }
    // One destructive block in production.
    let key = AgentKey::new(Tenant::from_parts("acme", "web", "prod")?, "p1".parse()?);
    store.agent_connected(&key, &hello(), base).await?;
    let (kind, p) = payload(Shape::BlockDelete, 1);
    intake
        .commit_batch(&key, &[record(1, 999, kind, base, &p)], &[], &[], base)
        .await?;
    let folded = catch_up(store, SETTLED).await?;
    ensure!(folded == 10_001, "folded {folded}");

    let (auth, who) = admin();
    let caller = auth
        .authorize(
            who,
            Permission::EvidenceRead,
            BindingScope::org("acme".parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = analytics(store).families(&caller, None).await?;
    ensure!(report.total == 2, "{report:?}");
    let (top, noise) = (&report.families[0], &report.families[1]);
    ensure!(top.tool == "tool.delete" && top.occurrences == 1, "{top:?}");
    ensure!(
        noise.tool == "fs.read" && noise.occurrences == 10_000,
        "{noise:?}"
    );
    ensure!(top.priority.score > noise.priority.score);
    // The breakdown explains it: privilege and production outweigh capped recurrence.
    ensure!(top.priority.privilege > noise.priority.privilege);
    ensure!(noise.priority.recurrence <= 20 && noise.agents == 20);
    ensure!(top.production_environments == 1 && top.destructive);
    Ok(())
}

fn project_auditor() -> (Authorizer, Arc<Principal>) {
    let auth = Authorizer::new(AdminTokenMode::Disabled);
    auth.load(&[RoleBinding {
        id: 1,
        kind: SubjectKind::User,
        subject: "ana".into(),
        role: "auditor".into(),
        scope: BindingScope::project("acme".parse().expect("org"), "web".parse().expect("p")),
        source: BindingSource::Api,
        created_by: "test".into(),
        created_unix_ms: 0,
    }]);
    let who = Arc::new(Principal::Operator(Operator {
        issuer: "https://idp.example".into(),
        subject: "ana".into(),
        groups: Vec::new(),
    }));
    (auth, who)
}

async fn an_auditor_of_one_project_sees_nothing_of_another(db: &TestStore) -> Result<()> {
    let store = db.store();
    let base = now();
    let corpus = corpus("acme", base);
    ingest_in_order(store, &corpus).await?;
    // A family only billing has: a block of another tool.
    let intake = Intake::new(store.clone());
    let only_billing = AgentKey::new(
        Tenant::from_parts("acme", "billing", "prod")?,
        "b9".parse()?,
    );
    store.agent_connected(&only_billing, &hello(), base).await?;
    let p = decision(
        "db.drop",
        "block",
        &["blocked_by_rule"],
        "no-drop",
        json!({"risk_class": "critical", "destructive": true}),
        'f',
    );
    intake
        .commit_batch(
            &only_billing,
            &[record(1, 77, "gate.decision", base, &p)],
            &[],
            &[],
            base,
        )
        .await?;
    catch_up(store, SETTLED).await?;

    let a = analytics(store);
    let (auth, ana) = project_auditor();
    let org: gait_store::Org = "acme".parse()?;
    ensure!(
        auth.authorize(
            ana.clone(),
            Permission::EvidenceRead,
            BindingScope::org(org.clone())
        )
        .is_err()
    );
    ensure!(
        auth.authorize(
            ana.clone(),
            Permission::EvidenceRead,
            BindingScope::project(org.clone(), "billing".parse()?)
        )
        .is_err()
    );
    let caller = auth
        .authorize(
            ana,
            Permission::EvidenceRead,
            BindingScope::project(org.clone(), "web".parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let web_records: Vec<&NewRecord> = corpus
        .iter()
        .filter(|(k, _)| k.tenant.project.as_str() == "web")
        .flat_map(|(_, rs)| rs.iter())
        .collect();
    let web_decisions = web_records
        .iter()
        .filter(|r| r.kind == "gate.decision")
        .count() as u64;

    let report = a.families(&caller, Some(1000)).await?;
    ensure!(report.scope == "acme/web", "{}", report.scope);
    for f in &report.families {
        ensure!(f.tool != "db.drop", "billing's family leaked: {f:?}");
        ensure!(
            f.environments.iter().all(|e| e.starts_with("web/")),
            "{:?}",
            f.environments
        );
        ensure!(f.projects == 1);
    }
    let counted: u64 = report
        .families
        .iter()
        .filter(|f| f.kind == "decision")
        .map(|f| f.occurrences)
        .sum();
    ensure!(counted == web_decisions, "{counted} != {web_decisions}");
    // Representatives are web's evidence only: every one is the digest of a web record.
    let web_digests: Vec<String> = web_records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    for f in &report.families {
        for d in &f.representatives {
            ensure!(web_digests.iter().any(|p| p.contains(d.as_str())), "{d}");
        }
    }
    // The export carries the same rows and nothing of billing.
    let csv = String::from_utf8(csv_families(&report)?)?;
    ensure!(
        !csv.contains("billing") && !csv.contains("db.drop"),
        "{csv}"
    );
    ensure!(csv.lines().count() == report.families.len() + 1);
    // Billing's family by id or dedup key: not found in web.
    let (admin_auth, root) = admin();
    let everything = admin_auth
        .authorize(root, Permission::EvidenceRead, BindingScope::org(org))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let all = a.families(&everything, Some(1000)).await?;
    let drop = all
        .families
        .iter()
        .find(|f| f.tool == "db.drop")
        .context("the billing family")?;
    for id in [&drop.family, &drop.dedup_key] {
        match a.family(&caller, id).await {
            Err(AnalysisError::NotFound(_)) => {}
            other => anyhow::bail!("{id}: {other:?}"),
        }
    }
    // Posture: web's decisions only.
    let posture = a.posture(&caller, Some(7), base).await?;
    ensure!(posture.decisions == web_decisions);
    ensure!(
        posture.regress.iter().all(|r| r.project == "web"),
        "{:?}",
        posture.regress
    );
    ensure!(posture.agents.agents == 3);
    Ok(())
}

async fn racing_upkeep_counts_each_row_once(db: &TestStore) -> Result<()> {
    let store = db.store();
    let intake = Intake::new(store.clone());
    let base = now();
    let corpus = corpus("race", base);
    for (key, records) in &corpus {
        store.agent_connected(key, &hello(), base).await?;
        intake.commit_batch(key, records, &[], &[], base).await?;
    }
    // Two "replicas" fold the same rows at once; the cursor's compare-and-set lets one add each batch.
    let (x, y) = tokio::join!(catch_up(store, SETTLED), catch_up(store, SETTLED));
    let folded = x? + y?;
    let rows: u64 = corpus.iter().map(|(_, rs)| rs.len() as u64).sum();
    ensure!(folded == rows, "folded {folded} of {rows}");
    let (auth, who) = admin();
    let caller = auth
        .authorize(
            who,
            Permission::EvidenceRead,
            BindingScope::org("race".parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let posture = analytics(store).posture(&caller, Some(7), base).await?;
    let decisions = corpus
        .iter()
        .flat_map(|(_, rs)| rs.iter())
        .filter(|r| r.kind == "gate.decision")
        .count() as u64;
    ensure!(
        posture.decisions == decisions,
        "{} != {decisions}",
        posture.decisions
    );
    Ok(())
}

async fn get(app: &axum::Router, uri: &str) -> Result<(StatusCode, String, Vec<u8>)> {
    let req = Request::builder()
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())?;
    let resp = app.clone().oneshot(req).await?;
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, ctype, bytes))
}

async fn get_json(app: &axum::Router, uri: &str) -> Result<(StatusCode, Value)> {
    let (status, _, body) = get(app, uri).await?;
    Ok((status, serde_json::from_slice(&body)?))
}

async fn the_http_routes_answer_json_csv_and_the_gate(db: &TestStore) -> Result<()> {
    let store = db.store();
    let base = now();
    ingest_in_order(store, &corpus("acme", base)).await?;
    let app = router(common::app_state(db, TOKEN, SigningKey::generate()));

    let (status, list) = get_json(&app, "/v1/orgs/acme/analysis/families?limit=3").await?;
    ensure!(status == StatusCode::OK, "{list}");
    ensure!(
        list["families"].as_array().map(Vec::len) == Some(3),
        "{list}"
    );
    ensure!(list["total"] == 5 && list["scope"] == "acme");
    let top = &list["families"][0];
    ensure!(top["tool"] == "tool.delete", "{top}");
    let scores: Vec<u64> = list["families"]
        .as_array()
        .context("families")?
        .iter()
        .map(|f| f["priority"]["score"].as_u64().unwrap_or(0))
        .collect();
    ensure!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    // One family by its dedup key, with suggestions (a blocked destructive call: a policy fixture at least).
    let key = top["dedup_key"].as_str().context("dedup key")?;
    let (status, one) = get_json(&app, &format!("/v1/orgs/acme/analysis/families/{key}")).await?;
    ensure!(status == StatusCode::OK, "{one}");
    ensure!(one["family"] == top["family"], "{one}");
    ensure!(
        one["suggestions"].as_array().is_some_and(|s| !s.is_empty()),
        "{one}"
    );
    ensure!(one["inputs"]["matched_rule"] == "no-delete", "{one}");

    let (status, ctype, csv) = get(
        &app,
        "/v1/orgs/acme/analysis/families?format=csv&project=web",
    )
    .await?;
    ensure!(
        status == StatusCode::OK && ctype.starts_with("text/csv"),
        "{ctype}"
    );
    let csv = String::from_utf8(csv)?;
    ensure!(csv.starts_with("scope,family,dedup_key,"), "{csv}");
    ensure!(
        csv.lines().skip(1).all(|l| l.starts_with("acme/web,")),
        "{csv}"
    );

    let (status, posture) = get_json(
        &app,
        "/v1/orgs/acme/analysis/posture?project=web&env=prod&days=3",
    )
    .await?;
    ensure!(status == StatusCode::OK, "{posture}");
    ensure!(posture["scope"] == "acme/web/prod", "{posture}");
    ensure!(
        posture["daily"].as_array().map(Vec::len) == Some(3),
        "{posture}"
    );
    ensure!(posture["agents"]["agents"] == 2, "{posture}");

    // The gate of web/prod fails: the corpus has failed regress runs and open blocked destructive calls.
    let (status, gate) = get_json(&app, "/v1/orgs/acme/projects/web/envs/prod/change-gate").await?;
    ensure!(status == StatusCode::OK, "{gate}");
    ensure!(gate["pass"] == false, "{gate}");
    let checks: Vec<&str> = gate["reasons"]
        .as_array()
        .context("reasons")?
        .iter()
        .filter_map(|r| r["check"].as_str())
        .collect();
    ensure!(
        checks.contains(&"regress") && checks.contains(&"families"),
        "{gate}"
    );
    // An environment with no evidence passes.
    let (_, clean) = get_json(&app, "/v1/orgs/acme/projects/web/envs/qa/change-gate").await?;
    ensure!(
        clean["pass"] == true && clean["reasons"] == json!([]),
        "{clean}"
    );
    // A rollout running on qa fails its gate (and only qa's), unless the pipeline allows it; once the rollout
    // completes the gate passes again.
    let rollout = gait_store::NewRollout {
        org: "acme".parse()?,
        id: "ro-qa-1".into(),
        candidate_digest: hex64('c'),
        plan_json: "{}".into(),
        created_by: "test".into(),
        created_unix_ms: base,
        targets: vec![("web".parse()?, "qa".parse()?, hex64('b'))],
    };
    store
        .transaction(async |tx| tx.insert_rollout(&rollout).await)
        .await?;
    let (_, held) = get_json(&app, "/v1/orgs/acme/projects/web/envs/qa/change-gate").await?;
    ensure!(
        held["pass"] == false
            && held["reasons"][0]["check"] == "rollouts"
            && held["inputs"]["rollouts_in_flight"] == json!(["ro-qa-1"]),
        "{held}"
    );
    let (_, allowed) = get_json(
        &app,
        "/v1/orgs/acme/projects/web/envs/qa/change-gate?block_during_rollout=false",
    )
    .await?;
    ensure!(allowed["pass"] == true, "{allowed}");
    let (_, other) = get_json(&app, "/v1/orgs/acme/projects/billing/envs/qa/change-gate").await?;
    ensure!(
        other["inputs"]["rollouts_in_flight"] == json!([]),
        "{other}"
    );
    let done = gait_store::RolloutTransition {
        state: "completed".into(),
        step: 0,
        attempt: 1,
        reason: String::new(),
        step_published: true,
        step_started_unix_ms: base,
        updated_unix_ms: base + 1,
    };
    let org: gait_store::Org = "acme".parse()?;
    ensure!(
        store
            .transaction(async |tx| tx.transition_rollout(&org, "ro-qa-1", 1, &done).await)
            .await?
    );
    let (_, after) = get_json(&app, "/v1/orgs/acme/projects/web/envs/qa/change-gate").await?;
    ensure!(after["pass"] == true, "{after}");

    for (uri, field) in [
        ("/v1/orgs/acme/analysis/families?limit=0", "limit"),
        ("/v1/orgs/acme/analysis/families?format=xml", "format"),
        ("/v1/orgs/acme/analysis/families?env=prod", "env"),
        ("/v1/orgs/acme/analysis/posture?days=91", "days"),
        ("/v1/orgs/acme/analysis/families/not-a-family", "family"),
        ("/v1/orgs/acme/analysis/families?bogus=1", "bogus"),
    ] {
        let (status, body) = get_json(&app, uri).await?;
        ensure!(status == StatusCode::BAD_REQUEST, "{uri}: {status} {body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        ensure!(message.contains(field), "{uri}: {message}");
    }
    let (status, _) = get_json(
        &app,
        &format!("/v1/orgs/acme/analysis/families/{}", hex64('0')),
    )
    .await?;
    ensure!(status == StatusCode::NOT_FOUND);
    Ok(())
}

/// Raises an approval request of `key` (seq `seq`) received at `at`, expiring at `expires`, and answers it
/// `after_ms` later when `answer` is set.
async fn approval(
    store: &Store,
    key: &AgentKey,
    seq: u64,
    at: i64,
    expires: i64,
    answer: Option<(ApprovalState, i64)>,
) -> Result<()> {
    let request = NewApprovalRequest {
        key: key.clone(),
        seq,
        tool: "db.drop".into(),
        phase: "apply".into(),
        destructive: true,
        scope: vec!["tool:db.drop".into()],
        intent_digest: hex64('1'),
        policy_digest: hex64('2'),
        requested_by: "uid:1000".into(),
        trace_id: format!("trace-{seq}"),
        created_unix_ms: at,
        expires_unix_ms: expires,
        approval_policy_id: None,
    };
    let (stored, _) = store
        .transaction(async |tx| tx.insert_approval_request(&request, at).await)
        .await?;
    if let Some((state, after_ms)) = answer {
        let tenant = key.tenant.clone();
        let done = store
            .transaction(async |tx| {
                tx.finish_approval_request(&tenant, stored.id, state, "[]", None, at + after_ms)
                    .await
            })
            .await?;
        ensure!(done, "request {seq} was no longer pending");
    }
    Ok(())
}

async fn posture_counts_approval_health_and_freshness_inside_the_scope(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let base = now();
    let corpus = corpus("acme", base);
    ingest_in_order(store, &corpus).await?;
    let web = &corpus[0].0;
    let billing = &corpus[3].0;
    let hour = 3_600_000;
    // web: granted after 2 s and after 6 s, denied, pending past its expiry, pending.
    approval(
        store,
        web,
        101,
        base - 5 * hour,
        base + hour,
        Some((ApprovalState::Approved, 2_000)),
    )
    .await?;
    approval(
        store,
        web,
        102,
        base - 4 * hour,
        base + hour,
        Some((ApprovalState::Approved, 6_000)),
    )
    .await?;
    approval(
        store,
        web,
        103,
        base - 3 * hour,
        base + hour,
        Some((ApprovalState::Denied, 500)),
    )
    .await?;
    approval(store, web, 104, base - 2 * hour, base - hour, None).await?;
    approval(store, web, 105, base - hour, base + hour, None).await?;
    // billing: one pending; and one web request from before the window, which does not count.
    approval(store, billing, 201, base - hour, base + hour, None).await?;
    approval(store, web, 106, base - 30 * 24 * hour, base + hour, None).await?;

    let a = analytics(store);
    let (auth, ana) = project_auditor();
    let caller = auth
        .authorize(
            ana,
            Permission::EvidenceRead,
            BindingScope::project("acme".parse()?, "web".parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let posture = a.posture(&caller, Some(7), base).await?;
    let ap = &posture.approvals;
    ensure!(
        (ap.requests, ap.pending, ap.granted, ap.denied, ap.expired) == (5, 1, 2, 1, 1),
        "{ap:?}"
    );
    ensure!(
        (ap.median_time_to_grant_ms, ap.p90_time_to_grant_ms) == (Some(2_000), Some(6_000)),
        "{ap:?}"
    );
    // Freshness: web's two environments only, each at its newest record, none quiet.
    let envs: Vec<(String, String)> = posture
        .freshness
        .iter()
        .map(|f| (f.project.clone(), f.env.clone()))
        .collect();
    ensure!(
        envs.len() == 2 && envs.iter().all(|(p, _)| p == "web"),
        "{envs:?}"
    );
    for f in &posture.freshness {
        let newest = corpus
            .iter()
            .filter(|(k, _)| {
                k.tenant.project.as_str() == f.project && k.tenant.env.as_str() == f.env
            })
            .flat_map(|(_, records)| records.iter().map(|r| r.created_unix_ms))
            .max()
            .context("records of the environment")?;
        ensure!(
            f.last_evidence_unix_ms == newest && f.age_ms == base - newest && !f.quiet,
            "{f:?}"
        );
    }
    // A day later with nothing new, every environment is quiet.
    let later = a.posture(&caller, Some(7), base + 25 * hour).await?;
    ensure!(
        later.freshness.iter().all(|f| f.quiet),
        "{:?}",
        later.freshness
    );
    // The org sees billing's request and environments too.
    let (admin_auth, root) = admin();
    let everything = admin_auth
        .authorize(
            root,
            Permission::EvidenceRead,
            BindingScope::org("acme".parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let org = a.posture(&everything, Some(7), base).await?;
    ensure!(
        (org.approvals.requests, org.approvals.pending) == (6, 2),
        "{:?}",
        org.approvals
    );
    ensure!(org.freshness.len() == 4, "{:?}", org.freshness);
    Ok(())
}

async fn a_future_dated_record_counts_at_its_arrival_and_a_late_one_at_its_own_time(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let base = now();
    let day = 24 * HOUR;
    let intake = Intake::new(store.clone());
    let key = AgentKey::new(
        Tenant::from_parts("acme", "web", "prod")?,
        "skewed".parse()?,
    );
    store.agent_connected(&key, &hello(), base).await?;
    let p = |tool: &str, intent: char| {
        decision(
            tool,
            "block",
            &["blocked_by_rule"],
            "r",
            json!({"risk_class": "high"}),
            intent,
        )
    };
    // A clock a week ahead, and a record made three days ago that arrives now (an offline agent syncing).
    let records = [
        record(
            1,
            90,
            "gate.decision",
            base + 7 * day,
            &p("tool.future", '1'),
        ),
        record(2, 90, "gate.decision", base - 3 * day, &p("tool.late", '2')),
    ];
    intake.commit_batch(&key, &records, &[], &[], base).await?;
    catch_up(store, SETTLED).await?;
    let a = analytics(store);
    let (auth, root) = admin();
    let caller = auth
        .authorize(
            root,
            Permission::EvidenceRead,
            BindingScope::org("acme".parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let families = a.families(&caller, Some(10)).await?;
    let seen = |tool: &str| {
        families
            .families
            .iter()
            .find(|f| f.tool == tool)
            .map(|f| (f.first_seen_unix_ms, f.last_seen_unix_ms))
    };
    ensure!(
        seen("tool.future") == Some((base, base)),
        "{:?}",
        seen("tool.future")
    );
    ensure!(
        seen("tool.late") == Some((base - 3 * day, base - 3 * day)),
        "{:?}",
        seen("tool.late")
    );
    // Posture: the future record counts today, the late one on its own day; no day after today.
    let posture = a.posture(&caller, Some(7), base).await?;
    let today = base.div_euclid(day);
    let days: Vec<(i64, u64)> = posture.daily.iter().map(|d| (d.day, d.decisions)).collect();
    ensure!(days == vec![(today - 3, 1), (today, 1)], "{days:?}");
    Ok(())
}

async fn production_is_what_the_operator_names(db: &TestStore) -> Result<()> {
    let store = db.store();
    let base = now();
    let intake = Intake::new(store.clone());
    let key = AgentKey::new(Tenant::from_parts("acme", "web", "live")?, "l1".parse()?);
    store.agent_connected(&key, &hello(), base).await?;
    let p = decision(
        "db.drop",
        "block",
        &["blocked_by_rule"],
        "r",
        json!({"risk_class": "critical"}),
        '3',
    );
    intake
        .commit_batch(
            &key,
            &[record(1, 91, "gate.decision", base, &p)],
            &[],
            &[],
            base,
        )
        .await?;
    catch_up(store, SETTLED).await?;
    let (auth, root) = admin();
    let caller = auth
        .authorize(
            root,
            Permission::EvidenceRead,
            BindingScope::org("acme".parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let by_default = analytics(store).families(&caller, Some(1)).await?;
    let named = analytics(store)
        .with_production_envs(&["live".to_owned()])
        .families(&caller, Some(1))
        .await?;
    let (d, n) = (&by_default.families[0], &named.families[0]);
    ensure!(
        d.production_environments == 0 && n.production_environments == 1,
        "{d:?} {n:?}"
    );
    ensure!(
        n.priority.score > d.priority.score,
        "{:?} {:?}",
        n.priority,
        d.priority
    );
    Ok(())
}

async fn a_merge_reads_two_families_as_one_and_a_split_gives_them_back_audited(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let base = now();
    ingest_in_order(store, &corpus("acme", base)).await?;
    let a = analytics(store);
    let (auth, root) = admin();
    let org: gait_store::Org = "acme".parse()?;
    let reader = auth
        .authorize(
            root.clone(),
            Permission::EvidenceRead,
            BindingScope::org(org.clone()),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let writer = auth
        .authorize(root, Permission::PolicyWrite, org.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let before = a.families(&reader, Some(1000)).await?;
    ensure!(before.total >= 3, "{}", before.total);
    let (x, y) = (&before.families[0], &before.families[1]);
    // Merge x into y (by dedup key for y): one family with both occurrences, agents counted once.
    let m = a
        .merge(&writer, &x.family, &y.dedup_key, "same outage", base)
        .await?;
    ensure!(
        m.family == x.family && m.into_family == y.family && m.merged_by == "admin-token",
        "{m:?}"
    );
    let after = a.families(&reader, Some(1000)).await?;
    ensure!(
        after.total == before.total - 1,
        "{} {}",
        after.total,
        before.total
    );
    let merged = after
        .families
        .iter()
        .find(|f| f.family == y.family)
        .context("the merged family")?;
    ensure!(
        merged.merged == vec![x.family.clone()],
        "{:?}",
        merged.merged
    );
    ensure!(merged.occurrences == x.occurrences + y.occurrences);
    ensure!(
        merged.agents >= x.agents.max(y.agents) && merged.agents <= x.agents + y.agents,
        "{} vs {} + {}",
        merged.agents,
        x.agents,
        y.agents
    );
    ensure!(merged.first_seen_unix_ms == x.first_seen_unix_ms.min(y.first_seen_unix_ms));
    // Read by the merged family's own id or key: the group.
    for id in [&x.family, &x.dedup_key] {
        let one = a.family(&reader, id).await?;
        ensure!(
            one.family == y.family && one.occurrences == merged.occurrences,
            "{id}"
        );
    }
    // Refusals: merging again, merging into a merged family, unknown families, itself, no reason.
    let z = &before.families[2];
    for (family, into, reason, want) in [
        (
            x.family.as_str(),
            z.family.as_str(),
            "again",
            "already merged",
        ),
        (z.family.as_str(), x.family.as_str(), "chain", "merge into"),
        (z.family.as_str(), z.family.as_str(), "self", "itself"),
        (z.family.as_str(), y.family.as_str(), " ", "reason"),
    ] {
        let err = a
            .merge(&writer, family, into, reason, base)
            .await
            .expect_err(want)
            .to_string();
        ensure!(err.contains(want), "{want}: {err}");
    }
    match a.merge(&writer, &hex64('9'), &y.family, "r", base).await {
        Err(AnalysisError::NotFound(_)) => {}
        other => anyhow::bail!("unknown family: {other:?}"),
    }
    // Split: both families back exactly as before.
    let removed = a.split(&writer, &x.dedup_key).await?;
    ensure!(removed.into_family == y.family);
    let again = a.families(&reader, Some(1000)).await?;
    ensure!(
        serde_json::to_value(&again)? == serde_json::to_value(&before)?,
        "a split did not restore the families"
    );
    match a.split(&writer, &x.family).await {
        Err(AnalysisError::NotFound(_)) => {}
        other => anyhow::bail!("second split: {other:?}"),
    }
    // Both operations are in the audit log with who, what and why.
    let mut actions = Vec::new();
    for row in store.audit_entries(0, 1_000).await? {
        let e: Value = serde_json::from_slice(&row.line)?;
        if e["target"]["kind"] == "incident_family" {
            ensure!(
                e["target"]["id"] == x.family.as_str() && e["actor"] == "admin-token",
                "{e}"
            );
            actions.push(e["action"].as_str().unwrap_or("").to_owned());
            if e["action"] == "family.merge" {
                ensure!(
                    e["details"]["into"] == y.family.as_str()
                        && e["details"]["reason"] == "same outage",
                    "{e}"
                );
            }
        }
    }
    ensure!(actions == ["family.merge", "family.split"], "{actions:?}");
    Ok(())
}

async fn merged_families_count_shared_agents_once_follow_chains_and_stay_in_scope(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let base = now();
    let intake = Intake::new(store.clone());
    let block = |tool: &str, intent: char| {
        decision(
            tool,
            "block",
            &["blocked_by_rule"],
            "r",
            json!({"risk_class": "high"}),
            intent,
        )
    };
    // m1 hits tool.m1 and tool.m2; m2 hits tool.m2 and tool.m3 (web/prod); b1 hits tool.b (billing/prod).
    let agents = [
        (
            "web",
            "prod",
            "m1",
            vec![("tool.m1", '1'), ("tool.m2", '2')],
        ),
        (
            "web",
            "prod",
            "m2",
            vec![("tool.m2", '3'), ("tool.m3", '4')],
        ),
        ("billing", "prod", "b1", vec![("tool.b", '5')]),
    ];
    for (i, (project, env, id, calls)) in agents.iter().enumerate() {
        let key = AgentKey::new(Tenant::from_parts("acme", project, env)?, id.parse()?);
        store.agent_connected(&key, &hello(), base).await?;
        let records: Vec<NewRecord> = calls
            .iter()
            .enumerate()
            .map(|(n, (tool, intent))| {
                record(
                    n as u64 + 1,
                    200 + i as u16,
                    "gate.decision",
                    base,
                    &block(tool, *intent),
                )
            })
            .collect();
        intake.commit_batch(&key, &records, &[], &[], base).await?;
    }
    catch_up(store, SETTLED).await?;
    let a = analytics(store);
    let (auth, root) = admin();
    let org: gait_store::Org = "acme".parse()?;
    let reader = auth
        .authorize(
            root.clone(),
            Permission::EvidenceRead,
            BindingScope::org(org.clone()),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let writer = auth
        .authorize(root, Permission::PolicyWrite, org.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let all = a.families(&reader, Some(100)).await?;
    let id = |tool: &str| -> Result<String> {
        Ok(all
            .families
            .iter()
            .find(|f| f.tool == tool)
            .with_context(|| format!("family of {tool}"))?
            .family
            .clone())
    };
    let (f1, f2, f3, fb) = (
        id("tool.m1")?,
        id("tool.m2")?,
        id("tool.m3")?,
        id("tool.b")?,
    );
    // m1 is in both f1 and f2: the merged family has 2 agents, not 1 + 2.
    a.merge(&writer, &f1, &f2, "same rule", base).await?;
    let listed = a.families(&reader, Some(100)).await?;
    let group = listed
        .families
        .iter()
        .find(|f| f.family == f2)
        .context("f2's group")?;
    ensure!(group.agents == 2 && group.occurrences == 3, "{group:?}");
    // A chain: f2 (with f1 in it) merged into f3 carries f1 along.
    a.merge(&writer, &f2, &f3, "same outage", base).await?;
    let listed = a.families(&reader, Some(100)).await?;
    let group = listed
        .families
        .iter()
        .find(|f| f.family == f3)
        .context("f3's group")?;
    let mut members = vec![f1.clone(), f2.clone()];
    members.sort();
    ensure!(
        group.merged == members && group.agents == 2 && group.occurrences == 4,
        "{group:?}"
    );
    ensure!(a.family(&reader, &f1).await?.family == f3);
    // Billing's family merged into web's: a web auditor neither reads it by id nor sees it in the group.
    a.merge(&writer, &fb, &f3, "cross-project", base).await?;
    let (web_auth, ana) = project_auditor();
    let web = web_auth
        .authorize(
            ana,
            Permission::EvidenceRead,
            BindingScope::project(org.clone(), "web".parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match a.family(&web, &fb).await {
        Err(AnalysisError::NotFound(_)) => {}
        other => anyhow::bail!("a web auditor read billing's family: {other:?}"),
    }
    let seen = a.families(&web, Some(100)).await?;
    ensure!(
        seen.total == 1 && seen.families[0].merged == members,
        "{:?}",
        seen.families
    );
    // The org reader sees all four in one group.
    let whole = a.families(&reader, Some(100)).await?;
    ensure!(
        whole.total == 1 && whole.families[0].merged.len() == 3 && whole.families[0].agents == 3
    );
    Ok(())
}

/// `decision` carrying a signed trace whose arguments digest is `hex64(args)` (only that field is read).
fn traced(mut decision: Value, args: char) -> Value {
    decision["trace"] = json!({"schema_id": "gait.gate.trace", "args_digest": hex64(args)});
    decision
}

/// An `artifact.runpack` record (as `gait-agent push` writes it) of run `run` listing `calls` (tool, args digest
/// character), each with result digest `r…`.
fn runpack_record(
    seq: u64,
    salt: u16,
    created: i64,
    run: &str,
    sha: char,
    calls: &[(&str, char)],
) -> NewRecord {
    let with_results: Vec<(&str, char, char)> = calls.iter().map(|(t, a)| (*t, *a, 'r')).collect();
    runpack_record_with(seq, salt, created, run, sha, "0.0.0-dev", &with_results)
}

/// [`runpack_record`] with each call's result digest character and the producer version given.
fn runpack_record_with(
    seq: u64,
    salt: u16,
    created: i64,
    run: &str,
    sha: char,
    producer: &str,
    calls: &[(&str, char, char)],
) -> NewRecord {
    let payload = json!({
        "schema": "gait.agent.artifact",
        "artifact_kind": "runpack",
        "sha256": hex64(sha),
        "size_bytes": 4039,
        "file_name": format!("runpack_{run}.zip"),
        "source": "push",
        "signature_status": "verified",
        "run_ids": [run],
        "producer_version": producer,
        "runpack": {"run_id": run, "runpack_manifest_digest": hex64('d'), "capture_mode": "reference",
                    "intent_count": calls.len(), "result_count": calls.len(), "receipt_count": 0,
                    "receipt_digest_vector": []},
        "calls": calls.iter().enumerate().map(|(i, (tool, args, result))| json!({
            "intent_id": format!("intent_{i}"), "tool_name": tool, "args_digest": hex64(*args),
            "result_digest": hex64(*result),
        })).collect::<Vec<_>>(),
    });
    record(seq, salt, "artifact.runpack", created, &payload)
}

async fn coverage_names_the_tools_runpacks_called_without_a_gate(db: &TestStore) -> Result<()> {
    let store = db.store();
    let base = now();
    let intake = Intake::new(store.clone());
    let web = AgentKey::new(Tenant::from_parts("acme", "web", "prod")?, "ci-1".parse()?);
    // The same agent id in another environment is another agent (its seqs count again from 1).
    let billing = AgentKey::new(
        Tenant::from_parts("acme", "billing", "prod")?,
        "ci-1".parse()?,
    );
    for k in [&web, &billing] {
        store.agent_connected(k, &hello(), base).await?;
    }
    let allow = decision(
        "tool.search",
        "allow",
        &[],
        "r",
        json!({"risk_class": "low"}),
        '1',
    );
    // web: two runpacks calling search (gated), fetch twice and summarize (never gated); billing: db.drop.
    let web_records = [
        record(1, 300, "gate.decision", base, &allow),
        runpack_record(
            2,
            300,
            base,
            "run_a",
            'b',
            &[
                ("tool.search", '1'),
                ("tool.fetch", '2'),
                ("tool.summarize", '3'),
            ],
        ),
        runpack_record(3, 300, base, "run_b", 'a', &[("tool.fetch", '4')]),
        // Call level: search's call in run_a went through a gate (its arguments digest is on a decision's trace),
        // and so did run_a's fetch, blocked at high risk; run_b's fetch did not.
        record(4, 300, "gate.decision", base, &traced(allow.clone(), '1')),
        record(
            5,
            300,
            "gate.decision",
            base,
            &traced(
                decision(
                    "tool.fetch",
                    "block",
                    &["blocked_by_rule"],
                    "no-fetch",
                    json!({"risk_class": "high"}),
                    '2',
                ),
                '2',
            ),
        ),
    ];
    intake
        .commit_batch(&web, &web_records, &[], &[], base)
        .await?;
    // Web's dev environment gated a fetch on run_b's arguments: that is dev's gate, not prod's.
    let web_dev = AgentKey::new(Tenant::from_parts("acme", "web", "dev")?, "ci-2".parse()?);
    store.agent_connected(&web_dev, &hello(), base).await?;
    let fetch_in_dev = decision(
        "tool.fetch",
        "allow",
        &[],
        "r",
        json!({"risk_class": "low"}),
        '4',
    );
    let billing_records = [
        record(1, 301, "gate.decision", base, &allow),
        runpack_record(
            2,
            301,
            base,
            "run_c",
            'c',
            &[("db.drop", '5'), ("tool.fetch", '6'), ("db.drop", '7')],
        ),
    ];
    intake
        .commit_batch(&billing, &billing_records, &[], &[], base)
        .await?;
    let dev_records = [record(
        1,
        302,
        "gate.decision",
        base,
        &traced(fetch_in_dev, '4'),
    )];
    intake
        .commit_batch(&web_dev, &dev_records, &[], &[], base)
        .await?;
    catch_up(store, SETTLED).await?;
    let a = analytics(store);
    let (auth, ana) = project_auditor();
    let caller = auth
        .authorize(
            ana,
            Permission::EvidenceRead,
            BindingScope::project("acme".parse()?, "web".parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let c = a.posture(&caller, Some(7), base).await?.coverage;
    ensure!(
        (
            c.tools_seen,
            c.tools_gated,
            c.calls_seen,
            c.calls_of_gated_tools,
            c.tool_coverage_per_mille,
            c.calls_gated,
            c.call_coverage_per_mille
        ) == (3, 2, 4, 3, 666, 2, 500),
        "{c:?}"
    );
    // fetch is gated as a tool, at high risk, and one of its two calls (run_b's, runpack `a…`) had no gate.
    let risky: Vec<(&str, u64, u64, Option<&str>)> = c
        .high_risk_ungated
        .iter()
        .map(|t| {
            (
                t.tool.as_str(),
                t.ungated_calls,
                t.calls,
                t.runpack_sha256.as_deref(),
            )
        })
        .collect();
    ensure!(
        risky == vec![("tool.fetch", 1, 2, Some(hex64('a').as_str()))],
        "{risky:?}"
    );
    let ungated: Vec<(&str, u64, u64, Option<&str>)> = c
        .ungated
        .iter()
        .map(|t| {
            (
                t.tool.as_str(),
                t.calls,
                t.runpacks,
                t.runpack_sha256.as_deref(),
            )
        })
        .collect();
    let b_sha = hex64('b');
    ensure!(
        ungated == vec![("tool.summarize", 1, 1, Some(b_sha.as_str()))],
        "{ungated:?}"
    );
    // Billing's db.drop is not web's concern; the org sees it ungated too.
    let (admin_auth, root) = admin();
    let org = admin_auth
        .authorize(
            root,
            Permission::EvidenceRead,
            BindingScope::org("acme".parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let c = a.posture(&org, Some(7), base).await?.coverage;
    // run_c called db.drop twice: two calls, one runpack.
    ensure!(
        c.tools_seen == 4
            && c.ungated
                .iter()
                .any(|t| (t.tool.as_str(), t.calls, t.runpacks) == ("db.drop", 2, 1)),
        "{c:?}"
    );
    // A call is gated by a decision of its own environment only: dev's decision on run_b's arguments does not
    // gate prod's call, and nothing gates billing's own fetch. Web's high-risk decision makes fetch high-risk
    // org-wide.
    let fetch = c
        .high_risk_ungated
        .iter()
        .find(|t| t.tool == "tool.fetch")
        .context("fetch")?;
    ensure!((fetch.ungated_calls, fetch.calls) == (2, 3), "{fetch:?}");
    Ok(())
}

/// Runpack calls and gated calls of web's posture over the last week, as project web's auditor reads it.
async fn call_coverage(store: &gait_store::Store, at: i64) -> Result<(u64, u64)> {
    let (auth, ana) = project_auditor();
    let caller = auth
        .authorize(
            ana,
            Permission::EvidenceRead,
            BindingScope::project("acme".parse()?, "web".parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let c = analytics(store)
        .posture(&caller, Some(7), at)
        .await?
        .coverage;
    Ok((c.calls_seen, c.calls_gated))
}

async fn the_call_merge_gates_a_call_whichever_came_first_and_only_behind_the_fold(
    db: &TestStore,
) -> Result<()> {
    call_merge_scenario(db, CallMarking::Cheaper, None).await
}

/// The same merges gate the same calls with their keys from the feed as read back from the index, and the
/// feed's merges really are fed.
async fn fed_merges_gate_the_same_calls_as_merges_that_read_back(db: &TestStore) -> Result<()> {
    let feed = Feed::new();
    call_merge_scenario(db, CallMarking::Ungated, Some(&feed)).await?;
    let other = fresh_like(db).await?;
    call_merge_scenario(&other, CallMarking::ByRange, Some(&feed)).await
}

/// A second, empty database of `db`'s backend.
async fn fresh_like(db: &TestStore) -> Result<TestStore> {
    Ok(match db.backend() {
        "postgres" => gait_store::testing::postgres_fresh()
            .await?
            .context("a PostgreSQL test ran without a server")?,
        _ => gait_store::testing::sqlite_temp().await?,
    })
}

/// The same merges find the same calls whether they are driven by the range or by the calls still ungated.
async fn both_ways_of_marking_calls_gate_the_same_calls(db: &TestStore) -> Result<()> {
    call_merge_scenario(db, CallMarking::ByRange, None).await?;
    // A second database of the same backend for the other way (the scenario's records would collide).
    let other = fresh_like(db).await?;
    call_merge_scenario(&other, CallMarking::Ungated, None).await
}

/// Runpacks and decisions in every order, merged as `marking` says; with `feed`, ingest hands its batches to it,
/// the folds take them from it, and every merge that has decisions to merge must have its keys from it.
async fn call_merge_scenario(
    db: &TestStore,
    marking: CallMarking,
    feed: Option<&Feed>,
) -> Result<()> {
    let store = db.store();
    let base = now();
    let shared = feed.map(|_| Arc::new(Feed::new()));
    let feed = shared.as_deref().or(feed);
    let intake = match &shared {
        Some(f) => Intake::with_feed(store.clone(), f.clone()),
        None => Intake::new(store.clone()),
    };
    let merge = |_: ()| merge_calls_with(store, feed, MERGE_ROWS, marking, base);
    let fold = || fold_up(store, feed, SETTLED);
    let fed_merges = std::cell::Cell::new(0u32);
    let fed_when = |m: &gait_aggregator::analysis::upkeep::Merge| {
        ensure!(
            feed.is_none() || m.digests == 0 || m.fed,
            "a merge of a range the feed folded read its keys back: {m:?}"
        );
        fed_merges.set(fed_merges.get() + u32::from(m.fed));
        Ok(())
    };
    let web = AgentKey::new(Tenant::from_parts("acme", "web", "prod")?, "ci-1".parse()?);
    store.agent_connected(&web, &hello(), base).await?;
    let traced_decision = |tool: &str, args: char| {
        traced(
            decision(tool, "allow", &[], "r", json!({"risk_class": "low"}), args),
            args,
        )
    };
    // A runpack arrives first: search ('1') and fetch ('2'), neither decided yet.
    let first = [runpack_record(
        1,
        400,
        base,
        "run_a",
        'a',
        &[("tool.search", '1'), ("tool.fetch", '2')],
    )];
    intake.commit_batch(&web, &first, &[], &[], base).await?;
    fold().await?;
    ensure!(call_coverage(store, base).await? == (2, 0));
    // Search's decision comes later. Until it is folded, the merge cannot take it: it stops at the fold.
    let second = [record(
        2,
        400,
        "gate.decision",
        base,
        &traced_decision("tool.search", '1'),
    )];
    intake.commit_batch(&web, &second, &[], &[], base).await?;
    let (merged, folded) = unmerged(store).await?;
    let m = merge(()).await?;
    fed_when(&m)?;
    ensure!(
        m.cursor == folded && m.calls == 0 && folded > merged,
        "{m:?}"
    );
    ensure!(call_coverage(store, base).await? == (2, 0));
    // Folded but not merged: call coverage lags the fold until the merge.
    fold().await?;
    ensure!(call_coverage(store, base).await? == (2, 0));
    let m = merge(()).await?;
    fed_when(&m)?;
    ensure!((m.digests, m.calls) == (1, 1), "{m:?}");
    ensure!(call_coverage(store, base).await? == (2, 1));
    // Fetch's decision is merged first and its runpack call arrives after: gated at the next merge all the same.
    // Two decisions on one digest are one entry of the set.
    let third = [
        record(
            3,
            400,
            "gate.decision",
            base,
            &traced_decision("tool.fetch", '2'),
        ),
        record(
            4,
            400,
            "gate.decision",
            base,
            &traced_decision("tool.fetch", '2'),
        ),
    ];
    intake.commit_batch(&web, &third, &[], &[], base).await?;
    fold().await?;
    let m = merge(()).await?;
    fed_when(&m)?;
    ensure!((m.digests, m.calls) == (1, 1), "{m:?}");
    let fourth = [runpack_record(
        5,
        400,
        base,
        "run_b",
        'b',
        &[("tool.fetch", '2'), ("tool.summarize", '3')],
    )];
    intake.commit_batch(&web, &fourth, &[], &[], base).await?;
    fold().await?;
    ensure!(call_coverage(store, base).await? == (4, 2));
    let m = merge(()).await?;
    fed_when(&m)?;
    ensure!((m.digests, m.calls) == (0, 1), "{m:?}");
    ensure!(call_coverage(store, base).await? == (4, 3));
    // Gait's args_digest covers the arguments only: a decision on another tool with summarize's arguments ('3')
    // does not gate summarize, and neither does one of another project on summarize itself.
    let billing = AgentKey::new(
        Tenant::from_parts("acme", "billing", "prod")?,
        "ci-1".parse()?,
    );
    store.agent_connected(&billing, &hello(), base).await?;
    let fifth = [record(
        6,
        400,
        "gate.decision",
        base,
        &traced_decision("tool.search", '3'),
    )];
    intake.commit_batch(&web, &fifth, &[], &[], base).await?;
    let elsewhere = [record(
        1,
        401,
        "gate.decision",
        base,
        &traced_decision("tool.summarize", '3'),
    )];
    intake
        .commit_batch(&billing, &elsewhere, &[], &[], base)
        .await?;
    fold().await?;
    let m = merge(()).await?;
    fed_when(&m)?;
    ensure!((m.digests, m.calls) == (2, 0), "{m:?}");
    ensure!(call_coverage(store, base).await? == (4, 3));
    // Summarize's own decision in web gates the call of the earlier runpack.
    let sixth = [record(
        7,
        400,
        "gate.decision",
        base,
        &traced_decision("tool.summarize", '3'),
    )];
    intake.commit_batch(&web, &sixth, &[], &[], base).await?;
    fold().await?;
    let m = merge(()).await?;
    fed_when(&m)?;
    ensure!((m.digests, m.calls) == (1, 1), "{m:?}");
    ensure!(call_coverage(store, base).await? == (4, 4));
    // The cursor fences a merge: one from a stale position changes nothing.
    let (merged, _) = unmerged(store).await?;
    ensure!(
        store
            .merge_gated_calls(CALLS_JOB, 0, merged, None, marking, base)
            .await?
            .is_none()
    );
    ensure!(unmerged(store).await?.0 == merged);
    ensure!(
        feed.is_none() == (fed_merges.get() == 0),
        "fed merges: {}",
        fed_merges.get()
    );
    Ok(())
}

async fn drift_is_attributed_to_the_policy_the_tool_or_nothing(db: &TestStore) -> Result<()> {
    let store = db.store();
    let base = now();
    let intake = Intake::new(store.clone());
    let tenant = Tenant::from_parts("acme", "web", "prod")?;
    let key = AgentKey::new(tenant.clone(), "ci-9".parse()?);
    store.agent_connected(&key, &hello(), base).await?;
    // Two policy versions pinned in web/prod, the second an hour ago.
    let hour = 3_600_000;
    for (n, (digest, at)) in [(hex64('e'), base - 5 * hour), (hex64('f'), base - hour)]
        .iter()
        .enumerate()
    {
        let version = gait_store::NewPolicyVersion {
            org: "acme".parse()?,
            digest: digest.clone(),
            name: "base.yaml".into(),
            yaml: b"default_verdict: allow\n".to_vec(),
            sha256: hex64('9'),
            author: "test".into(),
            message: String::new(),
            parent_digest: None,
            rule_count: 0,
            default_verdict: "allow".into(),
            created_unix_ms: *at,
            warnings_json: None,
        };
        let pin = gait_store::NewPin {
            tenant: tenant.clone(),
            digest: digest.clone(),
            kind: gait_store::PinKind::Pin,
            rollout_id: None,
            settings_json: "{}".into(),
            bundle_epoch: n as u64 + 1,
            bundle_digest: hex64('8'),
            known_good: true,
            actor: "test".into(),
            reason: String::new(),
            created_unix_ms: *at,
        };
        store
            .transaction(async |tx| {
                tx.insert_policy_version(&version).await?;
                tx.insert_env_pin(&pin).await
            })
            .await?;
    }
    let calls = [("tool.search", '1', 'a'), ("tool.fetch", '2', 'b')];
    let changed = [("tool.search", '1', 'a'), ("tool.fetch", '2', 'c')];
    let records = [
        // run_tool: same policy window, the fetch result changed.
        runpack_record_with(1, 400, base - 30 * 60_000, "run_tool", '1', "0.9.0", &calls),
        runpack_record_with(
            2,
            400,
            base - 20 * 60_000,
            "run_tool",
            '2',
            "0.9.0",
            &changed,
        ),
        // run_policy: recorded before and after the second pin, nothing else different.
        runpack_record_with(3, 400, base - 3 * hour, "run_policy", '3', "0.9.0", &calls),
        runpack_record_with(
            4,
            400,
            base - 10 * 60_000,
            "run_policy",
            '4',
            "0.9.0",
            &calls,
        ),
        // run_same: nothing differs (the last one pushed again by the same file: skipped as a baseline).
        runpack_record_with(5, 400, base - 9 * 60_000, "run_same", '5', "0.9.0", &calls),
        runpack_record_with(6, 400, base - 8 * 60_000, "run_same", '6', "0.9.0", &calls),
        runpack_record_with(7, 400, base - 7 * 60_000, "run_same", '6', "0.9.0", &calls),
    ];
    intake.commit_batch(&key, &records, &[], &[], base).await?;
    let a = analytics(store);
    let (auth, root) = admin();
    let caller = auth
        .authorize(root, Permission::EvidenceRead, tenant.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let tool = a.drift(&caller, "run_tool", None).await?;
    let primary = tool.attribution.primary.clone().context("attributed")?;
    ensure!(
        primary.kind == gait_analysis::drift::CauseKind::ToolChange
            && primary.field == "tool_results[0001:tool.fetch]"
            && primary.before == Some(hex64('b'))
            && primary.after == Some(hex64('c')),
        "{tool:?}"
    );
    ensure!(
        tool.failing.runpack_sha256 == hex64('2') && tool.baseline.runpack_sha256 == hex64('1')
    );
    let policy = a.drift(&caller, "run_policy", None).await?;
    let primary = policy.attribution.primary.clone().context("attributed")?;
    ensure!(
        primary.kind == gait_analysis::drift::CauseKind::PolicyChange
            && primary.before == Some(hex64('e'))
            && primary.after == Some(hex64('f'))
            && policy.attribution.causes.len() == 1,
        "{policy:?}"
    );
    let same = a.drift(&caller, "run_same", None).await?;
    ensure!(
        same.unattributed
            && !same.incomplete
            && same.attribution.causes.is_empty()
            && same.failing.runpack_sha256 == hex64('6')
            && same.baseline.runpack_sha256 == hex64('5'),
        "{same:?}"
    );
    // Against another run as baseline: the tool's result digest again.
    let across = a.drift(&caller, "run_tool", Some("run_same")).await?;
    ensure!(!across.unattributed, "{across:?}");
    // A run with one runpack needs a baseline; an unknown run is 404; a bad id is 400.
    for (run, baseline) in [("run_none", None), ("run_tool", Some("run_none"))] {
        match a.drift(&caller, run, baseline).await {
            Err(AnalysisError::NotFound(_)) => {}
            other => anyhow::bail!("{run}: {other:?}"),
        }
    }
    match a.drift(&caller, "../etc", None).await {
        Err(AnalysisError::Invalid { field: "run", .. }) => {}
        other => anyhow::bail!("bad id: {other:?}"),
    }
    match a.drift(&caller, "run_tool", Some("run_tool")).await {
        Err(AnalysisError::Invalid {
            field: "baseline", ..
        }) => {}
        other => anyhow::bail!("baseline = run: {other:?}"),
    }
    Ok(())
}

/// Records every fold treats in its own way, after an agent's corpus (seqs from 37): a future-dated decision, one
/// without a tool, an egress endpoint and a taint reason code in capitals, a dry run that would have blocked, a
/// critical-risk one, a runpack (indexed, folded into nothing), a decision with no verdict, one with no policy
/// digest and one under another policy.
fn odd_records(salt: u16, base: i64) -> Vec<NewRecord> {
    let d =
        |tool: Option<&str>, verdict: Option<&str>, codes: Value, profile: Value, stage: Value| {
            let mut p = decision("x", "allow", &[], "odd", profile, 'e');
            p["tool_name"] = tool.map_or(Value::Null, |t| json!(t));
            p["verdict"] = verdict.map_or(Value::Null, |v| json!(v));
            p["reason_codes"] = codes;
            p["stage"] = stage;
            p
        };
    let enforce = json!({"stage": "enforce", "would_have_blocked": false});
    let mut payloads = [
        d(
            Some("fs.read"),
            Some("allow"),
            json!([]),
            json!({"risk_class": "low"}),
            enforce.clone(),
        ),
        d(
            None,
            Some("block"),
            json!(["blocked_by_rule"]),
            json!({"risk_class": "high"}),
            enforce.clone(),
        ),
        d(
            Some("mail.send"),
            Some("allow"),
            json!([]),
            json!({"risk_class": "medium", "endpoint_classes": ["fs.read", "NET.smtp"]}),
            enforce.clone(),
        ),
        d(
            Some("doc.read"),
            Some("allow"),
            json!(["Tainted_Input"]),
            json!({"risk_class": "low", "endpoint_classes": ["fs.read"]}),
            enforce.clone(),
        ),
        d(
            Some("fs.write"),
            Some("dry_run"),
            json!(["plan_phase_non_destructive"]),
            json!({"risk_class": "critical", "destructive": true}),
            json!({"stage": "dry_run", "would_have_blocked": true}),
        ),
        d(Some("fs.read"), None, json!([]), json!({}), enforce),
    ];
    // Policy digests: none on the tool-less one, another policy's on the egress one.
    payloads[1]["policy_digest"] = Value::Null;
    payloads[2]["policy_digest"] = json!(hex64('b'));
    let mut out: Vec<NewRecord> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // The first is dated two hours ahead (a skewed clock): it counts at its arrival.
            let created = if i == 0 {
                base + 2 * HOUR
            } else {
                base - i as i64 * 1000
            };
            record(37 + i as u64, salt, "gate.decision", created, p)
        })
        .collect();
    let next = 37 + out.len() as u64;
    out.push(runpack_record(
        next,
        salt,
        base - HOUR,
        "run_odd",
        'c',
        &[("fs.read", 'a')],
    ));
    out
}

/// The corpus with the odd records appended to every agent's stream.
fn odd_corpus(org: &str, base: i64) -> Vec<(AgentKey, Vec<NewRecord>)> {
    let salts = [1u16, 2, 3, 4, 5];
    corpus(org, base)
        .into_iter()
        .zip(salts)
        .map(|((key, mut records), salt)| {
            records.extend(odd_records(salt, base));
            (key, records)
        })
        .collect()
}

/// Everything the upkeep stored for `org`, with the org's name taken out: family definitions and scopes (agents,
/// ranks, representatives), posture per environment and org-wide, regress counts.
async fn folded_state(store: &Store, org: &str, base: i64) -> Result<Value> {
    let filter = AnalysisFilter::org(org.parse()?);
    let (from_day, to_day) = (base / (24 * HOUR) - 5, base / (24 * HOUR) + 3);
    let defs: Vec<Value> = store
        .family_definitions(&filter)
        .await?
        .into_iter()
        .map(|d| {
            json!([
                d.family,
                d.version,
                d.dedup_key,
                d.kind,
                d.tool,
                d.verdict,
                d.inputs
            ])
        })
        .collect();
    let scopes: Vec<Value> = store
        .family_scopes(&filter)
        .await?
        .into_iter()
        .map(|f| {
            json!([
                f.tenant.project.as_str(),
                f.tenant.env.as_str(),
                f.family,
                f.occurrences,
                f.first_seen_unix_ms,
                f.last_seen_unix_ms,
                f.risk_rank,
                f.destructive,
                f.egress_or_taint,
                f.severity_rank,
                f.representative,
                f.agents
            ])
        })
        .collect();
    let mut posture = vec![json!(
        store.posture_counts(&filter, from_day, to_day).await?
    )];
    let mut policies = Vec::new();
    for (project, env) in [
        ("web", "prod"),
        ("web", "dev"),
        ("billing", "prod"),
        ("billing", "staging"),
    ] {
        let env_filter = AnalysisFilter {
            project: Some(project.parse()?),
            env: Some(env.parse()?),
            ..filter.clone()
        };
        posture.push(json!(
            store.posture_counts(&env_filter, from_day, to_day).await?
        ));
        policies.push(json!(
            store
                .policy_counts(&env_filter, None, from_day, to_day)
                .await?
        ));
    }
    let regress = json!(store.regress_counts(&filter, from_day, to_day).await?);
    Ok(
        json!({"definitions": defs, "scopes": scopes, "posture": posture, "policies": policies,
              "regress": regress}),
    )
}

async fn the_feed_folds_exactly_what_reading_the_range_back_folds(db: &TestStore) -> Result<()> {
    let store = db.store();
    let base = now();

    // Read back: every range through the store's own pass. Every batch arrives at `base`, so the future-dated
    // record counts at the same time in each org.
    let corpus = odd_corpus("readback", base);
    let plain = Intake::new(store.clone());
    for (key, records) in &corpus {
        store.agent_connected(key, &hello(), now()).await?;
        for chunk in records.chunks(10) {
            plain.commit_batch(key, chunk, &[], &[], base).await?;
        }
    }
    // Every record but the decision with no verdict is indexed.
    let indexed = catch_up(store, SETTLED).await?;
    ensure!(
        indexed
            == corpus
                .iter()
                .map(|(_, rs)| rs.len() as u64 - 1)
                .sum::<u64>(),
        "{indexed}"
    );
    let want = folded_state(store, "readback", base).await?;
    ensure!(
        want["scopes"].as_array().is_some_and(|s| s.len() > 10)
            && want["regress"].as_array().is_some_and(|r| !r.is_empty())
            && want["policies"][0]
                .as_array()
                .is_some_and(|p| !p.is_empty()),
        "the corpus folds into little: {want:#}"
    );

    // Fed: the same corpus shuffled into batches of random size, redelivered in part, folded at random points,
    // every range from the feed.
    let feed = Arc::new(Feed::new());
    let intake = Intake::with_feed(store.clone(), feed.clone());
    let corpus = odd_corpus("fed", base);
    for (key, _) in &corpus {
        store.agent_connected(key, &hello(), now()).await?;
    }
    let mut rng = Rng(42);
    let (mut folded, mut fed) = (0u64, 0u64);
    // The evidence ids each commit reported, as (id, agent, seq).
    let mut told: Vec<(u64, String, u64)> = Vec::new();
    for (key, records) in &corpus {
        let mut rest = records.as_slice();
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at((1 + rng.below(9)).min(rest.len()));
            rest = tail;
            let (outcome, _) = intake.commit_batch(key, batch, &[], &[], base).await?;
            told.extend(
                outcome
                    .indexed
                    .iter()
                    .map(|(seq, id)| (*id, key.agent_id.to_string(), *seq)),
            );
            if rng.below(3) == 0 {
                let (again, _) = intake.commit_batch(key, batch, &[], &[], base).await?;
                ensure!(
                    again.indexed.is_empty(),
                    "a redelivery indexed {:?}",
                    again.indexed
                );
            }
            if rng.below(5) == 0 {
                let (n, f) = catch_up_fed(store, Some(&feed), SETTLED).await?;
                (folded, fed) = (folded + n, fed + f);
            }
        }
    }
    let (n, f) = catch_up_fed(store, Some(&feed), SETTLED).await?;
    (folded, fed) = (folded + n, fed + f);
    ensure!(
        folded == indexed && fed == folded,
        "folded {folded} of {indexed}, {fed} of them from the feed"
    );
    let got = folded_state(store, "fed", base).await?;
    ensure!(got == want, "fed differs:\n{got:#}\nwant\n{want:#}");
    // The ids each commit reported are the ids the index holds.
    let mut stored: Vec<(u64, String, u64)> = Vec::new();
    let mut filter = gait_store::EvidenceFilter::org("fed".parse()?, 100);
    loop {
        let page = store.evidence(&filter).await?;
        let Some(last) = page.last() else { break };
        filter.before_id = Some(last.id);
        stored.extend(page.iter().map(|r| (r.id, r.agent_id.to_string(), r.seq)));
    }
    told.sort_unstable();
    stored.sort_unstable();
    ensure!(told == stored, "reported {told:?}\nstored {stored:?}");

    // Mixed: batches another replica committed (not in this feed) between fed ones, and a feed that starts
    // after the first rows (a restart). Ranges the feed cannot vouch for are read back; the state is the same.
    let feed = Arc::new(Feed::new());
    let fed_intake = Intake::with_feed(store.clone(), feed.clone());
    let other = Intake::new(store.clone());
    let corpus = odd_corpus("mixed", base);
    for (key, _) in &corpus {
        store.agent_connected(key, &hello(), now()).await?;
    }
    let (mut folded, mut fed) = (0u64, 0u64);
    for (i, (key, records)) in corpus.iter().enumerate() {
        for (j, batch) in records.chunks(7).enumerate() {
            let intake = if i == 0 || (i + j) % 4 == 0 {
                &other
            } else {
                &fed_intake
            };
            intake.commit_batch(key, batch, &[], &[], base).await?;
            if j % 2 == 1 {
                let (n, f) = catch_up_fed(store, Some(&feed), SETTLED).await?;
                (folded, fed) = (folded + n, fed + f);
            }
        }
    }
    let (n, f) = catch_up_fed(store, Some(&feed), SETTLED).await?;
    (folded, fed) = (folded + n, fed + f);
    ensure!(
        folded == indexed && fed > 0 && fed < folded,
        "folded {folded} of {indexed}, {fed} of them from the feed"
    );
    let got = folded_state(store, "mixed", base).await?;
    ensure!(got == want, "mixed differs:\n{got:#}\nwant\n{want:#}");
    Ok(())
}

/// One day's decisions of `tool` for the shift test: `allow` allows then `block` blocks, under policy digest
/// `hex64(policy)` at `stage`; the blocks destructive and high-risk when `risky`.
#[allow(clippy::too_many_arguments)]
fn shift_day(
    out: &mut Vec<NewRecord>,
    tool: &str,
    at: i64,
    (allow, block): (u64, u64),
    policy: char,
    stage: &str,
    risky: bool,
) {
    for i in 0..allow + block {
        let verdict = if i < allow { "allow" } else { "block" };
        let profile = if risky && verdict == "block" {
            json!({"risk_class": "high", "endpoint_classes": ["fs.delete"], "destructive": true})
        } else {
            json!({"risk_class": "low", "endpoint_classes": ["fs.read"]})
        };
        let mut p = decision(tool, verdict, &[], "rule", profile, 'd');
        p["policy_digest"] = json!(hex64(policy));
        p["stage"]["stage"] = json!(stage);
        let seq = out.len() as u64 + 1;
        out.push(record(seq, 600, "gate.decision", at + i as i64 * 1_000, &p));
    }
}

async fn verdict_shifts_are_attributed_to_the_policy_the_tool_the_stage_or_nothing(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let base = now();
    let day = 24 * HOUR;
    // Noon of each day, so no decision crosses midnight.
    let noon = |back: i64| (base.div_euclid(day) - back) * day + 12 * HOUR;
    let tenant = Tenant::from_parts("acme", "web", "prod")?;
    let key = AgentKey::new(tenant.clone(), "shift-1".parse()?);
    store.agent_connected(&key, &hello(), base).await?;
    let mut records = Vec::new();
    // Nine days back to five: 30 allowed calls a day, policy `a`, enforced. Four days back to today: the mix
    // moves, with a different thing changing for each tool.
    for back in (0..10).rev() {
        let before = back >= 5;
        let at = noon(back);
        let mix = if before { (30, 0) } else { (10, 20) };
        shift_day(
            &mut records,
            "tool.policy",
            at,
            mix,
            if before { 'a' } else { 'b' },
            "enforce",
            false,
        );
        shift_day(&mut records, "tool.shape", at, mix, 'a', "enforce", true);
        shift_day(
            &mut records,
            "tool.stage",
            at,
            mix,
            'a',
            if before { "observe" } else { "enforce" },
            false,
        );
        shift_day(&mut records, "tool.none", at, mix, 'a', "enforce", false);
        // Too few calls a day to compare, however far the mix moves.
        shift_day(
            &mut records,
            "tool.thin",
            at,
            if before { (5, 0) } else { (0, 5) },
            'b',
            "enforce",
            false,
        );
        // A steady mix: no shift.
        shift_day(
            &mut records,
            "tool.steady",
            at,
            (20, 10),
            'a',
            "enforce",
            false,
        );
    }
    let intake = Intake::new(store.clone());
    for chunk in records.chunks(64) {
        intake.commit_batch(&key, chunk, &[], &[], base).await?;
    }
    catch_up(store, SETTLED).await?;

    let a = analytics(store);
    let (auth, root) = admin();
    let caller = auth
        .authorize(root, Permission::EvidenceRead, tenant.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = a.verdict_shifts(&caller, Some(30), None, base).await?;
    let shift_day = base.div_euclid(day) - 4;
    let found: Vec<(&str, i64, &str, u32)> = report
        .shifts
        .iter()
        .map(|s| {
            (
                s.tool.as_str(),
                s.shift.day,
                s.shift.verdict.as_str(),
                s.shift.moved_per_mille,
            )
        })
        .collect();
    ensure!(
        found
            == [
                ("tool.none", shift_day, "allow", 667),
                ("tool.policy", shift_day, "allow", 667),
                ("tool.shape", shift_day, "allow", 667),
                ("tool.stage", shift_day, "allow", 667),
            ],
        "{found:?}\n{report:#?}"
    );
    let cause = |tool: &str| {
        report
            .shifts
            .iter()
            .find(|s| s.tool == tool)
            .and_then(|s| s.shift.attribution.primary.clone())
            .map(|c| (c.kind, c.field, c.before, c.after))
    };
    use gait_analysis::drift::CauseKind;
    ensure!(
        cause("tool.policy")
            == Some((
                CauseKind::PolicyChange,
                "policy_digest".into(),
                Some(hex64('a')),
                Some(hex64('b'))
            )),
        "{:?}",
        cause("tool.policy")
    );
    ensure!(
        cause("tool.shape")
            == Some((
                CauseKind::ToolChange,
                "destructive_per_mille".into(),
                Some("0".into()),
                Some("666".into())
            )),
        "{:?}",
        cause("tool.shape")
    );
    ensure!(
        cause("tool.stage")
            == Some((
                CauseKind::RuntimeChange,
                "stage".into(),
                Some("observe".into()),
                Some("enforce".into())
            )),
        "{:?}",
        cause("tool.stage")
    );
    let none = report
        .shifts
        .iter()
        .find(|s| s.tool == "tool.none")
        .context("tool.none")?;
    ensure!(
        none.unattributed && none.shift.attribution.causes.is_empty(),
        "{none:?}"
    );
    // The baseline is the five days before; the shift is reported once, on its first day.
    ensure!(
        none.shift.baseline_from_day == shift_day - 5
            && none.shift.baseline_to_day == shift_day - 1,
        "{none:?}"
    );

    // One tool; a window that ends before the shift sees none; out-of-range days are refused naming the field.
    let one = a
        .verdict_shifts(&caller, Some(30), Some("tool.policy"), base)
        .await?;
    ensure!(one.shifts.len() == 1 && one.shifts[0].tool == "tool.policy");
    // A window that starts on the shift's day finds it against the same baseline, read from before the window.
    let short = a.verdict_shifts(&caller, Some(5), None, base).await?;
    ensure!(
        short.from_day == shift_day
            && short.shifts.len() == 4
            && short
                .shifts
                .iter()
                .all(|s| s.shift.baseline_from_day == shift_day - 5),
        "{short:?}"
    );
    let earlier = a
        .verdict_shifts(&caller, Some(30), None, base - 5 * day)
        .await?;
    ensure!(earlier.shifts.is_empty(), "{earlier:?}");
    for days in [0, 91] {
        match a.verdict_shifts(&caller, Some(days), None, base).await {
            Err(AnalysisError::Invalid { field: "days", .. }) => {}
            other => anyhow::bail!("days {days}: {other:?}"),
        }
    }
    // Another environment of the same org has none of these.
    let dev = auth
        .authorize(
            admin().1,
            Permission::EvidenceRead,
            Tenant::from_parts("acme", "web", "dev")?,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        a.verdict_shifts(&dev, None, None, base)
            .await?
            .shifts
            .is_empty()
    );
    Ok(())
}
