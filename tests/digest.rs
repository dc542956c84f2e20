//! Digest signing (issue 33; docs/api.md, "Signing a digest"), from outside:
//! a 2 MiB message, twice the body cap, is never sent; its digest is
//! computed here (SHA-256 with the `sha2` crate, FIPS 204's μ written out
//! with SHAKE256, the composite's SHA-512 pre-hash), signed through both
//! fronts on every custody backend, and each signature checked by
//! pyca/cryptography (OpenSSL) over the digest and over the message itself
//! (tests/python/verify_digests.py), the composite by the independent
//! composite verifier. Bad digests are refused with `invalid_argument` on
//! both fronts, naming the expected length or algorithm.
mod common;

use base64::Engine as _;
use common::{independent, ApiErr, Client, Custody, Front, TestServer};
use ron_kms::proto::{KeyVersion, SignRequest, VerifyRequest};
use sha2::Digest as _;
use sha3::digest::{ExtendableOutput, Update, XofReader};
use tonic::Code;

const MESSAGE_LEN: usize = 2 << 20;

fn message() -> Vec<u8> {
    (0..MESSAGE_LEN)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect()
}

/// FIPS 204 external μ with an empty context: SHAKE256(SHAKE256(pk, 64) ‖
/// 0x00 ‖ 0x00 ‖ M, 64).
fn mu(raw_public: &[u8], m: &[u8]) -> Vec<u8> {
    let mut tr = [0u8; 64];
    let mut h = sha3::Shake256::default();
    h.update(raw_public);
    h.finalize_xof().read(&mut tr);
    let mut h = sha3::Shake256::default();
    h.update(&tr);
    h.update(&[0, 0]);
    h.update(m);
    let mut out = vec![0u8; 64];
    h.finalize_xof().read(&mut out);
    out
}

/// The raw ML-DSA public key at the end of its SPKI (a BIT STRING with no
/// unused bits, FIPS 204 pkEncode).
fn raw_mldsa(alg: &str, der: &[u8]) -> Vec<u8> {
    let len = match alg {
        "ml-dsa-44" => 1312,
        "ml-dsa-65" => 1952,
        _ => 2592,
    };
    der[der.len() - len..].to_vec()
}

fn digest_for(alg: &str, v: &KeyVersion, m: &[u8]) -> Vec<u8> {
    match alg {
        "ecdsa-p256" => sha2::Sha256::digest(m).to_vec(),
        "hybrid-ed25519-ml-dsa-65" => sha2::Sha512::digest(m).to_vec(),
        _ => mu(&raw_mldsa(alg, &v.public_key_der), m),
    }
}

