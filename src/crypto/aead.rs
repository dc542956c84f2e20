//! AES-256-GCM and HKDF-SHA256 (ring). Used by the wrap envelope and by the
//! sealed-file custody.
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

use super::CryptoError;

pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
pub use ring::aead::NONCE_LEN as AEAD_NONCE_LEN;

fn key(k: &[u8]) -> Result<LessSafeKey, CryptoError> {
    let unbound = UnboundKey::new(&AES_256_GCM, k).map_err(|_| CryptoError::Aead)?;
    Ok(LessSafeKey::new(unbound))
}

/// Returns `ciphertext || tag`.
pub fn seal(
    k: &[u8],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let key = key(k)?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(*nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| CryptoError::Aead)?;
    Ok(buf)
}

/// Opens `ciphertext || tag`; the plaintext is zeroized when dropped.
pub fn open(
    k: &[u8],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let key = key(k)?;
    let mut buf = Zeroizing::new(ciphertext_and_tag.to_vec());
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| CryptoError::Aead)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// HKDF-SHA256 (RFC 5869) with an empty salt, 32 bytes of output.
pub fn hkdf_sha256_32(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    struct Len32;
    impl ring::hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]);
    let prk = salt.extract(ikm);
    let info = [info];
    let mut out = Zeroizing::new([0u8; 32]);
    prk.expand(&info, Len32)
        .and_then(|okm| okm.fill(&mut out[..]))
        .expect("HKDF-SHA256 with 32 bytes of output cannot fail");
    out
}
