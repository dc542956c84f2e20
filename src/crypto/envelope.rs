//! The wrap envelope, format version 1. Byte-exact description, with a worked
//! example for an independent implementation, in docs/wrap-envelope.md.
//!
//! ```text
//! offset  size  field
//! 0       4     magic and version: 0x52 0x4B 0x57 0x01 ("RKW", 1)
//! 4       1     algorithm id: 0x10 aes-256-gcm, 0x20 ml-kem-768, 0x21 ml-kem-1024,
//!               0x30 hybrid-x25519-ml-kem-768
//! 5       1     L = length of the kid (1..=140)
//! 6       L     kid, ASCII "name#vN"
//! 6+L     2     C = KEM ciphertext length, big-endian (0 for aes-256-gcm)
//! 8+L     C     KEM ciphertext
//! 8+L+C   12    AES-256-GCM nonce
//! 20+L+C  rest  AES-256-GCM ciphertext followed by its 16-byte tag
//! ```
//!
//! The *header* is bytes `0 .. 8+L+C`. The AEAD's associated data is
//! `header || caller_aad`, so neither the kid, the algorithm nor the KEM
//! ciphertext can be changed without failing authentication. For aes-256-gcm
//! the AEAD key is the key version itself (inside custody); for ML-KEM it is
//! `HKDF-SHA256(salt = empty, ikm = shared secret, info = "ron-kms/wrap/v1/"
//! || algorithm name)`, 32 bytes.
use thiserror::Error;
use zeroize::Zeroizing;

use super::aead::{self, AEAD_NONCE_LEN, TAG_LEN};
use super::Algorithm;

pub const MAGIC: [u8; 4] = [0x52, 0x4B, 0x57, 0x01];
pub const MAX_KID_LEN: usize = 140;
pub const HKDF_INFO_PREFIX: &[u8] = b"ron-kms/wrap/v1/";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("ciphertext is truncated")]
    Truncated,
    #[error("ciphertext is not a ron-kms wrap envelope (bad magic or version)")]
    BadMagic,
    #[error("ciphertext names an unknown algorithm id 0x{0:02x}")]
    UnknownAlgorithm(u8),
    #[error("ciphertext carries a malformed key id")]
    BadKid,
    #[error("ciphertext's KEM ciphertext has the wrong length for its algorithm")]
    BadKemLength,
}

/// A parsed envelope borrowing from the input.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub algorithm: Algorithm,
    pub kid: &'a str,
    pub kem_ciphertext: &'a [u8],
    pub nonce: [u8; AEAD_NONCE_LEN],
    /// AES-256-GCM ciphertext || tag.
    pub sealed: &'a [u8],
    /// Bytes `0 .. 8+L+C`, bound into the AEAD's associated data.
    pub header: &'a [u8],
}

/// Expected KEM ciphertext length per algorithm (FIPS 203).
pub fn kem_ciphertext_len(alg: Algorithm) -> Option<usize> {
    match alg {
        Algorithm::Aes256Gcm => Some(0),
        Algorithm::MlKem768 => Some(1088),
        Algorithm::MlKem1024 => Some(1568),
        Algorithm::HybridX25519MlKem768 => Some(1120),
        _ => None,
    }
}

/// Build the header for `alg`, `kid` and the KEM ciphertext (empty for AES).
pub fn header(alg: Algorithm, kid: &str, kem_ciphertext: &[u8]) -> Vec<u8> {
    let id = alg
        .envelope_id()
        .expect("wrap algorithm has an envelope id");
    assert!(!kid.is_empty() && kid.len() <= MAX_KID_LEN && kid.is_ascii());
    let c = u16::try_from(kem_ciphertext.len()).expect("KEM ciphertext fits u16");
    let mut h = Vec::with_capacity(8 + kid.len() + kem_ciphertext.len());
    h.extend_from_slice(&MAGIC);
    h.push(id);
    h.push(kid.len() as u8);
    h.extend_from_slice(kid.as_bytes());
    h.extend_from_slice(&c.to_be_bytes());
    h.extend_from_slice(kem_ciphertext);
    h
}

/// `header || caller_aad`: the AEAD associated data.
pub fn associated_data(header: &[u8], caller_aad: &[u8]) -> Vec<u8> {
    [header, caller_aad].concat()
}

/// The AES-256-GCM key for an ML-KEM envelope.
pub fn kem_wrap_key(alg: Algorithm, shared_secret: &[u8]) -> Zeroizing<[u8; 32]> {
    let info = [HKDF_INFO_PREFIX, alg.as_str().as_bytes()].concat();
    aead::hkdf_sha256_32(shared_secret, &info)
}

/// Join a header, nonce and sealed body into the envelope bytes.
pub fn assemble(header: &[u8], nonce: &[u8; AEAD_NONCE_LEN], sealed: &[u8]) -> Vec<u8> {
    [header, nonce.as_slice(), sealed].concat()
}

