//! `tpm` custody: keys live under a TPM 2.0's storage hierarchy (tested on
//! swtpm) and the TPM performs or guards every private-key operation.
//!
//! - **Native keys**: ECDSA P-256 signing keys are created by the TPM under
//!   the storage root key (SRK, an ECC P-256 primary in the owner
//!   hierarchy, re-derived from the TPM's seed on every connect). The TPM
//!   returns the key's public area and its private area encrypted under the
//!   SRK; ron-kms persists both as the key's handle and loads them for each
//!   signature. The TPM signs a SHA-256 digest computed here; the signature
//!   leaves DER-encoded.
//! - **Sealed keys**: what the TPM cannot do (Ed25519, ML-DSA, ML-KEM, the
//!   hybrids, AES-256-GCM wrap keys) are software keys encrypted with
//!   AES-256-GCM under a fresh 32-byte data key, and that data key is a TPM
//!   *sealed data object* under the SRK. Using the key means loading the
//!   sealed object, `TPM2_Unseal`, and opening the software key into
//!   zeroizing memory for one operation.
//! - **One serial device**: one ESAPI context behind a lock. Callers queue
//!   for it with a bound ([`TpmSettings::queue_depth`]); past the bound a
//!   call fails at once with [`BackendError::Busy`], and a call that waits
//!   longer than [`QUEUE_WAIT`] fails with `Unavailable`. Verification never
//!   comes here: public-key operations run in software.
//! - **Reconnect**: a failing command is followed by a cheap probe
//!   (`TPM2_GetRandom`); when the TPM does not answer, the context is
//!   dropped and the next call reconnects with exponential backoff and
//!   jitter (`backend_reconnects_total`), re-creating the SRK. Keys are
//!   blobs in the store, so nothing is lost while the TPM is away.
//! - **Attestation**: [`attest`] quotes the configured PCRs with an
//!   attestation key and verifies the quote in software.
//!
//! Handles (docs/tpm.md): native `"TPM" 0x01 u16 len ‖ public ‖ u16 len ‖
//! private`; sealed `"TPM" 0x02 u16 len ‖ public ‖ u16 len ‖ private ‖
//! nonce(12) ‖ ciphertext‖tag` (the sealed object's public and private
//! areas, then the software key under the unsealed data key, with the
//! `sealed-file` associated data).
//!
//! Calls block; the service runs them on its bounded blocking pool.
pub mod attest;

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, HashScheme, KeyedHashScheme, Private, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData, Signature,
    SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use super::soft::{self, label_aad, KeyCache, SealedCustody, Sealer};
use super::{jittered, Backend, BackendError, Capabilities, Generated, KeyLabel, SignInput};
use crate::crypto::{aead, random_bytes, Algorithm, Provider};

const HANDLE_MAGIC: &[u8; 3] = b"TPM";
const HANDLE_NATIVE: u8 = 1;
const HANDLE_SEALED: u8 = 2;
/// Bytes of the data key a sealed object holds.
const DEK_LEN: usize = 32;

/// How long a call waits for the TPM before giving up.
pub const QUEUE_WAIT: Duration = Duration::from_secs(5);
const RECONNECT_BASE: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
pub const DEFAULT_QUEUE_DEPTH: usize = 64;

/// What `serve` needs to reach the TPM (docs/configuration.md).
#[derive(Clone, Debug)]
pub struct TpmSettings {
    /// TCTI name and configuration: `swtpm:host=…,port=…`,
    /// `device:/dev/tpmrm0`, `tabrmd`.
    pub tcti: String,
    /// Calls allowed to wait for the TPM at once.
    pub queue_depth: usize,
    /// PCRs to quote, and what they must hash to.
    pub attestation: attest::AttestationSettings,
}

/// One open ESAPI context with the SRK loaded.
pub(crate) struct Conn {
    pub(crate) ctx: Context,
    srk: KeyHandle,
}

struct Slot {
    conn: Option<Conn>,
    /// A caller holds the device (the context may be out of `conn`).
    busy: bool,
    /// When the next reconnect may be tried, and the backoff after it.
    next: Instant,
    backoff: Duration,
}

