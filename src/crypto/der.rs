//! The few DER encodings ron-kms writes itself: TLVs with definite lengths
//! (for SubjectPublicKeyInfo, [`super::spki`]) and the ECDSA signature value
//! that devices hand back as raw `r || s` (PKCS#11 and TPM custody).
//! Hand-written because the structures are fixed and tiny; tests parse the
//! output with independent DER parsers.

/// Append a DER definite length.
pub fn len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// A tag-length-value.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// A non-negative INTEGER from big-endian magnitude bytes, minimal: leading
/// zeros dropped, one 0x00 added when the top bit is set.
fn uint(x: &[u8]) -> Vec<u8> {
    let start = x.iter().position(|b| *b != 0).unwrap_or(x.len() - 1);
    let x = &x[start..];
    let mut body = Vec::with_capacity(x.len() + 1);
    if x[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(x);
    tlv(0x02, &body)
}

/// The ECDSA P-256 `Ecdsa-Sig-Value` (RFC 3279) of a signature given as
/// `r || s`, 32 bytes each; `None` for any other length.
pub fn ecdsa_p256_sig(rs: &[u8]) -> Option<Vec<u8>> {
    if rs.len() != 64 {
        return None;
    }
    Some(tlv(0x30, &[uint(&rs[..32]), uint(&rs[32..])].concat()))
}

/// The `r || s` form (32 bytes each) of an ECDSA P-256 `Ecdsa-Sig-Value`;
/// `None` unless `der` is exactly one such value with minimal integers.
pub fn ecdsa_p256_raw(der: &[u8]) -> Option<[u8; 64]> {
    fn int(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let (&tag, rest) = b.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n);
        if tag != 0x02 || n == 0 || n > 33 || rest.len() < n {
            return None;
        }
        let (v, rest) = rest.split_at(n);
        // minimal: no needless 0x00, and not negative
        if v[0] & 0x80 != 0 || (v.len() > 1 && v[0] == 0 && v[1] & 0x80 == 0) {
            return None;
        }
        // 33 bytes only with the 0x00 that keeps a 32-byte value positive
        if v.len() == 33 && v[0] != 0 {
            return None;
        }
        let v = if v.len() == 33 { &v[1..] } else { v };
        (v.len() <= 32).then_some((v, rest))
    }
    let (&tag, rest) = der.split_first()?;
    let (&n, body) = rest.split_first()?;
    if tag != 0x30 || n >= 0x80 || body.len() != usize::from(n) {
        return None;
    }
    let (r, rest) = int(body)?;
    let (s, rest) = int(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let mut out = [0u8; 64];
    out[32 - r.len()..32].copy_from_slice(r);
    out[64 - s.len()..].copy_from_slice(s);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signatures_round_trip_between_der_and_raw() {
        for (r0, s0) in [(0x01u8, 0x80u8), (0x7f, 0x00), (0xff, 0xff)] {
            let mut rs = [0x11u8; 64];
            rs[0] = r0;
            rs[32] = s0;
            let der = ecdsa_p256_sig(&rs).unwrap();
            assert_eq!(ecdsa_p256_raw(&der), Some(rs));
        }
        let der = ecdsa_p256_sig(&[0x22; 64]).unwrap();
        assert_eq!(ecdsa_p256_raw(&der[..der.len() - 1]), None);
        assert_eq!(ecdsa_p256_raw(&[der.as_slice(), &[0]].concat()), None);
        assert_eq!(ecdsa_p256_raw(b"not a signature"), None);
    }

    #[test]
    fn ecdsa_signatures_encode_minimal_integers() {
        let mut rs = [0u8; 64];
        rs[31] = 1; // r = 1
        rs[32] = 0x80; // s has its top bit set: needs a 0x00 pad
        let der = ecdsa_p256_sig(&rs).unwrap();
        assert_eq!(&der[..5], &[0x30, 3 + 35, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 33, 0x00]);
        assert_eq!(der.len(), 2 + 3 + 35);
        assert!(ecdsa_p256_sig(&rs[..63]).is_none());
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        assert_eq!(tlv(0x04, &[0; 3])[..2], [0x04, 3]);
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 1952])[..4], [0x04, 0x82, 0x07, 0xa0]);
    }
}
