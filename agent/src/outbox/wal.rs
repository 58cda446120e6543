//! The outbox's write-ahead log: how a group of producer appends becomes durable with one `fdatasync` of one
//! sequential write, instead of a durable redb commit (which syncs the scattered pages it copied on write).
//!
//! # Protocol
//! The committer ([`crate::state`]) hands its group to [`super::Outbox::append_logged`]. That seals the
//! records against the outbox's in-memory state (seqs, hash chain, quota), appends one frame holding the
//! sealed records, the outbox's `shed_total` and the rate-limit counters the group changed, syncs it, and
//! answers the producers. No redb transaction is on that path: the group waits in memory until the
//! applier's thread (or the next write that needs the tables) commits it to redb without fsync, storing the
//! group's [`Position`] (generation, frame number) with it.
//!
//! The log is a pair of files, `agent.wal` and `agent.wal.1`, one active. When the active file is full or
//! holds [`CHECKPOINT_EVERY`] frames, the committer moves to the other one, which starts over at the next
//! generation ([`Wal::reset_to`]). It may only once redb's *durable* state holds every frame in it: the
//! commit that applies a moved-off file's last frame is made with fsync, and if the applier has not got
//! there yet when the committer needs the file, the committer makes that commit itself. So the fsync of
//! redb's scattered pages happens off the decision path, one file's worth of groups at a time.
//!
//! A write that needs durable redb state (an ack, a quarantine, a durable `append`, a group that could not
//! be logged) applies the pending groups in its own transaction, commits with fsync, stores a position past
//! every frame of both files, and the active file starts over.
//!
//! # Recovery
//! A crash (or a re-open of the database after a storage failure, [`crate::db::AgentDb::heal`]) takes redb
//! back to its last durable commit, which may be older than what producers were told. So whenever the outbox
//! is opened, and whenever a write notices the database was re-opened, it reads the frames of both files
//! back in generation order and re-applies, in one durable commit, exactly those after the position redb's
//! durable state stores: each must continue redb's `last_seq` / `last_hash`, and their counters are written
//! in frame order. The frames before the position are never applied again, so a counter redb holds cannot
//! go back to an older value. Until a replay after a re-open succeeds, every outbox write fails.
//!
//! # What a failure means
//! - A frame that cannot be written or synced marks the log failed: that group (and every later one until a
//!   reset succeeds) is committed durably in redb, storing a position past the log, as without the log.
//! - A commit of pending groups that fails leaves them in memory and in the log (they were answered; the
//!   log is their durable copy). The applier retries; while the database is marked failed, new groups are
//!   refused (they take the durable path, which fails) rather than piling up behind it, and the re-open
//!   replays the log, applying them.
//! - A torn frame (a crash during its write) was never acknowledged: the log ends before it.
//! - A header that does not check out makes that file start over, written with zeros again, at a
//!   generation above the stored position's.

//! # File format (`<database file>` with extension `wal`, and the same with `.1` appended for the spare;
//! mode 0600, little-endian)
//! - bytes `0..4096`, the header: magic `GAITWAL1`, generation (u64), the first 16 bytes of the BLAKE3 hash
//!   of those 16 bytes.
//! - from byte 4096, frames back to back, each: frame magic `GWFR`, payload length (u32), generation (u64),
//!   the first 16 bytes of the BLAKE3 hash of (generation, length, payload), then the payload:
//!   `shed_total` (u64), the record count (u32) and each record as length (u32) + its postcard encoding
//!   (exactly the bytes stored in `outbox_records`), the counter count (u32) and each counter as key length
//!   (u32) + key + count (i64; zero or less removes the key).
//!
//! The log ends at the first frame with another magic or generation, a length past the end of the file, or
//! a checksum that does not match. The file is written with zeros to its full size when it is created, so a
//! sync writes data blocks only: never the file's size or its extents.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// Size of a log created by the daemon. [`CHECKPOINT_EVERY`] groups of a few ~1 KiB decision records take a
/// few hundred KiB; a burst of large groups that fills it only brings the next durable commit forward.
pub(crate) const DEFAULT_CAPACITY: u64 = 4 * 1024 * 1024;

/// Frames one file of the pair takes before the committer moves to the other: how many groups one durable
/// redb commit (the one that applies the file's last frame) makes durable. A durable commit writes every
/// page the commits since the last one copied, so the longer the run, the longer that commit; it is off the
/// decision path, but holds up acks and quarantines meanwhile, and a longer run is a longer replay after a
/// crash. Measured with the commit on the decision path (`docs/benchmarks.md`, "write-ahead log"): at 1,024
/// and 8,192 the stall showed in the p99; 32, 128 and 256 were within the machine's noise of each other.
pub(crate) const CHECKPOINT_EVERY: u64 = 128;
pub(crate) const HEADER_LEN: u64 = 4096;
const MAGIC: [u8; 8] = *b"GAITWAL1";
const FRAME_MAGIC: [u8; 4] = *b"GWFR";
const FRAME_HEADER_LEN: usize = 32;
/// Chunk of zeros written when the file is created.
const ZEROS: usize = 1024 * 1024;

