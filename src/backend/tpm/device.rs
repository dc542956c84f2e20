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
//! (`backend_reconnects_total`), re-creating the SRK. Every connect reads
//! the TPM's identity ([`Identity`]: EK, SRK, AK) and refuses a TPM that
//! is not the pinned one, then starts the connection's salted session
//! ([`super::session`]). This module must not know what a key is for: it
//! runs closures on the context and keeps it alive.
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tss_esapi::abstraction::{ek, AsymmetricAlgorithmSelection};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, CreatePrimaryKeyResult, Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, TctiNameConf};

use super::ekcert::{EkCa, EK_KINDS};
use super::error::{translate, tss_err, unavailable, Ctx, Fail};
use super::handle::Blob;
use super::identity::Identity;
use super::session::{self, Params};
use super::templates::{ak_template, srk_template};
use crate::backend::{jittered, BackendError};

/// How long a call waits for the TPM before giving up.
pub const QUEUE_WAIT: Duration = Duration::from_secs(5);
const RECONNECT_BASE: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// One open ESAPI context with the SRK loaded and the session started.
pub(super) struct Conn {
    pub(super) ctx: Context,
    pub(super) srk: KeyHandle,
    /// The salted, parameter-encrypting HMAC session every authorized
    /// command runs in (also set as the context's session 1).
    pub(super) session: AuthSession,
    /// What this TPM presented on connect.
    pub(super) identity: Identity,
}

/// The attestation key: a primary in the endorsement hierarchy from a
/// fixed template, so the same key on every call.
pub(super) fn create_ak(conn: &mut Conn) -> Result<CreatePrimaryKeyResult, Fail> {
    session::params(&mut conn.ctx, conn.session, Params::Both).ctx("session attributes")?;
    conn.ctx
        .create_primary(
            Hierarchy::Endorsement,
            ak_template().ctx("AK template")?,
            None,
            None,
            None,
            None,
        )
        .ctx("create AK")
}

/// The endorsement key to salt the session to, loaded, and its public
/// area: with `ek_ca`, the first EK whose certificate verifies under it
/// ([`EK_KINDS`] order); else the TCG default ECC P-256 EK.
fn endorsement_key(ctx: &mut Context, ek_ca: Option<&EkCa>) -> Result<(KeyHandle, Public), String> {
    let create = |ctx: &mut Context, kind| -> Result<(KeyHandle, Public), String> {
        let h = ctx
            .execute_without_session(|c| ek::create_ek_object_2(c, kind, None))
            .map_err(|e| tss_err("create EK", e))?;
        // ReadPublic has no parameter to encrypt: no session
        match ctx.execute_without_session(|c| c.read_public(h)) {
            Ok((public, _, _)) => Ok((h, public)),
            Err(e) => {
                let _ = ctx.flush_context(h.into());
                Err(tss_err("read EK", e))
            }
        }
    };
    let Some(ca) = ek_ca else {
        return create(ctx, AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256));
    };
    let mut why = Vec::new();
    for (kind, name) in EK_KINDS {
        let Ok(cert) = ctx.execute_without_session(|c| ek::retrieve_ek_pubcert(c, kind)) else {
            why.push(format!("{name}: no certificate"));
            continue;
        };
        let (h, public) = create(ctx, kind)?;
        match ca.verify(&cert, &public) {
            Ok(()) => {
                tracing::info!(
                    backend = "tpm",
                    ek = name,
                    ca = %ca.path().display(),
                    "the TPM's endorsement-key certificate verifies"
                );
                return Ok((h, public));
            }
            Err(e) => {
                let _ = ctx.flush_context(h.into());
                why.push(format!("{name}: {e}"));
            }
        }
    }
    Err(format!(
        "no endorsement-key certificate on this TPM verifies under KMS_TPM_EK_CA_FILE {}: {}",
        ca.path().display(),
        why.join("; ")
    ))
}

