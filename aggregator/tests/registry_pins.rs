//! The policy registry's pin and rollback rules, in process on both store backends: a pin publishes the version
//! as the next epoch with its pin row; settings carry over from the previous pin; a rollback is a new epoch
//! whose signed manifest names what it restores, skipping the rolled-back version and anything not
//! known-good; `--to` restores a named version; with nothing left to restore, a rollback is refused and
//! publishes nothing; and every pin is audited in its transaction.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::sync::Arc;

use anyhow::{Context as _, Result, ensure};
use gait_aggregator::registry::pin::EnvSettings;
use gait_aggregator::registry::versions::PushRequest;
use gait_aggregator::registry::{BundleDefaults, Registry, RegistryError};
use gait_store::testing::TestStore;
use gait_store::{PinKind, Tenant};

fn registry(db: &TestStore) -> Registry {
    Registry::new(
        db.store().clone(),
        gait_canon::sign::SigningKey::from_seed(&[9; 32]),
        BundleDefaults::default(),
        Arc::new(gait_aggregator::metrics::Metrics::new()),
    )
}

fn version(n: u32) -> String {
    format!(
        "default_verdict: block\nrules:\n  - name: allow-{n}\n    effect: allow\n    match:\n      tool_names: [tool.{n}]\n"
    )
}

async fn push(reg: &Registry, n: u32) -> Result<String> {
    let pushed = reg
        .push(
            &"acme".parse()?,
            PushRequest {
                name: "base.yaml".into(),
                yaml: version(n),
                message: format!("v{n}"),
                parent: None,
                author: "alice".into(),
                dry_run: false,
            },
        )
        .await?;
    Ok(pushed.version.digest)
}

fn manifest(bytes: &[u8]) -> Result<gait_bundle::Manifest> {
    Ok(gait_bundle::inspect(bytes)?)
}

async fn pins_and_rollbacks_follow_the_known_good_rule(db: &TestStore) -> Result<()> {
    let reg = registry(db);
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    let (v1, v2, v3) = (
        push(&reg, 1).await?,
        push(&reg, 2).await?,
        push(&reg, 3).await?,
    );

    // Nothing to roll back before the first pin.
    let err = reg.rollback(&prod, None, "why", "alice").await.unwrap_err();
    ensure!(matches!(err, RegistryError::NotFound(_)), "{err:?}");

    let settings = EnvSettings {
        max_offline_seconds: Some(0),
        ..EnvSettings::default()
    };
    let p1 = reg
        .pin(&prod, &v1, Some(settings), "alice", PinKind::Pin, None)
        .await?;
    ensure!(p1.bundle.epoch == 1 && p1.pin.pin.known_good, "{p1:?}");
    ensure!(
        p1.warnings.iter().any(|w| w.code == "offline_zero_in_prod"),
        "{:?}",
        p1.warnings
    );
    let p2 = reg.pin(&prod, &v2, None, "bob", PinKind::Pin, None).await?;
    let p3 = reg.pin(&prod, &v3, None, "bob", PinKind::Pin, None).await?;
    ensure!(p3.bundle.epoch == 3);
    // The settings carried over from the first pin.
    let b3 = reg.at_epoch(&prod, 3).await?.context("epoch 3")?;
    ensure!(manifest(&b3.bytes)?.staleness.max_offline_seconds == 0);

    // Rollback: v3 → v2 (the newest earlier known-good pin of another version).
    let r1 = reg.rollback(&prod, None, "v3 is bad", "carol").await?;
    ensure!(r1.pin.pin.digest == v2 && r1.bundle.epoch == 4, "{r1:?}");
    let m = manifest(&reg.at_epoch(&prod, 4).await?.context("epoch 4")?.bytes)?;
    let marker = m.rollback.context("rollback marker")?;
    ensure!(
        marker.restores_epoch == 2
            && marker.restores_digest == p2.bundle.digest
            && marker.from_digest == p3.bundle.digest
            && marker.reason == "v3 is bad",
        "{marker:?}"
    );
    // Rollback again: v2 (current) → v1; v3 was rolled back, and v2's older pin lost known-good with it.
    let r2 = reg.rollback(&prod, None, "v2 too", "carol").await?;
    ensure!(r2.pin.pin.digest == v1 && r2.bundle.epoch == 5, "{r2:?}");
    // Nothing older of another version is known-good now: refused, nothing published.
    let err = reg
        .rollback(&prod, None, "again", "carol")
        .await
        .unwrap_err();
    ensure!(matches!(err, RegistryError::Conflict(_)), "{err:?}");
    ensure!(reg.latest(&prod).await?.context("latest")?.epoch == 5);
    // --to names a version pinned here (even one that is no longer known-good).
    let r3 = reg.rollback(&prod, Some(&v3), "re-try v3", "carol").await?;
    ensure!(r3.pin.pin.digest == v3 && r3.bundle.epoch == 6, "{r3:?}");
    let never = push(&reg, 4).await?;
    let err = reg
        .rollback(&prod, Some(&never), "x", "carol")
        .await
        .unwrap_err();
    ensure!(matches!(err, RegistryError::NotFound(_)), "{err:?}");
    // A reason is required.
    let err = reg.rollback(&prod, None, " ", "carol").await.unwrap_err();
    ensure!(
        matches!(
            err,
            RegistryError::Field {
                field: "reason",
                ..
            }
        ),
        "{err:?}"
    );

    let history: Vec<(PinKind, bool)> = reg
        .pins(&prod)
        .await?
        .iter()
        .map(|p| (p.pin.kind, p.pin.known_good))
        .collect();
    ensure!(
        history
            == [
                (PinKind::Rollback, true),
                (PinKind::Rollback, false),
                (PinKind::Rollback, false),
                (PinKind::Pin, false),
                (PinKind::Pin, false),
                (PinKind::Pin, false),
            ],
        "{history:?}"
    );
    // An unknown version cannot be pinned; another org's versions are not visible.
    let err = reg
        .pin(&prod, &"ab".repeat(32), None, "bob", PinKind::Pin, None)
        .await
        .unwrap_err();
    ensure!(matches!(err, RegistryError::NotFound(_)), "{err:?}");
    let other = Tenant::from_parts("other", "web", "prod")?;
    let err = reg
        .pin(&other, &v1, None, "bob", PinKind::Pin, None)
        .await
        .unwrap_err();
    ensure!(matches!(err, RegistryError::NotFound(_)), "{err:?}");

    let entries = db.store().audit_entries(0, 1000).await?;
    let actions: Vec<String> = entries
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&e.line).unwrap_or_default();
            v["action"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    let count = |action: &str| actions.iter().filter(|a| *a == action).count();
    ensure!(count("policy.push") == 4, "pushes audited");
    ensure!(
        count("env.pin") == 3 && count("env.rollback") == 3,
        "pins audited"
    );
    ensure!(count("bundle.publish") == 6, "bundles audited");
    Ok(())
}

