//! The store's write-ahead log: one sequence of segment files per shard.
//!
//! Segment `wal-<shard>-<first lsn>.log` holds CRC-framed [`WalRecord`]s in LSN order. The
//! shard thread appends the records of one event-loop pass with a single `write`, then syncs
//! according to the [`FsyncPolicy`] before any reply of that pass leaves (group commit). A new
//! segment starts at the first checkpoint after the current one reached [`SEGMENT_BYTES`]
//! (starting one at every checkpoint would cost a file creation and two syncs several times a
//! second); the checkpoint writer deletes segments it covers.
//!
//! Recovery reads the segments in order. A torn or corrupt frame at the end of the last
//! segment (a crash mid-write) is truncated away and reported; the same damage in an earlier
//! segment means records after it would be lost, so recovery refuses with an error naming the
//! file and offset instead of guessing.

use chc_proto::records::{FrameReader, WalRecord};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Size after which the next checkpoint starts a new segment.
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// When appended records reach the disk, as in Redis' `appendfsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Sync before acknowledging: an acknowledged write survives a crash.
    Always,
    /// Sync once a second: a crash loses at most about a second of writes.
    EverySec,
    /// Leave it to the OS.
    No,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::EverySec),
            "no" => Ok(FsyncPolicy::No),
            _ => Err(format!(
                "fsync policy must be always, everysec or no, not {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::No => "no",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "{path}: corrupt record at byte {offset} ({reason}) with later segments after it; \
         refusing to recover past lost records (move the damaged files away to accept the loss)"
    )]
    CorruptMiddle {
        path: PathBuf,
        offset: usize,
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |cause| WalError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    /// A torn tail that was cut off: (file, offset, bytes dropped).
    pub truncated: Option<(PathBuf, usize, u64)>,
}

/// Segment files of `shard` in `dir`, sorted by first LSN.
pub fn segments(dir: &Path, shard: u32) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let prefix = format!("wal-{shard}-");
    let mut v = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for ent in rd {
        let ent = ent.map_err(io_err(dir))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(rest) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".log"))
        {
            if let Ok(first) = rest.parse::<u64>() {
                v.push((first, ent.path()));
            }
        }
    }
    v.sort();
    Ok(v)
}

/// Reads every record of `shard`'s log in order, truncating a torn tail of the last segment.
pub fn recover(
    dir: &Path,
    shard: u32,
    mut apply: impl FnMut(&WalRecord),
) -> Result<RecoveryReport, WalError> {
    let segs = segments(dir, shard)?;
    let mut report = RecoveryReport {
        segments: segs.len(),
        ..Default::default()
    };
    for (i, (_, path)) in segs.iter().enumerate() {
        let data = fs::read(path).map_err(io_err(path))?;
        let mut r = FrameReader::new(&data);
        while let Some(rec) = r.next_wal() {
            apply(&rec);
            report.records += 1;
        }
        if let Some(t) = r.torn() {
            if i + 1 != segs.len() {
                return Err(WalError::CorruptMiddle {
                    path: path.clone(),
                    offset: t.offset,
                    reason: t.reason.to_string(),
                });
            }
            let valid = r.valid_len();
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_err(path))?;
            f.set_len(valid as u64).map_err(io_err(path))?;
            f.sync_all().map_err(io_err(path))?;
            report.truncated = Some((path.clone(), valid, (data.len() - valid) as u64));
        }
    }
    Ok(report)
}

/// The appending side of one shard's log.
pub struct WalWriter {
    dir: PathBuf,
    shard: u32,
    policy: FsyncPolicy,
    file: File,
    path: PathBuf,
    last_sync: Instant,
    unsynced: bool,
    segment_bytes: u64,
    pub bytes_written: u64,
    pub syncs: u64,
}

impl WalWriter {
    /// Starts a new segment whose first record will have LSN `first_lsn`.
    pub fn create(
        dir: &Path,
        shard: u32,
        first_lsn: u64,
        policy: FsyncPolicy,
    ) -> Result<Self, WalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (file, path) = open_segment(dir, shard, first_lsn)?;
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            shard,
            policy,
            file,
            path,
            last_sync: Instant::now(),
            unsynced: false,
            segment_bytes: 0,
            bytes_written: 0,
            syncs: 0,
        })
    }

    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// Appends framed records and syncs as the policy requires. With `Always` this returns only
    /// once the bytes are on stable storage.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), WalError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all(bytes).map_err(io_err(&self.path))?;
        self.bytes_written += bytes.len() as u64;
        self.segment_bytes += bytes.len() as u64;
        self.unsynced = true;
        match self.policy {
            FsyncPolicy::Always => self.sync()?,
            FsyncPolicy::EverySec => self.tick()?,
            FsyncPolicy::No => {}
        }
        Ok(())
    }

    /// Syncs if the policy is `EverySec` and a second has passed; call it periodically.
    pub fn tick(&mut self) -> Result<(), WalError> {
        if self.policy == FsyncPolicy::EverySec
            && self.unsynced
            && self.last_sync.elapsed() >= Duration::from_secs(1)
        {
            self.sync()?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), WalError> {
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.last_sync = Instant::now();
        self.unsynced = false;
        self.syncs += 1;
        Ok(())
    }

    /// Closes the current segment and starts one whose first LSN is `first_lsn`.
    pub fn rotate(&mut self, first_lsn: u64) -> Result<(), WalError> {
        if self.policy != FsyncPolicy::No && self.unsynced {
            self.sync()?;
        }
        let (file, path) = open_segment(&self.dir, self.shard, first_lsn)?;
        self.file = file;
        self.path = path;
        self.segment_bytes = 0;
        Ok(())
    }

    /// Bytes appended to the current segment.
    pub fn segment_len(&self) -> u64 {
        self.segment_bytes
    }
}

