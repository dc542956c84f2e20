//! `sealed-file` custody: every private key is a software key sealed with
//! AES-256-GCM under one master key, and the sealed blob is the handle the
//! store keeps. The master key comes from a 0600 key file (generated on first
//! start) or from a passphrase through Argon2id ([`master`]).
//!
//! Sealed blob, version 1: `0x01 || nonce (12) || AES-256-GCM(ciphertext || tag)`
//! with associated data `"ron-kms/sealed/v1" || 0x00 || algorithm || 0x00 ||
//! tenant "/" kid`. Private keys are unsealed into zeroizing buffers for the
//! duration of one operation and never written anywhere unsealed; the one
//! exception is Ed25519, whose prepared signing keys stay in a bounded
//! in-memory cache that wipes them on eviction ([`KeyCache`]).
pub mod master;

use std::sync::Arc;

use zeroize::Zeroizing;

use super::soft::{label_aad, KeyCache, SealedCustody, Sealer};
use super::{Backend, BackendError, Capabilities, Generated, KeyLabel, KeyOp, Performed};
use crate::crypto::{aead, random_bytes, Algorithm, Provider};

pub use master::MasterKey;

const BLOB_VERSION: u8 = 1;

pub struct SealedFileBackend {
    master: MasterKey,
    provider: Arc<Provider>,
    caps: Capabilities,
    /// Prepared Ed25519 keys for hot keys ([`KeyCache`]).
    prepared: KeyCache,
}

impl std::fmt::Debug for SealedFileBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedFileBackend").finish_non_exhaustive()
    }
}

impl SealedFileBackend {
    pub fn new(master: MasterKey, provider: Arc<Provider>) -> Self {
        SealedFileBackend {
            master,
            provider,
            caps: Capabilities {
                native: Vec::new(),
                sealed: Algorithm::ALL.to_vec(),
                attestation: false,
                persistent: true,
                device_bound: false,
            },
            prepared: KeyCache::new(),
        }
    }

    /// The same custody for amnesia mode: the master key exists only in this
    /// process, so nothing it seals outlives it.
    pub fn ephemeral(mut self) -> Self {
        self.caps.persistent = false;
        self
    }
}

impl Sealer for SealedFileBackend {
    /// Seal private key bytes for `label`. Public (through the trait) so
    /// tests can seal a key whose bytes they know and then search the data
    /// dir for them.
    fn seal(&self, label: KeyLabel<'_>, private: &[u8]) -> Result<Vec<u8>, BackendError> {
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        random_bytes(&mut nonce).map_err(|e| BackendError::Crypto(e.to_string()))?;
        let ct = aead::seal(self.master.bytes(), &nonce, &label_aad(&label), private)
            .map_err(|e| BackendError::Crypto(e.to_string()))?;
        let mut blob = Vec::with_capacity(1 + nonce.len() + ct.len());
        blob.push(BLOB_VERSION);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Ok(blob)
    }

    /// Unseal a handle into a zeroizing buffer.
    fn unseal(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        if handle.len() < 1 + aead::AEAD_NONCE_LEN + aead::TAG_LEN {
            return Err(BackendError::Sealed("handle is truncated"));
        }
        if handle[0] != BLOB_VERSION {
            return Err(BackendError::Sealed("unknown sealed-blob version"));
        }
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        nonce.copy_from_slice(&handle[1..1 + aead::AEAD_NONCE_LEN]);
        aead::open(
            self.master.bytes(),
            &nonce,
            &label_aad(&label),
            &handle[1 + aead::AEAD_NONCE_LEN..],
        )
        .map_err(|_| {
            BackendError::Sealed("authentication failed (wrong master key or corrupted record)")
        })
    }
}

/// Every key is sealed here, and unsealing is in-process: prepared Ed25519
/// keys are kept.
impl SealedCustody for SealedFileBackend {
    fn provider(&self) -> &Provider {
        &self.provider
    }

    fn prepared_keys(&self) -> Option<&KeyCache> {
        Some(&self.prepared)
    }
}

impl Backend for SealedFileBackend {
    fn name(&self) -> &'static str {
        "sealed-file"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn generate(&self, label: KeyLabel<'_>) -> Result<Generated, BackendError> {
        self.caps.check(label.algorithm)?;
        self.sealed_generate(label)
    }

