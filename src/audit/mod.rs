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

use std::io::Write as _;
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
    pub input_sha256: Option<[u8; 32]>,
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

#[derive(Clone, Debug)]
pub struct Options {
    pub sink: Sink,
    /// Written into every record (`node`).
    pub node: String,
    pub checkpoint_interval: u64,
    pub max_file_bytes: u64,
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

/// Handle to the running log.
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    integrity_failures: AtomicU64,
    memory: Arc<Mutex<Vec<u8>>>,
    off: bool,
}

struct Writer {
    dir: Option<PathBuf>,
    file: Option<std::fs::File>,
    index: u32,
    /// Where the records of the current segment end (the next write's offset).
    file_bytes: u64,
    /// The segment's length: records plus the zero-filled stretch ahead.
    file_len: u64,
    memory: Arc<Mutex<Vec<u8>>>,
    seq: u64,
    prev: [u8; 32],
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// After the audit key could not sign (custody away), no checkpoint is
    /// tried before this instant.
    deferred_until: Option<Instant>,
    interval: u64,
    max_file_bytes: u64,
    signer: Signer,
    pending: Vec<u8>,
    node: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Write a small file, owner-only, and fsync it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())
}

fn segment_name(index: u32) -> String {
    format!("audit-{index:08}.log")
}

impl Writer {
    /// Chain one record, encoded straight into the pending batch from the
    /// borrowed fields (no per-record strings); `seq`, `node` and `prev`
    /// are filled in here.
    fn push(&mut self, body: BodyRef<'_>) -> u64 {
        self.seq += 1;
        let mut prev = [0u8; 64];
        let body = BodyRef {
            seq: self.seq,
            node: &self.node,
            prev: chain::hex32_in(&self.prev, &mut prev),
            ..body
        };
        let hash = chain::encode_into(&body, &self.prev, &mut self.pending);
        self.pending.push(b'\n');
        self.prev = hash;
        self.seq
    }

