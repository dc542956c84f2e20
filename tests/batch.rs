//! Batch RPCs (`SignBatch`, `VerifyBatch`, `WrapBatch`, `UnwrapBatch` and
//! their HTTP mirrors under `/v1/kms/batch/`): every item gets its own
//! result or error, exactly as the single call would; admission is charged
//! per item; every item is audited on its own.
mod common;

use common::{independent, Front, TestServer, FRONTS};
use ron_kms::proto::*;

fn sign_item(key: &str, message: &[u8]) -> SignRequest {
    SignRequest {
        context: Vec::new(),
        key: key.into(),
        message: message.to_vec(),
        op_id: String::new(),
        ..Default::default()
    }
}

fn ok_of<T: Clone>(ok: &Option<T>, error: &Option<ItemError>, what: &str) -> T {
    match (ok, error) {
        (Some(v), None) => v.clone(),
        _ => panic!("{what}: expected ok, got error {error:?}"),
    }
}

fn err_of<T: std::fmt::Debug>(ok: &Option<T>, error: &Option<ItemError>) -> ItemError {
    assert!(
        ok.is_none(),
        "an item holds ok or error, never both: {ok:?}"
    );
    error.clone().expect("an item holds ok or error")
}

#[tokio::test]
async fn sign_batch_answers_each_item_as_the_single_call_would() {
    let srv = TestServer::start().await;
    let other = srv.token("other", "kms:admin,kms:sign,kms:verify,kms:read");
    for (n, front) in FRONTS.into_iter().enumerate() {
        let (bsign, bwrap, theirs) = (
            format!("bsign{n}"),
            format!("bwrap{n}"),
            format!("theirs{n}"),
        );
        let mut c = srv.client(front, &srv.admin_token).await;
        let key = c.create(&bsign, "ed25519").await.unwrap();
        let der = key.versions[0].public_key_der.clone();
        c.create(&bwrap, "ml-kem-768").await.unwrap();
        // another tenant's key looks exactly like a missing one
        let mut o = srv.client(front, &other).await;
        o.create(&theirs, "ed25519").await.unwrap();

        let items = vec![
            sign_item(&bsign, b"first"),
            sign_item("nosuch", b"x"),
            sign_item(&bsign, b"second"),
            sign_item(&bwrap, b"x"),
            sign_item(&theirs, b"x"),
            sign_item("bad name!", b"x"),
        ];
        let r = c
            .sign_batch(SignBatchRequest { items })
            .await
            .expect("the batch itself succeeds");
        assert_eq!(r.items.len(), 6, "{front:?}: one answer per item, in order");
        for (i, msg) in [(0, &b"first"[..]), (2, &b"second"[..])] {
            let ok = ok_of(&r.items[i].ok, &r.items[i].error, "a good item");
            assert_eq!(ok.kid, format!("{bsign}#v1"));
            assert_eq!(ok.algorithm, "ed25519");
            assert!(
                independent::verify("ed25519", &der, msg, &ok.signature),
                "{front:?}: item {i}'s signature verifies independently"
            );
        }
        let missing = err_of(&r.items[1].ok, &r.items[1].error);
        assert_eq!(missing.code, "not_found");
        assert!(!missing.retryable);
        assert_eq!(missing.retry_after_ms, 0);
        assert_eq!(
            err_of(&r.items[3].ok, &r.items[3].error).code,
            "wrong_key_purpose"
        );
        let theirs_name = theirs;
        let theirs = err_of(&r.items[4].ok, &r.items[4].error);
        assert_eq!(theirs.code, "not_found");
        assert_eq!(
            theirs.message.replace(theirs_name.as_str(), "nosuch"),
            missing.message,
            "{front:?}: another tenant's key reads like a missing one"
        );
        assert_eq!(
            err_of(&r.items[5].ok, &r.items[5].error).code,
            "invalid_argument"
        );

        // the signatures verify through VerifyBatch too, item by item
        let sig = r.items[0].ok.clone().unwrap().signature;
        let v = c
            .verify_batch(VerifyBatchRequest {
                items: vec![
                    VerifyRequest {
                        context: Vec::new(),
                        key: bsign.clone(),
                        message: b"first".to_vec(),
                        signature: sig.clone(),
                        ..Default::default()
                    },
                    VerifyRequest {
                        context: Vec::new(),
                        key: bsign.clone(),
                        message: b"tampered".to_vec(),
                        signature: sig.clone(),
                        ..Default::default()
                    },
                    VerifyRequest {
                        context: Vec::new(),
                        key: "nosuch".into(),
                        message: b"first".to_vec(),
                        signature: sig,
                        ..Default::default()
                    },
                ],
            })
            .await
            .unwrap();
        assert!(ok_of(&v.items[0].ok, &v.items[0].error, "verify").valid);
        assert!(
            !ok_of(&v.items[1].ok, &v.items[1].error, "verify").valid,
            "{front:?}: a bad signature is valid=false, not an error"
        );
        assert_eq!(err_of(&v.items[2].ok, &v.items[2].error).code, "not_found");
    }
}

