//! `gait-aggregator backup` and `restore`: a consistent copy of an aggregator's state, taken while it serves,
//! and put back on a fresh machine.
//!
//! A backup is a directory: `aggregator.db` (SQLite, written with `VACUUM INTO` from one read transaction, so
//! it holds exactly what was committed when the copy began), every other file of the data directory (the PKI
//! with the CA key, `keys/` with the registry, audit, ticket and reset keys, `admin.token`, local evidence blobs),
//! and `manifest.json` naming each file with its size and SHA-256. Restore checks every digest before it
//! writes anything, refuses a data directory that already holds a database, copies the files with private
//! modes, then opens the database (migrating it to this build's schema), checks its integrity and compares the
//! row counts with the manifest's.
//!
//! On PostgreSQL the database is backed up with PostgreSQL's own tools (`pg_dump`/`pg_restore`; see
//! `docs/operations/backup.md`); `backup` then copies the data directory's files (the keys agents and
//! operators depend on) and says so.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail, ensure};
use clap::Args;
use gait_aggregator::config::{Config, SQLITE_FILE};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Name of the manifest inside a backup directory.
pub const MANIFEST: &str = "manifest.json";
/// Format tag of the manifest.
const FORMAT: &str = "gait-aggregator-backup/1";

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub data: super::DataArgs,
    /// Directory to write the backup into; must not exist (or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub data: super::DataArgs,
    /// Backup directory written by `gait-aggregator backup`.
    #[arg(long)]
    pub from: PathBuf,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Deserialize, Debug)]
struct Manifest {
    format: String,
    created_unix_ms: i64,
    /// `sqlite` or `postgres` (no database file then).
    backend: String,
    /// Counts in the copied database (`None` on PostgreSQL).
    counts: Option<gait_store::BackupCounts>,
    files: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize, Debug)]
struct FileEntry {
    /// Path relative to the backup directory, `/`-separated.
    path: String,
    bytes: u64,
    sha256: String,
}

/// Files of the data directory never copied: the live database (copied consistently instead) and logs.
fn skipped(rel: &Path) -> bool {
    let name = rel.to_string_lossy();
    name == SQLITE_FILE
        || name == format!("{SQLITE_FILE}-wal")
        || name == format!("{SQLITE_FILE}-shm")
        || name.ends_with(".log")
}

