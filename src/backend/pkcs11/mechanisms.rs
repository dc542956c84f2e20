//! The token's mechanisms: which ones ron-kms probes, the [`Capabilities`]
//! they give (what is native, what is sealed), and the AES-GCM parameters
//! both the KEK and native AES keys are used with.
//!
//! Which path an algorithm takes comes from `C_GetMechanismInfo` at
//! connect, never from a fixed list. This module must not pick keys, open
//! sessions or translate errors: it names mechanisms and calls them on the
//! session and key it is given.
use cryptoki::context::Pkcs11;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use zeroize::Zeroizing;

use crate::backend::Capabilities;
use crate::crypto::Algorithm;

/// Every mechanism ron-kms can use; the token answers
/// `C_GetMechanismInfo` for the ones it supports.
const PROBED: [MechanismType; 9] = [
    MechanismType::ECDSA,
    MechanismType::ECC_KEY_PAIR_GEN,
    MechanismType::EDDSA,
    MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
    MechanismType::AES_GCM,
    MechanismType::AES_KEY_GEN,
    MechanismType::GENERIC_SECRET_KEY_GEN,
    MechanismType::SHA256_HMAC,
    MechanismType::SHA512_HMAC,
];

/// The probed mechanisms the token in `slot` supports.
pub(super) fn probe(ctx: &Pkcs11, slot: Slot) -> Vec<MechanismType> {
    PROBED
        .into_iter()
        .filter(|m| ctx.get_mechanism_info(slot, *m).is_ok())
        .collect()
}

/// What a token with `mechs` holds natively, and what it can seal.
pub(super) fn capabilities(mechs: &[MechanismType]) -> Capabilities {
    let has = |m: MechanismType| mechs.contains(&m);
    let mut native = Vec::new();
    if has(MechanismType::ECDSA) && has(MechanismType::ECC_KEY_PAIR_GEN) {
        native.push(Algorithm::EcdsaP256);
    }
    if has(MechanismType::EDDSA) && has(MechanismType::ECC_EDWARDS_KEY_PAIR_GEN) {
        native.push(Algorithm::Ed25519);
    }
    let aes = has(MechanismType::AES_GCM) && has(MechanismType::AES_KEY_GEN);
    if aes {
        native.push(Algorithm::Aes256Gcm);
    }
    // HMAC keys are CKK_GENERIC_SECRET objects used with CKM_SHA*_HMAC
    for (alg, mech) in [
        (Algorithm::HmacSha256, MechanismType::SHA256_HMAC),
        (Algorithm::HmacSha512, MechanismType::SHA512_HMAC),
    ] {
        if has(mech) && has(MechanismType::GENERIC_SECRET_KEY_GEN) {
            native.push(alg);
        }
    }
    // the KEK needs AES-GCM in the token; without it nothing can be sealed
    let sealed = if aes {
        Algorithm::ALL
            .iter()
            .copied()
            .filter(|a| !native.contains(a))
            .collect()
    } else {
        Vec::new()
    };
    Capabilities {
        native,
        sealed,
        attestation: false,
        persistent: true,
        device_bound: false,
    }
}

/// `C_Encrypt(CKM_AES_GCM)`: 96-bit nonce, 128-bit tag; ciphertext ‖ tag.
pub(super) fn gcm_encrypt(
    s: &Session,
    key: ObjectHandle,
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CkError> {
    let mut iv = *nonce;
    let params = GcmParams::new(&mut iv, aad, 128.into())?;
    s.encrypt(&Mechanism::AesGcm(params), key, plaintext)
}

/// `C_Decrypt(CKM_AES_GCM)` of ciphertext ‖ tag.
pub(super) fn gcm_decrypt(
    s: &Session,
    key: ObjectHandle,
    nonce: &[u8; 12],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CkError> {
    let mut iv = *nonce;
    let params = GcmParams::new(&mut iv, aad, 128.into())?;
    s.decrypt(&Mechanism::AesGcm(params), key, ciphertext)
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_the_mechanisms() {
        let all = capabilities(&PROBED);
        assert_eq!(
            all.native,
            [
                Algorithm::EcdsaP256,
                Algorithm::Ed25519,
                Algorithm::Aes256Gcm,
                Algorithm::HmacSha256,
                Algorithm::HmacSha512
            ]
        );
        assert_eq!(all.sealed.len(), Algorithm::ALL.len() - 5);
        assert!(all.sealed.iter().all(|a| !all.native.contains(a)));
        // no EdDSA: Ed25519 is sealed instead
        let no_eddsa: Vec<_> = PROBED
            .into_iter()
            .filter(|m| *m != MechanismType::EDDSA)
            .collect();
        let c = capabilities(&no_eddsa);
        assert_eq!(c.native[..2], [Algorithm::EcdsaP256, Algorithm::Aes256Gcm]);
        assert!(c.sealed.contains(&Algorithm::Ed25519));
        // no SHA-512 HMAC: hmac-sha512 keys are sealed
        let no_512: Vec<_> = PROBED
            .into_iter()
            .filter(|m| *m != MechanismType::SHA512_HMAC)
            .collect();
        let c = capabilities(&no_512);
        assert!(c.native.contains(&Algorithm::HmacSha256));
        assert!(c.sealed.contains(&Algorithm::HmacSha512));
        // no AES-GCM: no KEK, so nothing can be sealed
        let no_gcm: Vec<_> = PROBED
            .into_iter()
            .filter(|m| *m != MechanismType::AES_GCM)
            .collect();
        let c = capabilities(&no_gcm);
        assert_eq!(c.native[..2], [Algorithm::EcdsaP256, Algorithm::Ed25519]);
        assert!(!c.native.contains(&Algorithm::Aes256Gcm));
        assert!(c.sealed.is_empty());
    }
}
