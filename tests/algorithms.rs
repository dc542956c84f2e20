//! The backend conformance suite: every algorithm over both fronts, against
//! a real server on loopback, once per custody backend (`sealed-file`
//! in-process; `pkcs11` on a fresh SoftHSM2 token, the real binary in its
//! own process; `tpm` on a fresh swtpm, in-process): create, sign/verify, wrap/unwrap or mac/verify-mac, tampering, rotation, old
//! signatures and ciphertexts after rotation, disable (fails at once),
//! destroy (material gone from the store's files, or the object gone from the
//! token) — and every signature and ML-KEM ciphertext checked by an
//! independent implementation.
mod common;

use common::{files_containing, independent, stored_handle, Client, Custody, Front, TestServer};
use ron_kms::proto::{GenerateDataKeyRequest, KeyVersion};
use tonic::Code;

const MSG: &[u8] = b"attack at dawn";

/// What shows that v1's material exists now, to check again after destroy.
enum Probe {
    /// 32 bytes of the sealed handle, searched for in every data-dir file.
    Sealed(Vec<u8>),
    /// The token object's label, looked up with `pkcs11-tool`.
    TokenObject(String),
}

/// PKCS#11 handles of token-native keys start with "P11" 0x01.
fn is_native_pkcs11(h: &[u8]) -> bool {
    h.starts_with(b"P11\x01")
}

/// Asserts that v1's custody handle is stored now, and that its material
/// exists (in the data dir for sealed keys, in the token for native ones).
fn handle_probe(srv: &TestServer, name: &str, alg: &str) -> Probe {
    let h = stored_handle(&srv.data_dir(), "admin", name, 1).expect("v1 has a stored handle");
    if let Some(hsm) = &srv.hsm {
        if is_native_pkcs11(&h) {
            // an HMAC key's label also names its algorithm (docs/pkcs11.md)
            let label = if alg.starts_with("hmac-") {
                format!("ron-kms/admin/{name}#v1/{alg}")
            } else {
                format!("ron-kms/admin/{name}#v1")
            };
            assert!(
                hsm.list_objects().contains(&label),
                "{label} is in the token before destroy"
            );
            return Probe::TokenObject(label);
        }
    }
    assert!(h.len() >= 48);
    // the tail: ciphertext and tag, unique to this blob
    let probe = h[h.len() - 32..].to_vec();
    assert!(
        !files_containing(&srv.data_dir(), &probe).is_empty(),
        "probe is found before destroy"
    );
    Probe::Sealed(probe)
}

fn assert_material_gone(srv: &TestServer, name: &str, probe: &Probe) {
    assert_eq!(
        stored_handle(&srv.data_dir(), "admin", name, 1),
        None,
        "handle column wiped"
    );
    match probe {
        Probe::Sealed(p) => {
            let hits = files_containing(&srv.data_dir(), p);
            assert!(
                hits.is_empty(),
                "destroyed material still on disk in {hits:?}"
            );
        }
        Probe::TokenObject(label) => {
            let listing = srv.hsm.as_ref().unwrap().list_objects();
            assert!(
                !listing.contains(&format!("{label}\n")),
                "{label} still in the token after destroy (C_DestroyObject):\n{listing}"
            );
        }
    }
}

/// A version's public material: its SPKI, or its components' SPKIs.
fn public_of(v: &KeyVersion) -> Vec<u8> {
    let mut out = v.public_key_der.clone();
    for c in &v.components {
        out.extend_from_slice(&c.public_key_der);
    }
    out
}

/// Independent verification; hybrid keys sign composites here (the test
/// moves the tenant to phase 1 first).
fn independent_ok(alg: &str, v: &KeyVersion, msg: &[u8], sig: &[u8]) -> bool {
    if alg.starts_with("hybrid-") {
        sig.len() == 3373 && independent::verify_hybrid(v, msg, sig)
    } else {
        independent::verify(alg, &v.public_key_der, msg, sig)
    }
}

