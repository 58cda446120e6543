//! Fault injection for the `gait-agent run` daemon: a stand-in aggregator (a quinn server with mutual TLS,
//! certificates from the `gait-testkit` PKI fixtures) that speaks the exchange documented in `gait-wire` but
//! misbehaves in ways the real aggregator cannot be made to: it stays silent after receiving a batch, commits
//! without answering, refuses a record kind for good, restarts with an empty store, and offers bundles signed
//! by an untrusted key, older than the active one or for another org. Every behaviour that needs only a
//! well-behaved aggregator is tested against the real one in `against_aggregator.rs`.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use gait_agent::config::{Config, OutboxConfig};
use gait_canon::sign::SigningKey;
use gait_testkit::{AgentCerts, PATIENCE, POLL_INTERVAL, RunningAgent, init_logs, wait_until};
use gait_wire::{
    AgentMsg, AgentMsgV2, BatchAck, BundleOffer, BundleReport, GENESIS_HASH, Hello, Record,
    RecordRefusal, RefusalCode, SeqRange, ServerMsg, ServerMsgV2, Welcome,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const TRUST_DOMAIN: &str = "test.gait";
const ORG: &str = "acme";
const PROJECT: &str = "payments";
const ENV: &str = "prod";
const AGENT_ID: &str = "agent-1";
/// Grace period of the agent's drain when a test stops it.
const AGENT_GRACE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------------------
// PKI and keys
// ---------------------------------------------------------------------------------------------------------

/// The stand-in's TLS side: the deployment CA and server certificate of a `gait-testkit` PKI fixture, with
/// the agent's certificate issued by that CA.
struct Pki {
    fixture: gait_testkit::Pki,
    agent: AgentCerts,
}

impl Pki {
    fn new(dir: &Path) -> Result<Self> {
        let fixture = gait_testkit::Pki::create(&dir.join("pki"), TRUST_DOMAIN)?;
        let tenant = gait_testkit::tenant(ORG, PROJECT, ENV)?;
        let agent = fixture.issue_agent(&dir.join("agent-tls"), &tenant, AGENT_ID)?;
        Ok(Pki { fixture, agent })
    }

    fn server_config(&self) -> Result<quinn::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(self.fixture.ca_cert())?)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()?;
        let server_chain = CertificateDer::pem_file_iter(self.fixture.server_cert())?
            .collect::<Result<Vec<_>, _>>()?;
        let server_key = PrivateKeyDer::from_pem_file(self.fixture.server_key())?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(server_chain, server_key)?;
        tls.alpn_protocols = vec![gait_wire::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }
}

/// Writes `key`'s public half as a Gait public key file and returns its path.
fn write_public_key(dir: &Path, name: &str, key: &SigningKey) -> Result<PathBuf> {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    gait_canon::sign::write_key_pair(&private, &public, key)?;
    Ok(public)
}

// ---------------------------------------------------------------------------------------------------------
// Bundles
// ---------------------------------------------------------------------------------------------------------

const POLICY_YAML: &str = "default_verdict: block\nrules:\n  - name: allow-read\n    effect: allow\n    match:\n      tool_names: [fs.read]\n";

/// A signed bundle for `org` (project/env as the agent's) at `epoch`, valid for an hour.
fn signed_bundle(
    key: &SigningKey,
    org: &str,
    epoch: u64,
    max_offline_seconds: u64,
) -> Result<Vec<u8>> {
    signed_bundle_with(
        key,
        org,
        epoch,
        gait_bundle::Staleness {
            max_offline_seconds,
            on_stale: gait_bundle::OnStale::FailClosed,
        },
    )
}

/// [`signed_bundle`] with an explicit staleness rule.
fn signed_bundle_with(
    key: &SigningKey,
    org: &str,
    epoch: u64,
    staleness: gait_bundle::Staleness,
) -> Result<Vec<u8>> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let bytes = gait_bundle::BundleBuilder::new(
        gait_bundle::Scope::from_parts(org, PROJECT, ENV)?,
        epoch,
        now + 3600,
    )
    .staleness(staleness)
    .add_policy("default.yaml", POLICY_YAML.as_bytes().to_vec())
    .sign(key)?;
    Ok(bytes)
}

