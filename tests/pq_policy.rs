//! The PQ migration policy (docs/pq-policy.md) from outside, on both
//! fronts: every (phase, verify mode, signature kind) combination gives the
//! expected answer and metrics; a component cut from a composite signature,
//! or a corrupted one, is invalid in every mode and moves nothing; a
//! rollback needs genuine classical refusals from a threshold of distinct
//! principals, is audited with them, and never happens with
//! `auto_rollback = false` or in phase 3; legacy RKS v1 bundles verify
//! until retired; composite signatures with a context verify under an
//! independent implementation written from the draft.
mod common;

use common::{independent, metric, Front, TestServer, FRONTS};
use ron_kms::proto::PqPolicy;
use tonic::Code;

/// Tests in this file read process-wide counters; one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MSG: &[u8] = b"release 1.2.3 artefact digest";

const REJECT: &str = "kms_reject_total{reason=\"pq_policy\"}";
const ROLLBACKS: &str = "kms_pq_policy_rollback_total";
const DOWNGRADES: &str = "kms_pq_downgrade_attempt_total";

fn policy(phase: u32, produce_hybrid: bool, mode: &str) -> PqPolicy {
    PqPolicy {
        phase,
        produce_hybrid,
        verify_mode: mode.into(),
        ..Default::default()
    }
}

fn flip(mut v: Vec<u8>, at: usize) -> Vec<u8> {
    v[at] ^= 0x01;
    v
}

/// The (Ed25519, ML-DSA-65) signatures over `msg` that ron-kms issued
/// inside RKS v1 bundles before the composite format: made here with the
/// key's own private halves, unsealed from the data dir by the documented
/// sealed-file format (docs/architecture.md, "Custody model") with
/// RustCrypto, as an operator holding the master key could.
fn issued_before(srv: &TestServer, key: &str, msg: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use ed25519_dalek::Signer as _;
    let rec = srv
        .running()
        .kms
        .store()
        .load_keys()
        .unwrap()
        .into_iter()
        .find(|k| k.tenant == "admin" && k.name == key)
        .expect("key in the store");
    let handle = rec.versions[0].handle.clone().unwrap();
    let master = std::fs::read(srv.data_dir().join("master.key")).unwrap();
    assert_eq!(handle[0], 0x01, "sealed-file handle version");
    let nonce: [u8; 12] = handle[1..13].try_into().unwrap();
    let aad = format!("ron-kms/sealed/v1\0hybrid-ed25519-ml-dsa-65\0admin/{key}#v1");
    let private = aes_gcm::Aes256Gcm::new_from_slice(&master)
        .unwrap()
        .decrypt(
            (&nonce).into(),
            Payload {
                msg: &handle[13..],
                aad: aad.as_bytes(),
            },
        )
        .expect("the handle opens under the master key");
    let ed = ed25519_dalek::SigningKey::from_bytes(private[..32].try_into().unwrap())
        .sign(msg)
        .to_bytes()
        .to_vec();
    let enc = ml_dsa::EncodedSigningKey::<ml_dsa::MlDsa65>::try_from(&private[32..]).unwrap();
    let ml = ml_dsa::SigningKey::<ml_dsa::MlDsa65>::decode(&enc)
        .sign_deterministic(msg, &[])
        .unwrap()
        .encode()
        .as_slice()
        .to_vec();
    (ed, ml)
}