async fn sign_lifecycle(custody: Custody, front: Front, alg: &str) {
    let srv = TestServer::start_on(custody).await;
    let mut c = srv.client(front, &srv.admin_token).await;
    if alg.starts_with("hybrid-") {
        c.sign_composites().await;
    }

    let key = c.create("k", alg).await.unwrap();
    assert_eq!(
        (
            key.purpose.as_str(),
            key.algorithm.as_str(),
            key.primary_version
        ),
        ("sign", alg, 1)
    );
    assert_eq!(key.versions.len(), 1);
    assert_eq!(key.versions[0].state, "enabled");
    assert_eq!(key.versions[0].kid, "k#v1");
    let v1 = key.versions[0].clone();
    let der1 = public_of(&v1);
    let expected_oid = match alg {
        "ed25519" => "1.3.101.112",
        "ecdsa-p256" => "1.2.840.10045.2.1",
        "ml-dsa-44" => "2.16.840.1.101.3.4.3.17",
        "ml-dsa-65" => "2.16.840.1.101.3.4.3.18",
        "ml-dsa-87" => "2.16.840.1.101.3.4.3.19",
        "slh-dsa-sha2-128s" => "2.16.840.1.101.3.4.3.20",
        "slh-dsa-sha2-128f" => "2.16.840.1.101.3.4.3.21",
        "hybrid-ed25519-ml-dsa-65" => independent::COMPOSITE_OID,
        _ => unreachable!(),
    };
    assert_eq!(independent::spki_oid(&v1.public_key_der), expected_oid);
    if alg.starts_with("hybrid-") {
        // the composite's SPKI, and each component's beside it
        let oids: Vec<(String, String)> = v1
            .components
            .iter()
            .map(|c| {
                (
                    c.algorithm.clone(),
                    independent::spki_oid(&c.public_key_der),
                )
            })
            .collect();
        assert_eq!(
            oids,
            [
                ("ed25519".to_string(), "1.3.101.112".to_string()),
                (
                    "ml-dsa-65".to_string(),
                    "2.16.840.1.101.3.4.3.18".to_string()
                )
            ]
        );
    } else {
        assert!(v1.components.is_empty());
    }

    // sign, verify, tamper
    let s1 = c.sign("k", MSG).await.unwrap();
    assert_eq!((s1.kid.as_str(), s1.algorithm.as_str()), ("k#v1", alg));
    assert!(c.verify("k#v1", MSG, &s1.signature).await.unwrap().valid);
    assert!(c.verify("k", MSG, &s1.signature).await.unwrap().valid);
    let tampered = c
        .verify("k#v1", b"attack at dusk", &s1.signature)
        .await
        .unwrap();
    assert!(!tampered.valid, "tampered message must give valid=false");
    assert_eq!(tampered.kid, "k#v1");
    let mut bad_sig = s1.signature.clone();
    let n = bad_sig.len();
    bad_sig[n / 2] ^= 0x01;
    assert!(!c.verify("k#v1", MSG, &bad_sig).await.unwrap().valid);
    assert!(
        !c.verify("k#v1", MSG, &s1.signature[..n - 1])
            .await
            .unwrap()
            .valid
    );
    assert!(!c.verify("k#v1", MSG, b"").await.unwrap().valid);

    // an independent implementation agrees
    assert!(
        independent_ok(alg, &v1, MSG, &s1.signature),
        "independent verify of {alg}"
    );
    assert!(!independent_ok(alg, &v1, b"attack at dusk", &s1.signature));

    // PEM on request
    let k = c.get_key("k", true).await.unwrap();
    let pems: Vec<&str> = if alg.starts_with("hybrid-") {
        std::iter::once(k.versions[0].public_key_pem.as_str())
            .chain(
                k.versions[0]
                    .components
                    .iter()
                    .map(|c| c.public_key_pem.as_str()),
            )
            .collect()
    } else {
        vec![k.versions[0].public_key_pem.as_str()]
    };
    assert!(pems
        .iter()
        .all(|p| p.starts_with("-----BEGIN PUBLIC KEY-----\n")));
    let k = c.get_key("k", false).await.unwrap();
    assert!(k.versions[0].public_key_pem.is_empty());
    assert!(k.versions[0]
        .components
        .iter()
        .all(|c| c.public_key_pem.is_empty()));

    // rotate: new primary, old signatures keep verifying
    let r = c.rotate("k", "").await.unwrap();
    assert_eq!(r.kid, "k#v2");
    assert_eq!(r.key.as_ref().unwrap().primary_version, 2);
    let v2 = r.key.unwrap().versions[1].clone();
    assert_ne!(der1, public_of(&v2));
    let s2 = c.sign("k", MSG).await.unwrap();
    assert_eq!(s2.kid, "k#v2");
    assert!(independent_ok(alg, &v2, MSG, &s2.signature));
    assert!(
        c.verify("k#v1", MSG, &s1.signature).await.unwrap().valid,
        "old signature after rotation"
    );
    assert!(!c.verify("k#v2", MSG, &s1.signature).await.unwrap().valid);
    assert_eq!(
        c.sign("k#v1", MSG).await.unwrap().kid,
        "k#v1",
        "an old enabled version still signs by kid"
    );

    // disable: refused at once, on the very next request
    let k = c.set_state("k", 1, "disabled").await.unwrap();
    assert_eq!(k.versions[0].state, "disabled");
    c.verify("k#v1", MSG, &s1.signature)
        .await
        .unwrap_err()
        .expect(409, Code::FailedPrecondition, "key_version_not_enabled");
    c.sign("k#v1", MSG).await.unwrap_err().expect(
        409,
        Code::FailedPrecondition,
        "key_version_not_enabled",
    );
    assert_eq!(c.sign("k", MSG).await.unwrap().kid, "k#v2");

    // re-enable works; destroy needs disabled first
    c.set_state("k", 1, "enabled").await.unwrap();
    assert!(c.verify("k#v1", MSG, &s1.signature).await.unwrap().valid);
    c.set_state("k", 1, "destroyed").await.unwrap_err().expect(
        409,
        Code::FailedPrecondition,
        "failed_precondition",
    );

    let probe = handle_probe(&srv, "k", alg);
    c.set_state("k", 1, "disabled").await.unwrap();
    let k = c.set_state("k", 1, "destroyed").await.unwrap();
    assert_eq!(k.versions[0].state, "destroyed");
    assert_material_gone(&srv, "k", &probe);
    c.verify("k#v1", MSG, &s1.signature)
        .await
        .unwrap_err()
        .expect(409, Code::FailedPrecondition, "key_version_not_enabled");
    c.set_state("k", 1, "enabled").await.unwrap_err().expect(
        409,
        Code::FailedPrecondition,
        "failed_precondition",
    );
    assert!(c.verify("k#v2", MSG, &s2.signature).await.unwrap().valid);
}

