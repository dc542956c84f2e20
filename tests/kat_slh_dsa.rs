//! SLH-DSA (FIPS 205) known answers and an independent check of what the
//! provider signs (sources in `testing/vectors/SOURCES.md`):
//! - NIST ACVP key generation vectors for SLH-DSA-SHA2-128s: the keys the
//!   `fips205` crate derives from the seeds are the published ones, and the
//!   provider signs with such a key in ron-kms's private-key format;
//! - the `fips205` crate's own FIPS 205 signing vectors for SHA2-128s and
//!   -128f (internal interface, fixed opt_rand): byte-exact signatures;
//! - every provider signature (pure SLH-DSA, empty context) verifies under
//!   RustCrypto's `slh-dsa`, a second implementation, and a tampered one
//!   does not; the SPKI the service publishes parses with RustCrypto's
//!   `spki` and carries the NIST OIDs 2.16.840.1.101.3.4.3.20/21.
use std::path::Path;

use fips205::traits::{KeyGen as _, SerDes as _};
use ron_kms::crypto::{spki, Algorithm, Provider};
use serde_json::Value;

fn load(file: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testing/vectors/slh-dsa")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn hex_of(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

fn arr16(v: &Value) -> [u8; 16] {
    hex_of(v).try_into().expect("16 bytes")
}

/// Hands out one fixed value: the opt_rand of a signing vector.
struct Fixed(Vec<u8>);

impl rand_core::RngCore for Fixed {
    fn next_u32(&mut self) -> u32 {
        unreachable!()
    }
    fn next_u64(&mut self) -> u64 {
        unreachable!()
    }
    fn fill_bytes(&mut self, out: &mut [u8]) {
        out.copy_from_slice(&self.0[..out.len()]);
    }
    fn try_fill_bytes(&mut self, out: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(out);
        Ok(())
    }
}
impl rand_core::CryptoRng for Fixed {}

fn independent_verify(alg: Algorithm, public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    use slh_dsa::signature::Verifier as _;
    macro_rules! check {
        ($p:ty) => {{
            let (Ok(vk), Ok(s)) = (
                slh_dsa::VerifyingKey::<$p>::try_from(public),
                slh_dsa::Signature::<$p>::try_from(sig),
            ) else {
                return false;
            };
            vk.verify(msg, &s).is_ok()
        }};
    }
    match alg {
        Algorithm::SlhDsaSha2_128s => check!(slh_dsa::Sha2_128s),
        Algorithm::SlhDsaSha2_128f => check!(slh_dsa::Sha2_128f),
        _ => unreachable!(),
    }
}

#[test]
fn acvp_key_generation_sha2_128s() {
    let v = load("acvp_keygen_sha2_128s.json");
    let p = Provider::default();
    let signer = p.signer(Algorithm::SlhDsaSha2_128s).unwrap();
    let mut n = 0;
    for g in v["testGroups"].as_array().unwrap() {
        assert_eq!(g["parameterSet"], "SLH-DSA-SHA2-128s");
        for t in g["tests"].as_array().unwrap() {
            let (pk, sk) = fips205::slh_dsa_sha2_128s::KG::keygen_with_seeds(
                &arr16(&t["skSeed"]),
                &arr16(&t["skPrf"]),
                &arr16(&t["pkSeed"]),
            );
            assert_eq!(
                pk.into_bytes().to_vec(),
                hex_of(&t["pk"]),
                "tcId {}",
                t["tcId"]
            );
            assert_eq!(
                sk.into_bytes().to_vec(),
                hex_of(&t["sk"]),
                "tcId {}",
                t["tcId"]
            );
            n += 1;
        }
    }
    assert_eq!(n, 10);
    // the provider signs with a published key in its stored form (the
    // FIPS 205 encoding SK.seed ‖ SK.prf ‖ PK.seed ‖ PK.root), and the
    // signature verifies elsewhere under the published public key
    let t = &v["testGroups"][0]["tests"][0];
    let sig = signer.sign(&hex_of(&t["sk"]), b"ron-kms").unwrap();
    assert!(independent_verify(
        Algorithm::SlhDsaSha2_128s,
        &hex_of(&t["pk"]),
        b"ron-kms",
        &sig
    ));
}

#[test]
#[allow(deprecated)]
fn fips205_signing_vectors_sha2_128s_and_128f() {
    use fips205::traits::Signer as _;
    let v = load("fips205_sign_sha2_128.json");
    let mut n = 0;
    for t in v["vectors"].as_array().unwrap() {
        let (m, rand) = (hex_of(&t["message"]), hex_of(&t["optRand"]));
        let seeds = (arr16(&t["skSeed"]), arr16(&t["skPrf"]), arr16(&t["pkSeed"]));
        let expected = hex_of(&t["signature"]);
        match t["parameterSet"].as_str().unwrap() {
            "SLH-DSA-SHA2-128S" => {
                use fips205::slh_dsa_sha2_128s as p;
                let (_, sk) = p::KG::keygen_with_seeds(&seeds.0, &seeds.1, &seeds.2);
                let sig = sk._test_only_raw_sign(&mut Fixed(rand), &m, true).unwrap();
                assert_eq!(sig.to_vec(), expected, "SHA2-128s");
            }
            "SLH-DSA-SHA2-128F" => {
                use fips205::slh_dsa_sha2_128f as p;
                let (_, sk) = p::KG::keygen_with_seeds(&seeds.0, &seeds.1, &seeds.2);
                let sig = sk._test_only_raw_sign(&mut Fixed(rand), &m, true).unwrap();
                assert_eq!(sig.to_vec(), expected, "SHA2-128f");
            }
            other => panic!("unexpected parameter set {other}"),
        }
        n += 1;
    }
    assert_eq!(n, 2);
}

#[test]
fn provider_signatures_verify_under_rustcrypto_slh_dsa() {
    let p = Provider::default();
    for alg in [Algorithm::SlhDsaSha2_128s, Algorithm::SlhDsaSha2_128f] {
        let s = p.signer(alg).unwrap();
        let kp = s.generate().unwrap();
        assert_eq!((kp.public.len(), kp.private.len()), (32, 64), "{alg}");
        let sig = s.sign(&kp.private, b"attack at dawn").unwrap();
        let len = if alg == Algorithm::SlhDsaSha2_128s {
            7856
        } else {
            17088
        };
        assert_eq!(sig.len(), len, "{alg}");
        assert!(s.verify(&kp.public, b"attack at dawn", &sig), "{alg}");
        assert!(
            independent_verify(alg, &kp.public, b"attack at dawn", &sig),
            "{alg}"
        );
        assert!(
            !independent_verify(alg, &kp.public, b"attack at dusk", &sig),
            "{alg}"
        );
        let mut bad = sig.clone();
        bad[100] ^= 1;
        assert!(!s.verify(&kp.public, b"attack at dawn", &bad), "{alg}");
        assert!(
            !independent_verify(alg, &kp.public, b"attack at dawn", &bad),
            "{alg}"
        );
        // hedged: two signatures of one message differ
        assert_ne!(
            s.sign(&kp.private, b"attack at dawn").unwrap(),
            sig,
            "{alg}"
        );
        // the SPKI, parsed by RustCrypto's `spki`: the NIST OID, no
        // parameters, the raw key as the BIT STRING
        let der = spki::encode(alg, &kp.public);
        let info = ::spki::SubjectPublicKeyInfoRef::try_from(der.as_slice()).unwrap();
        let oid = if alg == Algorithm::SlhDsaSha2_128s {
            "2.16.840.1.101.3.4.3.20"
        } else {
            "2.16.840.1.101.3.4.3.21"
        };
        assert_eq!(info.algorithm.oid.to_string(), oid, "{alg}");
        assert!(info.algorithm.parameters.is_none(), "{alg}");
        let raw = info.subject_public_key.raw_bytes().to_vec();
        assert_eq!(raw, kp.public, "{alg}");
    }
}
