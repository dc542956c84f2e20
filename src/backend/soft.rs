//! Software keys held sealed: the operations every backend shares for keys
//! whose private half is a software key sealed by custody (all of them for
//! `sealed-file`; the algorithms the device cannot do for `pkcs11` and
//! `tpm`).
//!
//! A backend supplies the [`Sealer`] (master key, a token-resident KEK, or a
//! TPM sealed object) and implements [`SealedCustody`]; the trait's default
//! methods generate, unseal into zeroizing memory for one operation, and run
//! the algorithm. They are written once, here: a backend's `Backend` impl
//! only checks its capabilities, decides native vs sealed, and calls them
//! for the sealed path.
//!
//! This module must not: check capabilities (the backend does, first),
//! touch a device other than through [`Sealer`], or keep unsealed key
//! material beyond one operation (the one exception is [`KeyCache`]).
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{BackendError, Generated, KeyLabel, KeyOp, Performed, SignInput};
use crate::crypto::{aead, mac, Algorithm, Provider};

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

/// Prepared Ed25519 signing keys for hot keys, so a sign is one scalar
/// multiplication instead of two: deriving the key pair from the seed costs
/// as much as the signature itself (half of a sign's crypto in the service's
/// profile; PERFORMANCE.md).
///
/// Entries are `ed25519_dalek::SigningKey`s, which wipe themselves when
/// dropped (zeroize on drop), keyed by SHA-256 of the label's associated
/// data and the sealed handle, so an entry only ever serves the exact
/// sealed blob it was unsealed from. Bounded ([`KEY_CACHE_ENTRIES`]) and
/// dropped after [`KEY_CACHE_IDLE`] without use; `destroy` drops an entry at
/// once. Only `sealed-file` custody uses it: a key sealed under a device's
/// KEK is unsealed by the device on every operation, so a device outage is
/// seen at once.
pub struct KeyCache {
    cache: moka::sync::Cache<[u8; 32], Arc<Prepared>>,
}

/// A prepared Ed25519 key: ed25519-dalek's (zeroized on drop) by default;
/// with the `aws-lc` feature, aws-lc-rs's key pair (its private key lives in
/// AWS-LC's memory, which `OPENSSL_free` cleanses when the pair is dropped).
/// The feature exists to measure the provider at the service level
/// (PERFORMANCE.md, "Crypto providers").
#[cfg(not(feature = "aws-lc"))]
pub type Prepared = ed25519_dalek::SigningKey;
#[cfg(feature = "aws-lc")]
pub type Prepared = aws_lc_rs::signature::Ed25519KeyPair;

/// Expand an Ed25519 seed into the prepared key [`sign_prepared`] uses (also
/// the benchmark's bare server, so both do the same crypto).
#[cfg(not(feature = "aws-lc"))]
pub fn prepare(seed: &[u8; 32]) -> Result<Prepared, BackendError> {
    Ok(ed25519_dalek::SigningKey::from_bytes(seed))
}

#[cfg(feature = "aws-lc")]
pub fn prepare(seed: &[u8; 32]) -> Result<Prepared, BackendError> {
    aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed)
        .map_err(|_| BackendError::Crypto("ed25519 private key rejected".into()))
}

/// An Ed25519 signature with a prepared key.
#[cfg(not(feature = "aws-lc"))]
pub fn sign_prepared(k: &Prepared, message: &[u8]) -> Vec<u8> {
    use ed25519_dalek::Signer as _;
    k.sign(message).to_bytes().to_vec()
}

#[cfg(feature = "aws-lc")]
pub fn sign_prepared(k: &Prepared, message: &[u8]) -> Vec<u8> {
    k.sign(message).as_ref().to_vec()
}

/// At most this many prepared keys (each ~100 bytes with its entry).
pub const KEY_CACHE_ENTRIES: u64 = 16_384;
/// A prepared key unused for this long is dropped (and wiped).
pub const KEY_CACHE_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

impl KeyCache {
    pub fn new() -> Self {
        KeyCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(KEY_CACHE_ENTRIES)
                .time_to_idle(KEY_CACHE_IDLE)
                .build(),
        }
    }

    fn id(label: &KeyLabel<'_>, handle: &[u8]) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&label_aad(label));
        ctx.update(&(handle.len() as u64).to_be_bytes());
        ctx.update(handle);
        let mut id = [0u8; 32];
        id.copy_from_slice(ctx.finish().as_ref());
        id
    }

    fn ed25519<S: Sealer + ?Sized>(
        &self,
        s: &S,
        label: KeyLabel<'_>,
        handle: &[u8],
    ) -> Result<Arc<Prepared>, BackendError> {
        let id = Self::id(&label, handle);
        if let Some(k) = self.cache.get(&id) {
            return Ok(k);
        }
        let private = s.unseal(label, handle)?;
        let seed: &[u8; 32] = private
            .as_slice()
            .try_into()
            .map_err(|_| BackendError::Crypto("ed25519 private key is not 32 bytes".into()))?;
        let k = Arc::new(prepare(seed)?);
        self.cache.insert(id, k.clone());
        Ok(k)
    }

    /// Drop (and wipe) the prepared key for this handle, if any.
    pub fn forget(&self, label: KeyLabel<'_>, handle: &[u8]) {
        self.cache.invalidate(&Self::id(&label, handle));
    }

    /// Prepared keys held now (approximate: moka counts lazily).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The sealed-key operations, written once. A backend implements the two