pub struct TpmBackend {
    tcti: String,
    queue_depth: usize,
    provider: Arc<Provider>,
    caps: Capabilities,
    slot: Mutex<Slot>,
    freed: Condvar,
    waiting: AtomicUsize,
    attestation: attest::AttestationSettings,
}

impl std::fmt::Debug for TpmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmBackend")
            .field("tcti", &self.tcti)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("tpm: {e}"))
}

fn tss_err(what: &str, e: tss_esapi::Error) -> String {
    format!("{what}: {e}")
}

/// What every key ron-kms has the TPM generate shares: it cannot leave
/// this TPM or its parent, the TPM made its secret, it is used with its
/// (empty) authValue, and it is exempt from dictionary-attack lockout.
pub(crate) fn key_attributes() -> ObjectAttributesBuilder {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
}

/// The storage root key's template: an ECC P-256 restricted decryption
/// key (AES-128-CFB for its children), as the TCG's provisioning guidance
/// describes; the same template under the same seed gives the same key.
pub fn srk_template() -> tss_esapi::Result<Public> {
    let attrs = key_attributes()
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// An ECDSA P-256 (SHA-256) signing key: generated in the TPM, never
/// duplicable (`fixedTPM`, `fixedParent`), signing only.
pub fn signing_key_template() -> tss_esapi::Result<Public> {
    ecdsa_p256_template(false)
}

/// ECDSA P-256 with SHA-256, signing only; `restricted` keys (the
/// attestation key) sign only structures the TPM itself produced.
pub(crate) fn ecdsa_p256_template(restricted: bool) -> tss_esapi::Result<Public> {
    let attrs = key_attributes()
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(restricted)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                EccCurve::NistP256,
            )
            .with_restricted(restricted)
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// A sealed data object: holds caller-supplied bytes that only
/// `TPM2_Unseal` on this TPM returns.
fn sealed_object_template() -> tss_esapi::Result<Public> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
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

/// `u16 len ‖ bytes`, twice; then whatever follows.
fn put_blob(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

fn take_blob<'a>(h: &mut &'a [u8]) -> Result<&'a [u8], BackendError> {
    if h.len() < 2 {
        return Err(BackendError::Sealed("malformed tpm handle"));
    }
    let n = u16::from_be_bytes([h[0], h[1]]) as usize;
    if h.len() < 2 + n || n == 0 {
        return Err(BackendError::Sealed("malformed tpm handle"));
    }
    let b = &h[2..2 + n];
    *h = &h[2 + n..];
    Ok(b)
}

/// A loadable object: its public area (marshalled `TPMT_PUBLIC`) and its
/// private area as the TPM returned it (`TPM2B_PRIVATE` contents).
struct Blob<'a> {
    public: &'a [u8],
    private: &'a [u8],
}

enum Parsed<'h> {
    Native(Blob<'h>),
    Sealed {
        object: Blob<'h>,
        nonce: [u8; aead::AEAD_NONCE_LEN],
        sealed: &'h [u8],
    },
}

fn parse_handle(h: &[u8]) -> Result<Parsed<'_>, BackendError> {
    if h.len() < 4 || &h[..3] != HANDLE_MAGIC {
        return Err(BackendError::Sealed("not a tpm handle"));
    }
    let kind = h[3];
    let mut rest = &h[4..];
    let public = take_blob(&mut rest)?;
    let private = take_blob(&mut rest)?;
    let blob = Blob { public, private };
    match kind {
        HANDLE_NATIVE if rest.is_empty() => Ok(Parsed::Native(blob)),
        HANDLE_SEALED if rest.len() >= aead::AEAD_NONCE_LEN + aead::TAG_LEN => {
            let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
            nonce.copy_from_slice(&rest[..aead::AEAD_NONCE_LEN]);
            Ok(Parsed::Sealed {
                object: blob,
                nonce,
                sealed: &rest[aead::AEAD_NONCE_LEN..],
            })
        }
        _ => Err(BackendError::Sealed("malformed tpm handle")),
    }
}

/// The outcome of TPM work, before it is classified.
pub(crate) enum Fail {
    Tss(String, tss_esapi::Error),
    Backend(BackendError),
}

impl From<BackendError> for Fail {
    fn from(e: BackendError) -> Self {
        Fail::Backend(e)
    }
}

