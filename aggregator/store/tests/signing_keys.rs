//! The signing-key domain on both backends (migration 0017): one active and one next key at most, state changes
//! as compare-and-set (a second promotion or revocation of the same key changes nothing), idempotent inserts, and
//! the scopes that have bundles.
#![allow(clippy::disallowed_methods)] // tests spawn freely

use anyhow::{Result, ensure};
use gait_store::testing::TestStore;
use gait_store::{SigningKeyRow, SigningKeyState, Tenant};

const NOW: i64 = 1_764_000_000_000;

fn row(n: u8, state: SigningKeyState, endorsed_by: Option<u8>) -> SigningKeyRow {
    SigningKeyRow {
        key_id: hex::encode([n; 32]),
        public_key: "Ui21qF1AQrqK2LMWlGnTq1xFByIukTXX6hK+5dBsB/A=".to_owned(),
        state,
        endorsed_by: endorsed_by.map(|e| hex::encode([e; 32])),
        endorsement_sig: endorsed_by.map(|_| "c2ln".to_owned()),
        created_unix_ms: NOW + i64::from(n),
        activate_after_unix_ms: None,
        activated_unix_ms: None,
        revoked_unix_ms: None,
        actor: "test".to_owned(),
    }
}

async fn keys_move_through_their_states_once(db: &TestStore) -> Result<()> {
    use SigningKeyState::*;
    let store = db.store();
    ensure!(store.signing_keys().await?.is_empty());
    let added = store
        .transaction(async |tx| {
            let first = tx.insert_signing_key(&row(1, Active, None)).await?;
            let again = tx.insert_signing_key(&row(1, Active, None)).await?;
            let next = tx.insert_signing_key(&row(2, Next, Some(1))).await?;
            Ok::<_, gait_store::StoreError>((first, again, next))
        })
        .await?;
    ensure!(added == (true, false, true), "{added:?}");
    // A second next key is refused while one waits.
    let second_next = store
        .transaction(async |tx| tx.insert_signing_key(&row(3, Next, Some(1))).await)
        .await;
    ensure!(second_next.is_err(), "{second_next:?}");

    let k1 = hex::encode([1; 32]);
    let k2 = hex::encode([2; 32]);
    let promoted = store
        .transaction(async |tx| {
            let retired = tx.set_signing_key_state(&k1, Active, Retired, NOW).await?;
            let active = tx.set_signing_key_state(&k2, Next, Active, NOW + 5).await?;
            Ok::<_, gait_store::StoreError>((retired, active))
        })
        .await?;
    ensure!(promoted == (true, true));
    // The same promotion by a second replica finds the keys moved already.
    let late = store
        .transaction(async |tx| tx.set_signing_key_state(&k2, Next, Active, NOW + 6).await)
        .await?;
    ensure!(!late);
    let revoked = store
        .transaction(async |tx| {
            tx.set_signing_key_state(&k1, Retired, Revoked, NOW + 7)
                .await
        })
        .await?;
    ensure!(revoked);
    let keys = store.signing_keys().await?;
    ensure!(keys.len() == 2, "{keys:?}");
    ensure!(keys[0].state == Revoked && keys[0].revoked_unix_ms == Some(NOW + 7));
    ensure!(keys[1].state == Active && keys[1].activated_unix_ms == Some(NOW + 5));
    ensure!(keys[1].endorsed_by.as_deref() == Some(k1.as_str()));
    Ok(())
}

async fn bundle_scopes_lists_each_scope_once(db: &TestStore) -> Result<()> {
    let store = db.store();
    let t = |env: &str| Tenant::from_parts("acme", "web", env).unwrap_or_else(|e| panic!("{e}"));
    for (env, epoch) in [("prod", 1), ("prod", 2), ("dev", 1)] {
        let digest = hex::encode([epoch as u8 + env.len() as u8; 32]);
        store
            .transaction(async |tx| {
                tx.publish_bundle(&t(env), epoch, &digest, b"{}", "test", NOW)
                    .await
            })
            .await?;
    }
    ensure!(store.bundle_scopes().await? == vec![t("dev"), t("prod")]);
    Ok(())
}

gait_store::store_tests!(
    keys_move_through_their_states_once,
    bundle_scopes_lists_each_scope_once,
);
