//! The one TPM: a single ESAPI context with the storage root key loaded,
//! the bounded queue in front of it, and reconnecting with backoff.
//!
//! The TPM executes one command at a time, so callers take turns: at most
//! `queue_depth` wait at once (past that a call fails at once with
//! [`BackendError::Busy`]), and a call that waits longer than
//! [`QUEUE_WAIT`] fails with `Unavailable`. A TSS command that fails is
//! followed by a cheap probe (`TPM2_GetRandom`) and translated by
//! [`super::error::translate`]; when the TPM does not answer, the context is
//! dropped and the next call reconnects with exponential backoff and jitter
//! (`backend_reconnects_total`), re-creating the SRK. This module must not
//! know what a key is for: it runs closures on the context and keeps it
//! alive.
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::UnMarshall;
use tss_esapi::{Context, TctiNameConf};

use super::error::{translate, tss_err, unavailable, Ctx, Fail};
use super::handle::Blob;
use super::templates::srk_template;
use crate::backend::{jittered, BackendError};

/// How long a call waits for the TPM before giving up.
pub const QUEUE_WAIT: Duration = Duration::from_secs(5);
const RECONNECT_BASE: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// One open ESAPI context with the SRK loaded.
pub(super) struct Conn {
    pub(super) ctx: Context,
    pub(super) srk: KeyHandle,
}

/// Open a context on `tcti` and create the SRK.
fn connect(tcti: &str) -> Result<Conn, String> {
    let conf = TctiNameConf::from_str(tcti).map_err(|e| tss_err("TCTI", e))?;
    let mut ctx = Context::new(conf).map_err(|e| tss_err("connect", e))?;
    // every object ron-kms creates has an empty authValue: a password
    // session with the empty password authorises it
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    let template = srk_template().map_err(|e| tss_err("SRK template", e))?;
    let srk = ctx
        .create_primary(Hierarchy::Owner, template, None, None, None, None)
        .map_err(|e| tss_err("create SRK", e))?
        .key_handle;
    Ok(Conn { ctx, srk })
}

/// Load `blob` under the SRK, run `f` with it, flush it (also on failure:
/// a TPM has only a few transient object slots).
pub(super) fn with_loaded<T>(
    conn: &mut Conn,
    blob: &Blob<'_>,
    f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, Fail>,
) -> Result<T, Fail> {
    let public = Public::unmarshall(blob.public)
        .map_err(|_| Fail::Backend(BackendError::Sealed("malformed tpm public area")))?;
    let private = Private::try_from(blob.private.to_vec())
        .map_err(|_| Fail::Backend(BackendError::Sealed("malformed tpm private area")))?;
    let h = conn.ctx.load(conn.srk, private, public).ctx("TPM2_Load")?;
    let r = f(&mut conn.ctx, h);
    let flushed = conn.ctx.flush_context(h.into()).ctx("TPM2_FlushContext");
    let v = r?;
    flushed?;
    Ok(v)
}

struct Slot {
    conn: Option<Conn>,
    /// A caller holds the device (the context may be out of `conn`).
    busy: bool,
    /// When the next reconnect may be tried, and the backoff after it.
    next: Instant,
    backoff: Duration,
}

/// The TPM and the callers queued for it.
pub(super) struct Device {
    tcti: String,
    queue_depth: usize,
    slot: Mutex<Slot>,
    freed: Condvar,
    waiting: AtomicUsize,
}

/// A caller's turn at the TPM; gives the device back on drop.
struct Turn<'a> {
    d: &'a Device,
    conn: Option<Conn>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut slot = self.d.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.busy = false;
        if slot.conn.is_none() {
            slot.conn = self.conn.take();
        }
        drop(slot);
        self.d.freed.notify_one();
    }
}

impl Device {
    /// Connect and create the SRK; a failure is a start-up error naming its
    /// cause.
    pub(super) fn open(tcti: String, queue_depth: usize) -> Result<Self, String> {
        let conn = connect(&tcti)?;
        Ok(Device {
            tcti,
            queue_depth: queue_depth.max(1),
            slot: Mutex::new(Slot {
                conn: Some(conn),
                busy: false,
                next: Instant::now(),
                backoff: RECONNECT_BASE,
            }),
            freed: Condvar::new(),
            waiting: AtomicUsize::new(0),
        })
    }

    pub(super) fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Whether a caller holds the device now.
    pub(super) fn busy(&self) -> bool {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).busy
    }

    /// Wait (bounded) for the device, then make sure it has a context,
    /// reconnecting with backoff when it has none.
    fn turn(&self) -> Result<Turn<'_>, BackendError> {
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _leave = Leave(&self.waiting);
        if queued >= self.queue_depth {
            crate::telemetry::reject("overload");
            return Err(BackendError::Busy(format!(
                "tpm: {queued} calls already wait for the device (queue depth {})",
                self.queue_depth
            )));
        }
        let deadline = Instant::now() + QUEUE_WAIT;
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        while slot.busy {
            let now = Instant::now();
            if now >= deadline {
                return Err(unavailable(format!(
                    "waited {} ms for the device",
                    QUEUE_WAIT.as_millis()
                )));
            }
            slot = self
                .freed
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        slot.busy = true;
        let conn = slot.conn.take();
        let mut turn = Turn { d: self, conn };
        if turn.conn.is_some() {
            drop(slot);
            return Ok(turn);
        }
        let now = Instant::now();
        let next = slot.next;
        // the guard goes before the turn: dropping a turn takes the lock
        drop(slot);
        if now < next {
            return Err(unavailable(format!(
                "TPM unavailable; next reconnect attempt in {} ms",
                (next - now).as_millis()
            )));
        }
        let r = connect(&self.tcti);
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Ok(c) => {
                slot.backoff = RECONNECT_BASE;
                slot.next = Instant::now();
                turn.conn = Some(c);
                metrics::counter!("backend_reconnects_total").increment(1);
                tracing::info!(backend = "tpm", "reconnected to the TPM");
                Ok(turn)
            }
            Err(msg) => {
                let wait = jittered(slot.backoff);
                slot.next = Instant::now() + wait;
                slot.backoff = (slot.backoff * 2).min(RECONNECT_MAX);
                drop(slot);
                tracing::warn!(backend = "tpm", error = %msg, retry_in_ms = wait.as_millis() as u64, "reconnect failed");
                Err(unavailable(msg))
            }
        }
    }

    /// Run `f` with the device. A TPM command that fails is followed by a
    /// probe; if the TPM does not answer it, the context is dropped (the
    /// next call reconnects). Either way the failure is translated once.
    pub(super) fn run<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, Fail>,
    ) -> Result<T, BackendError> {
        let mut turn = self.turn()?;
        let conn = turn.conn.as_mut().expect("a turn holds a context");
        match f(conn) {
            Ok(v) => Ok(v),
            Err(Fail::Backend(e)) => Err(e),
            Err(Fail::Tss(what, e)) => {
                let answers = conn
                    .ctx
                    .execute_without_session(|c| c.get_random(1))
                    .is_ok();
                if !answers {
                    // drop the context now, while we hold the device
                    turn.conn = None;
                    tracing::warn!(backend = "tpm", error = %e, "TPM connection lost; will reconnect");
                }
                Err(translate(&what, &e, answers))
            }
        }
    }
}