fn digest_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// Every regular file under `root`, as paths relative to it, sorted.
fn files_under(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            let kind = entry.file_type()?;
            let child = rel.join(entry.file_name());
            if kind.is_dir() {
                stack.push(child);
            } else if kind.is_file() {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn rel_string(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Copies `from` to `to` (creating its private parent directories) with mode 0600.
fn copy_private(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        gait_aggregator::secrets::create_private_dir(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn empty_or_missing(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

pub async fn backup(args: BackupArgs, config: Config) -> anyhow::Result<ExitCode> {
    let config = args.data.apply(config)?;
    let data_dir = &config.data_dir;
    ensure!(
        data_dir.is_dir(),
        "data directory {} does not exist (data_dir / --data-dir)",
        data_dir.display()
    );
    ensure!(
        empty_or_missing(&args.out)?,
        "--out {} is not empty: give a new directory for the backup",
        args.out.display()
    );
    gait_aggregator::secrets::create_private_dir(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let started = std::time::Instant::now();
    let store = gait_store::Store::connect(&config.effective_database_url()).await?;
    let backend = store.backend().to_owned();
    let mut files = Vec::new();
    let counts = if backend == "sqlite" {
        let db = args.out.join(SQLITE_FILE);
        store
            .snapshot_sqlite_into(&db)
            .await
            .with_context(|| format!("copying the database into {}", db.display()))?;
        store.close().await;
        // The counts are read from the copy: they are what a restore must find.
        let copy = gait_store::Store::open_sqlite_file(&db).await?;
        let counts = copy.backup_counts().await?;
        copy.close().await;
        let (bytes, sha256) = digest_file(&db)?;
        files.push(FileEntry {
            path: SQLITE_FILE.to_owned(),
            bytes,
            sha256,
        });
        Some(counts)
    } else {
        store.close().await;
        None
    };
    // A backup directory inside the data directory is not copied into itself.
    let out_dir = std::fs::canonicalize(&args.out)?;
    let data_root = std::fs::canonicalize(data_dir)?;
    for rel in files_under(data_dir)? {
        if skipped(&rel) || data_root.join(&rel).starts_with(&out_dir) {
            continue;
        }
        let to = args.out.join(&rel);
        copy_private(&data_dir.join(&rel), &to)?;
        let (bytes, sha256) = digest_file(&to)?;
        files.push(FileEntry {
            path: rel_string(&rel),
            bytes,
            sha256,
        });
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        created_unix_ms: gait_aggregator::clock::unix_ms(),
        backend: backend.clone(),
        counts,
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest)?;
    gait_aggregator::secrets::write_atomic(
        &args.out.join(MANIFEST),
        &text,
        gait_aggregator::secrets::Access::Private,
    )?;
    let total: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    if args.json {
        gait_runtime::outln!(
            "{}",
            serde_json::json!({
                "backup": args.out,
                "backend": backend,
                "counts": manifest.counts,
                "files": manifest.files.len(),
                "bytes": total,
                "seconds": started.elapsed().as_secs_f64(),
            })
        );
    } else {
        gait_runtime::outln!(
            "backup written to {}: {} files, {} bytes in {:.2} s",
            args.out.display(),
            manifest.files.len(),
            total,
            started.elapsed().as_secs_f64()
        );
        if let Some(c) = manifest.counts {
            gait_runtime::outln!(
                "database: {} records, {} audit entries, {} agents (consistent as of the copy's start)",
                c.records,
                c.audit_entries,
                c.agents
            );
        } else {
            gait_runtime::outln!(
                "database: PostgreSQL is not in this backup; back it up with pg_dump \
                 (docs/operations/backup.md)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn restore(args: RestoreArgs, config: Config) -> anyhow::Result<ExitCode> {
    let config = args.data.apply(config)?;
    let manifest_path = args.from.join(MANIFEST);
    let text = std::fs::read(&manifest_path).with_context(|| {
        format!(
            "reading {} (is --from a directory written by `gait-aggregator backup`?)",
            manifest_path.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a backup manifest", manifest_path.display()))?;
    ensure!(
        manifest.format == FORMAT,
        "{}: format {:?}, this build reads {FORMAT:?}",
        manifest_path.display(),
        manifest.format
    );
    // Every file is checked before anything is written.
    for f in &manifest.files {
        let rel = Path::new(&f.path);
        ensure!(
            rel.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "{}: file path {:?} leaves the backup directory",
            manifest_path.display(),
            f.path
        );
        let (bytes, sha256) = digest_file(&args.from.join(rel))?;
        if bytes != f.bytes || sha256 != f.sha256 {
            bail!(
                "{}: {} does not match the manifest (sha256 {sha256}, {bytes} bytes; manifest says {}, {} bytes): \
                 the backup is damaged, restore another one",
                args.from.display(),
                f.path,
                f.sha256,
                f.bytes
            );
        }
    }
    let target_db = config.sqlite_path();
    let is_sqlite = config.database.url.is_none();
    if manifest.backend == "sqlite" {
        ensure!(
            is_sqlite,
            "this backup holds a SQLite database but database.url points at PostgreSQL; restore into a SQLite \
             data directory (no database.url), or load PostgreSQL with pg_restore"
        );
        ensure!(
            !target_db.exists(),
            "{} exists already: restore into a fresh data directory (--data-dir), never over a live one",
            target_db.display()
        );
    }
    gait_aggregator::secrets::create_private_dir(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    for f in &manifest.files {
        let to = if f.path == SQLITE_FILE {
            target_db.clone()
        } else {
            config.data_dir.join(&f.path)
        };
        ensure!(
            !to.exists(),
            "{} exists already: restore into a fresh data directory",
            to.display()
        );
        copy_private(&args.from.join(&f.path), &to)?;
    }
    let mut counts = None;
    if manifest.backend == "sqlite" {
        let store = gait_store::Store::open_sqlite_file(&target_db).await?;
        store.check_integrity().await?;
        let found = store.backup_counts().await?;
        store.close().await;
        if let Some(expected) = manifest.counts {
            ensure!(
                found == expected,
                "the restored database holds {found:?}, the backup recorded {expected:?}"
            );
        }
        counts = Some(found);
    }
    if args.json {
        gait_runtime::outln!(
            "{}",
            serde_json::json!({
                "restored": config.data_dir,
                "backend": manifest.backend,
                "counts": counts,
                "files": manifest.files.len(),
                "backup_created_unix_ms": manifest.created_unix_ms,
            })
        );
    } else {
        gait_runtime::outln!(
            "restored {} files into {}",
            manifest.files.len(),
            config.data_dir.display()
        );
        if let Some(c) = counts {
            gait_runtime::outln!(
                "database: integrity ok; {} records, {} audit entries, {} agents, as in the backup",
                c.records,
                c.audit_entries,
                c.agents
            );
        } else {
            gait_runtime::outln!(
                "database: PostgreSQL; load it with pg_restore before `serve` (docs/operations/backup.md)"
            );
        }
        gait_runtime::outln!(
            "start it with `gait-aggregator serve --data-dir {}`; agents reconnect by themselves",
            config.data_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