pub(crate) trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, Fail>;
}

impl<T> Ctx<T> for tss_esapi::Result<T> {
    fn ctx(self, what: &str) -> Result<T, Fail> {
        self.map_err(|e| Fail::Tss(what.to_string(), e))
    }
}

/// Load `blob` under the SRK, run `f` with it, flush it (also on failure:
/// a TPM has only a few transient object slots).
fn with_loaded<T>(
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

/// `r ‖ s` from a TPM ECDSA signature, each left-padded to 32 bytes.
fn ecdsa_rs(sig: &Signature) -> Result<[u8; 64], BackendError> {
    let Signature::EcDsa(s) = sig else {
        return Err(BackendError::Crypto(
            "TPM returned a non-ECDSA signature".into(),
        ));
    };
    let mut rs = [0u8; 64];
    for (i, part) in [s.signature_r().value(), s.signature_s().value()]
        .into_iter()
        .enumerate()
    {
        if part.len() > 32 {
            return Err(BackendError::Crypto(format!(
                "TPM returned a {}-byte ECDSA scalar",
                part.len()
            )));
        }
        rs[i * 32 + 32 - part.len()..(i + 1) * 32].copy_from_slice(part);
    }
    Ok(rs)
}

/// The uncompressed SEC1 point `04 ‖ x ‖ y` of an ECC P-256 public area.
pub(crate) fn p256_point(public: &Public) -> Result<Vec<u8>, BackendError> {
    let Public::Ecc { unique, .. } = public else {
        return Err(BackendError::Crypto("TPM key is not an ECC key".into()));
    };
    let mut out = vec![0u8; 65];
    out[0] = 4;
    for (i, c) in [unique.x().value(), unique.y().value()]
        .into_iter()
        .enumerate()
    {
        if c.len() > 32 || c.is_empty() {
            return Err(BackendError::Crypto(format!(
                "TPM returned a {}-byte P-256 coordinate",
                c.len()
            )));
        }
        out[1 + i * 32 + 32 - c.len()..1 + (i + 1) * 32].copy_from_slice(c);
    }
    Ok(out)
}

/// The hash-check ticket `TPM2_Sign` wants for a digest it did not compute
/// itself: the null ticket, allowed for unrestricted keys.
pub fn null_ticket() -> tss_esapi::Result<tss_esapi::structures::HashcheckTicket> {
    TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    }
    .try_into()
}

/// A caller's turn at the TPM; gives the device back on drop.
struct Turn<'a> {
    b: &'a TpmBackend,
    conn: Option<Conn>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut slot = self.b.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.busy = false;
        if slot.conn.is_none() {
            slot.conn = self.conn.take();
        }
        drop(slot);
        self.b.freed.notify_one();
    }
}

impl TpmBackend {
    /// Connect, create the SRK, and check the TPM answers. A failure here
    /// is a start-up error naming its cause.
    pub fn open(settings: TpmSettings, provider: Arc<Provider>) -> Result<Self, String> {
        let conn = connect(&settings.tcti)?;
        let caps = Capabilities {
            native: vec![Algorithm::EcdsaP256],
            sealed: Algorithm::ALL
                .iter()
                .copied()
                .filter(|a| *a != Algorithm::EcdsaP256)
                .collect(),
            attestation: true,
            persistent: true,
            device_bound: true,
        };
        tracing::info!(tcti = %settings.tcti, queue = settings.queue_depth, "tpm ready");
        Ok(TpmBackend {
            tcti: settings.tcti,
            queue_depth: settings.queue_depth.max(1),
            provider,
            caps,
            slot: Mutex::new(Slot {
                conn: Some(conn),
                busy: false,
                next: Instant::now(),
                backoff: RECONNECT_BASE,
            }),
            freed: Condvar::new(),
            waiting: AtomicUsize::new(0),
            attestation: settings.attestation,
        })
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
        let mut turn = Turn { b: self, conn };
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
    /// next call reconnects) and the caller sees `Unavailable`.
    pub(crate) fn run<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, Fail>,
    ) -> Result<T, BackendError> {
        let mut turn = self.turn()?;
        let conn = turn.conn.as_mut().expect("a turn holds a context");
        match f(conn) {
            Ok(v) => Ok(v),
            Err(Fail::Backend(e)) => Err(e),
            Err(Fail::Tss(what, e)) => {
                if conn
                    .ctx
                    .execute_without_session(|c| c.get_random(1))
                    .is_err()
                {
                    // drop the context now, while we hold the device
                    turn.conn = None;
                    tracing::warn!(backend = "tpm", error = %e, "TPM connection lost; will reconnect");
                    Err(unavailable(format!("{what}: {e}")))
                } else {
                    Err(BackendError::Crypto(format!("tpm: {what}: {e}")))
                }
            }
        }
    }

