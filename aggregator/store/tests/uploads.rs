//! The artifact upload domain on both backends: an upload is recorded per agent and digest, found only through
//! the environment of an agent that uploaded it, idempotent, and refused for an unknown agent or a bad digest.

use anyhow::{Result, ensure};
use gait_store::testing::TestStore;
use gait_store::{AgentHello, AgentKey, StoreError, Tenant};

const NOW: i64 = 1_764_000_000_000;

fn tenant(org: &str, env: &str) -> Tenant {
    Tenant::from_parts(org, "web", env).expect("test tenant")
}

fn key(org: &str, env: &str, agent: &str) -> AgentKey {
    AgentKey::new(tenant(org, env), agent.parse().expect("agent id"))
}

fn hello() -> AgentHello {
    AgentHello {
        cert_serial: "01".parse().expect("serial"),
        cert_not_after_unix_ms: NOW + 86_400_000,
        cert_issuer: String::new(),
        remote_addr: "127.0.0.1:1".to_owned(),
        agent_version: "t".to_owned(),
        active_bundle: None,
        received_bundle: None,
        outbox_depth: 0,
        shed_total: 0,
    }
}

gait_store::store_tests!(uploads_are_scoped_to_the_uploaders_environment,);

async fn uploads_are_scoped_to_the_uploaders_environment(db: &TestStore) -> Result<()> {
    let store = db.store();
    let a = key("acme", "prod", "agent-a");
    let b = key("acme", "prod", "agent-b");
    let other = key("acme", "staging", "agent-c");
    for k in [&a, &b, &other] {
        store.agent_connected(k, &hello(), NOW).await?;
    }
    let digest = "ab".repeat(32);
    ensure!(
        store.artifact_upload(&a.tenant, &digest).await?.is_none(),
        "nothing uploaded yet"
    );
    store.record_artifact_upload(&b, &digest, 42, NOW).await?;
    store
        .record_artifact_upload(&a, &digest, 42, NOW + 5)
        .await?;
    // Idempotent: the same agent again keeps its first row.
    store
        .record_artifact_upload(&b, &digest, 42, NOW + 10)
        .await?;
    let found = store
        .artifact_upload(&a.tenant, &digest)
        .await?
        .expect("found");
    ensure!(
        found.agent_id == "agent-b" && found.size_bytes == 42 && found.uploaded_unix_ms == NOW,
        "{found:?}"
    );
    // Another environment of the same project does not see it.
    ensure!(
        store
            .artifact_upload(&other.tenant, &digest)
            .await?
            .is_none()
    );
    // An agent without a row, and a digest that is not lowercase hex, are refused.
    let ghost = key("acme", "prod", "ghost");
    let err = store
        .record_artifact_upload(&ghost, &digest, 1, NOW)
        .await
        .expect_err("unknown agent");
    ensure!(matches!(err, StoreError::UnknownAgent { .. }), "{err}");
    let err = store
        .record_artifact_upload(&a, &"AB".repeat(32), 1, NOW)
        .await
        .expect_err("bad digest");
    ensure!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    ensure!(
        store
            .artifact_upload(&a.tenant, "not-a-digest")
            .await
            .is_err()
    );
    Ok(())
}
