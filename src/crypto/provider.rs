//! The provider seam: one small implementation per algorithm (keygen, sign,
//! verify, encapsulate, decapsulate), looked up in a table, so a faster
//! implementation replaces one algorithm's without touching the service.
//!
//! Private-key formats (what custody seals; documented in docs/architecture.md):
//! Ed25519 — the 32-byte RFC 8032 seed; ECDSA P-256 — a PKCS#8 v1 document;
//! ML-DSA — the FIPS 204 private-key encoding; ML-KEM — the FIPS 203
//! decapsulation-key encoding; AES-256-GCM — the 32 raw key bytes.
//! Public keys are raw (Ed25519 32 bytes, P-256 uncompressed SEC1 point,
//! ML-DSA/ML-KEM the FIPS encodings); [`super::spki`] wraps them in DER.
use std::collections::HashMap;
use std::sync::Arc;

use ring::signature::{self as rsig, KeyPair as _};
use zeroize::Zeroizing;

pub use super::scheme::{ContextSignatureScheme, KemScheme, KeyPair, SignatureScheme};
use super::{random_bytes, Algorithm, CryptoError};

/// The table of implementations. [`Provider::default`] uses ring for the
/// classical algorithms and liboqs (through `oqs`) for ML-DSA and ML-KEM.
#[derive(Clone)]
pub struct Provider {
    signers: HashMap<Algorithm, Arc<dyn SignatureScheme>>,
    kems: HashMap<Algorithm, Arc<dyn KemScheme>>,
    /// The hybrid signer again, typed, for per-component verification.
    hybrid_sig: Option<Arc<super::hybrid::HybridSig>>,
}

impl Default for Provider {
    fn default() -> Self {
        let mut p = Provider {
            signers: HashMap::new(),
            kems: HashMap::new(),
            hybrid_sig: None,
        };
        let hybrid = Arc::new(super::hybrid::HybridSig {
            classical: Box::new(RingEd25519),
            pq: Box::new(OqsSig::new(oqs::sig::Algorithm::MlDsa65, "ml-dsa-65")),
        });
        p.hybrid_sig = Some(hybrid.clone());
        p = p
            .with_signer(Algorithm::Ed25519, Arc::new(RingEd25519))
            .with_signer(Algorithm::EcdsaP256, Arc::new(EcdsaP256))
            .with_signer(
                Algorithm::MlDsa44,
                Arc::new(OqsSig::new(oqs::sig::Algorithm::MlDsa44, "ml-dsa-44")),
            )
            .with_signer(
                Algorithm::MlDsa65,
                Arc::new(OqsSig::new(oqs::sig::Algorithm::MlDsa65, "ml-dsa-65")),
            )
            .with_signer(
                Algorithm::MlDsa87,
                Arc::new(OqsSig::new(oqs::sig::Algorithm::MlDsa87, "ml-dsa-87")),
            )
            .with_kem(
                Algorithm::MlKem768,
                Arc::new(OqsKem::new(oqs::kem::Algorithm::MlKem768, "ml-kem-768")),
            )
            .with_kem(
                Algorithm::MlKem1024,
                Arc::new(OqsKem::new(oqs::kem::Algorithm::MlKem1024, "ml-kem-1024")),
            )
            .with_signer(Algorithm::HybridEd25519MlDsa65, hybrid)
            .with_signer(
                Algorithm::SlhDsaSha2_128s,
                Arc::new(super::slh_dsa::SlhDsaSha2_128s),
            )
            .with_signer(
                Algorithm::SlhDsaSha2_128f,
                Arc::new(super::slh_dsa::SlhDsaSha2_128f),
            )
            .with_kem(
                Algorithm::HybridX25519MlKem768,
                Arc::new(super::hybrid::HybridKem {
                    mlkem: Box::new(OqsKem::new(oqs::kem::Algorithm::MlKem768, "ml-kem-768")),
                }),
            );
        p
    }
}

impl Provider {
    /// Replace (or add) the implementation of one signature algorithm.
    pub fn with_signer(mut self, alg: Algorithm, imp: Arc<dyn SignatureScheme>) -> Self {
        self.signers.insert(alg, imp);
        self
    }

