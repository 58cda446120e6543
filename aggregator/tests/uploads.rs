//! Artifact uploads against the real aggregator (in process, real PKI, raw wire client): refused while the
//! environment's bundle does not enable them; an upload cut off mid-way resumes from the aggregator's offset,
//! not from 0; the bytes come back byte-identical through the content route of that environment only; a
//! digest mismatch and an oversize offer are refused and store nothing; one agent cannot extend another's
//! upload; a digest stored for one environment is not granted to another without its bytes.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use gait_identity::Tenant;
use gait_testkit::{AggregatorOptions, PATIENCE, Publish, RunningAggregator, spawn_aggregator};
use gait_wire::{
    AgentMsg, AgentMsgV2, BlobChunk, BlobOffer, BlobStatus, BlobStored, ErrorCode, FrameDecoder,
    Hello, InstanceId, ServerMsg, ServerMsgV2,
};
use sha2::{Digest as _, Sha256};

const POLICY: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: allow\n";
const CHUNK: usize = 64 * 1024;
/// `evidence.blobs.max_blob_bytes` of these tests.
const CAP: u64 = 1024 * 1024;

async fn request(conn: &quinn::Connection, msg: AgentMsgV2) -> Result<ServerMsgV2> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&gait_wire::encode_frame(&AgentMsg::V2(msg))?)
        .await?;
    send.finish()?;
    let bytes = tokio::time::timeout(PATIENCE, recv.read_to_end(1 << 20)).await??;
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.push(&bytes);
    let body = decoder.next_frame()?.context("no reply frame")?;
    match gait_wire::decode_server_msg(&body)? {
        ServerMsg::V2(reply) => Ok(reply),
        ServerMsg::V1(_) => bail!("V1 reply"),
    }
}

/// A connected, greeted agent `agent_id` of `tenant`.
async fn connect(
    aggregator: &RunningAggregator,
    dir: &std::path::Path,
    tenant: &Tenant,
    agent_id: &str,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let certs = aggregator.pki().issue_agent(dir, tenant, agent_id)?;
    let config =
        gait_agent::tls::client_config(&certs.ca, &certs.cert, &certs.key, Duration::from_secs(5))?;
    let endpoint = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into())?;
    let conn = endpoint
        .connect_with(config, aggregator.quic_addr(), "localhost")?
        .await?;
    let welcome = request(
        &conn,
        AgentMsgV2::Hello(Hello {
            agent_version: "test".into(),
            protocol_version: gait_wire::PROTOCOL_VERSION,
            active: None,
            received: None,
            outbox_depth: 0,
            shed_total: 0,
            last_seq: 0,
            instance_id: InstanceId([agent_id.len() as u8; 16]),
        }),
    )
    .await?;
    ensure!(matches!(welcome, ServerMsgV2::Welcome(_)), "{welcome:?}");
    Ok((endpoint, conn))
}

fn offer(sha256: [u8; 32], size: u64) -> AgentMsgV2 {
    AgentMsgV2::BlobOffer(BlobOffer { sha256, size })
}

fn chunk(sha256: [u8; 32], offset: u64, bytes: &[u8]) -> AgentMsgV2 {
    AgentMsgV2::BlobChunk(BlobChunk {
        sha256,
        offset,
        bytes: bytes.to_vec(),
    })
}

fn have(reply: &ServerMsgV2, sha256: [u8; 32]) -> Result<u64> {
    match reply {
        ServerMsgV2::BlobStatus(BlobStatus { sha256: s, have }) if *s == sha256 => Ok(*have),
        other => bail!("expected BlobStatus, got {other:?}"),
    }
}

fn refused(reply: &ServerMsgV2, code: ErrorCode) -> Result<()> {
    match reply {
        ServerMsgV2::Error(e) if e.code == code => Ok(()),
        other => bail!("expected Error({code}), got {other:?}"),
    }
}

