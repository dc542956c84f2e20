//! The TPM handle codec: what the store keeps for a key in this custody
//! (docs/tpm.md, "Handles").
//!
//! ```text
//! native:  "TPM" 0x03 u16 len ‖ public ‖ u16 len ‖ private ‖ secret(32) ‖ binding(32)
//! sealed:  "TPM" 0x04 u16 len ‖ public ‖ u16 len ‖ private ‖ secret(32) ‖ binding(32)
//!                ‖ nonce(12) ‖ ciphertext‖tag
//! sealed under a PCR policy:
//!          "TPM" 0x05 u16 len ‖ public ‖ u16 len ‖ private ‖ secret(32) ‖ binding(32)
//!                ‖ bank(1) ‖ pcrs(u32) ‖ nonce(12) ‖ ciphertext‖tag
//! legacy:  "TPM" 0x01 (native) and 0x02 (sealed): the same without
//!          secret and binding (objects with an empty authValue)
//! ```
//!
//! `bank` is 1 (sha1), 2 (sha256) or 3 (sha384); `pcrs` a big-endian bit
//! mask of PCR indices (bit i: PCR i).
//!
//! Lengths are big-endian; `public` is a marshalled `TPMT_PUBLIC` and
//! `private` the `TPM2B_PRIVATE` contents as the TPM returned them (a native
//! key's, or the sealed data object's). `secret` and `binding` are the
//! object's authorization ([`super::session::Authorization`]): its
//! authValue is derived from `secret` and the key's label, and `binding`
//! ties the blob to that label. Parsing is strict: any other shape is
//! refused with [`BackendError::Sealed`]. This module owns the bytes only;
//! it must not touch the TPM, and it does not unmarshal the areas (the TPM
//! checks them on `TPM2_Load`).
use crate::backend::BackendError;
use crate::crypto::aead;

const HANDLE_MAGIC: &[u8; 3] = b"TPM";
const HANDLE_NATIVE_V1: u8 = 1;
const HANDLE_SEALED_V1: u8 = 2;
const HANDLE_NATIVE: u8 = 3;
const HANDLE_SEALED: u8 = 4;
const HANDLE_SEALED_PCR: u8 = 5;
/// Bytes of an object's authorization secret, and of its binding.
pub(super) const SECRET_LEN: usize = 32;

/// `u16 len ‖ bytes`.
fn put_blob(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

fn take_blob<'a>(h: &mut &'a [u8]) -> Result<&'a [u8], BackendError> {
    if h.len() < 2 {
        return Err(BackendError::Sealed("malformed tpm handle"));
    }
    let n = u16::from_be_bytes([h[0], h[1]]) as usize;
    if h.len() < 2 + n || n == 0 {
        return Err(BackendError::Sealed("malformed tpm handle"));
    }
    let b = &h[2..2 + n];
    *h = &h[2 + n..];
    Ok(b)
}

/// A loadable object: its public area (marshalled `TPMT_PUBLIC`), its
/// private area as the TPM returned it (`TPM2B_PRIVATE` contents), and its
/// authorization (`None`: a legacy object with an empty authValue).
pub(super) struct Blob<'a> {
    pub(super) public: &'a [u8],
    pub(super) private: &'a [u8],
    pub(super) auth: Option<AuthRef<'a>>,
}

/// The authorization part of a handle.
#[derive(Clone, Copy)]
pub(super) struct AuthRef<'a> {
    pub(super) secret: &'a [u8; SECRET_LEN],
    pub(super) binding: &'a [u8; SECRET_LEN],
}

fn take_auth<'a>(h: &mut &'a [u8]) -> Result<AuthRef<'a>, BackendError> {
    if h.len() < 2 * SECRET_LEN {
        return Err(BackendError::Sealed("malformed tpm handle"));
    }
    let (secret, rest) = h.split_at(SECRET_LEN);
    let (binding, rest) = rest.split_at(SECRET_LEN);
    *h = rest;
    Ok(AuthRef {
        secret: secret.try_into().expect("SECRET_LEN bytes"),
        binding: binding.try_into().expect("SECRET_LEN bytes"),
    })
}

/// The PCRs a sealed object's policy names: bank code and index mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PcrRef {
    pub(super) bank: u8,
    pub(super) mask: u32,
}

pub(super) enum Parsed<'h> {
    Native(Blob<'h>),
    Sealed(SealedRef<'h>),
}

/// A sealed key's handle: the TPM sealed object holding its data key, and
/// the software key's ciphertext under that data key.
pub(super) struct SealedRef<'h> {
    pub(super) object: Blob<'h>,
    /// Set when the object unseals only under a PCR policy.
    pub(super) pcrs: Option<PcrRef>,
    pub(super) nonce: [u8; aead::AEAD_NONCE_LEN],
    pub(super) sealed: &'h [u8],
}

