//! DER SubjectPublicKeyInfo (RFC 5280) for every asymmetric algorithm, with
//! the standard OIDs, and PEM armour. Hand-written because the structures are
//! fixed and tiny; tests parse the output with an independent DER parser.
use base64::Engine as _;

use super::Algorithm;

const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70]; // 1.3.101.112 (RFC 8410)
const OID_X25519: &[u8] = &[0x2b, 0x65, 0x6e]; // 1.3.101.110 (RFC 8410)
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]; // 1.2.840.10045.2.1
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]; // 1.2.840.10045.3.1.7
/// 1.3.6.1.5.5.7.6.48, id-MLDSA65-Ed25519-SHA512
/// (draft-ietf-lamps-pq-composite-sigs; the OID its test vectors'
/// certificates carry).
const OID_MLDSA65_ED25519_SHA512: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x06, 0x30];
/// 2.16.840.1.101.3.4 (NIST algorithms arc); the last two arcs follow.
const NIST_ARC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04];

use super::der::tlv;

fn oid(body: &[u8]) -> Vec<u8> {
    tlv(0x06, body)
}

fn nist_oid(a: u8, b: u8) -> Vec<u8> {
    let mut body = NIST_ARC.to_vec();
    body.extend_from_slice(&[a, b]);
    oid(&body)
}

/// The AlgorithmIdentifier's DER for `alg`, or `None` for symmetric keys.
fn algorithm_identifier(alg: Algorithm) -> Option<Vec<u8>> {
    let content = match alg {
        Algorithm::Ed25519 => oid(OID_ED25519),
        Algorithm::EcdsaP256 => [oid(OID_EC_PUBLIC_KEY), oid(OID_P256)].concat(),
        // id-ml-dsa-44/65/87: 2.16.840.1.101.3.4.3.17/18/19, no parameters.
        Algorithm::MlDsa44 => nist_oid(3, 17),
        Algorithm::MlDsa65 => nist_oid(3, 18),
        Algorithm::MlDsa87 => nist_oid(3, 19),
        // id-slh-dsa-sha2-128s/128f: 2.16.840.1.101.3.4.3.20/21, no
        // parameters (FIPS 205; RFC 9909)
        Algorithm::SlhDsaSha2_128s => nist_oid(3, 20),
        Algorithm::SlhDsaSha2_128f => nist_oid(3, 21),
        // id-alg-ml-kem-768/1024: 2.16.840.1.101.3.4.4.2/3, no parameters.
        Algorithm::MlKem768 => nist_oid(4, 2),
        Algorithm::MlKem1024 => nist_oid(4, 3),
        // the composite signature, no parameters
        Algorithm::HybridEd25519MlDsa65 => oid(OID_MLDSA65_ED25519_SHA512),
        // The hybrid KEM has no standard SPKI of its own; its components do.
        // Secret keys have no public half.
        Algorithm::Aes256Gcm
        | Algorithm::HybridX25519MlKem768
        | Algorithm::HmacSha256
        | Algorithm::HmacSha512 => return None,
    };
    Some(tlv(0x30, &content))
}

/// The raw public key inside `der`, an SPKI [`encode`] made for a key of
/// `alg` whose raw key is `raw_len` bytes; `None` for anything else.
pub fn raw_public(alg: Algorithm, der: &[u8], raw_len: usize) -> Option<&[u8]> {
    let raw = der.get(der.len().checked_sub(raw_len)?..)?;
    (encode(alg, raw) == der).then_some(raw)
}

/// DER SubjectPublicKeyInfo for a raw public key as ron-kms stores it;
/// empty for symmetric keys, the hybrid KEM and a malformed hybrid key. The
/// composite signature's subjectPublicKey is the draft's serialization,
/// ML-DSA-65 key then Ed25519 key.
pub fn encode(alg: Algorithm, raw_public: &[u8]) -> Vec<u8> {
    let Some(algid) = algorithm_identifier(alg) else {
        return Vec::new();
    };
    let composite;
    let raw_public = if alg == Algorithm::HybridEd25519MlDsa65 {
        match super::hybrid::composite_public(raw_public) {
            Some(c) => {
                composite = c;
                &composite[..]
            }
            None => return Vec::new(),
        }
    } else {
        raw_public
    };
    let mut bits = Vec::with_capacity(raw_public.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(raw_public);
    tlv(0x30, &[algid, tlv(0x03, &bits)].concat())
}

fn wrap_bits(algid_content: Vec<u8>, raw_public: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(raw_public.len() + 1);
    bits.push(0);
    bits.extend_from_slice(raw_public);
    tlv(
        0x30,
        &[tlv(0x30, &algid_content), tlv(0x03, &bits)].concat(),
    )
}

/// A hybrid key's components, each as (algorithm name, DER SPKI): for
/// `hybrid-ed25519-ml-dsa-65` ed25519 then ml-dsa-65; for
/// `hybrid-x25519-ml-kem-768` ml-kem-768 then x25519 (RFC 8410 OID
/// 1.3.101.110). Empty for other algorithms or a malformed public key.
pub fn components(alg: Algorithm, raw_public: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    use super::hybrid::kem::{ML_KEM_768_PUBLIC_LEN, X25519_LEN};
    use super::hybrid::split_sig_public;
    match alg {
        Algorithm::HybridEd25519MlDsa65 => match split_sig_public(raw_public) {
            Some((c, q)) => vec![
                ("ed25519", encode(Algorithm::Ed25519, c)),
                ("ml-dsa-65", encode(Algorithm::MlDsa65, q)),
            ],
            None => Vec::new(),
        },
        Algorithm::HybridX25519MlKem768
            if raw_public.len() == ML_KEM_768_PUBLIC_LEN + X25519_LEN =>
        {
            let (m, x) = raw_public.split_at(ML_KEM_768_PUBLIC_LEN);
            vec![
                ("ml-kem-768", encode(Algorithm::MlKem768, m)),
                ("x25519", wrap_bits(oid(OID_X25519), x)),
            ]
        }
        _ => Vec::new(),
    }
}

/// PEM ("PUBLIC KEY") armour of a DER SPKI; empty input gives empty output.
pub fn pem(der: &[u8]) -> String {
    if der.is_empty() {
        return String::new();
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_spki_matches_rfc8410_layout() {
        let der = encode(Algorithm::Ed25519, &[7u8; 32]);
        assert_eq!(
            &der[..12],
            &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]
        );
        assert_eq!(der.len(), 44);
    }

    #[test]
    fn long_lengths_use_long_form() {
        let der = encode(Algorithm::MlDsa65, &[1u8; 1952]);
        // SEQUENCE, long form with two length bytes
        assert_eq!(der[0], 0x30);
        assert_eq!(der[1], 0x82);
        let len = u16::from_be_bytes([der[2], der[3]]) as usize;
        assert_eq!(len + 4, der.len());
        assert!(der
            .windows(11)
            .any(|w| w == [0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x12]));
    }

    #[test]
    fn symmetric_keys_have_no_spki() {
        assert!(encode(Algorithm::Aes256Gcm, &[]).is_empty());
        assert!(pem(&[]).is_empty());
    }
}