/// Deterministic content that is not all one byte.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn content_path(tenant: &Tenant, hex: &str) -> String {
    format!(
        "/v1/orgs/{}/projects/{}/envs/{}/artifacts/{hex}/content",
        tenant.org, tenant.project, tenant.env
    )
}

#[tokio::test]
async fn an_interrupted_upload_resumes_from_the_aggregators_offset_and_reads_back_identical()
-> Result<()> {
    let mut options = AggregatorOptions::default();
    options.evidence.blobs.max_blob_bytes = CAP;
    let aggregator = spawn_aggregator(options).await?;
    let tmp = tempfile::tempdir()?;
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    let staging = Tenant::from_parts("acme", "web", "staging")?;
    let bytes = content(300 * 1024 + 17, 3);
    let sha: [u8; 32] = Sha256::digest(&bytes).into();
    let hex = hex::encode(sha);
    let size = bytes.len() as u64;

    let (_e1, conn) = connect(&aggregator, &tmp.path().join("a1"), &prod, "a-1").await?;
    // No bundle enables uploads yet: refused.
    refused(
        &request(&conn, offer(sha, size)).await?,
        ErrorCode::Forbidden,
    )?;
    aggregator
        .publish(
            &prod,
            &Publish::policy("default.yaml", POLICY).upload_artifacts(),
        )
        .await?;

    // Three chunks, then the connection drops.
    ensure!(have(&request(&conn, offer(sha, size)).await?, sha)? == 0);
    let mut offset = 0usize;
    for _ in 0..3 {
        let reply = request(
            &conn,
            chunk(sha, offset as u64, &bytes[offset..offset + CHUNK]),
        )
        .await?;
        offset += CHUNK;
        ensure!(have(&reply, sha)? == offset as u64, "{reply:?}");
    }
    conn.close(0u32.into(), b"cut off");
    drop(conn);

    // A new connection resumes where the aggregator stands, not at 0.
    let resumed_before = aggregator
        .metric("gait_aggregator_blob_uploads_total{outcome=\"resumed\"}")
        .await?;
    let (_e2, conn) = connect(&aggregator, &tmp.path().join("a1-again"), &prod, "a-1").await?;
    let at = have(&request(&conn, offer(sha, size)).await?, sha)?;
    ensure!(
        at == (3 * CHUNK) as u64,
        "resumed at {at}, not at {}",
        3 * CHUNK
    );
    ensure!(
        aggregator
            .metric("gait_aggregator_blob_uploads_total{outcome=\"resumed\"}")
            .await?
            == resumed_before + 1.0
    );
    // A chunk at another offset is not applied; the reply says where to go on.
    let reply = request(&conn, chunk(sha, 0, &bytes[..CHUNK])).await?;
    ensure!(have(&reply, sha)? == at, "{reply:?}");

    // Another agent of the same environment cannot extend or complete a-1's upload.
    let (_e3, other) = connect(&aggregator, &tmp.path().join("a2"), &prod, "a-2").await?;
    let reply = request(&other, chunk(sha, at, &bytes[at as usize..])).await?;
    refused(&reply, ErrorCode::Unavailable)?;
    ensure!(have(&request(&conn, offer(sha, size)).await?, sha)? == at);

    let mut offset = at as usize;
    let stored = loop {
        let end = (offset + CHUNK).min(bytes.len());
        match request(&conn, chunk(sha, offset as u64, &bytes[offset..end])).await? {
            ServerMsgV2::BlobStatus(s) => offset = s.have as usize,
            ServerMsgV2::BlobStored(s) => break s,
            other => bail!("unexpected reply {other:?}"),
        }
    };
    ensure!(stored == BlobStored { sha256: sha, size });
    // Offered again: already stored, no bytes needed.
    ensure!(matches!(
        request(&conn, offer(sha, size)).await?,
        ServerMsgV2::BlobStored(_)
    ));

    // The operator reads it back byte-identical through prod, and not through staging.
    let response = aggregator
        .api_request(http::Method::GET, &content_path(&prod, &hex), None)
        .await?;
    ensure!(response.status() == 200, "{:?}", response.body());
    ensure!(
        response.body().as_ref() == bytes.as_slice(),
        "content differs"
    );
    ensure!(
        response.headers()["x-gait-uploaded-by"] == "a-1",
        "{:?}",
        response.headers()
    );
    let response = aggregator
        .api_request(http::Method::GET, &content_path(&staging, &hex), None)
        .await?;
    ensure!(response.status() == 404, "staging read prod's artifact");

    // Knowing the digest does not grant it to staging: its agent must send the bytes.
    aggregator
        .publish(
            &staging,
            &Publish::policy("default.yaml", POLICY).upload_artifacts(),
        )
        .await?;
    let (_e4, stage_conn) = connect(&aggregator, &tmp.path().join("s1"), &staging, "s-1").await?;
    ensure!(have(&request(&stage_conn, offer(sha, size)).await?, sha)? == 0);

    // The counters moved: bytes kept, one completed.
    ensure!(
        aggregator
            .metric("gait_aggregator_blob_uploads_total{outcome=\"completed\"}")
            .await?
            == 1.0
    );
    ensure!(
        aggregator
            .metric("gait_aggregator_blob_upload_bytes_total")
            .await?
            >= size as f64
    );
    Ok(())
}

