//! Hybrid (classical + post-quantum) algorithms.
//!
//! `hybrid-ed25519-ml-dsa-65` is the composite signature
//! **id-MLDSA65-Ed25519-SHA512** of draft-ietf-lamps-pq-composite-sigs
//! (OID 1.3.6.1.5.5.7.6.48; documented byte by byte in docs/hybrid.md):
//!
//! ```text
//! M'        = Prefix || Label || len(ctx) || ctx || SHA-512(M)
//! Prefix    = "CompositeAlgorithmSignatures2025" (32 bytes)
//! Label     = "COMPSIG-MLDSA65-Ed25519-SHA512"   (30 bytes)
//! signature = ML-DSA-65.Sign(sk_M, M', ctx = Label) (3309) || Ed25519.Sign(sk_E, M') (64)
//! public    = ML-DSA-65 key (1952) || Ed25519 key (32)
//! ```
//!
//! Both components sign M′, not the caller's message, and ML-DSA's context
//! is the label, so neither component is a valid signature of the message
//! on its own: a component cut out of a composite verifies nowhere. The
//! composite is valid only when both components are.
//!
//! Two other forms verify with these keys, for tenants that have not
//! finished migrating (which ones a tenant accepts is its PQ policy,
//! `crate::policy`): a *plain* Ed25519 signature over the message by the
//! key's classical component (what phase 0 signs), and the RKS v1 bundles
//! ron-kms issued before ([`legacy`]). A plain signature, or a legacy Ed25519
//! component, over a message that starts with the composite prefix is never
//! valid (the draft's prefix guard): otherwise the Ed25519 half of a
//! composite, presented with M′ as the message, would pass as a plain
//! signature.
//!
//! Inside ron-kms the key halves are stored classical first, as before:
//! public `Ed25519 (32) || ML-DSA-65 (1952)`, private `Ed25519 seed (32) ||
//! ML-DSA-65 private key`; [`composite_public`] gives the draft's order.
//!
//! `hybrid-x25519-ml-kem-768` is in [`kem`].
use zeroize::Zeroizing;

use super::scheme::{ContextSignatureScheme, KeyPair, SignatureScheme};
use super::CryptoError;

pub mod kem;
pub mod legacy;

pub use kem::HybridKem;

/// The composite prefix, ASCII "CompositeAlgorithmSignatures2025".
pub const PREFIX: &[u8; 32] = b"CompositeAlgorithmSignatures2025";
/// id-MLDSA65-Ed25519-SHA512's label; also ML-DSA's context string.
pub const LABEL: &[u8] = b"COMPSIG-MLDSA65-Ed25519-SHA512";
/// The caller's context string is at most this long (one length byte).
pub const MAX_CONTEXT_LEN: usize = 255;
/// SHA-512, the pre-hash.
pub const PREHASH_LEN: usize = 64;

pub const ED25519_SIG_LEN: usize = 64;
pub const ML_DSA_65_SIG_LEN: usize = 3309;
pub const ED25519_PUBLIC_LEN: usize = 32;
pub const ED25519_SEED_LEN: usize = 32;
pub const ML_DSA_65_PUBLIC_LEN: usize = 1952;
/// A composite signature: ML-DSA-65's, then Ed25519's.
pub const COMPOSITE_SIG_LEN: usize = ML_DSA_65_SIG_LEN + ED25519_SIG_LEN;

/// The message representative M′ for the caller's message and context.
pub fn representative(message: &[u8], ctx: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let ph = ring::digest::digest(&ring::digest::SHA512, message);
    representative_of_prehash(ph.as_ref(), ctx)
}

/// M′ from an already computed `SHA-512(M)` (the draft's external
/// pre-hashing).
pub fn representative_of_prehash(prehash: &[u8], ctx: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if ctx.len() > MAX_CONTEXT_LEN {
        return Err(CryptoError::BadInput("context is longer than 255 bytes"));
    }
    if prehash.len() != PREHASH_LEN {
        return Err(CryptoError::BadInput("the pre-hash is not 64 bytes"));
    }
    let mut m = Vec::with_capacity(PREFIX.len() + LABEL.len() + 1 + ctx.len() + PREHASH_LEN);
    m.extend_from_slice(PREFIX);
    m.extend_from_slice(LABEL);
    m.push(ctx.len() as u8);
    m.extend_from_slice(ctx);
    m.extend_from_slice(prehash);
    Ok(m)
}

