//! `hybrid-x25519-ml-kem-768`: ML-KEM-768 and X25519 under X-Wing's
//! combiner as draft-connolly-cfrg-xwing-kem-01 wrote it, with the label
//! *first*: `ss = SHA3-256("\\.//^\\" || ss_M || ss_X || ct_X || pk_X)`.
//! The public key is `pk_M (1184) || pk_X (32)` and the ciphertext
//! `ct_M (1088) || ct_X (32)`, laid out as in X-Wing; the private key is kept
//! expanded, `dk_M (2400) || sk_X (32)`, not as X-Wing's 32-byte seed.
//!
//! This is not the final X-Wing (draft -06 onwards, HPKE KEM 0x647A), which
//! moved the label to the end of the hash input: the shared secrets differ.
//! `tests/kat.rs` runs X-Wing's published vectors through this code and
//! shows that the keys, the ciphertext layout and both component secrets
//! agree and only the label's place differs (docs/hybrid.md).
use sha3::Digest as _;
use zeroize::Zeroizing;

use super::super::scheme::{KemScheme, KeyPair};
use super::super::{random_bytes, CryptoError};

pub const ML_KEM_768_PUBLIC_LEN: usize = 1184;
pub const ML_KEM_768_CIPHERTEXT_LEN: usize = 1088;
pub const X25519_LEN: usize = 32;
/// X-Wing's domain label, the 6 bytes `\.//^\`.
pub const XWING_LABEL: &[u8; 6] = b"\\.//^\\";

/// The combiner, label first (draft-01's order; see the module docs).
pub fn combine_label_first(
    ss_m: &[u8],
    ss_x: &[u8],
    ct_x: &[u8],
    pk_x: &[u8],
) -> Zeroizing<Vec<u8>> {
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
        let ss = combine_label_first(&ss_m, ss_x.as_bytes(), ct_x.as_bytes(), pk_x);
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
        Ok(combine_label_first(
            &ss_m,
            ss_x.as_bytes(),
            ct_x,
            pk_x.as_bytes(),
        ))
    }

    fn ciphertext_len(&self) -> usize {
        ML_KEM_768_CIPHERTEXT_LEN + X25519_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The combiner, label first; the expected value was computed
    /// with Python's hashlib.sha3_256 over the same bytes.
    #[test]
    fn the_combiner_puts_the_label_first() {
        let ss = combine_label_first(&[1u8; 32], &[2u8; 32], &[3u8; 32], &[4u8; 32]);
        assert_eq!(
            hex::encode(&ss[..]),
            "925e1ec05c263852aa5b6d198e21014b10cf57f2eaa8527692ad49487d36fb22"
        );
    }
}
