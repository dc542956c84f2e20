//! HMAC keys (issue 33; docs/api.md, "HMAC keys"), from outside.
//!
//! - Known keys, on every custody backend through the `Backend` trait: the
//!   RFC 4231 vectors (testing/vectors/rfc4231.json) give the published
//!   tags, and tags of random keys and messages are checked by Python's own
//!   `hmac` (tests/python/check_hmac.py). A known key gets into custody the
//!   way custody holds one: sealed under the master key (sealed-file) or
//!   under the TPM (tpm), and as a token object with ron-kms's template and
//!   label created with `C_CreateObject` (pkcs11, where HMAC keys are native).
//! - Through the service, on every backend and both fronts: create, Mac,
//!   VerifyMac (a wrong or short tag is `valid: false`), rotate (the old
//!   version's tags still verify under its kid), the wrong purpose both
//!   ways, and on sealed-file the service's tags checked by Python's `hmac`
//!   under the key unsealed here from the store, and another tenant's key
//!   answered as missing.
mod common;

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::softhsm::{self, SoftHsm};
use common::swtpm::Swtpm;
use common::{independent, ApiErr, Custody, Front, TestServer};
use ron_kms::backend::pkcs11::{Pkcs11Backend, Pkcs11Settings};
use ron_kms::backend::sealed_file::{MasterKey, SealedFileBackend};
use ron_kms::backend::soft::Sealer as _;
use ron_kms::backend::{Backend, KeyLabel};
use ron_kms::crypto::{random_bytes, Algorithm, Provider};
use tonic::Code;

const ALGS: [Algorithm; 2] = [Algorithm::HmacSha256, Algorithm::HmacSha512];
const TENANT: &str = "known";

/// A PKCS#11 module is initialised once per process: one backend at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One HMAC to make under a known key.
struct Known {
    alg: Algorithm,
    kid: String,
    key: Vec<u8>,
    message: Vec<u8>,
    /// The published tag (RFC 4231), or none (random: Python checks it).
    want: Option<String>,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Every RFC 4231 case for both algorithms, then random keys (of the
/// length ron-kms generates) and messages (0 bytes up to 1 KiB).
fn known_keys() -> Vec<Known> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testing/vectors/rfc4231.json"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for c in v["cases"].as_array().unwrap() {
        for (alg, field) in [
            (Algorithm::HmacSha256, "hmac_sha256"),
            (Algorithm::HmacSha512, "hmac_sha512"),
        ] {
            out.push(Known {
                alg,
                kid: format!("rfc4231-{}-{alg}#v1", c["case"]),
                key: hex::decode(c["key"].as_str().unwrap()).unwrap(),
                message: hex::decode(c["data"].as_str().unwrap()).unwrap(),
                want: Some(c[field].as_str().unwrap().to_string()),
            });
        }
    }
    assert_eq!(out.len(), 12, "six RFC 4231 cases, two hashes");
    for i in 0..8usize {
        for alg in ALGS {
            let mut key = vec![0u8; if alg == Algorithm::HmacSha256 { 32 } else { 64 }];
            random_bytes(&mut key).unwrap();
            let mut message = vec![0u8; i * i * 16];
            random_bytes(&mut message).unwrap();
            out.push(Known {
                alg,
                kid: format!("random-{i}-{alg}#v1"),
                key,
                message,
                want: None,
            });
        }
    }
    out
}

fn label(k: &Known) -> KeyLabel<'_> {
    KeyLabel {
        tenant: TENANT,
        kid: &k.kid,
        algorithm: k.alg,
    }
}

/// Python's `hmac` checks every (algorithm, key, message, tag).
fn python_agrees(items: &[serde_json::Value]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tags.json");
    std::fs::write(&path, serde_json::to_vec(items).unwrap()).unwrap();
    let out = std::process::Command::new(independent::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/check_hmac.py"
        ))
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Python hmac: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("checked {} tags", items.len())),
        "{stdout}"
    );
}

fn item(alg: Algorithm, key: &[u8], message: &[u8], mac: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "algorithm": alg.as_str(),
        "key": b64(key),
        "message": b64(message),
        "mac": b64(mac),
    })
}

