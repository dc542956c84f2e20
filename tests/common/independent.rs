//! Independent implementations (RustCrypto) that check ron-kms from
//! outside: they know only the DER SubjectPublicKeyInfo from GetKey and the
//! documented envelope format, never ron-kms code.
use aes_gcm::aead::{Aead, KeyInit, Payload};
use ml_kem::kem::Encapsulate;
use ml_kem::{EncodedSizeUser, KemCore};
use rand_core::{OsRng, RngCore};
use spki::DecodePublicKey;

macro_rules! mldsa_verify {
    ($p:ty, $der:expr, $msg:expr, $sig:expr) => {{
        let vk = ml_dsa::VerifyingKey::<$p>::from_public_key_der($der)
            .expect("SPKI carries the right ML-DSA OID and a well-formed key");
        match ml_dsa::Signature::<$p>::try_from($sig) {
            Ok(s) => vk.verify_with_context($msg, &[], &s),
            Err(_) => false,
        }
    }};
}

/// Verify `sig` over `msg` with the public key in `der`, for `alg`.
pub fn verify(alg: &str, der: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    match alg {
        "ed25519" => {
            let vk = ed25519_dalek::VerifyingKey::from_public_key_der(der).expect("Ed25519 SPKI");
            match ed25519_dalek::Signature::from_slice(sig) {
                Ok(s) => vk.verify_strict(msg, &s).is_ok(),
                Err(_) => false,
            }
        }
        "ecdsa-p256" => {
            use p256::ecdsa::signature::Verifier;
            let vk = p256::ecdsa::VerifyingKey::from_public_key_der(der).expect("P-256 SPKI");
            match p256::ecdsa::Signature::from_der(sig) {
                Ok(s) => vk.verify(msg, &s).is_ok(),
                Err(_) => false,
            }
        }
        "ml-dsa-44" => mldsa_verify!(ml_dsa::MlDsa44, der, msg, sig),
        "ml-dsa-65" => mldsa_verify!(ml_dsa::MlDsa65, der, msg, sig),
        "ml-dsa-87" => mldsa_verify!(ml_dsa::MlDsa87, der, msg, sig),
        "slh-dsa-sha2-128s" => {
            slh_dsa_verify::<slh_dsa::Sha2_128s>(der, "2.16.840.1.101.3.4.3.20", msg, sig)
        }
        "slh-dsa-sha2-128f" => {
            slh_dsa_verify::<slh_dsa::Sha2_128f>(der, "2.16.840.1.101.3.4.3.21", msg, sig)
        }
        other => panic!("no independent verifier for {other}"),
    }
}

/// SLH-DSA (FIPS 205, pure, empty context) with RustCrypto's `slh-dsa`; the
/// SPKI must name `oid` with no parameters.
fn slh_dsa_verify<P: slh_dsa::ParameterSet>(der: &[u8], oid: &str, msg: &[u8], sig: &[u8]) -> bool {
    use slh_dsa::signature::Verifier as _;
    let info = spki::SubjectPublicKeyInfoRef::try_from(der).expect("well-formed SPKI");
    assert_eq!(info.algorithm.oid.to_string(), oid, "SLH-DSA OID");
    assert!(
        info.algorithm.parameters.is_none(),
        "SLH-DSA SPKI has no parameters"
    );
    let vk = slh_dsa::VerifyingKey::<P>::try_from(info.subject_public_key.raw_bytes())
        .expect("SLH-DSA public key length");
    match slh_dsa::Signature::<P>::try_from(sig) {
        Ok(s) => vk.verify(msg, &s).is_ok(),
        Err(_) => false,
    }
}

/// The OID string an SPKI names.
pub fn spki_oid(der: &[u8]) -> String {
    let spki = spki::SubjectPublicKeyInfoRef::try_from(der).expect("well-formed SPKI");
    spki.algorithm.oid.to_string()
}

