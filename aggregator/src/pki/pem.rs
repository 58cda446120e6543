//! Reading the deployment's PEM files (certificates and private keys) with a size bound.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest PEM file (certificate chain or key) read from disk; real files are a few KiB.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a PEM file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// A PEM file could not be read.
    #[error("cannot read {}: {source}; run `gait-aggregator pki init` to create the PKI", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file is larger than any real certificate or key.
    #[error("{} is larger than {MAX_PEM_BYTES} bytes; it is not a certificate or key file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file is malformed.
    #[error("{} is not valid PEM: {detail}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported.
        detail: String,
    },
    /// A certificate file holds no certificate.
    #[error("{} holds no CERTIFICATE block", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{} holds no private key block (PKCS#8, SEC1 or PKCS#1)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
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
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Pem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => PemError::NoKey {
            path: path.to_owned(),
        },
        other => PemError::Pem {
            path: path.to_owned(),
            detail: other.to_string(),
        },
    })
}
