//! The connection to the token: module load, token lookup, the bounded pool
//! of logged-in R/W sessions, and reconnecting with backoff.
//!
//! A connection is one initialised module with its sessions, the KEK's
//! object handle and a cache of native keys' object handles. Every token
//! call borrows a session through [`Pool::run`] (or [`Pool::run_exclusive`]
//! for calls that create or destroy objects); a failure is translated by
//! [`super::error::translate`], and when that says the connection is gone it
//! is dropped here, and the next call reconnects — finalize, re-initialise
//! the module, reopen the pool and log in again — with exponential backoff
//! and jitter between attempts (`backend_reconnects_total` counts
//! successful reconnects). This module must not know what a key is for: it
//! runs closures on sessions and keeps the connection alive.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Limit, Slot};
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::error::{already_logged_in, translate, unavailable, Fail};
use super::{kek, mechanisms};
use crate::backend::{jittered, BackendError};

/// How long a call waits for a free session before giving up.
const SESSION_WAIT: Duration = Duration::from_secs(5);
const RECONNECT_BASE: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// One initialised module with its pool of logged-in sessions.
pub(super) struct Conn {
    ctx: Pkcs11,
    idle: Mutex<Vec<Session>>,
    freed: Condvar,
    /// The KEK's object handle on this connection.
    pub(super) kek: Option<ObjectHandle>,
    /// CKA_ID (+ class tag) → object handle, valid for this connection.
    pub(super) objects: moka::sync::Cache<Vec<u8>, ObjectHandle>,
    /// Sessions in the pool (as asked, or fewer when the token allows fewer).
    size: usize,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // close the sessions, then finalize, so the next connection can
        // initialise the module again
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let _ = self.ctx.clone().finalize();
    }
}

/// A session on loan from the pool; goes back on drop.
struct Pooled<'a> {
    conn: &'a Conn,
    session: Option<Session>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session.as_ref().expect("present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.conn
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(s);
            self.conn.freed.notify_one();
        }
    }
}