fn encapsulate(alg: &str, public: &[u8]) -> (Vec<u8>, Vec<u8>) {
    macro_rules! encap {
        ($k:ty) => {{
            type Ek = <$k as KemCore>::EncapsulationKey;
            let enc = ml_kem::Encoded::<Ek>::try_from(public).expect("ML-KEM public key length");
            let ek = Ek::from_bytes(&enc);
            let (ct, ss) = ek.encapsulate(&mut OsRng).unwrap();
            (ct.as_slice().to_vec(), ss.as_slice().to_vec())
        }};
    }
    match alg {
        "ml-kem-768" => encap!(ml_kem::MlKem768),
        "ml-kem-1024" => encap!(ml_kem::MlKem1024),
        other => panic!("not an ML-KEM algorithm: {other}"),
    }
}

/// Build a wrap envelope for `kid` from the public key alone, following
/// docs/wrap-envelope.md with RustCrypto's ML-KEM, HKDF and AES-GCM.
pub fn kem_wrap(alg: &str, der: &[u8], kid: &str, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let (oid, id) = match alg {
        "ml-kem-768" => ("2.16.840.1.101.3.4.4.2", 0x20u8),
        "ml-kem-1024" => ("2.16.840.1.101.3.4.4.3", 0x21u8),
        other => panic!("not an ML-KEM algorithm: {other}"),
    };
    let spki = spki::SubjectPublicKeyInfoRef::try_from(der).expect("well-formed SPKI");
    assert_eq!(spki.algorithm.oid.to_string(), oid);
    assert!(
        spki.algorithm.parameters.is_none(),
        "ML-KEM SPKI has no parameters"
    );
    let public = spki.subject_public_key.as_bytes().expect("no unused bits");
    let (ct, ss) = encapsulate(alg, public);
    envelope_from_kem(id, alg, kid, &ct, &ss, plaintext, aad)
}

/// The rest of docs/wrap-envelope.md once a KEM has run: header, HKDF-SHA256
/// key with info "ron-kms/wrap/v1/<alg>", AES-256-GCM over header || aad.
fn envelope_from_kem(
    id: u8,
    alg: &str,
    kid: &str,
    ct: &[u8],
    ss: &[u8],
    plaintext: &[u8],
    aad: &[u8],
) -> Vec<u8> {
    let mut header = vec![0x52, 0x4B, 0x57, 0x01, id, kid.len() as u8];
    header.extend_from_slice(kid.as_bytes());
    header.extend_from_slice(&(ct.len() as u16).to_be_bytes());
    header.extend_from_slice(ct);

    let mut key = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, ss)
        .expand(format!("ron-kms/wrap/v1/{alg}").as_bytes(), &mut key)
        .unwrap();
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key).unwrap();
    let full_aad = [header.as_slice(), aad].concat();
    let sealed = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: plaintext,
                aad: &full_aad,
            },
        )
        .unwrap();
    [header, nonce.to_vec(), sealed].concat()
}

/// A bundle's (ed25519, ml-dsa-65) signatures, each `None` when absent.
pub type Components = (Option<Vec<u8>>, Option<Vec<u8>>);

/// An RKS v1 bundle (the legacy format, docs/hybrid.md), parsed from the
/// document alone: `(ed25519 signature, ml-dsa-65 signature)`, each `None`
/// when absent; `None` overall when the bytes are not a well-formed bundle.
pub fn parse_bundle(sig: &[u8]) -> Option<Components> {
    let rest = sig.strip_prefix(b"RKS\x01")?;
    let (&n, mut rest) = rest.split_first()?;
    if !(1..=2).contains(&n) {
        return None;
    }
    let (mut ed, mut ml, mut last) = (None, None, 0u8);
    for _ in 0..n {
        if rest.len() < 3 || rest[0] <= last {
            return None;
        }
        let (id, len) = (rest[0], u16::from_be_bytes([rest[1], rest[2]]) as usize);
        last = id;
        let body = rest.get(3..3 + len)?.to_vec();
        match (id, len) {
            (0x01, 64) => ed = Some(body),
            (0x12, 3309) => ml = Some(body),
            _ => return None,
        }
        rest = &rest[3 + len..];
    }
    rest.is_empty().then_some((ed, ml))
}

