//! End to end: the admin API over HTTPS. A real `gait-aggregator serve` on 127.0.0.1 with `--http-tls true`
//! answers `/healthz` to a client trusting the deployment CA and a `gait-aggregator publish` that verifies it
//! against that CA by default; a client that trusts another CA, or dials a name the certificate lacks, fails
//! the handshake with an error naming the remedy; plain HTTP off loopback is refused at startup naming the key;
//! and the connection cap (a stalled handshake makes room for a real client) and header timeout hold on the TLS listener (a client that opens TCP and never sends
//! a ClientHello is closed within the header timeout).
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use anyhow::{Context as _, bail, ensure};
use gait_e2e::{PATIENCE, POLICY_V1, hermetic, wait_for};
use gait_runtime::http::client::{Client, ClientError};
use gait_runtime::http::tls::{HandshakeFailure, client_config};

/// A `gait-aggregator serve` process serving HTTPS; killed on drop.
struct HttpsAggregator {
    data_dir: PathBuf,
    http: SocketAddr,
    child: Child,
}

impl Drop for HttpsAggregator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HttpsAggregator {
    /// Starts on ephemeral loopback ports with HTTPS forced on, after `pki init --server-name localhost` (so
    /// the certificate names `localhost` only), with `config` (YAML) as its configuration file.
    fn start(data_dir: &Path, config: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let init = cli(data_dir)
            .args(["pki", "init", "--data-dir"])
            .arg(data_dir)
            .args(["--server-name", "localhost"])
            .output()?;
        ensure!(init.status.success(), "pki init: {}", stderr(&init));
        let config_file = data_dir.join("aggregator.yaml");
        std::fs::write(&config_file, config)?;
        let log = std::fs::File::create(data_dir.join("aggregator.log"))?;
        let mut child = hermetic("gait-aggregator")
            .arg("--config")
            .arg(&config_file)
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args([
                "--quic-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(["--http-tls", "true"])
            .env("GAIT_LOG_FORMAT", "text")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("spawn gait-aggregator serve")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let Some((_, http)) = line.trim().split_once(" http=https://") else {
            let _ = child.kill();
            let log = std::fs::read_to_string(data_dir.join("aggregator.log")).unwrap_or_default();
            bail!("no HTTPS serving line: {line:?}\n{log}");
        };
        Ok(HttpsAggregator {
            data_dir: data_dir.to_owned(),
            http: http.parse()?,
            child,
        })
    }

    fn port(&self) -> u16 {
        self.http.port()
    }

    fn ca(&self) -> PathBuf {
        self.data_dir.join("pki/ca.pem")
    }
}

/// The aggregator CLI with `GAIT_DATA_DIR` set, as an operator on the aggregator host runs it.
fn cli(data_dir: &Path) -> std::process::Command {
    let mut cmd = hermetic("gait-aggregator");
    cmd.env("GAIT_DATA_DIR", data_dir);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `gait-aggregator publish` of one policy to acme/web/prod at `server`, with extra flags.
fn publish(agg: &HttpsAggregator, server: &str, extra: &[&str]) -> anyhow::Result<Output> {
    let policy = agg.data_dir.join("policy.yaml");
    std::fs::write(&policy, POLICY_V1)?;
    Ok(cli(&agg.data_dir)
        .args(["publish", "--server", server])
        .args([
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
            "--policy",
        ])
        .arg(&policy)
        .args(extra)
        .output()?)
}

/// `GET /healthz` through `client`.
/// The body of `GET {url}/metrics`.
fn metrics(client: &Client, url: &str) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime.block_on(client.request(
        http::Method::GET,
        &format!("{url}/metrics"),
        http::HeaderMap::new(),
        bytes::Bytes::new(),
    ))?;
    Ok(String::from_utf8_lossy(answer.body()).into_owned())
}

fn healthz(client: &Client, url: &str) -> Result<http::StatusCode, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        client
            .request(
                http::Method::GET,
                &format!("{url}/healthz"),
                http::HeaderMap::new(),
                bytes::Bytes::new(),
            )
            .await
            .map(|answer| answer.status())
    })
}

#[test]
fn an_https_api_answers_healthz_and_a_cli_publish_that_trusts_the_deployment_ca()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = HttpsAggregator::start(&tmp.path().join("agg"), "")?;
    let url = format!("https://localhost:{}", agg.port());

    let trusting = Client::new(Some(client_config(&agg.ca())?), PATIENCE);
    assert_eq!(healthz(&trusting, &url)?, http::StatusCode::OK);

    // The CLI trusts <data_dir>/pki/ca.pem without being told.
    let out = publish(&agg, &url, &[])?;
    ensure!(out.status.success(), "publish over HTTPS: {}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    ensure!(printed.contains("published epoch 1"), "{printed}");
    let out = cli(&agg.data_dir)
        .args(["agents", "--org", "acme", "--json", "--server", &url])
        .output()?;
    ensure!(out.status.success(), "agents over HTTPS: {}", stderr(&out));

    // Plain HTTP to the HTTPS listener gets no answer, and the CLI says to use https://.
    let out = publish(&agg, &format!("http://localhost:{}", agg.port()), &[])?;
    ensure!(!out.status.success(), "plain HTTP must not be answered");
    ensure!(stderr(&out).contains("https://"), "{}", stderr(&out));
    Ok(())
}

