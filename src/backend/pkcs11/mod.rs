//! `pkcs11` custody: keys live in a PKCS#11 token (an HSM; tested on
//! SoftHSM2) and the token performs the private-key operations.
//!
//! - **Native keys** are generated inside the token as token objects with
//!   `CKA_SENSITIVE=true`, `CKA_EXTRACTABLE=false`: ECDSA P-256 (`CKM_ECDSA`
//!   over a SHA-256 digest computed here, DER-encoded on the way out),
//!   Ed25519 (`CKM_EDDSA`), AES-256 (`CKM_AES_GCM`). `CKA_LABEL` is
//!   `ron-kms/<tenant>/<name>#v<N>`; `CKA_ID` is 16 random bytes, kept in the
//!   handle the store persists ([`keys`]).
//! - **Sealed keys**: algorithms the token cannot do (ML-DSA, ML-KEM, the
//!   hybrids) are software keys sealed with AES-256-GCM *by the token* under a
//!   token-resident KEK (`ron-kms/kek/v1`, created once, non-extractable;
//!   [`kek`]). They are unsealed into zeroizing memory for one operation,
//!   through the shared sealed-key operations ([`SealedCustody`]).
//! - Which path an algorithm takes comes from the token's mechanisms, probed
//!   at start-up with `C_GetMechanismInfo` ([`mechanisms`]), never from a
//!   fixed list.
//!
//! Handles (docs/pkcs11.md; [`handle`]): native `"P11" 0x01 kind(1) id(16)`
//! with kind `k` (key pair, private half) or `s` (secret key); sealed `"P11"
//! 0x02 nonce(12) ciphertext‖tag` with the same associated data as
//! `sealed-file`.
//!
//! Sessions come from a bounded pool of logged-in R/W sessions, opened at
//! connect time and reused; object handles are cached per connection. A
//! device-class error (device removed, session or login lost, library not
//! initialised, general error; [`error`]) drops the connection; the next call
//! reconnects with exponential backoff and jitter ([`pool`]). The circuit
//! breaker in front of every backend ([`super::breaker`]) fails fast while
//! the token is away.
//!
//! This file holds the backend itself: its settings, start-up, and the
//! [`Backend`] impl, which checks the capabilities and sends each call down
//! the native or the sealed path. It must not talk to the token other than
//! through the pool. Calls block; the service runs them on its bounded
//! blocking pool.
mod error;
mod handle;
mod kek;
mod keys;
mod mechanisms;
mod pool;
mod templates;

use std::path::PathBuf;
use std::sync::Arc;

use zeroize::Zeroizing;

use self::handle::{Parsed, KIND_PAIR, KIND_SECRET};
use self::pool::Pool;
use super::soft::{SealedCustody, Sealer};
use super::{
    Backend, BackendError, Capabilities, Generated, Held, KeyLabel, KeyOp, Performed, SignInput,
};
use crate::crypto::{aead, random_bytes, Algorithm, Provider};

/// What `serve` needs to reach the token (docs/configuration.md).
pub struct Pkcs11Settings {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// `CKA_LABEL` of the token to use.
    pub token_label: String,
    /// The user PIN (from a file or an env var; never a CLI argument).
    pub pin: Zeroizing<String>,
    /// Logged-in sessions kept open; 0: [`default_pool_size`]. Either way
    /// no more than the token's `ulMaxSessionCount` / `ulMaxRwSessionCount`
    /// when it reports one.
    pub pool_size: usize,
}

/// The pool's size when none is configured: a session for every thread that
/// can call the token at once — the runtime's async workers (one per core:
/// native token keys sign inline) and the bounded blocking pool (two per
/// core: sealed keys unseal under the KEK there) — so no call waits for a
/// session while a core is free; at least 4, at most 64.
pub fn default_pool_size() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    (cores * 3).clamp(4, 64)
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

pub struct Pkcs11Backend {
    pool: Pool,
    provider: Arc<Provider>,
    caps: Capabilities,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("module", &self.pool.module())
            .field("token_label", &self.pool.token_label())
            .finish_non_exhaustive()
    }
}

