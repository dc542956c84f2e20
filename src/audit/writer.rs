//! The audit writer: one task that takes every queued record, encodes
//! and chains them into the pending batch, writes and syncs the batch once
//! on a blocking thread, seals checkpoints, rotates segments, and answers
//! the batch's callers. Owns the active segment file; nothing else writes it.
use super::*;

pub(super) struct Writer {
    pub(super) dir: Option<PathBuf>,
    pub(super) file: Option<std::fs::File>,
    pub(super) index: u32,
    /// Where the records of the current segment end (the next write's offset).
    pub(super) file_bytes: u64,
    /// The segment's length: records plus the zero-filled stretch ahead.
    pub(super) file_len: u64,
    pub(super) memory: Arc<Mutex<Vec<u8>>>,
    pub(super) seq: u64,
    pub(super) prev: [u8; 32],
    pub(super) since_checkpoint: u64,
    pub(super) last_checkpoint: Instant,
    /// After the audit key could not sign (custody away), no checkpoint is
    /// tried before this instant.
    pub(super) deferred_until: Option<Instant>,
    pub(super) interval: u64,
    pub(super) max_file_bytes: u64,
    pub(super) signer: Signer,
    pub(super) pending: Vec<u8>,
    pub(super) node: String,
    pub(super) min_free_bytes: u64,
    /// When free space was last looked at.
    pub(super) space_checked: Option<Instant>,
    pub(super) sync: AuditSync,
    /// The background fdatasync of `write` mode (unused with `fsync`).
    pub(super) syncer: Arc<Syncer>,
}

/// `KMS_AUDIT_SYNC=write`'s background sync: a thread that fdatasyncs the
/// active segment (through its own handle on the file) at least every
/// interval while something was written since the last sync. A failed sync
/// fails the writer like a failed write: records the kernel had may not be
/// on the disk.
#[derive(Default)]
pub(super) struct Syncer {
    file: Mutex<Option<std::fs::File>>,
    dirty: std::sync::atomic::AtomicBool,
}

impl Syncer {
    /// The thread; it ends once the writer (which holds the other `Arc`) is
    /// gone.
    pub(super) fn start(this: &Arc<Syncer>, interval: Duration, state: Arc<WriterState>) {
        let weak = Arc::downgrade(this);
        let on_thread = state.clone();
        let spawned = std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let Some(s) = weak.upgrade() else { break };
                if let Err(e) = s.sync() {
                    on_thread.fail(format!("a background sync failed: {e}"));
                    break;
                }
            });
        if let Err(e) = spawned {
            state.fail(format!("no background sync thread: {e}"));
        }
    }

    /// fdatasync what was written since the last sync, if anything.
    fn sync(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        match f.as_ref() {
            Some(f) => {
                let t = Instant::now();
                let r = f.sync_data();
                metrics::histogram!("kms_audit_background_sync_seconds")
                    .record(t.elapsed().as_secs_f64());
                r
            }
            None => Ok(()),
        }
    }

    /// Sync through a handle of its own on the new active segment; without
    /// one the records could not be synced in the background.
    fn track(&self, f: &std::fs::File) -> Result<(), String> {
        let clone = f
            .try_clone()
            .map_err(|e| format!("no handle for the background sync: {e}"))?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(clone);
        Ok(())
    }
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) fn segment_name(index: u32) -> String {
    format!("audit-{index:08}.log")
}

impl Writer {
    /// Look at the file system's free space against the floor (at most
    /// every [`SPACE_CHECK_EVERY`]). A failed `statvfs` is logged and
    /// treated as enough space: the writes themselves will tell.
    pub(super) fn check_space(&mut self, state: &WriterState) {
        let Some(dir) = &self.dir else { return };
        if self.min_free_bytes == 0
            || self
                .space_checked
                .is_some_and(|t| t.elapsed() < SPACE_CHECK_EVERY)
        {
            return;
        }
        self.space_checked = Some(Instant::now());
        match free_bytes(dir) {
            Ok(free) => state.space(free, self.min_free_bytes),
            Err(e) => tracing::warn!(error = %e, "audit log: free space unknown"),
        }
    }

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

