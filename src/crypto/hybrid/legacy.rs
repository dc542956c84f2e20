//! The RKS v1 signature bundle: what `hybrid-ed25519-ml-dsa-65` keys signed
//! before ron-kms moved to the composite signature of
//! draft-ietf-lamps-pq-composite-sigs. Verify-only: ron-kms no longer makes
//! these, but accepts the ones already issued (reported as `legacy_bundle`)
//! until a tenant's policy retires them (docs/hybrid.md, docs/pq-policy.md).
//!
//! ```text
//! offset  size  field
//! 0       4     magic and version: 0x52 0x4B 0x53 0x01 ("RKS", 1)
//! 4       1     N = number of components, 1 or 2
//! then N times, in ascending id order, no id twice:
//!         1     component id: 0x01 ed25519, 0x12 ml-dsa-65
//!         2     S = signature length, big-endian (64 for ed25519, 3309 for ml-dsa-65)
//!         S     the component's signature over the message itself
//! ```
//!
//! Nothing may follow the last component. Each component is an ordinary
//! signature over the caller's message (Ed25519 per RFC 8032; ML-DSA-65 per
//! FIPS 204, pure, empty context). That is the format's weakness: a
//! component cut out of a bundle is itself a valid signature, which is why
//! a one-component bundle never counts as genuine for a policy rollback.

pub const BUNDLE_MAGIC: [u8; 4] = [0x52, 0x4B, 0x53, 0x01];
pub const ID_ED25519: u8 = 0x01;
pub const ID_ML_DSA_65: u8 = 0x12;

/// Why a bundle does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("signature is not a ron-kms hybrid bundle (bad magic or version)")]
    BadMagic,
    #[error("hybrid bundle is truncated")]
    Truncated,
    #[error("hybrid bundle must carry 1 or 2 components")]
    BadCount,
    #[error("hybrid bundle names an unknown component id 0x{0:02x}")]
    UnknownComponent(u8),
    #[error("hybrid bundle components are repeated or out of order")]
    Order,
    #[error("hybrid bundle component 0x{0:02x} has the wrong length")]
    BadLength(u8),
    #[error("hybrid bundle has trailing bytes")]
    Trailing,
}

/// A parsed bundle, borrowing from the input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bundle<'a> {
    pub classical: Option<&'a [u8]>,
    pub pq: Option<&'a [u8]>,
}

fn expected_len(id: u8) -> Option<usize> {
    match id {
        ID_ED25519 => Some(super::ED25519_SIG_LEN),
        ID_ML_DSA_65 => Some(super::ML_DSA_65_SIG_LEN),
        _ => None,
    }
}

/// Encode a bundle from the components present (at least one). ron-kms
/// never issues these any more; tests and the fuzz target build them.
pub fn encode_bundle(classical: Option<&[u8]>, pq: Option<&[u8]>) -> Vec<u8> {
    let parts: Vec<(u8, &[u8])> = [(ID_ED25519, classical), (ID_ML_DSA_65, pq)]
        .into_iter()
        .filter_map(|(id, s)| s.map(|s| (id, s)))
        .collect();
    let mut out = Vec::with_capacity(5 + parts.iter().map(|p| 3 + p.1.len()).sum::<usize>());
    out.extend_from_slice(&BUNDLE_MAGIC);
    out.push(parts.len() as u8);
    for (id, sig) in parts {
        out.push(id);
        out.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        out.extend_from_slice(sig);
    }
    out
}

/// Whether `bytes` starts like a bundle (magic and version).
pub fn looks_like_bundle(bytes: &[u8]) -> bool {
    bytes.starts_with(&BUNDLE_MAGIC)
}

/// Parse a bundle strictly: known ids, exact lengths, ascending order, no
/// trailing bytes. Never reads past the input.
pub fn parse_bundle(bytes: &[u8]) -> Result<Bundle<'_>, BundleError> {
    if !looks_like_bundle(bytes) {
        return Err(BundleError::BadMagic);
    }
    let Some(&n) = bytes.get(4) else {
        return Err(BundleError::Truncated);
    };
    if !(1..=2).contains(&n) {
        return Err(BundleError::BadCount);
    }
    let mut rest = &bytes[5..];
    let mut out = Bundle::default();
    let mut last_id = 0u8;
    for _ in 0..n {
        if rest.len() < 3 {
            return Err(BundleError::Truncated);
        }
        let id = rest[0];
        let len = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        let want = expected_len(id).ok_or(BundleError::UnknownComponent(id))?;
        if id <= last_id {
            return Err(BundleError::Order);
        }
        last_id = id;
        if len != want {
            return Err(BundleError::BadLength(id));
        }
        rest = &rest[3..];
        if rest.len() < len {
            return Err(BundleError::Truncated);
        }
        let (sig, tail) = rest.split_at(len);
        match id {
            ID_ED25519 => out.classical = Some(sig),
            _ => out.pq = Some(sig),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(BundleError::Trailing);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{ED25519_SIG_LEN, ML_DSA_65_SIG_LEN};
    use super::*;

    #[test]
    fn bundles_round_trip_and_parse_strictly() {
        let c = [1u8; ED25519_SIG_LEN];
        let q = vec![2u8; ML_DSA_65_SIG_LEN];
        for (cl, pq) in [
            (Some(&c[..]), Some(&q[..])),
            (Some(&c[..]), None),
            (None, Some(&q[..])),
        ] {
            let b = encode_bundle(cl, pq);
            let p = parse_bundle(&b).unwrap();
            assert_eq!((p.classical, p.pq), (cl, pq));
            // every truncation fails, never panics
            for n in 0..b.len() {
                assert!(parse_bundle(&b[..n]).is_err(), "prefix {n}");
            }
            let mut t = b.clone();
            t.push(0);
            assert_eq!(parse_bundle(&t), Err(BundleError::Trailing));
        }
        let both = encode_bundle(Some(&c), Some(&q));
        let mut bad = both.clone();
        bad[3] = 2;
        assert_eq!(parse_bundle(&bad), Err(BundleError::BadMagic));
        let mut bad = both.clone();
        bad[4] = 3;
        assert_eq!(parse_bundle(&bad), Err(BundleError::BadCount));
        let mut bad = both.clone();
        bad[5] = 0x13;
        assert_eq!(parse_bundle(&bad), Err(BundleError::UnknownComponent(0x13)));
        let mut bad = both.clone();
        bad[7] = 63;
        assert_eq!(parse_bundle(&bad), Err(BundleError::BadLength(ID_ED25519)));
        // the same component twice, or the order reversed
        let twice = [
            &BUNDLE_MAGIC[..],
            &[2, ID_ED25519, 0, 64],
            &c,
            &[ID_ED25519, 0, 64],
            &c,
        ]
        .concat();
        assert_eq!(parse_bundle(&twice), Err(BundleError::Order));
    }
}