/// An envelope made outside ron-kms (with aad `aad!`) unwraps to its
/// plaintext, and not under other aad.
async fn outside_envelope_unwraps(c: &mut Client, ext: &[u8]) {
    let u = c.unwrap("", ext, b"aad!").await.unwrap();
    assert_eq!(u.plaintext, b"from outside");
    c.unwrap("", ext, b"aad?").await.unwrap_err().expect(
        400,
        Code::InvalidArgument,
        "unwrap_failed",
    );
}

async fn wrap_lifecycle(custody: Custody, front: Front, alg: &str) {
    let srv = TestServer::start_on(custody).await;
    let mut c = srv.client(front, &srv.admin_token).await;

    let key = c.create("w", alg).await.unwrap();
    assert_eq!(
        (key.purpose.as_str(), key.algorithm.as_str()),
        ("wrap", alg)
    );
    let der1 = key.versions[0].public_key_der.clone();
    if alg == "aes-256-gcm" {
        assert!(der1.is_empty(), "symmetric keys have no public key");
    }

    let pt = b"a 32-byte data encryption key!!!";
    let w1 = c.wrap("w", pt, b"ctx=1").await.unwrap();
    assert_eq!((w1.kid.as_str(), w1.algorithm.as_str()), ("w#v1", alg));
    // the envelope names its version (docs/wrap-envelope.md)
    assert_eq!(&w1.ciphertext[..4], b"RKW\x01");
    assert_eq!(&w1.ciphertext[6..6 + 4], b"w#v1");

    let u = c.unwrap("", &w1.ciphertext, b"ctx=1").await.unwrap();
    assert_eq!((u.kid.as_str(), u.plaintext.as_slice()), ("w#v1", &pt[..]));
    assert_eq!(
        c.unwrap("w", &w1.ciphertext, b"ctx=1")
            .await
            .unwrap()
            .plaintext,
        pt
    );

    // tampering anywhere: an error, and no plaintext
    for i in [
        4usize + 2 + 4 + 2,
        w1.ciphertext.len() - 20,
        w1.ciphertext.len() - 1,
    ] {
        let mut bad = w1.ciphertext.clone();
        bad[i] ^= 0x01;
        c.unwrap("", &bad, b"ctx=1").await.unwrap_err().expect(
            400,
            Code::InvalidArgument,
            "unwrap_failed",
        );
    }
    c.unwrap("", &w1.ciphertext, b"ctx=2")
        .await
        .unwrap_err()
        .expect(400, Code::InvalidArgument, "unwrap_failed");
    c.unwrap("", &w1.ciphertext[..30], b"ctx=1")
        .await
        .unwrap_err()
        .expect(400, Code::InvalidArgument, "invalid_argument");

    // data keys
    let dk = c
        .datakey(GenerateDataKeyRequest {
            key: "w".into(),
            length: 0,
            aad: vec![],
            op_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    assert_eq!(
        c.unwrap("", &dk.ciphertext, b"").await.unwrap().plaintext,
        dk.plaintext
    );

    // an envelope built by an independent implementation unwraps
    if alg == "hybrid-x25519-ml-kem-768" {
        assert!(der1.is_empty(), "a hybrid has no single SPKI");
        let comps = &key.versions[0].components;
        let ext = independent::hybrid_kem_wrap(comps, "w#v1", b"from outside", b"aad!");
        outside_envelope_unwraps(&mut c, &ext).await;
        // a flipped bit in the X25519 half of the KEM ciphertext
        let mut bad = ext.clone();
        bad[6 + 4 + 2 + 1088 + 5] ^= 0x01;
        c.unwrap("", &bad, b"aad!").await.unwrap_err().expect(
            400,
            Code::InvalidArgument,
            "unwrap_failed",
        );
    }
    if alg.starts_with("ml-kem") {
        assert!(independent::spki_oid(&der1).starts_with("2.16.840.1.101.3.4.4."));
        let ext = independent::kem_wrap(alg, &der1, "w#v1", b"from outside", b"aad!");
        outside_envelope_unwraps(&mut c, &ext).await;
    }

    // rotate: new wraps use v2, v1 ciphertexts still unwrap
    assert_eq!(c.rotate("w", "").await.unwrap().kid, "w#v2");
    let w2 = c.wrap("w", pt, b"").await.unwrap();
    assert_eq!(w2.kid, "w#v2");
    assert_eq!(
        c.unwrap("", &w1.ciphertext, b"ctx=1").await.unwrap().kid,
        "w#v1"
    );
    assert_eq!(
        c.unwrap("", &w2.ciphertext, b"").await.unwrap().plaintext,
        pt
    );
    c.unwrap("w#v2", &w1.ciphertext, b"ctx=1")
        .await
        .unwrap_err()
        .expect(400, Code::InvalidArgument, "invalid_argument");

    // disable v1: its ciphertexts fail at once; v2 unaffected
    c.set_state("w", 1, "disabled").await.unwrap();
    c.unwrap("", &w1.ciphertext, b"ctx=1")
        .await
        .unwrap_err()
        .expect(409, Code::FailedPrecondition, "key_version_not_enabled");
    assert_eq!(
        c.unwrap("", &w2.ciphertext, b"").await.unwrap().plaintext,
        pt
    );

    // destroy: material gone from every file under the data dir
    let probe = handle_probe(&srv, "w", alg);
    c.set_state("w", 1, "destroyed").await.unwrap();
    assert_material_gone(&srv, "w", &probe);
    c.unwrap("", &w1.ciphertext, b"ctx=1")
        .await
        .unwrap_err()
        .expect(409, Code::FailedPrecondition, "key_version_not_enabled");
}

/// HMAC keys: create (no public half), Mac and VerifyMac, rotation (old
/// tags verify under their kid), disable (refused at once), destroy
/// (material gone). That the tags are HMACs is tests/mac.rs's job.
async fn mac_lifecycle(custody: Custody, front: Front, alg: &str) {
    let srv = TestServer::start_on(custody).await;
    let mut c = srv.client(front, &srv.admin_token).await;
    let key = c.create("k", alg).await.unwrap();
    assert_eq!(
        (
            key.purpose.as_str(),
            key.algorithm.as_str(),
            key.primary_version
        ),
        ("mac", alg, 1)
    );
    assert!(key.versions[0].public_key_der.is_empty() && key.versions[0].components.is_empty());
    let t1 = c.mac("k", MSG).await.unwrap();
    assert_eq!((t1.kid.as_str(), t1.algorithm.as_str()), ("k#v1", alg));
    assert!(c.verify_mac("k#v1", MSG, &t1.mac).await.unwrap().valid);
    let other = c.verify_mac("k#v1", b"attack at dusk", &t1.mac).await;
    assert!(!other.unwrap().valid, "another message");

    let r = c.rotate("k", "").await.unwrap();
    assert_eq!(r.kid, "k#v2");
    let t2 = c.mac("k", MSG).await.unwrap();
    assert_eq!(t2.kid, "k#v2");
    assert_ne!(t2.mac, t1.mac);
    assert!(c.verify_mac("k#v1", MSG, &t1.mac).await.unwrap().valid);

    c.set_state("k", 1, "disabled").await.unwrap();
    for r in [
        c.verify_mac("k#v1", MSG, &t1.mac).await.map(|_| ()),
        c.mac("k#v1", MSG).await.map(|_| ()),
    ] {
        r.unwrap_err()
            .expect(409, Code::FailedPrecondition, "key_version_not_enabled");
    }
    assert_eq!(c.mac("k", MSG).await.unwrap().kid, "k#v2");

    let probe = handle_probe(&srv, "k", alg);
    let k = c.set_state("k", 1, "destroyed").await.unwrap();
    assert_eq!(k.versions[0].state, "destroyed");
    assert_material_gone(&srv, "k", &probe);
    assert!(c.verify_mac("k#v2", MSG, &t2.mac).await.unwrap().valid);
}

macro_rules! cases {
    ($($name:ident => $f:ident($front:expr, $alg:expr);)*) => {
        /// Custody: sealed-file, in-process.
        mod sealed_file {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $f(Custody::SealedFile, $front, $alg).await
                }
            )*
        }
        /// Custody: PKCS#11 on a fresh SoftHSM2 token per test.
        mod pkcs11 {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $f(Custody::Pkcs11, $front, $alg).await
                }
            )*
        }
        /// Custody: TPM 2.0 on a fresh swtpm per test.
        mod tpm {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $f(Custody::Tpm, $front, $alg).await
                }
            )*
        }
    };
}

