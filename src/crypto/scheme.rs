//! The traits one algorithm's implementation fills in, and the key pair they
//! generate. The provider table ([`super::provider`]) holds them; the hybrid
//! schemes ([`super::hybrid`]) are built from them. Synchronous and short:
//! callers decide which thread runs them.
use zeroize::Zeroizing;

use super::CryptoError;

/// A freshly generated key. `public` is empty for symmetric keys.
pub struct KeyPair {
    pub public: Vec<u8>,
    pub private: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_len", &self.public.len())
            .field("private", &"<redacted>")
            .finish()
    }
}

/// One signature algorithm's implementation.
pub trait SignatureScheme: Send + Sync {
    fn generate(&self) -> Result<KeyPair, CryptoError>;
    /// A signature over `message` with the algorithm's own semantics. For
    /// the composite hybrid, `message` is the message representative M′
    /// (`hybrid::representative`), not the caller's message.
    fn sign(&self, private: &[u8], message: &[u8]) -> Result<Vec<u8>, CryptoError>;
    /// `false` for any signature that does not verify, including malformed
    /// ones and malformed public keys.
    fn verify(&self, public: &[u8], message: &[u8], signature: &[u8]) -> bool;
    /// A signature over a digest the caller computed, of the kind
    /// [`super::Algorithm::prehash`] names (its length checked by the
    /// caller). The signature is the one a message with that digest gets.
    /// Algorithms without digest signing keep the default refusal.
    fn sign_prehashed(&self, _private: &[u8], _digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Err(CryptoError::Unsupported("digest signing"))
    }
    /// [`SignatureScheme::verify`] over a digest; `false` by default.
    fn verify_prehashed(&self, _public: &[u8], _digest: &[u8], _signature: &[u8]) -> bool {
        false
    }
}

/// A signature scheme with FIPS 204's context string (ML-DSA): the
/// composite hybrid passes its label as ML-DSA's context.
pub trait ContextSignatureScheme: SignatureScheme {
    /// `ctx` is at most 255 bytes.
    fn sign_with_context(
        &self,
        private: &[u8],
        message: &[u8],
        ctx: &[u8],
    ) -> Result<Vec<u8>, CryptoError>;
    fn verify_with_context(
        &self,
        public: &[u8],
        message: &[u8],
        ctx: &[u8],
        signature: &[u8],
    ) -> bool;
}

/// One KEM's implementation.
pub trait KemScheme: Send + Sync {
    fn generate(&self) -> Result<KeyPair, CryptoError>;
    /// Returns (ciphertext, shared secret).
    fn encapsulate(&self, public: &[u8]) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), CryptoError>;
    fn decapsulate(
        &self,
        private: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError>;
    fn ciphertext_len(&self) -> usize;
}
