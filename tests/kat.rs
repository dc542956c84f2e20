//! Known-answer tests: the provider's algorithms (what the service runs)
//! against published vectors kept under `testing/vectors/` (sources in
//! `testing/vectors/SOURCES.md`): Ed25519 against RFC 8032 §7.1 and
//! Wycheproof, ECDSA P-256 verification against Wycheproof, ML-DSA-44/65/87
//! verification (ML-DSA-65 also with context strings) and ML-KEM-768/1024
//! decapsulation against Wycheproof; the composite hybrid signature against
//! the draft's vectors; the hybrid KEM against X-Wing's.
//!
//! The harness reports every mismatch rather than stopping at the first, and
//! a second test runs it on a deliberately corrupted copy of the vectors to
//! show that it notices.
use std::path::{Path, PathBuf};

use ron_kms::crypto::scheme::{ContextSignatureScheme, SignatureScheme as _};
use ron_kms::crypto::{Algorithm, Provider};
use serde_json::Value;

#[derive(Default, Debug)]
struct Report {
    checked: usize,
    failures: Vec<String>,
    /// Vectors for a feature the provider does not expose, with the reason.
    not_applicable: Vec<String>,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checked += 1;
        if !ok {
            self.failures.push(what());
        }
    }
}

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testing/vectors")
}

fn load(dir: &Path, file: &str) -> Value {
    let p = dir.join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn hex_of(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap_or_default()).expect("hex in vector file")
}

fn tests_of(group: &Value) -> &Vec<Value> {
    group["tests"].as_array().expect("tests array")
}

/// Wycheproof's expectation: Some(true) valid, Some(false) invalid, None
/// acceptable (either answer is allowed).
fn expected(t: &Value) -> Option<bool> {
    match t["result"].as_str() {
        Some("valid") => Some(true),
        Some("invalid") => Some(false),
        _ => None,
    }
}

fn rfc8032(dir: &Path, p: &Provider, r: &mut Report) {
    let ed = p.signer(Algorithm::Ed25519).unwrap();
    let v = load(dir, "rfc8032/ed25519.json");
    for t in v["tests"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let (sk, pk, msg, sig) = (
            hex_of(&t["secret_key"]),
            hex_of(&t["public_key"]),
            hex_of(&t["message"]),
            hex_of(&t["signature"]),
        );
        // Ed25519 signing is deterministic: the provider must produce the
        // published signature from the published secret key
        let ours = ed.sign(&sk, &msg).unwrap();
        r.check(ours == sig, || {
            format!("RFC 8032 {name}: signature differs")
        });
        r.check(ed.verify(&pk, &msg, &sig), || {
            format!("RFC 8032 {name}: published signature does not verify")
        });
        let mut other = msg.clone();
        other.push(0);
        r.check(!ed.verify(&pk, &other, &sig), || {
            format!("RFC 8032 {name}: verifies a different message")
        });
    }
}

/// Wycheproof signature verification files whose groups carry the public
/// key at `key_path` (hex).
fn wycheproof_verify(
    dir: &Path,
    file: &str,
    alg: Algorithm,
    key_of: impl Fn(&Value) -> Vec<u8>,
    p: &Provider,
    r: &mut Report,
) {
    let s = p.signer(alg).unwrap();
    // ML-DSA-65 with a context string is the composite's PQ half
    let with_ctx: Option<&dyn ContextSignatureScheme> = (alg == Algorithm::MlDsa65)
        .then(|| p.hybrid_signer().map(|h| h.pq.as_ref()))
        .flatten();
    let v = load(dir, &format!("wycheproof/{file}"));
    for g in v["testGroups"].as_array().unwrap() {
        let pk = key_of(g);
        for t in tests_of(g) {
            let id = t["tcId"].as_u64().unwrap_or(0);
            let ctx = t["ctx"]
                .as_str()
                .map(|_| hex_of(&t["ctx"]))
                .unwrap_or_default();
            let (msg, sig) = (hex_of(&t["msg"]), hex_of(&t["sig"]));
            let got = match (ctx.is_empty(), with_ctx) {
                (true, _) => s.verify(&pk, &msg, &sig),
                (false, Some(c)) => c.verify_with_context(&pk, &msg, &ctx, &sig),
                (false, None) => {
                    // plain ML-DSA keys take the empty context only
                    r.not_applicable
                        .push(format!("{file} #{id}: non-empty ML-DSA context"));
                    continue;
                }
            };
            if let Some(want) = expected(t) {
                r.check(got == want, || {
                    format!(
                        "{file} #{id} ({}): expected {}, got {got}",
                        t["comment"].as_str().unwrap_or(""),
                        t["result"]
                    )
                });
            } else {
                r.checked += 1; // acceptable: either answer
            }
        }
    }
}

