//! Periodic checkpoints of a shard, written off the shard's thread.
//!
//! The shard thread hands over only what changed since the previous checkpoint (a [`Delta`] of
//! dirty entries), so its pause is proportional to the updates, not to the state. A writer
//! thread keeps a mirror of the shard built from those deltas and writes the mirror as a
//! complete checkpoint file: header (shard, LSN covered), the TS (last applied sequence number
//! and clock per client), declarations, entries, footer. The file is written to a temporary
//! name, synced and renamed over the previous checkpoint, so a crash leaves either the old or
//! the new file, never half of one. Afterwards WAL segments the checkpoint covers are deleted.
//!
//! The mirror keeps each entry already encoded as its checkpoint frame: an entry is encoded
//! once per change, and writing a checkpoint is a copy of bytes. Writing still costs time
//! proportional to the whole state, so the writer paces itself: after a write that took `d`,
//! the next one starts no sooner than [`PACING`] × `d` later, which caps the share of a core
//! (and of the disk) checkpoints take at about 1 / (1 + PACING) however large the state. The WAL
//! covers whatever the next checkpoint has not yet.

use crate::key::Key;
use crate::shard::Delta;
use crate::wal;
use chc_proto::records::{CheckpointRecord, FrameReader, FrameWriter, KeyRec, TsRec};
use crossbeam::channel::{self, Receiver, Sender};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// After a checkpoint write that took `d`, the writer waits `PACING * d` before the next.
pub const PACING: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "{path}: checkpoint is damaged at byte {offset} ({reason}); refusing to start from it"
    )]
    Corrupt {
        path: PathBuf,
        offset: usize,
        reason: String,
    },
    #[error("{path}: checkpoint belongs to shard {found} of {found_of}, expected shard {shard} of {shards}")]
    WrongShard {
        path: PathBuf,
        found: u32,
        found_of: u32,
        shard: u32,
        shards: u32,
    },
}

/// Path of `shard`'s checkpoint in `dir`.
pub fn path(dir: &Path, shard: u32) -> PathBuf {
    dir.join(format!("ckpt-{shard}.chk"))
}

/// Reads `shard`'s checkpoint, if there is one, as its records in order.
pub fn load(
    dir: &Path,
    shard: u32,
    shards: u32,
) -> Result<Option<Vec<CheckpointRecord>>, CheckpointError> {
    let p = path(dir, shard);
    let data = match fs::read(&p) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => return Err(CheckpointError::Io { path: p, cause }),
    };
    let mut r = FrameReader::new(&data);
    let mut recs = Vec::new();
    while let Some(rec) = r.next_record::<CheckpointRecord>() {
        recs.push(rec);
    }
    let corrupt = |offset: usize, reason: &str| CheckpointError::Corrupt {
        path: p.clone(),
        offset,
        reason: reason.to_string(),
    };
    if let Some(t) = r.torn() {
        return Err(corrupt(t.offset, &t.reason.to_string()));
    }
    match recs.first() {
        Some(CheckpointRecord::Header {
            shard: s,
            shards: n,
            ..
        }) => {
            if *s != shard || *n != shards {
                return Err(CheckpointError::WrongShard {
                    path: p.clone(),
                    found: *s,
                    found_of: *n,
                    shard,
                    shards,
                });
            }
        }
        _ => return Err(corrupt(0, "no header")),
    }
    let entries = recs
        .iter()
        .filter(|r| matches!(r, CheckpointRecord::Entry { .. }))
        .count() as u64;
    match recs.last() {
        Some(CheckpointRecord::Footer { entries: n }) if *n == entries => Ok(Some(recs)),
        _ => Err(corrupt(data.len(), "missing or inconsistent footer")),
    }
}

/// A request to the writer thread.
pub struct Job {
    pub delta: Delta,
    pub lsn: u64,
    pub ts: Vec<TsRec>,
    pub declarations: Vec<(u16, u16, String, u32)>,
}

/// What the shard thread and the writer thread share.
struct Progress {
    /// LSN covered by the newest durable checkpoint.
    durable_lsn: AtomicU64,
    written: AtomicU64,
    /// A job is queued or being written.
    busy: AtomicBool,
    /// Nanoseconds after `base` before which the next write should not start.
    next_at_ns: AtomicU64,
    base: Instant,
}

/// Handle to a shard's checkpoint writer thread.
pub struct CheckpointWriter {
    tx: Option<Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
}

impl CheckpointWriter {
    pub fn start(dir: PathBuf, shard: u32, shards: u32) -> Self {
        let (tx, rx) = channel::unbounded();
        let progress = Arc::new(Progress {
            durable_lsn: AtomicU64::new(0),
            written: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            next_at_ns: AtomicU64::new(0),
            base: Instant::now(),
        });
        let p = progress.clone();
        let handle = std::thread::Builder::new()
            .name(format!("ckpt-{shard}"))
            .spawn(move || writer_loop(dir, shard, shards, rx, &p))
            .expect("spawn checkpoint writer");
        CheckpointWriter {
            tx: Some(tx),
            handle: Some(handle),
            progress,
        }
    }