async fn sign_digest(
    c: &mut Client,
    key: &str,
    digest: &[u8],
    kind: &str,
) -> Result<Vec<u8>, ApiErr> {
    c.sign_req(SignRequest {
        key: key.into(),
        digest: digest.to_vec(),
        digest_algorithm: kind.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.signature)
}

async fn verify_digest(
    c: &mut Client,
    key: &str,
    digest: &[u8],
    sig: &[u8],
) -> Result<bool, ApiErr> {
    c.verify_req(VerifyRequest {
        key: key.into(),
        digest: digest.to_vec(),
        signature: sig.to_vec(),
        ..Default::default()
    })
    .await
    .map(|r| r.valid)
}

const ALGS: [(&str, &str); 5] = [
    ("ecdsa-p256", "sha256"),
    ("ml-dsa-44", "mu"),
    ("ml-dsa-65", "mu"),
    ("ml-dsa-87", ""),
    ("hybrid-ed25519-ml-dsa-65", "sha512"),
];

async fn digests_verify_outside(custody: Custody) {
    let srv = TestServer::start_on(custody).await;
    let m = message();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("message"), &m).unwrap();
    let mut manifest = Vec::new();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    for front in [Front::Grpc, Front::Http] {
        let mut c = srv.client(front, &srv.admin_token).await;
        c.sign_composites().await;
        for (alg, kind) in ALGS {
            let name = format!("{alg}-{front:?}").to_lowercase();
            let v = c.create(&name, alg).await.unwrap().versions[0].clone();
            let d = digest_for(alg, &v, &m);
            let sig = sign_digest(&mut c, &name, &d, kind).await.unwrap();
            assert!(
                verify_digest(&mut c, &name, &d, &sig).await.unwrap(),
                "{alg} {front:?}"
            );
            let mut other = d.clone();
            other[0] ^= 1;
            assert!(
                !verify_digest(&mut c, &name, &other, &sig).await.unwrap(),
                "{alg} {front:?}"
            );
            if alg.starts_with("hybrid-") {
                assert!(
                    independent::verify_hybrid(&v, &m, &sig),
                    "{front:?}: composite over PH(M)"
                );
            } else {
                manifest.push(serde_json::json!({
                    "algorithm": alg,
                    "spki": b64(&v.public_key_der),
                    "digest": b64(&d),
                    "signature": b64(&sig),
                }));
            }
        }
    }
    let path = dir.path().join("manifest.json");
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let out = std::process::Command::new(independent::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/verify_digests.py"
        ))
        .arg(&path)
        .arg(dir.path().join("message"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pyca/cryptography: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified 8 digest signatures"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_signatures_verify_outside_on_sealed_file() {
    digests_verify_outside(Custody::SealedFile).await
}

/// ECDSA P-256 keys are token objects (`CKM_ECDSA` over the digest); the
/// ML-DSA and hybrid keys are sealed under the token's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_signatures_verify_outside_on_pkcs11() {
    digests_verify_outside(Custody::Pkcs11).await
}

/// ECDSA P-256 keys are TPM keys (`TPM2_Sign` over the digest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_signatures_verify_outside_on_tpm() {
    digests_verify_outside(Custody::Tpm).await
}

