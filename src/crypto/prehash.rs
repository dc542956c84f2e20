//! Digest signing: what a caller may send in place of the message, for
//! which algorithm, and how it is computed (docs/api.md, "Signing a digest").
//!
//! - `ecdsa-p256`: `sha256`, the 32-byte SHA-256 of the message. The
//!   signature is the ordinary ECDSA signature over that digest, the same
//!   one a message signature would be.
//! - `ml-dsa-44/65/87`: `mu`, FIPS 204's 64-byte message representative
//!   μ = SHAKE256(tr ‖ M′, 64) with tr = SHAKE256(pk, 64) and
//!   M′ = 0x00 ‖ len(ctx) ‖ ctx ‖ M ("external μ", FIPS 204 section 6.2 and
//!   Algorithm 7 line 6). The signature is an ordinary ML-DSA signature over
//!   M with context ctx.
//! - `hybrid-ed25519-ml-dsa-65`: `sha512`, the composite's own pre-hash
//!   PH(M) = SHA-512(M) (draft-ietf-lamps-pq-composite-sigs, "External
//!   pre-hashing"); the service builds M′ from it and the context.
//! - `ed25519`: none. Pure Ed25519 hashes the message twice with the key's
//!   own prefix, so no digest can stand in for it (Ed25519ph, RFC 8032's
//!   pre-hashed variant, is a different algorithm that ron-kms does not
//!   offer).
use sha3::digest::{ExtendableOutput, Update, XofReader};

use super::Algorithm;

/// A digest kind, as Sign's and Verify's `digest_algorithm` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prehash {
    Sha256,
    Sha512,
    /// ML-DSA's external μ.
    Mu,
}

impl Prehash {
    pub const ALL: [Prehash; 3] = [Prehash::Sha256, Prehash::Sha512, Prehash::Mu];

    pub fn as_str(self) -> &'static str {
        match self {
            Prehash::Sha256 => "sha256",
            Prehash::Sha512 => "sha512",
            Prehash::Mu => "mu",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The digest's length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Prehash::Sha256 => 32,
            Prehash::Sha512 | Prehash::Mu => 64,
        }
    }

    /// The digest a client sends for `message` signed by a key whose public
    /// key is `public` (only μ depends on it), with FIPS 204 context `ctx`
    /// (μ only; empty for ron-kms's ML-DSA keys).
    pub fn of(self, public: &[u8], ctx: &[u8], message: &[u8]) -> Vec<u8> {
        let mut h = self.hasher(public, ctx);
        h.update(message);
        h.finish()
    }

    /// [`Prehash::of`] for a message that arrives in pieces (a large file).
    pub fn hasher(self, public: &[u8], ctx: &[u8]) -> Hasher {
        Hasher(match self {
            Prehash::Sha256 => State::Sha(ring::digest::Context::new(&ring::digest::SHA256)),
            Prehash::Sha512 => State::Sha(ring::digest::Context::new(&ring::digest::SHA512)),
            Prehash::Mu => State::Mu(mu_start(public, ctx)),
        })
    }
}

/// A digest being computed ([`Prehash::hasher`]).
pub struct Hasher(State);

enum State {
    Sha(ring::digest::Context),
    Mu(sha3::Shake256),
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            State::Sha(c) => c.update(bytes),
            State::Mu(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self.0 {
            State::Sha(c) => c.finish().as_ref().to_vec(),
            State::Mu(h) => {
                let mut out = vec![0u8; 64];
                h.finalize_xof().read(&mut out);
                out
            }
        }
    }
}

impl std::fmt::Display for Prehash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Algorithm {
    /// The digest this algorithm signs in place of a message, if any.
    pub fn prehash(self) -> Option<Prehash> {
        match self {
            Algorithm::EcdsaP256 => Some(Prehash::Sha256),
            Algorithm::MlDsa44 | Algorithm::MlDsa65 | Algorithm::MlDsa87 => Some(Prehash::Mu),
            Algorithm::HybridEd25519MlDsa65 => Some(Prehash::Sha512),
            _ => None,
        }
    }
}