fn open_segment(dir: &Path, shard: u32, first_lsn: u64) -> Result<(File, PathBuf), WalError> {
    let path = dir.join(format!("wal-{shard}-{first_lsn:020}.log"));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // Make the new file's directory entry durable too.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok((file, path))
}

/// Deletes segments of `shard` whose records all have LSN <= `lsn` (covered by a checkpoint).
pub fn delete_covered(dir: &Path, shard: u32, lsn: u64) -> Result<usize, WalError> {
    let segs = segments(dir, shard)?;
    let mut n = 0;
    for w in segs.windows(2) {
        // Segment w[0] ends just before w[1] starts.
        if w[1].0 <= lsn + 1 {
            fs::remove_file(&w[0].1).map_err(io_err(&w[0].1))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chc_proto::records::{FrameWriter, KeyRec, OpRec, ValueRec};

    fn rec(lsn: u64) -> WalRecord {
        WalRecord {
            lsn,
            client: 1,
            seq: lsn,
            op: OpRec {
                code: 4,
                key: KeyRec {
                    vertex: 0,
                    object: 0,
                    per_flow: false,
                    sub: b"k".to_vec(),
                },
                num: 1,
                val: ValueRec::Nil,
                val2: ValueRec::Nil,
                clock: 0,
                instance: 0,
                op_index: 0,
                flags: 0,
            },
            result: ValueRec::Nil,
        }
    }

    fn write(w: &mut WalWriter, lsns: std::ops::Range<u64>) {
        let mut fw = FrameWriter::new();
        let mut buf = Vec::new();
        for l in lsns {
            fw.append(&rec(l), &mut buf).unwrap();
        }
        w.append(&buf).unwrap();
    }

    #[test]
    fn segments_recover_in_order_and_covered_ones_are_deleted() {
        let d = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(d.path(), 3, 1, FsyncPolicy::Always).unwrap();
        write(&mut w, 1..11);
        w.rotate(11).unwrap();
        write(&mut w, 11..21);
        let mut seen = Vec::new();
        let rep = recover(d.path(), 3, |r| seen.push(r.lsn)).unwrap();
        assert_eq!(seen, (1..21).collect::<Vec<_>>());
        assert_eq!(rep.segments, 2);
        assert!(rep.truncated.is_none());
        // A checkpoint at LSN 9 does not cover the first segment; at 10 it does.
        assert_eq!(delete_covered(d.path(), 3, 9).unwrap(), 0);
        assert_eq!(delete_covered(d.path(), 3, 10).unwrap(), 1);
        assert_eq!(segments(d.path(), 3).unwrap().len(), 1);
        // Other shards' files are not touched.
        assert!(segments(d.path(), 4).unwrap().is_empty());
    }

    #[test]
    fn torn_tail_is_truncated_at_every_cut_point() {
        let d = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(d.path(), 0, 1, FsyncPolicy::No).unwrap();
        write(&mut w, 1..4);
        drop(w);
        let path = segments(d.path(), 0).unwrap()[0].1.clone();
        let full = fs::read(&path).unwrap();
        let mut fw = FrameWriter::new();
        let mut ends = Vec::new();
        let mut b = Vec::new();
        for l in 1..4 {
            fw.append(&rec(l), &mut b).unwrap();
            ends.push(b.len());
        }
        for cut in 0..=full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let mut n = 0;
            let rep = recover(d.path(), 0, |_| n += 1).unwrap();
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(n, complete, "cut {cut}");
            let len = fs::metadata(&path).unwrap().len() as usize;
            let expect_len = if complete == 0 { 0 } else { ends[complete - 1] };
            assert_eq!(len, expect_len, "file truncated to the last whole record");
            assert_eq!(rep.truncated.is_some(), cut != expect_len);
        }
    }

    #[test]
    fn damage_before_the_last_segment_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(d.path(), 0, 1, FsyncPolicy::No).unwrap();
        write(&mut w, 1..4);
        w.rotate(4).unwrap();
        write(&mut w, 4..6);
        let first = segments(d.path(), 0).unwrap()[0].1.clone();
        let mut data = fs::read(&first).unwrap();
        let n = data.len();
        data[n - 3] ^= 0x40;
        fs::write(&first, &data).unwrap();
        let err = recover(d.path(), 0, |_| {}).unwrap_err();
        assert!(matches!(err, WalError::CorruptMiddle { .. }), "{err}");
        assert!(err.to_string().contains("wal-0-"));
    }
}
