//! Algorithms and formats: what a key can be, how public keys are encoded,
//! the wrap envelope, and the per-algorithm provider seam.
//!
//! Nothing here knows about custody: private keys arrive as byte slices that
//! the backend has just unsealed (or never leave the device at all, in which
//! case the backend does not call into this module for them).
pub mod aead;
pub mod der;
pub mod envelope;
pub mod hybrid;
pub mod jose;
pub mod mac;
pub mod mu;
pub mod prehash;
pub mod provider;
pub mod scheme;
pub mod slh_dsa;
pub mod spki;

use thiserror::Error;

pub use prehash::Prehash;
pub use provider::Provider;
pub use scheme::KeyPair;

#[derive(Debug, Error)]
pub enum CryptoError {
    #[error("key generation failed for {0}")]
    KeyGen(&'static str),
    #[error("private key for {0} is malformed")]
    BadPrivateKey(&'static str),
    #[error("public key for {0} is malformed")]
    BadPublicKey(&'static str),
    #[error("signing failed for {0}")]
    Sign(&'static str),
    #[error("KEM operation failed for {0}")]
    Kem(&'static str),
    #[error("AEAD operation failed")]
    Aead,
    #[error("random number generator failed")]
    Rng,
    #[error("algorithm {0} has no implementation for this operation")]
    Unsupported(&'static str),
    /// The caller's input cannot be signed or verified as asked (the service
    /// checks these first and names the field).
    #[error("{0}")]
    BadInput(&'static str),
}

/// What a key is for. Fixed at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    Sign,
    Wrap,
    /// HMAC keys: Mac and VerifyMac.
    Mac,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Sign => "sign",
            Purpose::Wrap => "wrap",
            Purpose::Mac => "mac",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sign" => Some(Purpose::Sign),
            "wrap" => Some(Purpose::Wrap),
            "mac" => Some(Purpose::Mac),
            _ => None,
        }
    }
}

/// Every algorithm ron-kms implements. Which of them a deployment offers is
/// config (`KMS_ALGORITHMS`); the wire name is [`Algorithm::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Ed25519,
    EcdsaP256,
    MlDsa44,
    MlDsa65,
    MlDsa87,
    Aes256Gcm,
    MlKem768,
    MlKem1024,
    HybridEd25519MlDsa65,
    HybridX25519MlKem768,
    SlhDsaSha2_128s,
    SlhDsaSha2_128f,
    HmacSha256,
    HmacSha512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 14] = [
        Algorithm::Ed25519,
        Algorithm::EcdsaP256,
        Algorithm::MlDsa44,
        Algorithm::MlDsa65,
        Algorithm::MlDsa87,
        Algorithm::Aes256Gcm,
        Algorithm::MlKem768,
        Algorithm::MlKem1024,
        Algorithm::HybridEd25519MlDsa65,
        Algorithm::HybridX25519MlKem768,
        Algorithm::SlhDsaSha2_128s,
        Algorithm::SlhDsaSha2_128f,
        Algorithm::HmacSha256,
        Algorithm::HmacSha512,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::EcdsaP256 => "ecdsa-p256",
            Algorithm::MlDsa44 => "ml-dsa-44",
            Algorithm::MlDsa65 => "ml-dsa-65",
            Algorithm::MlDsa87 => "ml-dsa-87",
            Algorithm::Aes256Gcm => "aes-256-gcm",
            Algorithm::MlKem768 => "ml-kem-768",
            Algorithm::MlKem1024 => "ml-kem-1024",
            Algorithm::HybridEd25519MlDsa65 => "hybrid-ed25519-ml-dsa-65",
            Algorithm::HybridX25519MlKem768 => "hybrid-x25519-ml-kem-768",
            Algorithm::SlhDsaSha2_128s => "slh-dsa-sha2-128s",
            Algorithm::SlhDsaSha2_128f => "slh-dsa-sha2-128f",
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::HmacSha512 => "hmac-sha512",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn purpose(self) -> Purpose {
        match self {
            Algorithm::Ed25519
            | Algorithm::EcdsaP256
            | Algorithm::MlDsa44
            | Algorithm::MlDsa65
            | Algorithm::MlDsa87
            | Algorithm::HybridEd25519MlDsa65
            | Algorithm::SlhDsaSha2_128s
            | Algorithm::SlhDsaSha2_128f => Purpose::Sign,
            Algorithm::Aes256Gcm
            | Algorithm::MlKem768
            | Algorithm::MlKem1024
            | Algorithm::HybridX25519MlKem768 => Purpose::Wrap,
            Algorithm::HmacSha256 | Algorithm::HmacSha512 => Purpose::Mac,
        }
    }

    /// Hybrid (classical + post-quantum) algorithms.
    pub fn is_hybrid(self) -> bool {
        matches!(
            self,
            Algorithm::HybridEd25519MlDsa65 | Algorithm::HybridX25519MlKem768
        )
    }

    /// Signature algorithms with no post-quantum component.
    pub fn is_classical_signature(self) -> bool {
        matches!(self, Algorithm::Ed25519 | Algorithm::EcdsaP256)
    }

    /// Key-encapsulation algorithms (the wrap envelope carries a KEM ciphertext).
    pub fn is_kem(self) -> bool {
        matches!(
            self,
            Algorithm::MlKem768 | Algorithm::MlKem1024 | Algorithm::HybridX25519MlKem768
        )
    }

    /// The one-byte identifier used in the wrap envelope
    /// (docs/wrap-envelope.md). Stable forever once published.
    pub fn envelope_id(self) -> Option<u8> {
        match self {
            Algorithm::Aes256Gcm => Some(0x10),
            Algorithm::MlKem768 => Some(0x20),
            Algorithm::MlKem1024 => Some(0x21),
            Algorithm::HybridX25519MlKem768 => Some(0x30),
            _ => None,
        }
    }

    pub fn from_envelope_id(id: u8) -> Option<Self> {
        [
            Algorithm::Aes256Gcm,
            Algorithm::MlKem768,
            Algorithm::MlKem1024,
            Algorithm::HybridX25519MlKem768,
        ]
        .into_iter()
        .find(|a| a.envelope_id() == Some(id))
    }

    /// Whether the private-key operation costs more than ~50 µs of CPU here and
    /// so must run on the bounded blocking pool rather than an async worker.
    /// (Measured on the 2-core reference host, `cargo bench --bench crypto`,
    /// 2026-12-02: Ed25519 signing with a prepared key 17 µs, ECDSA 34 µs,
    /// ML-DSA signing 73–153 µs, ML-KEM-768/1024 decapsulation 20–25 µs plus
    /// ~1 µs to unseal the key, X25519+ML-KEM-768 decapsulation 89 µs. The
    /// hop to the blocking pool costs ~20 µs itself: an ML-KEM unwrap took
    /// 43 µs through it against 21 µs of crypto.)
    pub fn private_op_is_heavy(self) -> bool {
        matches!(
            self,
            Algorithm::MlDsa44
                | Algorithm::MlDsa65
                | Algorithm::MlDsa87
                | Algorithm::HybridEd25519MlDsa65
                | Algorithm::HybridX25519MlKem768
                | Algorithm::SlhDsaSha2_128s
                | Algorithm::SlhDsaSha2_128f
        )
    }

    /// Whether a public-key verification costs more than ~50 µs here
    /// (SLH-DSA verification: hundreds of hash calls, PERFORMANCE.md).
    pub fn verify_is_heavy(self) -> bool {
        matches!(
            self,
            Algorithm::MlDsa87 | Algorithm::SlhDsaSha2_128s | Algorithm::SlhDsaSha2_128f
        )
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fill a buffer from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError::Rng)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