/// Make every known tag with `b`, on the handles `handles` gave the keys.
/// `short_refused`: the device refuses HMAC keys shorter than the hash's
/// output (SoftHSM2: `CKR_KEY_SIZE_RANGE`); those RFC 4231 cases must then
/// be refused, not answered, and the rest must match.
fn known_tags(b: &dyn Backend, keys: &[Known], handles: &[Vec<u8>], short_refused: bool) {
    let mut checked = Vec::new();
    let (mut published, mut refused) = (0, 0);
    for (k, h) in keys.iter().zip(handles) {
        let short = k.key.len() < ron_kms::crypto::mac::tag_len(k.alg).unwrap();
        let r = b.mac(label(k), h, &k.message);
        if short_refused && short {
            let e = r.expect_err("a short key is refused by the device");
            assert!(e.to_string().contains("key size"), "{}: {e}", k.kid);
            refused += 1;
            continue;
        }
        let tag = r.unwrap();
        match &k.want {
            Some(want) => {
                assert_eq!(&hex::encode(&tag), want, "{} on {}", k.kid, b.name());
                published += 1;
            }
            None => checked.push(item(k.alg, &k.key, &k.message, &tag)),
        }
    }
    assert_eq!(published + refused, 12);
    assert!(
        published >= 4,
        "at least RFC 4231 cases 6 and 7 on both hashes"
    );
    assert_eq!(checked.len(), 16);
    python_agrees(&checked);
    println!(
        "{}: {published} RFC 4231 tags match ({refused} cases with keys shorter than the tag refused by the device), 16 random tags match Python's hmac",
        b.name()
    );
}

#[test]
fn known_keys_give_rfc_4231_and_python_tags_on_sealed_file() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut master = [0u8; 32];
    random_bytes(&mut master).unwrap();
    let b = SealedFileBackend::new(MasterKey::from_bytes(master), Arc::new(Provider::default()));
    let keys = known_keys();
    let handles: Vec<_> = keys
        .iter()
        .map(|k| b.seal(label(k), &k.key).unwrap())
        .collect();
    known_tags(&b, &keys, &handles, false);
}

#[test]
fn known_keys_give_rfc_4231_and_python_tags_on_tpm() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(&dir.path().join("tpm"));
    let b = tpm.open_backend();
    assert!(!b.capabilities().is_native(Algorithm::HmacSha256));
    let keys = known_keys();
    let handles: Vec<_> = keys
        .iter()
        .map(|k| b.seal(label(k), &k.key).unwrap())
        .collect();
    known_tags(&b, &keys, &handles, false);
    drop(b);
    drop(tpm);
}

/// The keys are created on the token first (ron-kms's template, docs/
/// pkcs11.md: a sensitive, non-extractable generic secret that signs and
/// verifies only, labelled `ron-kms/<tenant>/<kid>/<algorithm>`), then
/// ron-kms opens the token and uses them through native handles.
#[test]
fn known_keys_give_rfc_4231_and_python_tags_on_pkcs11() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(dir.path(), "hmac-known");
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let keys = known_keys();
    let mut handles = Vec::new();
    {
        let ctx = Pkcs11::new(softhsm::module()).unwrap();
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap();
        let slot = ctx
            .get_slots_with_initialized_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == hsm.label)
            .unwrap();
        let s = ctx.open_rw_session(slot).unwrap();
        s.login(UserType::User, Some(&AuthPin::new(softhsm::PIN.into())))
            .unwrap();
        for k in &keys {
            let mut id = vec![0u8; 16];
            random_bytes(&mut id).unwrap();
            s.create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Value(k.key.clone()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Id(id.clone()),
                Attribute::Label(format!("ron-kms/{TENANT}/{}/{}", k.kid, k.alg).into_bytes()),
            ])
            .unwrap();
            // docs/pkcs11.md, "Handles": a native secret key
            handles.push([&b"P11\x01s"[..], &id].concat());
        }
        drop(s);
        ctx.finalize().unwrap();
    }
    let b = Pkcs11Backend::open(
        Pkcs11Settings {
            module: softhsm::module(),
            token_label: hsm.label.clone(),
            pin: softhsm::PIN.to_string().into(),
            pool_size: 2,
        },
        Arc::new(Provider::default()),
    )
    .unwrap();
    assert!(b.capabilities().is_native(Algorithm::HmacSha256));
    assert!(b.capabilities().is_native(Algorithm::HmacSha512));
    known_tags(&b, &keys, &handles, true);
    // the label binds the algorithm: a SHA-256 key's handle under the
    // SHA-512 label finds nothing
    let k = &keys[0];
    let other = KeyLabel {
        algorithm: Algorithm::HmacSha512,
        ..label(k)
    };
    assert!(b.mac(other, &handles[0], b"m").is_err());
}

fn refused(r: Result<impl std::fmt::Debug, ApiErr>, http: u16, grpc: Code, code: &str) {
    r.expect_err(code).expect(http, grpc, code);
}

