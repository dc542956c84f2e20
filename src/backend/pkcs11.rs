//! `pkcs11` custody: keys live in a PKCS#11 token (an HSM; tested on
//! SoftHSM2) and the token performs the private-key operations.
//!
//! - **Native keys** are generated inside the token as token objects with
//!   `CKA_SENSITIVE=true`, `CKA_EXTRACTABLE=false`: ECDSA P-256 (`CKM_ECDSA`
//!   over a SHA-256 digest computed here, DER-encoded on the way out),
//!   Ed25519 (`CKM_EDDSA`), AES-256 (`CKM_AES_GCM`). `CKA_LABEL` is
//!   `ron-kms/<tenant>/<name>#v<N>`; `CKA_ID` is 16 random bytes, kept in the
//!   handle the store persists.
//! - **Sealed keys**: algorithms the token cannot do (ML-DSA, ML-KEM, the
//!   hybrids) are software keys sealed with AES-256-GCM *by the token* under a
//!   token-resident KEK (`ron-kms/kek/v1`, created once, non-extractable).
//!   They are unsealed into zeroizing memory for one operation.
//! - Which path an algorithm takes comes from the token's mechanisms, probed
//!   at start-up with `C_GetMechanismInfo` ([`Pkcs11Backend::open`]), never
//!   from a fixed list.
//!
//! Handles (docs/pkcs11.md): native `"P11" 0x01 kind(1) id(16)` with kind
//! `k` (key pair, private half) or `s` (secret key); sealed `"P11" 0x02
//! nonce(12) ciphertext‖tag` with the same associated data as `sealed-file`.
//!
//! Sessions come from a bounded pool of logged-in R/W sessions, opened at
//! connect time and reused; object handles are cached per connection. A
//! device-class error (device removed, session or login lost, library not
//! initialised, general error) drops the connection; the next call
//! reconnects — finalize, re-initialise the module, reopen the pool and log
//! in again — with exponential backoff and jitter between attempts
//! (`backend_reconnects_total` counts successful reconnects). The circuit
//! breaker in front of every backend ([`super::breaker`]) fails fast while
//! the token is away.
//!
//! Calls block; the service runs them on its bounded blocking pool.
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::soft::{label_aad, KeyCache, SealedCustody, Sealer};
use super::{jittered, Backend, BackendError, Capabilities, Generated, KeyLabel, SignInput};
use crate::crypto::{aead, random_bytes, Algorithm, Provider};

/// DER OID of P-256 (prime256v1), as `CKA_EC_PARAMS`.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER OID of Ed25519 (RFC 8410), as `CKA_EC_PARAMS`.
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

const KEK_ID: &[u8] = b"ron-kms/kek/v1";
const HANDLE_MAGIC: &[u8; 3] = b"P11";
const HANDLE_NATIVE: u8 = 1;
const HANDLE_SEALED: u8 = 2;
const KIND_PAIR: u8 = b'k';
const KIND_SECRET: u8 = b's';
const ID_LEN: usize = 16;

/// How long a call waits for a free session before giving up.
const SESSION_WAIT: Duration = Duration::from_secs(5);
const RECONNECT_BASE: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// What `serve` needs to reach the token (docs/configuration.md).
pub struct Pkcs11Settings {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// `CKA_LABEL` of the token to use.
    pub token_label: String,
    /// The user PIN (from a file or an env var; never a CLI argument).
    pub pin: Zeroizing<String>,
    /// Logged-in sessions kept open.
    pub pool_size: usize,
}

impl std::fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// One initialised module with its pool of logged-in sessions.
struct Conn {
    ctx: Pkcs11,
    idle: Mutex<Vec<Session>>,
    freed: Condvar,
    kek: Option<ObjectHandle>,
    /// CKA_ID (+ class tag) → object handle, valid for this connection.
    objects: moka::sync::Cache<Vec<u8>, ObjectHandle>,
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

struct Retry {
    next: Instant,
    backoff: Duration,
    /// The connection last dropped; a new one waits until it is gone
    /// (finalized), since a module is initialised once per process.
    draining: Option<Weak<Conn>>,
}

pub struct Pkcs11Backend {
    module: PathBuf,
    token_label: String,
    pin: Zeroizing<String>,
    pool_size: usize,
    provider: Arc<Provider>,
    caps: Capabilities,
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

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .finish_non_exhaustive()
    }
}

