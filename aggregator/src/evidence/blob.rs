//! The content-addressed blob store: artifact bytes keyed by the SHA-256 of their content.
//!
//! - **Keys**: `<prefix>sha256/<first 2 hex>/<next 2 hex>/<64 hex>` — the digest is the name, so a blob is
//!   written once however often it is pushed, and two different contents can never share a key.
//! - **In**: [`BlobStore::put`] hashes the bytes itself and refuses them when they do not match the digest the
//!   caller claims, or exceed `evidence.blobs.max_blob_bytes`; nothing is written then.
//! - **Out**: [`BlobStore::get`] hashes what the backend returns and refuses it ([`BlobError::Corrupt`]) when it
//!   does not match its key — a blob edited on disk or in the bucket is detected, never served.
//! - **Backends**: a directory (default `<data_dir>/blobs`) or an S3-compatible bucket, both through the
//!   `object_store` crate (S3 requests signed with SigV4 by it; TLS through rustls with ring).
//!
//! Secrets: the S3 secret key is read from `evidence.blobs.s3.secret_access_key_file` (never from the config file
//! itself, never logged, never printed by `config check`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Default of `evidence.blobs.max_blob_bytes`: 256 MiB, room for a large runpack.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 256 * 1024 * 1024;

/// `evidence.*`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceConfig {
    /// Where artifact bytes are kept.
    pub blobs: BlobConfig,
    /// Artifact uploads from agents (partial upload quotas and expiry).
    pub uploads: super::upload::UploadConfig,
}

/// `evidence.blobs.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobConfig {
    /// `dir` (default: a directory under the data dir) or `s3` (an S3-compatible bucket).
    pub backend: BlobBackend,
    /// Directory of the `dir` backend. Default `<data_dir>/blobs`.
    pub dir: Option<PathBuf>,
    /// Largest blob accepted, in bytes (1 to 4 GiB). Default 268435456 (256 MiB).
    pub max_blob_bytes: u64,
    /// The bucket of the `s3` backend.
    pub s3: S3Config,
}

impl Default for BlobConfig {
    fn default() -> Self {
        Self {
            backend: BlobBackend::Dir,
            dir: None,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            s3: S3Config::default(),
        }
    }
}

/// `evidence.blobs.backend`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobBackend {
    /// A directory on the aggregator's disk.
    #[default]
    Dir,
    /// An S3-compatible object store.
    S3,
}

