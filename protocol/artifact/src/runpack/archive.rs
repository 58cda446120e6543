//! A zip reader for untrusted runpacks: the central directory is vetted before any entry is inflated, and every
//! read is bounded (entry count, per-entry and total inflated bytes, inflation ratio).
//!
//! Rejected outright: duplicate names, absolute or `..` names, backslashes, NUL bytes, symbolic links, encrypted
//! entries. Directory entries are ignored. An entry may inflate to at most `max_entry_bytes`, and past
//! `ratio_floor_bytes` to at most `max_ratio` times its compressed size; reads stop at the bound, so a bomb costs
//! at most one bound of memory or CPU.

use std::collections::BTreeMap;
use std::io::{Read, Seek};

use sha2::{Digest, Sha256};
use zip::ZipArchive;

/// Bounds applied to an untrusted zip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZipLimits {
    /// Most non-directory entries (a runpack has five).
    pub max_entries: usize,
    /// Most inflated bytes of one entry (Gait: 100 MiB).
    pub max_entry_bytes: u64,
    /// Most inflated bytes read from the whole archive.
    pub max_total_bytes: u64,
    /// Largest inflated/compressed ratio accepted past `ratio_floor_bytes`.
    pub max_ratio: u64,
    /// Entries up to this inflated size are never treated as bombs.
    pub ratio_floor_bytes: u64,
}

impl Default for ZipLimits {
    fn default() -> Self {
        Self {
            max_entries: 64,
            max_entry_bytes: 100 * 1024 * 1024,
            max_total_bytes: 256 * 1024 * 1024,
            max_ratio: 200,
            ratio_floor_bytes: 1024 * 1024,
        }
    }
}

/// Why an archive or entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    /// Not a readable zip.
    #[error("not a readable zip archive: {0}")]
    NotZip(String),
    /// More entries than allowed.
    #[error("zip has {count} entries, more than the {max} allowed")]
    TooManyEntries {
        /// Entries found.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two entries share a name.
    #[error("zip has duplicate entry names: each file may appear once")]
    DuplicateName,
    /// A name could escape the archive or is malformed.
    #[error("zip entry {name:?} has an unsafe name: {reason}")]
    UnsafeName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A symbolic link entry.
    #[error("zip entry {name:?} is a symbolic link; only regular files are accepted")]
    Symlink {
        /// The name.
        name: String,
    },
    /// Encrypted or otherwise unreadable entry.
    #[error("zip entry {name:?} is not supported: {reason}")]
    Unsupported {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// One entry inflates beyond the per-entry bound.
    #[error("zip entry {name:?} is larger than {max} bytes")]
    EntryTooLarge {
        /// The name.
        name: String,
        /// The limit.
        max: u64,
    },
    /// The archive inflates beyond the total bound.
    #[error("zip inflates to more than {max} bytes in total")]
    TotalTooLarge {
        /// The limit.
        max: u64,
    },
    /// An entry inflates far more than real data does.
    #[error(
        "zip entry {name:?} inflates more than {ratio}:1 from {compressed} compressed bytes (zip bomb)"
    )]
    Bomb {
        /// The name.
        name: String,
        /// Its compressed size.
        compressed: u64,
        /// The ratio limit.
        ratio: u64,
    },
    /// Inflating failed (corrupt data, checksum mismatch).
    #[error("cannot read zip entry {name:?}: {message}")]
    Read {
        /// The name.
        name: String,
        /// The underlying error.
        message: String,
    },
}

/// An opened, vetted zip.
pub struct SafeZip<R> {
    archive: ZipArchive<R>,
    limits: ZipLimits,
    files: BTreeMap<String, usize>,
    inflated: u64,
}

