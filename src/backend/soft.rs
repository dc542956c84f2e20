//! Software keys held sealed: the operations every backend shares for keys
//! whose private half is a software key sealed by custody (all of them for
//! `sealed-file`; the algorithms a token cannot do for `pkcs11`).
//!
//! A backend supplies the [`Sealer`] (master key, or a token-resident KEK);
//! this module generates, unseals into zeroizing memory for one operation,
//! and runs the algorithm.
use zeroize::Zeroizing;

use super::{BackendError, Generated, KeyLabel};
use crate::crypto::{aead, Provider};

const AAD_PREFIX: &[u8] = b"ron-kms/sealed/v1\0";

/// The associated data that binds a sealed key to its label:
/// `"ron-kms/sealed/v1" 0x00 algorithm 0x00 tenant "/" kid`.
pub fn label_aad(label: &KeyLabel<'_>) -> Vec<u8> {
    let mut aad = AAD_PREFIX.to_vec();
    aad.extend_from_slice(label.algorithm.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(label.tenant.as_bytes());
    aad.push(b'/');
    aad.extend_from_slice(label.kid.as_bytes());
    aad
}

/// Seals private key bytes for one label, and opens what it sealed.
pub trait Sealer {
    fn seal(&self, label: KeyLabel<'_>, private: &[u8]) -> Result<Vec<u8>, BackendError>;
    fn unseal(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError>;
}

pub fn crypto_err(e: crate::crypto::CryptoError) -> BackendError {
    BackendError::Crypto(e.to_string())
}

pub fn generate(
    s: &dyn Sealer,
    provider: &Provider,
    label: KeyLabel<'_>,
) -> Result<Generated, BackendError> {
    let kp = provider.generate(label.algorithm).map_err(crypto_err)?;
    let handle = s.seal(label, &kp.private)?;
    Ok(Generated {
        public: kp.public,
        handle,
    })
}

pub fn sign(
    s: &dyn Sealer,
    provider: &Provider,
    label: KeyLabel<'_>,
    handle: &[u8],
    message: &[u8],
) -> Result<Vec<u8>, BackendError> {
    let private = s.unseal(label, handle)?;
    provider
        .signer(label.algorithm)
        .and_then(|sig| sig.sign(&private, message))
        .map_err(crypto_err)
}

pub fn decapsulate(
    s: &dyn Sealer,
    provider: &Provider,
    label: KeyLabel<'_>,
    handle: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    let private = s.unseal(label, handle)?;
    let kem = provider.kem(label.algorithm).map_err(crypto_err)?;
    // A malformed KEM ciphertext is the caller's fault: report it like a
    // failed AEAD open so it reveals nothing.
    kem.decapsulate(&private, ciphertext).map_err(|e| match e {
        crate::crypto::CryptoError::BadPrivateKey(_) => crypto_err(e),
        _ => BackendError::Decrypt,
    })
}

pub fn aead_seal(
    s: &dyn Sealer,
    label: KeyLabel<'_>,
    handle: &[u8],
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, BackendError> {
    let key = s.unseal(label, handle)?;
    aead::seal(&key, nonce, aad, plaintext).map_err(crypto_err)
}

pub fn aead_open(
    s: &dyn Sealer,
    label: KeyLabel<'_>,
    handle: &[u8],
    nonce: &[u8; 12],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    let key = s.unseal(label, handle)?;
    aead::open(&key, nonce, aad, ciphertext).map_err(|_| BackendError::Decrypt)
}
