//! The `gait-agent run` daemon against a small but real aggregator stand-in: a quinn server with mutual TLS
//! (rcgen certificates) that speaks the exchange protocol documented in `gait_agent::daemon`, plus real
//! signed bundles. Each test drives the agent through its local HTTP API like a producer or operator would.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use gait_agent::config::{
    AggregatorConfig, Config, GateConfig, LocalApiConfig, OutboxConfig, PollConfig, TlsConfig,
    TrustConfig,
};
use gait_agent::daemon::{Daemon, RunOptions, Shutdown, StatusReport};
use gait_canon::sign::SigningKey;
use gait_wire::{
    AgentMsg, AgentMsgV1, BatchAck, BundleOffer, BundleReport, GENESIS_HASH, Hello, Record,
    RecordRefusal, RefusalCode, SeqRange, ServerMsg, ServerMsgV1, Welcome,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TRUST_DOMAIN: &str = "test.gait";
const ORG: &str = "acme";
const PROJECT: &str = "payments";
const ENV: &str = "prod";
const AGENT_ID: &str = "agent-1";
/// Upper bound for anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------------------------------------
// PKI and keys
// ---------------------------------------------------------------------------------------------------------

/// A deployment CA, a server certificate for 127.0.0.1/localhost and an agent certificate, on disk.
struct Pki {
    dir: PathBuf,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

impl Pki {
    fn new(dir: &Path) -> Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "gait test ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server_params = CertificateParams::new(vec!["localhost".to_owned()])?;
        server_params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.use_authority_key_identifier_extension = true;
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        let agent_key = KeyPair::generate()?;
        let mut agent_params = CertificateParams::new(Vec::<String>::new())?;
        let uri = format!(
            "spiffe://{TRUST_DOMAIN}/org/{ORG}/project/{PROJECT}/env/{ENV}/agent/{AGENT_ID}"
        );
        agent_params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into()?)];
        agent_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        agent_params.use_authority_key_identifier_extension = true;
        let agent_cert = agent_params.signed_by(&agent_key, &issuer)?;

        std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
        std::fs::write(dir.join("agent.pem"), agent_cert.pem())?;
        std::fs::write(dir.join("agent.key"), agent_key.serialize_pem())?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_der: ca_cert.der().clone(),
            server_chain: vec![server_cert.der().clone()],
            server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
        })
    }

    fn server_config(&self) -> Result<quinn::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                self.server_chain.clone(),
                PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
            )?;
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
        // A restarted peer rebinds the old port; the previous socket may take a moment to be released.
        let started = Instant::now();
        let endpoint = loop {
            match quinn::Endpoint::server(pki.server_config()?, bind) {
                Ok(ep) => break ep,
                Err(e) if started.elapsed() < Duration::from_secs(3) => {
                    tracing::debug!(error = %e, "rebinding peer");
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
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
                        && let Ok(AgentMsg::V1(AgentMsgV1::BundleReport(r))) = decode_body(&bytes)
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
    let Ok(AgentMsg::V1(msg)) = decode_body(&bytes) else {
        return;
    };
    let reply = match msg {
        AgentMsgV1::Hello(hello) => {
            data.hellos
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(hello);
            let (committed_seq, committed_hash) = data.committed_head();
            ServerMsgV1::Welcome(Welcome {
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
        AgentMsgV1::PollBundle(poll) => {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(poll.wait_ms.into());
            loop {
                let added = data.offer_added.notified();
                let next = data
                    .offers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front();
                if let Some(offer) = next {
                    break ServerMsgV1::Bundle(offer);
                }
                if tokio::time::timeout_at(deadline, added).await.is_err() {
                    break ServerMsgV1::NoNewBundle {
                        have_epoch: poll.have_epoch,
                    };
                }
            }
        }
        AgentMsgV1::RecordBatch(batch) => {
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
                let reply = ServerMsgV1::RecordRefused(RecordRefusal::new(
                    batch.batch_id,
                    r.seq,
                    RefusalCode::RecordStoreRefused,
                    format!(
                        "record {} kind {:?} is refused by this store",
                        r.seq, r.kind
                    ),
                ));
                if let Ok(frame) = gait_wire::encode_frame(&ServerMsg::V1(reply)) {
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
            ServerMsgV1::BatchAck(BatchAck {
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
            })
        }
        AgentMsgV1::BundleReport(_) => return,
    };
    let Ok(frame) = gait_wire::encode_frame(&ServerMsg::V1(reply)) else {
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
    _tmp: tempfile::TempDir,
    pki: Pki,
    registry: SigningKey,
    registry_pub: PathBuf,
    data_dir: PathBuf,
}

impl Fixture {
    fn new() -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let pki = Pki::new(tmp.path())?;
        let registry = SigningKey::generate();
        let registry_pub = write_public_key(tmp.path(), "registry", &registry)?;
        let data_dir = tmp.path().join("data");
        Ok(Fixture {
            _tmp: tmp,
            pki,
            registry,
            registry_pub,
            data_dir,
        })
    }

    fn config(&self, aggregator: SocketAddr) -> Config {
        Config {
            aggregator: AggregatorConfig {
                address: aggregator.to_string(),
                server_name: "localhost".into(),
            },
            tls: TlsConfig {
                ca: self.pki.dir.join("ca.pem"),
                cert: self.pki.dir.join("agent.pem"),
                key: self.pki.dir.join("agent.key"),
            },
            trust: TrustConfig {
                registry_public_keys: vec![self.registry_pub.clone()],
            },
            data_dir: self.data_dir.clone(),
            outbox: OutboxConfig::default(),
            local_api: LocalApiConfig {
                listen: "127.0.0.1:0".into(),
            },
            poll: PollConfig { wait_ms: 1_000 },
            gate: GateConfig::default(),
        }
    }
}

struct Agent {
    api: SocketAddr,
    http: reqwest::Client,
    shutdown: CancellationToken,
    run: JoinHandle<Shutdown>,
}

impl Agent {
    async fn start(config: Config) -> Result<Agent> {
        let shutdown = CancellationToken::new();
        let daemon = Daemon::start(
            config,
            RunOptions {
                grace: Duration::from_secs(5),
            },
            shutdown.clone(),
        )
        .await?;
        let api = daemon.local_api_addr();
        let run = tokio::spawn(daemon.wait());
        Ok(Agent {
            api,
            http: reqwest::Client::builder().no_proxy().build()?,
            shutdown,
            run,
        })
    }

    async fn stop(self) -> Result<Shutdown> {
        self.shutdown.cancel();
        Ok(tokio::time::timeout(Duration::from_secs(8), self.run).await??)
    }

    async fn status(&self) -> Result<StatusReport> {
        let r = self
            .http
            .get(format!("http://{}/v1/status", self.api))
            .send()
            .await?;
        Ok(r.error_for_status()?.json().await?)
    }

    async fn post_record(&self, body: Value) -> Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("http://{}/v1/records", self.api))
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    /// `POST /v1/gate/evaluate{query}` with `intent` as the body.
    async fn evaluate(&self, query: &str, intent: &Value) -> Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("http://{}/v1/gate/evaluate{query}", self.api))
            .json(intent)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    async fn get_text(&self, path: &str) -> Result<String> {
        let r = self
            .http
            .get(format!("http://{}{path}", self.api))
            .send()
            .await?;
        Ok(r.error_for_status()?.text().await?)
    }

    /// Polls status until `check` holds.
    async fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&StatusReport) -> bool,
    ) -> Result<StatusReport> {
        let started = Instant::now();
        loop {
            let status = self.status().await?;
            if check(&status) {
                return Ok(status);
            }
            if started.elapsed() > PATIENCE {
                bail!("timed out waiting for {what}; last status: {status:#?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn wait_until(what: &str, check: impl Fn() -> bool) -> Result<()> {
    let started = Instant::now();
    while !check() {
        if started.elapsed() > PATIENCE {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

fn payload_of(r: &Record) -> Result<Value> {
    Ok(serde_json::from_slice(&r.payload)?)
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_activates_a_bundle_signed_by_a_trusted_key_and_stamps_records_with_it() -> Result<()>
{
    init_logs();
    let fx = Fixture::new()?;
    let data = Arc::new(PeerData::default());
    let peer = Peer::start(&fx.pki, None, data.clone(), AckMode::Ack).await?;
    let agent = Agent::start(fx.config(peer.addr)).await?;

    let status = agent.wait_status("connection", |s| s.connected).await?;
    assert!(status.active_bundle.is_none());
    assert_eq!(status.identity.org, ORG);
    assert_eq!(status.identity.agent_id, AGENT_ID);

    let bytes = signed_bundle(&fx.registry, ORG, 1, 3600)?;
    let digest = hex::encode(offer(bytes.clone())?.digest);
    data.push_offer(offer(bytes)?);
    let status = agent
        .wait_status("bundle 1 active", |s| {
            s.active_bundle.as_ref().is_some_and(|b| b.epoch == 1)
        })
        .await?;
    let active = status.active_bundle.clone().context("active bundle")?;
    assert_eq!(active.digest, digest);
    assert_eq!(status.received_bundle.as_ref().map(|b| b.epoch), Some(1));
    assert!(status.last_refusal.is_none());
    assert!(!status.stale);
    assert_eq!(status.on_stale.as_deref(), Some("fail_closed"));
    assert!(status.last_contact_unix_ms.is_some());

    // The applied bundle is reported on a uni stream and as a durable status record.
    wait_until("bundle report", || {
        data.reports()
            .iter()
            .any(|r| r.applied.as_ref().is_some_and(|a| a.epoch == 1))
    })
    .await?;
    wait_until("bundle.applied record", || {
        data.committed_records()
            .iter()
            .any(|r| r.kind == "bundle.applied")
    })
    .await?;
    let applied = data
        .committed_records()
        .into_iter()
        .find(|r| r.kind == "bundle.applied")
        .context("applied record")?;
    assert_eq!(applied.class, gait_wire::RecordClass::Status);
    let p = payload_of(&applied)?;
    assert_eq!(p["epoch"], json!(1));
    assert_eq!(p["digest"], json!(digest));

    // A producer's record carries the bundle in force and since when.
    let (code, body) = agent
        .post_record(
            json!({"class": "block", "kind": "gate.decision", "payload": {"tool": "fs.write"}}),
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    let seq = body["seq"].as_u64().context("seq")?;
    wait_until("producer record committed", || {
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
    let stamped = rec.bundle.clone().context("record carries no bundle")?;
    assert_eq!(stamped.epoch, 1);
    assert_eq!(hex::encode(stamped.digest), digest);
    assert_eq!(stamped.since_unix_ms, active.since_unix_ms);
    assert_eq!(payload_of(&rec)?, json!({"tool": "fs.write"}));

    let metrics = agent.get_text("/metrics").await?;
    assert!(metrics.contains("gait_agent_bundle_epoch 1"), "{metrics}");
    assert!(metrics.contains("gait_agent_connected 1"), "{metrics}");

    assert!(agent.stop().await?.clean);
    peer.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_untrusted_older_and_foreign_bundles_and_keeps_the_active_one() -> Result<()>
{
    init_logs();
    let fx = Fixture::new()?;
    let data = Arc::new(PeerData::default());
    let peer = Peer::start(&fx.pki, None, data.clone(), AckMode::Ack).await?;
    let agent = Agent::start(fx.config(peer.addr)).await?;

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
        .post_record(json!({"class": "allow", "kind": "gate.decision", "payload": {}}))
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

    assert!(agent.stop().await?.clean);
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
    let agent = Agent::start(fx.config(addr)).await?;
    agent.wait_status("connection", |s| s.connected).await?;

    for (class, n) in [("block", 1), ("approval", 2), ("allow", 3)] {
        let (code, body) = agent
            .post_record(json!({"class": class, "kind": "gate.decision", "payload": {"n": n}}))
            .await?;
        assert_eq!((code, body["seq"].as_u64()), (200, Some(n)), "{body}");
    }
    wait_until("the peer received all three records", || {
        let seen = first.seen();
        (1..=3).all(|s| seen.contains(&s))
    })
    .await?;
    // Sent but never acknowledged: nothing may be deleted, whatever the timing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = agent.status().await?;
    assert_eq!((status.outbox.depth, status.outbox.acked_through), (3, 0));

    // The aggregator dies before acking; a new one (empty store) comes up on the same address.
    peer.stop().await;
    agent.wait_status("disconnect", |s| !s.connected).await?;
    let second = Arc::new(PeerData::default());
    let peer = Peer::start(&fx.pki, Some(addr), second.clone(), AckMode::Ack).await?;
    let status = agent
        .wait_status("outbox drained after reconnect", |s| {
            s.connected && s.outbox.depth == 0
        })
        .await?;
    assert_eq!(status.outbox.acked_through, 3);
    assert!(status.reconnects >= 1);

    let records = second.committed_records();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let mut prev = GENESIS_HASH;
    for r in &records {
        assert!(r.verify_hash(), "record {} hash", r.seq);
        assert_eq!(r.prev_hash, prev, "record {} chain", r.seq);
        prev = r.hash;
    }
    assert_eq!(payload_of(&records[1])?, json!({"n": 2}));
    assert!(second.hello_count() >= 1);

    assert!(agent.stop().await?.clean);
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
    let agent = Agent::start(fx.config(addr)).await?;
    agent.wait_status("connection", |s| s.connected).await?;
    for n in 1..=2 {
        let (code, _) = agent
            .post_record(
                json!({"class": "artifact_digest", "kind": "artifact.trace", "payload": {"n": n}}),
            )
            .await?;
        assert_eq!(code, 200);
    }
    wait_until("both records committed", || data.committed_head().0 == 2).await?;
    assert_eq!(agent.status().await?.outbox.depth, 2);

    // Same store, new process: its Welcome says seq 2 is committed.
    peer.stop().await;
    data.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let peer = Peer::start(&fx.pki, Some(addr), data.clone(), AckMode::Ack).await?;
    let status = agent
        .wait_status("outbox acked by welcome", |s| {
            s.connected && s.outbox.depth == 0
        })
        .await?;
    assert_eq!(status.outbox.acked_through, 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(data.seen(), Vec::<u64>::new(), "records were resent");

    // Shipping continues after the acknowledged head.
    peer.set_mode(AckMode::Ack);
    let (_, body) = agent
        .post_record(json!({"class": "block", "kind": "gate.decision", "payload": {}}))
        .await?;
    assert_eq!(body["seq"], json!(3));
    wait_until("record 3 committed", || data.committed_head().0 == 3).await?;

    assert!(agent.stop().await?.clean);
    peer.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restores_its_verified_bundle_after_a_restart_and_reports_staleness() -> Result<()> {
    init_logs();
    let fx = Fixture::new()?;
    let data = Arc::new(PeerData::default());
    let peer = Peer::start(&fx.pki, None, data.clone(), AckMode::Ack).await?;
    let addr = peer.addr;
    let agent = Agent::start(fx.config(addr)).await?;
    data.push_offer(offer(signed_bundle(&fx.registry, ORG, 5, 1)?)?);
    let before = agent
        .wait_status("bundle 5 active", |s| {
            s.active_bundle.as_ref().is_some_and(|b| b.epoch == 5)
        })
        .await?;
    assert!(agent.stop().await?.clean, "drain was not clean");
    peer.stop().await;

    // Restart with the aggregator gone: the cached bundle is verified again and enforced at once.
    let agent = Agent::start(fx.config(addr)).await?;
    let status = agent.status().await?;
    assert!(!status.connected);
    assert_eq!(status.active_bundle, before.active_bundle);
    assert_eq!(status.max_offline_seconds, Some(1));

    // max_offline_seconds is 1: without contact the agent turns stale and says what the bundle wants.
    let status = agent.wait_status("stale", |s| s.stale).await?;
    assert_eq!(status.on_stale.as_deref(), Some("fail_closed"));
    assert!(
        agent
            .get_text("/metrics")
            .await?
            .contains("gait_agent_stale 1")
    );
    assert!(agent.stop().await?.clean);

    // With a trust root that no longer includes the signer, the cache is not used at all.
    let mut config = fx.config(addr);
    let other = SigningKey::generate();
    config.trust.registry_public_keys = vec![write_public_key(&fx.pki.dir, "other", &other)?];
    let agent = Agent::start(config).await?;
    let status = agent.status().await?;
    assert_eq!(
        status.active_bundle, None,
        "a cache that fails verification was used"
    );
    assert!(agent.stop().await?.clean);
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
    let agent = Agent::start(config).await?;
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
        let (code, answer) = agent.post_record(body.clone()).await?;
        assert_eq!(code, 400, "{body} -> {answer}");
        assert_eq!(answer["error"]["field"], json!(field), "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], json!("bad_request"));
    }

    // Soft quota 1 record, hard ceiling 2: an allow record is shed, a block record refused with 507.
    let block = json!({"class": "block", "kind": "gate.decision", "payload": {}});
    assert_eq!(agent.post_record(block.clone()).await?.1, json!({"seq": 1}));
    let (code, answer) = agent
        .post_record(json!({"class": "allow", "kind": "gate.decision", "payload": {}}))
        .await?;
    assert_eq!((code, answer), (200, json!({"shed": true})));
    assert_eq!(agent.post_record(block.clone()).await?.1, json!({"seq": 2}));
    let (code, answer) = agent.post_record(block).await?;
    assert_eq!(code, 507, "{answer}");
    assert_eq!(answer["error"]["code"], json!("outbox_full"));

    // `gait-agent status` reads the same report through its client.
    let status = gait_agent::local_api::fetch_status(agent.api, Duration::from_secs(2)).await?;
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
    assert!(agent.stop().await?.clean);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Local gate decisions
// ---------------------------------------------------------------------------------------------------------

/// A Gait intent request for `tool` at `risk_class`.
fn intent(tool: &str, risk_class: &str) -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-02-05T00:00:00Z",
        "producer_version": "test",
        "tool_name": tool,
        "args": {"path": "/tmp/out.txt"},
        "targets": [{"kind": "path", "value": "/tmp/out.txt"}],
        "arg_provenance": [{"arg_path": "$.path", "source": "user"}],
        "context": {"identity": "alice", "workspace": "/tmp/ws", "risk_class": risk_class}
    })
}

/// The repository's `shared/` directory (conformance material and the independent checker).
fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_decides_locally_from_the_verified_bundle_signs_the_trace_and_records_it()
-> Result<()> {
    init_logs();
    let fx = Fixture::new()?;
    let data = Arc::new(PeerData::default());
    let peer = Peer::start(&fx.pki, None, data.clone(), AckMode::Ack).await?;
    let agent = Agent::start(fx.config(peer.addr)).await?;
    agent.wait_status("connection", |s| s.connected).await?;

    // No verified bundle yet: high-risk intents are blocked, others need approval; nothing is allowed.
    let (code, high) = agent.evaluate("", &intent("fs.write", "high")).await?;
    assert_eq!(code, 200, "{high}");
    assert_eq!(high["verdict"], json!("block"));
    assert_eq!(high["enforcement"], json!("no_policy"));
    assert_eq!(high["reason_codes"], json!(["agent_no_verified_policy"]));
    assert!(high.get("trace").is_none());
    let (_, low) = agent.evaluate("", &intent("fs.read", "low")).await?;
    assert_eq!(low["verdict"], json!("require_approval"), "{low}");

    let bytes = signed_bundle(&fx.registry, ORG, 1, 3600)?;
    let digest = hex::encode(offer(bytes.clone())?.digest);
    data.push_offer(offer(bytes)?);
    agent
        .wait_status("bundle 1 active", |s| {
            s.active_bundle.as_ref().is_some_and(|b| b.epoch == 1)
        })
        .await?;

    let policy = gait_policy::parse_policy_yaml(POLICY_YAML.as_bytes())?;
    let read_intent = intent("fs.read", "low");
    let expected_intent_digest =
        gait_policy::parse_and_normalize_intent(serde_json::to_vec(&read_intent)?.as_slice())?
            .intent_digest;
    let (code, allow) = agent.evaluate("", &read_intent).await?;
    assert_eq!(code, 200, "{allow}");
    assert_eq!(allow["verdict"], json!("allow"), "{allow}");
    assert_eq!(allow["matched_rule"], json!("allow-read"));
    assert_eq!(allow["enforcement"], json!("policy"));
    assert_eq!(allow["stale"], json!(false));
    assert_eq!(allow["policy_name"], json!("default.yaml"));
    assert_eq!(allow["policy_digest"], json!(policy.digest()));
    assert_eq!(allow["intent_digest"], json!(expected_intent_digest));
    assert_eq!(allow["bundle"]["epoch"], json!(1));
    assert_eq!(allow["bundle"]["digest"], json!(digest));

    // The trace is Gait's: it verifies with our verifier and with the independent Python check, under the
    // key the agent generated in its data dir; one changed byte breaks it.
    let public_path = fx.data_dir.join("keys/trace_public.key");
    let public = gait_canon::sign::load_public_key_file(&public_path)?;
    assert_eq!(allow["trace_key_id"], json!(public.key_id()));
    let trace_bytes = serde_json::to_vec_pretty(&allow["trace"])?;
    let verified = gait_artifact::trace::verify_trace(&trace_bytes, &public)?;
    assert!(verified.ok(), "{verified:?}");
    assert_eq!(allow["trace"]["verdict"], json!("allow"));
    assert_eq!(allow["trace"]["policy_digest"], json!(policy.digest()));
    let trace_path = fx.pki.dir.join("trace.json");
    std::fs::write(&trace_path, &trace_bytes)?;
    let python = |doc: &Path| -> Result<i32> {
        let out = std::process::Command::new("python3")
            .arg(shared().join("tools/gait_verify.py"))
            .arg(doc)
            .arg(&public_path)
            .output()
            .context("run python3 gait_verify.py")?;
        Ok(out.status.code().unwrap_or(-1))
    };
    assert_eq!(
        python(&trace_path)?,
        0,
        "independent check refused our trace"
    );
    let tampered = String::from_utf8(trace_bytes.clone())?.replacen("\"allow\"", "\"block\"", 1);
    std::fs::write(&trace_path, tampered)?;
    assert_eq!(
        python(&trace_path)?,
        2,
        "independent check accepted a tampered trace"
    );

    let (_, block) = agent.evaluate("", &intent("fs.write", "high")).await?;
    assert_eq!(block["verdict"], json!("block"), "{block}");
    assert_eq!(block["enforcement"], json!("policy"));

    // Simulation answers allow but records what enforcement would have done, in the block class.
    let (_, simulated) = agent
        .evaluate("?simulate=true", &intent("fs.write", "high"))
        .await?;
    assert_eq!(simulated["verdict"], json!("allow"), "{simulated}");
    assert_eq!(simulated["simulated"]["would_have_blocked"], json!(true));

    // Every decision is a durable record stamped with the bundle in force.
    let seqs: Vec<u64> = [&high, &low, &allow, &block, &simulated]
        .iter()
        .map(|v| v["record_seq"].as_u64().context("record_seq"))
        .collect::<Result<_>>()?;
    wait_until("decision records committed", || {
        let committed = data.committed.lock().unwrap_or_else(|e| e.into_inner());
        seqs.iter().all(|s| committed.contains_key(s))
    })
    .await?;
    let records = data.committed_records();
    let by_seq = |seq: u64| records.iter().find(|r| r.seq == seq).context("record");
    let classes: Vec<_> = seqs
        .iter()
        .map(|s| by_seq(*s).map(|r| r.class))
        .collect::<Result<_>>()?;
    use gait_wire::RecordClass as C;
    assert_eq!(
        classes,
        [C::Block, C::Approval, C::Allow, C::Block, C::Block]
    );
    let rec = by_seq(seqs[2])?;
    assert_eq!(rec.kind, "gate.decision");
    let stamped = rec.bundle.clone().context("bundle on record")?;
    assert_eq!((stamped.epoch, hex::encode(stamped.digest)), (1, digest));
    let payload = payload_of(rec)?;
    assert_eq!(payload["schema"], json!("gait.agent.gate_decision"));
    assert_eq!(payload["trace"], allow["trace"]);
    assert_eq!(payload["tool_name"], json!("fs.read"));
    assert_eq!(
        payload_of(by_seq(seqs[4])?)?["enforced_verdict"],
        json!("block")
    );

    // Bad input names what is wrong and records nothing.
    let depth = agent.status().await?.outbox.last_seq;
    let bad = agent
        .http
        .post(format!("http://{}/v1/gate/evaluate", agent.api))
        .body("{not json")
        .send()
        .await?;
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(
        bad.json::<Value>().await?["error"]["field"],
        json!("intent")
    );
    let (code, answer) = agent.evaluate("?bogus=1", &read_intent).await?;
    assert_eq!((code, &answer["error"]["field"]), (400, &json!("query")));
    let (code, answer) = agent.evaluate("?policy=other.yaml", &read_intent).await?;
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("default.yaml")),
        "{answer}"
    );
    assert_eq!(agent.status().await?.outbox.last_seq, depth);

    assert!(agent.stop().await?.clean);
    peer.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_bundle_blocks_everything_under_fail_closed_and_keeps_deciding_under_keep()
-> Result<()> {
    init_logs();
    for (on_stale, expect_verdict) in [
        (gait_bundle::OnStale::FailClosed, "block"),
        (gait_bundle::OnStale::Keep, "allow"),
    ] {
        let fx = Fixture::new()?;
        let data = Arc::new(PeerData::default());
        let peer = Peer::start(&fx.pki, None, data.clone(), AckMode::Ack).await?;
        let addr = peer.addr;
        let agent = Agent::start(fx.config(addr)).await?;
        let staleness = gait_bundle::Staleness {
            max_offline_seconds: 1,
            on_stale,
        };
        data.push_offer(offer(signed_bundle_with(&fx.registry, ORG, 1, staleness)?)?);
        agent
            .wait_status("bundle active", |s| s.active_bundle.is_some())
            .await?;
        let (_, fresh) = agent.evaluate("", &intent("fs.read", "low")).await?;
        assert_eq!(fresh["verdict"], json!("allow"), "{fresh}");
        assert!(agent.stop().await?.clean);
        peer.stop().await;

        // Offline past max_offline_seconds: the rule of the bundle decides.
        let agent = Agent::start(fx.config(addr)).await?;
        agent.wait_status("stale", |s| s.stale).await?;
        let (code, stale) = agent.evaluate("", &intent("fs.read", "low")).await?;
        assert_eq!(code, 200, "{stale}");
        assert_eq!(stale["stale"], json!(true));
        assert_eq!(
            stale["verdict"],
            json!(expect_verdict),
            "{on_stale:?}: {stale}"
        );
        if on_stale == gait_bundle::OnStale::FailClosed {
            assert_eq!(stale["enforcement"], json!("stale_fail_closed"));
            assert!(
                stale["reason_codes"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!("agent_bundle_stale"))),
                "{stale}"
            );
            assert_eq!(stale["trace"]["verdict"], json!("block"));
            // Simulation does not lift a stale fail-closed block.
            let (_, sim) = agent
                .evaluate("?simulate=true", &intent("fs.read", "low"))
                .await?;
            assert_eq!(sim["verdict"], json!("block"), "{sim}");
        } else {
            assert_eq!(stale["enforcement"], json!("policy"));
        }
        assert!(agent.stop().await?.clean);
    }
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
    let agent = Agent::start(config).await?;
    agent.wait_status("connection", |s| s.connected).await?;
    for (n, kind) in [
        "gate.decision",
        "test.poison",
        "gate.decision",
        "gate.decision",
    ]
    .into_iter()
    .enumerate()
    {
        let (code, body) = agent
            .post_record(json!({"class": "block", "kind": kind, "payload": {"n": n + 1}}))
            .await?;
        assert_eq!(
            (code, body["seq"].as_u64()),
            (200, Some(n as u64 + 1)),
            "{body}"
        );
    }
    // A record breaking a wire limit is refused at the producer, naming the field and the limit.
    let (code, body) = agent
        .post_record(json!({"class": "block", "kind": "k".repeat(65), "payload": {}}))
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
    assert_eq!(status.outbox.acked_through, 4);
    let committed = data.committed_records();
    assert_eq!(
        committed.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    assert_eq!(data.refused_seqs(), vec![2]);

    // The stream goes on after the refusal.
    let (code, body) = agent
        .post_record(json!({"class": "block", "kind": "gate.decision", "payload": {"n": 5}}))
        .await?;
    assert_eq!((code, body["seq"].as_u64()), (200, Some(5)), "{body}");
    wait_until("record 5 committed", || data.committed_head().0 == 5).await?;
    assert!(agent.stop().await?.clean);
    peer.stop().await;

    // The quarantine holds record 2, and the chain links through it: record 3 points at its hash.
    let db = gait_agent::db::AgentDb::open(&db_path)?;
    let (stats, held) = gait_agent::outbox::quarantine::read(&db)?;
    assert_eq!((stats.held, stats.total, stats.dropped), (1, 1, 0));
    assert_eq!(held.len(), 1);
    let poison = &held[0];
    assert_eq!(poison.record.seq, 2);
    assert_eq!(poison.record.kind, "test.poison");
    assert_eq!(poison.code, "record_store_refused");
    assert!(poison.record.verify_hash());
    let committed = data.committed_records();
    assert_eq!(committed[0].hash, poison.record.prev_hash);
    assert_eq!(committed[1].prev_hash, poison.record.hash);
    for r in &committed {
        assert!(r.verify_hash(), "record {} hash", r.seq);
    }
    Ok(())
}