/// The two halves of a hybrid signing key's stored public key:
/// (Ed25519, ML-DSA-65).
pub fn split_sig_public(public: &[u8]) -> Option<(&[u8], &[u8])> {
    (public.len() == ED25519_PUBLIC_LEN + ML_DSA_65_PUBLIC_LEN)
        .then(|| public.split_at(ED25519_PUBLIC_LEN))
}

/// The composite public key in the draft's order, ML-DSA-65 first.
pub fn composite_public(public: &[u8]) -> Option<Vec<u8>> {
    let (ed, ml) = split_sig_public(public)?;
    Some([ml, ed].concat())
}

/// What a signature presented for a hybrid (or single-algorithm) key turned
/// out to be, and which of its components verified. The PQ policy decides
/// from this alone (`crate::policy::decide`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presented {
    /// A composite signature (3373 bytes).
    Composite { classical: bool, pq: bool },
    /// A plain classical signature: a hybrid key's Ed25519 component over
    /// the message, or a classical key's signature.
    Classical(bool),
    /// A single-algorithm PQ key's signature (ML-DSA).
    Pq(bool),
    /// An RKS v1 bundle; `None` for a component it does not carry.
    Legacy {
        classical: Option<bool>,
        pq: Option<bool>,
    },
    /// Nothing a key of this algorithm could have made.
    Malformed,
}

/// What kind of signature verified, as Verify reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureKind {
    /// A composite (both components, over M′).
    Hybrid,
    ClassicalOnly,
    PqOnly,
    /// An RKS v1 bundle, every component it carries valid.
    LegacyBundle,
}

impl SignatureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureKind::Hybrid => "hybrid",
            SignatureKind::ClassicalOnly => "classical_only",
            SignatureKind::PqOnly => "pq_only",
            SignatureKind::LegacyBundle => "legacy_bundle",
        }
    }
}

/// `hybrid-ed25519-ml-dsa-65`: private key `Ed25519 seed (32) || ML-DSA-65
/// private key`, public key `Ed25519 (32) || ML-DSA-65 (1952)`.
pub struct HybridSig {
    pub classical: Box<dyn SignatureScheme>,
    pub pq: Box<dyn ContextSignatureScheme>,
}

const HYBRID_SIG: &str = "hybrid-ed25519-ml-dsa-65";

impl HybridSig {
    /// A plain Ed25519 signature over `message` by the key's classical
    /// component (phase 0 of the PQ policy). Refuses a message that starts
    /// with the composite prefix, so such a signature can never stand in
    /// for the Ed25519 half of a composite.
    pub fn sign_classical(&self, private: &[u8], message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if message.starts_with(PREFIX) {
            return Err(CryptoError::BadInput(
                "a message that starts with the composite signature prefix cannot be signed classically",
            ));
        }
        let seed = private
            .get(..ED25519_SEED_LEN)
            .ok_or(CryptoError::BadPrivateKey(HYBRID_SIG))?;
        self.classical.sign(seed, message)
    }

    /// Classify `signature` and verify every component it carries against
    /// `message` (and, for a composite, `ctx`). `public` is the stored
    /// public key. Never fails: what is not a signature is `Malformed`.
    pub fn check(&self, public: &[u8], message: &[u8], ctx: &[u8], signature: &[u8]) -> Presented {
        let Some((pk_e, pk_m)) = split_sig_public(public) else {
            return Presented::Malformed;
        };
        // the classical component outside a composite, with the prefix guard
        let plain_ed = |sig: &[u8]| -> bool {
            !message.starts_with(PREFIX) && self.classical.verify(pk_e, message, sig)
        };
        if signature.len() == COMPOSITE_SIG_LEN {
            return match representative(message, ctx) {
                Ok(m) => self.composite(pk_e, pk_m, &m, signature),
                Err(_) => Presented::Malformed,
            };
        }
        // Plain and legacy signatures have no context: with one, only a
        // composite could be valid.
        if !ctx.is_empty() {
            return Presented::Malformed;
        }
        if signature.len() == ED25519_SIG_LEN {
            return Presented::Classical(plain_ed(signature));
        }
        match legacy::parse_bundle(signature) {
            Ok(b) => Presented::Legacy {
                classical: b.classical.map(plain_ed),
                pq: b.pq.map(|s| self.pq.verify(pk_m, message, s)),
            },
            Err(_) => Presented::Malformed,
        }
    }
}