    /// The configured attestation settings.
    pub fn attestation_settings(&self) -> &attest::AttestationSettings {
        &self.attestation
    }

    /// Create a sealed data object holding a fresh data key.
    fn new_data_key(&self) -> Result<DataKey, BackendError> {
        let mut dek = Zeroizing::new(vec![0u8; DEK_LEN]);
        random_bytes(&mut dek).map_err(|e| BackendError::Crypto(e.to_string()))?;
        let (public, private) = self.run(|conn| {
            let template = sealed_object_template().ctx("sealed-object template")?;
            let data = SensitiveData::try_from(dek.to_vec()).ctx("sealed data")?;
            let created = conn
                .ctx
                .create(conn.srk, template, None, Some(data), None, None)
                .ctx("TPM2_Create (sealed object)")?;
            Ok((
                created.out_public.marshall().ctx("marshal public")?,
                created.out_private.value().to_vec(),
            ))
        })?;
        Ok(DataKey {
            public,
            private,
            key: dek,
        })
    }
}

/// A fresh data key and the TPM sealed object that holds it.
struct DataKey {
    public: Vec<u8>,
    private: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
}

impl Sealer for TpmBackend {
    /// Seal under a fresh data key held by a new TPM sealed object.
    fn seal(&self, label: KeyLabel<'_>, private: &[u8]) -> Result<Vec<u8>, BackendError> {
        let dk = self.new_data_key()?;
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        random_bytes(&mut nonce).map_err(|e| BackendError::Crypto(e.to_string()))?;
        let ct =
            aead::seal(&dk.key, &nonce, &label_aad(&label), private).map_err(soft::crypto_err)?;
        let mut h = Vec::with_capacity(8 + dk.public.len() + dk.private.len() + 12 + ct.len());
        h.extend_from_slice(HANDLE_MAGIC);
        h.push(HANDLE_SEALED);
        put_blob(&mut h, &dk.public);
        put_blob(&mut h, &dk.private);
        h.extend_from_slice(&nonce);
        h.extend_from_slice(&ct);
        Ok(h)
    }

    fn unseal(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let Parsed::Sealed {
            object,
            nonce,
            sealed,
        } = parse_handle(handle)?
        else {
            return Err(BackendError::Sealed("not a sealed-key handle"));
        };
        let dek = self.run(|conn| {
            with_loaded(conn, &object, |ctx, h| {
                let data = ctx.unseal(h.into()).ctx("TPM2_Unseal")?;
                Ok(Zeroizing::new(data.value().to_vec()))
            })
        })?;
        if dek.len() != DEK_LEN {
            return Err(BackendError::Sealed("sealed object holds no data key"));
        }
        aead::open(&dek, &nonce, &label_aad(&label), sealed).map_err(|_| {
            BackendError::Sealed("authentication failed (wrong TPM or corrupted record)")
        })
    }
}

/// Sealed keys are unsealed by the TPM on every operation: no prepared keys.
impl SealedCustody for TpmBackend {
    fn provider(&self) -> &Provider {
        &self.provider
    }

    fn prepared_keys(&self) -> Option<&KeyCache> {
        None
    }
}