/// What one logged group carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The outbox's `shed_total` after the group.
    pub shed_total: u64,
    /// The group's appended records, each its postcard encoding as stored in `outbox_records`.
    pub records: Vec<Vec<u8>>,
    /// The rate-limit counters the group changed: key → count (zero or less: removed).
    pub counters: Vec<(String, i64)>,
}

impl Frame {
    fn encode(&self) -> Vec<u8> {
        let size = 16
            + self.records.iter().map(|r| 4 + r.len()).sum::<usize>()
            + self
                .counters
                .iter()
                .map(|(k, _)| 12 + k.len())
                .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&self.shed_total.to_le_bytes());
        out.extend_from_slice(&len_u32(self.records.len()).to_le_bytes());
        for record in &self.records {
            out.extend_from_slice(&len_u32(record.len()).to_le_bytes());
            out.extend_from_slice(record);
        }
        out.extend_from_slice(&len_u32(self.counters.len()).to_le_bytes());
        for (key, count) in &self.counters {
            out.extend_from_slice(&len_u32(key.len()).to_le_bytes());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        out
    }

    /// Decodes a payload whose checksum matched; `None` if it is malformed (a bug or a forged file).
    fn decode(mut payload: &[u8]) -> Option<Frame> {
        let shed_total = u64::from_le_bytes(take(&mut payload)?);
        let count = u32::from_le_bytes(take(&mut payload)?) as usize;
        let mut records = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            let len = u32::from_le_bytes(take(&mut payload)?) as usize;
            records.push(take_slice(&mut payload, len)?.to_vec());
        }
        let count = u32::from_le_bytes(take(&mut payload)?) as usize;
        let mut counters = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            let len = u32::from_le_bytes(take(&mut payload)?) as usize;
            let key = std::str::from_utf8(take_slice(&mut payload, len)?).ok()?;
            counters.push((key.to_owned(), i64::from_le_bytes(take(&mut payload)?)));
        }
        payload.is_empty().then_some(Frame {
            shed_total,
            records,
            counters,
        })
    }
}

/// Lengths in a frame are u32; a group is at most 512 records of at most 1 MiB, far below.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn take<const N: usize>(input: &mut &[u8]) -> Option<[u8; N]> {
    let bytes = take_slice(input, N)?;
    bytes.try_into().ok()
}

fn take_slice<'a>(input: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if input.len() < len {
        return None;
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Some(head)
}

fn checksum(parts: &[&[u8]]) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    out
}

fn header_bytes(generation: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&MAGIC);
    out[8..16].copy_from_slice(&generation.to_le_bytes());
    let sum = checksum(&[&out[..16]]);
    out[16..].copy_from_slice(&sum);
    out
}

/// The log's path for the agent database at `db_path` (`agent.redb` → `agent.wal`).
pub(crate) fn path_for(db_path: &Path) -> PathBuf {
    db_path.with_extension("wal")
}

/// The path of the pair's second file (`agent.redb` → `agent.wal.1`): the committer writes one file while the
/// database catches up with the other (see the outbox's "Crash rules").
pub(crate) fn spare_path_for(db_path: &Path) -> PathBuf {
    db_path.with_extension("wal.1")
}

/// An open log. Not synchronised: the outbox calls it under its writer lock.
#[derive(Debug)]
pub(crate) struct Wal {
    path: PathBuf,
    file: File,
    capacity: u64,
    generation: u64,
    /// Where the next frame goes.
    end: u64,
    /// Frames written since the last reset.
    frames: u64,
    /// A write, sync or reset failed, or a redb commit after a synced frame: no frame goes in until a reset
    /// succeeds. The frames already there are still read ([`Wal::frames`]).
    failed: bool,
    /// The header did not check out: no frame can be trusted, and the next reset writes the whole file
    /// with zeros again (an old frame of the generation it starts could otherwise follow the new ones).
    header_invalid: bool,
}

/// Where a group's frame stands in the log: its generation and its number in that generation (from 1).
/// The outbox stores the position of the newest logged group in each transaction, so a replay knows which
/// frames redb's durable state already holds; `(generation, 0)` means every frame before `generation`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub(crate) struct Position {
    pub generation: u64,
    pub frame: u64,
}