fn wycheproof_mlkem(dir: &Path, file: &str, alg: Algorithm, p: &Provider, r: &mut Report) {
    let kem = p.kem(alg).unwrap();
    let v = load(dir, &format!("wycheproof/{file}"));
    for g in v["testGroups"].as_array().unwrap() {
        for t in tests_of(g) {
            let id = t["tcId"].as_u64().unwrap_or(0);
            let got = kem.decapsulate(&hex_of(&t["dk"]), &hex_of(&t["c"]));
            let comment = t["comment"].as_str().unwrap_or("");
            match expected(t) {
                Some(true) => {
                    let ok = got.as_ref().is_ok_and(|k| k[..] == hex_of(&t["K"])[..]);
                    r.check(ok, || {
                        format!("{file} #{id} ({comment}): shared secret differs")
                    });
                }
                Some(false) => r.check(got.is_err(), || {
                    format!("{file} #{id} ({comment}): invalid input was accepted")
                }),
                None => r.checked += 1,
            }
        }
    }
}

fn run_all(dir: &Path) -> Report {
    let p = Provider::default();
    let mut r = Report::default();
    rfc8032(dir, &p, &mut r);
    wycheproof_verify(
        dir,
        "ed25519_test.json",
        Algorithm::Ed25519,
        |g| hex_of(&g["publicKey"]["pk"]),
        &p,
        &mut r,
    );
    wycheproof_verify(
        dir,
        "ecdsa_secp256r1_sha256_test.json",
        Algorithm::EcdsaP256,
        |g| hex_of(&g["publicKey"]["uncompressed"]),
        &p,
        &mut r,
    );
    for (file, alg) in [
        ("mldsa_44_verify_test.json", Algorithm::MlDsa44),
        ("mldsa_65_verify_test.json", Algorithm::MlDsa65),
        ("mldsa_87_verify_test.json", Algorithm::MlDsa87),
    ] {
        wycheproof_verify(dir, file, alg, |g| hex_of(&g["publicKey"]), &p, &mut r);
    }
    for (file, alg) in [
        (
            "mlkem_768_semi_expanded_decaps_test.json",
            Algorithm::MlKem768,
        ),
        (
            "mlkem_1024_semi_expanded_decaps_test.json",
            Algorithm::MlKem1024,
        ),
    ] {
        wycheproof_mlkem(dir, file, alg, &p, &mut r);
    }
    r
}

/// Vectors the provider is known to get wrong, each with why it is accepted
/// for now. The test requires the failures to be exactly these, so a fix
/// upstream (or a new deviation) shows up as a failure here.
///
/// liboqs 0.13 rejects Wycheproof's valid "signature that calls
/// use_hint(1, 0)" vector for each ML-DSA parameter set. The vector uses an
/// all-zero public key (flag ZeroPublicKey), which key generation never
/// produces, to reach the UseHint boundary. The effect is a false rejection,
/// not an acceptance. pyca/cryptography 48 accepts it.
const KNOWN_DEVIATIONS: &[&str] = &[
    "mldsa_44_verify_test.json #147 (signature that calls use_hint(1, 0)): expected \"valid\", got false",
    "mldsa_65_verify_test.json #161 (signature that calls use_hint(1, 0)): expected \"valid\", got false",
    "mldsa_87_verify_test.json #174 (signature that calls use_hint(1, 0)): expected \"valid\", got false",
];

#[test]
fn published_vectors_pass() {
    let r = run_all(&vectors());
    eprintln!(
        "KAT: {} checks, {} failures ({} known deviations), {} not applicable",
        r.checked,
        r.failures.len(),
        KNOWN_DEVIATIONS.len(),
        r.not_applicable.len()
    );
    assert_eq!(
        r.failures, KNOWN_DEVIATIONS,
        "failures other than the known deviations"
    );
    // every file contributed: 3 RFC vectors × 3 checks, plus the files'
    // own counts (Wycheproof numberOfTests), less the context vectors
    assert!(r.checked > 1000, "{} checks", r.checked);
    assert!(
        r.not_applicable
            .iter()
            .all(|n| n.contains("non-empty ML-DSA context")),
        "{:?}",
        r.not_applicable
    );
}

