//! The PQ migration policy (docs/pq-policy.md) from outside: every (phase,
//! verify mode, signature kind) combination gives the expected answer and
//! metric; a policy refusal rolls a phase 0–2 tenant back to `or` once
//! (audited, metered, visible in the admin API) and never a phase-3 tenant;
//! hybrid signatures verify under independent implementations of both
//! components, and tampering either one fails under `and`.
mod common;

use common::{independent, metric, Front, TestServer, FRONTS};
use ron_kms::proto::PqPolicy;
use tonic::Code;

/// Tests in this file read process-wide counters; one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MSG: &[u8] = b"release 1.2.3 artefact digest";

const REJECT: &str = "kms_reject_total{reason=\"pq_policy\"}";
const ROLLBACKS: &str = "kms_pq_policy_rollback_total";

fn policy(phase: u32, produce_hybrid: bool, mode: &str) -> PqPolicy {
    PqPolicy {
        phase,
        produce_hybrid,
        verify_mode: mode.into(),
        rollout_percent: None,
    }
}

/// Re-encode a bundle with the components chosen (docs/hybrid.md).
fn bundle(ed: Option<&[u8]>, ml: Option<&[u8]>) -> Vec<u8> {
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

fn flip(mut v: Vec<u8>, at: usize) -> Vec<u8> {
    v[at] ^= 0x01;
    v
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Valid,
    Invalid,
    /// Refused by policy; a genuine signature, so a phase 0–2 tenant rolls back.
    Refused,
    /// Refused by policy; not genuine (a component fails), so nothing rolls back.
    RefusedForged,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_mode_and_signature_kind() {
    let _g = SERIAL.lock().await;
    let srv = TestServer::start().await;
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    c.create("h", "hybrid-ed25519-ml-dsa-65").await.unwrap();
    c.create("ed", "ed25519").await.unwrap();
    c.create("ml", "ml-dsa-65").await.unwrap();
    // phase 1 produces both components
    c.set_pq_policy(policy(1, true, "or"), "table test")
        .await
        .unwrap();
    let full = c.sign("h", MSG).await.unwrap().signature;
    let (ed, ml) = independent::parse_bundle(&full).unwrap();
    let (ed, ml) = (ed.unwrap(), ml.unwrap());
    let ed_sig = c.sign("ed", MSG).await.unwrap().signature;
    let ml_sig = c.sign("ml", MSG).await.unwrap().signature;

    // signature kinds, each on the key it belongs to
    let kinds: Vec<(&str, &str, Vec<u8>)> = vec![
        ("hybrid", "h", bundle(Some(&ed), Some(&ml))),
        ("classical-only bundle", "h", bundle(Some(&ed), None)),
        ("pq-only bundle", "h", bundle(None, Some(&ml))),
        (
            "hybrid, classical tampered",
            "h",
            bundle(Some(&flip(ed.clone(), 5)), Some(&ml)),
        ),
        (
            "hybrid, pq tampered",
            "h",
            bundle(Some(&ed), Some(&flip(ml.clone(), 100))),
        ),
        ("classical key", "ed", ed_sig.clone()),
        ("pq key", "ml", ml_sig.clone()),
        (
            "classical-only bundle, forged",
            "h",
            bundle(Some(&flip(ed.clone(), 9)), None),
        ),
    ];
    use Want::*;
    // (phase, mode) → expected answer per kind, in the order above
    let table: &[(u32, &str, [Want; 8])] = &[
        (
            0,
            "or",
            [Valid, Valid, Valid, Valid, Valid, Valid, Valid, Invalid],
        ),
        (
            0,
            "and",
            [
                Valid,
                Refused,
                Refused,
                Invalid,
                Invalid,
                Valid,
                Valid,
                RefusedForged,
            ],
        ),
        (
            0,
            "pq_only",
            [
                Valid,
                Refused,
                Valid,
                Valid,
                Invalid,
                Refused,
                Valid,
                RefusedForged,
            ],
        ),
        (
            1,
            "or",
            [Valid, Valid, Valid, Valid, Valid, Valid, Valid, Invalid],
        ),
        (
            1,
            "and",
            [
                Valid,
                Refused,
                Refused,
                Invalid,
                Invalid,
                Valid,
                Valid,
                RefusedForged,
            ],
        ),
        (
            1,
            "pq_only",
            [
                Valid,
                Refused,
                Valid,
                Valid,
                Invalid,
                Refused,
                Valid,
                RefusedForged,
            ],
        ),
        (
            2,
            "or",
            [Valid, Valid, Valid, Valid, Valid, Valid, Valid, Invalid],
        ),
        (
            2,
            "and",
            [
                Valid,
                Refused,
                Refused,
                Invalid,
                Invalid,
                Valid,
                Valid,
                RefusedForged,
            ],
        ),
        (
            2,
            "pq_only",
            [
                Valid,
                Refused,
                Valid,
                Valid,
                Invalid,
                Refused,
                Valid,
                RefusedForged,
            ],
        ),
        (
            3,
            "pq_only",
            [
                Valid,
                Refused,
                Valid,
                Valid,
                Invalid,
                Refused,
                Valid,
                RefusedForged,
            ],
        ),
    ];
    let mut checked = 0;
    for (phase, mode, wants) in table {
        for ((what, key, sig), want) in kinds.iter().zip(wants) {
            for front in FRONTS {
                let mut c = srv.client(front, &srv.admin_token).await;
                // reset before every case: a refusal may have rolled it back
                c.set_pq_policy(policy(*phase, true, mode), "table test")
                    .await
                    .unwrap();
                let (rejects, rollbacks) = (metric(REJECT), metric(ROLLBACKS));
                let got = c.verify(key, MSG, sig).await;
                let case = format!("phase {phase}, {mode}, {what}, {front:?}");
                match want {
                    Valid | Invalid => {
                        let r = got.unwrap_or_else(|e| panic!("{case}: {e:?}"));
                        assert_eq!(r.valid, *want == Valid, "{case}");
                        assert_eq!(metric(REJECT), rejects, "{case}: no pq_policy reject");
                    }
                    Refused | RefusedForged => {
                        got.unwrap_err()
                            .expect(409, Code::FailedPrecondition, "pq_policy");
                        assert_eq!(
                            metric(REJECT),
                            rejects + 1.0,
                            "{case}: one pq_policy reject"
                        );
                        let p = c.get_pq_policy().await.unwrap();
                        let rolled = p.policy.as_ref().unwrap().verify_mode == "or";
                        let expect = *want == Refused && *phase < 3;
                        assert_eq!(rolled, expect, "{case}: rolled back?");
                        assert_eq!(
                            metric(ROLLBACKS),
                            rollbacks + if expect { 1.0 } else { 0.0 },
                            "{case}"
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 10 * 8 * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_rolls_a_phase_2_tenant_back_once_and_never_phase_3() {
    let _g = SERIAL.lock().await;
    let srv = TestServer::start().await;
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let k = format!("h-{front:?}").to_lowercase();
        c.create(&k, "hybrid-ed25519-ml-dsa-65").await.unwrap();
        // phase 0 signs classical-only
        c.set_pq_policy(policy(0, false, "or"), "start")
            .await
            .unwrap();
        let classical = c.sign(&k, MSG).await.unwrap().signature;
        assert_eq!(
            independent::parse_bundle(&classical).map(|(e, m)| (e.is_some(), m.is_some())),
            Some((true, false)),
            "phase 0 produces the classical component only"
        );

        let set = c
            .set_pq_policy(policy(2, true, "and"), "move to phase 2")
            .await
            .unwrap();
        assert_eq!(set.source, "admin");
        let before = metric(ROLLBACKS);
        let e = c.verify(&k, MSG, &classical).await.unwrap_err();
        e.expect(409, Code::FailedPrecondition, "pq_policy");
        assert!(e.message.contains("rolled back"), "{}", e.message);
        assert_eq!(metric(ROLLBACKS), before + 1.0);
        let p = c.get_pq_policy().await.unwrap();
        let pol = p.policy.unwrap();
        assert_eq!((pol.phase, pol.verify_mode.as_str()), (2, "or"));
        assert_eq!(p.source, "rollback");
        assert!(p.rolled_back_at_ms > 0 && p.rollback_reason.contains("classical_only"));
        // refused once: the same signature now verifies
        assert!(c.verify(&k, MSG, &classical).await.unwrap().valid);
        assert_eq!(metric(ROLLBACKS), before + 1.0);

        // phase 3: refused every time, never rolled back
        c.set_pq_policy(policy(3, true, "pq_only"), "PQ only")
            .await
            .unwrap();
        for _ in 0..2 {
            c.verify(&k, MSG, &classical).await.unwrap_err().expect(
                409,
                Code::FailedPrecondition,
                "pq_policy",
            );
        }
        let p = c.get_pq_policy().await.unwrap();
        assert_eq!(p.policy.unwrap().verify_mode, "pq_only");
        assert_eq!(p.source, "admin");
        assert_eq!(metric(ROLLBACKS), before + 1.0);
        // phase 3 signs with both components, which verify
        let both = c.sign(&k, MSG).await.unwrap().signature;
        assert!(c.verify(&k, MSG, &both).await.unwrap().valid);

        // invalid policies are refused, naming the field
        c.set_pq_policy(policy(3, true, "or"), "")
            .await
            .unwrap_err()
            .expect(400, Code::InvalidArgument, "invalid_argument");
        c.set_pq_policy(policy(4, true, "or"), "")
            .await
            .unwrap_err()
            .expect(400, Code::InvalidArgument, "invalid_argument");
        c.set_pq_policy(policy(1, true, "xor"), "")
            .await
            .unwrap_err()
            .expect(400, Code::InvalidArgument, "invalid_argument");
    }
    // the rollback is in the audit log, with its reason
    let audit = std::fs::read_dir(srv.data_dir().join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<String>();
    let rollbacks: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"op\":\"pq_policy_rollback\""))
        .collect();
    assert_eq!(rollbacks.len(), 2, "one per front");
    assert!(
        rollbacks[0].contains("\"tenant\":\"admin\"") && rollbacks[0].contains("classical_only")
    );
    assert!(audit.contains("\"op\":\"set_pq_policy\""));
    assert!(audit.contains("\"result\":\"pq_policy\""));

    // a policy survives a restart (stored), and other tenants keep the default
    let mut srv = srv;
    srv.restart().await;
    let mut c = srv.client(Front::Http, &srv.admin_token).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_signatures_verify_independently_and_tampering_fails_under_and() {
    let _g = SERIAL.lock().await;
    let srv = TestServer::start_with(|c| {
        c.pq_default = ron_kms::policy::PqPolicy::for_phase(2);
    })
    .await;
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let k = format!("h-{front:?}").to_lowercase();
        let key = c.create(&k, "hybrid-ed25519-ml-dsa-65").await.unwrap();
        let comps = key.versions[0].components.clone();
        let s = c.sign(&k, MSG).await.unwrap();
        // both components, each verified by RustCrypto from its own SPKI
        assert_eq!(
            independent::verify_hybrid(&comps, MSG, &s.signature),
            Some((Some(true), Some(true)))
        );
        assert_eq!(
            independent::verify_hybrid(&comps, b"other", &s.signature),
            Some((Some(false), Some(false)))
        );
        let v = c.verify(&k, MSG, &s.signature).await.unwrap();
        assert!(v.valid);
        assert_eq!(v.signature_kind, "hybrid");
        let (ed, ml) = independent::parse_bundle(&s.signature).unwrap();
        let (ed, ml) = (ed.unwrap(), ml.unwrap());
        for (what, sig) in [
            ("classical", bundle(Some(&flip(ed.clone(), 0)), Some(&ml))),
            (
                "pq",
                bundle(Some(&ed), Some(&flip(ml.clone(), ml.len() - 1))),
            ),
        ] {
            assert!(
                !c.verify(&k, MSG, &sig).await.unwrap().valid,
                "tampered {what} component fails under and"
            );
        }
        // malformed bundles are invalid signatures, not errors
        for bad in [
            &s.signature[..10],
            &[s.signature.clone(), vec![0]].concat()[..],
            b"",
        ] {
            assert!(!c.verify(&k, MSG, bad).await.unwrap().valid);
        }
    }
}