cases! {
    grpc_ed25519 => sign_lifecycle(Front::Grpc, "ed25519");
    http_ed25519 => sign_lifecycle(Front::Http, "ed25519");
    grpc_ecdsa_p256 => sign_lifecycle(Front::Grpc, "ecdsa-p256");
    http_ecdsa_p256 => sign_lifecycle(Front::Http, "ecdsa-p256");
    grpc_ml_dsa_44 => sign_lifecycle(Front::Grpc, "ml-dsa-44");
    http_ml_dsa_44 => sign_lifecycle(Front::Http, "ml-dsa-44");
    grpc_ml_dsa_65 => sign_lifecycle(Front::Grpc, "ml-dsa-65");
    http_ml_dsa_65 => sign_lifecycle(Front::Http, "ml-dsa-65");
    grpc_ml_dsa_87 => sign_lifecycle(Front::Grpc, "ml-dsa-87");
    http_ml_dsa_87 => sign_lifecycle(Front::Http, "ml-dsa-87");
    grpc_slh_dsa_sha2_128s => sign_lifecycle(Front::Grpc, "slh-dsa-sha2-128s");
    http_slh_dsa_sha2_128s => sign_lifecycle(Front::Http, "slh-dsa-sha2-128s");
    grpc_slh_dsa_sha2_128f => sign_lifecycle(Front::Grpc, "slh-dsa-sha2-128f");
    http_slh_dsa_sha2_128f => sign_lifecycle(Front::Http, "slh-dsa-sha2-128f");
    grpc_aes_256_gcm => wrap_lifecycle(Front::Grpc, "aes-256-gcm");
    http_aes_256_gcm => wrap_lifecycle(Front::Http, "aes-256-gcm");
    grpc_ml_kem_768 => wrap_lifecycle(Front::Grpc, "ml-kem-768");
    http_ml_kem_768 => wrap_lifecycle(Front::Http, "ml-kem-768");
    grpc_ml_kem_1024 => wrap_lifecycle(Front::Grpc, "ml-kem-1024");
    http_ml_kem_1024 => wrap_lifecycle(Front::Http, "ml-kem-1024");
    grpc_hybrid_ed25519_ml_dsa_65 => sign_lifecycle(Front::Grpc, "hybrid-ed25519-ml-dsa-65");
    http_hybrid_ed25519_ml_dsa_65 => sign_lifecycle(Front::Http, "hybrid-ed25519-ml-dsa-65");
    grpc_hybrid_x25519_ml_kem_768 => wrap_lifecycle(Front::Grpc, "hybrid-x25519-ml-kem-768");
    http_hybrid_x25519_ml_kem_768 => wrap_lifecycle(Front::Http, "hybrid-x25519-ml-kem-768");
    grpc_hmac_sha256 => mac_lifecycle(Front::Grpc, "hmac-sha256");
    http_hmac_sha256 => mac_lifecycle(Front::Http, "hmac-sha256");
    grpc_hmac_sha512 => mac_lifecycle(Front::Grpc, "hmac-sha512");
    http_hmac_sha512 => mac_lifecycle(Front::Http, "hmac-sha512");
}
