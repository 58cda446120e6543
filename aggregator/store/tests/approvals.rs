//! The approvals domain on both backends: policy versions, idempotent requests, one decision per actor, a
//! request that moves once, tenancy isolation and what an agent's poll delivers.
#![allow(clippy::disallowed_methods)] // tests read the clock

use anyhow::{Result, ensure};
use gait_store::testing::TestStore;
use gait_store::{
    AgentKey, ApprovalState, ApprovalVote, BindingScope, NewApprovalDecision, NewApprovalPolicy,
    NewApprovalRequest, Tenant,
};

const NOW: i64 = 1_764_000_000_000;

fn tenant(org: &str) -> Tenant {
    Tenant::from_parts(org, "web", "prod").expect("test tenant")
}

fn key(org: &str, agent: &str) -> AgentKey {
    AgentKey::new(tenant(org), agent.parse().expect("agent id"))
}

fn request(k: &AgentKey, seq: u64) -> NewApprovalRequest {
    NewApprovalRequest {
        key: k.clone(),
        seq,
        tool: "db.drop".into(),
        phase: "apply".into(),
        destructive: true,
        scope: vec![
            "destructive:apply".into(),
            "phase:apply".into(),
            "tool:db.drop".into(),
        ],
        intent_digest: hex::encode([1u8; 32]),
        policy_digest: hex::encode([2u8; 32]),
        requested_by: "uid:1000".into(),
        trace_id: "trace-1".into(),
        created_unix_ms: NOW - 10,
        expires_unix_ms: NOW + 3_600_000,
        approval_policy_id: None,
    }
}

fn vote(actor: &str, v: ApprovalVote) -> NewApprovalDecision {
    NewApprovalDecision {
        actor: actor.into(),
        groups: vec!["security".into()],
        vote: v,
        reason: "CHG-1".into(),
    }
}

gait_store::store_tests!(
    approval_policies_are_versioned_per_scope_and_name,
    approval_requests_are_idempotent_decided_once_and_tenant_scoped,
);

async fn approval_policies_are_versioned_per_scope_and_name(db: &TestStore) -> Result<()> {
    let store = db.store();
    let env_scope = BindingScope::env("acme".parse()?, "web".parse()?, "prod".parse()?);
    let policy = |spec: &str| NewApprovalPolicy {
        scope: env_scope.clone(),
        name: "destructive".into(),
        spec: spec.into(),
        digest: hex::encode([spec.len() as u8; 32]),
    };
    let first = store
        .transaction(async |tx| tx.put_approval_policy(&policy("{}"), "alice", NOW).await)
        .await?;
    let second = store
        .transaction(async |tx| {
            tx.put_approval_policy(&policy(r#"{"quorum":2}"#), "bob", NOW + 1)
                .await
        })
        .await?;
    ensure!(
        first.version == 1 && second.version == 2,
        "{first:?} {second:?}"
    );
    let listed = store.approval_policies(&"acme".parse()?).await?;
    ensure!(listed.len() == 1 && listed[0].id == second.id, "{listed:?}");
    // The old version stays readable: a request judged under it names it.
    ensure!(store.approval_policy(first.id).await?.map(|p| p.created_by) == Some("alice".into()));
    ensure!(store.approval_policies(&"other".parse()?).await?.is_empty());
    // A policy must name an org.
    let mut bad = policy("{}");
    bad.scope = BindingScope::deployment();
    ensure!(
        store
            .transaction(async |tx| tx.put_approval_policy(&bad, "alice", NOW).await)
            .await
            .is_err()
    );
    Ok(())
}

async fn approval_requests_are_idempotent_decided_once_and_tenant_scoped(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    let t = &k.tenant;
    let (stored, inserted) = store
        .transaction(async |tx| tx.insert_approval_request(&request(&k, 7), NOW).await)
        .await?;
    ensure!(
        inserted && stored.state == ApprovalState::Pending,
        "{stored:?}"
    );
    let (again, inserted) = store
        .transaction(async |tx| tx.insert_approval_request(&request(&k, 7), NOW + 5).await)
        .await?;
    ensure!(
        !inserted && again.id == stored.id,
        "a redelivered record raises nothing twice"
    );
    ensure!(store.approval_requests(t, None, 100).await?.len() == 1);
    // Another tenant sees nothing of it.
    ensure!(
        store
            .approval_request(&tenant("other"), stored.id)
            .await?
            .is_none()
    );
    ensure!(
        store
            .approval_requests(&tenant("other"), None, 100)
            .await?
            .is_empty()
    );

    // One decision per actor: the second approval by the same person is not recorded.
    let counted = store
        .transaction(async |tx| {
            let locked = tx.lock_approval_request(t, stored.id, NOW + 10).await?;
            ensure!(locked.is_some());
            let a = tx
                .insert_approval_decision(t, stored.id, &vote("alice", ApprovalVote::Approve), NOW)
                .await?;
            let b = tx
                .insert_approval_decision(t, stored.id, &vote("alice", ApprovalVote::Approve), NOW)
                .await?;
            let c = tx
                .insert_approval_decision(t, stored.id, &vote("bob", ApprovalVote::Approve), NOW)
                .await?;
            Ok::<_, anyhow::Error>((a, b, c))
        })
        .await?;
    ensure!(counted == (true, false, true), "{counted:?}");
    let decisions = store.approval_decisions(t, stored.id).await?;
    ensure!(decisions.len() == 2 && decisions[0].groups == vec!["security".to_owned()]);
    ensure!(
        store
            .approval_decisions(&tenant("other"), stored.id)
            .await?
            .is_empty()
    );

    // Nothing is deliverable before approval; the state moves once.
    ensure!(store.deliverable_approvals(&k, 0, NOW).await?.is_empty());
    let moved = store
        .transaction(async |tx| {
            tx.finish_approval_request(
                t,
                stored.id,
                ApprovalState::Approved,
                "[{}]",
                Some(NOW + 60_000),
                NOW,
            )
            .await
        })
        .await?;
    ensure!(moved);
    let moved_again = store
        .transaction(async |tx| {
            tx.finish_approval_request(t, stored.id, ApprovalState::Denied, "", None, NOW)
                .await
        })
        .await?;
    ensure!(!moved_again, "a decided request does not move again");
    let delivered = store.deliverable_approvals(&k, 0, NOW).await?;
    ensure!(
        delivered.len() == 1 && delivered[0].tokens == "[{}]",
        "{delivered:?}"
    );
    ensure!(
        store
            .deliverable_approvals(&k, 0, NOW + 60_000)
            .await?
            .is_empty(),
        "expired tokens are not delivered"
    );
    ensure!(
        store
            .deliverable_approvals(&key("acme", "agent-2"), 0, NOW)
            .await?
            .is_empty()
    );
    ensure!(
        store
            .approval_requests(t, Some(ApprovalState::Pending), 10)
            .await?
            .is_empty()
            && store
                .approval_requests(t, Some(ApprovalState::Approved), 10)
                .await?
                .len()
                == 1
    );
    Ok(())
}