    /// Replace (or add) the implementation of one KEM.
    pub fn with_kem(mut self, alg: Algorithm, imp: Arc<dyn KemScheme>) -> Self {
        self.kems.insert(alg, imp);
        self
    }

    /// The hybrid signature scheme, for per-component verification.
    pub fn hybrid_signer(&self) -> Option<&super::hybrid::HybridSig> {
        self.hybrid_sig.as_deref()
    }

    pub fn signer(&self, alg: Algorithm) -> Result<&dyn SignatureScheme, CryptoError> {
        self.signers
            .get(&alg)
            .map(|s| s.as_ref())
            .ok_or(CryptoError::Unsupported(alg.as_str()))
    }

    pub fn kem(&self, alg: Algorithm) -> Result<&dyn KemScheme, CryptoError> {
        self.kems
            .get(&alg)
            .map(|s| s.as_ref())
            .ok_or(CryptoError::Unsupported(alg.as_str()))
    }

    /// Generate a key of any algorithm in software.
    pub fn generate(&self, alg: Algorithm) -> Result<KeyPair, CryptoError> {
        match alg {
            Algorithm::Aes256Gcm => {
                let mut k = Zeroizing::new(vec![0u8; super::aead::KEY_LEN]);
                random_bytes(&mut k)?;
                Ok(KeyPair {
                    public: Vec::new(),
                    private: k,
                })
            }
            Algorithm::HmacSha256 | Algorithm::HmacSha512 => {
                let len = super::mac::key_len(alg).ok_or(CryptoError::KeyGen(alg.as_str()))?;
                let mut k = Zeroizing::new(vec![0u8; len]);
                random_bytes(&mut k)?;
                Ok(KeyPair {
                    public: Vec::new(),
                    private: k,
                })
            }
            a if a.is_kem() => self.kem(alg)?.generate(),
            _ => self.signer(alg)?.generate(),
        }
    }
}

struct RingEd25519;

impl SignatureScheme for RingEd25519 {
    fn generate(&self) -> Result<KeyPair, CryptoError> {
        let mut seed = Zeroizing::new(vec![0u8; 32]);
        random_bytes(&mut seed)?;
        let kp = rsig::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| CryptoError::KeyGen("ed25519"))?;
        Ok(KeyPair {
            public: kp.public_key().as_ref().to_vec(),
            private: seed,
        })
    }

    fn sign(&self, private: &[u8], message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let kp = rsig::Ed25519KeyPair::from_seed_unchecked(private)
            .map_err(|_| CryptoError::BadPrivateKey("ed25519"))?;
        Ok(kp.sign(message).as_ref().to_vec())
    }

    fn verify(&self, public: &[u8], message: &[u8], signature: &[u8]) -> bool {
        rsig::UnparsedPublicKey::new(&rsig::ED25519, public)
            .verify(message, signature)
            .is_ok()
    }
}