#[test]
fn clients_that_do_not_trust_the_ca_or_dial_an_uncovered_name_fail_the_handshake()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = HttpsAggregator::start(&tmp.path().join("agg"), "")?;
    let url = format!("https://localhost:{}", agg.port());

    // Another deployment's CA.
    let other = tmp.path().join("other");
    let init = cli(&other)
        .args(["pki", "init", "--data-dir"])
        .arg(&other)
        .output()?;
    ensure!(init.status.success(), "{}", stderr(&init));
    let other_ca = other.join("pki/ca.pem");
    let stranger = Client::new(Some(client_config(&other_ca)?), PATIENCE);
    match healthz(&stranger, &url) {
        Err(ClientError::Handshake {
            failure: HandshakeFailure::UntrustedCertificate,
            ..
        }) => {}
        other => bail!("a client trusting another CA got {other:?}"),
    }
    let out = publish(&agg, &url, &["--ca-file", &other_ca.display().to_string()])?;
    ensure!(
        !out.status.success(),
        "publish trusting another CA succeeded"
    );
    let message = stderr(&out);
    ensure!(
        message.contains("not signed by the CA in")
            && message.contains(&other_ca.display().to_string()),
        "{message}"
    );
    ensure!(message.contains("--ca-file"), "{message}");

    // The certificate names localhost only: 127.0.0.1 is refused, and the CLI names the remedy.
    let by_ip = format!("https://127.0.0.1:{}", agg.port());
    let trusting = Client::new(Some(client_config(&agg.ca())?), PATIENCE);
    match healthz(&trusting, &by_ip) {
        Err(ClientError::Handshake {
            failure: HandshakeFailure::NameMismatch,
            ..
        }) => {}
        other => bail!("dialling an uncovered name got {other:?}"),
    }
    let out = publish(&agg, &by_ip, &[])?;
    ensure!(
        !out.status.success(),
        "publish to an uncovered name succeeded"
    );
    ensure!(stderr(&out).contains("reissue-server"), "{}", stderr(&out));

    // An unreadable CA file is named, with what to do.
    let missing = tmp.path().join("missing-ca.pem");
    let out = publish(&agg, &url, &["--ca-file", &missing.display().to_string()])?;
    ensure!(!out.status.success());
    let message = stderr(&out);
    ensure!(
        message.contains(&missing.display().to_string()) && message.contains("--ca-file"),
        "{message}"
    );
    Ok(())
}

#[test]
fn plain_http_off_loopback_is_refused_at_startup_naming_the_key() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = hermetic("gait-aggregator")
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("agg"))
        .args(["--quic-listen", "127.0.0.1:0", "--http-listen", "0.0.0.0:0"])
        .args(["--http-tls", "false"])
        .output()?;
    ensure!(!out.status.success(), "plain HTTP on 0.0.0.0 was accepted");
    let message = stderr(&out);
    ensure!(
        message.contains("http.listen") && message.contains("http.tls.enabled"),
        "{message}"
    );
    ensure!(message.contains("loopback"), "{message}");
    Ok(())
}

/// Reads until the server closes the connection (EOF or reset) or [`PATIENCE`] passes; true when it closed.
fn closed_by_server(stream: &mut TcpStream) -> anyhow::Result<bool> {
    stream.set_read_timeout(Some(PATIENCE))?;
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

#[test]
fn a_client_that_never_sends_a_client_hello_is_closed_within_the_header_timeout()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // Idle and body timeouts far beyond PATIENCE: only the header timeout can close the connection in time.
    let agg = HttpsAggregator::start(
        &tmp.path().join("agg"),
        "http:\n  header_timeout_ms: 500\n  idle_timeout_ms: 600000\n  body_timeout_ms: 600000\n",
    )?;
    let mut silent = TcpStream::connect(agg.http)?;
    ensure!(
        closed_by_server(&mut silent)?,
        "a connection without a ClientHello was still open after {PATIENCE:?}"
    );
    // Counted for an operator to alert on.
    let trusting = Client::new(Some(client_config(&agg.ca())?), PATIENCE);
    let text = metrics(&trusting, &format!("https://localhost:{}", agg.port()))?;
    ensure!(
        text.lines()
            .any(|l| l == "gait_aggregator_http_tls_handshake_failures_total 1"),
        "the stalled handshake is not counted:\n{text}"
    );
    Ok(())
}

#[test]
fn the_connection_cap_holds_on_the_tls_listener_and_a_stalled_handshake_makes_room()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = HttpsAggregator::start(
        &tmp.path().join("agg"),
        "http:\n  max_connections: 2\n  header_timeout_ms: 600000\n  idle_timeout_ms: 600000\n",
    )?;
    // Two connections in their handshake hold both slots (the listener accepts in order, so both are admitted
    // before the real client is looked at).
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(agg.http))
        .collect::<Result<_, _>>()?;
    // A real client is answered all the same: the oldest stalled handshake is closed to make room for it.
    let trusting = Client::new(Some(client_config(&agg.ca())?), PATIENCE);
    let url = format!("https://localhost:{}", agg.port());
    wait_for(PATIENCE, "/healthz at the cap", || {
        healthz(&trusting, &url).ok().filter(|s| s.is_success())
    })?;
    ensure!(
        closed_by_server(&mut held[0])?,
        "the oldest stalled handshake was not closed to make room"
    );
    Ok(())
}
