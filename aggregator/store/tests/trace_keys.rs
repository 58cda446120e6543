//! The trace key domain on both backends (migration 0013): registration bound to an agent, idempotent per key
//! id, rotations kept beside the keys they replace, listings scoped to one tenant (and one agent), refusal of
//! unknown agents and malformed keys before any write.
#![allow(clippy::disallowed_methods)] // tests spawn freely

use anyhow::{Result, bail, ensure};
use gait_store::testing::TestStore;
use gait_store::{AgentHello, AgentKey, NewTraceKey, StoreError, Tenant};

const NOW: i64 = 1_764_000_000_000;

fn tenant(env: &str) -> Tenant {
    Tenant::from_parts("acme", "web", env).unwrap_or_else(|e| panic!("test tenant: {e}"))
}

fn agent(env: &str, id: &str) -> Result<AgentKey> {
    Ok(AgentKey {
        tenant: tenant(env),
        agent_id: id.parse()?,
    })
}

fn hello(serial: &str) -> Result<AgentHello> {
    Ok(AgentHello {
        cert_serial: serial.parse()?,
        cert_not_after_unix_ms: NOW + 3_600_000,
        cert_issuer: "CN=test".to_owned(),
        remote_addr: "127.0.0.1:1".to_owned(),
        agent_version: "t".to_owned(),
        active_bundle: None,
        received_bundle: None,
        outbox_depth: 0,
        shed_total: 0,
    })
}

fn key(n: u8, replaces: Option<u8>, seq: u64) -> Result<NewTraceKey> {
    Ok(NewTraceKey {
        key_id: hex::encode([n; 32]),
        public_key: "Ui21qF1AQrqK2LMWlGnTq1xFByIukTXX6hK+5dBsB/A=".to_owned(),
        replaces: replaces.map(|r| hex::encode([r; 32])),
        cert_serial: "0c01".parse()?,
        record_seq: seq,
        since_unix_ms: NOW - 5,
    })
}

async fn register(db: &TestStore, agent: &AgentKey, key: &NewTraceKey) -> Result<bool> {
    let store = db.store();
    Ok(store
        .transaction(async |tx| tx.register_trace_key(agent, key, NOW).await)
        .await?)
}

async fn keys_register_once_rotations_stay_and_listings_are_scoped(db: &TestStore) -> Result<()> {
    let store = db.store();
    let a1 = agent("prod", "a-1")?;
    let a2 = agent("prod", "a-2")?;
    let other = agent("dev", "a-1")?;
    for a in [&a1, &a2, &other] {
        store.agent_connected(a, &hello("0c01")?, NOW).await?;
    }
    ensure!(
        register(db, &a1, &key(1, None, 1)?).await?,
        "first key added"
    );
    ensure!(
        !register(db, &a1, &key(1, None, 7)?).await?,
        "a repeated announcement adds nothing"
    );
    ensure!(
        register(db, &a1, &key(2, Some(1), 9)?).await?,
        "rotation added"
    );
    ensure!(
        register(db, &a2, &key(1, None, 1)?).await?,
        "another agent, same key"
    );
    ensure!(register(db, &other, &key(3, None, 1)?).await?);

    let prod = store.trace_keys(&tenant("prod"), None, 100).await?;
    let listed: Vec<(&str, &str, Option<&str>, u64)> = prod
        .iter()
        .map(|k| {
            (
                k.agent.agent_id.as_str(),
                &k.key_id[..2],
                k.replaces.as_deref().map(|r| &r[..2]),
                k.record_seq,
            )
        })
        .collect();
    ensure!(
        listed
            == [
                ("a-1", "01", None, 1),
                ("a-1", "02", Some("01"), 9),
                ("a-2", "01", None, 1)
            ],
        "{listed:?}"
    );
    ensure!(prod[0].cert_serial.as_str() == "0c01" && prod[0].registered_unix_ms == NOW);
    let one = store.trace_keys(&tenant("prod"), Some("a-2"), 100).await?;
    ensure!(one.len() == 1 && one[0].agent == a2, "{one:?}");
    let dev = store.trace_keys(&tenant("dev"), None, 100).await?;
    ensure!(
        dev.len() == 1 && dev[0].key_id == hex::encode([3u8; 32]),
        "{dev:?}"
    );
    ensure!(store.trace_keys(&tenant("qa"), None, 100).await?.is_empty());
    Ok(())
}

async fn unknown_agents_and_malformed_keys_are_refused(db: &TestStore) -> Result<()> {
    let store = db.store();
    let known = agent("prod", "a-1")?;
    store.agent_connected(&known, &hello("0c01")?, NOW).await?;
    match register(db, &agent("prod", "ghost")?, &key(1, None, 1)?).await {
        Err(e) if matches!(e.downcast_ref(), Some(StoreError::UnknownAgent { .. })) => {}
        other => bail!("unknown agent: {other:?}"),
    }
    let mut bad_id = key(1, None, 1)?;
    bad_id.key_id = "ABC".into();
    let mut bad_key = key(1, None, 1)?;
    bad_key.public_key = "not base64!".into();
    let mut bad_replaces = key(1, None, 1)?;
    bad_replaces.replaces = Some("../x".into());
    for (k, field) in [
        (bad_id, "trace_key.key_id"),
        (bad_key, "trace_key.public_key"),
        (bad_replaces, "trace_key.replaces"),
    ] {
        match register(db, &known, &k).await {
            Err(e) if matches!(e.downcast_ref(), Some(StoreError::InvalidInput { field: f, .. }) if f == field) =>
                {}
            other => bail!("{field}: {other:?}"),
        }
    }
    ensure!(
        store
            .trace_keys(&tenant("prod"), None, 100)
            .await?
            .is_empty()
    );
    Ok(())
}

gait_store::store_tests!(
    keys_register_once_rotations_stay_and_listings_are_scoped,
    unknown_agents_and_malformed_keys_are_refused,
);