fn audit_lines(srv: &TestServer) -> Vec<String> {
    std::fs::read_dir(srv.data_dir().join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Valid(&'static str),
    Invalid,
    /// Refused by policy (`pq_policy`).
    Refused,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_mode_and_signature_kind() {
    let _g = SERIAL.lock().await;
    let srv = TestServer::start().await;
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    c.create("h", "hybrid-ed25519-ml-dsa-65").await.unwrap();
    c.create("ed", "ed25519").await.unwrap();
    c.create("ml", "ml-dsa-65").await.unwrap();
    // phase 0 signs with the classical component alone: a plain Ed25519
    // signature over the message
    let plain = c.sign("h", MSG).await.unwrap().signature;
    assert_eq!(plain.len(), 64);
    // phase 1 signs the composite
    c.set_pq_policy(policy(1, true, "or"), "table test")
        .await
        .unwrap();
    let comp = c.sign("h", MSG).await.unwrap().signature;
    assert_eq!(comp.len(), 3373);
    let (ml_half, ed_half) = comp.split_at(3309);
    let (old_ed, old_ml) = issued_before(&srv, "h", MSG);
    let ed_sig = c.sign("ed", MSG).await.unwrap().signature;
    let ml_sig = c.sign("ml", MSG).await.unwrap().signature;
    let m_prime = independent::composite_m_prime(MSG, b"");
    let leg = independent::legacy_bundle;

    use Want::*;
    // (what, key, message, signature, [or, and, pq_only], downgrade attempt [or, and, pq_only])
    type Case = (
        &'static str,
        &'static str,
        Vec<u8>,
        Vec<u8>,
        [Want; 3],
        [u8; 3],
    );
    let m = || MSG.to_vec();
    let cases: Vec<Case> = vec![
        (
            "composite",
            "h",
            m(),
            comp.clone(),
            [Valid("hybrid"); 3],
            [0; 3],
        ),
        (
            "composite, ml-dsa half tampered",
            "h",
            m(),
            flip(comp.clone(), 100),
            [Invalid; 3],
            [1; 3],
        ),
        (
            "composite, ed25519 half tampered",
            "h",
            m(),
            flip(comp.clone(), 3309 + 5),
            [Invalid; 3],
            [1; 3],
        ),
        (
            "ed25519 half cut from a composite",
            "h",
            m(),
            ed_half.to_vec(),
            [Invalid; 3],
            [0, 1, 1],
        ),
        (
            "ed25519 half cut from a composite, with M' as the message",
            "h",
            m_prime.clone(),
            ed_half.to_vec(),
            [Invalid; 3],
            [0, 1, 1],
        ),
        (
            "ml-dsa half cut from a composite, in a legacy bundle",
            "h",
            m(),
            leg(None, Some(ml_half)),
            [Invalid; 3],
            [0; 3],
        ),
        (
            "plain ed25519 (phase 0)",
            "h",
            m(),
            plain.clone(),
            [Valid("classical_only"), Refused, Refused],
            [0; 3],
        ),
        (
            "plain ed25519, forged",
            "h",
            m(),
            flip(plain.clone(), 9),
            [Invalid; 3],
            [0, 1, 1],
        ),
        (
            "legacy bundle, both components",
            "h",
            m(),
            leg(Some(&old_ed), Some(&old_ml)),
            [Valid("legacy_bundle"); 3],
            [0; 3],
        ),
        (
            "legacy bundle stripped to its ed25519 component",
            "h",
            m(),
            leg(Some(&old_ed), None),
            [Valid("legacy_bundle"), Refused, Refused],
            [0, 1, 1],
        ),
        (
            "legacy bundle, ml-dsa component only",
            "h",
            m(),
            leg(None, Some(&old_ml)),
            [Valid("legacy_bundle"), Refused, Valid("legacy_bundle")],
            [0; 3],
        ),
        (
            "legacy bundle, ml-dsa component tampered",
            "h",
            m(),
            leg(Some(&old_ed), Some(&flip(old_ml.clone(), 100))),
            [Invalid; 3],
            [1; 3],
        ),
        (
            "ed25519 key",
            "ed",
            m(),
            ed_sig.clone(),
            [Valid("classical_only"), Valid("classical_only"), Refused],
            [0; 3],
        ),
        (
            "ml-dsa-65 key",
            "ml",
            m(),
            ml_sig.clone(),
            [Valid("pq_only"); 3],
            [0; 3],
        ),
        (
            "composite truncated",
            "h",
            m(),
            comp[..3372].to_vec(),
            [Invalid; 3],
            [0; 3],
        ),
    ];
    let modes = ["or", "and", "pq_only"];
    let table: &[(u32, &str)] = &[
        (0, "or"),
        (0, "and"),
        (0, "pq_only"),
        (1, "or"),
        (1, "and"),
        (1, "pq_only"),
        (2, "or"),
        (2, "and"),
        (2, "pq_only"),
        (3, "pq_only"),
    ];
    let mut checked = 0;
    for (phase, mode) in table {
        let mi = modes.iter().position(|m| m == mode).unwrap();
        for front in FRONTS {
            let mut c = srv.client(front, &srv.admin_token).await;
            c.set_pq_policy(policy(*phase, true, mode), "table test")
                .await
                .unwrap();
            for (what, key, msg, sig, wants, downgrades) in &cases {
                let case = format!("phase {phase}, {mode}, {what}, {front:?}");
                let (rejects, rollbacks, dg) =
                    (metric(REJECT), metric(ROLLBACKS), metric(DOWNGRADES));
                let got = c.verify(key, msg, sig).await;
                match wants[mi] {
                    Valid(kind) => {
                        let r = got.unwrap_or_else(|e| panic!("{case}: {e:?}"));
                        assert!(r.valid, "{case}");
                        assert_eq!(r.signature_kind, kind, "{case}");
                    }
                    Invalid => {
                        let r = got.unwrap_or_else(|e| panic!("{case}: {e:?}"));
                        assert!(!r.valid, "{case}");
                        assert_eq!(r.signature_kind, "", "{case}: nothing verified");
                    }
                    Refused => {
                        got.unwrap_err()
                            .expect(409, Code::FailedPrecondition, "pq_policy");
                    }
                }
                let refused = f64::from(u8::from(wants[mi] == Refused));
                assert_eq!(
                    metric(REJECT),
                    rejects + refused,
                    "{case}: pq_policy rejects"
                );
                assert_eq!(
                    metric(DOWNGRADES),
                    dg + f64::from(downgrades[mi]),
                    "{case}: downgrade attempts"
                );
                // one principal's refusals never roll the tenant back
                assert_eq!(metric(ROLLBACKS), rollbacks, "{case}");
                checked += 1;
            }
            let p = c.get_pq_policy().await.unwrap();
            assert_eq!(p.policy.unwrap().verify_mode, *mode, "not rolled back");
            assert_eq!(p.source, "admin");
        }
    }
    assert_eq!(checked, 10 * cases.len() * 2);
    // downgrade attempts are audited
    assert!(audit_lines(&srv)
        .iter()
        .any(|l| l.contains("\"op\":\"pq_downgrade_attempt\"")));
}

/// A `kms:verify`-only caller, whatever it sends, leaves the policy as it
/// was: stripped components, corrupted composites, genuine classical
/// signatures over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_verify_only_caller_moves_the_policy() {
    let _g = SERIAL.lock().await;
    let srv = TestServer::start().await;
    let mut admin = srv.client(Front::Grpc, &srv.admin_token).await;
    admin.create("h", "hybrid-ed25519-ml-dsa-65").await.unwrap();
    let plain = admin.sign("h", MSG).await.unwrap().signature;
    admin
        .set_pq_policy(policy(2, true, "and"), "phase 2")
        .await
        .unwrap();
    let comp = admin.sign("h", MSG).await.unwrap().signature;
    let before = admin.get_pq_policy().await.unwrap();
    let verifier = srv.token("admin", "kms:verify");
    let (ml_half, ed_half) = comp.split_at(3309);
    let m_prime = independent::composite_m_prime(MSG, b"");
    for front in FRONTS {
        let mut v = srv.client(front, &verifier).await;
        // the attack: the stripped signature, twice
        for _ in 0..2 {
            for (msg, sig) in [
                (MSG, ed_half.to_vec()),
                (&m_prime[..], ed_half.to_vec()),
                (MSG, independent::legacy_bundle(Some(ed_half), None)),
                (MSG, independent::legacy_bundle(None, Some(ml_half))),
            ] {
                match v.verify("h", msg, &sig).await {
                    Ok(r) => assert!(!r.valid),
                    Err(e) => e.expect(409, Code::FailedPrecondition, "pq_policy"),
                }
            }
        }
        // a byte of either component, flipped, in every mode
        for mode in ["or", "and", "pq_only"] {
            admin
                .set_pq_policy(policy(2, true, mode), "sweep")
                .await
                .unwrap();
            let positions = (0..comp.len())
                .step_by(61)
                .chain([3308, 3309, 3372])
                .collect::<Vec<_>>();
            for at in positions {
                let r = v.verify("h", MSG, &flip(comp.clone(), at)).await.unwrap();
                assert!(!r.valid, "{mode}, byte {at} flipped, {front:?}");
            }
            assert!(v.verify("h", MSG, &comp).await.unwrap().valid);
        }
        admin
            .set_pq_policy(policy(2, true, "and"), "phase 2")
            .await
            .unwrap();
        // a genuine classical signature, refused each time, from one principal
        for _ in 0..10 {
            v.verify("h", MSG, &plain).await.unwrap_err().expect(
                409,
                Code::FailedPrecondition,
                "pq_policy",
            );
        }
    }
    let after = admin.get_pq_policy().await.unwrap();
    assert_eq!(after.policy, before.policy);
    assert_eq!(after.source, "admin");
    assert_eq!(after.rolled_back_at_ms, 0);
}

/// Distinct principals' genuine refusals roll a phase 0–2 tenant back at
/// the threshold (default 3), audited with the refusals; never with
/// `auto_rollback = false`; never in phase 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_needs_the_threshold_of_distinct_principals() {
    let _g = SERIAL.lock().await;
    let srv = TestServer::start().await;
    for front in FRONTS {
        let tenant = format!("t-{front:?}").to_lowercase();
        let admin = srv.token(&tenant, "kms:admin,kms:sign,kms:read,kms:verify");
        let mut a = srv.client(front, &admin).await;
        a.create("h", "hybrid-ed25519-ml-dsa-65").await.unwrap();
        // phase 0: the classical component alone, plain Ed25519
        a.set_pq_policy(policy(0, false, "or"), "start")
            .await
            .unwrap();
        let classical = a.sign("h", MSG).await.unwrap().signature;
        assert_eq!(classical.len(), 64);
        let ed = a.get_key("h", false).await.unwrap().versions[0].clone();
        assert!(independent::verify_hybrid(&ed, MSG, &classical));

        let verifiers: Vec<String> = (0..5).map(|_| srv.token(&tenant, "kms:verify")).collect();
        let refuse = |e: common::ApiErr| e.expect(409, Code::FailedPrecondition, "pq_policy");

        // auto_rollback off: five principals, no rollback
        a.set_pq_policy(
            PqPolicy {
                auto_rollback: Some(false),
                ..policy(2, true, "and")
            },
            "no automatic rollback",
        )
        .await
        .unwrap();
        let before = metric(ROLLBACKS);
        for t in &verifiers {
            let mut v = srv.client(front, t).await;
            refuse(v.verify("h", MSG, &classical).await.unwrap_err());
        }
        let p = a.get_pq_policy().await.unwrap();
        assert_eq!(p.policy.as_ref().unwrap().verify_mode, "and");
        assert_eq!(p.policy.unwrap().auto_rollback, Some(false));
        assert_eq!(metric(ROLLBACKS), before);

        // on: the first two principals are refused and nothing moves
        a.set_pq_policy(policy(2, true, "and"), "move to phase 2")
            .await
            .unwrap();
        for t in &verifiers[..2] {
            let mut v = srv.client(front, t).await;
            for _ in 0..3 {
                refuse(v.verify("h", MSG, &classical).await.unwrap_err());
            }
        }
        assert_eq!(
            a.get_pq_policy().await.unwrap().policy.unwrap().verify_mode,
            "and"
        );
        assert_eq!(metric(ROLLBACKS), before);
        // the third distinct principal reaches the threshold
        let mut v3 = srv.client(front, &verifiers[2]).await;
        let e = v3.verify("h", MSG, &classical).await.unwrap_err();
        assert!(e.message.contains("rolled back"), "{}", e.message);
        refuse(e);
        assert_eq!(metric(ROLLBACKS), before + 1.0);
        let p = a.get_pq_policy().await.unwrap();
        let pol = p.policy.clone().unwrap();
        assert_eq!((pol.phase, pol.verify_mode.as_str()), (2, "or"));
        assert_eq!(p.source, "rollback");
        assert!(p.rolled_back_at_ms > 0);
        assert!(
            p.rollback_reason.contains("3 distinct principals"),
            "{}",
            p.rollback_reason
        );
        // rolled back: the classical signature verifies
        let ok = v3.verify("h", MSG, &classical).await.unwrap();
        assert!(ok.valid);
        assert_eq!(ok.signature_kind, "classical_only");

        // phase 3: refused by everyone, never rolled back
        a.set_pq_policy(policy(3, true, "pq_only"), "PQ only")
            .await
            .unwrap();
        for t in &verifiers {
            let mut v = srv.client(front, t).await;
            refuse(v.verify("h", MSG, &classical).await.unwrap_err());
        }
        let p = a.get_pq_policy().await.unwrap();
        assert_eq!(p.policy.unwrap().verify_mode, "pq_only");
        assert_eq!(p.source, "admin");
        assert_eq!(metric(ROLLBACKS), before + 1.0);
        // phase 3 signs the composite, which verifies
        let both = a.sign("h", MSG).await.unwrap().signature;
        assert!(a.verify("h", MSG, &both).await.unwrap().valid);

        // invalid policies are refused, naming the field
        for bad in [
            policy(3, true, "or"),
            policy(4, true, "or"),
            policy(1, true, "xor"),
        ] {
            a.set_pq_policy(bad, "").await.unwrap_err().expect(
                400,
                Code::InvalidArgument,
                "invalid_argument",
            );
        }
    }
    // each rollback is audited with the refusals that caused it
    let audit = audit_lines(&srv);
    let rollbacks: Vec<&String> = audit
        .iter()
        .filter(|l| l.contains("\"op\":\"pq_policy_rollback\""))
        .filter(|l| l.contains("\"result\":\"ok\""))
        .collect();
    assert_eq!(rollbacks.len(), 2, "one per front");
    let intents = audit
        .iter()
        .filter(|l| l.contains("\"op\":\"pq_policy_rollback\""))
        .filter(|l| l.contains("\"result\":\"intent\""))
        .count();
    assert_eq!(intents, 2, "each rollback's intent came first");
    for r in &rollbacks {
        assert_eq!(r.matches("token:").count(), 3, "names the refusals: {r}");
        assert!(r.contains("request "), "{r}");
    }
    assert!(audit
        .iter()
        .any(|l| l.contains("\"op\":\"set_pq_policy\"") && l.contains("auto_rollback=false")));
    assert!(audit.iter().any(|l| l.contains("\"result\":\"pq_policy\"")));

    // a policy survives a restart (stored), and other tenants keep the default
    let mut srv = srv;
    srv.restart().await;
    let t = srv.token("t-http", "kms:admin");
    let mut c = srv.client(Front::Http, &t).await;
    assert_eq!(c.get_pq_policy().await.unwrap().policy.unwrap().phase, 3);
    let other = srv.token("other", "kms:admin");
    let mut o = srv.client(Front::Grpc, &other).await;
    let p = o.get_pq_policy().await.unwrap();
    assert_eq!((p.source.as_str(), p.policy.unwrap().phase), ("default", 0));
    // reading the policy needs kms:admin
    let reader = srv.token("admin", "kms:verify");
    srv.client(Front::Grpc, &reader)
        .await
        .get_pq_policy()
        .await
        .unwrap_err()
        .expect(403, Code::PermissionDenied, "permission_denied");
}

/// RKS v1 bundles issued before the composite format verify as
/// `legacy_bundle` on both fronts until the tenant retires them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_bundles_verify_until_retired() {
    let _g = SERIAL.lock().await;
    let srv = TestServer::start().await;
    let mut a = srv.client(Front::Grpc, &srv.admin_token).await;
    a.create("h", "hybrid-ed25519-ml-dsa-65").await.unwrap();
    a.set_pq_policy(policy(2, true, "and"), "phase 2")
        .await
        .unwrap();
    let (ed, ml) = issued_before(&srv, "h", MSG);
    let old = independent::legacy_bundle(Some(&ed), Some(&ml));
    let comp = a.sign("h", MSG).await.unwrap().signature;
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let r = c.verify("h", MSG, &old).await.unwrap();
        assert!(r.valid, "{front:?}");
        assert_eq!(r.signature_kind, "legacy_bundle");
        assert!(!c.verify("h", b"other", &old).await.unwrap().valid);
    }
    a.set_pq_policy(
        PqPolicy {
            accept_legacy_bundles: Some(false),
            ..policy(2, true, "and")
        },
        "retire RKS v1",
    )
    .await
    .unwrap();
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let e = c.verify("h", MSG, &old).await.unwrap_err();
        assert!(e.message.contains("retired"), "{}", e.message);
        e.expect(409, Code::FailedPrecondition, "pq_policy");
        let r = c.verify("h", MSG, &comp).await.unwrap();
        assert!(r.valid && r.signature_kind == "hybrid");
    }
    let p = a.get_pq_policy().await.unwrap();
    assert_eq!(p.policy.unwrap().accept_legacy_bundles, Some(false));
}

