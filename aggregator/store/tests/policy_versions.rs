//! The policy registry domain on both backends (migration 0016): versions are stored once per (org, digest)
//! and keep their first bytes, listings are scoped to one org, pins are listed newest first per environment,
//! only a pin's `known_good` flag changes, and malformed input is refused before any write.
#![allow(clippy::disallowed_methods)] // tests spawn freely

use anyhow::{Result, bail, ensure};
use gait_store::testing::TestStore;
use gait_store::{NewPin, NewPolicyVersion, Org, PinKind, StoreError, Tenant};

const NOW: i64 = 1_764_000_000_000;

fn org(name: &str) -> Org {
    name.parse().unwrap_or_else(|e| panic!("test org: {e}"))
}

fn tenant(env: &str) -> Tenant {
    Tenant::from_parts("acme", "web", env).unwrap_or_else(|e| panic!("test tenant: {e}"))
}

fn version(org_name: &str, n: u8, yaml: &str) -> NewPolicyVersion {
    NewPolicyVersion {
        org: org(org_name),
        digest: hex::encode([n; 32]),
        name: "base.yaml".into(),
        yaml: yaml.as_bytes().to_vec(),
        sha256: hex::encode([0xee; 32]),
        author: "alice".into(),
        message: format!("v{n}"),
        parent_digest: (n > 1).then(|| hex::encode([n - 1; 32])),
        rule_count: u32::from(n),
        default_verdict: "block".into(),
        created_unix_ms: NOW + i64::from(n),
        warnings_json: n.is_multiple_of(2).then(|| "[]".to_owned()),
    }
}

fn pin(env: &str, n: u8, epoch: u64) -> NewPin {
    NewPin {
        tenant: tenant(env),
        digest: hex::encode([n; 32]),
        kind: PinKind::Pin,
        rollout_id: None,
        settings_json: "{}".into(),
        bundle_epoch: epoch,
        bundle_digest: hex::encode([epoch as u8; 32]),
        known_good: true,
        actor: "alice".into(),
        reason: String::new(),
        created_unix_ms: NOW,
    }
}

async fn versions_are_stored_once_and_scoped_to_their_org(db: &TestStore) -> Result<()> {
    let store = db.store();
    let first = version("acme", 1, "default_verdict: block\n");
    let mut again = first.clone();
    again.yaml = b"# same policy, other comments\ndefault_verdict: block\n".to_vec();
    again.author = "bob".into();
    let added = store
        .transaction(async |tx| {
            let a = tx.insert_policy_version(&first).await?;
            let b = tx.insert_policy_version(&again).await?;
            let c = tx.insert_policy_version(&version("acme", 2, "x")).await?;
            let d = tx.insert_policy_version(&version("other", 1, "y")).await?;
            Ok::<_, StoreError>((a, b, c, d))
        })
        .await?;
    ensure!(added == (true, false, true, true), "{added:?}");
    let stored = store
        .policy_version(&org("acme"), &first.digest)
        .await?
        .ok_or_else(|| anyhow::anyhow!("v1 missing"))?;
    ensure!(
        stored.yaml == first.yaml,
        "the first upload's bytes are kept"
    );
    ensure!(stored.version.author == "alice" && stored.size == first.yaml.len() as u64);
    // Newest first; the YAML is read only for a version without stored warnings.
    let listed = store.policy_versions(&org("acme"), None, 100).await?;
    ensure!(
        listed
            .iter()
            .map(|v| v.version.message.as_str())
            .collect::<Vec<_>>()
            == ["v2", "v1"],
        "{listed:?}"
    );
    ensure!(listed[0].yaml.is_empty() && listed[0].warnings_json.as_deref() == Some("[]"));
    ensure!(listed[1].yaml == first.yaml && listed[1].warnings_json.is_none());
    // The cursor: older than v2 is v1 alone; a page of one names the next page's cursor.
    let older = store
        .policy_versions(&org("acme"), Some(&listed[0].version.digest), 100)
        .await?;
    ensure!(
        older.len() == 1 && older[0].version.message == "v1",
        "{older:?}"
    );
    let one = store.policy_versions(&org("acme"), None, 1).await?;
    ensure!(one.len() == 1 && one[0].version.message == "v2");
    ensure!(
        store
            .policy_version(&org("nobody"), &first.digest)
            .await?
            .is_none()
    );
    Ok(())
}

