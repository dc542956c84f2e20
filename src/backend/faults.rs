//! A fault-injecting wrapper around any backend, for chaos drills and
//! tests: while the switch says "down", every custody call (and the health
//! probe) fails with [`BackendError::Unavailable`] without reaching the
//! wrapped backend, as a lost HSM session or TPM would. Enabled by
//! `KMS_FAULT_INJECTION=true`; the switch is reached through
//! [`crate::server::Running::faults`].
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{Backend, BackendError, Capabilities, Generated, KeyLabel};

/// The switch shared by the wrapper and whoever drives the drill.
#[derive(Debug, Default)]
pub struct Faults {
    down: AtomicBool,
}

impl Faults {
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
}

impl FaultyBackend {
    pub fn new(inner: Arc<dyn Backend>, faults: Arc<Faults>) -> Self {
        FaultyBackend { inner, faults }
    }

    fn gate(&self) -> Result<(), BackendError> {
        if self.faults.is_down() {
            Err(BackendError::Unavailable(format!(
                "{} is down (fault injection)",
                self.inner.name()
            )))
        } else {
            Ok(())
        }
    }
}

impl Backend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn generate(&self, label: KeyLabel<'_>) -> Result<Generated, BackendError> {
        self.gate()?;
        self.inner.generate(label)
    }
    fn sign(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        message: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.gate()?;
        self.inner.sign(label, handle, message)
    }
    fn decapsulate(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.gate()?;
        self.inner.decapsulate(label, handle, ciphertext)
    }
    fn aead_seal(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        nonce: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.gate()?;
        self.inner.aead_seal(label, handle, nonce, aad, plaintext)
    }
    fn aead_open(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.gate()?;
        self.inner.aead_open(label, handle, nonce, aad, ciphertext)
    }
    fn destroy(&self, label: KeyLabel<'_>, handle: &[u8]) -> Result<(), BackendError> {
        self.gate()?;
        self.inner.destroy(label, handle)
    }
    fn health(&self) -> Result<(), BackendError> {
        self.gate()?;
        self.inner.health()
    }
}