/// Open a context on `tcti`, take the endorsement key (certified under
/// `ek_ca` when there is one), start the session salted to it, and create
/// the SRK and AK in that session, so their public areas come from the TPM
/// that holds the EK.
fn connect(tcti: &str, ek_ca: Option<&EkCa>) -> Result<Conn, String> {
    let conf = TctiNameConf::from_str(tcti).map_err(|e| tss_err("TCTI", e))?;
    let mut ctx = Context::new(conf).map_err(|e| tss_err("connect", e))?;
    let (ek, ek_public) = endorsement_key(&mut ctx, ek_ca)?;
    let session = session::start(&mut ctx, ek);
    // the session outlives its salt key: the EK is needed only to start it
    let _ = ctx.flush_context(ek.into());
    let session = session.map_err(|e| tss_err("start session", e))?;
    ctx.set_sessions((Some(session), None, None));
    let ek_public = ek_public.marshall().map_err(|e| tss_err("marshal EK", e))?;
    session::params(&mut ctx, session, Params::Both).map_err(|e| tss_err("session", e))?;
    let template = srk_template().map_err(|e| tss_err("SRK template", e))?;
    let srk = ctx
        .create_primary(Hierarchy::Owner, template, None, None, None, None)
        .map_err(|e| tss_err("create SRK", e))?;
    let srk_public = srk
        .out_public
        .marshall()
        .map_err(|e| tss_err("marshal SRK", e))?;
    let mut conn = Conn {
        ctx,
        srk: srk.key_handle,
        session,
        identity: Identity {
            ek: ek_public,
            srk: srk_public,
            ak: Vec::new(),
        },
    };
    let ak = create_ak(&mut conn).map_err(|e| e.message())?;
    let _ = conn.ctx.flush_context(ak.key_handle.into());
    conn.identity.ak = ak
        .out_public
        .marshall()
        .map_err(|e| tss_err("marshal AK", e))?;
    Ok(conn)
}

impl Conn {
    /// Replace the session (after a failed command: the TPM may have
    /// dropped it).
    fn renew_session(&mut self) -> Result<(), String> {
        let _ = self
            .ctx
            .flush_context(ObjectHandle::from(SessionHandle::from(self.session)));
        // salted to the SRK now: its public area was checked against the
        // pin (or came from the EK-salted session) on connect
        self.session =
            session::start(&mut self.ctx, self.srk).map_err(|e| tss_err("start session", e))?;
        self.ctx.set_sessions((Some(self.session), None, None));
        Ok(())
    }
}

/// Load `blob` under the SRK with its authValue `auth` (`None`: empty), run
/// `f` with it and the session, flush it (also on failure: a TPM has only a
/// few transient object slots).
pub(super) fn with_loaded<T>(
    conn: &mut Conn,
    blob: &Blob<'_>,
    auth: Option<Auth>,
    f: impl FnOnce(&mut Context, AuthSession, KeyHandle) -> Result<T, Fail>,
) -> Result<T, Fail> {
    let public = Public::unmarshall(blob.public)
        .map_err(|_| Fail::Backend(BackendError::Sealed("malformed tpm public area")))?;
    let private = Private::try_from(blob.private.to_vec())
        .map_err(|_| Fail::Backend(BackendError::Sealed("malformed tpm private area")))?;
    // TPM2_Load in a password session with the SRK's empty authValue:
    // nothing secret goes in (the private area is encrypted under the SRK)
    // or comes out, and the command that uses the object is HMAC-authorized
    // over its name. It halves the HMAC-session commands per operation,
    // which cost the TSS (not the TPM) about 2 ms each here (docs/tpm.md,
    // "Performance").
    let srk = conn.srk;
    let h = conn
        .ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.load(srk, private, public)
        })
        .ctx("TPM2_Load")?;
    let r = match auth {
        Some(a) => conn.ctx.tr_set_auth(h.into(), a).ctx("set authValue"),
        None => Ok(()),
    }
    .and_then(|_| f(&mut conn.ctx, conn.session, h));
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
    /// The identity every connect must present.
    pinned: Identity,
    /// What the EK's certificate must chain to, when configured.
    ek_ca: Option<EkCa>,
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
    /// Connect, create the SRK and check the TPM is `pinned` (any TPM is,
    /// with no pin yet: its identity becomes the pin); a failure is a
    /// start-up error naming its cause.
    pub(super) fn open(
        tcti: String,
        queue_depth: usize,
        pinned: Option<Identity>,
        ek_ca: Option<EkCa>,
    ) -> Result<Self, String> {
        let conn = connect(&tcti, ek_ca.as_ref())?;
        if let Some(p) = &pinned {
            conn.identity.check(p)?;
        }
        Ok(Device {
            pinned: pinned.unwrap_or_else(|| conn.identity.clone()),
            ek_ca,
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

    /// The identity every connect is checked against.
    pub(super) fn pinned(&self) -> &Identity {
        &self.pinned
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
        let r = connect(&self.tcti, self.ek_ca.as_ref())
            .and_then(|c| c.identity.check(&self.pinned).map(|_| c));
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
                } else if let Err(m) = conn.renew_session() {
                    turn.conn = None;
                    tracing::warn!(backend = "tpm", error = %m, "TPM session lost; will reconnect");
                }
                Err(translate(&what, &e, answers))
            }
        }
    }
}
