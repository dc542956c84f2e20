//! Custody: where private keys live and where private-key operations run.
//!
//! One small synchronous trait, [`Backend`], with explicit [`Capabilities`].
//! Calls may block (a device, a sealed-key unseal plus a PQ signature), so the
//! service runs them on its bounded blocking pool, never on an async worker.
//!
//! A backend returns, for each generated key, an opaque *handle* that the
//! store persists next to the key record. What the handle is depends on the
//! backend: for `sealed-file` it is the private key sealed under the master
//! key; for an HSM it would be an object reference. A handle never holds
//! private material in the clear.
//!
//! This module must not: return private key material to callers, log inputs,
//! or touch the store.
pub mod breaker;
pub mod faults;
pub mod pkcs11;
pub mod sealed_file;
pub mod soft;
pub mod tpm;

use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::Algorithm;

/// Errors from custody, typed so the service can tell a flapping device
/// (retryable) from bad key material (not retryable).
#[derive(Debug, Error)]
pub enum BackendError {
    /// The device or its session is unavailable; the caller may retry.
    #[error("custody unavailable: {0}")]
    Unavailable(String),
    /// AEAD authentication failed on caller-supplied ciphertext.
    #[error("decryption failed")]
    Decrypt,
    /// This backend cannot hold keys of this algorithm.
    #[error("algorithm {0} is not supported by this backend")]
    Unsupported(Algorithm),
    /// A stored handle would not unseal: wrong master key or a corrupted
    /// record. Never retryable.
    #[error("sealed key could not be opened: {0}")]
    Sealed(&'static str),
    /// The algorithm implementation failed on key material that unsealed.
    #[error("{0}")]
    Crypto(String),
    /// The device's queue is full: shed load, do not open the breaker.
    #[error("custody busy: {0}")]
    Busy(String),
    /// An attestation did not verify; the message says which check failed.
    #[error("attestation failed: {0}")]
    Attestation(String),
}

/// What a backend can do; reported, not assumed.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// Algorithms whose private keys live natively in the device.
    pub native: Vec<Algorithm>,
    /// Algorithms held as software keys sealed by this backend.
    pub sealed: Vec<Algorithm>,
    /// Whether the backend can attest to its state (TPM quote).
    pub attestation: bool,
    /// Whether keys survive a process restart.
    pub persistent: bool,
    /// Whether every call waits on a slow or serial device (a TPM): the
    /// service then runs all custody calls on its blocking pool, not only
    /// the CPU-heavy ones.
    pub device_bound: bool,
}

impl Capabilities {
    pub fn supports(&self, alg: Algorithm) -> bool {
        self.native.contains(&alg) || self.sealed.contains(&alg)
    }

    /// Whether keys of `alg` live natively in the device (else, when
    /// supported, they are sealed software keys).
    pub fn is_native(&self, alg: Algorithm) -> bool {
        self.native.contains(&alg)
    }

    /// The one capability check: every backend starts each key operation
    /// with it, so an algorithm the capabilities do not list is refused
    /// with [`BackendError::Unsupported`] before any handle is read or any
    /// device is touched. For one it lists: where its keys are held.
    pub fn check(&self, alg: Algorithm) -> Result<Held, BackendError> {
        if self.is_native(alg) {
            Ok(Held::Native)
        } else if self.sealed.contains(&alg) {
            Ok(Held::Sealed)
        } else {
            Err(BackendError::Unsupported(alg))
        }
    }
}

/// Where a backend holds the keys of one algorithm ([`Capabilities::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// In the device, as a device object.
    Native,
    /// As a software key sealed by custody ([`soft::SealedCustody`]).
    Sealed,
}

/// What [`Backend::perform`] returns.
pub type Performed = Result<Zeroizing<Vec<u8>>, BackendError>;

/// Names one key version inside custody: `tenant/name#vN` plus algorithm.
/// Sealing binds this label, so a handle copied onto another key record
/// does not open.
#[derive(Clone, Copy, Debug)]
pub struct KeyLabel<'a> {
    pub tenant: &'a str,
    pub kid: &'a str,
    pub algorithm: Algorithm,
}