/// ECDSA P-256 with SHA-256 in a crate with ring's API: ring by default,
/// aws-lc-rs with the `aws-lc` feature (the provider comparison in
/// PERFORMANCE.md). The private key is PKCS#8, parsed for each sign.
macro_rules! ecdsa_p256 {
    ($name:ident, $krate:ident) => {
        struct $name;

        impl SignatureScheme for $name {
            fn generate(&self) -> Result<KeyPair, CryptoError> {
                use $krate::signature::{self as s, KeyPair as _};
                let rng = $krate::rand::SystemRandom::new();
                let pkcs8 =
                    s::EcdsaKeyPair::generate_pkcs8(&s::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                        .map_err(|_| CryptoError::KeyGen("ecdsa-p256"))?;
                let private = Zeroizing::new(pkcs8.as_ref().to_vec());
                let kp = p256_from_pkcs8(&private, &rng)
                    .map_err(|_| CryptoError::KeyGen("ecdsa-p256"))?;
                Ok(KeyPair {
                    public: kp.public_key().as_ref().to_vec(),
                    private,
                })
            }

            fn sign(&self, private: &[u8], message: &[u8]) -> Result<Vec<u8>, CryptoError> {
                let rng = $krate::rand::SystemRandom::new();
                let kp = p256_from_pkcs8(private, &rng)
                    .map_err(|_| CryptoError::BadPrivateKey("ecdsa-p256"))?;
                kp.sign(&rng, message)
                    .map(|s| s.as_ref().to_vec())
                    .map_err(|_| CryptoError::Sign("ecdsa-p256"))
            }

            fn verify(&self, public: &[u8], message: &[u8], signature: &[u8]) -> bool {
                use $krate::signature as s;
                s::UnparsedPublicKey::new(&s::ECDSA_P256_SHA256_ASN1, public)
                    .verify(message, signature)
                    .is_ok()
            }

            fn sign_prehashed(
                &self,
                private: &[u8],
                digest: &[u8],
            ) -> Result<Vec<u8>, CryptoError> {
                p256_prehash_sign(private, digest)
            }

            fn verify_prehashed(&self, public: &[u8], digest: &[u8], signature: &[u8]) -> bool {
                p256_prehash_verify(public, digest, signature)
            }
        }
    };
}

#[cfg(not(feature = "aws-lc"))]
ecdsa_p256!(EcdsaP256, ring);
#[cfg(feature = "aws-lc")]
ecdsa_p256!(EcdsaP256, aws_lc_rs);

#[cfg(not(feature = "aws-lc"))]
fn p256_from_pkcs8(
    der: &[u8],
    rng: &ring::rand::SystemRandom,
) -> Result<rsig::EcdsaKeyPair, ring::error::KeyRejected> {
    rsig::EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P256_SHA256_ASN1_SIGNING, der, rng)
}

/// aws-lc-rs takes no RNG to parse a key.
#[cfg(feature = "aws-lc")]
fn p256_from_pkcs8(
    der: &[u8],
    _rng: &aws_lc_rs::rand::SystemRandom,
) -> Result<aws_lc_rs::signature::EcdsaKeyPair, aws_lc_rs::error::KeyRejected> {
    use aws_lc_rs::signature as s;
    s::EcdsaKeyPair::from_pkcs8(&s::ECDSA_P256_SHA256_ASN1_SIGNING, der)
}

/// ECDSA P-256 over a SHA-256 digest the caller computed, through
/// aws-lc-rs whatever the message provider (ring signs only messages):
/// randomised nonces and DER, as for messages.
fn p256_prehash_sign(private: &[u8], digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
    use aws_lc_rs::signature as s;
    let d = aws_lc_rs::digest::Digest::import_less_safe(digest, &aws_lc_rs::digest::SHA256)
        .map_err(|_| CryptoError::BadInput("a SHA-256 digest is 32 bytes"))?;
    let kp = s::EcdsaKeyPair::from_pkcs8(&s::ECDSA_P256_SHA256_ASN1_SIGNING, private)
        .map_err(|_| CryptoError::BadPrivateKey("ecdsa-p256"))?;
    kp.sign_digest(&d)
        .map(|sig| sig.as_ref().to_vec())
        .map_err(|_| CryptoError::Sign("ecdsa-p256"))
}

fn p256_prehash_verify(public: &[u8], digest: &[u8], signature: &[u8]) -> bool {
    use aws_lc_rs::signature as s;
    let Ok(d) = aws_lc_rs::digest::Digest::import_less_safe(digest, &aws_lc_rs::digest::SHA256)
    else {
        return false;
    };
    s::UnparsedPublicKey::new(&s::ECDSA_P256_SHA256_ASN1, public)
        .verify_digest(&d, signature)
        .is_ok()
}

/// ML-DSA through liboqs: pure FIPS 204 signing with an empty context
/// string, hedged (randomised) as liboqs does by default.
struct OqsSig {
    sig: oqs::sig::Sig,
    name: &'static str,
    params: MlDsaParams,
    /// The same parameter set for external μ (`super::mu`).
    level: super::mu::Level,
}

/// The FIPS 204 parameters the signature-side checks need.
#[derive(Clone, Copy)]
struct MlDsaParams {
    /// length of the commitment hash c~ in bytes (lambda / 4)
    c_tilde: usize,
    /// number of polynomials in z
    l: usize,
    /// gamma1 = 2^gamma1_bits
    gamma1_bits: u32,
    /// beta = tau * eta
    beta: i64,
}