#[tokio::test]
async fn a_digest_mismatch_and_an_oversize_offer_are_refused_and_store_nothing() -> Result<()> {
    let mut options = AggregatorOptions::default();
    options.evidence.blobs.max_blob_bytes = CAP;
    let aggregator = spawn_aggregator(options).await?;
    let tmp = tempfile::tempdir()?;
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    aggregator
        .publish(
            &prod,
            &Publish::policy("default.yaml", POLICY).upload_artifacts(),
        )
        .await?;
    let (_e, conn) = connect(&aggregator, &tmp.path().join("a1"), &prod, "a-1").await?;

    // Offered as the digest of `claimed`, sent as `sent` (same length): refused at the last byte.
    let claimed = content(100_000, 1);
    let sent = content(100_000, 2);
    let sha: [u8; 32] = Sha256::digest(&claimed).into();
    let size = claimed.len() as u64;
    ensure!(have(&request(&conn, offer(sha, size)).await?, sha)? == 0);
    ensure!(have(&request(&conn, chunk(sha, 0, &sent[..CHUNK])).await?, sha)? == CHUNK as u64);
    let reply = request(&conn, chunk(sha, CHUNK as u64, &sent[CHUNK..])).await?;
    refused(&reply, ErrorCode::BadRequest)?;
    let path = content_path(&prod, &hex::encode(sha));
    let response = aggregator
        .api_request(http::Method::GET, &path, None)
        .await?;
    ensure!(response.status() == 404, "a mismatched upload was stored");
    let blobs = aggregator.data_dir().join("blobs");
    let stored_files = walk(&blobs)?;
    ensure!(stored_files.is_empty(), "blob store holds {stored_files:?}");
    // The partial upload is gone: the next offer starts at 0.
    ensure!(have(&request(&conn, offer(sha, size)).await?, sha)? == 0);
    ensure!(
        aggregator
            .metric("gait_aggregator_blob_uploads_refused_total{reason=\"digest_mismatch\"}")
            .await?
            == 1.0
    );

    // Above evidence.blobs.max_blob_bytes: refused at the offer.
    let reply = request(&conn, offer([9; 32], CAP + 1)).await?;
    refused(&reply, ErrorCode::TooLarge)?;
    // A chunk running past the offered size is refused.
    let small: [u8; 32] = Sha256::digest(b"tiny").into();
    ensure!(have(&request(&conn, offer(small, 4)).await?, small)? == 0);
    refused(
        &request(&conn, chunk(small, 0, b"tiny but longer")).await?,
        ErrorCode::BadRequest,
    )?;
    ensure!(walk(&blobs)?.is_empty());
    Ok(())
}