async fn publish_staged_carries_a_candidate_beside_the_baseline(db: &TestStore) -> Result<()> {
    let reg = registry(db);
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    let (v1, v2) = (push(&reg, 1).await?, push(&reg, 2).await?);
    let published = reg
        .publish_staged(
            &prod,
            gait_aggregator::registry::pin::StagedPublish {
                baseline: v1,
                candidate: Some((v2, gait_bundle::Stage::Observe)),
                rollback: None,
                audience: None,
                settings: EnvSettings::default(),
                actor: "controller:test".into(),
            },
        )
        .await?;
    let m = manifest(
        &reg.at_epoch(&prod, published.epoch)
            .await?
            .context("bundle")?
            .bytes,
    )?;
    ensure!(m.policies.len() == 1 && m.policies[0].name == "base.yaml");
    ensure!(m.policies[0].stage == gait_bundle::Stage::Observe);
    ensure!(
        m.policies[0].candidate.as_ref().map(|c| c.name.as_str()) == Some("candidate-base.yaml"),
        "{m:?}"
    );
    ensure!(
        reg.pins(&prod).await?.is_empty(),
        "a staged publish is no pin"
    );
    Ok(())
}

async fn a_rollback_after_a_staged_candidate_restores_the_pinned_baseline(
    db: &TestStore,
) -> Result<()> {
    // Pinned to v2, a candidate v3 staged beside it (what a rollout's observe step publishes), then rolled
    // back: the environment goes back to v2, the version that was in force, not to v1, and v2 stays
    // known-good. (Before, the newest pin was taken for what was in force: the rollback restored v1 and
    // demoted v2.)
    let reg = registry(db);
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    let (v1, v2, v3) = (
        push(&reg, 1).await?,
        push(&reg, 2).await?,
        push(&reg, 3).await?,
    );
    reg.pin(&prod, &v1, None, "alice", PinKind::Pin, None)
        .await?;
    reg.pin(&prod, &v2, None, "alice", PinKind::Pin, None)
        .await?;
    reg.publish_staged(
        &prod,
        gait_aggregator::registry::pin::StagedPublish {
            baseline: v2.clone(),
            candidate: Some((v3, gait_bundle::Stage::Observe)),
            rollback: None,
            audience: None,
            settings: EnvSettings::default(),
            actor: "controller:test".into(),
        },
    )
    .await?;
    let back = reg
        .rollback(&prod, None, "candidate failed its gate", "controller:test")
        .await?;
    ensure!(
        back.pin.pin.digest == v2,
        "restored {} not v2",
        back.pin.pin.digest
    );
    let m = manifest(
        &reg.at_epoch(&prod, back.bundle.epoch)
            .await?
            .context("bundle")?
            .bytes,
    )?;
    ensure!(
        m.policies.len() == 1 && m.policies[0].candidate.is_none(),
        "{m:?}"
    );
    let pins = reg.pins(&prod).await?;
    ensure!(
        pins.iter()
            .filter(|p| p.pin.digest == v2)
            .all(|p| p.pin.known_good),
        "v2 stayed known-good: {pins:?}"
    );
    ensure!(
        pins.iter().any(|p| p.pin.digest == v1 && p.pin.known_good),
        "v1 untouched"
    );
    // A rollback "to" the version in force would change nothing: refused, nothing published.
    let epoch = reg.latest(&prod).await?.context("latest")?.epoch;
    let same = reg.rollback(&prod, Some(&v2), "again", "alice").await;
    ensure!(
        matches!(same, Err(RegistryError::Conflict(_))),
        "rollback --to the version in force: {same:?}"
    );
    ensure!(reg.latest(&prod).await?.context("latest")?.epoch == epoch);
    // With v2 in force again (its own bundle), the ordinary rule applies: the next rollback goes to v1.
    let again = reg.rollback(&prod, None, "v2 too", "alice").await?;
    ensure!(again.pin.pin.digest == v1, "then v1");
    Ok(())
}