/// Composite signatures verify outside ron-kms, from the published SPKI
/// alone, with an implementation written from the draft (RustCrypto
/// ML-DSA-65 with the label as context and Ed25519 over M′ built by the
/// test), with and without a context; contexts are bound and bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_signatures_verify_independently_with_and_without_context() {
    let _g = SERIAL.lock().await;
    let srv = TestServer::start_with(|c| {
        c.pq.default = ron_kms::policy::PqPolicy::for_phase(2);
    })
    .await;
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let k = format!("h-{front:?}").to_lowercase();
        let key = c.create(&k, "hybrid-ed25519-ml-dsa-65").await.unwrap();
        let spki = key.versions[0].public_key_der.clone();
        assert_eq!(independent::spki_oid(&spki), independent::COMPOSITE_OID);
        for ctx in [&b""[..], b"ron-kms test context", &[7u8; 255]] {
            let s = c.sign_ctx(&k, MSG, ctx).await.unwrap();
            assert_eq!(s.signature.len(), 3373);
            assert!(independent::verify_composite(&spki, MSG, ctx, &s.signature));
            assert!(!independent::verify_composite(
                &spki,
                b"other",
                ctx,
                &s.signature
            ));
            assert!(!independent::verify_composite(
                &spki,
                MSG,
                b"x",
                &s.signature
            ));
            let v = c.verify_ctx(&k, MSG, &s.signature, ctx).await.unwrap();
            assert!(v.valid && v.signature_kind == "hybrid");
            let other_ctx: &[u8] = if ctx.is_empty() { b"x" } else { b"" };
            assert!(
                !c.verify_ctx(&k, MSG, &s.signature, other_ctx)
                    .await
                    .unwrap()
                    .valid
            );
        }
        // bounds and misuse
        c.sign_ctx(&k, MSG, &[0u8; 256]).await.unwrap_err().expect(
            400,
            Code::InvalidArgument,
            "invalid_argument",
        );
        c.create(&format!("{k}-ed"), "ed25519").await.unwrap();
        c.sign_ctx(&format!("{k}-ed"), MSG, b"ctx")
            .await
            .unwrap_err()
            .expect(400, Code::InvalidArgument, "invalid_argument");
        // malformed signatures are invalid, not errors
        let s = c.sign(&k, MSG).await.unwrap().signature;
        for bad in [&s[..10], &[s.clone(), vec![0]].concat()[..], b""] {
            assert!(!c.verify(&k, MSG, bad).await.unwrap().valid);
        }
    }
    // a phase-0 tenant signs classically, and a context has no place there
    let t = srv.token("classic", "kms:admin,kms:sign");
    let mut c = srv.client(Front::Http, &t).await;
    c.set_pq_policy(policy(0, false, "or"), "phase 0")
        .await
        .unwrap();
    c.create("h", "hybrid-ed25519-ml-dsa-65").await.unwrap();
    c.sign_ctx("h", MSG, b"ctx").await.unwrap_err().expect(
        409,
        Code::FailedPrecondition,
        "failed_precondition",
    );
    // nor a message that starts with the composite prefix
    let prefixed = independent::composite_m_prime(MSG, b"");
    c.sign("h", &prefixed).await.unwrap_err().expect(
        400,
        Code::InvalidArgument,
        "invalid_argument",
    );
}