fn refused(r: Result<impl std::fmt::Debug, ApiErr>, says: &str) {
    let e = r.expect_err(says);
    e.expect(400, Code::InvalidArgument, "invalid_argument");
    assert!(
        e.message.contains(says),
        "{:?} should say {says:?}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_digests_are_refused_on_both_fronts() {
    let srv = TestServer::start().await;
    for front in [Front::Grpc, Front::Http] {
        let mut c = srv.client(front, &srv.admin_token).await;
        let p = format!("{front:?}").to_lowercase();
        let mut ml_public = Vec::new();
        for alg in [
            "ed25519",
            "ecdsa-p256",
            "ml-dsa-65",
            "hybrid-ed25519-ml-dsa-65",
        ] {
            let k = c.create(&format!("{p}-{alg}"), alg).await.unwrap();
            if alg == "ml-dsa-65" {
                ml_public = k.versions[0].public_key_der.clone();
            }
        }
        let (ed, ec, ml, hy) = (
            format!("{p}-ed25519"),
            format!("{p}-ecdsa-p256"),
            format!("{p}-ml-dsa-65"),
            format!("{p}-hybrid-ed25519-ml-dsa-65"),
        );
        refused(sign_digest(&mut c, &ed, &[7; 64], "").await, "Ed25519ph");
        refused(
            sign_digest(&mut c, &ed, &[7; 32], "sha256").await,
            "Ed25519ph",
        );
        refused(
            sign_digest(&mut c, &ec, &[7; 31], "").await,
            "is 32 bytes, not 31",
        );
        refused(
            sign_digest(&mut c, &ec, &[7; 64], "sha256").await,
            "is 32 bytes, not 64",
        );
        refused(
            sign_digest(&mut c, &ml, &[7; 63], "mu").await,
            "is 64 bytes, not 63",
        );
        refused(
            sign_digest(&mut c, &ml, &[7; 4096], "").await,
            "is 64 bytes, not 4096",
        );
        refused(
            sign_digest(&mut c, &ml, &[7; 64], "sha256").await,
            "take a mu digest, not sha256",
        );
        refused(
            sign_digest(&mut c, &ec, &[7; 32], "md5").await,
            "unknown \"md5\"",
        );
        refused(
            c.sign_req(SignRequest {
                key: ec.clone(),
                message: b"m".to_vec(),
                digest: vec![7; 32],
                ..Default::default()
            })
            .await,
            "send one of them, not both",
        );
        refused(
            c.sign_req(SignRequest {
                key: ec.clone(),
                message: b"m".to_vec(),
                digest_algorithm: "sha256".into(),
                ..Default::default()
            })
            .await,
            "given without a digest",
        );
        refused(
            c.verify_req(VerifyRequest {
                key: ed.clone(),
                digest: vec![7; 64],
                signature: vec![0; 64],
                ..Default::default()
            })
            .await,
            "Ed25519ph",
        );
        refused(
            c.verify_req(VerifyRequest {
                key: ml.clone(),
                digest: vec![7; 32],
                signature: vec![0; 3309],
                ..Default::default()
            })
            .await,
            "is 64 bytes, not 32",
        );
        // phase 0 (the default): a hybrid key signs with Ed25519 alone,
        // which cannot sign a digest
        let e = sign_digest(&mut c, &hy, &[7; 64], "sha512")
            .await
            .unwrap_err();
        e.expect(409, Code::FailedPrecondition, "failed_precondition");
        assert!(
            e.message.contains("Ed25519 cannot sign a digest"),
            "{}",
            e.message
        );
        // a plain Ed25519 signature is over the message, never a digest
        let plain = c.sign(&hy, b"m").await.unwrap().signature;
        refused(
            c.verify_req(VerifyRequest {
                key: hy.clone(),
                digest: vec![7; 64],
                signature: plain,
                ..Default::default()
            })
            .await,
            "only a composite signature",
        );
        // and a message signature is a digest signature
        let sig = c.sign(&ml, b"short").await.unwrap().signature;
        let d = mu(&raw_mldsa("ml-dsa-65", &ml_public), b"short");
        assert!(verify_digest(&mut c, &ml, &d, &sig).await.unwrap());
    }
}

/// Batches carry digests item by item: each item is answered as the single
/// call would be, a bad digest failing only its own item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_sign_and_verify_digests_item_by_item() {
    use ron_kms::proto::{SignBatchRequest, VerifyBatchRequest};
    let srv = TestServer::start().await;
    let m = b"batch item";
    for front in [Front::Grpc, Front::Http] {
        let mut c = srv.client(front, &srv.admin_token).await;
        let name = format!("batch-{front:?}").to_lowercase();
        let v = c.create(&name, "ml-dsa-44").await.unwrap().versions[0].clone();
        let d = digest_for("ml-dsa-44", &v, m);
        let item = |digest: Vec<u8>| SignRequest {
            key: name.clone(),
            digest,
            ..Default::default()
        };
        let r = c
            .sign_batch(SignBatchRequest {
                items: vec![item(d.clone()), item(vec![1; 63]), item(d.clone())],
            })
            .await
            .unwrap();
        assert_eq!(r.items.len(), 3);
        let sigs: Vec<Vec<u8>> = [0, 2]
            .iter()
            .map(|&i| {
                r.items[i]
                    .ok
                    .as_ref()
                    .expect("a good digest signs")
                    .signature
                    .clone()
            })
            .collect();
        let e = r.items[1]
            .error
            .as_ref()
            .expect("the short digest fails alone");
        assert_eq!(e.code, "invalid_argument", "{e:?}");
        assert!(e.message.contains("is 64 bytes, not 63"), "{e:?}");
        for s in &sigs {
            assert!(
                independent::verify("ml-dsa-44", &v.public_key_der, m, s),
                "{front:?}"
            );
        }
        let check = |sig: &Vec<u8>, digest: &Vec<u8>| VerifyRequest {
            key: format!("{name}#v1"),
            digest: digest.clone(),
            signature: sig.clone(),
            ..Default::default()
        };
        let mut other = d.clone();
        other[5] ^= 1;
        let r = c
            .verify_batch(VerifyBatchRequest {
                items: vec![check(&sigs[0], &d), check(&sigs[1], &other)],
            })
            .await
            .unwrap();
        let valid: Vec<bool> = r
            .items
            .iter()
            .map(|i| i.ok.as_ref().unwrap().valid)
            .collect();
        assert_eq!(valid, [true, false], "{front:?}");
    }
}
