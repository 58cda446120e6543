//! Approval governance at the feature level, on both backends: requests raised from agents' records, decided by
//! several operators whose `Authorized<Tenant>` comes from the real `Authorizer` over loaded role bindings —
//! quorum of distinct people, AND-composition of groups, separation of duties, expiry, denial — and the issued
//! Gait approval tokens, which verify under the approval key and bind the request's intent and policy.
#![allow(clippy::disallowed_methods)] // tests read the clock

use std::sync::Arc;

use anyhow::{Context as _, Result, bail, ensure};
use gait_aggregator::approval::policy::PolicySpec;
use gait_aggregator::approval::{ApprovalError, Approvals};
use gait_aggregator::auth::{
    AdminTokenMode, Authorized, Authorizer, Operator, Permission, Principal,
};
use gait_artifact::approval::{ApprovalCheck, validate_approval_token};
use gait_canon::sign::{PublicKey, SigningKey};
use gait_store::testing::TestStore;
use gait_store::{
    AgentKey, BindingScope, BindingSource, NewRecord, RoleBinding, Store, SubjectKind, Tenant,
};
use gait_wire::{APPROVAL_REQUEST_KIND, ApprovalRequestPayload};

use crate::common;

const ISSUER: &str = "https://idp.example";

fn tenant() -> Tenant {
    Tenant::from_parts("acme", "web", "prod").expect("tenant")
}

fn agent() -> AgentKey {
    AgentKey::new(tenant(), "agent-1".parse().expect("agent id"))
}

fn binding(kind: SubjectKind, subject: &str, role: &str) -> RoleBinding {
    RoleBinding {
        id: 1,
        kind,
        subject: subject.into(),
        role: role.into(),
        scope: BindingScope::project(
            "acme".parse().expect("org"),
            "web".parse().expect("project"),
        ),
        source: BindingSource::Api,
        created_by: "test".into(),
        created_unix_ms: 0,
    }
}

/// The authorizer with approvers bound through groups and one author who is an approver as well.
fn authorizer() -> Authorizer {
    let auth = Authorizer::new(AdminTokenMode::Disabled);
    auth.load(&[
        binding(SubjectKind::Group, "security", "approver"),
        binding(SubjectKind::Group, "web-owners", "approver"),
        binding(SubjectKind::User, "erin", "approver"),
        binding(SubjectKind::User, "erin", "policy_author"),
    ]);
    auth
}

fn operator(subject: &str, groups: &[&str]) -> Arc<Principal> {
    Arc::new(Principal::Operator(Operator {
        issuer: ISSUER.into(),
        subject: subject.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }))
}

fn actor(subject: &str) -> String {
    format!("oidc:{ISSUER}#{subject}")
}

fn decider(auth: &Authorizer, who: Arc<Principal>) -> Authorized<Tenant> {
    auth.authorize(who, Permission::ApprovalDecide, tenant())
        .expect("an approver in scope may decide")
}

fn payload(requested_by: &str, intent: u8, ttl_seconds: u64) -> ApprovalRequestPayload {
    ApprovalRequestPayload {
        schema_id: gait_wire::approval::APPROVAL_REQUEST_SCHEMA.into(),
        intent_digest: hex::encode([intent; 32]),
        policy_digest: hex::encode([0xbb; 32]),
        tool_name: "db.drop".into(),
        phase: "apply".into(),
        destructive: true,
        scope: vec![
            "tool:db.drop".into(),
            "phase:apply".into(),
            "destructive:apply".into(),
        ],
        requested_by: requested_by.into(),
        trace_id: "trace-1".into(),
        created_unix_ms: gait_aggregator::clock::unix_ms(),
        ttl_seconds,
    }
}

