//! JOSE (issue 34, items 3 and 4; docs/jose.md): SignJws tokens verify
//! with an independent JOSE library using only the keys the unauthenticated
//! JWKS endpoint publishes; the JWKS holds exactly the published keys'
//! enabled versions, tenant by tenant, and follows disable and unpublish at
//! once; Verify takes a compact JWS.
mod common;

use common::jose::fetch_jwks;
use common::{independent, Client, Front, TestServer, FRONTS};
use ron_kms::proto::{CreateKeyRequest, UpdateKeyRequest, VerifyRequest};

const SCOPES: &str = "kms:admin,kms:read,kms:sign,kms:verify";

async fn create(c: &mut Client, name: &str, alg: &str, published: bool) {
    c.create_key(CreateKeyRequest {
        name: name.into(),
        algorithm: alg.into(),
        published,
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn publish(c: &mut Client, name: &str, on: bool) {
    c.update_key(UpdateKeyRequest {
        name: name.into(),
        published: Some(on),
        ..Default::default()
    })
    .await
    .unwrap();
}

fn kids(jwks: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

/// Item 3: JWTs from SignJws verify with jwcrypto (EdDSA, ES256) and
/// pyca's ML-DSA (ML-DSA-65) using only the JWKS; on both fronts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_verify_outside_with_only_the_jwks() {
    let s = TestServer::start().await;
    let t = s.token("acme", SCOPES);
    let http = s.running().http_addr.to_string();
    let mut tokens = Vec::new();
    for front in FRONTS {
        let mut c = s.client(front, &t).await;
        let tag = format!("{front:?}").to_lowercase();
        for (alg, jose) in [
            ("ed25519", "EdDSA"),
            ("ecdsa-p256", "ES256"),
            ("ml-dsa-65", "ML-DSA-65"),
        ] {
            let name = format!("{tag}-{alg}");
            create(&mut c, &name, alg, true).await;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let claims = serde_json::json!({
                "iss": "https://auth.example",
                "sub": format!("user-{tag}"),
                "aud": "api",
                "iat": now,
                "exp": now + 3600,
            });
            let r = c
                .sign_jws(&name, r#"{"typ":"JWT"}"#, claims.to_string().as_bytes())
                .await
                .unwrap();
            assert_eq!(
                (r.alg.as_str(), r.kid.clone()),
                (jose, format!("{name}#v1"))
            );
            // and Verify takes it back, by name (the kid names the version)
            let v = c
                .verify_req(VerifyRequest {
                    key: name.clone(),
                    jws: r.jws.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(v.valid, "{front:?} {alg}");
            tokens.push(serde_json::json!({
                "jws": r.jws, "alg": r.alg, "kid": r.kid, "claims": claims,
            }));
        }
    }
    let (status, headers, jwks) = fetch_jwks(&http, "acme", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"].to_str().unwrap(),
        "application/jwk-set+json"
    );
    assert_eq!(kids(&jwks).len(), 6, "{jwks}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.json");
    std::fs::write(
        &path,
        serde_json::json!({ "jwks": jwks, "tokens": tokens }).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(independent::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/check_jws.py"
        ))
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified 6 JWS tokens"));
}

/// SignJws refuses what would let a caller choose the algorithm or change
/// how the token reads; Verify of a JWS checks its alg and kid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_cannot_choose_alg_or_kid() {
    let s = TestServer::start().await;
    let t = s.token("acme", SCOPES);
    for front in FRONTS {
        let mut c = s.client(front, &t).await;
        let tag = format!("{front:?}").to_lowercase();
        let (ed, p256) = (format!("ed-{tag}"), format!("p256-{tag}"));
        create(&mut c, &ed, "ed25519", false).await;
        create(&mut c, &p256, "ecdsa-p256", false).await;
        create(&mut c, &format!("aes-{tag}"), "aes-256-gcm", false).await;
        create(
            &mut c,
            &format!("hy-{tag}"),
            "hybrid-ed25519-ml-dsa-65",
            false,
        )
        .await;
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"EdDSA"}"#,
            r#"{"kid":"other#v1"}"#,
            r#"{"crit":["exp"]}"#,
            r#"{"b64":false}"#,
            r#"["not","an","object"]"#,
            "{",
        ] {
            let e = c.sign_jws(&ed, header, b"{}").await.unwrap_err();
            e.expect(400, tonic::Code::InvalidArgument, "invalid_argument");
        }
        for k in [format!("aes-{tag}"), format!("hy-{tag}")] {
            let e = c.sign_jws(&k, "", b"{}").await.unwrap_err();
            assert_eq!(
                e.code,
                if k.starts_with("aes") {
                    "wrong_key_purpose"
                } else {
                    "invalid_argument"
                },
                "{k}: {e:?}"
            );
        }
        // a JWS for one key is refused under another key's alg or kid
        let good = c.sign_jws(&ed, "", b"{\"a\":1}").await.unwrap().jws;
        let e = c
            .verify_req(VerifyRequest {
                key: p256.clone(),
                jws: good.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        e.expect(400, tonic::Code::InvalidArgument, "invalid_argument");
        // a JWS (without a kid) under a key that does not sign is answered
        // as Verify answers it; with a kid naming another key, refused
        let no_kid = format!("eyJhbGciOiJFZERTQSJ9.{}", good.split_once('.').unwrap().1);
        let e = c
            .verify_req(VerifyRequest {
                key: format!("aes-{tag}"),
                jws: no_kid,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, "wrong_key_purpose", "{e:?}");
        let e = c
            .verify_req(VerifyRequest {
                key: format!("aes-{tag}"),
                jws: good.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(e.message.contains("is not a version of"), "{e:?}");
        // a changed payload is not valid
        let (h, rest) = good.split_once('.').unwrap();
        let sig = rest.split_once('.').unwrap().1;
        let forged = format!("{h}.eyJhIjoyfQ.{sig}");
        let v = c
            .verify_req(VerifyRequest {
                key: ed.clone(),
                jws: forged,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(!v.valid);
        // message and jws together are refused
        let e = c
            .verify_req(VerifyRequest {
                key: ed.clone(),
                jws: good,
                message: b"x".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        e.expect(400, tonic::Code::InvalidArgument, "invalid_argument");
        // only keys with a JWK form can be published
        let e = c
            .update_key(UpdateKeyRequest {
                name: format!("hy-{tag}"),
                published: Some(true),
                ..Default::default()
            })
            .await
            .unwrap_err();
        e.expect(400, tonic::Code::InvalidArgument, "invalid_argument");
    }
}

/// Item 4: the JWKS is the published keys' enabled versions, tenant by
/// tenant, and follows rotate, disable and unpublish on the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_follows_publish_disable_and_tenants() {
    let s = TestServer::start().await;
    let http = s.running().http_addr.to_string();
    let a = s.token("acme", SCOPES);
    let b = s.token("umbrella", SCOPES);
    let mut ca = s.client(Front::Http, &a).await;
    let mut cb = s.client(Front::Grpc, &b).await;
    create(&mut ca, "web", "ed25519", true).await;
    create(&mut ca, "api", "ecdsa-p256", false).await;
    create(&mut ca, "secret", "ed25519", false).await;
    create(&mut cb, "theirs", "ml-dsa-65", true).await;
    create(&mut cb, "hidden", "ed25519", false).await;

    let (_, _, j) = fetch_jwks(&http, "acme", None).await;
    assert_eq!(kids(&j), ["web#v1"]);
    let (_, _, j) = fetch_jwks(&http, "umbrella", None).await;
    assert_eq!(kids(&j), ["theirs#v1"]);
    assert_eq!(j["keys"][0]["kty"], "AKP");
    // an unknown tenant, or no name at all, looks like a tenant with nothing
    for t in ["nobody", "BAD_NAME"] {
        let (st, _, j) = fetch_jwks(&http, t, None).await;
        assert_eq!((st, kids(&j).len()), (200, 0), "{t}");
    }

    // publish by update, rotate: both versions show
    publish(&mut ca, "api", true).await;
    ca.rotate("web", "").await.unwrap();
    let (_, h, j) = fetch_jwks(&http, "acme", None).await;
    assert_eq!(kids(&j), ["api#v1", "web#v1", "web#v2"]);
    let api = j["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "api#v1")
        .unwrap()
        .clone();
    assert_eq!(
        (api["kty"].as_str(), api["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    // cacheable: the same set answers 304 to its ETag
    let etag = h["etag"].to_str().unwrap().to_string();
    assert!(h["cache-control"]
        .to_str()
        .unwrap()
        .contains("must-revalidate"));
    let (st, _, _) = fetch_jwks(&http, "acme", Some(&etag)).await;
    assert_eq!(st, 304);
    let (st, _, _) = fetch_jwks(&http, "acme", Some(&format!("\"other\", W/{etag}"))).await;
    assert_eq!(st, 304, "weak comparison, in a list");

    // disable v1: gone from the next answer (and the old ETag is stale)
    ca.set_state("web", 1, "disabled").await.unwrap();
    let (st, _, j) = fetch_jwks(&http, "acme", Some(&etag)).await;
    assert_eq!(st, 200);
    assert_eq!(kids(&j), ["api#v1", "web#v2"]);
    // unpublish: gone
    publish(&mut ca, "api", false).await;
    let (_, _, j) = fetch_jwks(&http, "acme", None).await;
    assert_eq!(kids(&j), ["web#v2"]);
    // a version below min_decryption_version (which Verify refuses) is gone
    ca.rotate("web", "").await.unwrap();
    let (_, _, j) = fetch_jwks(&http, "acme", None).await;
    assert_eq!(kids(&j), ["web#v2", "web#v3"]);
    ca.update_key(UpdateKeyRequest {
        name: "web".into(),
        min_decryption_version: Some(3),
        ..Default::default()
    })
    .await
    .unwrap();
    let (_, _, j) = fetch_jwks(&http, "acme", None).await;
    assert_eq!(kids(&j), ["web#v3"]);
    // never another tenant's, never an unpublished key
    let (_, _, j) = fetch_jwks(&http, "umbrella", None).await;
    assert_eq!(kids(&j), ["theirs#v1"]);
    let all = fetch_jwks(&http, "acme", None).await.2.to_string();
    assert!(!all.contains("secret") && !all.contains("theirs") && !all.contains("hidden"));
}