/// Errors that mean the device, the session or the login is gone: the
/// connection is dropped and rebuilt.
fn device_class(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::SessionClosed
            | RvError::SessionHandleInvalid
            | RvError::CryptokiNotInitialized
            | RvError::UserNotLoggedIn
            | RvError::GeneralError
            | RvError::FunctionFailed
            | RvError::HostMemory
            | RvError::SlotIdInvalid
    )
}

/// The outcome of one token call, before mapping to [`BackendError`].
enum Fail {
    Ck(CkError),
    Backend(BackendError),
}

impl From<CkError> for Fail {
    fn from(e: CkError) -> Self {
        Fail::Ck(e)
    }
}

impl From<BackendError> for Fail {
    fn from(e: BackendError) -> Self {
        Fail::Backend(e)
    }
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("pkcs11: {e}"))
}

fn connect(
    module: &std::path::Path,
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
    // C_GetMechanismInfo per mechanism we can use: supported ones answer
    let mechs: Vec<MechanismType> = [
        MechanismType::ECDSA,
        MechanismType::ECC_KEY_PAIR_GEN,
        MechanismType::EDDSA,
        MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
        MechanismType::AES_GCM,
        MechanismType::AES_KEY_GEN,
    ]
    .into_iter()
    .filter(|m| ctx.get_mechanism_info(slot, *m).is_ok())
    .collect();
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
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => {
            drop(sessions);
            return Err(fail(&ctx, format!("C_Login: {e}")));
        }
    }
    let kek = if with_kek {
        match find_or_create_kek(&sessions[0]) {
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
        },
        mechs,
    ))
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

fn find_or_create_kek(s: &Session) -> Result<ObjectHandle, CkError> {
    let found = find_kek(s)?;
    if let Some(h) = found.first() {
        return Ok(*h);
    }
    s.generate_key(&Mechanism::AesKeyGen, &aes_key_template(KEK_ID, KEK_ID))
}

/// A token-resident AES-256 secret key: sensitive, non-extractable,
/// encrypt/decrypt only.
fn aes_key_template(id: &[u8], label: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.to_vec()),
    ]
}

/// Find the KEK by class and `CKA_ID`.
fn find_kek(s: &Session) -> Result<Vec<ObjectHandle>, CkError> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Id(KEK_ID.to_vec()),
    ])
}

fn object_label(label: &KeyLabel<'_>) -> Vec<u8> {
    format!("ron-kms/{}/{}", label.tenant, label.kid).into_bytes()
}

/// A native key reference parsed from a handle.
struct NativeRef {
    kind: u8,
    id: Vec<u8>,
}

enum Parsed<'h> {
    Native(NativeRef),
    Sealed(&'h [u8]),
}

