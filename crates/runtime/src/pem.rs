//! Reading PEM files (certificate chains and private keys) with a size bound: the one loader behind the
//! agent's QUIC client, the aggregator's PKI and QUIC server, and the HTTPS listener and client.
//!
//! Errors name the file and what it should have held; each caller adds what the operator does about it (the
//! command that writes the file, the config key that points at it).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest PEM file read from disk; real certificate and key files are a few KiB.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a PEM file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any certificate or key.
    #[error("{} is larger than {MAX_PEM_BYTES} bytes and is not a certificate or key file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid PEM, or holds no item of the expected kind.
    #[error("{} holds no valid {expected}: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the file should hold (`CERTIFICATE block`, `private key block`).
        expected: &'static str,
        /// What went wrong.
        detail: String,
    },
}

impl PemError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            PemError::Read { path, .. }
            | PemError::TooLarge { path }
            | PemError::Invalid { path, .. } => path,
        }
    }
}

/// Reads a file of at most [`MAX_PEM_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, PemError> {
    let read_error = |source| PemError::Read {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(PemError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// All certificates in a PEM file, in file order; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = read_bounded(path)?;
    let invalid = |detail: String| PemError::Invalid {
        path: path.to_owned(),
        expected: "CERTIFICATE block",
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("the file contains none".to_owned()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| PemError::Invalid {
        path: path.to_owned(),
        expected: "private key block (PKCS#8, SEC1 or PKCS#1)",
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "the file contains none".to_owned(),
            other => other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_oversized_and_empty_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let err = load_certs(&missing).expect_err("missing");
        assert!(matches!(err, PemError::Read { .. }));
        assert_eq!(err.path(), missing);

        let big = dir.path().join("big.pem");
        fs::write(&big, vec![b'a'; MAX_PEM_BYTES as usize + 1]).expect("write");
        assert!(matches!(load_key(&big), Err(PemError::TooLarge { .. })));

        let text = dir.path().join("text.pem");
        fs::write(&text, "not a pem file\n").expect("write");
        let message = load_certs(&text).expect_err("no cert").to_string();
        assert!(
            message.contains("holds no valid CERTIFICATE block"),
            "{message}"
        );
        assert!(message.contains(&text.display().to_string()), "{message}");
        let message = load_key(&text).expect_err("no key").to_string();
        assert!(
            message.contains("holds no valid private key block"),
            "{message}"
        );
    }
}