#[tokio::test]
async fn wrap_and_unwrap_batches_round_trip_and_fail_per_item() {
    let srv = TestServer::start().await;
    for (n, front) in FRONTS.into_iter().enumerate() {
        let mut c = srv.client(front, &srv.admin_token).await;
        let name = format!("bkem{n}");
        c.create(&name, "ml-kem-768").await.unwrap();
        let plaintexts: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 16 + i as usize]).collect();
        let w = c
            .wrap_batch(WrapBatchRequest {
                items: plaintexts
                    .iter()
                    .map(|p| WrapRequest {
                        key: name.clone(),
                        plaintext: p.clone(),
                        aad: b"ctx".to_vec(),
                        op_id: String::new(),
                    })
                    .chain([WrapRequest {
                        key: name.clone(),
                        plaintext: vec![0; 8193],
                        ..Default::default()
                    }])
                    .collect(),
            })
            .await
            .unwrap();
        assert_eq!(w.items.len(), 6);
        assert_eq!(
            err_of(&w.items[5].ok, &w.items[5].error).code,
            "invalid_argument",
            "{front:?}: an over-long plaintext fails its own item"
        );
        let mut cts: Vec<Vec<u8>> = w.items[..5]
            .iter()
            .map(|i| ok_of(&i.ok, &i.error, "wrap").ciphertext)
            .collect();
        // one tampered envelope, one with the wrong aad
        let last = cts[4].len() - 1;
        cts[4][last] ^= 1;
        let u = c
            .unwrap_batch(UnwrapBatchRequest {
                items: cts
                    .iter()
                    .enumerate()
                    .map(|(i, ct)| UnwrapRequest {
                        key: String::new(),
                        ciphertext: ct.clone(),
                        aad: if i == 3 {
                            b"other".to_vec()
                        } else {
                            b"ctx".to_vec()
                        },
                    })
                    .collect(),
            })
            .await
            .unwrap();
        for (i, (item, plaintext)) in u.items.iter().zip(&plaintexts).take(3).enumerate() {
            let ok = ok_of(&item.ok, &item.error, "unwrap");
            assert_eq!(&ok.plaintext, plaintext, "{front:?}: item {i}");
            assert_eq!(ok.kid, format!("{name}#v1"));
        }
        for i in [3, 4] {
            assert_eq!(
                err_of(&u.items[i].ok, &u.items[i].error).code,
                "unwrap_failed",
                "{front:?}: item {i}"
            );
        }
    }
}

