//! Independent implementations (RustCrypto) that check ron-kms from
//! outside: they know only the DER SubjectPublicKeyInfo from GetKey and the
//! documented envelope format, never ron-kms code.
use aes_gcm::aead::{Aead, KeyInit, Payload};
use ml_kem::kem::Encapsulate;
use ml_kem::{EncodedSizeUser, KemCore};
use rand_core::{OsRng, RngCore};
use spki::DecodePublicKey;

macro_rules! mldsa_verify {
    ($p:ty, $der:expr, $msg:expr, $sig:expr) => {{
        let vk = ml_dsa::VerifyingKey::<$p>::from_public_key_der($der)
            .expect("SPKI carries the right ML-DSA OID and a well-formed key");
        match ml_dsa::Signature::<$p>::try_from($sig) {
            Ok(s) => vk.verify_with_context($msg, &[], &s),
            Err(_) => false,
        }
    }};
}

/// Verify `sig` over `msg` with the public key in `der`, for `alg`.
pub fn verify(alg: &str, der: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    match alg {
        "ed25519" => {
            let vk = ed25519_dalek::VerifyingKey::from_public_key_der(der).expect("Ed25519 SPKI");
            match ed25519_dalek::Signature::from_slice(sig) {
                Ok(s) => vk.verify_strict(msg, &s).is_ok(),
                Err(_) => false,
            }
        }
        "ecdsa-p256" => {
            use p256::ecdsa::signature::Verifier;
            let vk = p256::ecdsa::VerifyingKey::from_public_key_der(der).expect("P-256 SPKI");
            match p256::ecdsa::Signature::from_der(sig) {
                Ok(s) => vk.verify(msg, &s).is_ok(),
                Err(_) => false,
            }
        }
        "ml-dsa-44" => mldsa_verify!(ml_dsa::MlDsa44, der, msg, sig),
        "ml-dsa-65" => mldsa_verify!(ml_dsa::MlDsa65, der, msg, sig),
        "ml-dsa-87" => mldsa_verify!(ml_dsa::MlDsa87, der, msg, sig),
        other => panic!("no independent verifier for {other}"),
    }
}

/// The OID string an SPKI names.
pub fn spki_oid(der: &[u8]) -> String {
    let spki = spki::SubjectPublicKeyInfoRef::try_from(der).expect("well-formed SPKI");
    spki.algorithm.oid.to_string()
}

fn encapsulate(alg: &str, public: &[u8]) -> (Vec<u8>, Vec<u8>) {
    macro_rules! encap {
        ($k:ty) => {{
            type Ek = <$k as KemCore>::EncapsulationKey;
            let enc = ml_kem::Encoded::<Ek>::try_from(public).expect("ML-KEM public key length");
            let ek = Ek::from_bytes(&enc);
            let (ct, ss) = ek.encapsulate(&mut OsRng).unwrap();
            (ct.as_slice().to_vec(), ss.as_slice().to_vec())
        }};
    }
    match alg {
        "ml-kem-768" => encap!(ml_kem::MlKem768),
        "ml-kem-1024" => encap!(ml_kem::MlKem1024),
        other => panic!("not an ML-KEM algorithm: {other}"),
    }
}

/// Build a wrap envelope for `kid` from the public key alone, following
/// docs/wrap-envelope.md with RustCrypto's ML-KEM, HKDF and AES-GCM.
pub fn kem_wrap(alg: &str, der: &[u8], kid: &str, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let (oid, id) = match alg {
        "ml-kem-768" => ("2.16.840.1.101.3.4.4.2", 0x20u8),
        "ml-kem-1024" => ("2.16.840.1.101.3.4.4.3", 0x21u8),
        other => panic!("not an ML-KEM algorithm: {other}"),
    };
    let spki = spki::SubjectPublicKeyInfoRef::try_from(der).expect("well-formed SPKI");
    assert_eq!(spki.algorithm.oid.to_string(), oid);
    assert!(
        spki.algorithm.parameters.is_none(),
        "ML-KEM SPKI has no parameters"
    );
    let public = spki.subject_public_key.as_bytes().expect("no unused bits");
    let (ct, ss) = encapsulate(alg, public);

    let mut header = vec![0x52, 0x4B, 0x57, 0x01, id, kid.len() as u8];
    header.extend_from_slice(kid.as_bytes());
    header.extend_from_slice(&(ct.len() as u16).to_be_bytes());
    header.extend_from_slice(&ct);

    let mut key = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, &ss)
        .expand(format!("ron-kms/wrap/v1/{alg}").as_bytes(), &mut key)
        .unwrap();
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key).unwrap();
    let full_aad = [header.as_slice(), aad].concat();
    let sealed = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: plaintext,
                aad: &full_aad,
            },
        )
        .unwrap();
    [header, nonce.to_vec(), sealed].concat()
}