impl Pkcs11Backend {
    /// Load the module, find the token, log in, open the session pool, find
    /// or create the KEK, and probe the mechanism list. Any failure here is
    /// a start-up error naming its cause.
    pub fn open(settings: Pkcs11Settings, provider: Arc<Provider>) -> Result<Self, String> {
        let pool_size = match settings.pool_size {
            0 => default_pool_size(),
            n => n,
        };
        let (pool, mechs) = Pool::open(
            settings.module,
            settings.token_label,
            settings.pin,
            pool_size,
        )?;
        let caps = mechanisms::capabilities(&mechs);
        let me = Pkcs11Backend {
            pool: pool.with_kek(!caps.sealed.is_empty()),
            provider,
            caps,
        };
        if !me.pool.has_kek() && !me.caps.sealed.is_empty() {
            return Err("the token has no KEK".into());
        }
        tracing::info!(
            native = ?me.caps.native.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            sealed = me.caps.sealed.len(),
            pool = me.pool.pool_size(),
            "pkcs11 token ready"
        );
        Ok(me)
    }
}

/// Sealed keys: AES-256-GCM under the token's KEK, in the token ([`kek`]),
/// on a pooled session.
impl Sealer for Pkcs11Backend {
    fn seal(&self, label: KeyLabel<'_>, private: &[u8]) -> Result<Vec<u8>, BackendError> {
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        random_bytes(&mut nonce).map_err(|e| BackendError::Crypto(e.to_string()))?;
        self.pool
            .run(|conn, s| kek::seal(s, conn.kek, &label, &nonce, private))
    }

    fn unseal(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let Parsed::Sealed(body) = handle::parse(handle)? else {
            return Err(BackendError::Sealed("not a sealed-key handle"));
        };
        match self
            .pool
            .run(|conn, s| kek::open(s, conn.kek, &label, body))
        {
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
}

impl Backend for Pkcs11Backend {
    fn name(&self) -> &'static str {
        "pkcs11"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn generate(&self, label: KeyLabel<'_>) -> Result<Generated, BackendError> {
        match self.caps.check(label.algorithm)? {
            Held::Native => keys::generate(&self.pool, label),
            Held::Sealed => self.sealed_generate(label),
        }
    }

    /// Token keys run on the token; sealed keys (and every KEM key: none is
    /// native here) on the sealed path.
    fn perform(&self, label: KeyLabel<'_>, handle: &[u8], op: KeyOp<'_>) -> Performed {
        self.caps.check(label.algorithm)?;
        let r = match (handle::parse(handle)?, op) {
            (Parsed::Sealed(_), _) | (_, KeyOp::Decapsulate(_)) => {
                return self.sealed_perform(label, handle, op)
            }
            (Parsed::Native(r), _) => r,
        };
        match op {
            KeyOp::Sign(SignInput::Message(m)) if r.kind == KIND_PAIR => {
                keys::sign(&self.pool, label, &r, m).map(Zeroizing::new)
            }
            KeyOp::Sign(SignInput::Prehashed(d))
                if r.kind == KIND_PAIR && label.algorithm == Algorithm::EcdsaP256 =>
            {
                keys::sign_digest(&self.pool, label, &r, d).map(Zeroizing::new)
            }
            // Ed25519 on the token signs whole messages only
            KeyOp::Sign(SignInput::Prehashed(_)) if r.kind == KIND_PAIR => {
                Err(BackendError::Unsupported(label.algorithm))
            }
            // token keys are single-algorithm: no hybrid components
            KeyOp::Sign(SignInput::ClassicalComponent(_)) => {
                Err(BackendError::Unsupported(label.algorithm))
            }
            KeyOp::Sign(_) | KeyOp::Decapsulate(_) => {
                Err(BackendError::Sealed("not a signing key handle"))
            }
            KeyOp::AeadSeal(a) => {
                keys::aead_seal(&self.pool, label, &r, a.nonce, a.aad, a.data).map(Zeroizing::new)
            }
            KeyOp::AeadOpen(a) => keys::aead_open(&self.pool, label, &r, a.nonce, a.aad, a.data),
            KeyOp::Mac(d) if r.kind == KIND_SECRET => {
                keys::mac(&self.pool, label, &r, d).map(Zeroizing::new)
            }
            KeyOp::Mac(_) => Err(BackendError::Sealed("not a secret key handle")),
        }
    }

    /// `C_DestroyObject` on every object with the key's `CKA_ID` (both
    /// halves of a pair). Sealed keys: the store's wipe of the handle is the
    /// destruction.
    fn destroy(&self, label: KeyLabel<'_>, handle: &[u8]) -> Result<(), BackendError> {
        match handle::parse(handle)? {
            Parsed::Sealed(_) => Ok(()),
            Parsed::Native(r) => keys::destroy(&self.pool, label, &r),
        }
    }

    /// A token-object read: the KEK must still be found ([`Pool::health`]).
    fn health(&self) -> Result<(), BackendError> {
        self.pool.health()
    }
}