fn mldsa_params(alg: oqs::sig::Algorithm) -> MlDsaParams {
    match alg {
        oqs::sig::Algorithm::MlDsa44 => MlDsaParams {
            c_tilde: 32,
            l: 4,
            gamma1_bits: 17,
            beta: 39 * 2,
        },
        oqs::sig::Algorithm::MlDsa65 => MlDsaParams {
            c_tilde: 48,
            l: 5,
            gamma1_bits: 19,
            beta: 49 * 4,
        },
        _ => MlDsaParams {
            c_tilde: 64,
            l: 7,
            gamma1_bits: 19,
            beta: 60 * 2,
        },
    }
}

/// FIPS 204 Algorithm 8, step 13: a signature is only valid when every
/// coefficient of `z` satisfies |z_i| < gamma1 - beta. liboqs 0.13 does not
/// enforce this bound (Wycheproof's InfinityNormViolation vectors verify
/// under it; see tests/kat.rs), so ron-kms checks it before calling liboqs.
/// `z` is packed right after c~ as `gamma1 - z_i` in `gamma1_bits + 1` bits,
/// little-endian (FIPS 204 Algorithms 17 and 19). Returns `false` for a
/// signature too short to hold z.
fn mldsa_z_within_bound(p: MlDsaParams, signature: &[u8]) -> bool {
    let bits = (p.gamma1_bits + 1) as usize;
    let poly_bytes = 256 * bits / 8;
    let Some(z) = signature.get(p.c_tilde..p.c_tilde + p.l * poly_bytes) else {
        return false;
    };
    let gamma1 = 1i64 << p.gamma1_bits;
    let bound = gamma1 - p.beta;
    let mask = (1u64 << bits) - 1;
    for poly in z.chunks_exact(poly_bytes) {
        for i in 0..256 {
            let bit = i * bits;
            let mut word = [0u8; 8];
            let avail = &poly[bit / 8..poly.len().min(bit / 8 + 8)];
            word[..avail.len()].copy_from_slice(avail);
            let v = (u64::from_le_bytes(word) >> (bit % 8)) & mask;
            let zi = gamma1 - v as i64;
            if zi.abs() >= bound {
                return false;
            }
        }
    }
    true
}

impl OqsSig {
    fn new(alg: oqs::sig::Algorithm, name: &'static str) -> Self {
        oqs::init();
        let sig = oqs::sig::Sig::new(alg).expect("liboqs was built with ML-DSA enabled");
        let level = match alg {
            oqs::sig::Algorithm::MlDsa44 => super::mu::Level::L44,
            oqs::sig::Algorithm::MlDsa65 => super::mu::Level::L65,
            _ => super::mu::Level::L87,
        };
        OqsSig {
            sig,
            name,
            params: mldsa_params(alg),
            level,
        }
    }
}

impl OqsSig {
    /// The checks liboqs leaves to us: exact length and the z bound.
    fn well_formed(&self, signature: &[u8]) -> bool {
        signature.len() == self.sig.length_signature()
            && mldsa_z_within_bound(self.params, signature)
    }
}

impl SignatureScheme for OqsSig {
    fn generate(&self) -> Result<KeyPair, CryptoError> {
        let (pk, sk) = self
            .sig
            .keypair()
            .map_err(|_| CryptoError::KeyGen(self.name))?;
        Ok(KeyPair {
            public: pk.into_vec(),
            private: Zeroizing::new(sk.into_vec()),
        })
    }

    fn sign(&self, private: &[u8], message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let sk = self
            .sig
            .secret_key_from_bytes(private)
            .ok_or(CryptoError::BadPrivateKey(self.name))?;
        self.sig
            .sign(message, sk)
            .map(|s| s.into_vec())
            .map_err(|_| CryptoError::Sign(self.name))
    }

    fn verify(&self, public: &[u8], message: &[u8], signature: &[u8]) -> bool {
        self.verify_with_context(public, message, &[], signature)
    }

    /// `digest` is the external μ.
    fn sign_prehashed(&self, private: &[u8], digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.level.sign(private, digest, self.name)
    }

    fn verify_prehashed(&self, public: &[u8], digest: &[u8], signature: &[u8]) -> bool {
        self.well_formed(signature) && self.level.verify(public, digest, signature)
    }
}