/// Create, Mac, VerifyMac and rotate through both fronts on `custody`.
async fn through_the_service(custody: Custody) -> TestServer {
    let srv = TestServer::start_on(custody).await;
    for front in [Front::Grpc, Front::Http] {
        let mut c = srv.client(front, &srv.admin_token).await;
        let ed = format!("ed-{front:?}").to_lowercase();
        c.create(&ed, "ed25519").await.unwrap();
        for alg in ALGS {
            let name = format!("{alg}-{front:?}").to_lowercase();
            let k = c.create(&name, alg.as_str()).await.unwrap();
            assert_eq!(k.purpose, "mac");
            assert!(k.versions[0].public_key_der.is_empty(), "no public half");
            let len = if alg == Algorithm::HmacSha256 { 32 } else { 64 };
            let m = b"the quick brown fox".to_vec();
            let t1 = c.mac(&name, &m).await.unwrap();
            assert_eq!(
                (t1.kid.as_str(), t1.mac.len()),
                (&*format!("{name}#v1"), len)
            );
            assert_eq!(t1.algorithm, alg.as_str());
            assert_eq!(c.mac(&name, &m).await.unwrap().mac, t1.mac, "deterministic");
            let ok = c.verify_mac(&t1.kid, &m, &t1.mac).await.unwrap();
            assert!(ok.valid && ok.kid == t1.kid, "{front:?} {alg}");
            // a wrong tag, a short one, another message: valid false
            let mut wrong = t1.mac.clone();
            wrong[len - 1] ^= 1;
            for (what, msg, tag) in [
                ("flipped bit", &m[..], &wrong[..]),
                ("truncated", &m[..], &t1.mac[..16]),
                ("another message", &b"the quick brown fax"[..], &t1.mac[..]),
            ] {
                let r = c.verify_mac(&t1.kid, msg, tag).await.unwrap();
                assert!(!r.valid, "{what}: {front:?} {alg}");
            }
            refused(
                c.verify_mac(&t1.kid, &m, b"").await,
                400,
                Code::InvalidArgument,
                "invalid_argument",
            );
            // rotate: the new version's tags differ; the old kid still verifies
            c.rotate(&name, "").await.unwrap();
            let t2 = c.mac(&name, &m).await.unwrap();
            assert_eq!(t2.kid, format!("{name}#v2"));
            assert_ne!(t2.mac, t1.mac);
            assert!(c.verify_mac(&t1.kid, &m, &t1.mac).await.unwrap().valid);
            assert!(!c.verify_mac(&name, &m, &t1.mac).await.unwrap().valid);
            assert!(c.verify_mac(&name, &m, &t2.mac).await.unwrap().valid);
            // the wrong purpose, both ways
            refused(
                c.sign(&name, &m).await,
                400,
                Code::FailedPrecondition,
                "wrong_key_purpose",
            );
            refused(
                c.mac(&ed, &m).await,
                400,
                Code::FailedPrecondition,
                "wrong_key_purpose",
            );
        }
    }
    srv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_keys_through_the_service_on_pkcs11() {
    through_the_service(Custody::Pkcs11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_keys_through_the_service_on_tpm() {
    through_the_service(Custody::Tpm).await;
}

/// On sealed-file the test can open what the service stored: the key is
/// unsealed here from the store under the data dir's master key, and the
/// service's tags are checked by Python's `hmac` under it. Another tenant's
/// token finds no such key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_keys_through_the_service_on_sealed_file() {
    let srv = through_the_service(Custody::SealedFile).await;
    let mut c = srv.client(Front::Http, &srv.admin_token).await;
    let mut messages = vec![Vec::new(), b"x".to_vec(), vec![0xa5; 100_000]];
    let mut m = vec![0u8; 777];
    random_bytes(&mut m).unwrap();
    messages.push(m);
    let (master, _) = MasterKey::load_or_create(&srv.data_dir().join("master.key")).unwrap();
    let b = SealedFileBackend::new(master, Arc::new(Provider::default()));
    let store = srv.running().kms.store();
    let mut items = Vec::new();
    for alg in ALGS {
        let name = format!("{alg}-http");
        let rec = store
            .load_keys()
            .unwrap()
            .into_iter()
            .find(|k| k.name == name)
            .unwrap();
        for msg in &messages {
            let t = c.mac(&name, msg).await.unwrap();
            let vn: u32 = t.kid.rsplit("#v").next().unwrap().parse().unwrap();
            let handle = rec.version(vn).unwrap().handle.clone().unwrap();
            let l = KeyLabel {
                tenant: &rec.tenant,
                kid: &t.kid,
                algorithm: alg,
            };
            let key = b.unseal(l, &handle).unwrap();
            items.push(item(alg, &key, msg, &t.mac));
        }
    }
    python_agrees(&items);

    let stranger = srv.token("someone-else", "kms:sign,kms:verify");
    for front in [Front::Grpc, Front::Http] {
        let mut s = srv.client(front, &stranger).await;
        refused(
            s.mac("hmac-sha256-http", b"m").await,
            404,
            Code::NotFound,
            "not_found",
        );
        refused(
            s.verify_mac("hmac-sha256-http#v1", b"m", &[0; 32]).await,
            404,
            Code::NotFound,
            "not_found",
        );
    }
}