/// An offer as an honest aggregator makes it: epoch and digest taken from the (unverified) manifest.
fn offer(signed_bundle: Vec<u8>) -> Result<BundleOffer> {
    let manifest = gait_bundle::inspect(&signed_bundle)?;
    let (digest, _) = manifest.digest()?;
    Ok(BundleOffer {
        epoch: manifest.epoch,
        digest,
        signed_bundle,
    })
}

// ---------------------------------------------------------------------------------------------------------
// The aggregator stand-in
// ---------------------------------------------------------------------------------------------------------

/// How the peer answers record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum AckMode {
    /// Commit and answer `BatchAck`.
    Ack = 0,
    /// Receive but neither commit nor answer (the aggregator dies before committing).
    Silent = 1,
    /// Commit but never answer (the aggregator dies between commit and ack).
    CommitSilently = 2,
}

/// What the peer saw and stored; survives a peer restart when passed to the next peer.
#[derive(Default)]
struct PeerData {
    /// Committed records by seq.
    committed: Mutex<BTreeMap<u64, Record>>,
    /// Every seq received in any batch, in arrival order.
    seen: Mutex<Vec<u64>>,
    hellos: Mutex<Vec<Hello>>,
    reports: Mutex<Vec<BundleReport>>,
    offers: Mutex<VecDeque<BundleOffer>>,
    offer_added: Notify,
    /// Records of this kind are refused for good (`RecordRefused`, `record_store_refused`).
    refuse_kind: Mutex<Option<String>>,
    /// Seqs refused for good; recorded as gaps, as the aggregator records a refusal.
    refused: Mutex<BTreeSet<u64>>,
}

impl PeerData {
    /// Highest seq up to which every seq is committed or refused (a refused seq is a gap), and the hash
    /// of the last committed record at or below it.
    fn committed_head(&self) -> (u64, [u8; 32]) {
        let committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let mut head = (0, GENESIS_HASH);
        loop {
            let next = head.0 + 1;
            if let Some(r) = committed.get(&next) {
                head = (r.seq, r.hash);
            } else if refused.contains(&next) && committed.range(next..).next().is_some() {
                head.0 = next;
            } else {
                return head;
            }
        }
    }

    fn refused_seqs(&self) -> Vec<u64> {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.iter().copied().collect()
    }

    fn push_offer(&self, offer: BundleOffer) {
        self.offers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(offer);
        self.offer_added.notify_waiters();
    }

