//! What ron-kms creates in a token: the attribute templates of its objects
//! (least privilege: every usage not asked for is off), their `CKA_LABEL`,
//! and the EC parameter and point encodings the token takes and returns.
//!
//! This module builds and reads attribute values only; it must not call
//! the token.
use cryptoki::object::{Attribute, KeyType, ObjectClass};

use crate::backend::{BackendError, KeyLabel};

/// DER OID of P-256 (prime256v1), as `CKA_EC_PARAMS`.
pub(super) const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER OID of Ed25519 (RFC 8410), as `CKA_EC_PARAMS`.
pub(super) const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// `CKA_LABEL` of a key version's objects: `ron-kms/<tenant>/<name>#v<N>`,
/// and for an HMAC key `ron-kms/<tenant>/<name>#v<N>/<algorithm>`: both
/// HMAC algorithms' keys are `CKK_GENERIC_SECRET` objects, which the token
/// uses with either mechanism, so the label is what binds the algorithm.
/// (Every other native key's type or class binds it.)
pub(super) fn object_label(label: &KeyLabel<'_>) -> Vec<u8> {
    if label.algorithm.purpose() == crate::crypto::Purpose::Mac {
        format!("ron-kms/{}/{}/{}", label.tenant, label.kid, label.algorithm).into_bytes()
    } else {
        format!("ron-kms/{}/{}", label.tenant, label.kid).into_bytes()
    }
}

/// A token-resident AES-256 secret key: sensitive, non-extractable,
/// encrypt/decrypt only (the KEK, and native AES keys).
pub(super) fn aes_key_template(id: &[u8], label: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.to_vec()),
    ]
}

/// A token-resident HMAC key of `len` bytes (`CKK_GENERIC_SECRET`, used
/// with `CKM_SHA256_HMAC` / `CKM_SHA512_HMAC`): sensitive,
/// non-extractable, sign/verify only.
pub(super) fn hmac_key_template(id: &[u8], label: &[u8], len: usize) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen((len as u64).into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.to_vec()),
    ]
}

/// The public and private templates of a signing key pair on the curve
/// `ec_params`: both halves share `CKA_ID` and `CKA_LABEL`; the public half
/// verifies only, the private half is sensitive, non-extractable and signs
/// only.
pub(super) fn signing_pair_templates(
    id: &[u8],
    label: &[u8],
    ec_params: &[u8],
) -> (Vec<Attribute>, Vec<Attribute>) {
    let common = |extra: Vec<Attribute>| {
        let mut v = vec![
            Attribute::Token(true),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.to_vec()),
        ];
        v.extend(extra);
        v
    };
    let public = common(vec![
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::EcParams(ec_params.to_vec()),
    ]);
    let private = common(vec![
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Derive(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
    ]);
    (public, private)
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the point; some tokens
/// return the bare point. Accept either, for the expected length.
pub(super) fn ec_point(v: &[u8], len: usize) -> Result<Vec<u8>, BackendError> {
    if v.len() == len + 2 && v[0] == 0x04 && v[1] as usize == len {
        Ok(v[2..].to_vec())
    } else if v.len() == len {
        Ok(v.to_vec())
    } else {
        Err(BackendError::Crypto(format!(
            "token returned a {}-byte EC point, expected {len}",
            v.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_with_or_without_the_octet_string() {
        let mut der = vec![0x04, 32];
        der.extend_from_slice(&[9u8; 32]);
        assert_eq!(ec_point(&der, 32).unwrap(), vec![9u8; 32]);
        assert_eq!(ec_point(&[9u8; 32], 32).unwrap(), vec![9u8; 32]);
        assert!(ec_point(&[9u8; 31], 32).is_err());
    }
}