    pub(super) fn checkpoint(&mut self) -> Result<(), String> {
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
        if matches!(self.sync, AuditSync::Write { .. }) {
            self.syncer.track(&f)?;
        }
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
            } else if matches!(self.sync, AuditSync::Write { .. }) {
                // what `write` mode left to the background is synced now
                f.sync_data().map_err(|e| e.to_string())?;
            }
            self.file_len = self.file_bytes;
        }
        Ok(())
    }

    /// Write what is pending with one fsync (`write` mode: the background
    /// syncs it, a checkpoint at once); rotate the segment by size.
    pub(super) fn commit(&mut self, sealed: bool) -> Result<(), String> {
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
        match self.sync {
            AuditSync::Fsync => f.sync_data().map_err(|e| e.to_string())?,
            // a checkpoint is synced before the head file names it, so the
            // head never points past what is on the disk
            AuditSync::Write { .. } if sealed => f.sync_data().map_err(|e| e.to_string())?,
            AuditSync::Write { .. } => self
                .syncer
                .dirty
                .store(true, std::sync::atomic::Ordering::Release),
        }
        self.file_bytes = end;
        self.pending.clear();
        if sealed {
            let head = format!("{} {}\n", self.seq, hex::encode(self.prev));
            // temporary file, fsync, rename, directory fsync: a power cut
            // leaves the old head or the new one, never none
            crate::secret_file::write_private(&dir.join(HEAD_FILE), head.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn write_batch(&mut self, events: Vec<Event>) -> Result<Vec<u64>, String> {
        let mut seqs = Vec::with_capacity(events.len());
        for e in &events {
            let mut input = [0u8; 64];
            let input_hmac = match &e.input_hmac {
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
                input_hmac,
                intent: e.intent,
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

/// How many records a message carries.
pub(super) fn records(m: &Msg) -> usize {
    match m {
        Msg::Event(..) => 1,
        Msg::Events(e, _) => e.len(),
        Msg::Tick | Msg::Close(_) => 0,
    }
}

/// Take what is queued until the batch holds [`BATCH_MAX`] records;
/// `held` counts the records gathered so far.
pub(super) fn drain(rx: &mut mpsc::Receiver<Msg>, msgs: &mut Vec<Msg>, held: &mut usize) {
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
pub(super) enum Waiter {
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
pub(super) async fn run(
    mut w: Writer,
    mut rx: mpsc::Receiver<Msg>,
    broken: bool,
    state: Arc<WriterState>,
) {
    let in_memory = w.dir.is_none();
    loop {
        let Some(first) = rx.recv().await else {
            break;
        };
        if !in_memory {
            w.check_space(&state);
        }
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
            let injected = state.take_injected();
            let work = move |mut w: Writer| {
                let mut res = match injected {
                    Some(WriterFault::Panic) => panic!("injected audit writer fault"),
                    Some(WriterFault::Io) => Err("injected I/O error".to_string()),
                    None => w.write_batch(events),
                };
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
            let done = if in_memory {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || work(w)))
                    .map_err(|_| "a panic".to_string())
            } else {
                tokio::task::spawn_blocking(move || work(w))
                    .await
                    .map_err(|e| e.to_string())
            };
            let res;
            match done {
                Ok(d) => (w, res) = d,
                Err(e) => {
                    // The writer itself is gone with the panicked thread:
                    // nothing more can be appended.
                    state.fail(format!("the writer panicked: {e}"));
                    for d in waiters {
                        d.fail("audit writer stopped");
                    }
                    return;
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
                    state.fail(format!("a write failed: {e}"));
                    for d in waiters {
                        d.fail(&e);
                    }
                    // nothing after a record that could not be written
                    if let Some(done) = closing {
                        let _ = done.send(());
                    }
                    return;
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