/// The length of an ML-DSA public key (FIPS 204 table 2), which μ hashes.
pub fn ml_dsa_public_len(alg: Algorithm) -> Option<usize> {
    match alg {
        Algorithm::MlDsa44 => Some(1312),
        Algorithm::MlDsa65 => Some(1952),
        Algorithm::MlDsa87 => Some(2592),
        _ => None,
    }
}

/// FIPS 204 external μ of `message` under ML-DSA public key `public`
/// (any parameter set) with context `ctx` (at most 255 bytes; longer is
/// cut to its length byte's reach by the caller's own check first).
pub fn mu(public: &[u8], ctx: &[u8], message: &[u8]) -> [u8; 64] {
    let mut h = mu_start(public, ctx);
    h.update(message);
    let mut out = [0u8; 64];
    h.finalize_xof().read(&mut out);
    out
}

/// SHAKE256 having absorbed tr ‖ 0x00 ‖ len(ctx) ‖ ctx: the message is next.
fn mu_start(public: &[u8], ctx: &[u8]) -> sha3::Shake256 {
    let mut tr = [0u8; 64];
    let mut h = sha3::Shake256::default();
    h.update(public);
    h.finalize_xof().read(&mut tr);
    let mut h = sha3::Shake256::default();
    h.update(&tr);
    h.update(&[0, ctx.len().min(255) as u8]);
    h.update(ctx);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lengths_and_algorithms() {
        for p in Prehash::ALL {
            assert_eq!(Prehash::parse(p.as_str()), Some(p));
            assert_eq!(p.of(&[1; 32], &[], b"m").len(), p.digest_len());
        }
        assert_eq!(Prehash::parse("sha-256"), None);
        assert_eq!(Algorithm::Ed25519.prehash(), None);
        assert_eq!(Algorithm::Aes256Gcm.prehash(), None);
        assert_eq!(Algorithm::MlDsa87.prehash(), Some(Prehash::Mu));
    }

    /// The worked example of docs/api.md ("Computing μ"): the ML-DSA-44
    /// key of seed ξ = 0³², M = "hello, ron-kms"; the figures were printed
    /// by pyca/cryptography 51 (`MLDSAMuHasher`) and Python's hashlib.
    #[test]
    fn the_documented_worked_example() {
        let sk = rc_ml_dsa::SigningKey::<rc_ml_dsa::MlDsa44>::from_seed(&Default::default());
        let pk = sk.expanded_key().verifying_key().encode();
        assert_eq!(
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &pk)),
            "eb4e7302842153b0fa19e8620739ad258af4929c26dd89079a7ec7d4282208e1"
        );
        assert_eq!(
            hex::encode(mu(&pk, &[], b"hello, ron-kms")),
            "a1f0123d196d670a5c8a4e1326f7c335e29d96bf6750bf6db2f30349e788158f\
             7d523be59bb3ef987f1b0c529bfccb271efdbfe9d7666c766e063b9a1be77c82"
        );
    }

    /// μ as FIPS 204 defines it, checked against RustCrypto's MuBuilder.
    #[test]
    fn mu_matches_an_independent_builder() {
        let sk = rc_ml_dsa::SigningKey::<rc_ml_dsa::MlDsa65>::from_seed(&Default::default());
        let vk = sk.expanded_key().verifying_key();
        let pk = vk.encode();
        let msg = b"release-1.2.3.tar.gz";
        let ours = mu(&pk, &[], msg);
        let sig = sk.expanded_key().sign_deterministic(msg, &[]).unwrap();
        let mu_arr = rc_ml_dsa::common::array::Array::try_from(&ours[..]).unwrap();
        assert!(vk.verify_mu(&mu_arr, &sig));
        assert_ne!(mu(&pk, b"x", msg), ours);
    }
}