impl Wal {
    /// Opens the log at `path` if there is one, positioned after its last valid frame.
    pub(crate) fn open_existing(path: &Path) -> io::Result<Option<Wal>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let capacity = file.metadata()?.len();
        let mut wal = Wal {
            path: path.to_path_buf(),
            file,
            capacity,
            generation: 0,
            end: HEADER_LEN,
            frames: 0,
            failed: false,
            header_invalid: false,
        };
        match wal.read_header()? {
            Some(generation) => wal.generation = generation,
            // A header that does not check out was torn while the log was reset, which happens only right
            // after a durable commit: nothing in the log is needed any more. Start it over.
            None => {
                tracing::warn!(path = %path.display(), "outbox log header is not valid; starting the log over");
                wal.failed = true;
                wal.header_invalid = true;
            }
        }
        Ok(Some(wal))
    }

    /// Opens the log at `path`, creating it (written with zeros to `capacity`) if there is none or if the one
    /// there is smaller than `capacity`.
    pub(crate) fn open_or_create(path: &Path, capacity: u64) -> io::Result<Wal> {
        if let Some(mut wal) = Self::open_existing(path)?
            && wal.capacity >= capacity
        {
            // Positions the write after the frames of the current generation (none, once replayed).
            wal.frames()?;
            return Ok(wal);
        }
        let created = Self::preallocate(path, capacity);
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                // A half-written log on a nearly full disk would hold the space the database needs.
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        Ok(Wal {
            path: path.to_path_buf(),
            file,
            capacity,
            generation: 1,
            end: HEADER_LEN,
            frames: 0,
            failed: false,
            header_invalid: false,
        })
    }

    /// Creates the file, written with zeros to `capacity` and a generation-1 header, synced with its
    /// directory entry.
    fn preallocate(path: &Path, capacity: u64) -> io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        Self::preallocate_at(&file, path, capacity, 1)?;
        Ok(file)
    }

    /// Writes `file` with zeros to `capacity` and a header of `generation`, synced with its directory entry.
    fn preallocate_at(file: &File, path: &Path, capacity: u64, generation: u64) -> io::Result<()> {
        let zeros = vec![0u8; ZEROS];
        let mut at = 0u64;
        while at < capacity {
            let n = (capacity - at).min(ZEROS as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.set_len(capacity)?;
        file.write_all_at(&header_bytes(generation), 0)?;
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn read_header(&self) -> io::Result<Option<u64>> {
        let mut header = [0u8; 32];
        if self.capacity < HEADER_LEN {
            return Ok(None);
        }
        self.file.read_exact_at(&mut header, 0)?;
        let generation = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        Ok((header == header_bytes(generation) && generation > 0).then_some(generation))
    }

    /// The frames of the current generation, in order (the first is frame 1), and moves the write position
    /// after the last one. A log whose header did not check out has none.
    pub(crate) fn frames(&mut self) -> io::Result<Vec<Frame>> {
        let mut frames = Vec::new();
        self.end = HEADER_LEN;
        if self.header_invalid {
            return Ok(frames);
        }
        let mut head = [0u8; FRAME_HEADER_LEN];
        while self.end + FRAME_HEADER_LEN as u64 <= self.capacity {
            self.file.read_exact_at(&mut head, self.end)?;
            let len = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default());
            let generation = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
            let start = self.end + FRAME_HEADER_LEN as u64;
            if head[..4] != FRAME_MAGIC
                || generation != self.generation
                || start + u64::from(len) > self.capacity
            {
                break;
            }
            let mut payload = vec![0u8; len as usize];
            self.file.read_exact_at(&mut payload, start)?;
            if checksum(&[&head[8..16], &head[4..8], &payload]) != head[16..32] {
                break;
            }
            let frame = Frame::decode(&payload).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "frame at byte {} of {} has a valid checksum but does not decode",
                        self.end,
                        self.path.display()
                    ),
                )
            })?;
            frames.push(frame);
            self.end = start + u64::from(len);
        }
        self.frames = frames.len() as u64;
        Ok(frames)
    }

    /// The encoded frame and the position it will take, or `None` when it does not fit, or the log is
    /// failed or due for a checkpoint: commit the group durably instead (and [`Wal::reset`] after).
    pub(crate) fn plan(&self, frame: &Frame) -> Option<(Vec<u8>, Position)> {
        if self.failed || self.frames >= CHECKPOINT_EVERY {
            return None;
        }
        let payload = frame.encode();
        let total = (FRAME_HEADER_LEN + payload.len()) as u64;
        if u32::try_from(payload.len()).is_err() || self.end + total > self.capacity {
            return None;
        }
        let position = Position {
            generation: self.generation,
            frame: self.frames + 1,
        };
        Some((payload, position))
    }

    /// The position a durable commit stores: every frame of the current generation is then redundant, and
    /// the reset that follows starts the next one.
    #[cfg(test)]
    pub(crate) fn superseded(&self) -> Position {
        Position {
            generation: self.generation.wrapping_add(1).max(1),
            frame: 0,
        }
    }

    /// Appends `frame` and syncs it. `Ok(false)` when [`Wal::plan`] declines it. An I/O error marks the log
    /// failed.
    #[cfg(test)]
    pub(crate) fn append(&mut self, frame: &Frame) -> io::Result<bool> {
        let Some((payload, _)) = self.plan(frame) else {
            return Ok(false);
        };
        self.append_planned(&payload)?;
        Ok(true)
    }

    /// Appends a payload [`Wal::plan`] accepted (nothing else may touch the log in between) and syncs it.
    /// An I/O error marks the log failed.
    pub(crate) fn append_planned(&mut self, payload: &[u8]) -> io::Result<()> {
        let len = len_u32(payload.len());
        let total = (FRAME_HEADER_LEN + payload.len()) as u64;
        let mut bytes = Vec::with_capacity(total as usize);
        bytes.extend_from_slice(&FRAME_MAGIC);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&self.generation.to_le_bytes());
        let sum = checksum(&[&self.generation.to_le_bytes(), &len.to_le_bytes(), payload]);
        bytes.extend_from_slice(&sum);
        bytes.extend_from_slice(payload);
        let written = self
            .file
            .write_all_at(&bytes, self.end)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.failed = true;
            return Err(e);
        }
        self.end += total;
        self.frames += 1;
        Ok(())
    }

    /// Whether the log holds frames (or failed): a durable commit should be followed by [`Wal::reset`].
    pub(crate) fn needs_reset(&self) -> bool {
        self.failed || self.frames > 0
    }

    /// Starts the log over after a durable commit made every frame in it redundant: a new generation in the
    /// header, synced, so a crash can never replay a frame older than the commit.
    #[cfg(test)]
    pub(crate) fn reset(&mut self) -> io::Result<()> {
        self.reset_to(self.superseded().generation)
    }

    /// [`Wal::reset`] to a chosen generation (the other file of the pair takes the generation after this
    /// one's, so generations rise across both files).
    pub(crate) fn reset_to(&mut self, generation: u64) -> io::Result<()> {
        let written = if self.header_invalid {
            Self::preallocate_at(&self.file, &self.path, self.capacity, generation)
        } else {
            self.file
                .write_all_at(&header_bytes(generation), 0)
                .and_then(|()| self.file.sync_data())
        };
        match written {
            Ok(()) => {
                self.generation = generation;
                self.end = HEADER_LEN;
                self.frames = 0;
                self.failed = false;
                self.header_invalid = false;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Raises the generation to at least `floor` (the generation of the position redb stores), marking the
    /// log failed if it was below: a log created afresh or after an invalid header must not reuse a
    /// generation whose frames a replay would take for ones redb already holds.
    pub(crate) fn adopt_floor(&mut self, floor: u64) {
        if self.generation < floor {
            self.generation = floor;
            self.failed = true;
        }
    }

    /// Marks the log failed (tests: a write that failed).
    #[cfg(test)]
    pub(crate) fn mark_failed(&mut self) {
        self.failed = true;
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Frames written in the current generation.
    pub(crate) fn frame_count(&self) -> u64 {
        self.frames
    }

    /// Whether the log takes no frame until a reset.
    pub(crate) fn is_failed(&self) -> bool {
        self.failed
    }

    /// The position of the newest frame of the current generation (`frame` 0 when there is none).
    pub(crate) fn last_position(&self) -> Position {
        Position {
            generation: self.generation,
            frame: self.frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: u8) -> Frame {
        Frame {
            shed_total: u64::from(i),
            records: vec![vec![i; 3 + usize::from(i)], vec![i.wrapping_add(1); 700]],
            counters: vec![(format!("k{i}"), i64::from(i) - 2)],
        }
    }

    #[test]
    fn frames_round_trip_and_a_reset_forgets_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.wal");
        let mut wal = Wal::open_or_create(&path, 64 * 1024).expect("create");
        for i in 0..5 {
            assert!(wal.append(&frame(i)).expect("append"));
        }
        drop(wal);
        let mut wal = Wal::open_existing(&path).expect("open").expect("exists");
        let frames = wal.frames().expect("frames");
        assert_eq!(frames, (0..5).map(frame).collect::<Vec<_>>());
        // Appending continues after the last frame.
        assert!(wal.append(&frame(9)).expect("append"));
        assert_eq!(wal.frames().expect("frames").len(), 6);
        wal.reset().expect("reset");
        assert!(wal.frames().expect("frames").is_empty());
        assert!(wal.append(&frame(7)).expect("append"));
        drop(wal);
        let mut wal = Wal::open_existing(&path).expect("open").expect("exists");
        assert_eq!(wal.frames().expect("frames"), vec![frame(7)]);
    }

    /// A crash tears the last frame anywhere: the log ends before it, and every earlier frame is intact.
    #[test]
    fn a_torn_last_frame_is_never_read_whatever_byte_it_ends_at() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.wal");
        let mut wal = Wal::open_or_create(&path, 64 * 1024).expect("create");
        assert!(wal.append(&frame(1)).expect("append"));
        let start = wal.end;
        assert!(wal.append(&frame(2)).expect("append"));
        let end = wal.end;
        drop(wal);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let mut whole = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut whole, start).expect("read");
        for cut in 0..whole.len() {
            // The frame as written up to `cut`, zeros (the preallocated file) after it.
            let mut torn = whole.clone();
            torn[cut..].fill(0);
            if torn == whole {
                continue; // the frame ends in zero bytes: cut there, it is whole
            }
            file.write_all_at(&torn, start).expect("write");
            let mut wal = Wal::open_existing(&path).expect("open").expect("exists");
            assert_eq!(
                wal.frames().expect("frames"),
                vec![frame(1)],
                "cut at {cut}"
            );
        }
        // One flipped bit anywhere in the frame ends the log there too.
        for at in (0..whole.len()).step_by(7) {
            let mut flipped = whole.clone();
            flipped[at] ^= 0x10;
            file.write_all_at(&flipped, start).expect("write");
            let mut wal = Wal::open_existing(&path).expect("open").expect("exists");
            assert_eq!(
                wal.frames().expect("frames"),
                vec![frame(1)],
                "bit flipped at {at}"
            );
        }
        file.write_all_at(&whole, start).expect("write");
        let mut wal = Wal::open_existing(&path).expect("open").expect("exists");
        assert_eq!(wal.frames().expect("frames"), vec![frame(1), frame(2)]);
    }

    #[test]
    fn frames_of_an_older_generation_after_the_tail_are_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.wal");
        let mut wal = Wal::open_or_create(&path, 64 * 1024).expect("create");
        for i in 0..4 {
            assert!(wal.append(&frame(i)).expect("append"));
        }
        wal.reset().expect("reset");
        // One new frame, shorter than the old first one: the old second frame now follows it on disk.
        assert!(wal.append(&Frame::default()).expect("append"));
        drop(wal);
        let mut wal = Wal::open_existing(&path).expect("open").expect("exists");
        assert_eq!(wal.frames().expect("frames"), vec![Frame::default()]);
    }

    #[test]
    fn a_full_log_or_one_due_for_a_checkpoint_declines_and_a_reset_reopens_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.wal");
        let mut wal = Wal::open_or_create(&path, HEADER_LEN + 1_000).expect("create");
        assert!(wal.append(&frame(1)).expect("first fits"));
        assert!(!wal.append(&frame(2)).expect("second does not"));
        wal.reset().expect("reset");
        assert!(wal.append(&frame(2)).expect("fits after the reset"));

        let mut wal = Wal::open_or_create(&dir.path().join("b.wal"), 1 << 20).expect("create");
        wal.frames = CHECKPOINT_EVERY;
        assert!(!wal.append(&Frame::default()).expect("due for a checkpoint"));
        assert!(wal.needs_reset());
        wal.reset().expect("reset");
        assert!(wal.append(&Frame::default()).expect("appends again"));
    }

    #[test]
    fn a_torn_header_starts_the_log_over_and_a_small_log_is_grown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.wal");
        let mut wal = Wal::open_or_create(&path, 64 * 1024).expect("create");
        assert!(wal.append(&frame(1)).expect("append"));
        drop(wal);
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(&[0xff; 4], 10).expect("tear");
        let mut wal = Wal::open_existing(&path).expect("open").expect("exists");
        assert!(wal.frames().expect("frames").is_empty());
        assert!(!wal.append(&frame(2)).expect("a failed log declines"));
        wal.reset().expect("reset");
        assert!(wal.append(&frame(2)).expect("append"));
        drop(wal);
        let wal = Wal::open_or_create(&path, 128 * 1024).expect("grow");
        assert_eq!(wal.capacity, 128 * 1024);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 128 * 1024);
    }
}
