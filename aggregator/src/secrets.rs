//! The one writer of data-directory secrets and key files: atomic (fresh temp file in the same directory,
//! fsynced, renamed over the target) and, for private material, created with mode 0600 so a key is never
//! readable by others, not even for a moment. The CA (`pki`), the registry key, the admin token and the QUIC
//! reset and TLS ticket keys (`app`) all go through it.
//!
//! It sits below the features (like `clock`) rather than in `app/`, where LAYOUT.md places it, because `pki`
//! writes through it too and a feature must not import the composition root.

use std::fs;
use std::io::Write as _;
use std::path::Path;

/// Who may read a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Mode 0600: private keys, tokens, secrets.
    Private,
    /// Mode 0644: certificates and public keys.
    Public,
}

/// Writes `bytes` to `path` atomically with the permissions of `access`; a crash leaves either the old file
/// or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8], access: Access) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(suffix)));

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(match access {
            Access::Private => 0o600,
            Access::Public => 0o644,
        });
    }
    #[cfg(not(unix))]
    let _ = access;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` and its missing parents with mode 0700, and narrows an existing `dir` that its group or
/// others may read or enter (older builds made the data directory 0755) to 0700. Returns whether an
/// existing directory was narrowed, so the caller can say so.
pub fn create_private_dir(dir: &Path) -> std::io::Result<bool> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// A random 32-byte secret in `path`, created (0600, atomically) if the file does not exist. A file of any
/// other length is an error naming the fix.
pub fn load_or_create_32(path: &Path) -> std::io::Result<[u8; 32]> {
    match fs::read(path) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            std::io::Error::other(format!(
                "expected 32 bytes, found {}; delete the file to generate a new key",
                bytes.len()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
            write_atomic(path, &bytes, Access::Private)?;
            Ok(bytes)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_replace_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        write_atomic(&path, b"one", Access::Private).expect("write");
        write_atomic(&path, b"two", Access::Private).expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let leftovers = fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(leftovers, 1, "temp file left behind");
    }

    #[cfg(unix)]
    #[test]
    fn private_dirs_are_created_0700_and_an_open_one_is_narrowed() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a").join("data");
        assert!(!create_private_dir(&dir).expect("create"));
        assert_eq!(mode(&dir), 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(create_private_dir(&dir).expect("narrow"));
        assert_eq!(mode(&dir), 0o700);
        assert!(!create_private_dir(&dir).expect("again"));
    }

    #[test]
    fn a_secret_is_created_once_and_a_wrong_length_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys").join("s.key");
        let first = load_or_create_32(&path).expect("create");
        assert_eq!(load_or_create_32(&path).expect("load"), first);
        fs::write(&path, b"short").expect("write");
        let err = load_or_create_32(&path).expect_err("wrong length");
        assert!(err.to_string().contains("expected 32 bytes"), "{err}");
    }
}
