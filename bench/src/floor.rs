//! `decide-floor`: what the `decide --rate` open loop measures on this machine when the server does nothing.
//!
//! The same client as `decide --rate` (one std thread per keep-alive Unix-socket connection, each request
//! scheduled at `start + i/rate`, latency from the scheduled time) drives a *null responder* instead of the agent:
//! a child process of this binary (`null-responder`) with one blocking thread per connection that reads each
//! request and writes a canned `200` answer of the agent's size. That is the fewest hand-offs a request over a
//! socket to another process can take (one wake-up of the server's thread, one of the client's), with no
//! decision, no signature, no record and no aggregator. Whatever p99 this shows at a rate is a floor under any
//! server's p99 at that rate, measured this way on this machine at this moment: the agent's figures only mean
//! something next to it, taken in the same sitting.
//!
//! With `--sync` the responder also makes each request durable before answering it, as the agent makes each
//! decision's record durable: it writes the request's body to a preallocated file and waits for an
//! `fdatasync` that covers it, the connections' threads sharing syncs (group commit: one thread syncs everything
//! written so far while the others wait for it). That is a floor under any durable server's p99.
#![allow(clippy::disallowed_methods)] // benchmark harness: spawns its responder and reads the clock

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::json;

use crate::common;
use crate::edge::run_open_loop;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Decisions per second to schedule (repeat for several steps, run in the order given).
    #[arg(long = "rate", required = true)]
    pub rates: Vec<f64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Connections (one sending thread each), as `decide --connections`.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Bytes of the canned answer's body (an agent's `allow` answer with its signed trace is about this size).
    #[arg(long, default_value_t = 1_400)]
    pub answer_bytes: usize,
    /// Make each request durable before answering it: its body written to a file and covered by an
    /// `fdatasync` shared with the requests written meanwhile.
    #[arg(long)]
    pub sync: bool,
}

#[derive(clap::Args, Debug)]
pub struct ResponderArgs {
    /// The Unix socket to listen on (created; must not exist).
    #[arg(long)]
    pub socket: PathBuf,
    /// Bytes of the canned answer's body.
    #[arg(long)]
    pub answer_bytes: usize,
    /// Write each request's body to a file in the socket's directory and sync it before answering.
    #[arg(long)]
    pub sync: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(args.duration > 0.0, "--duration must be positive");
    let dir = tempfile::Builder::new()
        .prefix("gait-bench-floor-")
        .tempdir()
        .context("create a temporary directory")?;
    let socket = dir.path().join("null.sock");
    let exe = std::env::current_exe().context("locate this executable")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("null-responder")
        .arg("--socket")
        .arg(&socket)
        .arg("--answer-bytes")
        .arg(args.answer_bytes.to_string())
        .args(args.sync.then_some("--sync"))
        .kill_on_drop(true)
        .spawn()
        .context("start the null responder")?;
    let result = steps(&args, &socket, &mut child).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    result
}

async fn steps(
    args: &Args,
    socket: &Path,
    child: &mut tokio::process::Child,
) -> anyhow::Result<()> {
    // Ready once a connection is accepted (the socket file appears at bind, before listen).
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the null responder exited before listening: {status}");
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let path = socket.to_path_buf();
    let warm = tokio::task::spawn_blocking(move || run_open_loop(&path, 1000.0, 500, 4)).await??;
    ensure!(warm.errors == 0, "warm-up failed: {:?}", warm.first_error);
    for &rate in &args.rates {
        let count = (rate * args.duration).ceil().max(1.0) as usize;
        let (path, connections) = (socket.to_path_buf(), args.connections);
        let run =
            tokio::task::spawn_blocking(move || run_open_loop(&path, rate, count, connections))
                .await??;
        let mut summary = run.json("null-responder", false, args.connections);
        summary["bench"] = json!("decide-floor");
        summary["answer_bytes"] = json!(args.answer_bytes);
        summary["synced"] = json!(args.sync);
        let what = if args.sync {
            "floor (null responder, each request synced)"
        } else {
            "floor (null responder)"
        };
        common::emit(&summary, &format!("{what}: {}", run.human("null", false)));
    }
    Ok(())
}