fn parse_handle(h: &[u8]) -> Result<Parsed<'_>, BackendError> {
    if h.len() < 4 || &h[..3] != HANDLE_MAGIC {
        return Err(BackendError::Sealed("not a pkcs11 handle"));
    }
    match h[3] {
        HANDLE_NATIVE if h.len() == 5 + ID_LEN && matches!(h[4], KIND_PAIR | KIND_SECRET) => {
            Ok(Parsed::Native(NativeRef {
                kind: h[4],
                id: h[5..].to_vec(),
            }))
        }
        HANDLE_SEALED if h.len() >= 4 + aead::AEAD_NONCE_LEN + aead::TAG_LEN => {
            Ok(Parsed::Sealed(&h[4..]))
        }
        _ => Err(BackendError::Sealed("malformed pkcs11 handle")),
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the point; some tokens
/// return the bare point. Accept either, for the expected length.
fn ec_point(v: &[u8], len: usize) -> Result<Vec<u8>, BackendError> {
    if v.len() == len + 2 && v[0] == 0x04 && v[1] as usize == len {
        Ok(v[2..].to_vec())
    } else if v.len() == len {
        Ok(v.to_vec())
    } else {
        Err(BackendError::Crypto(format!(
            "token returned a {}-byte EC point, expected {len}",
            v.len()
        )))
    }
}

impl Pkcs11Backend {
    /// Load the module, find the token, log in, open the session pool, find
    /// or create the KEK, and probe the mechanism list. Any failure here is
    /// a start-up error naming its cause.
    pub fn open(settings: Pkcs11Settings, provider: Arc<Provider>) -> Result<Self, String> {
        let (conn, mechs) = connect(
            &settings.module,
            &settings.token_label,
            &settings.pin,
            settings.pool_size,
            true,
        )?;
        let caps = capabilities(&mechs);
        let kek = conn.kek;
        let me = Pkcs11Backend {
            module: settings.module,
            token_label: settings.token_label,
            pin: settings.pin,
            pool_size: settings.pool_size,
            provider,
            caps,
            conn: RwLock::new(Some(Arc::new(conn))),
            retry: Mutex::new(Retry {
                next: Instant::now(),
                backoff: RECONNECT_BASE,
                draining: None,
            }),
            objects_lock: RwLock::new(()),
        };
        if kek.is_none() && !me.caps.sealed.is_empty() {
            return Err("the token has no KEK".into());
        }
        tracing::info!(
            native = ?me.caps.native.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            sealed = me.caps.sealed.len(),
            pool = me.pool_size,
            "pkcs11 token ready"
        );
        Ok(me)
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
            !self.caps.sealed.is_empty(),
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

    /// Run `f` with a pooled session; map its failure, dropping the
    /// connection on a device-class error.
    fn run<T>(
        &self,
        f: impl FnOnce(&Conn, &Session) -> Result<T, Fail>,
    ) -> Result<T, BackendError> {
        let _shared = self.objects_lock.read().unwrap_or_else(|p| p.into_inner());
        self.run_locked(f)
    }

    /// [`Self::run`] for calls that create or destroy token objects.
    fn run_exclusive<T>(
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
                // SoftHSM2 (and other tokens) answer a failed GCM tag check
                // with CKR_GENERAL_ERROR: a bad ciphertext if the token
                // still answers, a device error if it does not.
                Err(Fail::Ck(CkError::Pkcs11(
                    RvError::GeneralError | RvError::FunctionFailed,
                    Function::Decrypt,
                ))) if token_answers(&s) => Err(Fail::Backend(BackendError::Decrypt)),
                other => other,
            }
        };
        match result {
            Ok(v) => Ok(v),
            Err(Fail::Backend(e)) => Err(e),
            Err(Fail::Ck(e)) => Err(self.classify(&conn, e)),
        }
    }

    fn classify(&self, conn: &Arc<Conn>, e: CkError) -> BackendError {
        match &e {
            CkError::Pkcs11(rv, _) if device_class(*rv) => {
                self.drop_conn(conn);
                unavailable(e)
            }
            // A handle this connection holds (the KEK's, or a native key's
            // looked up afresh) is no longer valid: the token's objects
            // changed under us (seen when SoftHSM2's token directory goes
            // away mid-call). Reconnect, as for a device error.
            CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _) => {
                self.drop_conn(conn);
                unavailable(e)
            }
            CkError::Pkcs11(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange, _) => {
                BackendError::Decrypt
            }
            _ => BackendError::Crypto(format!("pkcs11: {e}")),
        }
    }
}

/// Whether the token still answers on this session: session info and a
/// token-object search.
fn token_answers(s: &Session) -> bool {
    s.get_session_info().is_ok() && find_kek(s).is_ok()
}

fn capabilities(mechs: &[MechanismType]) -> Capabilities {
    let has = |m: MechanismType| mechs.contains(&m);
    let mut native = Vec::new();
    if has(MechanismType::ECDSA) && has(MechanismType::ECC_KEY_PAIR_GEN) {
        native.push(Algorithm::EcdsaP256);
    }
    if has(MechanismType::EDDSA) && has(MechanismType::ECC_EDWARDS_KEY_PAIR_GEN) {
        native.push(Algorithm::Ed25519);
    }
    let aes = has(MechanismType::AES_GCM) && has(MechanismType::AES_KEY_GEN);
    if aes {
        native.push(Algorithm::Aes256Gcm);
    }
    // the KEK needs AES-GCM in the token; without it nothing can be sealed
    let sealed = if aes {
        Algorithm::ALL
            .iter()
            .copied()
            .filter(|a| !native.contains(a))
            .collect()
    } else {
        Vec::new()
    };
    Capabilities {
        native,
        sealed,
        attestation: false,
        persistent: true,
        device_bound: false,
    }
}

