//! HMAC keys (RFC 2104, FIPS 198-1) with SHA-256 and SHA-512: the key each
//! algorithm is generated with, the tag, and the constant-time check.
//!
//! A generated key is as long as the hash's output (32 or 64 bytes), the
//! length RFC 2104 recommends; a tag is the full HMAC output, never
//! truncated. The crypto is ring's `hmac`; devices that hold HMAC keys
//! natively (a PKCS#11 token's `CKM_SHA256_HMAC`) compute the same tag.
use subtle::ConstantTimeEq;

use super::{Algorithm, CryptoError};

/// The bytes of key material a new key of `alg` gets; `None` for an
/// algorithm that is not an HMAC.
pub fn key_len(alg: Algorithm) -> Option<usize> {
    match alg {
        Algorithm::HmacSha256 => Some(32),
        Algorithm::HmacSha512 => Some(64),
        _ => None,
    }
}

/// The length of a tag of `alg` (the hash's output).
pub fn tag_len(alg: Algorithm) -> Option<usize> {
    key_len(alg)
}

fn ring_alg(alg: Algorithm) -> Result<ring::hmac::Algorithm, CryptoError> {
    match alg {
        Algorithm::HmacSha256 => Ok(ring::hmac::HMAC_SHA256),
        Algorithm::HmacSha512 => Ok(ring::hmac::HMAC_SHA512),
        other => Err(CryptoError::Unsupported(other.as_str())),
    }
}

/// HMAC of `data` under `key` with the hash of `alg`.
pub fn compute(alg: Algorithm, key: &[u8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if key.is_empty() {
        return Err(CryptoError::BadPrivateKey(alg.as_str()));
    }
    let k = ring::hmac::Key::new(ring_alg(alg)?, key);
    Ok(ring::hmac::sign(&k, data).as_ref().to_vec())
}

/// Whether a presented tag equals the computed one, in time that does not
/// depend on where they differ. (Lengths are public: a tag of the wrong
/// length is unequal at once.)
pub fn tags_equal(computed: &[u8], presented: &[u8]) -> bool {
    computed.len() == presented.len() && bool::from(computed.ct_eq(presented))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 ("Jefe"), both hashes.
    #[test]
    fn rfc_4231_case_2() {
        let data = b"what do ya want for nothing?";
        assert_eq!(
            hex::encode(compute(Algorithm::HmacSha256, b"Jefe", data).unwrap()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(compute(Algorithm::HmacSha512, b"Jefe", data).unwrap()),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    #[test]
    fn the_check_is_exact() {
        let t = compute(Algorithm::HmacSha256, &[7u8; 32], b"m").unwrap();
        assert!(tags_equal(&t, &t));
        let mut bad = t.clone();
        bad[31] ^= 1;
        assert!(!tags_equal(&t, &bad));
        assert!(!tags_equal(&t, &t[..31]));
        assert!(!tags_equal(&t, &[]));
        assert!(compute(Algorithm::Ed25519, &[1], b"m").is_err());
        assert!(compute(Algorithm::HmacSha256, &[], b"m").is_err());
    }
}