    pub fn submit(&self, job: Job) {
        if let Some(tx) = &self.tx {
            self.progress.busy.store(true, Ordering::Release);
            let _ = tx.send(job);
        }
    }

    /// Whether the writer is idle and its pacing allows the next checkpoint now.
    pub fn ready(&self) -> bool {
        let p = &self.progress;
        !p.busy.load(Ordering::Acquire)
            && p.base.elapsed().as_nanos() as u64 >= p.next_at_ns.load(Ordering::Acquire)
    }

    /// LSN covered by the newest durable checkpoint.
    pub fn durable_lsn(&self) -> u64 {
        self.progress.durable_lsn.load(Ordering::Acquire)
    }

    /// Checkpoints written so far.
    pub fn written(&self) -> u64 {
        self.progress.written.load(Ordering::Acquire)
    }

    /// Finishes pending checkpoints and stops the thread.
    pub fn finish(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// An entry's checkpoint frame, encoded when the entry changed.
type Mirror = HashMap<Key, Vec<u8>>;

fn writer_loop(dir: PathBuf, shard: u32, shards: u32, rx: Receiver<Job>, progress: &Progress) {
    let mut mirror: Mirror = HashMap::new();
    let mut writer = FrameWriter::new();
    while let Ok(mut job) = rx.recv() {
        let t0 = Instant::now();
        // Coalesce: a slow disk must not make deltas queue up.
        loop {
            apply_delta(&mut mirror, std::mem::take(&mut job.delta), &mut writer);
            match rx.try_recv() {
                Ok(next) => job = next,
                Err(_) => break,
            }
        }
        match write(&dir, shard, shards, &mirror, &job, &mut writer) {
            Ok(()) => {
                progress.durable_lsn.store(job.lsn, Ordering::Release);
                progress.written.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = wal::delete_covered(&dir, shard, job.lsn) {
                    eprintln!("chc-store: shard {shard}: deleting covered WAL segments: {e}");
                }
            }
            Err(e) => eprintln!("chc-store: shard {shard}: checkpoint failed: {e}"),
        }
        let done = progress.base.elapsed().as_nanos() as u64;
        let cost = t0.elapsed().as_nanos() as u64;
        progress
            .next_at_ns
            .store(done + cost * u64::from(PACING), Ordering::Release);
        progress.busy.store(false, Ordering::Release);
    }
}

fn apply_delta(mirror: &mut Mirror, delta: Delta, w: &mut FrameWriter) {
    for (k, e) in delta {
        match e {
            Some(e) => {
                let mut frame = Vec::new();
                let rec = CheckpointRecord::Entry {
                    key: KeyRec {
                        vertex: u32::from(k.vertex),
                        object: u32::from(k.object),
                        per_flow: k.per_flow,
                        sub: k.sub.as_slice().to_vec(),
                    },
                    value: e.value.to_rec(),
                    owner: e.owner,
                    log: e.log,
                };
                w.append(&rec, &mut frame)
                    .expect("checkpoint record serialises");
                mirror.insert(k, frame);
            }
            None => {
                mirror.remove(&k);
            }
        }
    }
}

fn write(
    dir: &Path,
    shard: u32,
    shards: u32,
    mirror: &Mirror,
    job: &Job,
    w: &mut FrameWriter,
) -> Result<(), CheckpointError> {
    let final_path = path(dir, shard);
    let tmp = dir.join(format!("ckpt-{shard}.tmp"));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |cause| CheckpointError::Io { path: p, cause }
    };
    let mut buf = Vec::with_capacity(1 << 20);
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    let created_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let push = |rec: &CheckpointRecord, buf: &mut Vec<u8>, w: &mut FrameWriter| {
        w.append(rec, buf).expect("checkpoint record serialises");
    };
    push(
        &CheckpointRecord::Header {
            shard,
            shards,
            lsn: job.lsn,
            created_unix_ms,
        },
        &mut buf,
        w,
    );
    push(&CheckpointRecord::Ts(job.ts.clone()), &mut buf, w);
    for (v, o, name, kind) in &job.declarations {
        push(
            &CheckpointRecord::Declare {
                vertex: u32::from(*v),
                object: u32::from(*o),
                name: name.clone(),
                kind: *kind,
            },
            &mut buf,
            w,
        );
    }
    for frame in mirror.values() {
        buf.extend_from_slice(frame);
        if buf.len() >= 1 << 20 {
            f.write_all(&buf).map_err(io(&tmp))?;
            buf.clear();
        }
    }
    push(
        &CheckpointRecord::Footer {
            entries: mirror.len() as u64,
        },
        &mut buf,
        w,
    );
    f.write_all(&buf).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, &final_path).map_err(io(&final_path))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
