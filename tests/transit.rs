//! The Vault-transit-compatible front (docs/transit.md), from outside: hvac
//! (the Python Vault client) drives it as a user would
//! (`tests/python/transit_hvac.py`), and plain HTTP checks that transit
//! calls are audited, admitted and tenant-isolated exactly like `/v1/kms`.
mod common;

use common::independent;
use common::{Front, TestServer};

const ALL_SCOPES: &str = "kms:admin,kms:read,kms:sign,kms:verify,kms:wrap,kms:unwrap";

async fn start_transit(f: impl FnOnce(&mut ron_kms::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.transit_mount = Some("transit".into());
        f(c);
    })
    .await
}

fn audit_records(s: &TestServer) -> Vec<serde_json::Value> {
    let dir = s.data_dir().join("audit");
    ron_kms::audit::chain::segments(&dir)
        .unwrap()
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

/// Item 1: hvac's own methods against the front, every signature checked
/// outside ron-kms; and every call left its audit record under the op
/// `/v1/kms` would have used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_drives_the_transit_front() {
    let mut s = start_transit(|_| {}).await;
    let token = s.token("acme", ALL_SCOPES);
    let other = s.token("umbrella", "kms:admin,kms:read,kms:wrap");
    let addr = format!("http://{}", s.running().http_addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(independent::python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/transit_hvac.py"
            ))
            .env("VAULT_ADDR", addr)
            .env("VAULT_TOKEN", token)
            .env("OTHER_TOKEN", other)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "hvac: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("transit: all hvac checks passed"));
    s.stop().await;

    let records = audit_records(&s);
    let of = |tenant: &str, op: &str, result: &str| {
        records
            .iter()
            .filter(|r| r["tenant"] == tenant && r["op"] == op && r["result"] == result)
            .count()
    };
    for op in [
        "create_key",
        "rotate_key",
        "update_key",
        "delete_key",
        "wrap",
        "unwrap",
        "generate_data_key",
        "sign",
        "verify",
        "mac",
        "verify_mac",
    ] {
        assert!(of("acme", op, "ok") > 0, "no audited {op} for acme");
    }
    // batch items are audited one by one: 3 encrypts + 1 + 1 + ... at least
    assert!(of("acme", "wrap", "ok") >= 3 + 1 + 1 + 1 + 3);
    // the v1 ciphertext refused after min_decryption_version=2 is on record
    assert!(of("acme", "unwrap", "failed_precondition") >= 1);
    // the other tenant's attempt is on record as not found, under its tenant
    assert!(of("umbrella", "wrap", "not_found") >= 1);
    assert!(of("umbrella", "get_key", "not_found") >= 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ron-kms"))
        .args(["audit", "verify"])
        .arg(s.data_dir().join("audit"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the audit chain verifies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Item 2: a second tenant's key is not found (the same answer as a
/// missing key), and a flood is shed with 429 and Retry-After in
/// transit's error shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_is_isolated_and_admitted_like_kms() {
    let s = start_transit(|c| {
        c.admission.tenant_rps = Some(5.0);
        c.admission.tenant_burst = Some(5);
    })
    .await;
    let a = s.token("acme", ALL_SCOPES);
    let b = s.token("umbrella", ALL_SCOPES);
    let mut ca = s.client(Front::Http, &a).await;
    ca.create("signer", "ed25519").await.unwrap();
    let base = format!("http://{}/v1/transit", s.running().http_addr);
    let http = reqwest::Client::new();
    let post = |token: &str, path: &str, body: serde_json::Value| {
        http.post(format!("{base}/{path}"))
            .header("X-Vault-Token", token)
            .json(&body)
            .send()
    };
    let input = serde_json::json!({ "input": "aGVsbG8=" });

    // another tenant's key and a missing key answer alike
    let theirs = post(&b, "sign/signer", input.clone()).await.unwrap();
    let theirs = (
        theirs.status().as_u16(),
        theirs.json::<serde_json::Value>().await.unwrap(),
    );
    let missing = post(&b, "sign/nothing", input.clone()).await.unwrap();
    let missing = (
        missing.status().as_u16(),
        missing.json::<serde_json::Value>().await.unwrap(),
    );
    assert_eq!(theirs.0, 404, "{theirs:?}");
    assert_eq!(missing.0, 404, "{missing:?}");
    let text = |v: &serde_json::Value| {
        v["errors"][0]
            .as_str()
            .unwrap()
            .replace("signer", "nothing")
    };
    assert_eq!(text(&theirs.1), text(&missing.1));
    // no token, a wrong token: 403 in transit's shape
    let r = http
        .post(format!("{base}/sign/signer"))
        .json(&input)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.json::<serde_json::Value>().await.unwrap()["errors"][0].is_string());

    // a flood: 40 signs at once against a 5/s budget with a burst of 5
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..40 {
        sends.spawn(post(&a, "sign/signer", input.clone()));
    }
    let (mut ok, mut shed) = (0, 0);
    while let Some(r) = sends.join_next().await {
        let r = r.unwrap().unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert!(
                    r.headers().get("retry-after").is_some(),
                    "429 carries Retry-After"
                );
                let v: serde_json::Value = r.json().await.unwrap();
                assert!(v["errors"][0].as_str().unwrap().contains("rate"), "{v}");
                shed += 1;
            }
            other => panic!("unexpected {other}: {:?}", r.text().await),
        }
    }
    println!("flood: {ok} signed, {shed} shed with 429");
    assert!((1..=10).contains(&ok), "{ok} signed");
    assert!(shed >= 30, "{shed} shed");
}