impl<R: Read + Seek> SafeZip<R> {
    /// Open and vet the central directory (no entry is inflated yet).
    pub fn open(reader: R, limits: ZipLimits) -> Result<Self, ArchiveError> {
        let archive = ZipArchive::new(reader).map_err(|e| ArchiveError::NotZip(e.to_string()))?;
        if archive.has_duplicate_names() {
            return Err(ArchiveError::DuplicateName);
        }
        let mut files = BTreeMap::new();
        for index in 0..archive.len() {
            let entry = archive
                .by_index_data(index)
                .map_err(|e| ArchiveError::NotZip(e.to_string()))?;
            let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
            if entry.is_dir() {
                continue;
            }
            if files.len() == limits.max_entries {
                return Err(ArchiveError::TooManyEntries {
                    count: archive.len(),
                    max: limits.max_entries,
                });
            }
            if let Some(reason) = unsafe_name(entry.name_raw()) {
                return Err(ArchiveError::UnsafeName { name, reason });
            }
            if entry.enclosed_name().is_none() {
                return Err(ArchiveError::UnsafeName {
                    name,
                    reason: "resolves outside the archive",
                });
            }
            if entry.is_symlink() {
                return Err(ArchiveError::Symlink { name });
            }
            if entry.encrypted() {
                return Err(ArchiveError::Unsupported {
                    name,
                    reason: "entry is encrypted".into(),
                });
            }
            if entry.size() > limits.max_entry_bytes {
                return Err(ArchiveError::EntryTooLarge {
                    name,
                    max: limits.max_entry_bytes,
                });
            }
            files.insert(name, index);
        }
        Ok(Self {
            archive,
            limits,
            files,
            inflated: 0,
        })
    }

    /// Names of the regular-file entries, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Whether a regular-file entry has this exact name.
    pub fn contains(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    /// Inflate one entry into memory; `None` when absent.
    pub fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        let mut out = Vec::new();
        let found = self.stream(name, |chunk| out.extend_from_slice(chunk))?;
        Ok(found.map(|()| out))
    }

    /// Lowercase hex SHA-256 of one entry's inflated bytes, streamed; `None` when absent.
    pub fn sha256_hex(&mut self, name: &str) -> Result<Option<String>, ArchiveError> {
        let mut hasher = Sha256::new();
        let found = self.stream(name, |chunk| hasher.update(chunk))?;
        Ok(found.map(|()| hex::encode(hasher.finalize())))
    }

    fn stream(
        &mut self,
        name: &str,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<Option<()>, ArchiveError> {
        let Some(&index) = self.files.get(name) else {
            return Ok(None);
        };
        let limits = self.limits;
        let read_err = |e: &dyn std::fmt::Display| ArchiveError::Read {
            name: name.to_owned(),
            message: e.to_string(),
        };
        let file = self.archive.by_index(index).map_err(|e| read_err(&e))?;
        let compressed = file.compressed_size();
        let ratio_bound = compressed
            .saturating_mul(limits.max_ratio)
            .max(limits.ratio_floor_bytes);
        let bound = limits.max_entry_bytes.min(ratio_bound);
        let mut limited = file.take(bound.saturating_add(1));
        // A stack buffer: runpack entries are small, and a fresh zeroed 64 KiB heap buffer per entry cost
        // more than inflating them.
        let mut buf = [0u8; 8 * 1024];
        let mut total: u64 = 0;
        loop {
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(&e)),
            };
            total += n as u64;
            if total > bound {
                return Err(if bound < limits.max_entry_bytes {
                    ArchiveError::Bomb {
                        name: name.to_owned(),
                        compressed,
                        ratio: limits.max_ratio,
                    }
                } else {
                    ArchiveError::EntryTooLarge {
                        name: name.to_owned(),
                        max: limits.max_entry_bytes,
                    }
                });
            }
            self.inflated += n as u64;
            if self.inflated > limits.max_total_bytes {
                return Err(ArchiveError::TotalTooLarge {
                    max: limits.max_total_bytes,
                });
            }
            sink(&buf[..n]);
        }
        Ok(Some(()))
    }
}

/// Why a raw entry name is unsafe, if it is.
fn unsafe_name(raw: &[u8]) -> Option<&'static str> {
    let Ok(name) = std::str::from_utf8(raw) else {
        return Some("not valid UTF-8");
    };
    if name.is_empty() {
        return Some("empty");
    }
    if name.contains('\0') {
        return Some("contains a NUL byte");
    }
    if name.contains('\\') {
        return Some("contains a backslash");
    }
    if name.starts_with('/') {
        return Some("is absolute");
    }
    if name
        .split('/')
        .next()
        .is_some_and(|first| first.contains(':'))
    {
        return Some("starts with a drive or scheme prefix");
    }
    if name.split('/').any(|part| part == "..") {
        return Some("contains a `..` component");
    }
    None
}