pub(super) fn parse(h: &[u8]) -> Result<Parsed<'_>, BackendError> {
    if h.len() < 4 || &h[..3] != HANDLE_MAGIC {
        return Err(BackendError::Sealed("not a tpm handle"));
    }
    let kind = h[3];
    let mut rest = &h[4..];
    let public = take_blob(&mut rest)?;
    let private = take_blob(&mut rest)?;
    let auth = match kind {
        HANDLE_NATIVE | HANDLE_SEALED | HANDLE_SEALED_PCR => Some(take_auth(&mut rest)?),
        _ => None,
    };
    let pcrs = if kind == HANDLE_SEALED_PCR {
        if rest.len() < 5 || !(1..=3).contains(&rest[0]) {
            return Err(BackendError::Sealed("malformed tpm handle"));
        }
        let p = PcrRef {
            bank: rest[0],
            mask: u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]),
        };
        rest = &rest[5..];
        Some(p)
    } else {
        None
    };
    let blob = Blob {
        public,
        private,
        auth,
    };
    match kind {
        HANDLE_NATIVE | HANDLE_NATIVE_V1 if rest.is_empty() => Ok(Parsed::Native(blob)),
        HANDLE_SEALED | HANDLE_SEALED_V1 | HANDLE_SEALED_PCR
            if rest.len() >= aead::AEAD_NONCE_LEN + aead::TAG_LEN =>
        {
            let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
            nonce.copy_from_slice(&rest[..aead::AEAD_NONCE_LEN]);
            Ok(Parsed::Sealed(SealedRef {
                object: blob,
                pcrs,
                nonce,
                sealed: &rest[aead::AEAD_NONCE_LEN..],
            }))
        }
        _ => Err(BackendError::Sealed("malformed tpm handle")),
    }
}

/// A sealed key's handle, parsed; any other handle refused.
pub(super) fn parse_sealed(h: &[u8]) -> Result<SealedRef<'_>, BackendError> {
    match parse(h)? {
        Parsed::Sealed(s) => Ok(s),
        Parsed::Native(_) => Err(BackendError::Sealed("not a sealed-key handle")),
    }
}

fn object(kind: u8, public: &[u8], private: &[u8], auth: AuthRef<'_>, extra: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + public.len() + private.len() + 2 * SECRET_LEN + extra);
    h.extend_from_slice(HANDLE_MAGIC);
    h.push(kind);
    put_blob(&mut h, public);
    put_blob(&mut h, private);
    h.extend_from_slice(auth.secret);
    h.extend_from_slice(auth.binding);
    h
}

/// The handle of a native key: its public and private areas and its
/// authorization.
pub(super) fn native(public: &[u8], private: &[u8], auth: AuthRef<'_>) -> Vec<u8> {
    object(HANDLE_NATIVE, public, private, auth, 0)
}

/// The handle of a sealed key: the sealed data object's areas and
/// authorization, then the software key under its data key.
pub(super) fn sealed(
    public: &[u8],
    private: &[u8],
    auth: AuthRef<'_>,
    pcrs: Option<PcrRef>,
    nonce: &[u8; aead::AEAD_NONCE_LEN],
    ct: &[u8],
) -> Vec<u8> {
    let kind = match pcrs {
        Some(_) => HANDLE_SEALED_PCR,
        None => HANDLE_SEALED,
    };
    let mut h = object(kind, public, private, auth, 5 + 12 + ct.len());
    if let Some(p) = pcrs {
        h.push(p.bank);
        h.extend_from_slice(&p.mask.to_be_bytes());
    }
    h.extend_from_slice(nonce);
    h.extend_from_slice(ct);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_parse_strictly() {
        let mut native = b"TPM\x01".to_vec();
        put_blob(&mut native, &[1, 2, 3]);
        put_blob(&mut native, &[4, 5]);
        assert!(matches!(parse(&native), Ok(Parsed::Native(_))));
        // trailing bytes, truncation, empty blobs, wrong magic
        let mut long = native.clone();
        long.push(0);
        assert!(parse(&long).is_err());
        assert!(parse(&native[..native.len() - 1]).is_err());
        assert!(parse(b"TPM\x01\x00\x00\x00\x00").is_err());
        assert!(parse(b"P11\x01\x00\x01\x01\x00\x01\x01").is_err());
        let mut sealed = b"TPM\x02".to_vec();
        put_blob(&mut sealed, &[1]);
        put_blob(&mut sealed, &[2]);
        sealed.extend_from_slice(&[0u8; 12 + 16]);
        assert!(matches!(parse(&sealed), Ok(Parsed::Sealed(_))));
        assert!(parse(&sealed[..sealed.len() - 1]).is_err());
        assert!(parse(b"").is_err());
    }

    #[test]
    fn encoded_handles_parse_back() {
        let auth = AuthRef {
            secret: &[5u8; SECRET_LEN],
            binding: &[6u8; SECRET_LEN],
        };
        let h = native(&[1, 2, 3], &[4, 5], auth);
        let Ok(Parsed::Native(b)) = parse(&h) else {
            panic!("a native handle parses");
        };
        assert_eq!((b.public, b.private), (&[1u8, 2, 3][..], &[4u8, 5][..]));
        let a = b.auth.expect("a v2 handle has its authorization");
        assert_eq!((a.secret, a.binding), (auth.secret, auth.binding));
        assert!(parse(&h[..h.len() - 1]).is_err(), "cut authorization");
        let ct = [7u8; 20];
        let h = sealed(&[1], &[2, 3], auth, None, &[9u8; 12], &ct);
        let Ok(Parsed::Sealed(SealedRef {
            object,
            pcrs: None,
            nonce,
            sealed,
        })) = parse(&h)
        else {
            panic!("a sealed handle parses");
        };
        assert_eq!((object.public, object.private), (&[1u8][..], &[2u8, 3][..]));
        assert!(object.auth.is_some());
        assert_eq!((nonce, sealed), ([9u8; 12], &ct[..]));
        let p = PcrRef {
            bank: 2,
            mask: 1 << 17,
        };
        let h = super::sealed(&[1], &[2, 3], auth, Some(p), &[9u8; 12], &ct);
        let Ok(Parsed::Sealed(SealedRef {
            pcrs: Some(got),
            sealed: s2,
            ..
        })) = parse(&h)
        else {
            panic!("a PCR-sealed handle parses");
        };
        assert_eq!((got, s2), (p, &ct[..]));
    }
}