/// Find a native key's object, through the per-connection cache; bound to
/// the label, so a handle copied onto another key record finds nothing.
fn find_key(
    conn: &Conn,
    s: &Session,
    r: &NativeRef,
    label: &KeyLabel<'_>,
    fresh: bool,
) -> Result<ObjectHandle, Fail> {
    let class = if r.kind == KIND_PAIR {
        ObjectClass::PRIVATE_KEY
    } else {
        ObjectClass::SECRET_KEY
    };
    let mut key = r.id.clone();
    key.push(r.kind);
    key.extend_from_slice(&object_label(label));
    if !fresh {
        if let Some(h) = conn.objects.get(&key) {
            return Ok(h);
        }
    }
    let found = s.find_objects(&[
        Attribute::Class(class),
        Attribute::Id(r.id.clone()),
        Attribute::Label(object_label(label)),
    ])?;
    match found.first() {
        Some(h) => {
            conn.objects.insert(key, *h);
            Ok(*h)
        }
        // The store says the key is live; the token we reach does not have
        // it. Treat it as the token being (partly) away, not as a bad key.
        None => Err(Fail::Backend(unavailable(format!(
            "key object for {}/{} not found on the token",
            label.tenant, label.kid
        )))),
    }
}

/// Run `op` on a native key; a stale cached object handle is looked up
/// again once.
fn with_key<T>(
    conn: &Conn,
    s: &Session,
    r: &NativeRef,
    label: &KeyLabel<'_>,
    op: impl Fn(ObjectHandle) -> Result<T, CkError>,
) -> Result<T, Fail> {
    let h = find_key(conn, s, r, label, false)?;
    match op(h) {
        Err(CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _)) => {
            let h = find_key(conn, s, r, label, true)?;
            Ok(op(h)?)
        }
        other => Ok(other?),
    }
}

