//! Hybrid (classical + post-quantum) algorithms and the signature bundle.
//!
//! `hybrid-ed25519-ml-dsa-65` signs with Ed25519 and ML-DSA-65 over the same
//! message. Its signature is a *bundle*, format version 1 (documented byte by
//! byte in docs/hybrid.md):
//!
//! ```text
//! offset  size  field
//! 0       4     magic and version: 0x52 0x4B 0x53 0x01 ("RKS", 1)
//! 4       1     N = number of components, 1 or 2
//! then N times, in ascending id order, no id twice:
//!         1     component id: 0x01 ed25519, 0x12 ml-dsa-65
//!         2     S = signature length, big-endian (64 for ed25519, 3309 for ml-dsa-65)
//!         S     the component's signature over the message itself
//! ```
//!
//! Nothing may follow the last component. Each component is an ordinary
//! signature over the caller's message (Ed25519 per RFC 8032; ML-DSA-65 per
//! FIPS 204, pure, empty context), so a verifier that knows only one of the
//! algorithms can still check its component. Whether a bundle missing one
//! component is acceptable is the tenant's PQ policy, not the format's
//! business (see `crate::policy`).
//!
//! `hybrid-x25519-ml-kem-768` is a KEM that combines ML-KEM-768 and X25519
//! with X-Wing's combiner (draft-connolly-cfrg-xwing-kem):
//! `ss = SHA3-256("\.//^\" || ss_M || ss_X || ct_X || pk_X)`. The public key
//! is `pk_M (1184) || pk_X (32)` and the ciphertext `ct_M (1088) || ct_X (32)`,
//! both as in X-Wing, so encapsulation to a ron-kms public key is X-Wing
//! encapsulation; the private key is kept expanded, `dk_M (2400) || sk_X (32)`,
//! not as X-Wing's 32-byte seed.
use sha3::Digest as _;
use zeroize::Zeroizing;

use super::provider::{KemScheme, KeyPair, SignatureScheme};
use super::{random_bytes, CryptoError};

pub const BUNDLE_MAGIC: [u8; 4] = [0x52, 0x4B, 0x53, 0x01];
pub const ID_ED25519: u8 = 0x01;
pub const ID_ML_DSA_65: u8 = 0x12;
pub const ED25519_SIG_LEN: usize = 64;
pub const ML_DSA_65_SIG_LEN: usize = 3309;
pub const ED25519_PUBLIC_LEN: usize = 32;
pub const ED25519_SEED_LEN: usize = 32;
pub const ML_DSA_65_PUBLIC_LEN: usize = 1952;

pub const ML_KEM_768_PUBLIC_LEN: usize = 1184;
pub const ML_KEM_768_CIPHERTEXT_LEN: usize = 1088;
pub const X25519_LEN: usize = 32;
/// X-Wing's domain label, the 6 bytes `\.//^\`.
pub const XWING_LABEL: &[u8; 6] = b"\\.//^\\";

/// Why a bundle does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("signature is not a ron-kms hybrid bundle (bad magic or version)")]
    BadMagic,
    #[error("hybrid bundle is truncated")]
    Truncated,
    #[error("hybrid bundle must carry 1 or 2 components")]
    BadCount,
    #[error("hybrid bundle names an unknown component id 0x{0:02x}")]
    UnknownComponent(u8),
    #[error("hybrid bundle components are repeated or out of order")]
    Order,
    #[error("hybrid bundle component 0x{0:02x} has the wrong length")]
    BadLength(u8),
    #[error("hybrid bundle has trailing bytes")]
    Trailing,
}

/// A parsed bundle, borrowing from the input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bundle<'a> {
    pub classical: Option<&'a [u8]>,
    pub pq: Option<&'a [u8]>,
}

impl Bundle<'_> {
    /// The kind of signature, as the policy sees it.
    pub fn kind(&self) -> SignatureKind {
        match (self.classical.is_some(), self.pq.is_some()) {
            (true, true) => SignatureKind::Hybrid,
            (true, false) => SignatureKind::ClassicalOnly,
            _ => SignatureKind::PqOnly,
        }
    }
}

