//! Native keys: keys the token holds and uses itself (ECDSA P-256, Ed25519,
//! AES-256-GCM, HMAC-SHA256/512 on SoftHSM2), generated as token objects with
//! `CKA_SENSITIVE=true`, `CKA_EXTRACTABLE=false`, and found again by class,
//! `CKA_ID` *and* `CKA_LABEL`, so a handle copied onto another key record
//! finds nothing.
//!
//! This module owns generation, lookup through the per-connection object
//! cache (a stale object handle is looked up again once), signing,
//! AES-GCM and destruction for those keys. It must not decide whether a key
//! is native (the backend does, from its capabilities), translate errors
//! (the pool does), or read a private key: none ever leaves the token.
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

use super::error::{stale_handle, unavailable, Fail};
use super::handle::{self, NativeRef, ID_LEN, KIND_PAIR, KIND_SECRET};
use super::mechanisms::{gcm_decrypt, gcm_encrypt};
use super::pool::{Conn, Pool};
use super::templates::{
    aes_key_template, ec_point, hmac_key_template, object_label, signing_pair_templates,
    ED25519_PARAMS, P256_PARAMS,
};
use crate::backend::{ecdsa_der, BackendError, Generated, KeyLabel};
use crate::crypto::{aead, mac, random_bytes, Algorithm};

/// Generate a native key of `label.algorithm` in the token. A key pair
/// whose public point cannot be read is destroyed before the error
/// returns: nothing is left behind.
pub(super) fn generate(pool: &Pool, label: KeyLabel<'_>) -> Result<Generated, BackendError> {
    let mut id = vec![0u8; ID_LEN];
    random_bytes(&mut id).map_err(|e| BackendError::Crypto(e.to_string()))?;
    let olabel = object_label(&label);
    let alg = label.algorithm;
    let (kind, public) = pool.run_exclusive(|_, s| match alg {
        Algorithm::Aes256Gcm => {
            s.generate_key(&Mechanism::AesKeyGen, &aes_key_template(&id, &olabel))?;
            Ok((KIND_SECRET, Vec::new()))
        }
        Algorithm::HmacSha256 | Algorithm::HmacSha512 => {
            let len = mac::key_len(alg).unwrap_or(32);
            s.generate_key(
                &Mechanism::GenericSecretKeyGen,
                &hmac_key_template(&id, &olabel, len),
            )?;
            Ok((KIND_SECRET, Vec::new()))
        }
        Algorithm::EcdsaP256 | Algorithm::Ed25519 => {
            let (mech, params, len) = if alg == Algorithm::EcdsaP256 {
                (Mechanism::EccKeyPairGen, P256_PARAMS, 65)
            } else {
                (Mechanism::EccEdwardsKeyPairGen, ED25519_PARAMS, 32)
            };
            let (pub_t, priv_t) = signing_pair_templates(&id, &olabel, params);
            let (pubh, privh) = s.generate_key_pair(&mech, &pub_t, &priv_t)?;
            let point = s
                .get_attributes(pubh, &[AttributeType::EcPoint])
                .map_err(Fail::Ck)
                .and_then(|attrs| match attrs.first() {
                    Some(Attribute::EcPoint(p)) => Ok(ec_point(p, len)?),
                    _ => Err(Fail::Backend(BackendError::Crypto(
                        "token returned no EC point".into(),
                    ))),
                });
            match point {
                Ok(p) => Ok((KIND_PAIR, p)),
                Err(e) => {
                    // leave nothing behind
                    let _ = s.destroy_object(privh);
                    let _ = s.destroy_object(pubh);
                    Err(e)
                }
            }
        }
        other => Err(Fail::Backend(BackendError::Unsupported(other))),
    })?;
    Ok(Generated {
        public,
        handle: handle::native(kind, &id),
    })
}

/// Sign `message` with a native key pair: ECDSA over its SHA-256 (computed
/// here, DER-encoded on the way out), Ed25519 pure.
pub(super) fn sign(
    pool: &Pool,
    label: KeyLabel<'_>,
    r: &NativeRef,
    message: &[u8],
) -> Result<Vec<u8>, BackendError> {
    match label.algorithm {
        Algorithm::EcdsaP256 => {
            let digest = ring::digest::digest(&ring::digest::SHA256, message);
            sign_digest(pool, label, r, digest.as_ref())
        }
        Algorithm::Ed25519 => pool.run(|conn, s| {
            with_key(conn, s, r, &label, |h| {
                s.sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    h,
                    message,
                )
            })
        }),
        other => Err(BackendError::Unsupported(other)),
    }
}

