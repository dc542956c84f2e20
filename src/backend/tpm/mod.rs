//! `tpm` custody: keys live under a TPM 2.0's storage hierarchy (tested on
//! swtpm) and the TPM performs or guards every private-key operation.
//!
//! - **Native keys** ([`keys`]): ECDSA P-256 signing keys are created by the
//!   TPM under the storage root key (SRK, an ECC P-256 primary in the owner
//!   hierarchy, re-derived from the TPM's seed on every connect). The TPM
//!   returns the key's public area and its private area encrypted under the
//!   SRK; ron-kms persists both as the key's handle and loads them for each
//!   signature. The TPM signs a SHA-256 digest computed here; the signature
//!   leaves DER-encoded.
//! - **Sealed keys** ([`sealing`]): what the TPM cannot do (Ed25519, ML-DSA,
//!   ML-KEM, the hybrids, AES-256-GCM wrap keys) are software keys encrypted
//!   with AES-256-GCM under a fresh 32-byte data key, and that data key is a
//!   TPM *sealed data object* under the SRK. Using the key means loading the
//!   sealed object, `TPM2_Unseal`, and opening the software key into
//!   zeroizing memory for one operation, through the shared sealed-key
//!   operations ([`SealedCustody`]).
//! - **One serial device** ([`device`]): one ESAPI context behind a lock.
//!   Callers queue for it with a bound ([`TpmSettings::queue_depth`]); past
//!   the bound a call fails at once with [`BackendError::Busy`], and a call
//!   that waits longer than [`QUEUE_WAIT`] fails with `Unavailable`.
//!   Verification never comes here: public-key operations run in software.
//! - **Reconnect**: a failing command is followed by a cheap probe
//!   (`TPM2_GetRandom`) and translated once ([`error`]); when the TPM does
//!   not answer, the context is dropped and the next call reconnects with
//!   exponential backoff and jitter (`backend_reconnects_total`), re-creating
//!   the SRK. Keys are blobs in the store, so nothing is lost while the TPM
//!   is away.
//! - **Attestation**: [`attest`] quotes the configured PCRs with an
//!   attestation key and verifies the quote in software.
//!
//! Handles (docs/tpm.md; [`handle`]): native `"TPM" 0x01 u16 len ‖ public ‖
//! u16 len ‖ private`; sealed `"TPM" 0x02 u16 len ‖ public ‖ u16 len ‖
//! private ‖ nonce(12) ‖ ciphertext‖tag` (the sealed object's public and
//! private areas, then the software key under the unsealed data key, with
//! the `sealed-file` associated data). Templates: [`templates`].
//!
//! This file holds the backend itself: its settings, start-up, and the
//! [`Backend`] impl, which checks the capabilities and sends each call down
//! the native or the sealed path. It must not issue TPM commands other than
//! through the device. Calls block; the service runs them on its bounded
//! blocking pool.
pub mod attest;
mod device;
pub mod ekcert;
mod error;
mod handle;
pub mod identity;
mod keys;
mod sealing;
mod session;
mod templates;

use std::sync::Arc;

use zeroize::Zeroizing;

pub use self::attest::PcrSelection;
pub use self::device::QUEUE_WAIT;
pub use self::identity::Identity;
pub use self::session::start as start_session;
pub use self::templates::{ak_template, null_ticket, signing_key_template, srk_template};

use self::device::{Conn, Device};
use self::error::{Ctx, Fail};
use self::handle::Parsed;
use super::soft::SealedCustody;
use super::{
    Backend, BackendError, Capabilities, Generated, Held, KeyLabel, KeyOp, Performed, SignInput,
};
use crate::crypto::{Algorithm, Provider};

pub const DEFAULT_QUEUE_DEPTH: usize = 64;

/// What `serve` needs to reach the TPM (docs/configuration.md).
#[derive(Clone, Debug)]
pub struct TpmSettings {
    /// TCTI name and configuration: `swtpm:host=…,port=…`,
    /// `device:/dev/tpmrm0`, `tabrmd`.
    pub tcti: String,
    /// Calls allowed to wait for the TPM at once.
    pub queue_depth: usize,
    /// PEM roots (and intermediates) the EK certificate must chain to.
    pub ek_ca_file: Option<std::path::PathBuf>,
    /// Seal data keys under a policy on these PCRs (`KMS_TPM_SEAL_PCRS`).
    pub seal_pcrs: Option<attest::PcrSelection>,
    /// PCRs to quote, and what they must hash to.
    pub attestation: attest::AttestationSettings,
}

pub struct TpmBackend {
    device: Device,
    provider: Arc<Provider>,
    caps: Capabilities,
    attestation: attest::AttestationSettings,
    seal_pcrs: Option<attest::PcrSelection>,
    /// The digest of the PCR values sealed objects are bound to (set by
    /// the caller from the store, [`Self::set_seal_target`]).
    seal_target: std::sync::Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for TpmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmBackend")
            .field("tcti", &self.device.tcti())
            .finish_non_exhaustive()
    }
}