/// Raises one request as ingest does (records and requests in one transaction); returns its id.
async fn raise(
    store: &Store,
    approvals: &Approvals,
    seq: u64,
    p: &ApprovalRequestPayload,
) -> Result<u64> {
    let record = NewRecord {
        seq,
        prev_hash: [0; 32],
        hash: [seq as u8; 32],
        class: "decision".into(),
        kind: APPROVAL_REQUEST_KIND.into(),
        created_unix_ms: p.created_unix_ms,
        bundle_epoch: None,
        bundle_digest: None,
        bundle_since_ms: None,
        payload: serde_json::to_vec(p)?,
    };
    let now = gait_aggregator::clock::unix_ms();
    let requests = approvals
        .requests_from_records(&agent(), std::slice::from_ref(&record), now)
        .await?;
    ensure!(
        requests.len() == 1,
        "one request per approval.request record"
    );
    let (stored, _) = store
        .transaction(async |tx| tx.insert_approval_request(&requests[0], now).await)
        .await?;
    Ok(stored.id)
}

async fn setup(db: &TestStore) -> Result<(Approvals, PublicKey)> {
    let store = db.store();
    store
        .agent_connected(
            &agent(),
            &gait_store::AgentHello {
                cert_serial: "0a1b".parse()?,
                cert_not_after_unix_ms: i64::MAX,
                cert_issuer: "CN=test CA".into(),
                remote_addr: "127.0.0.1:1".into(),
                agent_version: "test".into(),
                active_bundle: None,
                received_bundle: None,
                outbox_depth: 0,
                shed_total: 0,
            },
            gait_aggregator::clock::unix_ms(),
        )
        .await?;
    let approvals = Approvals::new(store.clone(), SigningKey::generate());
    let public = approvals.public_key();
    Ok((approvals, public))
}