fn gcm_encrypt(
    s: &Session,
    key: ObjectHandle,
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CkError> {
    let mut iv = *nonce;
    let params = GcmParams::new(&mut iv, aad, 128.into())?;
    s.encrypt(&Mechanism::AesGcm(params), key, plaintext)
}

fn gcm_decrypt(
    s: &Session,
    key: ObjectHandle,
    nonce: &[u8; 12],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CkError> {
    let mut iv = *nonce;
    let params = GcmParams::new(&mut iv, aad, 128.into())?;
    s.decrypt(&Mechanism::AesGcm(params), key, ciphertext)
        .map(Zeroizing::new)
}

impl Sealer for Pkcs11Backend {
    /// Seal under the token's KEK (AES-256-GCM inside the token).
    fn seal(&self, label: KeyLabel<'_>, private: &[u8]) -> Result<Vec<u8>, BackendError> {
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        random_bytes(&mut nonce).map_err(|e| BackendError::Crypto(e.to_string()))?;
        let ct = self.run(|conn, s| {
            let kek = conn.kek.ok_or(BackendError::Unsupported(label.algorithm))?;
            Ok(gcm_encrypt(s, kek, &nonce, &label_aad(&label), private)?)
        })?;
        let mut h = Vec::with_capacity(4 + nonce.len() + ct.len());
        h.extend_from_slice(HANDLE_MAGIC);
        h.push(HANDLE_SEALED);
        h.extend_from_slice(&nonce);
        h.extend_from_slice(&ct);
        Ok(h)
    }

    fn unseal(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let Parsed::Sealed(body) = parse_handle(handle)? else {
            return Err(BackendError::Sealed("not a sealed-key handle"));
        };
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        nonce.copy_from_slice(&body[..aead::AEAD_NONCE_LEN]);
        let r = self.run(|conn, s| {
            let kek = conn.kek.ok_or(BackendError::Unsupported(label.algorithm))?;
            Ok(gcm_decrypt(
                s,
                kek,
                &nonce,
                &label_aad(&label),
                &body[aead::AEAD_NONCE_LEN..],
            )?)
        });
        match r {
            Err(BackendError::Decrypt) => Err(BackendError::Sealed(
                "authentication failed (wrong token KEK or corrupted record)",
            )),
            other => other,
        }
    }
}

/// Sealed keys are unsealed by the token on every operation: no prepared keys.
impl SealedCustody for Pkcs11Backend {
    fn provider(&self) -> &Provider {
        &self.provider
    }

    fn prepared_keys(&self) -> Option<&KeyCache> {
        None
    }
}

impl Backend for Pkcs11Backend {
    fn name(&self) -> &'static str {
        "pkcs11"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn generate(&self, label: KeyLabel<'_>) -> Result<Generated, BackendError> {
        self.caps.check(label.algorithm)?;
        if !self.caps.is_native(label.algorithm) {
            return self.sealed_generate(label);
        }
        let mut id = vec![0u8; ID_LEN];
        random_bytes(&mut id).map_err(|e| BackendError::Crypto(e.to_string()))?;
        let olabel = object_label(&label);
        let alg = label.algorithm;
        let (kind, public) = self.run_exclusive(|_, s| {
            let common = |extra: Vec<Attribute>| {
                let mut v = vec![
                    Attribute::Token(true),
                    Attribute::Id(id.clone()),
                    Attribute::Label(olabel.clone()),
                ];
                v.extend(extra);
                v
            };
            // least privilege: every usage not asked for is off
            let private = || {
                common(vec![
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Derive(false),
                ])
            };
            match alg {
                Algorithm::Aes256Gcm => {
                    s.generate_key(&Mechanism::AesKeyGen, &aes_key_template(&id, &olabel))?;
                    Ok((KIND_SECRET, Vec::new()))
                }
                Algorithm::EcdsaP256 | Algorithm::Ed25519 => {
                    let (mech, params, len) = if alg == Algorithm::EcdsaP256 {
                        (Mechanism::EccKeyPairGen, P256_PARAMS, 65)
                    } else {
                        (Mechanism::EccEdwardsKeyPairGen, ED25519_PARAMS, 32)
                    };
                    let pub_t = common(vec![
                        Attribute::Private(false),
                        Attribute::Verify(true),
                        Attribute::Encrypt(false),
                        Attribute::Wrap(false),
                        Attribute::EcParams(params.to_vec()),
                    ]);
                    let mut priv_t = private();
                    priv_t.extend([
                        Attribute::Sign(true),
                        Attribute::Decrypt(false),
                        Attribute::Unwrap(false),
                    ]);
                    let (pubh, privh) = s.generate_key_pair(&mech, &pub_t, &priv_t)?;
                    let point = s
                        .get_attributes(pubh, &[AttributeType::EcPoint])
                        .map_err(Fail::Ck)
                        .and_then(|attrs| match attrs.first() {
                            Some(Attribute::EcPoint(p)) => Ok(ec_point(p, len)?),
                            _ => Err(Fail::Backend(BackendError::Crypto(
                                "token returned no EC point".into(),
                            ))),
                        });
                    match point {
                        Ok(p) => Ok((KIND_PAIR, p)),
                        Err(e) => {
                            // leave nothing behind
                            let _ = s.destroy_object(privh);
                            let _ = s.destroy_object(pubh);
                            Err(e)
                        }
                    }
                }
                other => Err(Fail::Backend(BackendError::Unsupported(other))),
            }
        })?;
        let mut handle = Vec::with_capacity(5 + ID_LEN);
        handle.extend_from_slice(HANDLE_MAGIC);
        handle.push(HANDLE_NATIVE);
        handle.push(kind);
        handle.extend_from_slice(&id);
        Ok(Generated { public, handle })
    }

    fn sign(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        input: SignInput<'_>,
    ) -> Result<Vec<u8>, BackendError> {
        self.caps.check(label.algorithm)?;
        let (r, message) = match (parse_handle(handle)?, input) {
            (Parsed::Sealed(_), input) => return self.sealed_sign(label, handle, input),
            (Parsed::Native(r), SignInput::Message(m)) if r.kind == KIND_PAIR => (r, m),
            // token keys are single-algorithm: no hybrid components
            (Parsed::Native(_), SignInput::ClassicalComponent(_)) => {
                return Err(BackendError::Unsupported(label.algorithm))
            }
            (Parsed::Native(_), _) => return Err(BackendError::Sealed("not a signing key handle")),
        };
        match label.algorithm {
            Algorithm::EcdsaP256 => {
                let digest = ring::digest::digest(&ring::digest::SHA256, message);
                let rs = self.run(|conn, s| {
                    with_key(conn, s, &r, &label, |h| {
                        s.sign(&Mechanism::Ecdsa, h, digest.as_ref())
                    })
                })?;
                super::ecdsa_der(&rs)
            }
            Algorithm::Ed25519 => self.run(|conn, s| {
                with_key(conn, s, &r, &label, |h| {
                    s.sign(
                        &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                        h,
                        message,
                    )
                })
            }),
            other => Err(BackendError::Unsupported(other)),
        }
    }

    fn decapsulate(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.caps.check(label.algorithm)?;
        self.sealed_decapsulate(label, handle, ciphertext)
    }

    fn aead_seal(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        nonce: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.caps.check(label.algorithm)?;
        match parse_handle(handle)? {
            Parsed::Sealed(_) => self.sealed_aead_seal(label, handle, nonce, aad, plaintext),
            Parsed::Native(r) => self.run(|conn, s| {
                with_key(conn, s, &r, &label, |h| {
                    gcm_encrypt(s, h, nonce, aad, plaintext)
                })
            }),
        }
    }

    fn aead_open(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.caps.check(label.algorithm)?;
        match parse_handle(handle)? {
            Parsed::Sealed(_) => self.sealed_aead_open(label, handle, nonce, aad, ciphertext),
            Parsed::Native(r) => {
                if ciphertext.len() < aead::TAG_LEN {
                    return Err(BackendError::Decrypt);
                }
                self.run(|conn, s| {
                    with_key(conn, s, &r, &label, |h| {
                        gcm_decrypt(s, h, nonce, aad, ciphertext)
                    })
                })
            }
        }
    }

    /// `C_DestroyObject` on every object with the key's `CKA_ID` (both
    /// halves of a pair). Sealed keys: the store's wipe of the handle is the
    /// destruction.
    fn destroy(&self, label: KeyLabel<'_>, handle: &[u8]) -> Result<(), BackendError> {
        let r = match parse_handle(handle)? {
            Parsed::Sealed(_) => return Ok(()),
            Parsed::Native(r) => r,
        };
        self.run_exclusive(|conn, s| {
            let found = s.find_objects(&[
                Attribute::Id(r.id.clone()),
                Attribute::Label(object_label(&label)),
            ])?;
            for h in found {
                s.destroy_object(h)?;
            }
            conn.objects.invalidate_all();
            Ok(())
        })
    }

    /// A token-object read: the KEK must still be found. When it is not,
    /// the token this module instance sees is not the whole token (its
    /// storage went away): drop the connection, so the next call
    /// re-initialises the module and reads the token afresh.
    fn health(&self) -> Result<(), BackendError> {
        let _shared = self.objects_lock.read().unwrap_or_else(|p| p.into_inner());
        let conn = self.conn()?;
        let found = {
            let s = conn.checkout()?;
            find_kek(&s)
        };
        match found {
            Err(e) => Err(self.classify(&conn, e)),
            Ok(f) if f.is_empty() && conn.kek.is_some() => {
                self.drop_conn(&conn);
                Err(unavailable("the token's KEK is not found"))
            }
            Ok(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_parse_strictly() {
        let mut native = b"P11\x01k".to_vec();
        native.extend_from_slice(&[7u8; ID_LEN]);
        assert!(matches!(parse_handle(&native), Ok(Parsed::Native(_))));
        assert!(parse_handle(&native[..native.len() - 1]).is_err());
        let mut bad_kind = native.clone();
        bad_kind[4] = b'x';
        assert!(parse_handle(&bad_kind).is_err());
        assert!(parse_handle(b"P11\x02short").is_err());
        assert!(parse_handle(&[1u8; 64]).is_err());
        assert!(parse_handle(b"").is_err());
    }

    #[test]
    fn ec_points_with_or_without_the_octet_string() {
        let mut der = vec![0x04, 32];
        der.extend_from_slice(&[9u8; 32]);
        assert_eq!(ec_point(&der, 32).unwrap(), vec![9u8; 32]);
        assert_eq!(ec_point(&[9u8; 32], 32).unwrap(), vec![9u8; 32]);
        assert!(ec_point(&[9u8; 31], 32).is_err());
    }
}