/// Which components a signature carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureKind {
    Hybrid,
    ClassicalOnly,
    PqOnly,
}

impl SignatureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureKind::Hybrid => "hybrid",
            SignatureKind::ClassicalOnly => "classical_only",
            SignatureKind::PqOnly => "pq_only",
        }
    }
}

fn expected_len(id: u8) -> Option<usize> {
    match id {
        ID_ED25519 => Some(ED25519_SIG_LEN),
        ID_ML_DSA_65 => Some(ML_DSA_65_SIG_LEN),
        _ => None,
    }
}

/// Encode a bundle from the components present (at least one).
pub fn encode_bundle(classical: Option<&[u8]>, pq: Option<&[u8]>) -> Vec<u8> {
    let parts: Vec<(u8, &[u8])> = [(ID_ED25519, classical), (ID_ML_DSA_65, pq)]
        .into_iter()
        .filter_map(|(id, s)| s.map(|s| (id, s)))
        .collect();
    assert!(!parts.is_empty(), "a bundle has at least one component");
    let mut out = Vec::with_capacity(5 + parts.iter().map(|p| 3 + p.1.len()).sum::<usize>());
    out.extend_from_slice(&BUNDLE_MAGIC);
    out.push(parts.len() as u8);
    for (id, sig) in parts {
        out.push(id);
        out.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        out.extend_from_slice(sig);
    }
    out
}

/// Parse a bundle strictly: known ids, exact lengths, ascending order, no
/// trailing bytes. Never reads past the input.
pub fn parse_bundle(bytes: &[u8]) -> Result<Bundle<'_>, BundleError> {
    if bytes.len() < 4 || bytes[..4] != BUNDLE_MAGIC {
        return Err(BundleError::BadMagic);
    }
    let Some(&n) = bytes.get(4) else {
        return Err(BundleError::Truncated);
    };
    if !(1..=2).contains(&n) {
        return Err(BundleError::BadCount);
    }
    let mut rest = &bytes[5..];
    let mut out = Bundle::default();
    let mut last_id = 0u8;
    for _ in 0..n {
        if rest.len() < 3 {
            return Err(BundleError::Truncated);
        }
        let id = rest[0];
        let len = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        let want = expected_len(id).ok_or(BundleError::UnknownComponent(id))?;
        if id <= last_id {
            return Err(BundleError::Order);
        }
        last_id = id;
        if len != want {
            return Err(BundleError::BadLength(id));
        }
        rest = &rest[3..];
        if rest.len() < len {
            return Err(BundleError::Truncated);
        }
        let (sig, tail) = rest.split_at(len);
        match id {
            ID_ED25519 => out.classical = Some(sig),
            _ => out.pq = Some(sig),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(BundleError::Trailing);
    }
    Ok(out)
}

/// The two halves of a hybrid signing key's public key.
pub fn split_sig_public(public: &[u8]) -> Option<(&[u8], &[u8])> {
    (public.len() == ED25519_PUBLIC_LEN + ML_DSA_65_PUBLIC_LEN)
        .then(|| public.split_at(ED25519_PUBLIC_LEN))
}

/// Per-component verification result: `None` when the component is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComponentResults {
    pub classical: Option<bool>,
    pub pq: Option<bool>,
}

/// `hybrid-ed25519-ml-dsa-65`: private key `ed25519 seed (32) || ML-DSA-65
/// private key`, public key `ed25519 (32) || ML-DSA-65 (1952)`.
pub struct HybridSig {
    pub classical: Box<dyn SignatureScheme>,
    pub pq: Box<dyn SignatureScheme>,
}