/// required methods (its algorithm implementations, and whether it keeps
/// prepared keys) and calls the defaults for every key its capabilities
/// list as sealed, after its own [`super::Capabilities::check`]. Every
/// default runs its operation; none is a placeholder that answers
/// "unsupported" (the only refusal is a classical-component signature from
/// a non-hybrid key, which no backend can make).
///
/// Partial failure: `sealed_generate` seals before it returns, so an error
/// leaves nothing behind (the handle it would have returned is the only
/// copy of the key).
pub trait SealedCustody: Sealer {
    /// The algorithm implementations the sealed keys run on.
    fn provider(&self) -> &Provider;

    /// Prepared Ed25519 keys, for custody that unseals in-process
    /// (`sealed-file`); `None` (the default) for a device, whose KEK must
    /// see every operation so that an outage shows at once ([`KeyCache`]).
    fn prepared_keys(&self) -> Option<&KeyCache> {
        None
    }

    /// Generate a software key and seal it; the sealed blob is the handle.
    fn sealed_generate(&self, label: KeyLabel<'_>) -> Result<Generated, BackendError> {
        let kp = self
            .provider()
            .generate(label.algorithm)
            .map_err(crypto_err)?;
        let handle = self.seal(label, &kp.private)?;
        Ok(Generated {
            public: kp.public,
            handle,
        })
    }

    /// Run one operation with a sealed key ([`Backend::perform`]'s sealed
    /// path): unsealed for this one operation, except Ed25519 signatures
    /// through a prepared key when the backend keeps them.
    ///
    /// [`Backend::perform`]: super::Backend::perform
    fn sealed_perform(&self, label: KeyLabel<'_>, handle: &[u8], op: KeyOp<'_>) -> Performed {
        if let (Some(cache), Algorithm::Ed25519, KeyOp::Sign(SignInput::Message(message))) =
            (self.prepared_keys(), label.algorithm, op)
        {
            let k = cache.ed25519(self, label, handle)?;
            return Ok(Zeroizing::new(sign_prepared(&k, message)));
        }
        let private = self.unseal(label, handle)?;
        let provider = self.provider();
        match op {
            KeyOp::Sign(SignInput::Message(message)) => provider
                .signer(label.algorithm)
                .and_then(|sig| sig.sign(&private, message))
                .map(Zeroizing::new)
                .map_err(crypto_err),
            KeyOp::Sign(SignInput::Prehashed(digest)) => provider
                .signer(label.algorithm)
                .and_then(|sig| sig.sign_prehashed(&private, digest))
                .map(Zeroizing::new)
                .map_err(crypto_err),
            KeyOp::Sign(SignInput::ClassicalComponent(message))
                if label.algorithm == Algorithm::HybridEd25519MlDsa65 =>
            {
                provider
                    .hybrid_signer()
                    .ok_or(crate::crypto::CryptoError::Unsupported(
                        label.algorithm.as_str(),
                    ))
                    .and_then(|h| h.sign_classical(&private, message))
                    .map(Zeroizing::new)
                    .map_err(crypto_err)
            }
            KeyOp::Sign(SignInput::ClassicalComponent(_)) => {
                Err(BackendError::Unsupported(label.algorithm))
            }
            KeyOp::Decapsulate(ciphertext) => {
                let kem = provider.kem(label.algorithm).map_err(crypto_err)?;
                // A malformed KEM ciphertext is the caller's fault: report it
                // like a failed AEAD open so it reveals nothing.
                kem.decapsulate(&private, ciphertext).map_err(|e| match e {
                    crate::crypto::CryptoError::BadPrivateKey(_) => crypto_err(e),
                    _ => BackendError::Decrypt,
                })
            }
            // an AES key's operations only: another algorithm's key bytes
            // (an HMAC key is 32 random bytes too) are not an AES key
            KeyOp::AeadSeal(_) | KeyOp::AeadOpen(_) if label.algorithm != Algorithm::Aes256Gcm => {
                Err(BackendError::Unsupported(label.algorithm))
            }
            KeyOp::AeadSeal(a) => aead::seal(&private, a.nonce, a.aad, a.data)
                .map(Zeroizing::new)
                .map_err(crypto_err),
            // [`BackendError::Decrypt`] when it does not authenticate
            KeyOp::AeadOpen(a) => {
                aead::open(&private, a.nonce, a.aad, a.data).map_err(|_| BackendError::Decrypt)
            }
            KeyOp::Mac(data) => mac::compute(label.algorithm, &private, data)
                .map(Zeroizing::new)
                .map_err(crypto_err),
        }
    }
}