/// What a signing call signs. (No `Debug`: it holds caller input.)
#[derive(Clone, Copy)]
pub enum SignInput<'a> {
    /// The bytes, with the algorithm's message semantics: Ed25519 and ML-DSA
    /// sign them, ECDSA signs their SHA-256. For `hybrid-ed25519-ml-dsa-65`
    /// the bytes are the composite message representative M′
    /// (`crypto::hybrid::representative`) and the result is the composite
    /// signature.
    Message(&'a [u8]),
    /// `hybrid-ed25519-ml-dsa-65` only: a plain Ed25519 signature over the
    /// bytes by the key's classical component (the PQ policy's phase 0).
    /// Refused for bytes that start with the composite prefix.
    ClassicalComponent(&'a [u8]),
    /// A digest the caller computed, of the kind the key's algorithm takes
    /// (`Algorithm::prehash`; its length already checked): a SHA-256 for
    /// ECDSA P-256, μ for ML-DSA. The signature is the one the message
    /// behind the digest gets. (The hybrid's pre-hash arrives as
    /// `Message(M′)`: the service builds M′ from it.)
    Prehashed(&'a [u8]),
}

/// A freshly generated key: its public half (empty for symmetric keys) and
/// the custody handle to persist.
pub struct Generated {
    pub public: Vec<u8>,
    pub handle: Vec<u8>,
}

/// One private-key operation on a stored key, as [`Backend::perform`]
/// takes it. (No `Debug`: it holds caller input.)
#[derive(Clone, Copy)]
pub enum KeyOp<'a> {
    /// Sign ([`SignInput`] says what).
    Sign(SignInput<'a>),
    /// KEM decapsulation of this ciphertext with a wrap key.
    Decapsulate(&'a [u8]),
    /// AES-256-GCM seal of `data`; the result is ciphertext || tag.
    AeadSeal(Aead<'a>),
    /// AES-256-GCM open of `data` (ciphertext || tag).
    AeadOpen(Aead<'a>),
    /// HMAC of these bytes with an HMAC key; the result is the tag.
    Mac(&'a [u8]),
}

/// The inputs of one AES-256-GCM call with a stored key.
#[derive(Clone, Copy)]
pub struct Aead<'a> {
    pub nonce: &'a [u8; 12],
    pub aad: &'a [u8],
    /// The plaintext to seal, or the ciphertext || tag to open.
    pub data: &'a [u8],
}

impl<'a> Aead<'a> {
    pub fn new(nonce: &'a [u8; 12], aad: &'a [u8], data: &'a [u8]) -> Self {
        Aead { nonce, aad, data }
    }
}

/// A verified attestation (TPM quote).
#[derive(Clone, Debug)]
pub struct Attested {
    /// The quoted PCR composite digest (SHA-256 over the selected PCRs).
    pub pcr_digest: Vec<u8>,
    /// The attestation key's public point (uncompressed SEC1).
    pub ak_public: Vec<u8>,
}

/// The custody interface. Implementations are `Send + Sync` and internally
/// synchronised; every method may block.
pub trait Backend: Send + Sync {
    /// Short name used in config and `/readyz`: `sealed-file`, `pkcs11`, `tpm`.
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> &Capabilities;

    /// Generate a key in custody. On error nothing is left behind (for a
    /// device: the backend deletes a half-created object before returning).
    fn generate(&self, label: KeyLabel<'_>) -> Result<Generated, BackendError>;

    /// Run one private-key operation ([`KeyOp`]) on a stored key: the one
    /// method a backend (or a wrapper such as the breaker) implements for
    /// every operation; [`Backend::sign`] and the others below are typed
    /// front doors to it. Signatures and sealed ciphertexts come back in
    /// the same zeroizing buffer as decrypted secrets.
    fn perform(&self, label: KeyLabel<'_>, handle: &[u8], op: KeyOp<'_>) -> Performed;

    /// Sign with a signing key ([`SignInput`] says what is signed).
    fn sign(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        input: SignInput<'_>,
    ) -> Result<Vec<u8>, BackendError> {
        let mut out = self.perform(label, handle, KeyOp::Sign(input))?;
        Ok(std::mem::take(&mut *out))
    }

    /// KEM decapsulation with a wrap key's private half.
    fn decapsulate(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.perform(label, handle, KeyOp::Decapsulate(ciphertext))
    }

    /// AES-256-GCM seal with a symmetric wrap key; returns ciphertext || tag.
    fn aead_seal(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        nonce: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let op = KeyOp::AeadSeal(Aead::new(nonce, aad, plaintext));
        let mut out = self.perform(label, handle, op)?;
        Ok(std::mem::take(&mut *out))
    }

    /// AES-256-GCM open; [`BackendError::Decrypt`] when it does not
    /// authenticate.
    fn aead_open(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.perform(
            label,
            handle,
            KeyOp::AeadOpen(Aead::new(nonce, aad, ciphertext)),
        )
    }

    /// The HMAC tag of `data` under an HMAC key.
    fn mac(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let mut out = self.perform(label, handle, KeyOp::Mac(data))?;
        Ok(std::mem::take(&mut *out))
    }

    /// Remove the key's material from custody. For backends whose handle *is*
    /// the sealed material, the store's wipe of the handle is the destruction
    /// and this is a no-op. Idempotent.
    fn destroy(&self, label: KeyLabel<'_>, handle: &[u8]) -> Result<(), BackendError>;

    /// A cheap liveness probe for `/readyz`.
    fn health(&self) -> Result<(), BackendError>;

    /// Attest to the device's state (a TPM quote, verified); `None` when
    /// the backend cannot attest.
    fn attest(&self) -> Option<Result<Attested, BackendError>> {
        None
    }
}

/// DER-encode an ECDSA P-256 signature that a device (PKCS#11, TPM)
/// returned as `r || s`.
pub(crate) fn ecdsa_der(rs: &[u8]) -> Result<Vec<u8>, BackendError> {
    crate::crypto::der::ecdsa_p256_sig(rs).ok_or_else(|| {
        BackendError::Crypto(format!(
            "device returned a {}-byte ECDSA signature, expected 64",
            rs.len()
        ))
    })
}

/// Jitter for backoffs: a uniform point in [d/2, d].
pub(crate) fn jittered(d: std::time::Duration) -> std::time::Duration {
    let mut b = [0u8; 2];
    let _ = crate::crypto::random_bytes(&mut b);
    let frac = u16::from_le_bytes(b) as f64 / u16::MAX as f64;
    d.mul_f64(0.5 + frac / 2.0)
}

/// How custody's failures reach callers (the one translation from backend
/// errors to the domain error).
impl From<BackendError> for crate::error::Error {
    fn from(e: BackendError) -> Self {
        use crate::error::Error;
        use BackendError as B;
        match e {
            B::Unavailable(m) => Error::Unavailable(m),
            B::Decrypt => Error::UnwrapFailed,
            B::Unsupported(a) => Error::UnknownAlgorithm(a.to_string()),
            B::Sealed(m) => Error::Internal(format!("custody: {m}")),
            B::Crypto(m) => Error::Internal(format!("custody crypto: {m}")),
            B::Busy(m) => Error::Overloaded(m),
            B::Attestation(m) => Error::AttestationMissing(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capability_check_refuses_what_is_not_listed() {
        let caps = Capabilities {
            native: vec![Algorithm::EcdsaP256],
            sealed: vec![Algorithm::MlDsa65],
            attestation: false,
            persistent: true,
            device_bound: false,
        };
        assert!(caps.check(Algorithm::EcdsaP256).is_ok());
        assert!(caps.check(Algorithm::MlDsa65).is_ok());
        assert!(matches!(
            caps.check(Algorithm::Ed25519),
            Err(BackendError::Unsupported(Algorithm::Ed25519))
        ));
        assert!(caps.is_native(Algorithm::EcdsaP256));
        assert!(!caps.is_native(Algorithm::MlDsa65));
    }
}
