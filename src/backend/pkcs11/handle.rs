//! The PKCS#11 handle codec: what the store keeps for a key in this custody
//! (docs/pkcs11.md, "Handles").
//!
//! ```text
//! native:  "P11" 0x01 kind(1) id(16)           kind: 'k' key pair (private half), 's' secret key
//! sealed:  "P11" 0x02 nonce(12) ciphertext‖tag  AES-256-GCM under the KEK, in the token
//! ```
//!
//! Parsing is strict: a handle of any other shape is refused with
//! [`BackendError::Sealed`], never half-read. This module owns the bytes
//! only; it must not touch the token, and it does not check that a handle
//! belongs to a label (the token's lookup and the sealing's associated data
//! do that).
use crate::backend::BackendError;
use crate::crypto::aead;

const HANDLE_MAGIC: &[u8; 3] = b"P11";
const HANDLE_NATIVE: u8 = 1;
const HANDLE_SEALED: u8 = 2;
/// A key pair's private half.
pub(super) const KIND_PAIR: u8 = b'k';
/// A secret (AES) key.
pub(super) const KIND_SECRET: u8 = b's';
/// Bytes of a native key's `CKA_ID`.
pub(super) const ID_LEN: usize = 16;

/// A native key reference parsed from a handle.
pub(super) struct NativeRef {
    pub(super) kind: u8,
    pub(super) id: Vec<u8>,
}

pub(super) enum Parsed<'h> {
    Native(NativeRef),
    /// `nonce ‖ ciphertext‖tag`, at least a nonce and a tag long.
    Sealed(&'h [u8]),
}

pub(super) fn parse(h: &[u8]) -> Result<Parsed<'_>, BackendError> {
    if h.len() < 4 || &h[..3] != HANDLE_MAGIC {
        return Err(BackendError::Sealed("not a pkcs11 handle"));
    }
    match h[3] {
        HANDLE_NATIVE if h.len() == 5 + ID_LEN && matches!(h[4], KIND_PAIR | KIND_SECRET) => {
            Ok(Parsed::Native(NativeRef {
                kind: h[4],
                id: h[5..].to_vec(),
            }))
        }
        HANDLE_SEALED if h.len() >= 4 + aead::AEAD_NONCE_LEN + aead::TAG_LEN => {
            Ok(Parsed::Sealed(&h[4..]))
        }
        _ => Err(BackendError::Sealed("malformed pkcs11 handle")),
    }
}

/// The handle of a native key of `kind` with `CKA_ID` `id`.
pub(super) fn native(kind: u8, id: &[u8]) -> Vec<u8> {
    let mut handle = Vec::with_capacity(5 + ID_LEN);
    handle.extend_from_slice(HANDLE_MAGIC);
    handle.push(HANDLE_NATIVE);
    handle.push(kind);
    handle.extend_from_slice(id);
    handle
}

/// The handle of a sealed key: the nonce and the token's ciphertext‖tag.
pub(super) fn sealed(nonce: &[u8; aead::AEAD_NONCE_LEN], ct: &[u8]) -> Vec<u8> {
    [&HANDLE_MAGIC[..], &[HANDLE_SEALED], &nonce[..], ct].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_parse_strictly() {
        let mut native = b"P11\x01k".to_vec();
        native.extend_from_slice(&[7u8; ID_LEN]);
        assert!(matches!(parse(&native), Ok(Parsed::Native(_))));
        assert!(parse(&native[..native.len() - 1]).is_err());
        let mut bad_kind = native.clone();
        bad_kind[4] = b'x';
        assert!(parse(&bad_kind).is_err());
        assert!(parse(b"P11\x02short").is_err());
        assert!(parse(&[1u8; 64]).is_err());
        assert!(parse(b"").is_err());
    }

    #[test]
    fn encoded_handles_parse_back() {
        let id = [3u8; ID_LEN];
        let Ok(Parsed::Native(r)) = parse(&native(KIND_SECRET, &id)) else {
            panic!("a native handle parses");
        };
        assert_eq!((r.kind, r.id.as_slice()), (KIND_SECRET, &id[..]));
        let ct = [5u8; 40];
        let h = sealed(&[9u8; aead::AEAD_NONCE_LEN], &ct);
        let Ok(Parsed::Sealed(body)) = parse(&h) else {
            panic!("a sealed handle parses");
        };
        assert_eq!(&body[..aead::AEAD_NONCE_LEN], &[9u8; aead::AEAD_NONCE_LEN]);
        assert_eq!(&body[aead::AEAD_NONCE_LEN..], &ct);
    }
}