async fn pins_list_newest_first_and_only_known_good_changes(db: &TestStore) -> Result<()> {
    let store = db.store();
    let (prod, dev) = (tenant("prod"), tenant("dev"));
    let ids = store
        .transaction(async |tx| {
            tx.insert_policy_version(&version("acme", 1, "a")).await?;
            tx.insert_policy_version(&version("acme", 2, "b")).await?;
            let p1 = tx.insert_env_pin(&pin("prod", 1, 1)).await?;
            let p2 = tx.insert_env_pin(&pin("prod", 2, 2)).await?;
            tx.insert_env_pin(&pin("dev", 2, 1)).await?;
            let flipped = tx.set_pin_known_good(&prod, p2, false).await?;
            let missing = tx.set_pin_known_good(&dev, p1, false).await?;
            Ok::<_, StoreError>((p1, p2, flipped, missing))
        })
        .await?;
    ensure!(ids.1 > ids.0 && ids.2 && !ids.3, "{ids:?}");
    let history = store.env_pins(&prod, 10).await?;
    ensure!(
        history
            .iter()
            .map(|p| (p.pin.bundle_epoch, p.pin.known_good))
            .collect::<Vec<_>>()
            == [(2, false), (1, true)],
        "{history:?}"
    );
    ensure!(store.env_pins(&dev, 10).await?.len() == 1);

    // A rollback's demotion: every known-good pin of one version in one environment, in one statement.
    let demoted = store
        .transaction(async |tx| {
            tx.insert_env_pin(&pin("prod", 1, 3)).await?;
            tx.insert_env_pin(&pin("prod", 2, 4)).await?;
            let first = tx.demote_pins(&prod, &hex::encode([1u8; 32])).await?;
            let again = tx.demote_pins(&prod, &hex::encode([1u8; 32])).await?;
            Ok::<_, StoreError>((first, again))
        })
        .await?;
    ensure!(demoted == (2, 0), "{demoted:?}");
    let history = store.env_pins(&prod, 10).await?;
    ensure!(
        history
            .iter()
            .map(|p| (p.pin.bundle_epoch, p.pin.known_good))
            .collect::<Vec<_>>()
            == [(4, true), (3, false), (2, false), (1, false)],
        "{history:?}"
    );
    ensure!(
        store.env_pins(&dev, 10).await?[0].pin.known_good,
        "another environment's pins are untouched"
    );
    Ok(())
}

async fn malformed_versions_and_pins_are_refused(db: &TestStore) -> Result<()> {
    let store = db.store();
    let mut bad_digest = version("acme", 1, "a");
    bad_digest.digest = "ABC".into();
    let mut bad_message = version("acme", 1, "a");
    bad_message.message = "a\u{7}b".into();
    for (v, field) in [
        (bad_digest, "policy_version.digest"),
        (bad_message, "policy_version.message"),
    ] {
        match store
            .transaction(async |tx| tx.insert_policy_version(&v).await)
            .await
        {
            Err(StoreError::InvalidInput { field: f, .. }) if f == field => {}
            other => bail!("{field}: {other:?}"),
        }
    }
    let mut bad_pin = pin("prod", 1, 1);
    bad_pin.bundle_digest = "nope".into();
    match store
        .transaction(async |tx| tx.insert_env_pin(&bad_pin).await)
        .await
    {
        Err(StoreError::InvalidInput { field, .. }) if field == "pin.bundle_digest" => {}
        other => bail!("pin: {other:?}"),
    }
    ensure!(
        store
            .policy_versions(&org("acme"), None, 10)
            .await?
            .is_empty()
    );
    ensure!(store.env_pins(&tenant("prod"), 10).await?.is_empty());
    Ok(())
}

gait_store::store_tests!(
    versions_are_stored_once_and_scoped_to_their_org,
    pins_list_newest_first_and_only_known_good_changes,
    malformed_versions_and_pins_are_refused,
);
