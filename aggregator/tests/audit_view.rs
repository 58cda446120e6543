//! The per-tenant view of the audit log over the real router and store (SQLite, and PostgreSQL when
//! configured): an org's or an environment's entries only, keyset-paginated, each with its leaf index, and
//! inclusion proofs of exactly those entries that verify against the deployment's signed checkpoint.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use anyhow::{Context as _, ensure};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use gait_aggregator::api::router;
use gait_audit::{EntryDraft, Target};
use gait_canon::sign::SigningKey;
use gait_store::testing::TestStore;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::common;

const TOKEN: &str = "test-admin-token";

async fn get(app: &axum::Router, uri: &str) -> anyhow::Result<(StatusCode, Value)> {
    let req = Request::builder()
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())?;
    let resp = app.clone().oneshot(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes)?))
}

fn hash(value: &Value) -> anyhow::Result<gait_audit::Hash> {
    let text = value.as_str().context("a hex hash")?;
    let bytes = hex::decode(text)?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{text} is not 32 bytes"))
}

/// Appends one entry per target (org, project, env; `None` widens), returning nothing: seqs are the indices.
async fn seed(db: &TestStore, targets: &[(Option<&str>, Option<&str>, Option<&str>)]) {
    for (i, (org, project, env)) in targets.iter().enumerate() {
        let draft = EntryDraft {
            actor: "admin-token".into(),
            action: "bundle.publish".into(),
            target: Target {
                org: org.map(str::to_owned),
                project: project.map(str::to_owned),
                env: env.map(str::to_owned),
                kind: "bundle".into(),
                id: i.to_string(),
            },
            before: None,
            after: None,
            details: None,
        };
        db.store()
            .audit_append(&draft, 1_764_000_000_000 + i as i64)
            .await
            .expect("append");
    }
}

/// Every entry of a per-tenant listing, page by page (`after` = the previous `next_after`).
async fn list_all(app: &axum::Router, base: &str, limit: u32) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let uri = match after {
            Some(a) => format!("{base}?limit={limit}&after={a}"),
            None => format!("{base}?limit={limit}"),
        };
        let (status, page) = get(app, &uri).await?;
        ensure!(status == StatusCode::OK, "{uri}: {status} {page}");
        let entries = page["entries"].as_array().context("entries")?;
        ensure!(entries.len() <= limit as usize, "{uri}: {page}");
        all.extend(entries.iter().cloned());
        match page["next_after"].as_u64() {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

async fn the_tenant_view_lists_only_its_entries_and_proves_them_against_the_deployment_checkpoint(
    db: &TestStore,
) -> anyhow::Result<()> {
    let app = router(common::app_state(db, TOKEN, SigningKey::generate()));
    seed(
        db,
        &[
            (None, None, None),
            (Some("acme"), Some("web"), Some("prod")),
            (Some("globex"), Some("web"), Some("prod")),
            (Some("acme"), None, None),
            (Some("acme"), Some("web"), Some("staging")),
            (Some("acme"), Some("web"), Some("prod")),
            (Some("globex"), None, None),
        ],
    )
    .await;
    let seqs = |entries: &[Value]| {
        entries
            .iter()
            .map(|e| e["seq"].as_u64())
            .collect::<Vec<_>>()
    };
    let acme = list_all(&app, "/v1/orgs/acme/audit/entries", 2).await?;
    ensure!(
        seqs(&acme) == [1, 3, 4, 5].map(Some),
        "acme: {:?}",
        seqs(&acme)
    );
    ensure!(
        acme.iter().all(|e| e["target"]["org"] == "acme"),
        "{acme:?}"
    );
    let prod = list_all(
        &app,
        "/v1/orgs/acme/projects/web/envs/prod/audit/entries",
        100,
    )
    .await?;
    ensure!(seqs(&prod) == [1, 5].map(Some), "prod: {:?}", seqs(&prod));
    let (status, empty) = get(&app, "/v1/orgs/initech/audit/entries").await?;
    ensure!(
        status == StatusCode::OK
            && empty["entries"] == serde_json::json!([])
            && empty["next_after"].is_null(),
        "{status} {empty}"
    );
    let (status, bad) = get(&app, "/v1/orgs/acme/audit/entries?limit=0").await?;
    ensure!(status == StatusCode::BAD_REQUEST, "{status} {bad}");

    // The org's checkpoint is the deployment's; each of the org's entries proves against it.
    let (status, cp) = get(&app, "/v1/orgs/acme/audit/checkpoint").await?;
    ensure!(status == StatusCode::OK, "{status} {cp}");
    let (_, deployment_cp) = get(&app, "/v1/audit/checkpoint").await?;
    ensure!(cp == deployment_cp, "{cp} vs {deployment_cp}");
    let size = cp["size"].as_u64().context("size")?;
    ensure!(size == 7, "{cp}");
    let root = hash(&cp["root"])?;
    for entry in &acme {
        let seq = entry["seq"].as_u64().context("seq")?;
        let (status, p) = get(
            &app,
            &format!("/v1/orgs/acme/audit/proof?seq={seq}&size={size}"),
        )
        .await?;
        ensure!(status == StatusCode::OK, "proof {seq}: {status} {p}");
        // The leaf hash is the stored entry's, the one the listing embeds.
        let stored = db.store().audit_entries(seq, 1).await?;
        let line = &stored.first().context("stored entry")?.line;
        ensure!(
            serde_json::from_slice::<Value>(line)? == *entry,
            "listed {seq} differs"
        );
        ensure!(
            hash(&p["leaf_hash"])? == gait_audit::leaf_hash(line),
            "leaf {seq}"
        );
        let proof = p["proof"]
            .as_array()
            .context("proof")?
            .iter()
            .map(hash)
            .collect::<anyhow::Result<Vec<_>>>()?;
        ensure!(
            gait_audit::merkle::verify_inclusion(seq, size, &hash(&p["leaf_hash"])?, &proof, &root),
            "entry {seq} does not prove against the checkpoint"
        );
    }
    // Another tenant's entry, the deployment's, and a missing one are all "not in your scope".
    for seq in [0, 2, 6, 99] {
        let (status, p) = get(
            &app,
            &format!("/v1/orgs/acme/audit/proof?seq={seq}&size={size}"),
        )
        .await?;
        ensure!(status == StatusCode::NOT_FOUND, "proof {seq}: {status} {p}");
    }
    let (status, p) = get(
        &app,
        "/v1/orgs/acme/projects/web/envs/prod/audit/proof?seq=4&size=7",
    )
    .await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "staging's entry from prod: {status} {p}"
    );
    // A size beyond the log is refused; the deployment proves any entry.
    let (status, p) = get(&app, "/v1/orgs/acme/audit/proof?seq=1&size=8").await?;
    ensure!(status == StatusCode::BAD_REQUEST, "size 8: {status} {p}");
    let (status, p) = get(&app, "/v1/audit/proof?seq=6&size=7").await?;
    ensure!(status == StatusCode::OK, "deployment proof: {status} {p}");
    Ok(())
}

gait_store::store_tests!(
    the_tenant_view_lists_only_its_entries_and_proves_them_against_the_deployment_checkpoint,
);