/// Copy the vectors, corrupt two expected values, and check that the
/// harness reports exactly those.
#[test]
fn a_corrupted_vector_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = |rel: &str| {
        let to = tmp.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(vectors().join(rel), &to).unwrap();
        to
    };
    for f in std::fs::read_dir(vectors().join("wycheproof")).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".json") {
            copy(&format!("wycheproof/{name}"));
        }
    }
    // RFC 8032 TEST 2: change one hex digit of the expected signature
    let rfc = copy("rfc8032/ed25519.json");
    let text = std::fs::read_to_string(&rfc).unwrap();
    let sig2 = "92a009a9f0d4cab8720e820b5f642540";
    assert!(text.contains(sig2));
    std::fs::write(&rfc, text.replace(sig2, "92a009a9f0d4cab8720e820b5f642541")).unwrap();
    // ML-KEM-768: change the first valid case's expected shared secret
    let kem = tmp
        .path()
        .join("wycheproof/mlkem_768_semi_expanded_decaps_test.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&kem).unwrap()).unwrap();
    let t = v["testGroups"][0]["tests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["result"] == "valid")
        .unwrap();
    let k = t["K"].as_str().unwrap();
    let flipped = format!("{}{}", if k.starts_with('0') { "1" } else { "0" }, &k[1..]);
    t["K"] = Value::String(flipped);
    std::fs::write(&kem, serde_json::to_vec(&v).unwrap()).unwrap();

    let r = run_all(tmp.path());
    let new: Vec<&String> = r
        .failures
        .iter()
        .filter(|f| !KNOWN_DEVIATIONS.contains(&f.as_str()))
        .collect();
    assert_eq!(new.len(), 3, "{new:#?}");
    assert!(r
        .failures
        .iter()
        .any(|f| f.contains("RFC 8032 TEST 2: signature differs")));
    assert!(r
        .failures
        .iter()
        .any(|f| f.contains("RFC 8032 TEST 2: published signature does not verify")));
    assert!(r
        .failures
        .iter()
        .any(|f| f.contains("mlkem_768") && f.contains("shared secret differs")));
}

fn b64(v: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("base64 in vector file")
}

/// The draft's id-MLDSA65-Ed25519-SHA512 vector
/// (`composite-mldsa/testvectors.json`): its signatures over `m`, without
/// and with `ctx`, verify through ron-kms's verifier; a flipped byte, a
/// wrong context or another message does not. The SPKI ron-kms publishes
/// for the vector's key is the one in the vector's certificate, and a key
/// built from the vector's private seeds signs composites that the
/// vector's public key verifies under RustCrypto.
#[test]
fn composite_mldsa65_ed25519_vectors_verify() {
    use ron_kms::crypto::hybrid::{self, Presented};
    let v = load(&vectors(), "composite-mldsa/testvectors.json");
    let (m, ctx) = (b64(&v["m"]), b64(&v["ctx"]));
    let t = v["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tcId"] == "id-MLDSA65-Ed25519-SHA512")
        .expect("the vector");
    let pk = b64(&t["pk"]);
    assert_eq!(pk.len(), 1952 + 32);
    // ron-kms stores the classical half first
    let stored = [&pk[1952..], &pk[..1952]].concat();
    let p = Provider::default();
    let h = p.hybrid_signer().unwrap();
    let both = Presented::Composite {
        classical: true,
        pq: true,
    };
    let (s, s_ctx) = (b64(&t["s"]), b64(&t["sWithContext"]));
    assert_eq!(h.check(&stored, &m, b"", &s), both, "s over m");
    assert_eq!(h.check(&stored, &m, &ctx, &s_ctx), both, "sWithContext");
    assert_ne!(h.check(&stored, &m, &ctx, &s), both, "s under ctx");
    assert_ne!(
        h.check(&stored, &m, b"", &s_ctx),
        both,
        "sWithContext without ctx"
    );
    assert_ne!(h.check(&stored, b"other", b"", &s), both);
    for at in [0, 1000, 3308, 3309, 3372] {
        let mut bad = s.clone();
        bad[at] ^= 0x01;
        assert_ne!(h.check(&stored, &m, b"", &bad), both, "flipped byte {at}");
    }

    // the certificate's SubjectPublicKeyInfo is what ron-kms publishes
    let der = b64(&t["x5c"]);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        cert.public_key().algorithm.algorithm.to_id_string(),
        "1.3.6.1.5.5.7.6.48"
    );
    assert_eq!(
        ron_kms::crypto::spki::encode(Algorithm::HybridEd25519MlDsa65, &stored),
        cert.public_key().raw
    );

    // sk = ML-DSA seed (32) || Ed25519 seed (32): expand the ML-DSA seed
    // (RustCrypto, FIPS 204 KeyGen_internal) into ron-kms's private format
    use ml_dsa::KeyGen as _;
    let sk = b64(&t["sk"]);
    let seed = ml_dsa::B32::try_from(&sk[..32]).unwrap();
    let kp = ml_dsa::MlDsa65::key_gen_internal(&seed);
    assert_eq!(kp.verifying_key().encode().as_slice(), &pk[..1952]);
    let private = [&sk[32..], kp.signing_key().encode().as_slice()].concat();
    let ours = h
        .sign(&private, &hybrid::representative(&m, &ctx).unwrap())
        .unwrap();
    assert_eq!(h.check(&stored, &m, &ctx, &ours), both);
}