/// Parse and bounds-check an envelope. Never reads past the input.
pub fn parse(bytes: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    if bytes.len() < 6 {
        return Err(EnvelopeError::Truncated);
    }
    if bytes[..4] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    let algorithm =
        Algorithm::from_envelope_id(bytes[4]).ok_or(EnvelopeError::UnknownAlgorithm(bytes[4]))?;
    let l = bytes[5] as usize;
    if l == 0 || l > MAX_KID_LEN {
        return Err(EnvelopeError::BadKid);
    }
    let rest = &bytes[6..];
    if rest.len() < l + 2 {
        return Err(EnvelopeError::Truncated);
    }
    let kid = std::str::from_utf8(&rest[..l]).map_err(|_| EnvelopeError::BadKid)?;
    if !kid.is_ascii() {
        return Err(EnvelopeError::BadKid);
    }
    let c = u16::from_be_bytes([rest[l], rest[l + 1]]) as usize;
    if Some(c) != kem_ciphertext_len(algorithm) {
        return Err(EnvelopeError::BadKemLength);
    }
    let after_c = &rest[l + 2..];
    if after_c.len() < c + AEAD_NONCE_LEN + TAG_LEN {
        return Err(EnvelopeError::Truncated);
    }
    let header_len = 8 + l + c;
    let kem_ciphertext = &after_c[..c];
    let mut nonce = [0u8; AEAD_NONCE_LEN];
    nonce.copy_from_slice(&after_c[c..c + AEAD_NONCE_LEN]);
    Ok(Envelope {
        algorithm,
        kid,
        kem_ciphertext,
        nonce,
        sealed: &after_c[c + AEAD_NONCE_LEN..],
        header: &bytes[..header_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_is_an_error() {
        let kem_ct = vec![9u8; 1088];
        let h = header(Algorithm::MlKem768, "k#v3", &kem_ct);
        let env = assemble(&h, &[1u8; 12], &[2u8; 40]);
        let p = parse(&env).unwrap();
        assert_eq!(p.algorithm, Algorithm::MlKem768);
        assert_eq!(p.kid, "k#v3");
        assert_eq!(p.kem_ciphertext, &kem_ct[..]);
        assert_eq!(p.nonce, [1u8; 12]);
        assert_eq!(p.sealed, &[2u8; 40][..]);
        assert_eq!(p.header, &h[..]);
        for cut in 0..(h.len() + 12 + 16) {
            assert!(parse(&env[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_wrong_magic_alg_and_kem_length() {
        let h = header(Algorithm::Aes256Gcm, "k#v1", &[]);
        let mut env = assemble(&h, &[0u8; 12], &[0u8; 16]);
        assert!(parse(&env).is_ok());
        env[3] = 2;
        assert_eq!(parse(&env).unwrap_err(), EnvelopeError::BadMagic);
        env[3] = 1;
        env[4] = 0x77;
        assert_eq!(
            parse(&env).unwrap_err(),
            EnvelopeError::UnknownAlgorithm(0x77)
        );
        env[4] = 0x20; // claims ML-KEM-768 but carries no KEM ciphertext
        assert_eq!(parse(&env).unwrap_err(), EnvelopeError::BadKemLength);
    }
}

#[cfg(test)]
mod vectors {
    //! The worked examples printed in docs/wrap-envelope.md; if these fail,
    //! the document is wrong too.
    use super::*;

    #[test]
    fn aes_256_gcm_example() {
        let key: Vec<u8> = (0u8..32).collect();
        let nonce: [u8; 12] = core::array::from_fn(|i| i as u8);
        let header = header(Algorithm::Aes256Gcm, "demo#v1", &[]);
        assert_eq!(hex::encode(&header), "524b5701100764656d6f2376310000");
        let ad = associated_data(&header, b"ctx");
        let sealed = aead::seal(&key, &nonce, &ad, b"hello").unwrap();
        let env = assemble(&header, &nonce, &sealed);
        assert_eq!(hex::encode(&env), EXAMPLE_AES_ENVELOPE);
        let p = parse(&env).unwrap();
        assert_eq!(
            &*aead::open(&key, &p.nonce, &ad, p.sealed).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn ml_kem_key_derivation_example() {
        let ss = [0x01u8; 32];
        assert_eq!(
            hex::encode(kem_wrap_key(Algorithm::MlKem768, &ss).as_slice()),
            EXAMPLE_KEM768_KEY
        );
    }

    // Cross-checked with pyca/cryptography (AESGCM, HKDF) on 2026-11-24.
    const EXAMPLE_AES_ENVELOPE: &str = "524b5701100764656d6f2376310000000102030405060708090a0b2f67ba77aad0329af17a6d318ebbbd66ef571ea391";
    const EXAMPLE_KEM768_KEY: &str =
        "bd0d4ce866d30092524ce7dbbc2ccc660c0f9a4cafa8defc9f5060fcdeb537eb";
}