    fn committed_records(&self) -> Vec<Record> {
        self.committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn seen(&self) -> Vec<u64> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn reports(&self) -> Vec<BundleReport> {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn hello_count(&self) -> usize {
        self.hellos.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

struct Peer {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    accept: JoinHandle<()>,
}

impl Peer {
    async fn start(
        pki: &Pki,
        addr: Option<SocketAddr>,
        data: Arc<PeerData>,
        mode: AckMode,
    ) -> Result<Peer> {
        let bind = addr.unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
        // A restarted peer rebinds the old port; the previous socket may take a moment to be released, so the
        // bind is retried until it succeeds (bounded by the suite's patience).
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let endpoint = loop {
            match quinn::Endpoint::server(pki.server_config()?, bind) {
                Ok(ep) => break ep,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "rebinding peer");
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                Err(e) => return Err(e).context("binding the test peer"),
            }
        };
        let addr = endpoint.local_addr()?;
        let mode = Arc::new(AtomicU8::new(mode as u8));
        let accept = tokio::spawn(accept_loop(endpoint.clone(), data, mode.clone()));
        Ok(Peer {
            endpoint,
            addr,
            mode,
            accept,
        })
    }

    fn set_mode(&self, mode: AckMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Closes every connection at once, like an aggregator process going away.
    async fn stop(self) {
        self.endpoint.close(0u32.into(), b"peer restarting");
        self.accept.abort();
        let _ = tokio::time::timeout(PATIENCE, self.endpoint.wait_idle()).await;
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, data: Arc<PeerData>, mode: Arc<AtomicU8>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        let data = data.clone();
        let mode = mode.clone();
        connections.spawn(async move {
            if let Ok(conn) = incoming.await {
                serve_connection(conn, data, mode).await;
            }
        });
    }
}

async fn serve_connection(conn: quinn::Connection, data: Arc<PeerData>, mode: Arc<AtomicU8>) {
    let mut streams = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            bi = conn.accept_bi() => {
                let Ok((send, recv)) = bi else { return };
                streams.spawn(serve_request(send, recv, data.clone(), mode.clone()));
            }
            uni = conn.accept_uni() => {
                let Ok(mut recv) = uni else { return };
                let data = data.clone();
                streams.spawn(async move {
                    if let Ok(bytes) = recv.read_to_end(1 << 20).await
                        && let Ok(AgentMsg::V2(AgentMsgV2::BundleReport(r))) = decode_body(&bytes)
                    {
                        data.reports.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    }
                });
            }
        }
    }
}

fn decode_body(frame: &[u8]) -> Result<AgentMsg> {
    let mut decoder = gait_wire::FrameDecoder::new(gait_wire::MAX_FRAME_LEN);
    decoder.push(frame);
    let body = decoder
        .next_frame()?
        .ok_or_else(|| anyhow!("incomplete frame"))?;
    Ok(gait_wire::decode_agent_msg(&body)?)
}

async fn serve_request(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    data: Arc<PeerData>,
    mode: Arc<AtomicU8>,
) {
    let Ok(bytes) = recv
        .read_to_end(gait_wire::MAX_FRAME_LEN as usize + 4)
        .await
    else {
        return;
    };
    let Ok(AgentMsg::V2(msg)) = decode_body(&bytes) else {
        return;
    };
    let reply = match msg {
        AgentMsgV2::Hello(hello) => {
            data.hellos
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(hello);
            let (committed_seq, committed_hash) = data.committed_head();
            ServerMsgV2::Welcome(Welcome {
                server_version: "test-peer".into(),
                protocol_version: gait_wire::PROTOCOL_VERSION,
                org: ORG.into(),
                project: PROJECT.into(),
                env: ENV.into(),
                agent_id: AGENT_ID.into(),
                committed_seq,
                committed_hash,
            })
        }
        AgentMsgV2::PollBundle(poll) => {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(poll.wait_ms.into());
            loop {
                let added = data.offer_added.notified();
                let next = data
                    .offers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front();
                if let Some(offer) = next {
                    break ServerMsgV2::Bundle(offer);
                }
                if tokio::time::timeout_at(deadline, added).await.is_err() {
                    break ServerMsgV2::NoNewBundle {
                        have_epoch: poll.have_epoch,
                    };
                }
            }
        }
        AgentMsgV2::RecordBatch(batch) => {
            data.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(batch.records.iter().map(|r| r.seq));
            let mode = mode.load(Ordering::SeqCst);
            if mode == AckMode::Silent as u8 {
                std::future::pending::<()>().await;
            }
            let refuse_kind = data
                .refuse_kind
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let poisoned = batch
                .records
                .iter()
                .find(|r| Some(&r.kind) == refuse_kind.as_ref());
            if let Some(r) = poisoned {
                data.refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(r.seq);
                let reply = ServerMsgV2::RecordRefused(RecordRefusal::new(
                    batch.batch_id,
                    r.seq,
                    RefusalCode::RecordStoreRefused,
                    format!(
                        "record {} kind {:?} is refused by this store",
                        r.seq, r.kind
                    ),
                ));
                if let Ok(frame) = gait_wire::encode_frame(&ServerMsg::V2(reply)) {
                    let _ = send.write_all(&frame).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                }
                return;
            }
            {
                let mut committed = data.committed.lock().unwrap_or_else(|e| e.into_inner());
                for r in &batch.records {
                    committed.insert(r.seq, r.clone());
                }
            }
            if mode == AckMode::CommitSilently as u8 {
                std::future::pending::<()>().await;
            }
            let committed_through = data.committed_head().0;
            ServerMsgV2::BatchAck(BatchAck {
                batch_id: batch.batch_id,
                committed_through,
                inserted: u32::try_from(batch.records.len()).unwrap_or(u32::MAX),
                duplicates: 0,
                gaps: data
                    .refused_seqs()
                    .into_iter()
                    .filter(|&s| s <= committed_through)
                    .map(|s| SeqRange { first: s, last: s })
                    .collect(),
                conflicts: Vec::new(),
            })
        }
        AgentMsgV2::BundleReport(_) => return,
        // The stand-in peer does not renew: an aggregator that predates renewal answers this way.
        AgentMsgV2::RenewCertificate(_) => ServerMsgV2::Error(gait_wire::WireError::new(
            gait_wire::ErrorCode::Unsupported,
            "this peer does not renew certificates",
        )),
        AgentMsgV2::FetchApprovals(_) => ServerMsgV2::Approvals(Default::default()),
        // The stand-in peer keeps no blobs: an aggregator that predates uploads answers this way.
        AgentMsgV2::BlobOffer(_) | AgentMsgV2::BlobChunk(_) => {
            ServerMsgV2::Error(gait_wire::WireError::new(
                gait_wire::ErrorCode::Unsupported,
                "this peer does not take uploads",
            ))
        }
    };
    let Ok(frame) = gait_wire::encode_frame(&ServerMsg::V2(reply)) else {
        return;
    };
    if send.write_all(&frame).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// The agent under test
// ---------------------------------------------------------------------------------------------------------

struct Fixture {
    tmp: tempfile::TempDir,
    pki: Pki,
    registry: SigningKey,
    registry_pub: PathBuf,
}

impl Fixture {
    fn new() -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let pki = Pki::new(tmp.path())?;
        let registry = SigningKey::generate();
        let registry_pub = write_public_key(tmp.path(), "registry", &registry)?;
        Ok(Fixture {
            tmp,
            pki,
            registry,
            registry_pub,
        })
    }

    /// The agent's configuration, dialling the stand-in at `aggregator`.
    fn config(&self, aggregator: SocketAddr) -> Config {
        gait_testkit::agent_config(
            aggregator,
            &self.pki.agent,
            &self.registry_pub,
            self.tmp.path(),
        )
    }
}

/// Starts the real agent daemon with `config`.
/// Seq of the first record a fresh agent writes itself: the announcement of its trace key (`agent.trace_key`),
/// ahead of any producer's record.
const ANNOUNCED: u64 = 1;

async fn start_agent(config: Config) -> Result<RunningAgent> {
    Ok(RunningAgent::start(config, AGENT_GRACE).await?)
}

fn payload_of(r: &Record) -> Result<Value> {
    Ok(serde_json::from_slice(&r.payload)?)
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_untrusted_older_and_foreign_bundles_and_keeps_the_active_one() -> Result<()>
{
    init_logs();
    let fx = Fixture::new()?;
    let data = Arc::new(PeerData::default());
    let peer = Peer::start(&fx.pki, None, data.clone(), AckMode::Ack).await?;
    let agent = start_agent(fx.config(peer.addr)).await?;

    let good = signed_bundle(&fx.registry, ORG, 2, 3600)?;
    let good_digest = hex::encode(offer(good.clone())?.digest);
    data.push_offer(offer(good)?);
    agent
        .wait_status("bundle 2 active", |s| {
            s.active_bundle.as_ref().is_some_and(|b| b.epoch == 2)
        })
        .await?;

    let stranger = SigningKey::generate();
    let cases = [
        (
            "signed by an untrusted key",
            3,
            signed_bundle(&stranger, ORG, 3, 3600)?,
        ),
        (
            "older than the active one",
            1,
            signed_bundle(&fx.registry, ORG, 1, 3600)?,
        ),
        (
            "issued for another org",
            4,
            signed_bundle(&fx.registry, "other-org", 4, 3600)?,
        ),
    ];
    let mut codes = Vec::new();
    for (why, epoch, bytes) in cases {
        let offered = offer(bytes)?;
        let offered_digest = hex::encode(offered.digest);
        data.push_offer(offered);
        let status = agent
            .wait_status(why, |s| {
                s.last_refusal
                    .as_ref()
                    .is_some_and(|r| r.epoch == epoch && r.digest == offered_digest)
            })
            .await?;
        let active = status.active_bundle.context("active bundle vanished")?;
        assert_eq!(
            (active.epoch, active.digest.as_str()),
            (2, good_digest.as_str()),
            "{why}"
        );
        let refusal = status.last_refusal.context("refusal")?;
        assert!(
            !refusal.code.is_empty() && !refusal.message.is_empty(),
            "{why}: {refusal:?}"
        );
        codes.push(refusal.code);
    }
    assert!(
        codes[0] != codes[2],
        "a bad signature and a foreign scope should be told apart: {codes:?}"
    );

    // Each refusal reaches the aggregator as a report and as a durable status record.
    wait_until("three refusal reports", || {
        data.reports()
            .iter()
            .filter(|r| r.refusal.is_some())
            .count()
            == 3
    })
    .await?;
    wait_until("three bundle.refused records", || {
        data.committed_records()
            .iter()
            .filter(|r| r.kind == "bundle.refused")
            .count()
            == 3
    })
    .await?;
    let refused_epochs: Vec<Value> = data
        .committed_records()
        .iter()
        .filter(|r| r.kind == "bundle.refused")
        .map(|r| payload_of(r).map(|p| p["epoch"].clone()))
        .collect::<Result<_>>()?;
    assert_eq!(refused_epochs, vec![json!(3), json!(1), json!(4)]);

    // Records made after the refusals still carry the bundle that stayed in force.
    let (code, body) = agent
        .post_record(&json!({"class": "allow", "kind": "app.decision", "payload": {}}))
        .await?;
    assert_eq!(code, 200, "{body}");
    let seq = body["seq"].as_u64().context("seq")?;
    wait_until("record committed", || {
        data.committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&seq)
    })
    .await?;
    let rec = data
        .committed_records()
        .into_iter()
        .find(|r| r.seq == seq)
        .context("record")?;
    assert_eq!(rec.bundle.map(|b| b.epoch), Some(2));

    assert!(agent.stop().await?.shutdown.clean);
    peer.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_deleted_only_after_the_ack_and_are_resent_after_the_peer_restarts()
-> Result<()> {
    init_logs();
    let fx = Fixture::new()?;
    let first = Arc::new(PeerData::default());
    let peer = Peer::start(&fx.pki, None, first.clone(), AckMode::Silent).await?;
    let addr = peer.addr;
    let agent = start_agent(fx.config(addr)).await?;
    agent.wait_status("connection", |s| s.connected).await?;

    for (class, n) in [("block", 1), ("approval", 2), ("allow", 3)] {
        let (code, body) = agent
            .post_record(&json!({"class": class, "kind": "app.decision", "payload": {"n": n}}))
            .await?;
        assert_eq!(
            (code, body["seq"].as_u64()),
            (200, Some(ANNOUNCED + n)),
            "{body}"
        );
    }
    wait_until("the peer received all three records", || {
        let seen = first.seen();
        (1..=ANNOUNCED + 3).all(|s| seen.contains(&s))
    })
    .await?;
    // Sent but never acknowledged: nothing may be deleted.
    let status = agent.status().await?;
    assert_eq!(
        (status.outbox.depth, status.outbox.acked_through),
        (ANNOUNCED + 3, 0)
    );

    // The aggregator dies before acking. Once the agent has seen the connection end, no answer to those
    // batches can still arrive: the records must all still be there.
    peer.stop().await;
    let status = agent.wait_status("disconnect", |s| !s.connected).await?;
    assert_eq!(
        (status.outbox.depth, status.outbox.acked_through),
        (ANNOUNCED + 3, 0),
        "records were deleted without an ack"
    );
    // A new aggregator (empty store) comes up on the same address.
    let second = Arc::new(PeerData::default());
    let peer = Peer::start(&fx.pki, Some(addr), second.clone(), AckMode::Ack).await?;
    let status = agent
        .wait_status("outbox drained after reconnect", |s| {
            s.connected && s.outbox.depth == 0
        })
        .await?;
    assert_eq!(status.outbox.acked_through, ANNOUNCED + 3);
    assert!(status.reconnects >= 1);

    let records = second.committed_records();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=ANNOUNCED + 3).collect::<Vec<_>>()
    );
    assert_eq!(records[0].kind, "agent.trace_key");
    let mut prev = GENESIS_HASH;
    for r in &records {
        assert!(r.verify_hash(), "record {} hash", r.seq);
        assert_eq!(r.prev_hash, prev, "record {} chain", r.seq);
        prev = r.hash;
    }
    // The producer's payload, plus who appended it (TCP, with the agent's token).
    let payload = payload_of(&records[ANNOUNCED as usize + 1])?;
    assert_eq!(payload["n"], json!(2));
    assert_eq!(payload["appended_by"]["transport"], json!("tcp"));
    assert!(second.hello_count() >= 1);

    assert!(agent.stop().await?.shutdown.clean);
    peer.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_aggregator_committed_before_dying_are_acked_by_welcome_not_resent()
-> Result<()> {
    init_logs();
    let fx = Fixture::new()?;
    let data = Arc::new(PeerData::default());
    let peer = Peer::start(&fx.pki, None, data.clone(), AckMode::CommitSilently).await?;
    let addr = peer.addr;
    let agent = start_agent(fx.config(addr)).await?;
    agent.wait_status("connection", |s| s.connected).await?;
    for n in 1..=2 {
        let (code, _) = agent
            .post_record(
                &json!({"class": "artifact_digest", "kind": "ci.evidence", "payload": {"n": n}}),
            )
            .await?;
        assert_eq!(code, 200);
    }
    wait_until("both records committed", || {
        data.committed_head().0 == ANNOUNCED + 2
    })
    .await?;
    assert_eq!(agent.status().await?.outbox.depth, ANNOUNCED + 2);

    // Same store, new process: its Welcome says seq 2 is committed.
    peer.stop().await;
    data.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let peer = Peer::start(&fx.pki, Some(addr), data.clone(), AckMode::Ack).await?;
    let status = agent
        .wait_status("outbox acked by welcome", |s| {
            s.connected && s.outbox.depth == 0
        })
        .await?;
    assert_eq!(status.outbox.acked_through, ANNOUNCED + 2);

    // Shipping continues after the acknowledged head. The agent takes acks in order, so once record 3 is
    // acknowledged every batch it sent on this connection was answered, hence received: a resent 1 or 2
    // would be in `seen` by then.
    peer.set_mode(AckMode::Ack);
    let (_, body) = agent
        .post_record(&json!({"class": "block", "kind": "app.decision", "payload": {}}))
        .await?;
    let third = ANNOUNCED + 3;
    assert_eq!(body["seq"], json!(third));
    wait_until("record 3 committed", || data.committed_head().0 == third).await?;
    agent
        .wait_status("record 3 acknowledged", |s| {
            s.outbox.acked_through == third && s.outbox.depth == 0
        })
        .await?;
    let seen = data.seen();
    assert!(
        seen.contains(&third) && seen.iter().all(|&s| s > third - 1),
        "records were resent: {seen:?}"
    );

    assert!(agent.stop().await?.shutdown.clean);
    peer.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_api_names_the_bad_field_and_answers_507_when_the_outbox_is_full() -> Result<()> {
    init_logs();
    let fx = Fixture::new()?;
    // Nothing listens here: the agent stays disconnected, so records pile up.
    let nowhere: SocketAddr = ([127, 0, 0, 1], 9).into();
    let mut config = fx.config(nowhere);
    config.outbox = OutboxConfig {
        max_records: 1,
        max_bytes: 1 << 20,
    };
    let agent = start_agent(config).await?;
    assert_eq!(agent.get_text("/healthz").await?.trim(), "ok");

    let bad = [
        (json!({"kind": "k", "payload": {}}), "class"),
        (
            json!({"class": "urgent", "kind": "k", "payload": {}}),
            "class",
        ),
        (json!({"class": "block", "kind": "", "payload": {}}), "kind"),
        (
            json!({"class": "block", "kind": "k".repeat(65), "payload": {}}),
            "kind",
        ),
        (
            json!({"class": "block", "kind": "k", "payload": "text"}),
            "payload",
        ),
        (
            json!({"class": "block", "kind": "k", "payload": {}, "extra": 1}),
            "body",
        ),
        (json!(["not", "an", "object"]), "body"),
    ];
    for (body, field) in bad {
        let (code, answer) = agent.post_record(&body).await?;
        assert_eq!(code, 400, "{body} -> {answer}");
        assert_eq!(answer["error"]["field"], json!(field), "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], json!("bad_request"));
    }

    // Soft quota 1 record, hard ceiling 2: the trace key announcement (seq 1) fills the soft quota, so a block
    // record is still taken, an allow record is shed, and a block record past the ceiling refused with 507.
    let block = json!({"class": "block", "kind": "app.decision", "payload": {}});
    assert_eq!(
        agent.post_record(&block).await?.1,
        json!({"seq": ANNOUNCED + 1})
    );
    let (code, answer) = agent
        .post_record(&json!({"class": "allow", "kind": "app.decision", "payload": {}}))
        .await?;
    assert_eq!((code, answer), (200, json!({"shed": true})));
    let (code, answer) = agent.post_record(&block).await?;
    assert_eq!(code, 507, "{answer}");
    assert_eq!(answer["error"]["code"], json!("outbox_full"));

    // `gait-agent status` reads the same report through its client.
    let status = gait_agent::local_api::fetch_status(agent.local_api(), PATIENCE).await?;
    assert_eq!((status.outbox.depth, status.outbox.shed_total), (2, 1));
    let text = status.render_text();
    assert!(
        text.contains("org=acme project=payments env=prod agent=agent-1"),
        "{text}"
    );
    assert!(text.contains("disconnected"), "{text}");
    let metrics = agent.get_text("/metrics").await?;
    assert!(metrics.contains("gait_agent_outbox_depth 2"), "{metrics}");
    assert!(
        metrics.contains("gait_agent_outbox_shed_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("gait_agent_connected 0"), "{metrics}");
    assert!(agent.stop().await?.shutdown.clean);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_aggregator_refuses_for_good_is_quarantined_and_the_records_after_it_arrive()
-> Result<()> {
    init_logs();
    let fx = Fixture::new()?;
    let data = Arc::new(PeerData::default());
    *data.refuse_kind.lock().unwrap_or_else(|e| e.into_inner()) = Some("test.poison".into());
    // Silent first, so all four records are in the outbox before the first batch is answered.
    let peer = Peer::start(&fx.pki, None, data.clone(), AckMode::Silent).await?;
    let addr = peer.addr;
    let config = fx.config(addr);
    let db_path = config.db_path();
    let agent = start_agent(config).await?;
    agent.wait_status("connection", |s| s.connected).await?;
    for (n, kind) in [
        "app.decision",
        "test.poison",
        "app.decision",
        "app.decision",
    ]
    .into_iter()
    .enumerate()
    {
        let (code, body) = agent
            .post_record(&json!({"class": "block", "kind": kind, "payload": {"n": n + 1}}))
            .await?;
        assert_eq!(
            (code, body["seq"].as_u64()),
            (200, Some(ANNOUNCED + n as u64 + 1)),
            "{body}"
        );
    }
    // A record breaking a wire limit is refused at the producer, naming the field and the limit.
    let (code, body) = agent
        .post_record(&json!({"class": "block", "kind": "k".repeat(65), "payload": {}}))
        .await?;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["field"], "kind", "{body}");
    assert!(body.to_string().contains("64"), "{body}");

    // The aggregator comes back and refuses record 2 for good.
    peer.stop().await;
    agent.wait_status("disconnect", |s| !s.connected).await?;
    let peer = Peer::start(&fx.pki, Some(addr), data.clone(), AckMode::Ack).await?;
    let status = agent
        .wait_status("outbox drained around the refused record", |s| {
            s.outbox.depth == 0 && s.outbox.quarantined == 1
        })
        .await?;
    assert_eq!(status.outbox.acked_through, ANNOUNCED + 4);
    let committed = data.committed_records();
    let a = ANNOUNCED;
    assert_eq!(
        committed.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=a).chain([a + 1, a + 3, a + 4]).collect::<Vec<_>>()
    );
    assert_eq!(data.refused_seqs(), vec![a + 2]);

    // The stream goes on after the refusal.
    let (code, body) = agent
        .post_record(&json!({"class": "block", "kind": "app.decision", "payload": {"n": 5}}))
        .await?;
    assert_eq!((code, body["seq"].as_u64()), (200, Some(a + 5)), "{body}");
    wait_until("record 5 committed", || data.committed_head().0 == a + 5).await?;
    assert!(agent.stop().await?.shutdown.clean);
    peer.stop().await;

    // The quarantine holds record 2, and the chain links through it: record 3 points at its hash.
    let db = gait_agent::db::AgentDb::open(&db_path)?;
    let (stats, held) = gait_agent::outbox::quarantine::read(&db)?;
    assert_eq!((stats.held, stats.total, stats.dropped), (1, 1, 0));
    assert_eq!(held.len(), 1);
    let poison = &held[0];
    assert_eq!(poison.record.seq, a + 2);
    assert_eq!(poison.record.kind, "test.poison");
    assert_eq!(poison.code, "record_store_refused");
    assert!(poison.record.verify_hash());
    let committed = data.committed_records();
    let before = ANNOUNCED as usize;
    assert_eq!(committed[before].hash, poison.record.prev_hash);
    assert_eq!(committed[before + 1].prev_hash, poison.record.hash);
    for r in &committed {
        assert!(r.verify_hash(), "record {} hash", r.seq);
    }
    Ok(())
}
