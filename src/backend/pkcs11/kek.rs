//! The token-resident KEK (`ron-kms/kek/v1`): an AES-256 token object,
//! created once, sensitive and non-extractable, under which the token seals
//! the software keys of every algorithm it cannot hold natively (ML-DSA,
//! ML-KEM, the hybrids).
//!
//! This module finds or creates the KEK on a session (the pool does so at
//! every connect, and keeps its object handle on the connection) and seals
//! and opens under it, AES-256-GCM inside the token, with the `sealed-file`
//! associated data. The backend's [`Sealer`](crate::backend::soft::Sealer) impl runs these on a
//! pooled session (`mod.rs`: the pool sits above this module, since it needs
//! the KEK to connect). This module must not see the KEK's value (it never
//! leaves the token), keep an unsealed key, or read the pool.
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

use super::error::Fail;
use super::handle;
use super::mechanisms::{gcm_decrypt, gcm_encrypt};
use super::templates::aes_key_template;
use crate::backend::soft::label_aad;
use crate::backend::{BackendError, KeyLabel};
use crate::crypto::aead;

/// The KEK's `CKA_ID` and `CKA_LABEL`.
const KEK_ID: &[u8] = b"ron-kms/kek/v1";

/// Find the KEK by class and `CKA_ID`.
pub(super) fn find(s: &Session) -> Result<Vec<ObjectHandle>, CkError> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Id(KEK_ID.to_vec()),
    ])
}

/// The KEK, created in the token on first use.
pub(super) fn find_or_create(s: &Session) -> Result<ObjectHandle, CkError> {
    let found = find(s)?;
    if let Some(h) = found.first() {
        return Ok(*h);
    }
    s.generate_key(&Mechanism::AesKeyGen, &aes_key_template(KEK_ID, KEK_ID))
}

/// Seal `private` for `label` under `kek`; the sealed handle. A connection
/// without a KEK (a token without AES-GCM) seals nothing.
pub(super) fn seal(
    s: &Session,
    kek: Option<ObjectHandle>,
    label: &KeyLabel<'_>,
    nonce: &[u8; aead::AEAD_NONCE_LEN],
    private: &[u8],
) -> Result<Vec<u8>, Fail> {
    let kek = kek.ok_or(BackendError::Unsupported(label.algorithm))?;
    let ct = gcm_encrypt(s, kek, nonce, &label_aad(label), private)?;
    Ok(handle::sealed(nonce, &ct))
}

/// Open a sealed handle's body (`nonce ‖ ciphertext‖tag`) for `label`.
pub(super) fn open(
    s: &Session,
    kek: Option<ObjectHandle>,
    label: &KeyLabel<'_>,
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Fail> {
    let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
    nonce.copy_from_slice(&body[..aead::AEAD_NONCE_LEN]);
    let kek = kek.ok_or(BackendError::Unsupported(label.algorithm))?;
    Ok(gcm_decrypt(
        s,
        kek,
        &nonce,
        &label_aad(label),
        &body[aead::AEAD_NONCE_LEN..],
    )?)
}
