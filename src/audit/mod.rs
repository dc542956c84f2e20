//! The tamper-evident audit log: every operation appends a record (who,
//! which key version, what result, a hash of the input — never the input),
//! records are hash-chained and periodically sealed by a checkpoint signed
//! with the service's audit key ([`chain`] has the format and verifier).
//!
//! Writes are group-committed: requests hand their record to a bounded
//! queue (a full queue makes callers wait: backpressure, never a drop), one
//! writer task takes everything queued, writes it with one `fsync` on a
//! blocking thread, and then answers every request in the batch. A request
//! therefore waits for its batch, not for an fsync of its own.
//!
//! At start-up the whole chain is verified. A broken chain, or a log shorter
//! than the head recorded at the last checkpoint (`audit.head`), marks the
//! log failed: readiness goes false and operations that use private keys or
//! change state are refused, while verify, get and list stay available.
//! After a crash the tail written since the last checkpoint is sealed by a
//! new checkpoint at start-up.
//!
//! In amnesia mode the log lives in memory only.
pub mod chain;
mod recovery;
mod writer;

pub use recovery::{read_key_file, verify_dir, verify_dir_explained};
use recovery::{set_aside, torn_tail};
#[cfg(test)]
use recovery::{torn_start, SECTOR};
use writer::{now_ms, run, Writer};

use std::os::unix::fs::FileExt as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::sync::{mpsc, oneshot};

use chain::BodyRef;

pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 5000;
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
pub const QUEUE_BOUND: usize = 8192;
/// Free space the audit log's file system keeps: below it the service is
/// unready and refuses writes and signing, before the disk is full.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;
/// How often free space is looked at, at most (and at least once a second,
/// with the checkpoint ticker).
const SPACE_CHECK_EVERY: Duration = Duration::from_millis(100);
const BATCH_MAX: usize = 1024;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// The active segment is zero-filled this far ahead of its records, so a
/// commit overwrites blocks that are already allocated and written and its
/// fdatasync only writes the data and flushes the device: no inode size or
/// block allocation to write back as with an append. On this host's ext4
/// (no journal, virtio disk) a 9 KB commit took 153–160 µs at p50 and 48–50
/// µs of CPU, against 237–294 µs and 62–83 µs appended. The zero tail is cut
/// off when a segment is finished (rotation, clean shutdown); after a crash
/// the active segment ends in NULs, which readers skip ([`chain::content`]).
const ZERO_AHEAD: u64 = 1 << 20;
pub const KEY_FILE: &str = "audit-key.pub";
pub const HEAD_FILE: &str = "audit.head";

/// Signs checkpoint messages with the audit key (held in custody).
pub type Signer = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// One operation's record, before it gets its place in the chain.
#[derive(Clone, Debug, Default)]
pub struct Event {
    pub tenant: String,
    pub principal: String,
    pub op: &'static str,
    pub kid: String,
    pub alg: String,
    /// `ok` or the error code (`not_found`, `permission_denied`, …).
    pub result: String,
    pub reason: String,
    pub request_id: String,
    /// HMAC-SHA256 of the input under the [`InputKey`].
    pub input_hmac: Option<[u8; 32]>,
    /// An outcome's intent record (its `seq`); 0 for every other record.
    pub intent: u64,
}

/// The key of the records' input hashes (HMAC-SHA256): without it a
/// record's hash of a low-entropy input (a short secret being wrapped)
/// cannot be checked against guesses. Each node has its own, made on first
/// start and kept sealed by custody (`server::open_audit`); it lives in
/// process memory only while the service runs and is never printed.
#[derive(Clone)]
pub struct InputKey(ring::hmac::Key);

impl InputKey {
    pub fn new(bytes: &[u8]) -> Self {
        InputKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    /// A fresh key of this process only (amnesia mode, tests).
    pub fn random() -> Self {
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        crate::crypto::random_bytes(&mut k[..]).expect("system randomness");
        Self::new(&k[..])
    }

    /// HMAC-SHA256 of `input`.
    pub fn hmac(&self, input: &[u8]) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.0, input);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

impl std::fmt::Debug for InputKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputKey(<redacted>)")
    }
}

/// Where the log lives.
#[derive(Clone, Debug)]
pub enum Sink {
    Dir(PathBuf),
    Memory,
    /// No log at all. Only reachable through the library API, for the
    /// benchmark that measures what auditing costs (examples/audit_overhead.rs);
    /// no config file, variable or flag selects it.
    Off,
}