/// `evidence.blobs.s3.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// The service's URL, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:8333` (with
    /// `allow_http`). Absent: AWS S3 in `region`.
    pub endpoint: Option<String>,
    /// The bucket (must exist). Required with `backend: s3`.
    pub bucket: Option<String>,
    /// The region to sign for. Default `us-east-1` (what most S3-compatible servers expect).
    pub region: String,
    /// Key prefix inside the bucket (e.g. `gait/prod/`), so one bucket can serve several deployments.
    pub prefix: String,
    /// Access key id. Required unless `anonymous`.
    pub access_key_id: Option<String>,
    /// File holding the secret access key (one line; keep it 0600). Required unless `anonymous`.
    pub secret_access_key_file: Option<PathBuf>,
    /// Send unsigned requests (a bucket open to this host, e.g. a test server). Default false.
    pub anonymous: bool,
    /// Allow a plain `http://` endpoint. Default false: artifact bytes travel over TLS.
    pub allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`, what most self-hosted servers need) instead of
    /// virtual-hosted style (`bucket.endpoint/key`). Default true.
    pub path_style: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            bucket: None,
            region: "us-east-1".to_owned(),
            prefix: String::new(),
            access_key_id: None,
            secret_access_key_file: None,
            anonymous: false,
            allow_http: false,
            path_style: true,
        }
    }
}

impl EvidenceConfig {
    /// The problems of `evidence.*`, as (dotted key below `evidence.`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let b = &self.blobs;
        let mut out = self.uploads.problems();
        let mut push = |key: &str, message: String| out.push((format!("blobs.{key}"), message));
        if b.max_blob_bytes == 0 || b.max_blob_bytes > 4 * 1024 * 1024 * 1024 {
            push(
                "max_blob_bytes",
                format!("is {}; must be 1 to 4294967296 (4 GiB)", b.max_blob_bytes),
            );
        }
        if b.backend != BlobBackend::S3 {
            return out;
        }
        let s3 = &b.s3;
        if s3.bucket.as_deref().is_none_or(str::is_empty) {
            push(
                "s3.bucket",
                "must name the bucket when backend is s3".into(),
            );
        }
        if s3.region.is_empty() {
            push("s3.region", "must not be empty".into());
        }
        if let Some(endpoint) = &s3.endpoint {
            match endpoint.split_once("://").map(|(scheme, _)| scheme) {
                Some("https") => {}
                Some("http") if s3.allow_http => {}
                Some("http") => push(
                    "s3.endpoint",
                    format!(
                        "`{endpoint}` is plain http: use https, or set evidence.blobs.s3.allow_http: true"
                    ),
                ),
                _ => push(
                    "s3.endpoint",
                    format!("`{endpoint}` must be an http(s):// URL"),
                ),
            }
        }
        if !s3.anonymous {
            if s3.access_key_id.as_deref().is_none_or(str::is_empty) {
                push(
                    "s3.access_key_id",
                    "is required unless evidence.blobs.s3.anonymous is true".into(),
                );
            }
            if s3.secret_access_key_file.is_none() {
                push(
                    "s3.secret_access_key_file",
                    "is required unless evidence.blobs.s3.anonymous is true".into(),
                );
            }
        }
        out
    }
}

/// A SHA-256 digest as 64 lowercase hex characters (what Gait's digests and our keys use).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobDigest([u8; 32]);

impl BlobDigest {
    /// The digest whose raw bytes are `raw` (as the wire carries it).
    pub fn from_raw(raw: [u8; 32]) -> Self {
        Self(raw)
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses 64 hex characters, optionally prefixed `sha256:`.
    pub fn parse(text: &str) -> Result<Self, BlobError> {
        let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
        let mut raw = [0u8; 32];
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            || hex::decode_to_slice(hex_part, &mut raw).is_err()
        {
            return Err(BlobError::BadDigest {
                given: text.chars().take(80).collect(),
            });
        }
        Ok(Self(raw))
    }

    /// 64 lowercase hex characters.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A digest is not 64 lowercase hex characters.
    #[error(
        "`{given}` is not a SHA-256 digest: expected 64 lowercase hex characters, optionally after `sha256:`"
    )]
    BadDigest {
        /// What was given (truncated).
        given: String,
    },
    /// The bytes do not hash to the digest they were sent under; nothing was stored.
    #[error("the content hashes to {actual}, not to the claimed {claimed}: nothing stored")]
    DigestMismatch {
        /// What the caller claimed.
        claimed: BlobDigest,
        /// What the bytes hash to.
        actual: BlobDigest,
    },
    /// The blob is larger than `evidence.blobs.max_blob_bytes`.
    #[error("the blob is {size} bytes, above evidence.blobs.max_blob_bytes ({limit})")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A stored blob no longer hashes to its key: it was altered in the backend. It is not served.
    #[error(
        "stored blob {key} hashes to {actual}: it was altered after it was written, and is not served"
    )]
    Corrupt {
        /// Its key.
        key: BlobDigest,
        /// What the stored bytes hash to.
        actual: BlobDigest,
    },
    /// The configuration cannot open a backend.
    #[error("evidence.blobs.{key}: {message}")]
    Config {
        /// The dotted key below `evidence.blobs.`.
        key: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// The backend failed (I/O, network, permissions).
    #[error("blob store ({backend}): {source}")]
    Backend {
        /// `dir` or `s3`.
        backend: &'static str,
        /// The backend's error.
        #[source]
        source: object_store::Error,
    },
}

impl BlobError {
    /// Whether the caller sent something wrong (as opposed to the store failing).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::BadDigest { .. } | Self::DigestMismatch { .. } | Self::TooLarge { .. }
        )
    }
}

/// Whether a put stored new bytes or found them already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The blob was written now.
    Stored,
    /// A blob with this digest was already stored; nothing was written.
    AlreadyStored,
}

/// The blob store of one deployment. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    max_bytes: u64,
    backend: &'static str,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("backend", &self.backend)
            .field("prefix", &self.prefix)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl BlobStore {
    /// Opens the backend `config` names; `data_dir` places the default directory.
    pub fn open(config: &BlobConfig, data_dir: &Path) -> Result<Self, BlobError> {
        match config.backend {
            BlobBackend::Dir => {
                let dir = config.dir.clone().unwrap_or_else(|| data_dir.join("blobs"));
                Self::open_dir(&dir, config.max_blob_bytes)
            }
            BlobBackend::S3 => Self::open_s3(&config.s3, config.max_blob_bytes),
        }
    }

    /// A store in the directory `dir` (created 0700 if missing).
    pub fn open_dir(dir: &Path, max_bytes: u64) -> Result<Self, BlobError> {
        create_private_dir(dir).map_err(|e| BlobError::Config {
            key: "dir",
            message: format!("cannot create {}: {e}", dir.display()),
        })?;
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| {
            BlobError::Config {
                key: "dir",
                message: format!("{}: {e}", dir.display()),
            }
        })?;
        Ok(Self {
            inner: Arc::new(local),
            prefix: String::new(),
            max_bytes,
            backend: "dir",
        })
    }

    /// A store in the S3 bucket `s3` names.
    pub fn open_s3(s3: &S3Config, max_bytes: u64) -> Result<Self, BlobError> {
        let bucket = s3.bucket.clone().ok_or(BlobError::Config {
            key: "s3.bucket",
            message: "must name the bucket when backend is s3".into(),
        })?;
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(s3.region.clone())
            .with_allow_http(s3.allow_http)
            .with_virtual_hosted_style_request(!s3.path_style);
        if let Some(endpoint) = &s3.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if s3.anonymous {
            builder = builder.with_skip_signature(true);
        } else {
            let id = s3.access_key_id.clone().ok_or(BlobError::Config {
                key: "s3.access_key_id",
                message: "is required unless evidence.blobs.s3.anonymous is true".into(),
            })?;
            let file = s3
                .secret_access_key_file
                .as_ref()
                .ok_or(BlobError::Config {
                    key: "s3.secret_access_key_file",
                    message: "is required unless evidence.blobs.s3.anonymous is true".into(),
                })?;
            let secret = std::fs::read_to_string(file).map_err(|e| BlobError::Config {
                key: "s3.secret_access_key_file",
                message: format!("cannot read {}: {e}", file.display()),
            })?;
            let secret = secret.trim();
            if secret.is_empty() {
                return Err(BlobError::Config {
                    key: "s3.secret_access_key_file",
                    message: format!("{} is empty", file.display()),
                });
            }
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        // reqwest is built without a crypto provider of its own (`rustls-no-provider`): object_store's HTTP
        // client needs the process default.
        gait_runtime::http::tls::install_ring_default();
        let store = builder.build().map_err(|e| BlobError::Config {
            key: "s3",
            message: e.to_string(),
        })?;
        Ok(Self {
            inner: Arc::new(store),
            prefix: s3.prefix.clone(),
            max_bytes,
            backend: "s3",
        })
    }

    /// `dir` or `s3`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The largest blob accepted.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn key(&self, digest: &BlobDigest) -> ObjectPath {
        let hex = digest.hex();
        ObjectPath::from(format!(
            "{}sha256/{}/{}/{hex}",
            self.prefix,
            &hex[..2],
            &hex[2..4]
        ))
    }

    fn backend_error(&self) -> impl FnOnce(object_store::Error) -> BlobError + use<> {
        let backend = self.backend;
        move |source| BlobError::Backend { backend, source }
    }

    /// Stores `bytes` under `claimed` after checking they hash to it and fit the size cap. Idempotent: storing
    /// the same content again writes nothing.
    pub async fn put(&self, claimed: &BlobDigest, bytes: Bytes) -> Result<PutOutcome, BlobError> {
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if size > self.max_bytes {
            return Err(BlobError::TooLarge {
                size,
                limit: self.max_bytes,
            });
        }
        let actual = BlobDigest::of(&bytes);
        if actual != *claimed {
            return Err(BlobError::DigestMismatch {
                claimed: *claimed,
                actual,
            });
        }
        if self.size(claimed).await?.is_some() {
            return Ok(PutOutcome::AlreadyStored);
        }
        self.inner
            .put(&self.key(claimed), PutPayload::from_bytes(bytes))
            .await
            .map_err(self.backend_error())?;
        Ok(PutOutcome::Stored)
    }

    /// The size of the stored blob, or `None` when there is none.
    pub async fn size(&self, digest: &BlobDigest) -> Result<Option<u64>, BlobError> {
        match self.inner.head(&self.key(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.backend_error()(e)),
        }
    }

    /// The blob stored under `digest`, checked against it, or `None` when there is none. A stored blob larger
    /// than the cap or not matching its key is an error, never returned.
    pub async fn get(&self, digest: &BlobDigest) -> Result<Option<Bytes>, BlobError> {
        let found = match self.inner.get(&self.key(digest)).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.backend_error()(e)),
        };
        if found.meta.size > self.max_bytes {
            return Err(BlobError::TooLarge {
                size: found.meta.size,
                limit: self.max_bytes,
            });
        }
        let bytes = found.bytes().await.map_err(self.backend_error())?;
        let actual = BlobDigest::of(&bytes);
        if actual != *digest {
            return Err(BlobError::Corrupt {
                key: *digest,
                actual,
            });
        }
        Ok(Some(bytes))
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