    fn checkpoint(&mut self) -> Result<(), String> {
        let seq = self.seq + 1;
        let sig = (self.signer)(&chain::checkpoint_message(seq, &self.prev))?;
        let sig = base64::engine::general_purpose::STANDARD.encode(sig);
        self.push(BodyRef {
            ts_ms: now_ms(),
            op: "checkpoint",
            sig: &sig,
            ..BodyRef::default()
        });
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// A checkpoint where one is due, unless signing failed a moment ago.
    /// When the audit key cannot sign (custody is away) the checkpoint is
    /// deferred: records are still hash-chained and made durable, requests
    /// that do not need custody go on, and the checkpoint is tried again
    /// after [`CHECKPOINT_EVERY`] (`kms_audit_checkpoint_deferred_total`).
    /// Returns whether a checkpoint was written.
    fn try_checkpoint(&mut self) -> bool {
        if self.deferred_until.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        match self.checkpoint() {
            Ok(()) => {
                if self.deferred_until.take().is_some() {
                    tracing::info!("audit checkpoint written after a deferral");
                }
                true
            }
            Err(e) => {
                if self.deferred_until.is_none() {
                    tracing::warn!(error = %e, unsealed = self.since_checkpoint, "audit checkpoint deferred: the audit key could not sign");
                }
                self.deferred_until = Some(Instant::now() + CHECKPOINT_EVERY);
                metrics::counter!("kms_audit_checkpoint_deferred_total").increment(1);
                false
            }
        }
    }

    fn checkpoint_due(&self) -> bool {
        self.since_checkpoint > 0
            && (self.since_checkpoint >= self.interval
                || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
            && self.deferred_until.is_none_or(|t| Instant::now() >= t)
    }

    /// Open segment `self.index` (creating it) and find where its records
    /// end: before the zero tail a crash can leave behind.
    fn open_segment(&mut self, dir: &Path) -> Result<(), String> {
        let path = dir.join(segment_name(self.index));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        let end = if len == 0 {
            0
        } else {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            chain::content(&bytes).len() as u64
        };
        self.file_len = len;
        self.file_bytes = end;
        self.file = Some(f);
        Ok(())
    }

    /// Cut the zero tail off the current segment (rotation, clean close), so
    /// a finished segment holds only its records.
    fn finish_segment(&mut self) -> Result<(), String> {
        if let Some(f) = self.file.take() {
            if self.file_len > self.file_bytes {
                f.set_len(self.file_bytes).map_err(|e| e.to_string())?;
                f.sync_all().map_err(|e| e.to_string())?;
            }
            self.file_len = self.file_bytes;
        }
        Ok(())
    }

    /// Write what is pending with one fsync; rotate the segment by size.
    fn commit(&mut self, sealed: bool) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some(dir) = self.dir.clone() else {
            self.memory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&self.pending);
            self.pending.clear();
            return Ok(());
        };
        if self.file.is_none() {
            self.open_segment(&dir)?;
        } else if self.file_bytes >= self.max_file_bytes {
            self.finish_segment()?;
            self.index += 1;
            self.open_segment(&dir)?;
        }
        let end = self.file_bytes + self.pending.len() as u64;
        let f = self.file.as_mut().expect("opened above");
        if end > self.file_len {
            // zero-fill the next stretch; this commit's fsync covers it
            let to = (end + ZERO_AHEAD).next_multiple_of(4096);
            let zeros = [0u8; 64 * 1024];
            let mut at = self.file_len.max(end);
            while at < to {
                let n = (to - at).min(zeros.len() as u64) as usize;
                f.write_all_at(&zeros[..n], at).map_err(|e| e.to_string())?;
                at += n as u64;
            }
            self.file_len = to;
        }
        f.write_all_at(&self.pending, self.file_bytes)
            .map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        self.file_bytes = end;
        self.pending.clear();
        if sealed {
            let head = format!("{} {}\n", self.seq, hex::encode(self.prev));
            let tmp = dir.join(format!("{HEAD_FILE}.tmp"));
            write_private(&tmp, head.as_bytes())?;
            std::fs::rename(&tmp, dir.join(HEAD_FILE)).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn write_batch(&mut self, events: Vec<Event>) -> Result<Vec<u64>, String> {
        let mut seqs = Vec::with_capacity(events.len());
        for e in &events {
            let mut input = [0u8; 64];
            let input_sha256 = match &e.input_sha256 {
                Some(h) => chain::hex32_in(h, &mut input),
                None => "",
            };
            seqs.push(self.push(BodyRef {
                ts_ms: now_ms(),
                op: e.op,
                tenant: &e.tenant,
                principal: &e.principal,
                kid: &e.kid,
                alg: &e.alg,
                result: &e.result,
                reason: &e.reason,
                request_id: &e.request_id,
                input_sha256,
                ..BodyRef::default()
            }));
            self.since_checkpoint += 1;
            if self.since_checkpoint >= self.interval {
                self.try_checkpoint();
            }
        }
        let sealed = self.checkpoint_due() && self.try_checkpoint();
        self.commit(sealed || self.since_checkpoint == 0)?;
        Ok(seqs)
    }
}

/// Verify an audit dir against the public key stored beside it.
pub fn verify_dir(dir: &Path, key: Option<&[u8]>) -> Result<chain::Summary, String> {
    let key = match key {
        Some(k) => k.to_vec(),
        None => read_key_file(&dir.join(KEY_FILE))?,
    };
    // The head first: the writer renames it into place only after the
    // records it names are durable, so on a live log the segments read
    // after it hold at least those records.
    let head = std::fs::read_to_string(dir.join(HEAD_FILE));
    let files = chain::segments(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let s = chain::verify_files(&files, &key).map_err(|e| e.to_string())?;
    check_head(dir, head, s)
}

/// The records the log holds must reach the head sealed at the last
/// checkpoint (`audit.head`), and end in the same record when they end there.
fn check_head(
    dir: &Path,
    head: std::io::Result<String>,
    s: chain::Summary,
) -> Result<chain::Summary, String> {
    if let Ok(head) = head {
        let mut parts = head.split_whitespace();
        let seq: u64 = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        let hash = parts.next().unwrap_or("");
        if seq > s.last_seq {
            return Err(format!(
                "{}: the log ends at record {} but was sealed up to record {seq}: records were removed from the end",
                dir.display(),
                s.last_seq
            ));
        }
        if seq > 0 && seq == s.last_seq && hash != hex::encode(s.last_hash) {
            return Err(format!(
                "{}: record {seq} differs from the sealed head",
                dir.display()
            ));
        }
    }
    Ok(s)
}

/// A write a crash tore: the last segment ends in an incomplete line.
struct TornTail {
    segment: PathBuf,
    /// Bytes of the segment that hold complete lines.
    keep: usize,
    torn: Vec<u8>,
}

/// Device sectors are at least this large: a write that a power cut tore
/// leaves whole sectors unwritten, so the zeros it leaves inside a commit
/// start and end on this grain (or where the commit started).
const SECTOR: usize = 512;

/// Where the torn write in a segment's records begins, if they end in one:
/// the start of the first line holding a NUL byte, or else of an incomplete
/// last line. A record never holds a NUL (JSON escapes it), so a NUL there
/// means bytes that were never written: the zero tail shows through where a
/// crash persisted the commit's sectors out of order. Each run of NULs must
/// start where that line starts or on a sector boundary, and end on one;
/// NULs anywhere else are damage, not a torn write.
fn torn_start(content: &[u8]) -> Option<usize> {
    let line_start = |at: usize| {
        content[..at]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1)
    };
    let keep = match content.iter().position(|b| *b == 0) {
        Some(nul) => line_start(nul),
        None if content.is_empty() || content.ends_with(b"\n") => return None,
        None => line_start(content.len()),
    };
    let mut at = keep;
    while let Some(off) = content[at..].iter().position(|b| *b == 0) {
        let start = at + off;
        let len = content[start..].iter().position(|b| *b != 0)?;
        let end = start + len;
        if (start != keep && start % SECTOR != 0) || end % SECTOR != 0 {
            return None;
        }
        at = end;
    }
    Some(keep)
}

/// Whether the log fails verification only because a crash tore its last
/// commit: a power cut (or kernel crash) in the middle of a commit can leave
/// part of a batch on disk — a prefix (the last line incomplete), or, when
/// the device persisted the batch's sectors out of order, a mix of its bytes
/// and the zeros they were to overwrite ([`torn_start`]). No caller was
/// answered for any record of that batch (answers wait for its fdatasync,
/// and a batch is written only after the one before it is durable), so the
/// torn bytes are an unacknowledged write, not lost records. Everything
/// before them must verify and reach the sealed head, or this is not a torn
/// write and the log stays broken. A complete line that fails (a flipped
/// byte), a missing record or a cut into sealed records is never taken for a
/// torn write.
fn torn_tail(dir: &Path, key: &[u8]) -> Option<(TornTail, chain::Summary)> {
    let head = std::fs::read_to_string(dir.join(HEAD_FILE));
    let files = chain::segments(dir).ok()?;
    let (last, earlier) = files.split_last()?;
    let bytes = std::fs::read(last).ok()?;
    let content = chain::content(&bytes);
    let keep = torn_start(content)?;
    let mut s = chain::verify_files(earlier, key).ok()?;
    chain::verify_bytes(&last.display().to_string(), &content[..keep], key, &mut s).ok()?;
    let s = check_head(dir, head, s).ok()?;
    Some((
        TornTail {
            segment: last.clone(),
            keep,
            torn: content[keep..].to_vec(),
        },
        s,
    ))
}

/// Move a torn tail out of the segment: its bytes go to
/// `audit-NNNNNNNN.torn-<unix ms>` beside it (owner-only, kept for the
/// operator; `audit verify` does not read it), and the segment is cut back
/// to its last complete line.
fn set_aside(dir: &Path, t: &TornTail) -> Result<PathBuf, String> {
    let stem = t
        .segment
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or("audit");
    let aside = dir.join(format!("{stem}.torn-{}", now_ms()));
    write_private(&aside, &t.torn)?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&t.segment)
        .map_err(|e| format!("{}: {e}", t.segment.display()))?;
    f.set_len(t.keep as u64).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(aside)
}

/// [`verify_dir`] for an operator: when the log fails only because a crash
/// tore its last commit, the error says so and what the next start does.
pub fn verify_dir_explained(dir: &Path, key: Option<&[u8]>) -> Result<chain::Summary, String> {
    verify_dir(dir, key).map_err(|e| {
        let key = match key {
            Some(k) => k.to_vec(),
            None => match read_key_file(&dir.join(KEY_FILE)) {
                Ok(k) => k,
                Err(_) => return e,
            },
        };
        match torn_tail(dir, &key) {
            Some((t, s)) => format!(
                "{e}\n  a torn write: the last {} bytes of {} are a commit a crash interrupted (never acknowledged to any caller); the {} records before them verify. The next start sets those bytes aside and seals the log.",
                t.torn.len(),
                t.segment.display(),
                s.records
            ),
            None => e,
        }
    })
}

/// `audit-key.pub`: the raw Ed25519 public key in hex.
pub fn read_key_file(p: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    hex::decode(text.trim())
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| format!("{}: not a hex Ed25519 public key", p.display()))
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
        };
        if let Sink::Dir(dir) = &opts.sink {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            let key_file = dir.join(KEY_FILE);
            if !key_file.exists() {
                write_private(
                    &key_file,
                    format!("{}\n", hex::encode(public_key)).as_bytes(),
                )?;
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
        let log = Arc::new(AuditLog {
            tx,
            failed: AtomicBool::new(failure.is_some()),
            integrity_failures: AtomicU64::new(u64::from(failure.is_some())),
            failure: Mutex::new(failure.clone()),
            memory,
            off: matches!(opts.sink, Sink::Off),
        });
        if let Some(f) = &failure {
            tracing::error!(failure = %f, "audit chain integrity check failed: writes are refused");
        }
        let broken = failure.is_some();
        tokio::spawn(run(w, rx, broken));
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

    /// `Err(reason)` while the chain is broken.
    pub fn integrity(&self) -> Result<(), String> {
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

    /// How many integrity failures were detected (start-up or writer).
    pub fn integrity_failures(&self) -> u64 {
        self.integrity_failures.load(Ordering::Relaxed)
    }

    /// Append a record and wait until its batch is durable. While the chain
    /// is broken nothing is appended and this returns `Ok(0)`: callers have
    /// refused writes already, and reads stay available.
    pub async fn append(&self, e: Event) -> Result<u64, String> {
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

/// How many records a message carries.
fn records(m: &Msg) -> usize {
    match m {
        Msg::Event(..) => 1,
        Msg::Events(e, _) => e.len(),
        Msg::Tick | Msg::Close(_) => 0,
    }
}

/// Take what is queued until the batch holds [`BATCH_MAX`] records;
/// `held` counts the records gathered so far.
fn drain(rx: &mut mpsc::Receiver<Msg>, msgs: &mut Vec<Msg>, held: &mut usize) {
    while *held < BATCH_MAX {
        match rx.try_recv() {
            Ok(m) => {
                *held += records(&m);
                msgs.push(m);
            }
            Err(_) => break,
        }
    }
}

/// Who waits for which records of a batch.
enum Waiter {
    One(oneshot::Sender<Result<u64, String>>),
    Many(usize, oneshot::Sender<Result<Vec<u64>, String>>),
}

impl Waiter {
    fn fail(self, why: &str) {
        match self {
            Waiter::One(d) => {
                let _ = d.send(Err(why.to_string()));
            }
            Waiter::Many(_, d) => {
                let _ = d.send(Err(why.to_string()));
            }
        }
    }
}

/// The writer: a task on the runtime, fed by the bounded queue. It waits for
/// the first message, takes everything else queued (up to [`BATCH_MAX`]
/// records), then encodes, writes and syncs the batch once on a blocking
/// thread and answers the whole batch. It never waits for more records: the
/// next batch forms while this one's fsync runs, so under load each commit
/// covers what arrived during the one before (the fsync rate is at most one
/// per commit latency), and a lone request is committed at once. Waiting for
/// a fuller batch (a 2 ms pace, until then) held the callers of a closed loop
/// in step and left the CPUs idle: removing it took 64 callers from ~20k to
/// ~22k signs/s (PERFORMANCE.md, "Audit commits without pacing").
///
/// Waking the batch's callers from a runtime task puts them on that worker's
/// run queue: one cross-thread wake-up per batch (the blocking write's
/// return) instead of one per record. A ticker task sends `Tick` every
/// second so checkpoints happen on time even when traffic stops.
async fn run(mut w: Writer, mut rx: mpsc::Receiver<Msg>, broken: bool) {
    let in_memory = w.dir.is_none();
    loop {
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut held = records(&first);
        let mut msgs = vec![first];
        drain(&mut rx, &mut msgs, &mut held);
        metrics::histogram!("kms_audit_batch_records").record(held as f64);
        let mut events = Vec::with_capacity(held);
        let mut waiters = Vec::with_capacity(msgs.len());
        let mut closing = None;
        for m in msgs {
            match m {
                Msg::Event(e, done) => {
                    events.push(e);
                    waiters.push(Waiter::One(done));
                }
                Msg::Events(es, done) => {
                    waiters.push(Waiter::Many(es.len(), done));
                    events.extend(es);
                }
                Msg::Tick => {}
                Msg::Close(done) => closing = Some(done),
            }
        }
        if broken {
            for d in waiters {
                d.fail("audit chain is broken");
            }
        } else if !events.is_empty()
            || w.checkpoint_due()
            || (closing.is_some() && w.since_checkpoint > 0)
        {
            let closing_now = closing.is_some();
            let work = move |mut w: Writer| {
                let mut res = w.write_batch(events);
                if closing_now && w.since_checkpoint > 0 {
                    res = match res {
                        // when custody is away the tail stays unsealed; the
                        // next start seals it
                        Ok(seqs) if w.try_checkpoint() => w.commit(true).map(|_| seqs),
                        e => e,
                    };
                }
                (w, res)
            };
            let res;
            if in_memory {
                (w, res) = work(w);
            } else {
                match tokio::task::spawn_blocking(move || work(w)).await {
                    Ok(done) => (w, res) = done,
                    Err(e) => {
                        // The writer itself is gone with the panicked thread:
                        // nothing more can be appended.
                        tracing::error!(error = %e, "audit writer panicked");
                        for d in waiters {
                            d.fail("audit writer stopped");
                        }
                        return;
                    }
                }
            }
            match res {
                Ok(seqs) => {
                    let mut seqs = seqs.into_iter();
                    for w in waiters {
                        match w {
                            Waiter::One(d) => {
                                let _ = d.send(seqs.next().ok_or_else(|| {
                                    "audit writer lost a sequence number".to_string()
                                }));
                            }
                            Waiter::Many(n, d) => {
                                let mine: Vec<u64> = seqs.by_ref().take(n).collect();
                                let _ = d.send(if mine.len() == n {
                                    Ok(mine)
                                } else {
                                    Err("audit writer lost a sequence number".to_string())
                                });
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit write failed");
                    for d in waiters {
                        d.fail(&e);
                    }
                }
            }
        }
        if let Some(done) = closing {
            if !in_memory {
                let finished = tokio::task::spawn_blocking(move || w.finish_segment()).await;
                if let Ok(Err(e)) = finished {
                    tracing::warn!(error = %e, "audit segment's zero tail not cut off at close");
                }
            }
            let _ = done.send(());
            break;
        }
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