/// When an audit record is durable before its operation is answered
/// (`KMS_AUDIT_SYNC`; docs/audit.md, "Durability").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditSync {
    /// Written and fdatasync'd: survives a power cut (the default).
    Fsync,
    /// Written to the kernel, fdatasync'd in the background at least every
    /// `interval` (and at every checkpoint, rotation and clean stop):
    /// survives a crash or kill -9 of ron-kms; a power cut or kernel crash
    /// may lose up to `interval` of records.
    Write { interval: Duration },
}

pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(100);

impl AuditSync {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditSync::Fsync => "fsync",
            AuditSync::Write { .. } => "write",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub sink: Sink,
    /// When a record is durable: before the answer, or in the background.
    pub sync: AuditSync,
    /// Written into every record (`node`).
    pub node: String,
    pub checkpoint_interval: u64,
    pub max_file_bytes: u64,
    /// The free-space floor of the log's file system (0: none).
    pub min_free_bytes: u64,
    /// The key of the records' input hashes.
    pub input_key: InputKey,
}

// Nearly every message is an Event; boxing it would add an allocation per
// operation to save space on the one Close message.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Event, oneshot::Sender<Result<u64, String>>),
    /// A batch RPC's records: queued, written and answered together.
    Events(Vec<Event>, oneshot::Sender<Result<Vec<u64>, String>>),
    Tick,
    Close(oneshot::Sender<()>),
}

/// A fault the writer can be told to have at its next commit (tests and
/// drills; reachable only through the library API).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterFault {
    /// The write fails with an I/O error.
    Io,
    /// The writer's thread panics.
    Panic,
}

/// The writer's health, shared by the handle and the writer task. A writer
/// that failed (an I/O error, a full disk, a panic) stays failed until the
/// process restarts: the records it could not write were answered as
/// errors, and what follows them in the chain must not be written past a
/// gap it cannot explain.
#[derive(Debug, Default)]
pub(crate) struct WriterState {
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    /// 0: none; 1: [`WriterFault::Io`]; 2: [`WriterFault::Panic`].
    inject: std::sync::atomic::AtomicU8,
    /// Below the free-space floor: `(free bytes, floor)`. Clears by itself
    /// once space is back.
    low_space: Mutex<Option<(u64, u64)>>,
}

impl WriterState {
    pub(crate) fn fail(&self, why: String) {
        tracing::error!(error = %why, "audit writer failed: operations that write or use private keys are refused until a restart");
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
        self.failed.store(true, Ordering::Release);
        metrics::gauge!("kms_audit_writer_failed").set(1.0);
    }

    /// Record the free space just measured against the floor.
    pub(crate) fn space(&self, free: u64, floor: u64) {
        let low = free < floor;
        let mut l = self.low_space.lock().unwrap_or_else(|p| p.into_inner());
        match (l.is_some(), low) {
            (false, true) => tracing::error!(free, floor, "audit log's file system is below its free-space floor: writes and signing are refused until space is freed"),
            (true, false) => tracing::info!(free, floor, "audit log's file system is above its free-space floor again"),
            _ => {}
        }
        *l = low.then_some((free, floor));
        metrics::gauge!("kms_audit_free_bytes").set(free as f64);
        metrics::gauge!("kms_audit_low_space").set(if low { 1.0 } else { 0.0 });
    }

    /// The fault to have now, if one was injected (taken once).
    pub(crate) fn take_injected(&self) -> Option<WriterFault> {
        match self.inject.swap(0, Ordering::AcqRel) {
            1 => Some(WriterFault::Io),
            2 => Some(WriterFault::Panic),
            _ => None,
        }
    }
}

/// What readiness and refusals say below the free-space floor.
pub fn low_space_message(free: u64, floor: u64) -> String {
    format!("the audit log's file system has {free} bytes free, below its floor of {floor} (KMS_AUDIT_MIN_FREE_BYTES); free space to resume")
}

/// Free bytes (for an unprivileged writer) of the file system holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Result<u64, String> {
    let v = rustix::fs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    Ok(v.f_bavail.saturating_mul(v.f_frsize))
}

/// Handle to the running log.
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    writer: Arc<WriterState>,
    integrity_failures: AtomicU64,
    memory: Arc<Mutex<Vec<u8>>>,
    off: bool,
    input_key: InputKey,
    node: String,
}