/// Off unless enabled: without `KMS_TRANSIT_MOUNT` the path is the native
/// front's unknown route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_is_off_by_default() {
    let s = TestServer::start().await;
    let t = s.token("acme", ALL_SCOPES);
    let r = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/transit/keys?list=true",
            s.running().http_addr
        ))
        .header("X-Vault-Token", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found", "{v}");
}

/// What hvac cannot send: a verify batch, PUT for writes, and the refusals
/// docs/transit.md lists — each a 400 (or 404/405) in transit's shape,
/// naming the field, never ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_verify_put_and_refusals_over_plain_http() {
    let s = start_transit(|_| {}).await;
    let t = s.token("acme", ALL_SCOPES);
    let mut c = s.client(Front::Http, &t).await;
    c.create("ed", "ed25519").await.unwrap();
    c.create("aes", "aes-256-gcm").await.unwrap();
    let base = format!("http://{}/v1/transit", s.running().http_addr);
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        let rb = http
            .request(method, format!("{base}/{path}"))
            .header("X-Vault-Token", &t)
            .json(&body);
        async move {
            let r = rb.send().await.unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    use reqwest::Method as M;
    use serde_json::json;

    // PUT writes like POST (transit's clients use both)
    let (st, v) = call(M::PUT, "sign/ed", json!({ "input": "b25l" })).await;
    assert_eq!(st, 200, "{v}");
    let one = v["data"]["signature"].as_str().unwrap().to_string();
    let (st, v) = call(M::POST, "sign/ed", json!({ "input": "dHdv" })).await;
    assert_eq!(st, 200, "{v}");
    let two = v["data"]["signature"].as_str().unwrap().to_string();
    let (st, v) = call(
        M::POST,
        "verify/ed",
        json!({ "batch_input": [
            { "input": "b25l", "signature": one, "reference": "a" },
            { "input": "dHdv", "signature": two, "reference": "b" },
            { "input": "dHdv", "signature": one, "reference": "c" },
            { "input": "dHdv", "signature": "not-vault", "reference": "d" },
        ]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let r = &v["data"]["batch_results"];
    assert_eq!(
        (
            r[0]["valid"].clone(),
            r[1]["valid"].clone(),
            r[2]["valid"].clone()
        ),
        (json!(true), json!(true), json!(false)),
        "{v}"
    );
    assert!(r[3]["error"].as_str().unwrap().contains("vault:v"), "{v}");
    let refs: Vec<_> = (0..4).map(|i| r[i]["reference"].clone()).collect();
    assert_eq!(refs, [json!("a"), json!("b"), json!("c"), json!("d")]);

    // refused, clearly: (method, path, body, what the message names)
    let refusals = [
        (
            M::POST,
            "encrypt/aes",
            json!({ "plaintext": "eA==", "nonce": "AAAA" }),
            "nonce",
        ),
        (
            M::POST,
            "encrypt/aes",
            json!({ "plaintext": "eA==", "bits": 256 }),
            "bits",
        ),
        (
            M::POST,
            "encrypt/aes",
            json!({ "plaintext": "eA==", "colour": "red" }),
            "colour",
        ),
        (
            M::POST,
            "encrypt/aes",
            json!({ "plaintext": "eA==", "type": "aes256-gcm96" }),
            "type",
        ),
        (
            M::POST,
            "encrypt/aes",
            json!({ "context": "eA==", "batch_input": [{ "plaintext": "eA==" }] }),
            "each item",
        ),
        (
            M::POST,
            "decrypt/aes",
            json!({ "ciphertext": "vault:v1:AAAA", "key_version": 1 }),
            "key_version",
        ),
        (
            M::POST,
            "sign/ed",
            json!({ "input": "eA==", "hash_algorithm": "sha2-384" }),
            "hash_algorithm",
        ),
        (
            M::POST,
            "sign/ed/sha2-512",
            json!({ "input": "eA==" }),
            "hash_algorithm",
        ),
        (
            M::POST,
            "sign/ed",
            json!({ "input": "eA==", "signature_algorithm": "pss" }),
            "signature_algorithm",
        ),
        (
            M::POST,
            "sign/ed",
            json!({ "input": "eA==", "context": "eA==" }),
            "context",
        ),
        (
            M::POST,
            "verify/ed",
            json!({ "input": "eA==", "signature": one, "key_version": 1 }),
            "key_version",
        ),
        (
            M::POST,
            "keys/new",
            json!({ "type": "aes256-gcm96", "derived": true }),
            "derived",
        ),
        (
            M::POST,
            "keys/new",
            json!({ "type": "ecdsa-p384" }),
            "ecdsa-p384",
        ),
        (
            M::POST,
            "keys/new",
            json!({ "type": "ml-dsa" }),
            "parameter_set",
        ),
        (
            M::POST,
            "keys/aes/config",
            json!({ "exportable": true }),
            "exportable",
        ),
        (
            M::POST,
            "keys/aes/config",
            json!({ "auto_rotate_period": "24h" }),
            "auto_rotate_period",
        ),
        (
            M::POST,
            "datakey/plaintext/aes",
            json!({ "bits": 100 }),
            "bits",
        ),
    ];
    for (m, path, body, names) in refusals {
        let (st, v) = call(m.clone(), path, body.clone()).await;
        assert_eq!(st, 400, "{m} {path} {body}: {v}");
        let msg = v["errors"][0].as_str().unwrap_or_default();
        assert!(msg.contains(names), "{m} {path} {body}: {v}");
    }
    // nothing was made by a refused create
    let (st, _) = call(M::GET, "keys/new", json!({})).await;
    assert_eq!(st, 404);
    // routes transit has and ron-kms does not: 404 saying so; a wrong verb: 405
    for path in ["export/signing-key/ed", "backup/ed", "random/32", "hash"] {
        let (st, v) = call(M::POST, path, json!({})).await;
        assert_eq!(st, 404, "{path}: {v}");
        assert!(
            v["errors"][0].as_str().unwrap().contains("not supported"),
            "{v}"
        );
    }
    let (st, v) = call(M::GET, "encrypt/aes", json!({})).await;
    assert_eq!(st, 405, "{v}");
    assert!(v["errors"][0].is_string(), "{v}");

    // a token without the route's scope learns nothing about the key (not
    // even that its hash is not the one asked for): 403 before any check
    c.create("tags", "hmac-sha512").await.unwrap();
    let weak = s.token("acme", "kms:verify");
    for (path, body) in [
        ("hmac/tags", json!({ "input": "eA==" })),
        (
            "sign/ed",
            json!({ "input": "eA==", "marshaling_algorithm": "jws" }),
        ),
    ] {
        let r = http
            .post(format!("{base}/{path}"))
            .header("X-Vault-Token", &weak)
            .json(&body)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(st, 403, "{path}: {v}");
        assert!(!v["errors"][0].as_str().unwrap().contains("sha2"), "{v}");
    }
}