    fn perform(&self, label: KeyLabel<'_>, handle: &[u8], op: KeyOp<'_>) -> Performed {
        self.caps.check(label.algorithm)?;
        self.sealed_perform(label, handle, op)
    }

    fn destroy(&self, label: KeyLabel<'_>, handle: &[u8]) -> Result<(), BackendError> {
        // The handle is the only copy of the material; the store wipes it.
        // A prepared copy of it goes now, not at idle expiry.
        self.prepared.forget(label, handle);
        Ok(())
    }

    fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SignInput;

    fn backend() -> SealedFileBackend {
        SealedFileBackend::new(
            MasterKey::from_bytes([7u8; 32]),
            Arc::new(Provider::default()),
        )
    }

    #[test]
    fn ed25519_signs_through_prepared_keys_that_destroy_drops() {
        let b = backend();
        let l = KeyLabel {
            tenant: "t",
            kid: "k#v1",
            algorithm: Algorithm::Ed25519,
        };
        let g = b.generate(l).unwrap();
        assert!(b.prepared.is_empty());
        let sig = b.sign(l, &g.handle, SignInput::Message(b"m")).unwrap();
        assert_eq!(b.prepared.len(), 1);
        // served from the cache the second time; Ed25519 is deterministic
        assert_eq!(b.sign(l, &g.handle, SignInput::Message(b"m")).unwrap(), sig);
        assert!(
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &g.public)
                .verify(b"m", &sig)
                .is_ok(),
            "verifies under ring"
        );
        // the cache never serves a handle under another label
        let other = KeyLabel { kid: "k#v2", ..l };
        assert!(matches!(
            b.sign(other, &g.handle, SignInput::Message(b"m")),
            Err(BackendError::Sealed(_))
        ));
        b.destroy(l, &g.handle).unwrap();
        assert!(b.prepared.is_empty(), "destroy wipes the prepared key");
    }

    #[test]
    fn an_algorithm_the_capabilities_do_not_list_is_refused_before_the_handle_is_read() {
        let mut b = backend();
        let l = KeyLabel {
            tenant: "t",
            kid: "k#v1",
            algorithm: Algorithm::MlKem768,
        };
        let g = b.generate(l).unwrap();
        b.caps.sealed.retain(|a| *a != Algorithm::MlKem768);
        let unsupported = |r: Result<(), BackendError>| {
            assert!(
                matches!(r, Err(BackendError::Unsupported(Algorithm::MlKem768))),
                "{r:?}"
            )
        };
        unsupported(b.generate(l).map(|_| ()));
        unsupported(b.decapsulate(l, &g.handle, &[0u8; 1088]).map(|_| ()));
        // refused before the (garbage) handle is read
        unsupported(b.sign(l, b"garbage", SignInput::Message(b"m")).map(|_| ()));
        unsupported(b.aead_seal(l, b"garbage", &[0; 12], b"", b"p").map(|_| ()));
        unsupported(
            b.aead_open(l, b"garbage", &[0; 12], b"", &[0; 32])
                .map(|_| ()),
        );
    }

    #[test]
    fn a_handle_only_opens_for_its_own_label() {
        let b = backend();
        let l = KeyLabel {
            tenant: "t",
            kid: "k#v1",
            algorithm: Algorithm::Ed25519,
        };
        let blob = b.seal(l, b"secret-bytes").unwrap();
        assert_eq!(&*b.unseal(l, &blob).unwrap(), b"secret-bytes");
        for other in [
            KeyLabel { tenant: "u", ..l },
            KeyLabel { kid: "k#v2", ..l },
            KeyLabel {
                algorithm: Algorithm::EcdsaP256,
                ..l
            },
        ] {
            assert!(matches!(
                b.unseal(other, &blob),
                Err(BackendError::Sealed(_))
            ));
        }
        let wrong = SealedFileBackend::new(
            MasterKey::from_bytes([8u8; 32]),
            Arc::new(Provider::default()),
        );
        assert!(wrong.unseal(l, &blob).is_err());
        let mut tampered = blob.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(b.unseal(l, &tampered).is_err());
        assert!(b.unseal(l, &blob[..10]).is_err());
    }
}