impl TpmBackend {
    /// Connect, create the SRK, and check the TPM answers and is `pinned`
    /// (with no pin, whatever answers is trusted: the caller pins
    /// [`Self::identity`]). A failure here is a start-up error naming its
    /// cause.
    pub fn open(
        settings: TpmSettings,
        provider: Arc<Provider>,
        pinned: Option<Identity>,
    ) -> Result<Self, String> {
        let queue_depth = settings.queue_depth;
        let ek_ca = match &settings.ek_ca_file {
            Some(p) => Some(ekcert::EkCa::load(p)?),
            None => None,
        };
        let device = Device::open(settings.tcti, queue_depth, pinned, ek_ca)?;
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
        tracing::info!(tcti = %device.tcti(), queue = queue_depth, "tpm ready");
        Ok(TpmBackend {
            device,
            provider,
            caps,
            attestation: settings.attestation,
            seal_pcrs: settings.seal_pcrs,
            seal_target: std::sync::Mutex::new(None),
        })
    }

    /// The PCRs sealed objects are bound to (`KMS_TPM_SEAL_PCRS`).
    pub fn seal_pcrs(&self) -> Option<&attest::PcrSelection> {
        self.seal_pcrs.as_ref()
    }

    /// The digest of the PCR values new sealed objects are bound to, and
    /// the health check compares the PCRs with.
    pub fn seal_target(&self) -> Option<Vec<u8>> {
        self.seal_target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_seal_target(&self, digest: Vec<u8>) {
        *self.seal_target.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest);
    }

    /// SHA-256 over the current values of the `KMS_TPM_SEAL_PCRS` PCRs.
    pub fn current_seal_digest(&self) -> Result<Option<Vec<u8>>, BackendError> {
        let Some(sel) = self.seal_pcrs.clone() else {
            return Ok(None);
        };
        self.run(|conn| sel.read_digest(&mut conn.ctx)).map(Some)
    }

    /// Run `f` with the device ([`Device::run`]).
    fn run<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, Fail>) -> Result<T, BackendError> {
        self.device.run(f)
    }

    /// The identity this TPM is held to: the pin it was opened with, or
    /// what it presented when there was none.
    pub fn identity(&self) -> &Identity {
        self.device.pinned()
    }

    /// The configured attestation settings.
    pub fn attestation_settings(&self) -> &attest::AttestationSettings {
        &self.attestation
    }
}

/// Sealed keys are unsealed by the TPM on every operation: no prepared keys.
impl SealedCustody for TpmBackend {
    fn provider(&self) -> &Provider {
        &self.provider
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
        match self.caps.check(label.algorithm)? {
            Held::Native => keys::generate(&self.device, &label),
            Held::Sealed => self.sealed_generate(label),
        }
    }

    /// Native keys (ECDSA P-256) sign in the TPM; everything else, and
    /// every wrap key (never native here), runs on the sealed path.
    fn perform(&self, label: KeyLabel<'_>, handle: &[u8], op: KeyOp<'_>) -> Performed {
        self.caps.check(label.algorithm)?;
        let KeyOp::Sign(input) = op else {
            return self.sealed_perform(label, handle, op);
        };
        match (handle::parse(handle)?, input) {
            (Parsed::Sealed(_), _) => self.sealed_perform(label, handle, op),
            (Parsed::Native(b), SignInput::Message(m))
                if label.algorithm == Algorithm::EcdsaP256 =>
            {
                let digest = ring::digest::digest(&ring::digest::SHA256, m);
                keys::sign(&self.device, &label, &b, digest.as_ref()).map(Zeroizing::new)
            }
            (Parsed::Native(b), SignInput::Prehashed(d))
                if label.algorithm == Algorithm::EcdsaP256 =>
            {
                keys::sign(&self.device, &label, &b, d).map(Zeroizing::new)
            }
            // native keys are single-algorithm: no hybrid components
            (Parsed::Native(_), SignInput::ClassicalComponent(_)) => {
                Err(BackendError::Unsupported(label.algorithm))
            }
            (Parsed::Native(_), _) => Err(BackendError::Sealed("not a signing key handle")),
        }
    }

    /// Nothing to do in the TPM: a key is its blobs, and the store's wipe
    /// of the handle destroys them (the TPM holds no copy; without the
    /// blobs the key cannot be loaded again).
    fn destroy(&self, _label: KeyLabel<'_>, handle: &[u8]) -> Result<(), BackendError> {
        handle::parse(handle).map(|_| ())
    }

    /// `TPM2_GetRandom` of one byte: the TPM answers on this context. When
    /// a call holds the device, the device is in use and that call reports
    /// its own failure: the probe does not queue behind it.
    fn health(&self) -> Result<(), BackendError> {
        if self.device.busy() {
            return Ok(());
        }
        self.run(|conn| {
            conn.ctx
                .execute_without_session(|c| c.get_random(1))
                .ctx("TPM2_GetRandom")
                .map(|_| ())
        })?;
        // with a PCR policy: are the PCRs in the state the keys are sealed to?
        let (Some(sel), Some(target)) = (&self.seal_pcrs, self.seal_target()) else {
            return Ok(());
        };
        let now = self.current_seal_digest()?.unwrap_or_default();
        if now != target {
            return Err(BackendError::Attestation(format!(
                "PCRs {sel} are not in the state the TPM-sealed keys are sealed to (digest {}, sealed to {}): those keys cannot be unsealed; docs/tpm.md, \"Sealing to PCRs\"",
                hex::encode(&now),
                hex::encode(&target)
            )));
        }
        Ok(())
    }

    fn attest(&self) -> Option<Result<super::Attested, BackendError>> {
        Some(attest::attest(self))
    }
}