async fn versions_list_newest_first_in_pages_with_their_stored_warnings(
    db: &TestStore,
) -> Result<()> {
    let reg = registry(db);
    let org: gait_store::Org = "acme".parse()?;
    let mut digests = Vec::new();
    for n in 1..=5 {
        digests.push(push(&reg, n).await?);
    }
    // A version with a warning keeps it in listings.
    let allow = reg
        .push(
            &org,
            PushRequest {
                name: "open.yaml".into(),
                yaml: "default_verdict: allow\n".into(),
                message: "open".into(),
                parent: None,
                author: "alice".into(),
                dry_run: false,
            },
        )
        .await?;
    ensure!(
        allow
            .version
            .warnings
            .iter()
            .any(|w| w.code == "default_allow")
    );
    digests.push(allow.version.digest.clone());
    // Newest first, two at a time, following the cursor to the end.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = reg.versions(&org, before.as_deref(), Some(2)).await?;
        ensure!(page.versions.len() <= 2, "{page:?}");
        seen.extend(
            page.versions
                .iter()
                .map(|v| (v.created_unix_ms, v.digest.clone())),
        );
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
        ensure!(seen.len() <= 6, "the cursor loops: {seen:?}");
    }
    // Every version once, strictly newest first (creation time, then digest).
    ensure!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {seen:?}"
    );
    let mut listed: Vec<String> = seen.into_iter().map(|(_, d)| d).collect();
    listed.sort();
    digests.sort();
    ensure!(listed == digests, "{listed:?} vs {digests:?}");
    let first = reg.versions(&org, None, None).await?;
    ensure!(first.next_before.is_none() && first.versions.len() == 6);
    let open = first
        .versions
        .iter()
        .find(|v| v.digest == allow.version.digest)
        .context("listed")?;
    ensure!(open.warnings == allow.version.warnings, "{open:?}");
    // A malformed cursor or page size names its parameter; an unknown cursor is not found.
    for (before, limit, field) in [
        (Some("zz"), None, "before"),
        (None, Some(0), "limit"),
        (None, Some(1001), "limit"),
    ] {
        match reg.versions(&org, before, limit).await {
            Err(RegistryError::Field { field: f, .. }) if f == field => {}
            other => anyhow::bail!("{field}: {other:?}"),
        }
    }
    ensure!(matches!(
        reg.versions(&org, Some(&"0".repeat(64)), None).await,
        Err(RegistryError::NotFound(_))
    ));
    // A rollback `to` that is not a digest is refused as such before any search (review L6).
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    reg.pin(
        &prod,
        &first.versions[0].digest,
        None,
        "alice",
        PinKind::Pin,
        None,
    )
    .await?;
    match reg.rollback(&prod, Some("../etc"), "why", "alice").await {
        Err(RegistryError::Field {
            field: "to",
            message,
        }) => {
            ensure!(message.contains("not a policy digest"), "{message}")
        }
        other => anyhow::bail!("to: {other:?}"),
    }
    Ok(())
}

gait_store::store_tests!(
    versions_list_newest_first_in_pages_with_their_stored_warnings,
    pins_and_rollbacks_follow_the_known_good_rule,
    publish_staged_carries_a_candidate_beside_the_baseline,
    a_rollback_after_a_staged_candidate_restores_the_pinned_baseline,
);