/// Every file under `dir` (none when it does not exist).
fn walk(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

#[tokio::test]
async fn partial_uploads_are_bounded_per_agent() -> Result<()> {
    let mut options = AggregatorOptions::default();
    options.evidence.uploads.max_partials_per_agent = 1;
    options.evidence.uploads.max_partial_bytes_per_agent = 300_000;
    let aggregator = spawn_aggregator(options).await?;
    let tmp = tempfile::tempdir()?;
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    aggregator
        .publish(
            &prod,
            &Publish::policy("default.yaml", POLICY).upload_artifacts(),
        )
        .await?;
    let (_e1, a1) = connect(&aggregator, &tmp.path().join("a1"), &prod, "a-1").await?;
    let (_e2, a2) = connect(&aggregator, &tmp.path().join("a2"), &prod, "a-2").await?;
    let first = content(100_000, 5);
    let second = content(100_000, 6);
    let (sha1, sha2): ([u8; 32], [u8; 32]) = (
        Sha256::digest(&first).into(),
        Sha256::digest(&second).into(),
    );

    ensure!(have(&request(&a1, offer(sha1, 100_000)).await?, sha1)? == 0);
    // A second partial upload of the same agent is over its count: retry later.
    refused(
        &request(&a1, offer(sha2, 100_000)).await?,
        ErrorCode::Unavailable,
    )?;
    // Larger than the agent's partial byte budget: refused for good.
    refused(
        &request(&a1, offer([7; 32], 300_001)).await?,
        ErrorCode::TooLarge,
    )?;
    // The quota is per agent: another agent of the environment is not held back.
    ensure!(have(&request(&a2, offer(sha2, 100_000)).await?, sha2)? == 0);
    // Once the first completes, the agent may start the next.
    let done = request(&a1, chunk(sha1, 0, &first)).await?;
    ensure!(matches!(done, ServerMsgV2::BlobStored(_)), "{done:?}");
    ensure!(have(&request(&a1, offer(sha2, 100_000)).await?, sha2)? == 0);
    ensure!(
        aggregator
            .metric("gait_aggregator_blob_uploads_refused_total{reason=\"quota\"}")
            .await?
            == 1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_partial_upload_untouched_past_its_ttl_is_dropped_and_starts_over() -> Result<()> {
    let aggregator = spawn_aggregator(AggregatorOptions::default()).await?;
    let tmp = tempfile::tempdir()?;
    let prod = Tenant::from_parts("acme", "web", "prod")?;
    aggregator
        .publish(
            &prod,
            &Publish::policy("default.yaml", POLICY).upload_artifacts(),
        )
        .await?;
    let (_e, conn) = connect(&aggregator, &tmp.path().join("a1"), &prod, "a-1").await?;
    let bytes = content(200_000, 8);
    let sha: [u8; 32] = Sha256::digest(&bytes).into();
    ensure!(have(&request(&conn, offer(sha, 200_000)).await?, sha)? == 0);
    ensure!(have(&request(&conn, chunk(sha, 0, &bytes[..CHUNK])).await?, sha)? == CHUNK as u64);
    // Kept for resumption while fresh...
    ensure!(have(&request(&conn, offer(sha, 200_000)).await?, sha)? == CHUNK as u64);
    // ...and dropped once untouched for longer than evidence.uploads.partial_ttl_seconds (a day by default).
    let partials = walk(&aggregator.data_dir().join("uploads"))?;
    ensure!(partials.len() == 1, "{partials:?}");
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    std::fs::File::options()
        .append(true)
        .open(&partials[0])?
        .set_modified(two_days_ago)?;
    ensure!(have(&request(&conn, offer(sha, 200_000)).await?, sha)? == 0);
    Ok(())
}