impl Conn {
    fn checkout(&self) -> Result<Pooled<'_>, BackendError> {
        let deadline = Instant::now() + SESSION_WAIT;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(s) = idle.pop() {
                return Ok(Pooled {
                    conn: self,
                    session: Some(s),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(BackendError::Unavailable(
                    "no PKCS#11 session became free in time".into(),
                ));
            }
            idle = self
                .freed
                .wait_timeout(idle, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Load the module, find the token, open `pool_size` sessions, log in, find
/// or create the KEK (`with_kek`), and probe the mechanisms. A failure after
/// `C_Initialize` finalizes what was initialised.
fn connect(
    module: &Path,
    token_label: &str,
    pin: &str,
    pool_size: usize,
    with_kek: bool,
) -> Result<(Conn, Vec<MechanismType>), String> {
    let ctx = Pkcs11::new(module).map_err(|e| format!("load {}: {e}", module.display()))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("C_Initialize: {e}"))?;
    // From here on, a failure must finalize what was initialised.
    let fail = |ctx: &Pkcs11, msg: String| {
        let _ = ctx.clone().finalize();
        msg
    };
    let slot = match find_slot(&ctx, token_label) {
        Ok(s) => s,
        Err(m) => return Err(fail(&ctx, m)),
    };
    let mechs = mechanisms::probe(&ctx, slot);
    let pool_size = match session_limit(&ctx, slot) {
        Some(max) if max < pool_size => {
            tracing::warn!(
                backend = "pkcs11",
                configured = pool_size,
                token_allows = max,
                "the token allows fewer sessions than the pool was to hold: pooling {max}"
            );
            max
        }
        _ => pool_size,
    };
    let mut sessions = Vec::with_capacity(pool_size);
    for _ in 0..pool_size.max(1) {
        match ctx.open_rw_session(slot) {
            Ok(s) => sessions.push(s),
            Err(e) => {
                drop(sessions);
                return Err(fail(&ctx, format!("C_OpenSession: {e}")));
            }
        }
    }
    let auth = AuthPin::new(pin.into());
    match sessions[0].login(UserType::User, Some(&auth)) {
        Ok(()) => {}
        Err(e) if already_logged_in(&e) => {}
        Err(e) => {
            drop(sessions);
            return Err(fail(&ctx, format!("C_Login: {e}")));
        }
    }
    let kek = if with_kek {
        match kek::find_or_create(&sessions[0]) {
            Ok(k) => Some(k),
            Err(e) => {
                drop(sessions);
                return Err(fail(&ctx, format!("KEK: {e}")));
            }
        }
    } else {
        None
    };
    Ok((
        Conn {
            ctx,
            idle: Mutex::new(sessions),
            freed: Condvar::new(),
            kek,
            objects: moka::sync::Cache::new(100_000),
            size: pool_size.max(1),
        },
        mechs,
    ))
}

/// The most sessions (and R/W sessions) the token says it allows, when it
/// gives a number; `None` for "effectively infinite" or not given.
fn session_limit(ctx: &Pkcs11, slot: Slot) -> Option<usize> {
    let info = ctx.get_token_info(slot).ok()?;
    let max = |l: Limit| match l {
        Limit::Max(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        _ => None,
    };
    match (
        max(info.max_session_count()),
        max(info.max_rw_session_count()),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn find_slot(ctx: &Pkcs11, token_label: &str) -> Result<Slot, String> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(|e| format!("C_GetSlotList: {e}"))?;
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| format!("C_GetTokenInfo: {e}"))?;
        if info.label().trim_end() == token_label {
            return Ok(slot);
        }
    }
    Err(format!("no initialised token labelled {token_label:?}"))
}

/// Whether the token still answers on this session: session info and a
/// token-object search.
fn token_answers(s: &Session) -> bool {
    s.get_session_info().is_ok() && kek::find(s).is_ok()
}

struct Retry {
    next: Instant,
    backoff: Duration,
    /// The connection last dropped; a new one waits until it is gone
    /// (finalized), since a module is initialised once per process.
    draining: Option<Weak<Conn>>,
}

/// The live connection (or none, while the token is away) and how to
/// rebuild it.
pub(super) struct Pool {
    module: PathBuf,
    token_label: String,
    pin: Zeroizing<String>,
    pool_size: usize,
    /// Whether a reconnect must find the KEK (the token can seal).
    with_kek: bool,
    conn: RwLock<Option<Arc<Conn>>>,
    retry: Mutex<Retry>,
    /// Creating or destroying token objects takes this exclusively, every
    /// other token call shares it. SoftHSM2's file object store fails
    /// (`CKR_GENERAL_ERROR`) when an object is created while other threads
    /// read objects (SoftHSMv2 issue 573; here 2 of 36 start-ups without
    /// this lock, 0 of 60 with it); key management is rare, so serialising
    /// it costs nothing on the signing path.
    objects_lock: RwLock<()>,
}

impl Pool {
    /// The first connection (finding or creating the KEK), and the token's
    /// mechanisms. Any failure is a start-up error naming its cause.
    pub(super) fn open(
        module: PathBuf,
        token_label: String,
        pin: Zeroizing<String>,
        pool_size: usize,
    ) -> Result<(Self, Vec<MechanismType>), String> {
        let (conn, mechs) = connect(&module, &token_label, &pin, pool_size, true)?;
        // as many as the token allows: reconnects ask for no more
        let pool_size = conn.size;
        let pool = Pool {
            module,
            token_label,
            pin,
            pool_size,
            with_kek: true,
            conn: RwLock::new(Some(Arc::new(conn))),
            retry: Mutex::new(Retry {
                next: Instant::now(),
                backoff: RECONNECT_BASE,
                draining: None,
            }),
            objects_lock: RwLock::new(()),
        };
        Ok((pool, mechs))
    }

    /// Whether reconnects find the KEK; only worth it when the token can
    /// seal.
    pub(super) fn with_kek(mut self, with_kek: bool) -> Self {
        self.with_kek = with_kek;
        self
    }

    /// Whether the current connection holds the KEK.
    pub(super) fn has_kek(&self) -> bool {
        self.conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|c| c.kek.is_some())
    }

    pub(super) fn module(&self) -> &Path {
        &self.module
    }

    pub(super) fn token_label(&self) -> &str {
        &self.token_label
    }

    pub(super) fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// The live connection, reconnecting (with backoff) when there is none.
    fn conn(&self) -> Result<Arc<Conn>, BackendError> {
        if let Some(c) = self.conn.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = self.conn.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let now = Instant::now();
        if now < retry.next {
            return Err(unavailable(format!(
                "token unavailable; next reconnect attempt in {} ms",
                (retry.next - now).as_millis()
            )));
        }
        if retry
            .draining
            .as_ref()
            .is_some_and(|w| w.strong_count() > 0)
        {
            retry.next = now + Duration::from_millis(20);
            return Err(unavailable(
                "token unavailable; previous session still closing",
            ));
        }
        retry.draining = None;
        match connect(
            &self.module,
            &self.token_label,
            &self.pin,
            self.pool_size,
            self.with_kek,
        ) {
            Ok((c, _)) => {
                let c = Arc::new(c);
                *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                retry.backoff = RECONNECT_BASE;
                retry.next = now;
                metrics::counter!("backend_reconnects_total").increment(1);
                tracing::info!(backend = "pkcs11", "reconnected to the token");
                Ok(c)
            }
            Err(msg) => {
                let wait = jittered(retry.backoff);
                retry.next = now + wait;
                retry.backoff = (retry.backoff * 2).min(RECONNECT_MAX);
                tracing::warn!(backend = "pkcs11", error = %msg, retry_in_ms = wait.as_millis() as u64, "reconnect failed");
                Err(unavailable(msg))
            }
        }
    }

    /// Forget `conn` (if it is still the current one): the next call
    /// reconnects.
    fn drop_conn(&self, conn: &Arc<Conn>) {
        let mut cur = self.conn.write().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *cur = None;
            drop(cur);
            let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
            retry.draining = Some(Arc::downgrade(conn));
            tracing::warn!(backend = "pkcs11", "token connection lost; will reconnect");
        }
    }

    /// Run `f` with a pooled session; translate its failure, dropping the
    /// connection when the translation says it is gone.
    pub(super) fn run<T>(
        &self,
        f: impl FnOnce(&Conn, &Session) -> Result<T, Fail>,
    ) -> Result<T, BackendError> {
        let _shared = self.objects_lock.read().unwrap_or_else(|p| p.into_inner());
        self.run_locked(f)
    }

    /// [`Self::run`] for calls that create or destroy token objects.
    pub(super) fn run_exclusive<T>(
        &self,
        f: impl FnOnce(&Conn, &Session) -> Result<T, Fail>,
    ) -> Result<T, BackendError> {
        let _exclusive = self.objects_lock.write().unwrap_or_else(|p| p.into_inner());
        self.run_locked(f)
    }

    fn run_locked<T>(
        &self,
        f: impl FnOnce(&Conn, &Session) -> Result<T, Fail>,
    ) -> Result<T, BackendError> {
        let conn = self.conn()?;
        let result = {
            let s = conn.checkout()?;
            match f(&conn, &s) {
                Ok(v) => Ok(v),
                Err(Fail::Backend(e)) => return Err(e),
                // translated while the session is still on loan: a failed
                // decrypt asks the token whether it still answers
                Err(Fail::Ck(e)) => Err(translate(e, || token_answers(&s))),
            }
        };
        result.map_err(|t| {
            if t.reconnect {
                self.drop_conn(&conn);
            }
            t.error
        })
    }

    /// A token-object read: the KEK must still be found. When it is not,
    /// the token this module instance sees is not the whole token (its
    /// storage went away): drop the connection, so the next call
    /// re-initialises the module and reads the token afresh.
    pub(super) fn health(&self) -> Result<(), BackendError> {
        let _shared = self.objects_lock.read().unwrap_or_else(|p| p.into_inner());
        let conn = self.conn()?;
        let found = {
            let s = conn.checkout()?;
            kek::find(&s)
        };
        match found {
            Err(e) => {
                // a search, not a decrypt: the translation asks nothing
                let t = translate(e, || false);
                if t.reconnect {
                    self.drop_conn(&conn);
                }
                Err(t.error)
            }
            Ok(f) if f.is_empty() && conn.kek.is_some() => {
                self.drop_conn(&conn);
                Err(unavailable("the token's KEK is not found"))
            }
            Ok(_) => Ok(()),
        }
    }
}