/// Build an RKS v1 bundle (docs/hybrid.md) from its components.
pub fn legacy_bundle(ed: Option<&[u8]>, ml: Option<&[u8]>) -> Vec<u8> {
    let parts: Vec<(u8, &[u8])> = [(0x01u8, ed), (0x12u8, ml)]
        .into_iter()
        .filter_map(|(id, s)| s.map(|s| (id, s)))
        .collect();
    let mut out = b"RKS\x01".to_vec();
    out.push(parts.len() as u8);
    for (id, s) in parts {
        out.push(id);
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    out
}

/// id-MLDSA65-Ed25519-SHA512 (draft-ietf-lamps-pq-composite-sigs).
pub const COMPOSITE_OID: &str = "1.3.6.1.5.5.7.6.48";
const COMPOSITE_PREFIX: &[u8] = b"CompositeAlgorithmSignatures2025";
const COMPOSITE_LABEL: &[u8] = b"COMPSIG-MLDSA65-Ed25519-SHA512";

/// The draft's message representative, built here from the draft's text:
/// `Prefix || Label || len(ctx) || ctx || SHA-512(M)`.
pub fn composite_m_prime(msg: &[u8], ctx: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut m = COMPOSITE_PREFIX.to_vec();
    m.extend_from_slice(COMPOSITE_LABEL);
    m.push(u8::try_from(ctx.len()).expect("ctx of at most 255 bytes"));
    m.extend_from_slice(ctx);
    m.extend_from_slice(&sha2::Sha512::digest(msg));
    m
}

/// Verify a composite signature from the raw composite public key
/// (ML-DSA-65 key 1952 bytes, then Ed25519 key 32 bytes) with RustCrypto:
/// ML-DSA-65 over M′ with the label as its context, Ed25519 over M′; both
/// must hold. `(ml-dsa valid, ed25519 valid)`.
pub fn verify_composite_raw(pk: &[u8], msg: &[u8], ctx: &[u8], sig: &[u8]) -> (bool, bool) {
    assert_eq!(pk.len(), 1984, "composite public key length");
    if sig.len() != 3309 + 64 {
        return (false, false);
    }
    let (pk_m, pk_e) = pk.split_at(1952);
    let (sig_m, sig_e) = sig.split_at(3309);
    let m = composite_m_prime(msg, ctx);
    let enc = ml_dsa::EncodedVerifyingKey::<ml_dsa::MlDsa65>::try_from(pk_m).unwrap();
    let vk = ml_dsa::VerifyingKey::<ml_dsa::MlDsa65>::decode(&enc);
    let ml_ok = match ml_dsa::Signature::<ml_dsa::MlDsa65>::try_from(sig_m) {
        Ok(s) => vk.verify_with_context(&m, COMPOSITE_LABEL, &s),
        Err(_) => false,
    };
    let ed = ed25519_dalek::VerifyingKey::from_bytes(pk_e.try_into().unwrap()).unwrap();
    let ed_ok = ed
        .verify_strict(&m, &ed25519_dalek::Signature::from_slice(sig_e).unwrap())
        .is_ok();
    (ml_ok, ed_ok)
}

/// Verify a composite signature from the DER SPKI alone (OID
/// 1.3.6.1.5.5.7.6.48, no parameters, the raw composite key).
pub fn verify_composite(der: &[u8], msg: &[u8], ctx: &[u8], sig: &[u8]) -> bool {
    let spki = spki::SubjectPublicKeyInfoRef::try_from(der).expect("well-formed SPKI");
    assert_eq!(spki.algorithm.oid.to_string(), COMPOSITE_OID);
    assert!(spki.algorithm.parameters.is_none());
    let pk = spki.subject_public_key.as_bytes().expect("no unused bits");
    verify_composite_raw(pk, msg, ctx, sig) == (true, true)
}

/// A `hybrid-ed25519-ml-dsa-65` signature from outside, from GetKey's
/// public material only: a composite (3373 bytes) against the composite
/// SPKI, or a plain Ed25519 signature (64 bytes, what phase 0 signs)
/// against the `ed25519` component's SPKI.
pub fn verify_hybrid(v: &ron_kms::proto::KeyVersion, msg: &[u8], sig: &[u8]) -> bool {
    let ed = v
        .components
        .iter()
        .find(|c| c.algorithm == "ed25519")
        .expect("ed25519 component");
    assert_eq!(spki_oid(&ed.public_key_der), "1.3.101.112");
    match sig.len() {
        3373 => verify_composite(&v.public_key_der, msg, b"", sig),
        64 => verify("ed25519", &ed.public_key_der, msg, sig),
        _ => false,
    }
}

/// Build a hybrid-x25519-ml-kem-768 wrap envelope from the component public
/// keys alone (docs/hybrid.md, docs/wrap-envelope.md): RustCrypto ML-KEM,
/// ring's ephemeral X25519, tiny-keccak's SHA3-256 for X-Wing's combiner,
/// RustCrypto HKDF and AES-GCM.
pub fn hybrid_kem_wrap(
    components: &[ron_kms::proto::ComponentKey],
    kid: &str,
    plaintext: &[u8],
    aad: &[u8],
) -> Vec<u8> {
    use tiny_keccak::Hasher;
    let raw = |alg: &str, oid: &str| {
        let c = components
            .iter()
            .find(|c| c.algorithm == alg)
            .expect("component present");
        let spki = spki::SubjectPublicKeyInfoRef::try_from(c.public_key_der.as_slice())
            .expect("well-formed SPKI");
        assert_eq!(spki.algorithm.oid.to_string(), oid);
        spki.subject_public_key.as_bytes().unwrap().to_vec()
    };
    let pk_m = raw("ml-kem-768", "2.16.840.1.101.3.4.4.2");
    let pk_x = raw("x25519", "1.3.101.110");
    let (ct_m, ss_m) = encapsulate("ml-kem-768", &pk_m);
    let rng = ring::rand::SystemRandom::new();
    let eph =
        ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::X25519, &rng).unwrap();
    let ct_x = eph.compute_public_key().unwrap().as_ref().to_vec();
    let peer = ring::agreement::UnparsedPublicKey::new(&ring::agreement::X25519, &pk_x);
    let ss_x = ring::agreement::agree_ephemeral(eph, &peer, |k| k.to_vec()).unwrap();
    let mut ss = [0u8; 32];
    let mut h = tiny_keccak::Sha3::v256();
    for part in [&b"\\.//^\\"[..], &ss_m, &ss_x, &ct_x, &pk_x] {
        h.update(part);
    }
    h.finalize(&mut ss);

    let ct = [ct_m, ct_x].concat();
    assert_eq!(ct.len(), 1120);
    envelope_from_kem(
        0x30,
        "hybrid-x25519-ml-kem-768",
        kid,
        &ct,
        &ss,
        plaintext,
        aad,
    )
}

/// The suite's Python (a venv with pyca/cryptography; scripts/py-venv.sh
/// makes it, scripts/test.sh runs that first), or `KMS_TEST_PYTHON`.
pub fn python() -> std::path::PathBuf {
    let p = std::env::var_os("KMS_TEST_PYTHON").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python"),
        Into::into,
    );
    assert!(
        p.exists(),
        "{} is missing: scripts/py-venv.sh makes it (scripts/test.sh runs it)",
        p.display()
    );
    p
}