impl HybridSig {
    /// [`HybridSig::check`] over the composite's external pre-hash
    /// `prehash` = PH(M) = SHA-512(M) instead of M. Only a composite
    /// signature can be checked this way: a plain or legacy one is over M
    /// itself, so it is `Malformed` here.
    pub fn check_prehashed(
        &self,
        public: &[u8],
        prehash: &[u8],
        ctx: &[u8],
        signature: &[u8],
    ) -> Presented {
        let (Some((pk_e, pk_m)), true) = (
            split_sig_public(public),
            signature.len() == COMPOSITE_SIG_LEN,
        ) else {
            return Presented::Malformed;
        };
        match representative_of_prehash(prehash, ctx) {
            Ok(m) => self.composite(pk_e, pk_m, &m, signature),
            Err(_) => Presented::Malformed,
        }
    }

    /// Both components of a composite signature over M′.
    fn composite(&self, pk_e: &[u8], pk_m: &[u8], m_prime: &[u8], signature: &[u8]) -> Presented {
        let (sig_m, sig_e) = signature.split_at(ML_DSA_65_SIG_LEN);
        Presented::Composite {
            pq: self.pq.verify_with_context(pk_m, m_prime, LABEL, sig_m),
            classical: self.classical.verify(pk_e, m_prime, sig_e),
        }
    }
}

impl SignatureScheme for HybridSig {
    fn generate(&self) -> Result<KeyPair, CryptoError> {
        let c = self.classical.generate()?;
        let q = self.pq.generate()?;
        let mut private = Zeroizing::new(Vec::with_capacity(c.private.len() + q.private.len()));
        private.extend_from_slice(&c.private);
        private.extend_from_slice(&q.private);
        Ok(KeyPair {
            public: [c.public, q.public].concat(),
            private,
        })
    }

    /// The composite signature of the message representative `m_prime`
    /// (built by [`representative`]): ML-DSA-65's over M′ with the label as
    /// its context, then Ed25519's over M′.
    fn sign(&self, private: &[u8], m_prime: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if private.len() <= ED25519_SEED_LEN {
            return Err(CryptoError::BadPrivateKey(HYBRID_SIG));
        }
        let (c, q) = private.split_at(ED25519_SEED_LEN);
        let mut out = self.pq.sign_with_context(q, m_prime, LABEL)?;
        out.extend_from_slice(&self.classical.sign(c, m_prime)?);
        if out.len() != COMPOSITE_SIG_LEN {
            return Err(CryptoError::Sign(HYBRID_SIG));
        }
        Ok(out)
    }

