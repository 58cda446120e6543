//! The local API's bearer token: what a producer must present to append records or ask for decisions over
//! loopback TCP. A random 256-bit token is written (mode 0600) to `local_api.token_file` at first start — by
//! default `<data_dir>/local-api.token` — so only processes that can read that file (the agent's user, and
//! whoever the operator lets read it) can write into the agent's record stream or obtain agent-signed traces.
//!
//! Rotation: `gait-agent token rotate --config F` writes a new token; the running agent notices on the next
//! request that presents it (a presented token that does not match is checked once more against the file).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Default token file name inside the data directory.
pub const TOKEN_FILE: &str = "local-api.token";

/// The token in force, and the file it comes from.
#[derive(Debug)]
pub struct ApiToken {
    path: PathBuf,
    current: RwLock<String>,
}

impl ApiToken {
    /// Reads the token file, creating it with a fresh token when it is missing or empty.
    pub fn load_or_create(path: &Path) -> io::Result<ApiToken> {
        let token = match read(path)? {
            Some(token) => token,
            None => rotate(path)?,
        };
        Ok(ApiToken {
            path: path.to_path_buf(),
            current: RwLock::new(token),
        })
    }

    /// The file the token lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `presented` is the token, comparing in constant time. A mismatch re-reads the file once, so a
    /// rotated token is accepted without a restart (and the old one refused from then on).
    pub fn check(&self, presented: &str) -> bool {
        if gait_runtime::http::constant_time_eq(self.get().as_bytes(), presented.as_bytes()) {
            return true;
        }
        match read(&self.path) {
            Ok(Some(fresh)) if fresh != self.get() => {
                let ok =
                    gait_runtime::http::constant_time_eq(fresh.as_bytes(), presented.as_bytes());
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                ok
            }
            _ => false,
        }
    }

    fn get(&self) -> String {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The token's public id: the first 8 hex digits of its SHA-256. Records say which token appended them by this
/// id, so the token itself is never stored or shipped; `gait-agent token id` prints it for the current token.
pub fn token_id(token: &str) -> String {
    let mut id = gait_canon::sha256_hex(token.as_bytes());
    id.truncate(8);
    id
}

/// Writes a new random token to `path` (atomically, mode 0600) and returns it.
pub fn rotate(path: &Path) -> io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    let token = hex::encode(bytes);
    crate::gate::files::create_parent_dirs(path)?;
    crate::gate::files::write_atomic(path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

fn read(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_private_once_and_a_rotation_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(TOKEN_FILE);
        let token = ApiToken::load_or_create(&path).unwrap();
        let first = std::fs::read_to_string(&path).unwrap().trim().to_owned();
        assert_eq!(first.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(token.check(&first));
        assert!(!token.check("nope"));
        assert!(!token.check(&first[..63]));
        // Loading again keeps the token; rotating replaces it, and the running holder follows.
        assert_eq!(ApiToken::load_or_create(&path).unwrap().get(), first);
        let second = rotate(&path).unwrap();
        assert_ne!(second, first);
        assert!(token.check(&second));
        assert!(!token.check(&first));
    }
}