impl Backend for TpmBackend {
    fn name(&self) -> &'static str {
        "tpm"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn generate(&self, label: KeyLabel<'_>) -> Result<Generated, BackendError> {
        self.caps.check(label.algorithm)?;
        if !self.caps.is_native(label.algorithm) {
            return self.sealed_generate(label);
        }
        let (public, private, point) = self.run(|conn| {
            let template = signing_key_template().ctx("signing-key template")?;
            let created = conn
                .ctx
                .create(conn.srk, template, None, None, None, None)
                .ctx("TPM2_Create (signing key)")?;
            let point = p256_point(&created.out_public)?;
            Ok((
                created.out_public.marshall().ctx("marshal public")?,
                created.out_private.value().to_vec(),
                point,
            ))
        })?;
        let mut handle = Vec::with_capacity(8 + public.len() + private.len());
        handle.extend_from_slice(HANDLE_MAGIC);
        handle.push(HANDLE_NATIVE);
        put_blob(&mut handle, &public);
        put_blob(&mut handle, &private);
        Ok(Generated {
            public: point,
            handle,
        })
    }

    fn sign(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        input: SignInput<'_>,
    ) -> Result<Vec<u8>, BackendError> {
        self.caps.check(label.algorithm)?;
        let (blob, message) = match (parse_handle(handle)?, input) {
            (Parsed::Sealed { .. }, input) => return self.sealed_sign(label, handle, input),
            (Parsed::Native(b), SignInput::Message(m))
                if label.algorithm == Algorithm::EcdsaP256 =>
            {
                (b, m)
            }
            // native keys are single-algorithm: no hybrid components
            (Parsed::Native(_), SignInput::ClassicalComponent(_)) => {
                return Err(BackendError::Unsupported(label.algorithm))
            }
            (Parsed::Native(_), _) => return Err(BackendError::Sealed("not a signing key handle")),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let sig = self.run(|conn| {
            with_loaded(conn, &blob, |ctx, h| {
                let digest = Digest::try_from(digest.as_ref().to_vec()).ctx("digest")?;
                let ticket = null_ticket().ctx("hash-check ticket")?;
                ctx.sign(h, digest, SignatureScheme::Null, ticket)
                    .ctx("TPM2_Sign")
            })
        })?;
        super::ecdsa_der(&ecdsa_rs(&sig)?)
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
        self.sealed_aead_seal(label, handle, nonce, aad, plaintext)
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
        self.sealed_aead_open(label, handle, nonce, aad, ciphertext)
    }

    /// Nothing to do in the TPM: a key is its blobs, and the store's wipe
    /// of the handle destroys them (the TPM holds no copy; without the
    /// blobs the key cannot be loaded again).
    fn destroy(&self, _label: KeyLabel<'_>, handle: &[u8]) -> Result<(), BackendError> {
        parse_handle(handle).map(|_| ())
    }

    /// `TPM2_GetRandom` of one byte: the TPM answers on this context. When
    /// a call holds the device, the device is in use and that call reports
    /// its own failure: the probe does not queue behind it.
    fn health(&self) -> Result<(), BackendError> {
        if self.slot.lock().unwrap_or_else(|p| p.into_inner()).busy {
            return Ok(());
        }
        self.run(|conn| {
            conn.ctx
                .execute_without_session(|c| c.get_random(1))
                .ctx("TPM2_GetRandom")
                .map(|_| ())
        })
    }

    fn attest(&self) -> Option<Result<super::Attested, BackendError>> {
        Some(attest::attest(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_parse_strictly() {
        let mut native = b"TPM\x01".to_vec();
        put_blob(&mut native, &[1, 2, 3]);
        put_blob(&mut native, &[4, 5]);
        assert!(matches!(parse_handle(&native), Ok(Parsed::Native(_))));
        // trailing bytes, truncation, empty blobs, wrong magic
        let mut long = native.clone();
        long.push(0);
        assert!(parse_handle(&long).is_err());
        assert!(parse_handle(&native[..native.len() - 1]).is_err());
        assert!(parse_handle(b"TPM\x01\x00\x00\x00\x00").is_err());
        assert!(parse_handle(b"P11\x01\x00\x01\x01\x00\x01\x01").is_err());
        let mut sealed = b"TPM\x02".to_vec();
        put_blob(&mut sealed, &[1]);
        put_blob(&mut sealed, &[2]);
        sealed.extend_from_slice(&[0u8; 12 + 16]);
        assert!(matches!(parse_handle(&sealed), Ok(Parsed::Sealed { .. })));
        assert!(parse_handle(&sealed[..sealed.len() - 1]).is_err());
        assert!(parse_handle(b"").is_err());
    }
}