    /// The composite over the representative `m_prime`: both valid.
    fn verify(&self, public: &[u8], m_prime: &[u8], signature: &[u8]) -> bool {
        let (Some((pk_e, pk_m)), true) = (
            split_sig_public(public),
            signature.len() == COMPOSITE_SIG_LEN,
        ) else {
            return false;
        };
        let (sig_m, sig_e) = signature.split_at(ML_DSA_65_SIG_LEN);
        self.pq.verify_with_context(pk_m, m_prime, LABEL, sig_m)
            && self.classical.verify(pk_e, m_prime, sig_e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Provider;

    /// The draft's message-format example without a context
    /// (messageFormatSample_noctx.txt, ML-DSA-65 + ECDSA-P256 label there):
    /// the layout is Prefix || Label || len(ctx) || ctx || PH(M).
    #[test]
    fn the_representative_is_laid_out_as_the_draft_says() {
        let m = representative(b"\x00\x01\x02", b"ab").unwrap();
        assert_eq!(&m[..32], PREFIX);
        assert_eq!(&m[32..62], LABEL);
        assert_eq!(m[62], 2);
        assert_eq!(&m[63..65], b"ab");
        assert_eq!(
            &m[65..],
            ring::digest::digest(&ring::digest::SHA512, b"\x00\x01\x02").as_ref()
        );
        assert!(representative(b"", &[0u8; 256]).is_err());
        assert_eq!(
            representative(b"", &[0u8; 255]).unwrap().len(),
            32 + 30 + 1 + 255 + 64
        );
    }

    fn hybrid() -> (KeyPair, Provider) {
        let p = Provider::default();
        let kp = p.hybrid_signer().unwrap().generate().unwrap();
        (kp, p)
    }

    #[test]
    fn no_component_of_a_composite_verifies_alone() {
        let (kp, p) = hybrid();
        let h = p.hybrid_signer().unwrap();
        let msg = b"release 1.2.3";
        let m = representative(msg, b"").unwrap();
        let sig = h.sign(&kp.private, &m).unwrap();
        assert_eq!(
            h.check(&kp.public, msg, b"", &sig),
            Presented::Composite {
                classical: true,
                pq: true
            }
        );
        let (sig_m, sig_e) = sig.split_at(ML_DSA_65_SIG_LEN);
        // the Ed25519 half, as a plain signature of the message or of M'
        assert_eq!(
            h.check(&kp.public, msg, b"", sig_e),
            Presented::Classical(false)
        );
        assert_eq!(
            h.check(&kp.public, &m, b"", sig_e),
            Presented::Classical(false)
        );
        // either half in a legacy bundle
        let b = legacy::encode_bundle(Some(sig_e), Some(sig_m));
        assert_eq!(
            h.check(&kp.public, msg, b"", &b),
            Presented::Legacy {
                classical: Some(false),
                pq: Some(false)
            }
        );
        assert_eq!(
            h.check(&kp.public, &m, b"", &b),
            Presented::Legacy {
                classical: Some(false),
                pq: Some(false)
            }
        );
        // another context, or one byte flipped anywhere
        assert_eq!(
            h.check(&kp.public, msg, b"x", &sig),
            Presented::Composite {
                classical: false,
                pq: false
            }
        );
        for at in [
            0,
            ML_DSA_65_SIG_LEN - 1,
            ML_DSA_65_SIG_LEN,
            COMPOSITE_SIG_LEN - 1,
        ] {
            let mut bad = sig.clone();
            bad[at] ^= 1;
            let r = h.check(&kp.public, msg, b"", &bad);
            assert!(
                matches!(r, Presented::Composite { classical, pq } if !(classical && pq)),
                "flip at {at}: {r:?}"
            );
        }
    }

    /// Every single-byte corruption of a composite fails, whichever
    /// component it lands in.
    #[test]
    fn any_flipped_byte_breaks_the_composite() {
        let (kp, p) = hybrid();
        let h = p.hybrid_signer().unwrap();
        let sig = h
            .sign(&kp.private, &representative(b"m", b"").unwrap())
            .unwrap();
        for at in 0..sig.len() {
            let mut bad = sig.clone();
            bad[at] ^= 0x80;
            match h.check(&kp.public, b"m", b"", &bad) {
                Presented::Composite { classical, pq } => {
                    assert!(!(classical && pq), "byte {at}");
                    // the flip lands in exactly one component
                    assert_eq!(classical, at < ML_DSA_65_SIG_LEN, "byte {at}");
                }
                other => panic!("byte {at}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_classical_component_signs_plainly_but_never_a_prefixed_message() {
        let (kp, p) = hybrid();
        let h = p.hybrid_signer().unwrap();
        let s = h.sign_classical(&kp.private, b"hello").unwrap();
        assert_eq!(
            h.check(&kp.public, b"hello", b"", &s),
            Presented::Classical(true)
        );
        assert_eq!(
            h.check(&kp.public, b"hello", b"c", &s),
            Presented::Malformed
        );
        let m = representative(b"hello", b"").unwrap();
        assert!(h.sign_classical(&kp.private, &m).is_err());
        let b = legacy::encode_bundle(Some(&s), None);
        assert_eq!(
            h.check(&kp.public, b"hello", b"", &b),
            Presented::Legacy {
                classical: Some(true),
                pq: None
            }
        );
        assert_eq!(
            h.check(&kp.public, b"hello", b"", &s[1..]),
            Presented::Malformed
        );
    }
}