impl HybridSig {
    /// Verify each component present in `bundle` against its half of
    /// `public`.
    pub fn verify_components(
        &self,
        public: &[u8],
        message: &[u8],
        bundle: &Bundle<'_>,
    ) -> ComponentResults {
        let Some((pc, pq)) = split_sig_public(public) else {
            return ComponentResults {
                classical: bundle.classical.map(|_| false),
                pq: bundle.pq.map(|_| false),
            };
        };
        ComponentResults {
            classical: bundle
                .classical
                .map(|s| self.classical.verify(pc, message, s)),
            pq: bundle.pq.map(|s| self.pq.verify(pq, message, s)),
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

    /// Always both components; the service strips the PQ one when the
    /// tenant's policy says classical-only.
    fn sign(&self, private: &[u8], message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if private.len() <= ED25519_SEED_LEN {
            return Err(CryptoError::BadPrivateKey("hybrid-ed25519-ml-dsa-65"));
        }
        let (c, q) = private.split_at(ED25519_SEED_LEN);
        let cs = self.classical.sign(c, message)?;
        let qs = self.pq.sign(q, message)?;
        Ok(encode_bundle(Some(&cs), Some(&qs)))
    }

    /// Both components present and valid (the strictest reading); the
    /// service applies the tenant's policy through [`Self::verify_components`].
    fn verify(&self, public: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let Ok(b) = parse_bundle(signature) else {
            return false;
        };
        let r = self.verify_components(public, message, &b);
        r.classical == Some(true) && r.pq == Some(true)
    }
}

/// X-Wing's combiner.
pub fn xwing_combine(ss_m: &[u8], ss_x: &[u8], ct_x: &[u8], pk_x: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut h = sha3::Sha3_256::new();
    h.update(XWING_LABEL);
    h.update(ss_m);
    h.update(ss_x);
    h.update(ct_x);
    h.update(pk_x);
    Zeroizing::new(h.finalize().to_vec())
}

/// `hybrid-x25519-ml-kem-768`.
pub struct HybridKem {
    pub mlkem: Box<dyn KemScheme>,
}

const HYBRID_KEM: &str = "hybrid-x25519-ml-kem-768";

fn x25519_secret(bytes: &[u8]) -> Option<x25519_dalek::StaticSecret> {
    let b: [u8; 32] = bytes.try_into().ok()?;
    Some(x25519_dalek::StaticSecret::from(b))
}

impl KemScheme for HybridKem {
    fn generate(&self) -> Result<KeyPair, CryptoError> {
        let m = self.mlkem.generate()?;
        let mut seed = Zeroizing::new([0u8; 32]);
        random_bytes(&mut seed[..])?;
        let sk = x25519_dalek::StaticSecret::from(*seed);
        let pk = x25519_dalek::PublicKey::from(&sk);
        let mut private = Zeroizing::new(Vec::with_capacity(m.private.len() + X25519_LEN));
        private.extend_from_slice(&m.private);
        private.extend_from_slice(sk.as_bytes());
        Ok(KeyPair {
            public: [m.public.as_slice(), pk.as_bytes()].concat(),
            private,
        })
    }

    fn encapsulate(&self, public: &[u8]) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), CryptoError> {
        if public.len() != ML_KEM_768_PUBLIC_LEN + X25519_LEN {
            return Err(CryptoError::BadPublicKey(HYBRID_KEM));
        }
        let (pk_m, pk_x) = public.split_at(ML_KEM_768_PUBLIC_LEN);
        let (ct_m, ss_m) = self.mlkem.encapsulate(pk_m)?;
        let mut eph = Zeroizing::new([0u8; 32]);
        random_bytes(&mut eph[..])?;
        let e = x25519_dalek::StaticSecret::from(*eph);
        let ct_x = x25519_dalek::PublicKey::from(&e);
        let pk_x_arr: [u8; 32] = pk_x.try_into().expect("length checked");
        let ss_x = e.diffie_hellman(&x25519_dalek::PublicKey::from(pk_x_arr));
        if !ss_x.was_contributory() {
            return Err(CryptoError::BadPublicKey(HYBRID_KEM));
        }
        let ss = xwing_combine(&ss_m, ss_x.as_bytes(), ct_x.as_bytes(), pk_x);
        Ok(([ct_m.as_slice(), ct_x.as_bytes()].concat(), ss))
    }

    fn decapsulate(
        &self,
        private: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if private.len() <= X25519_LEN {
            return Err(CryptoError::BadPrivateKey(HYBRID_KEM));
        }
        if ciphertext.len() != ML_KEM_768_CIPHERTEXT_LEN + X25519_LEN {
            return Err(CryptoError::Kem(HYBRID_KEM));
        }
        let (dk_m, sk_x) = private.split_at(private.len() - X25519_LEN);
        let (ct_m, ct_x) = ciphertext.split_at(ML_KEM_768_CIPHERTEXT_LEN);
        let ss_m = self.mlkem.decapsulate(dk_m, ct_m)?;
        let sk = x25519_secret(sk_x).ok_or(CryptoError::BadPrivateKey(HYBRID_KEM))?;
        let pk_x = x25519_dalek::PublicKey::from(&sk);
        let ct_x_arr: [u8; 32] = ct_x.try_into().expect("length checked");
        let ss_x = sk.diffie_hellman(&x25519_dalek::PublicKey::from(ct_x_arr));
        if !ss_x.was_contributory() {
            return Err(CryptoError::Kem(HYBRID_KEM));
        }
        Ok(xwing_combine(&ss_m, ss_x.as_bytes(), ct_x, pk_x.as_bytes()))
    }

    fn ciphertext_len(&self) -> usize {
        ML_KEM_768_CIPHERTEXT_LEN + X25519_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// X-Wing's combiner, label first; the expected value was computed
    /// with Python's hashlib.sha3_256 over the same bytes.
    #[test]
    fn the_combiner_is_x_wings() {
        let ss = xwing_combine(&[1u8; 32], &[2u8; 32], &[3u8; 32], &[4u8; 32]);
        assert_eq!(
            hex::encode(&ss[..]),
            "925e1ec05c263852aa5b6d198e21014b10cf57f2eaa8527692ad49487d36fb22"
        );
    }

    #[test]
    fn bundles_round_trip_and_parse_strictly() {
        let c = [1u8; ED25519_SIG_LEN];
        let q = vec![2u8; ML_DSA_65_SIG_LEN];
        for (cl, pq) in [
            (Some(&c[..]), Some(&q[..])),
            (Some(&c[..]), None),
            (None, Some(&q[..])),
        ] {
            let b = encode_bundle(cl, pq);
            let p = parse_bundle(&b).unwrap();
            assert_eq!((p.classical, p.pq), (cl, pq));
            // every truncation fails, never panics
            for n in 0..b.len() {
                assert!(parse_bundle(&b[..n]).is_err(), "prefix {n}");
            }
            let mut t = b.clone();
            t.push(0);
            assert_eq!(parse_bundle(&t), Err(BundleError::Trailing));
        }
        let both = encode_bundle(Some(&c), Some(&q));
        let mut bad = both.clone();
        bad[3] = 2;
        assert_eq!(parse_bundle(&bad), Err(BundleError::BadMagic));
        let mut bad = both.clone();
        bad[4] = 3;
        assert_eq!(parse_bundle(&bad), Err(BundleError::BadCount));
        let mut bad = both.clone();
        bad[5] = 0x13;
        assert_eq!(parse_bundle(&bad), Err(BundleError::UnknownComponent(0x13)));
        let mut bad = both.clone();
        bad[7] = 63;
        assert_eq!(parse_bundle(&bad), Err(BundleError::BadLength(ID_ED25519)));
        // the same component twice, or the order reversed
        let twice = [
            &BUNDLE_MAGIC[..],
            &[2, ID_ED25519, 0, 64],
            &c,
            &[ID_ED25519, 0, 64],
            &c,
        ]
        .concat();
        assert_eq!(parse_bundle(&twice), Err(BundleError::Order));
    }
}