impl ContextSignatureScheme for OqsSig {
    fn sign_with_context(
        &self,
        private: &[u8],
        message: &[u8],
        ctx: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let sk = self
            .sig
            .secret_key_from_bytes(private)
            .ok_or(CryptoError::BadPrivateKey(self.name))?;
        self.sig
            .sign_with_ctx_str(message, ctx, sk)
            .map(|s| s.into_vec())
            .map_err(|_| CryptoError::Sign(self.name))
    }

    fn verify_with_context(
        &self,
        public: &[u8],
        message: &[u8],
        ctx: &[u8],
        signature: &[u8],
    ) -> bool {
        if !self.well_formed(signature) {
            return false;
        }
        let (Some(pk), Some(sig)) = (
            self.sig.public_key_from_bytes(public),
            self.sig.signature_from_bytes(signature),
        ) else {
            return false;
        };
        self.sig.verify_with_ctx_str(message, sig, ctx, pk).is_ok()
    }
}

/// ML-KEM through liboqs (FIPS 203).
struct OqsKem {
    kem: oqs::kem::Kem,
    name: &'static str,
}

impl OqsKem {
    fn new(alg: oqs::kem::Algorithm, name: &'static str) -> Self {
        oqs::init();
        let kem = oqs::kem::Kem::new(alg).expect("liboqs was built with ML-KEM enabled");
        OqsKem { kem, name }
    }
}

impl KemScheme for OqsKem {
    fn generate(&self) -> Result<KeyPair, CryptoError> {
        let (pk, sk) = self
            .kem
            .keypair()
            .map_err(|_| CryptoError::KeyGen(self.name))?;
        Ok(KeyPair {
            public: pk.into_vec(),
            private: Zeroizing::new(sk.into_vec()),
        })
    }

    fn encapsulate(&self, public: &[u8]) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), CryptoError> {
        let pk = self
            .kem
            .public_key_from_bytes(public)
            .ok_or(CryptoError::BadPublicKey(self.name))?;
        let (ct, ss) = self
            .kem
            .encapsulate(pk)
            .map_err(|_| CryptoError::Kem(self.name))?;
        Ok((ct.into_vec(), Zeroizing::new(ss.into_vec())))
    }

    fn decapsulate(
        &self,
        private: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let sk = self
            .kem
            .secret_key_from_bytes(private)
            .ok_or(CryptoError::BadPrivateKey(self.name))?;
        let ct = self
            .kem
            .ciphertext_from_bytes(ciphertext)
            .ok_or(CryptoError::Kem(self.name))?;
        let ss = self
            .kem
            .decapsulate(sk, ct)
            .map_err(|_| CryptoError::Kem(self.name))?;
        Ok(Zeroizing::new(ss.into_vec()))
    }

    fn ciphertext_len(&self) -> usize {
        self.kem.length_ciphertext()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signature_algorithm_round_trips_and_rejects_tampering() {
        let p = Provider::default();
        for alg in Algorithm::ALL {
            if alg.purpose() != super::super::Purpose::Sign {
                continue;
            }
            let s = p.signer(alg).unwrap();
            let kp = s.generate().unwrap();
            let sig = s.sign(&kp.private, b"hello").unwrap();
            assert!(s.verify(&kp.public, b"hello", &sig), "{alg}");
            assert!(!s.verify(&kp.public, b"hellO", &sig), "{alg}");
            assert!(!s.verify(&kp.public, b"hello", &sig[1..]), "{alg}");
            assert!(!s.verify(&kp.public[1..], b"hello", &sig), "{alg}");
        }
    }

    #[test]
    fn kems_agree_on_the_shared_secret() {
        let p = Provider::default();
        for alg in [Algorithm::MlKem768, Algorithm::MlKem1024] {
            let k = p.kem(alg).unwrap();
            let kp = k.generate().unwrap();
            let (ct, ss) = k.encapsulate(&kp.public).unwrap();
            assert_eq!(ct.len(), k.ciphertext_len());
            assert_eq!(*k.decapsulate(&kp.private, &ct).unwrap(), *ss);
            assert!(k.decapsulate(&kp.private, &ct[1..]).is_err());
        }
    }
}