impl AuditLog {
    /// Open (verifying what is there) and start the writer task. Blocks
    /// (reads and verifies the whole log); call it from a blocking thread
    /// inside the runtime.
    pub fn start_blocking(
        opts: Options,
        public_key: &[u8],
        signer: Signer,
    ) -> Result<Arc<Self>, String> {
        let memory = Arc::new(Mutex::new(Vec::new()));
        let mut failure = None;
        let mut w = Writer {
            dir: None,
            file: None,
            index: 1,
            file_bytes: 0,
            file_len: 0,
            memory: memory.clone(),
            seq: 0,
            prev: [0u8; 32],
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            deferred_until: None,
            interval: opts.checkpoint_interval.max(1),
            max_file_bytes: opts.max_file_bytes.max(4096),
            signer,
            pending: Vec::new(),
            node: opts.node.clone(),
            min_free_bytes: opts.min_free_bytes,
            space_checked: None,
            sync: opts.sync,
            syncer: Arc::new(writer::Syncer::default()),
        };
        if let Sink::Dir(dir) = &opts.sink {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            let key_file = dir.join(KEY_FILE);
            if !key_file.exists() {
                crate::secret_file::write_private(
                    &key_file,
                    format!("{}\n", hex::encode(public_key)).as_bytes(),
                )
                .map_err(|e| e.to_string())?;
            }
            let verified = verify_dir(dir, Some(public_key)).or_else(|e| {
                let Some((torn, s)) = torn_tail(dir, public_key) else {
                    return Err(e);
                };
                let aside = set_aside(dir, &torn).map_err(|why| {
                    format!("{e} (a torn last line that could not be set aside: {why})")
                })?;
                tracing::warn!(
                    segment = %torn.segment.display(),
                    torn_bytes = torn.torn.len(),
                    kept_bytes = torn.keep,
                    set_aside = %aside.display(),
                    "audit log ended in a torn write (an incomplete last line, never acknowledged): set aside; the chain before it verifies"
                );
                metrics::counter!("kms_audit_torn_tail_total").increment(1);
                Ok(s)
            });
            match verified {
                Ok(s) => {
                    if !s.dangling_intents.is_empty() {
                        tracing::warn!(
                            count = s.dangling_intents.len(),
                            seqs = ?s.dangling_intents.keys().collect::<Vec<_>>(),
                            "audit log has intents without an outcome: changes that may or may not have committed before a stop (ron-kms audit verify lists them)"
                        );
                    }
                    metrics::gauge!("kms_audit_dangling_intents")
                        .set(s.dangling_intents.len() as f64);
                    w.seq = s.last_seq;
                    w.prev = s.last_hash;
                    w.since_checkpoint = s.unsealed_tail;
                    let segs = chain::segments(dir).map_err(|e| e.to_string())?;
                    if let Some(last) = segs.last() {
                        w.index = last
                            .file_name()
                            .and_then(|n| n.to_str())
                            .and_then(|n| {
                                n.trim_start_matches("audit-")
                                    .trim_end_matches(".log")
                                    .parse()
                                    .ok()
                            })
                            .unwrap_or(1);
                    }
                }
                Err(e) => failure = Some(e),
            }
            w.dir = Some(dir.clone());
            if failure.is_none() && w.since_checkpoint > 0 {
                // sealing the tail a crash left behind
                w.checkpoint()?;
                w.commit(true)?;
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE_BOUND);
        metrics::gauge!("kms_audit_writer_failed").set(0.0);
        let writer_state = Arc::new(WriterState::default());
        w.check_space(&writer_state);
        let log = Arc::new(AuditLog {
            tx,
            failed: AtomicBool::new(failure.is_some()),
            integrity_failures: AtomicU64::new(u64::from(failure.is_some())),
            failure: Mutex::new(failure.clone()),
            writer: writer_state,
            memory,
            off: matches!(opts.sink, Sink::Off),
            input_key: opts.input_key.clone(),
            node: opts.node.clone(),
        });
        if let Some(f) = &failure {
            tracing::error!(failure = %f, "audit chain integrity check failed: writes are refused");
        }
        let broken = failure.is_some();
        if let (AuditSync::Write { interval }, Some(_)) = (opts.sync, &w.dir) {
            tracing::info!(
                interval_ms = interval.as_millis() as u64,
                "audit log durability: write (records reach the kernel before the answer and the disk within the interval; docs/audit.md)"
            );
            writer::Syncer::start(&w.syncer, interval, log.writer.clone());
        }
        tokio::spawn(run(w, rx, broken, log.writer.clone()));
        let ticker = log.tx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(CHECKPOINT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                // a full queue means the writer is busy and will look anyway
                match ticker.try_send(Msg::Tick) {
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                    _ => continue,
                }
            }
        });
        Ok(log)
    }

    /// `Err(reason)` while the chain is broken or the writer has failed
    /// (readiness).
    pub fn integrity(&self) -> Result<(), String> {
        if let Some(why) = self.writer_failure() {
            return Err(why);
        }
        if let Some((free, floor)) = self.low_space() {
            return Err(low_space_message(free, floor));
        }
        if self.failed.load(Ordering::Acquire) {
            Err(self
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default())
        } else {
            Ok(())
        }
    }

    /// Why the writer failed, once it has: nothing more is appended.
    pub fn writer_failure(&self) -> Option<String> {
        if !self.writer.failed.load(Ordering::Acquire) {
            return None;
        }
        self.writer
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `Some((free, floor))` while the log's file system is below its
    /// free-space floor.
    pub fn low_space(&self) -> Option<(u64, u64)> {
        *self
            .writer
            .low_space
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The node id its records carry.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The keyed hash a record carries for `input`.
    pub fn input_hmac(&self, input: &[u8]) -> [u8; 32] {
        self.input_key.hmac(input)
    }

    /// Make the writer's next commit fail this way (tests and drills).
    pub fn inject_writer_fault(&self, fault: WriterFault) {
        let v = match fault {
            WriterFault::Io => 1,
            WriterFault::Panic => 2,
        };
        self.writer.inject.store(v, Ordering::Release);
    }

    /// How many integrity failures were detected (start-up or writer).
    pub fn integrity_failures(&self) -> u64 {
        self.integrity_failures.load(Ordering::Relaxed)
    }

    /// Append a record and wait until its batch is durable. While the chain
    /// is broken nothing is appended and this returns `Ok(0)`: callers have
    /// refused writes already, and reads stay available. Once the writer
    /// has failed this is an error: a caller that gets it answers nothing
    /// that needed its record ([`Self::writer_failure`]).
    pub async fn append(&self, e: Event) -> Result<u64, String> {
        if let Some(why) = self.writer_failure() {
            return Err(format!("audit writer failed: {why}"));
        }
        if self.off || self.failed.load(Ordering::Acquire) {
            return Ok(0);
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Event(e, tx))
            .await
            .map_err(|_| "audit writer stopped".to_string())?;
        rx.await.map_err(|_| "audit writer stopped".to_string())?
    }

    /// Append several records (a batch RPC's items, in order) and wait until
    /// they are durable: one queue slot and one wake-up for all of them, and
    /// they land in the same group commit. Sequence numbers come back in
    /// order; while the chain is broken nothing is appended and they are 0.
    pub async fn append_many(&self, events: Vec<Event>) -> Result<Vec<u64>, String> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(why) = self.writer_failure() {
            return Err(format!("audit writer failed: {why}"));
        }
        if self.off || self.failed.load(Ordering::Acquire) {
            return Ok(vec![0; events.len()]);
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Events(events, tx))
            .await
            .map_err(|_| "audit writer stopped".to_string())?;
        rx.await.map_err(|_| "audit writer stopped".to_string())?
    }

    /// Seal the log with a final checkpoint and stop the writer.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The in-memory log (amnesia mode); empty for a file-backed log.
    pub fn memory_bytes(&self) -> Vec<u8> {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_write_starts_at_the_first_line_with_a_hole_or_an_incomplete_end() {
        let line = |n: usize| format!("{{\"seq\":{n},\"pad\":\"{}\"}}\n", "x".repeat(200));
        let mut records = Vec::new();
        while records.len() < 3 * SECTOR {
            records.extend_from_slice(line(records.len()).as_bytes());
        }
        assert_eq!(torn_start(&records), None, "complete lines, no zeros");
        assert_eq!(torn_start(b""), None);
        let cut = &records[..records.len() - 5];
        let last = cut.iter().rposition(|b| *b == b'\n').unwrap() + 1;
        assert_eq!(torn_start(cut), Some(last), "an incomplete last line");

        let mut holed = records.clone();
        holed[SECTOR..2 * SECTOR].fill(0);
        let first = holed[..SECTOR].iter().rposition(|b| *b == b'\n').unwrap() + 1;
        assert_eq!(torn_start(&holed), Some(first), "a sector never written");

        let mut from_line = records.clone();
        from_line[first..SECTOR].fill(0);
        assert_eq!(
            torn_start(&from_line),
            Some(first),
            "zeros from the batch's start"
        );

        let mut odd = records.clone();
        odd[SECTOR + 3..SECTOR + 9].fill(0);
        assert_eq!(torn_start(&odd), None, "zeros off the sector grain");
        let mut short = records.clone();
        short[SECTOR..SECTOR + 100].fill(0);
        assert_eq!(torn_start(&short), None, "a run that ends mid-sector");
    }
}