/// `hybrid-x25519-ml-kem-768` against X-Wing's published vectors
/// (`xwing/test-vectors.json`, draft-connolly-cfrg-xwing-kem): keys
/// expanded from the vector's seed as X-Wing does give the vector's public
/// key byte for byte, and ron-kms decapsulates the vector's ciphertext to
/// the same ML-KEM and X25519 secrets; the shared secret differs only
/// because ron-kms puts the label first (X-Wing -01) where the final X-Wing
/// puts it last. docs/hybrid.md says so.
#[test]
fn hybrid_kem_against_xwing_vectors() {
    use ml_kem::{EncodedSizeUser as _, KemCore as _};
    use ron_kms::crypto::hybrid::kem::{combine_label_first, XWING_LABEL};
    use sha3::digest::{ExtendableOutput, Update, XofReader};
    use sha3::Digest as _;
    let v = load(&vectors(), "xwing/test-vectors.json");
    let p = Provider::default();
    let hybrid = p.kem(Algorithm::HybridX25519MlKem768).unwrap();
    let mlkem = p.kem(Algorithm::MlKem768).unwrap();
    let vs = v.as_array().unwrap();
    assert_eq!(vs.len(), 3);
    for (i, t) in vs.iter().enumerate() {
        let (seed, pk, ct, ss) = (
            hex_of(&t["seed"]),
            hex_of(&t["pk"]),
            hex_of(&t["ct"]),
            hex_of(&t["ss"]),
        );
        // X-Wing's key expansion: SHAKE256(seed, 96) = d || z || sk_X
        let mut x = sha3::Shake256::default();
        x.update(&seed);
        let mut expanded = [0u8; 96];
        x.finalize_xof().read(&mut expanded);
        let d = ml_kem::B32::try_from(&expanded[..32]).unwrap();
        let z = ml_kem::B32::try_from(&expanded[32..64]).unwrap();
        let (dk, ek) = ml_kem::MlKem768::generate_deterministic(&d, &z);
        let sk_x: [u8; 32] = expanded[64..].try_into().unwrap();
        let pk_x = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(sk_x));
        assert_eq!(
            [ek.as_bytes().as_slice(), pk_x.as_bytes()].concat(),
            pk,
            "vector {i}: public key layout pk_M || pk_X"
        );
        // ron-kms's private form: dk_M (2400) || sk_X (32)
        let private = [dk.as_bytes().as_slice(), &sk_x].concat();
        let ours = hybrid.decapsulate(&private, &ct).unwrap();
        let (ct_m, ct_x) = ct.split_at(1088);
        let ss_m = mlkem.decapsulate(dk.as_bytes().as_slice(), ct_m).unwrap();
        let ct_x: [u8; 32] = ct_x.try_into().unwrap();
        let ss_x = x25519_dalek::StaticSecret::from(sk_x)
            .diffie_hellman(&x25519_dalek::PublicKey::from(ct_x));
        // X-Wing (final): SHA3-256(ss_M || ss_X || ct_X || pk_X || label)
        let label_last = sha3::Sha3_256::new()
            .chain_update(&ss_m[..])
            .chain_update(ss_x.as_bytes())
            .chain_update(ct_x)
            .chain_update(pk_x.as_bytes())
            .chain_update(XWING_LABEL)
            .finalize();
        assert_eq!(
            label_last[..],
            ss[..],
            "vector {i}: the component secrets are X-Wing's"
        );
        assert_ne!(
            &ours[..],
            &ss[..],
            "vector {i}: ron-kms's combiner is not final X-Wing's"
        );
        assert_eq!(
            ours,
            combine_label_first(&ss_m, ss_x.as_bytes(), &ct_x, pk_x.as_bytes()),
            "vector {i}: the only difference is the label's place"
        );
    }
}