async fn set_policy(
    approvals: &Approvals,
    auth: &Authorizer,
    author: &str,
    spec: PolicySpec,
) -> Result<()> {
    let scope = BindingScope::project("acme".parse()?, "web".parse()?);
    let caller = auth
        .authorize(
            operator(author, &[]),
            Permission::ApprovalPolicyWrite,
            scope,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    approvals
        .set_policy(&caller, "destructive-db", spec)
        .await?;
    Ok(())
}

gait_store::store_tests!(
    quorum_groups_and_separation_of_duties_decide_when_tokens_are_issued,
    a_denied_or_expired_request_cannot_be_approved,
    concurrent_approvals_that_meet_the_quorum_issue_the_tokens_once,
    the_http_api_maps_the_rules_to_statuses_and_hides_other_environments,
    config_policies_apply_as_a_set_idempotently_with_audit_entries_and_the_api_cannot_change_them,
    two_replicas_starting_at_once_apply_the_config_policies_once,
);

async fn quorum_groups_and_separation_of_duties_decide_when_tokens_are_issued(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let (approvals, key) = setup(db).await?;
    let auth = authorizer();
    set_policy(
        &approvals,
        &auth,
        "erin",
        PolicySpec {
            tools: vec!["db.*".into()],
            quorum: 2,
            groups: vec!["security".into(), "web-owners".into()],
            max_token_ttl_seconds: 600,
            author_cannot_approve: true,
            ..PolicySpec::default()
        },
    )
    .await?;
    let id = raise(store, &approvals, 1, &payload("alice", 0xaa, 3600)).await?;

    // The requester cannot approve, even holding the approver role through her group.
    let alice = decider(&auth, operator("alice", &["security"]));
    match approvals.approve(&alice, id, "").await {
        Err(e @ ApprovalError::Rule(_)) if e.is_forbidden() => {}
        other => bail!("the requester approved her own request: {other:?}"),
    }
    // The author of the policy version in force cannot approve under it.
    let erin = decider(&auth, operator("erin", &[]));
    match approvals.approve(&erin, id, "").await {
        Err(e) if e.is_forbidden() => {}
        other => bail!("the policy's author approved: {other:?}"),
    }

    // bob (security) approves twice: recorded once, still pending.
    let bob = decider(&auth, operator("bob", &["security"]));
    let first = approvals.approve(&bob, id, "CHG-1").await?;
    let second = approvals.approve(&bob, id, "CHG-1").await?;
    ensure!(
        first.recorded && !second.recorded,
        "a second approval by one person is not recorded"
    );
    ensure!(second.request.status == "pending" && second.request.decisions.len() == 1);

    // carol is also in security: quorum 2 is met but web-owners has no approver of its own.
    let carol = decider(&auth, operator("carol", &["security"]));
    let waiting = approvals.approve(&carol, id, "CHG-1").await?;
    ensure!(
        waiting.request.status == "pending",
        "{:?}",
        waiting.request.status
    );
    let missing = waiting.request.missing.clone().unwrap_or_default();
    ensure!(missing.contains("web-owners"), "{missing}");
    ensure!(approvals.deliverable(&agent(), 0).await?.is_empty());

    // dave (web-owners) completes the AND: approved, one token per approver.
    let dave = decider(&auth, operator("dave", &["web-owners"]));
    let done = approvals.approve(&dave, id, "CHG-1").await?;
    ensure!(
        done.request.status == "approved",
        "{:?}",
        done.request.status
    );
    let delivered = approvals.deliverable(&agent(), 0).await?;
    ensure!(delivered.len() == 1 && delivered[0].request_id == id);
    let tokens = &delivered[0].tokens;
    ensure!(
        tokens.len() == 3,
        "one token per approver: {}",
        tokens.len()
    );
    let scope: Vec<String> = vec![
        "destructive:apply".into(),
        "phase:apply".into(),
        "tool:db.drop".into(),
    ];
    let intent = hex::encode([0xaa; 32]);
    let policy = hex::encode([0xbb; 32]);
    let now = gait_aggregator::clock::now_utc();
    let check = ApprovalCheck {
        intent_digest: &intent,
        policy_digest: &policy,
        delegation_binding_digest: "",
        required_scope: &scope,
        target_count: 1,
        op_count: 1,
        now,
    };
    let mut approvers = Vec::new();
    for doc in tokens {
        let token = validate_approval_token(&doc.0, &key, &check)
            .map_err(|e| anyhow::anyhow!("issued token does not validate: {e}"))?;
        let ttl = token.expires_at.datetime() - token.created_at.datetime();
        ensure!(
            ttl <= time::Duration::seconds(600),
            "token TTL {ttl} above the policy's maximum"
        );
        approvers.push(token.approver_identity);
    }
    approvers.sort();
    ensure!(
        approvers == vec![actor("bob"), actor("carol"), actor("dave")],
        "{approvers:?}"
    );
    // Bound to its intent: another intent's check fails.
    let other = hex::encode([0xcc; 32]);
    let wrong = ApprovalCheck {
        intent_digest: &other,
        ..check.clone()
    };
    ensure!(validate_approval_token(&tokens[0].0, &key, &wrong).is_err());
    // A tampered token does not verify.
    let tampered = String::from_utf8(tokens[0].0.clone())?.replace("db.drop", "db.read");
    ensure!(validate_approval_token(tampered.as_bytes(), &key, &check).is_err());

    // Nothing more can be decided on it.
    match approvals
        .approve(&decider(&auth, operator("frank", &["web-owners"])), id, "")
        .await
    {
        Err(ApprovalError::Rule(_)) => {}
        other => bail!("a decided request was decided again: {other:?}"),
    }
    // Another tenant's approver does not see it.
    let other_tenant = Tenant::from_parts("acme", "api", "prod")?;
    ensure!(
        auth.authorize(
            operator("bob", &["security"]),
            Permission::ApprovalRead,
            other_tenant
        )
        .is_err()
    );
    Ok(())
}

async fn a_denied_or_expired_request_cannot_be_approved(db: &TestStore) -> Result<()> {
    let store = db.store();
    let (approvals, _key) = setup(db).await?;
    let auth = authorizer();
    // No policy: the default rules (one approver who is not the requester).
    let denied = raise(store, &approvals, 1, &payload("alice", 0x01, 3600)).await?;
    let bob = decider(&auth, operator("bob", &["security"]));
    let outcome = approvals
        .deny(&bob, denied, "not during the freeze")
        .await?;
    ensure!(outcome.request.status == "denied");
    match approvals
        .approve(
            &decider(&auth, operator("carol", &["security"])),
            denied,
            "",
        )
        .await
    {
        Err(ApprovalError::Rule(_)) => {}
        other => bail!("a denied request was approved: {other:?}"),
    }

    let expiring = raise(store, &approvals, 2, &payload("alice", 0x02, 1)).await?;
    // Wait (observably) until the request's lifetime is over.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let view = approvals
            .get(
                &auth
                    .authorize(
                        operator("bob", &["security"]),
                        Permission::ApprovalRead,
                        tenant(),
                    )
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
                expiring,
            )
            .await?;
        if view.status == "expired" {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the request never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    match approvals.approve(&bob, expiring, "").await {
        Err(ApprovalError::Rule(e)) => ensure!(e.to_string().contains("expired"), "{e}"),
        other => bail!("an expired request was approved: {other:?}"),
    }
    ensure!(approvals.deliverable(&agent(), 0).await?.is_empty());
    // The default rules let one approver who is not the requester approve.
    let open = raise(store, &approvals, 3, &payload("alice", 0x03, 3600)).await?;
    let done = approvals.approve(&bob, open, "").await.context("approve")?;
    ensure!(done.request.status == "approved");
    Ok(())
}

async fn concurrent_approvals_that_meet_the_quorum_issue_the_tokens_once(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let (approvals, _) = setup(db).await?;
    let auth = authorizer();
    set_policy(
        &approvals,
        &auth,
        "erin",
        PolicySpec {
            quorum: 3,
            ..PolicySpec::default()
        },
    )
    .await?;
    let deciders = [
        decider(&auth, operator("bob", &["security"])),
        decider(&auth, operator("carol", &["web-owners"])),
        decider(&auth, operator("dave", &["security"])),
    ];
    // Three approvers at once on each of several requests: each decision must see the others once it holds the
    // request, so the quorum is met by whichever comes last and the tokens are issued exactly once. Without the
    // request lock two decisions can each count only themselves and leave the request pending for good.
    const REQUESTS: u64 = 12;
    for seq in 1..=REQUESTS {
        let id = raise(store, &approvals, seq, &payload("alice", seq as u8, 3600)).await?;
        let (a, b, c) = tokio::join!(
            approvals.approve(&deciders[0], id, ""),
            approvals.approve(&deciders[1], id, ""),
            approvals.approve(&deciders[2], id, "")
        );
        ensure!(
            a?.recorded && b?.recorded && c?.recorded,
            "every decision counts"
        );
    }
    let delivered = approvals.deliverable(&agent(), 0).await?;
    ensure!(
        delivered.len() == REQUESTS as usize && delivered.iter().all(|d| d.tokens.len() == 3),
        "every request approved once, one token per approver: {} approved",
        delivered.len()
    );
    Ok(())
}

async fn the_http_api_maps_the_rules_to_statuses_and_hides_other_environments(
    db: &TestStore,
) -> Result<()> {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    const TOKEN: &str = "test-admin-token";
    let store = db.store();
    let approvals = Arc::new(Approvals::new(store.clone(), SigningKey::generate()));
    let app = gait_aggregator::api::router(gait_aggregator::api::AppState {
        approvals: approvals.clone(),
        ..common::app_state(db, TOKEN, SigningKey::generate())
    });
    let call = |method: &'static str, uri: String, body: Option<Value>| {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
                .expect("request");
            let resp = app.oneshot(req).await.expect("router answers");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    setup(db).await?;
    // A policy: invalid rules name the field; a valid one is version 1.
    let (s, v) = call(
        "PUT",
        "/v1/approval-policies".into(),
        Some(json!({"org": "acme", "project": "web", "name": "p", "rules": {"quorum": 0}})),
    )
    .await;
    ensure!(
        s == StatusCode::BAD_REQUEST && v.to_string().contains("quorum"),
        "{s} {v}"
    );
    let (s, v) = call(
        "PUT",
        "/v1/approval-policies".into(),
        Some(json!({"org": "acme", "project": "web", "name": "p", "rules": {"quorum": 1, "tools": ["db.*"]}})),
    )
    .await;
    ensure!(
        s == StatusCode::OK && v["policy"]["version"] == 1,
        "{s} {v}"
    );
    let (s, v) = call(
        "GET",
        "/v1/approval-policies?org=acme&project=web&env=prod".into(),
        None,
    )
    .await;
    ensure!(
        s == StatusCode::OK && v["policies"].as_array().map(Vec::len) == Some(1),
        "{s} {v}"
    );

    // The requester (here the admin token itself) cannot approve: 403 naming the rule.
    let mine = raise(store, &approvals, 1, &payload("admin-token", 0x11, 3600)).await?;
    let base = "/v1/orgs/acme/projects/web/envs/prod/approvals";
    let (s, v) = call("POST", format!("{base}/{mine}/approve"), None).await;
    ensure!(
        s == StatusCode::FORBIDDEN && v.to_string().contains("someone else"),
        "{s} {v}"
    );
    // Another request: approved once (200), then 409 for any further decision.
    let other = raise(store, &approvals, 2, &payload("alice", 0x12, 3600)).await?;
    let (s, v) = call(
        "POST",
        format!("{base}/{other}/approve"),
        Some(json!({"reason": "CHG-1"})),
    )
    .await;
    ensure!(
        s == StatusCode::OK && v["request"]["status"] == "approved",
        "{s} {v}"
    );
    ensure!(
        v["request"]["tokens"].as_array().map(Vec::len) == Some(1),
        "{v}"
    );
    let (s, v) = call("POST", format!("{base}/{other}/deny"), None).await;
    ensure!(s == StatusCode::CONFLICT, "{s} {v}");
    // Another environment does not see it: 404, nothing of it in the body.
    let (s, v) = call(
        "GET",
        format!("/v1/orgs/acme/projects/web/envs/dev/approvals/{other}"),
        None,
    )
    .await;
    ensure!(
        s == StatusCode::NOT_FOUND && !v.to_string().contains(&hex::encode([0x12u8; 32])),
        "{s} {v}"
    );
    let (s, v) = call("GET", format!("{base}?status=approved"), None).await;
    ensure!(
        s == StatusCode::OK && v["approvals"].as_array().map(Vec::len) == Some(1),
        "{s} {v}"
    );
    let (s, v) = call("GET", format!("{base}?status=bogus"), None).await;
    ensure!(
        s == StatusCode::BAD_REQUEST && v.to_string().contains("status"),
        "{s} {v}"
    );
    Ok(())
}

/// The audit entries from leaf `from` on, as JSON.
async fn audit_entries(store: &Store, from: u64) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for row in store.audit_entries(from, 1_000).await? {
        out.push(serde_json::from_slice(&row.line)?);
    }
    Ok(out)
}

fn config_policy(yaml: &str) -> gait_aggregator::config::ApprovalPolicyConfig {
    serde_saphyr::from_str(yaml).expect("policy entry")
}

async fn config_policies_apply_as_a_set_idempotently_with_audit_entries_and_the_api_cannot_change_them(
    db: &TestStore,
) -> Result<()> {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use gait_aggregator::approval::config::apply_config;
    use http_body_util::BodyExt as _;
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    const TOKEN: &str = "test-admin-token";
    let store = db.store();
    let (approvals, _) = setup(db).await?;
    let now = gait_aggregator::clock::unix_ms();
    let drops = config_policy(
        "{ name: drops, org: acme, project: web, tools: [db.*], quorum: 2, groups: [security, web-owners] }",
    );
    let org_wide = config_policy("{ org: acme, quorum: 1 }");
    let reader = authorizer()
        .authorize(
            operator("bob", &["security"]),
            Permission::ApprovalRead,
            BindingScope::env("acme".parse()?, "web".parse()?, "prod".parse()?),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let listed = async || -> Result<Vec<(String, u64, String)>> {
        Ok(approvals
            .policies(&reader)
            .await?
            .into_iter()
            .map(|p| {
                (
                    p.stored.name,
                    p.stored.version,
                    p.stored.source.as_str().to_owned(),
                )
            })
            .collect())
    };

    // First start: both added, one set entry each by actor config, no digest before.
    let applied = apply_config(store, &[drops.clone(), org_wide.clone()], now).await?;
    ensure!(
        applied.added.len() == 2 && applied.replaced.is_empty() && applied.removed.is_empty(),
        "{applied:?}"
    );
    let entries = audit_entries(store, 0).await?;
    ensure!(entries.len() == 2, "{entries:?}");
    for e in &entries {
        ensure!(
            e["actor"] == "config" && e["action"] == "approval_policy.set",
            "{e}"
        );
        ensure!(
            e.get("before").is_none_or(Value::is_null)
                && e["after"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("sha256:")),
            "{e}"
        );
    }
    ensure!(
        listed().await?
            == [
                ("config".to_owned(), 1, "config".to_owned()),
                ("drops".to_owned(), 1, "config".to_owned())
            ],
        "{:?}",
        listed().await?
    );
    // A request of acme/web/prod is judged under the most specific one.
    let id = raise(store, &approvals, 1, &payload("alice", 0x21, 3600)).await?;
    let view = approvals
        .get(&decider(&authorizer(), operator("bob", &["security"])), id)
        .await?;
    ensure!(
        view.approval_policy
            .as_ref()
            .is_some_and(|p| p.name == "drops"),
        "{:?}",
        view.approval_policy
    );

    // A restart with the same file (spelled differently) changes nothing and appends nothing.
    let respelled = config_policy(
        "{ name: drops, org: acme, project: web, tools: [' DB.*'], quorum: 2, groups: [web-owners, security] }",
    );
    let again = apply_config(store, &[org_wide.clone(), respelled], now + 1).await?;
    ensure!(again.is_empty(), "{again:?}");
    ensure!(audit_entries(store, 2).await?.is_empty());

    // An edited entry is replaced by its next version; its entry carries both digests.
    let edited = config_policy(
        "{ name: drops, org: acme, project: web, tools: [db.*], quorum: 3, groups: [security, web-owners] }",
    );
    let applied = apply_config(store, &[edited.clone(), org_wide.clone()], now + 2).await?;
    ensure!(applied.replaced.len() == 1 && applied.added.is_empty() && applied.removed.is_empty());
    let (before, after) = &applied.replaced[0];
    ensure!(before.version == 1 && after.version == 2 && before.digest != after.digest);
    let entries = audit_entries(store, 2).await?;
    ensure!(entries.len() == 1, "{entries:?}");
    ensure!(
        entries[0]["before"] == format!("sha256:{}", before.digest).as_str()
            && entries[0]["after"] == format!("sha256:{}", after.digest).as_str()
            && entries[0]["actor"] == "config",
        "{}",
        entries[0]
    );
    // The request raised before keeps the version it was judged under.
    let view = approvals
        .get(&decider(&authorizer(), operator("bob", &["security"])), id)
        .await?;
    ensure!(
        view.approval_policy
            .as_ref()
            .is_some_and(|p| p.version == 1)
    );

    // A removed entry is removed: no longer listed, an audit entry with only the digest before.
    let applied = apply_config(store, std::slice::from_ref(&edited), now + 3).await?;
    ensure!(applied.removed.len() == 1 && applied.removed[0].name == "config");
    let entries = audit_entries(store, 3).await?;
    ensure!(
        entries.len() == 1
            && entries[0]["action"] == "approval_policy.remove"
            && entries[0]["before"]
                .as_str()
                .is_some_and(|b| b.starts_with("sha256:"))
            && entries[0].get("after").is_none_or(Value::is_null),
        "{entries:?}"
    );
    ensure!(
        listed().await? == [("drops".to_owned(), 2, "config".to_owned())],
        "{:?}",
        listed().await?
    );

    // The API cannot overwrite the config's policy: 409 saying where it comes from; other names are its own.
    let app = gait_aggregator::api::router(gait_aggregator::api::AppState {
        approvals: Arc::new(Approvals::new(store.clone(), SigningKey::generate())),
        ..common::app_state(db, TOKEN, SigningKey::generate())
    });
    let put = |body: Value| {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .method("PUT")
                .uri("/v1/approval-policies")
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .expect("request");
            let resp = app.oneshot(req).await.expect("router answers");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (s, v) =
        put(json!({"org": "acme", "project": "web", "name": "drops", "rules": {"quorum": 1}}))
            .await;
    ensure!(
        s == StatusCode::CONFLICT && v.to_string().contains("config file"),
        "{s} {v}"
    );
    ensure!(
        listed().await? == [("drops".to_owned(), 2, "config".to_owned())],
        "the refused write changed nothing"
    );
    // The removed config policy's name is free for the API again.
    let (s, v) = put(json!({"org": "acme", "name": "config", "rules": {"quorum": 1}})).await;
    ensure!(
        s == StatusCode::OK && v["policy"]["source"] == "api" && v["policy"]["version"] == 2,
        "{s} {v}"
    );
    // ... until the file names it again: the config takes it over with the next version.
    let applied = apply_config(store, &[edited, org_wide], now + 4).await?;
    ensure!(
        applied.replaced.len() == 1 && applied.replaced[0].0.source == BindingSource::Api,
        "{applied:?}"
    );
    let (s, v) = put(json!({"org": "acme", "name": "config", "rules": {"quorum": 2}})).await;
    ensure!(s == StatusCode::CONFLICT, "{s} {v}");

    // Removal through the API: a config policy is 409, an API policy goes (audited), a missing one is 404.
    let del = |query: &'static str| {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .method("DELETE")
                .uri(format!("/v1/approval-policies?{query}"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .expect("request");
            let resp = app.oneshot(req).await.expect("router answers");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (s, v) = del("org=acme&project=web&name=drops").await;
    ensure!(
        s == StatusCode::CONFLICT && v.to_string().contains("config file"),
        "{s} {v}"
    );
    let (s, v) =
        put(json!({"org": "acme", "project": "web", "name": "mine", "rules": {"quorum": 1}})).await;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let before = store.audit_head().await?.size;
    let (s, v) = del("org=acme&project=web&name=mine").await;
    ensure!(
        s == StatusCode::OK && v["policy"]["removed_unix_ms"].is_i64(),
        "{s} {v}"
    );
    let entries = audit_entries(store, before).await?;
    ensure!(
        entries.len() == 1
            && entries[0]["action"] == "approval_policy.remove"
            && entries[0]["actor"] == "admin-token",
        "{entries:?}"
    );
    ensure!(
        !listed().await?.iter().any(|(name, _, _)| name == "mine"),
        "a removed policy is still listed"
    );
    let (s, v) = del("org=acme&project=web&name=mine").await;
    ensure!(s == StatusCode::NOT_FOUND, "{s} {v}");
    let (s, v) = del("org=acme&project=web").await;
    ensure!(
        s == StatusCode::BAD_REQUEST && v.to_string().contains("name"),
        "{s} {v}"
    );
    Ok(())
}

/// Two aggregators on one database start at the same moment with the same file: both starts succeed and the
/// policies are added once, with one audit entry each.
async fn two_replicas_starting_at_once_apply_the_config_policies_once(
    db: &TestStore,
) -> Result<()> {
    use gait_aggregator::approval::config::apply_config;
    let store = db.store();
    let set = [
        config_policy("{ name: drops, org: acme, project: web, tools: [db.*], quorum: 2 }"),
        config_policy("{ org: acme, quorum: 1 }"),
    ];
    for round in 0..5_i64 {
        // Each round edits the rules, so both replicas try to add the same next version.
        let set: Vec<_> = set
            .iter()
            .cloned()
            .map(|mut p| {
                p.max_token_ttl_seconds = Some(600 + round as u64);
                p
            })
            .collect();
        let now = gait_aggregator::clock::unix_ms();
        let (a, b) = tokio::join!(
            apply_config(store, &set, now),
            apply_config(store, &set, now)
        );
        let (a, b) = (a.context("replica a")?, b.context("replica b")?);
        let changed = a.added.len() + a.replaced.len() + b.added.len() + b.replaced.len();
        ensure!(changed == 2, "round {round}: {a:?} {b:?}");
    }
    let entries = audit_entries(store, 0).await?;
    ensure!(
        entries.len() == 10,
        "{} entries: {entries:?}",
        entries.len()
    );
    Ok(())
}