/// ECDSA P-256 over a SHA-256 digest (`CKM_ECDSA` signs the digest it is
/// given), DER-encoded.
pub(super) fn sign_digest(
    pool: &Pool,
    label: KeyLabel<'_>,
    r: &NativeRef,
    digest: &[u8],
) -> Result<Vec<u8>, BackendError> {
    let rs =
        pool.run(|conn, s| with_key(conn, s, r, &label, |h| s.sign(&Mechanism::Ecdsa, h, digest)))?;
    ecdsa_der(&rs)
}

/// The HMAC tag of `data` with a native HMAC key (`CKM_SHA256_HMAC` or
/// `CKM_SHA512_HMAC`: the full-length tag).
pub(super) fn mac(
    pool: &Pool,
    label: KeyLabel<'_>,
    r: &NativeRef,
    data: &[u8],
) -> Result<Vec<u8>, BackendError> {
    let mech = match label.algorithm {
        Algorithm::HmacSha256 => Mechanism::Sha256Hmac,
        Algorithm::HmacSha512 => Mechanism::Sha512Hmac,
        other => return Err(BackendError::Unsupported(other)),
    };
    pool.run(|conn, s| with_key(conn, s, r, &label, |h| s.sign(&mech, h, data)))
}

/// AES-256-GCM seal with a native secret key.
pub(super) fn aead_seal(
    pool: &Pool,
    label: KeyLabel<'_>,
    r: &NativeRef,
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, BackendError> {
    pool.run(|conn, s| {
        with_key(conn, s, r, &label, |h| {
            gcm_encrypt(s, h, nonce, aad, plaintext)
        })
    })
}

/// AES-256-GCM open with a native secret key; a ciphertext shorter than a
/// tag is refused without asking the token.
pub(super) fn aead_open(
    pool: &Pool,
    label: KeyLabel<'_>,
    r: &NativeRef,
    nonce: &[u8; 12],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    if ciphertext.len() < aead::TAG_LEN {
        return Err(BackendError::Decrypt);
    }
    pool.run(|conn, s| {
        with_key(conn, s, r, &label, |h| {
            gcm_decrypt(s, h, nonce, aad, ciphertext)
        })
    })
}

/// `C_DestroyObject` on every object with the key's `CKA_ID` and
/// `CKA_LABEL` (both halves of a pair); none left is success.
pub(super) fn destroy(pool: &Pool, label: KeyLabel<'_>, r: &NativeRef) -> Result<(), BackendError> {
    pool.run_exclusive(|conn, s| {
        let found = s.find_objects(&[
            Attribute::Id(r.id.clone()),
            Attribute::Label(object_label(&label)),
        ])?;
        for h in found {
            s.destroy_object(h)?;
        }
        conn.objects.invalidate_all();
        Ok(())
    })
}

/// Find a native key's object, through the per-connection cache; bound to
/// the label, so a handle copied onto another key record finds nothing.
fn find_key(
    conn: &Conn,
    s: &Session,
    r: &NativeRef,
    label: &KeyLabel<'_>,
    fresh: bool,
) -> Result<ObjectHandle, Fail> {
    let class = if r.kind == KIND_PAIR {
        ObjectClass::PRIVATE_KEY
    } else {
        ObjectClass::SECRET_KEY
    };
    let mut key = r.id.clone();
    key.push(r.kind);
    key.extend_from_slice(&object_label(label));
    if !fresh {
        if let Some(h) = conn.objects.get(&key) {
            return Ok(h);
        }
    }
    let found = s.find_objects(&[
        Attribute::Class(class),
        Attribute::Id(r.id.clone()),
        Attribute::Label(object_label(label)),
    ])?;
    match found.first() {
        Some(h) => {
            conn.objects.insert(key, *h);
            Ok(*h)
        }
        // The store says the key is live; the token we reach does not have
        // it. Treat it as the token being (partly) away, not as a bad key.
        None => Err(Fail::Backend(unavailable(format!(
            "key object for {}/{} not found on the token",
            label.tenant, label.kid
        )))),
    }
}

/// Run `op` on a native key; a stale cached object handle is looked up
/// again once.
fn with_key<T>(
    conn: &Conn,
    s: &Session,
    r: &NativeRef,
    label: &KeyLabel<'_>,
    op: impl Fn(ObjectHandle) -> Result<T, CkError>,
) -> Result<T, Fail> {
    let h = find_key(conn, s, r, label, false)?;
    match op(h) {
        Err(e) if stale_handle(&e) => {
            let h = find_key(conn, s, r, label, true)?;
            Ok(op(h)?)
        }
        other => Ok(other?),
    }
}