#[tokio::test]
async fn a_batch_is_bounded_and_may_be_empty() {
    let srv = TestServer::start().await;
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let empty = c
            .sign_batch(SignBatchRequest { items: vec![] })
            .await
            .unwrap();
        assert!(empty.items.is_empty());
        let too_many = (0..=ron_kms::service::MAX_BATCH_ITEMS)
            .map(|_| sign_item("any", b"m"))
            .collect();
        let e = c
            .sign_batch(SignBatchRequest { items: too_many })
            .await
            .unwrap_err();
        e.expect(400, tonic::Code::InvalidArgument, "invalid_argument");
        assert!(e.message.contains("at most 256"), "{}", e.message);
        // a batch without credentials is refused as a whole
        let mut anon = srv.client(front, "").await;
        anon.sign_batch(SignBatchRequest {
            items: vec![sign_item("any", b"m")],
        })
        .await
        .unwrap_err()
        .expect(401, tonic::Code::Unauthenticated, "unauthenticated");
        // a token without the scope: every item is refused on its own
        let reader = srv.token("admin", "kms:verify");
        let mut r = srv.client(front, &reader).await;
        let out = r
            .sign_batch(SignBatchRequest {
                items: vec![sign_item("any", b"m"), sign_item("any", b"n")],
            })
            .await
            .unwrap();
        for i in &out.items {
            assert_eq!(err_of(&i.ok, &i.error).code, "permission_denied");
        }
    }
}

#[tokio::test]
async fn admission_charges_every_item() {
    // 10 units a second, a bucket of 10: an Ed25519 sign costs 1 unit, so a
    // batch of 30 signs gets at most ~10 through and the rest are rate
    // limited, each with its own retry advice.
    let srv = TestServer::start_with(|c| {
        c.admission.tenant_rps = Some(10.0);
        c.admission.tenant_burst = Some(10);
    })
    .await;
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    c.create("metered", "ed25519").await.unwrap();
    // let the bucket refill after the create
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let out = c
        .sign_batch(SignBatchRequest {
            items: (0..30).map(|_| sign_item("metered", b"m")).collect(),
        })
        .await
        .unwrap();
    let ok = out.items.iter().filter(|i| i.ok.is_some()).count();
    let limited: Vec<_> = out
        .items
        .iter()
        .filter_map(|i| i.error.as_ref())
        .filter(|e| e.code == "rate_limit")
        .collect();
    assert!(
        (8..=12).contains(&ok),
        "about one bucket's worth of items got through: {ok}"
    );
    assert_eq!(ok + limited.len(), 30, "every other item is rate limited");
    for e in limited {
        assert!(e.retryable);
        assert!(e.retry_after_ms > 0, "{e:?}");
    }
    // and the bucket is empty for single calls too
    c.sign("metered", b"m").await.unwrap_err().expect(
        429,
        tonic::Code::ResourceExhausted,
        "rate_limit",
    );
}

#[tokio::test]
async fn every_item_has_its_own_audit_record() {
    let mut srv = TestServer::start().await;
    let mut c = srv.client(Front::Http, &srv.admin_token).await;
    c.create("audited", "ed25519").await.unwrap();
    let msgs: Vec<&[u8]> = vec![b"one", b"two", b"three"];
    let out = c
        .sign_batch(SignBatchRequest {
            items: msgs
                .iter()
                .map(|m| sign_item("audited", m))
                .chain([sign_item("missing", b"four")])
                .collect(),
        })
        .await
        .unwrap();
    assert_eq!(out.items.len(), 4);
    let mut keyed = Vec::new();
    for m in &msgs {
        keyed.push(c.input_hmac(m).await);
    }
    srv.stop().await;
    let dir = srv.data_dir().join("audit");
    let segs = ron_kms::audit::chain::segments(&dir).unwrap();
    let text: String = segs
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let signs: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["op"] == "sign")
        .collect();
    assert_eq!(signs.len(), 4, "one record per item: {signs:?}");
    let rid = signs[0]["request_id"].as_str().unwrap();
    let base = rid.strip_suffix("/0").expect("item 0's request id");
    for (i, v) in signs.iter().enumerate() {
        assert_eq!(v["request_id"], format!("{base}/{i}"));
    }
    for (v, k) in signs.iter().zip(&keyed) {
        assert_eq!(v["result"], "ok");
        assert_eq!(v["kid"], "audited#v1");
        assert_eq!(v["input_hmac"], *k);
    }
    assert_eq!(signs[3]["result"], "not_found");
    // and the chain verifies
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ron-kms"))
        .args(["audit", "verify"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