/// The null responder's process: one thread per connection, each answering every request with the same bytes.
pub fn responder(args: ResponderArgs) -> anyhow::Result<()> {
    let listener = std::os::unix::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("bind {}", args.socket.display()))?;
    let body = format!(
        r#"{{"verdict":"allow","pad":"{}"}}"#,
        "x".repeat(args.answer_bytes.saturating_sub(30))
    );
    let answer: std::sync::Arc<[u8]> = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into();
    let log = if args.sync {
        let path = args.socket.with_extension("log");
        Some(std::sync::Arc::new(SyncedLog::create(&path)?))
    } else {
        None
    };
    for stream in listener.incoming() {
        let stream = stream.context("accept")?;
        let answer = std::sync::Arc::clone(&answer);
        let log = log.clone();
        std::thread::spawn(move || {
            let _ = serve(stream, &answer, log.as_deref());
        });
    }
    Ok(())
}

/// A preallocated file the responder's threads write request bodies to, made durable by shared syncs.
struct SyncedLog {
    file: std::fs::File,
    /// Where the next body goes (wrapping within the file).
    next: std::sync::atomic::AtomicU64,
    /// Bodies written so far (completed writes).
    written: std::sync::atomic::AtomicU64,
    /// (bodies a finished sync covers, a sync under way).
    synced: std::sync::Mutex<(u64, bool)>,
    done: std::sync::Condvar,
}

impl SyncedLog {
    const SIZE: u64 = 64 << 20;

    fn create(path: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::FileExt as _;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("create {}", path.display()))?;
        // Written with zeros and synced, so a later write changes no file metadata (as the agent's log).
        let zeros = vec![0u8; 1 << 20];
        for at in (0..Self::SIZE).step_by(zeros.len()) {
            file.write_all_at(&zeros, at)?;
        }
        file.sync_all()?;
        Ok(Self {
            file,
            next: 0.into(),
            written: 0.into(),
            synced: std::sync::Mutex::new((0, false)),
            done: std::sync::Condvar::new(),
        })
    }

    /// Writes `body` and returns once an `fdatasync` that started after the write has finished.
    fn append_durably(&self, body: &[u8]) -> anyhow::Result<()> {
        use std::os::unix::fs::FileExt as _;
        use std::sync::atomic::Ordering;
        let len = (body.len() as u64).min(Self::SIZE);
        let at = self.next.fetch_add(len, Ordering::Relaxed) % (Self::SIZE - len + 1);
        self.file.write_all_at(&body[..len as usize], at)?;
        let mine = self.written.fetch_add(1, Ordering::AcqRel) + 1;
        let mut state = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if state.0 >= mine {
                return Ok(());
            }
            if state.1 {
                state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.1 = true;
            drop(state);
            // Covers every write counted so far: each was complete before it was counted.
            let covers = self.written.load(Ordering::Acquire);
            let result = self.file.sync_data();
            state = self.synced.lock().unwrap_or_else(|p| p.into_inner());
            state.1 = false;
            if result.is_ok() {
                state.0 = state.0.max(covers);
            }
            self.done.notify_all();
            result?;
        }
    }
}

/// Answers each request of one connection until the peer closes it.
fn serve(
    stream: std::os::unix::net::UnixStream,
    answer: &[u8],
    log: Option<&SyncedLog>,
) -> anyhow::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = std::io::BufReader::new(stream);
    let (mut line, mut body) = (String::new(), Vec::new());
    loop {
        let mut length = 0;
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() && !first {
                break;
            }
            first = false;
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
        if let Some(log) = log {
            log.append_durably(&body)?;
        }
        writer.write_all(answer)?;
    }
}
