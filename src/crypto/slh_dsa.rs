//! SLH-DSA (FIPS 205), the stateless hash-based signature: SLH-DSA-SHA2-128s
//! (small signatures, slow signing) and SLH-DSA-SHA2-128f (fast signing,
//! larger signatures), through IntegrityChain's `fips205` crate.
//!
//! Why `fips205`: the liboqs behind the `oqs` crate ships SPHINCS+ round 3,
//! not FIPS 205 (different domain separation, so its signatures do not
//! verify as SLH-DSA). `fips205` implements the final standard (0.4.0,
//! 2024-10), is tested by its authors against NIST's ACVP vectors, has no
//! unsafe code, and depends only on crates ron-kms already builds (sha2,
//! sha3, zeroize). RustCrypto's `slh-dsa` is the other maintained
//! implementation; the tests use it as the independent verifier.
//!
//! Pure SLH-DSA with an empty context (FIPS 205 Algorithms 22 and 24:
//! M′ = 0x00 ‖ 0x00 ‖ M), hedged: each signature draws fresh randomness
//! for opt_rand. Private key: SK.seed ‖ SK.prf ‖ PK.seed ‖ PK.root
//! (4n = 64 bytes); public key: PK.seed ‖ PK.root (32 bytes); signatures
//! 7,856 bytes (128s) and 17,088 bytes (128f). No digest signing: HashSLH-DSA
//! is a different algorithm.
use fips205::traits::{KeyGen, SerDes, Signer, Verifier};
use zeroize::Zeroizing;

use super::scheme::{KeyPair, SignatureScheme};
use super::CryptoError;

macro_rules! slh_dsa {
    ($name:ident, $module:ident, $label:literal) => {
        pub struct $name;

        impl SignatureScheme for $name {
            fn generate(&self) -> Result<KeyPair, CryptoError> {
                use fips205::$module as p;
                let (pk, sk) = p::KG::try_keygen().map_err(|_| CryptoError::KeyGen($label))?;
                Ok(KeyPair {
                    public: pk.into_bytes().to_vec(),
                    private: Zeroizing::new(sk.into_bytes().to_vec()),
                })
            }

            fn sign(&self, private: &[u8], message: &[u8]) -> Result<Vec<u8>, CryptoError> {
                use fips205::$module as p;
                let bytes: Zeroizing<[u8; p::SK_LEN]> = Zeroizing::new(
                    private
                        .try_into()
                        .map_err(|_| CryptoError::BadPrivateKey($label))?,
                );
                let sk = p::PrivateKey::try_from_bytes(&bytes)
                    .map_err(|_| CryptoError::BadPrivateKey($label))?;
                sk.try_sign(message, &[], true)
                    .map(|s| s.to_vec())
                    .map_err(|_| CryptoError::Sign($label))
            }

            fn verify(&self, public: &[u8], message: &[u8], signature: &[u8]) -> bool {
                use fips205::$module as p;
                let (Ok(pk), Ok(sig)) = (
                    <[u8; p::PK_LEN]>::try_from(public),
                    <&[u8; p::SIG_LEN]>::try_from(signature),
                ) else {
                    return false;
                };
                let Ok(pk) = p::PublicKey::try_from_bytes(&pk) else {
                    return false;
                };
                pk.verify(message, sig, &[])
            }
        }
    };
}

slh_dsa!(SlhDsaSha2_128s, slh_dsa_sha2_128s, "slh-dsa-sha2-128s");
slh_dsa!(SlhDsaSha2_128f, slh_dsa_sha2_128f, "slh-dsa-sha2-128f");
