//! The local API's Unix socket, its primary transport: who may connect is decided by the socket file's owner,
//! group and mode (`local_api.socket_mode`, default `0660`; `local_api.socket_group`), so a request on it needs
//! no bearer token, and each one carries the caller's uid and pid (`SO_PEERCRED`) for attribution.
//!
//! At start a socket file left by a crashed run is replaced; a socket another process still answers on, or a
//! path that is not a socket at all, is an error naming `local_api.socket_path`.

use std::io;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Default socket file name inside the data directory.
pub const SOCKET_FILE: &str = "local-api.sock";

/// Why the socket could not be set up; each names the config key to change.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Something other than a socket is at the path.
    #[error(
        "{} exists and is not a socket; move it away or choose another path",
        path.display()
    )]
    NotASocket {
        /// The configured path.
        path: PathBuf,
    },
    /// Another process answers on the socket (a second agent with the same path).
    #[error(
        "{} is in use by a running process (another agent?); stop it or choose another path",
        path.display()
    )]
    InUse {
        /// The configured path.
        path: PathBuf,
    },
    /// Creating, replacing or binding the socket failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The configured path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The configured group does not exist.
    #[error(
        "group {group:?} does not exist (not in /etc/group); create it, or give its numeric id"
    )]
    NoSuchGroup {
        /// The configured group.
        group: String,
    },
    /// The mode or group could not be applied.
    #[error("cannot apply it to {}: {source}", path.display())]
    Apply {
        /// `local_api.socket_mode` or `local_api.socket_group`.
        key: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The OS error (for a group: the agent's user must belong to it).
        #[source]
        source: io::Error,
    },
}

impl SocketError {
    /// The config key to change.
    pub fn key(&self) -> &'static str {
        match self {
            SocketError::NotASocket { .. } | SocketError::InUse { .. } | SocketError::Io { .. } => {
                "local_api.socket_path"
            }
            SocketError::NoSuchGroup { .. } => "local_api.socket_group",
            SocketError::Apply { key, .. } => key,
        }
    }
}

/// Binds the socket at `path` with `mode` and, when given, `group` (name or numeric gid). Must run inside a
/// tokio runtime.
pub fn bind(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> Result<tokio::net::UnixListener, SocketError> {
    let gid = group.map(resolve_group).transpose()?;
    remove_stale(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| SocketError::Io {
            action: "create the directory of",
            path: path.to_path_buf(),
            source,
        })?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|source| SocketError::Io {
        action: "bind",
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| SocketError::Apply {
            key: "local_api.socket_group",
            path: path.to_path_buf(),
            source,
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        SocketError::Apply {
            key: "local_api.socket_mode",
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// Removes a socket file nobody answers on (a crashed run's); refuses a live socket or any other file.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                action: "inspect",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    // Connecting to a Unix socket answers at once: accepted while a process listens, refused otherwise.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse {
            path: path.to_path_buf(),
        });
    }
    tracing::info!(path = %path.display(), "replacing the local api socket left by a previous run");
    std::fs::remove_file(path).map_err(|source| SocketError::Io {
        action: "remove the stale socket",
        path: path.to_path_buf(),
        source,
    })
}

/// A group name (looked up in `/etc/group`) or a numeric gid.
fn resolve_group(group: &str) -> Result<u32, SocketError> {
    let group = group.trim();
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let missing = || SocketError::NoSuchGroup {
        group: group.to_owned(),
    };
    let text = std::fs::read_to_string("/etc/group").map_err(|_| missing())?;
    gid_in(&text, group).ok_or_else(missing)
}

/// The gid of `name` in the text of `/etc/group` (`name:password:gid:members`).
fn gid_in(etc_group: &str, name: &str) -> Option<u32> {
    etc_group.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_read_from_etc_group_lines() {
        let text = "root:x:0:\n# comment\nwheel:x:10:alice,bob\ngait-apps:x:1234:\nbroken:x\n";
        assert_eq!(gid_in(text, "wheel"), Some(10));
        assert_eq!(gid_in(text, "gait-apps"), Some(1234));
        assert_eq!(gid_in(text, "gait"), None);
        assert_eq!(gid_in(text, "broken"), None);
        assert!(matches!(resolve_group("4321"), Ok(4321)));
        let err = resolve_group("no-such-group-gait").unwrap_err();
        assert_eq!(err.key(), "local_api.socket_group");
        assert!(err.to_string().contains("no-such-group-gait"), "{err}");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_or_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join(SOCKET_FILE);
        let first = bind(&path, 0o600, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Still listening: a second agent must not steal it.
        assert!(matches!(
            bind(&path, 0o660, None),
            Err(SocketError::InUse { .. })
        ));
        drop(first); // The file stays behind, as after a crash.
        assert!(path.exists());
        let _second = bind(&path, 0o660, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        let file = dir.path().join("regular");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind(&file, 0o660, None).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(err.key(), "local_api.socket_path");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
