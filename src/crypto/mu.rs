//! ML-DSA over an external μ ([`super::prehash`]), through RustCrypto's
//! `ml-dsa` 0.1: liboqs 0.13 signs only messages. The private key is the
//! same FIPS 204 encoding liboqs makes and custody seals; the signature is
//! the same encoding liboqs verifies.
//!
//! Slower than liboqs: RustCrypto's signing has no AVX2 path (PERFORMANCE.md,
//! "Digest signing"), which the admission cost table prices.
use rc_ml_dsa::common::array::Array;
use rc_ml_dsa::{
    EncodedSignature, EncodedVerifyingKey, ExpandedSigningKey, ExpandedSigningKeyBytes, MlDsa44,
    MlDsa65, MlDsa87, MlDsaParams, Signature, VerifyingKey,
};
use zeroize::Zeroize as _;

use super::CryptoError;

/// The three parameter sets, for dispatch from the provider.
#[derive(Clone, Copy, Debug)]
pub enum Level {
    L44,
    L65,
    L87,
}

impl Level {
    /// A hedged (randomised) ML-DSA signature over μ, as liboqs signs
    /// messages. `mu` is 64 bytes (the service checks it first).
    pub fn sign(
        self,
        private: &[u8],
        mu: &[u8],
        name: &'static str,
    ) -> Result<Vec<u8>, CryptoError> {
        match self {
            Level::L44 => sign::<MlDsa44>(private, mu, name),
            Level::L65 => sign::<MlDsa65>(private, mu, name),
            Level::L87 => sign::<MlDsa87>(private, mu, name),
        }
    }

    /// `false` for anything that is not a valid signature over μ.
    pub fn verify(self, public: &[u8], mu: &[u8], signature: &[u8]) -> bool {
        match self {
            Level::L44 => verify::<MlDsa44>(public, mu, signature),
            Level::L65 => verify::<MlDsa65>(public, mu, signature),
            Level::L87 => verify::<MlDsa87>(public, mu, signature),
        }
    }
}

fn sign<P: MlDsaParams>(
    private: &[u8],
    mu: &[u8],
    name: &'static str,
) -> Result<Vec<u8>, CryptoError> {
    let mut enc = ExpandedSigningKeyBytes::<P>::try_from(private)
        .map_err(|_| CryptoError::BadPrivateKey(name))?;
    // `from_expanded` is deprecated upstream because it does not validate
    // an expanded key it is handed; these keys come out of custody's
    // authenticated sealing, made by liboqs's key generation.
    #[allow(deprecated)]
    let sk = ExpandedSigningKey::<P>::from_expanded(&enc);
    enc.zeroize();
    let mu = Array::try_from(mu).map_err(|_| CryptoError::BadInput("mu is 64 bytes"))?;
    let mut rng = getrandom::SysRng;
    sk.sign_mu_randomized(&mu, &mut rng)
        .map(|s| s.encode().to_vec())
        .map_err(|_| CryptoError::Sign(name))
}

fn verify<P: MlDsaParams>(public: &[u8], mu: &[u8], signature: &[u8]) -> bool {
    let (Ok(pk), Ok(sig), Ok(mu)) = (
        EncodedVerifyingKey::<P>::try_from(public),
        EncodedSignature::<P>::try_from(signature),
        Array::try_from(mu),
    ) else {
        return false;
    };
    let Some(sig) = Signature::<P>::decode(&sig) else {
        return false;
    };
    VerifyingKey::<P>::decode(&pk).verify_mu(&mu, &sig)
}
