//! Refusals with their exact status on both fronts: tenant isolation, token
//! scopes, unknown fields, oversize bodies, malformed base64, unknown
//! algorithms, wrong key purpose, idempotent retries and their conflicts.
mod common;

use common::{Front, TestServer, FRONTS};
use ron_kms::proto::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_key_looks_exactly_like_a_missing_one() {
    let srv = TestServer::start().await;
    let tok_b = srv.token(
        "tenant-b",
        "kms:admin,kms:read,kms:sign,kms:verify,kms:wrap,kms:unwrap",
    );
    for front in FRONTS {
        let mut a = srv.client(front, &srv.admin_token).await;
        let mut b = srv.client(front, &tok_b).await;
        let sk = format!("sig-{front:?}").to_lowercase();
        let wk = format!("wrap-{front:?}").to_lowercase();
        a.create(&sk, "ed25519").await.unwrap();
        a.create(&wk, "aes-256-gcm").await.unwrap();
        let sig = a.sign(&sk, b"m").await.unwrap();
        let ct = a.wrap(&wk, b"secret", b"").await.unwrap().ciphertext;

        // Every operation on A's key, from B, against the same operation on
        // a name that exists nowhere: same status, same code, same message.
        let cases: Vec<(common::ApiErr, common::ApiErr)> = vec![
            (
                b.get_key(&sk, false).await.unwrap_err(),
                b.get_key("nope", false).await.unwrap_err(),
            ),
            (
                b.sign(&sk, b"m").await.unwrap_err(),
                b.sign("nope", b"m").await.unwrap_err(),
            ),
            (
                b.verify(&format!("{sk}#v1"), b"m", &sig.signature)
                    .await
                    .unwrap_err(),
                b.verify("nope#v1", b"m", &sig.signature).await.unwrap_err(),
            ),
            (
                b.rotate(&sk, "").await.unwrap_err(),
                b.rotate("nope", "").await.unwrap_err(),
            ),
            (
                b.set_state(&sk, 1, "disabled").await.unwrap_err(),
                b.set_state("nope", 1, "disabled").await.unwrap_err(),
            ),
            (
                b.wrap(&wk, b"x", b"").await.unwrap_err(),
                b.wrap("nope", b"x", b"").await.unwrap_err(),
            ),
        ];
        for (theirs, missing) in cases {
            theirs.expect(404, Code::NotFound, "not_found");
            missing.expect(404, Code::NotFound, "not_found");
            let norm = |m: &str| {
                m.replace(&sk, "NAME")
                    .replace(&wk, "NAME")
                    .replace("nope", "NAME")
            };
            assert_eq!(norm(&theirs.message), norm(&missing.message));
        }
        b.unwrap("", &ct, b"")
            .await
            .unwrap_err()
            .expect(404, Code::NotFound, "not_found");
        // B's listing shows none of A's keys; B may reuse A's names freely.
        assert!(b
            .list_keys(100, "")
            .await
            .unwrap()
            .keys
            .iter()
            .all(|k| k.name != sk));
        b.create(&sk, "ml-dsa-44").await.unwrap();
        assert_eq!(a.get_key(&sk, false).await.unwrap().algorithm, "ed25519");
        assert_eq!(b.get_key(&sk, false).await.unwrap().algorithm, "ml-dsa-44");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes() {
    let srv = TestServer::start().await;
    let verify_only = srv.token("admin", "kms:verify");
    let signer = srv.token("admin", "kms:sign");
    for front in FRONTS {
        let name = format!("k-{front:?}").to_lowercase();
        let mut admin = srv.client(front, &srv.admin_token).await;
        admin.create(&name, "ed25519").await.unwrap();

        let mut v = srv.client(front, &verify_only).await;
        v.sign(&name, b"m").await.unwrap_err().expect(
            403,
            Code::PermissionDenied,
            "permission_denied",
        );
        v.create("other", "ed25519").await.unwrap_err().expect(
            403,
            Code::PermissionDenied,
            "permission_denied",
        );
        v.get_key(&name, false).await.unwrap_err().expect(
            403,
            Code::PermissionDenied,
            "permission_denied",
        );
        v.wrap(&name, b"x", b"").await.unwrap_err().expect(
            403,
            Code::PermissionDenied,
            "permission_denied",
        );
        let mut s = srv.client(front, &signer).await;
        let sig = s.sign(&name, b"m").await.unwrap();
        assert!(
            v.verify(&sig.kid, b"m", &sig.signature)
                .await
                .unwrap()
                .valid
        );
        s.verify(&sig.kid, b"m", &sig.signature)
            .await
            .unwrap_err()
            .expect(403, Code::PermissionDenied, "permission_denied");

        for bad in ["", "rkms_not-a-real-token", "Bearer", "garbage"] {
            let mut c = srv.client(front, bad).await;
            c.sign(&name, b"m").await.unwrap_err().expect(
                401,
                Code::Unauthenticated,
                "unauthenticated",
            );
        }
        // a real token with one character changed
        let mut forged = srv.admin_token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        let mut c = srv.client(front, &forged).await;
        c.list_keys(10, "").await.unwrap_err().expect(
            401,
            Code::Unauthenticated,
            "unauthenticated",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_exact_statuses() {
    let srv = TestServer::start().await;
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let sk = format!("s-{front:?}").to_lowercase();
        let wk = format!("w-{front:?}").to_lowercase();
        c.create(&sk, "ecdsa-p256").await.unwrap();
        c.create(&wk, "ml-kem-768").await.unwrap();

        // unknown algorithm, bad names, purpose mismatch at creation
        c.create("x", "rsa-2048").await.unwrap_err().expect(
            400,
            Code::InvalidArgument,
            "unknown_algorithm",
        );
        c.create("x", "").await.unwrap_err().expect(
            400,
            Code::InvalidArgument,
            "unknown_algorithm",
        );
        c.create("Bad Name", "ed25519").await.unwrap_err().expect(
            400,
            Code::InvalidArgument,
            "invalid_argument",
        );
        c.create_key(CreateKeyRequest {
            name: "x".into(),
            algorithm: "ed25519".into(),
            purpose: "wrap".into(),
            op_id: String::new(),
            published: false,
        })
        .await
        .unwrap_err()
        .expect(400, Code::InvalidArgument, "invalid_argument");
        c.create(&sk, "ed25519").await.unwrap_err().expect(
            409,
            Code::AlreadyExists,
            "already_exists",
        );

        // wrong key purpose, both ways
        c.sign(&wk, b"m").await.unwrap_err().expect(
            400,
            Code::FailedPrecondition,
            "wrong_key_purpose",
        );
        c.verify(&wk, b"m", b"sig").await.unwrap_err().expect(
            400,
            Code::FailedPrecondition,
            "wrong_key_purpose",
        );
        c.wrap(&sk, b"m", b"").await.unwrap_err().expect(
            400,
            Code::FailedPrecondition,
            "wrong_key_purpose",
        );

        // bad references and sizes
        c.sign(&format!("{sk}#v0"), b"m").await.unwrap_err().expect(
            400,
            Code::InvalidArgument,
            "invalid_argument",
        );
        c.sign(&format!("{sk}#v9"), b"m").await.unwrap_err().expect(
            404,
            Code::NotFound,
            "not_found",
        );
        c.wrap(&wk, &vec![0u8; 8 * 1024 + 1], b"")
            .await
            .unwrap_err()
            .expect(400, Code::InvalidArgument, "invalid_argument");
        assert!(c.wrap(&wk, &vec![0u8; 8 * 1024], b"").await.is_ok());
        c.unwrap("", b"not an envelope at all", b"")
            .await
            .unwrap_err()
            .expect(400, Code::InvalidArgument, "invalid_argument");
        c.set_state(&sk, 1, "paused").await.unwrap_err().expect(
            400,
            Code::InvalidArgument,
            "invalid_argument",
        );
        c.datakey(GenerateDataKeyRequest {
            key: wk.clone(),
            length: 8,
            ..Default::default()
        })
        .await
        .unwrap_err()
        .expect(400, Code::InvalidArgument, "invalid_argument");

        // a body over 1 MiB
        c.sign(&sk, &vec![7u8; 1024 * 1024 + 1])
            .await
            .unwrap_err()
            .expect(413, Code::ResourceExhausted, "too_large");
        // ...while a large message under the cap signs fine
        assert!(c.sign(&sk, &vec![7u8; 700 * 1024]).await.is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_is_strict() {
    let srv = TestServer::start().await;
    let mut c = srv.client(Front::Http, &srv.admin_token).await;
    c.create("k", "ed25519").await.unwrap();
    let post = reqwest::Method::POST;
    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "/v1/kms/sign",
            r#"{"key":"k","message":"aGk=","extra":1}"#,
            400,
            "invalid_argument",
        ),
        (
            "/v1/kms/sign",
            r#"{"key":"k","message":"not base64!"}"#,
            400,
            "invalid_argument",
        ),
        (
            "/v1/kms/sign",
            r#"{"key":"k","message":"aGk"}"#,
            400,
            "invalid_argument",
        ),
        (
            "/v1/kms/sign",
            r#"{"key":"k","message":42}"#,
            400,
            "invalid_argument",
        ),
        ("/v1/kms/sign", r#"{"key":"k""#, 400, "invalid_argument"),
        (
            "/v1/kms/keys",
            r#"{"name":"z","algorithm":"ed25519","purpse":"sign"}"#,
            400,
            "invalid_argument",
        ),
        (
            "/v1/kms/verify",
            r#"{"key":"k#v1","message":"aGk=","signature":"%%%"}"#,
            400,
            "invalid_argument",
        ),
        ("/v1/kms/nope", "{}", 404, "not_found"),
    ];
    for (path, body, status, code) in cases {
        let (s, v) = c
            .http_raw(post.clone(), path, body.as_bytes().to_vec())
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str().unwrap()),
            (*status, *code),
            "{path} {body}: {v}"
        );
    }
    // the field is named in the message
    let (_, v) = c
        .http_raw(
            post.clone(),
            "/v1/kms/sign",
            br#"{"key":"k","message":"!!"}"#.to_vec(),
        )
        .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("field message"),
        "{v}"
    );
    let (_, v) = c
        .http_raw(
            post.clone(),
            "/v1/kms/sign",
            br#"{"key":"k","extra":1}"#.to_vec(),
        )
        .await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("extra"),
        "{v}"
    );
    // unknown query parameters too
    let (s, _) = c
        .http_raw(reqwest::Method::GET, "/v1/kms/keys?page_sise=3", vec![])
        .await;
    assert_eq!(s, 400);
    // wrong method
    let (s, v) = c
        .http_raw(reqwest::Method::DELETE, "/v1/kms/sign", vec![])
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (405, "method_not_allowed")
    );
    // Unauthenticated requests are refused before the body is read: send only the
    // headers of a 2 MiB request and read the answer without ever sending the body.
    // (A client that keeps writing after this answer may see the connection close
    // under it, which is why this is done on a raw socket.)
    let status_line = headers_only_request(srv.running().http_addr, "/v1/kms/sign", 2 << 20).await;
    assert!(
        status_line.starts_with("HTTP/1.1 401"),
        "unauthenticated request answered before its body: {status_line:?}"
    );
}

/// Send the head of a POST announcing `content_length` bytes, never send the body,
/// and return the status line the server answers with.
async fn headers_only_request(
    addr: std::net::SocketAddr,
    path: &str,
    content_length: usize,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("the server answers without waiting for the body");
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_ids_make_retries_safe() {
    let srv = TestServer::start().await;
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let name = format!("k-{front:?}").to_lowercase();
        let op = |s: &str| format!("{s}-{front:?}");
        let req = CreateKeyRequest {
            name: name.clone(),
            algorithm: "ml-dsa-65".into(),
            purpose: String::new(),
            op_id: op("create"),
            published: false,
        };
        let first = c.create_key(req.clone()).await.unwrap().key.unwrap();
        let again = c.create_key(req.clone()).await.unwrap().key.unwrap();
        assert_eq!(
            first.versions[0].public_key_der, again.versions[0].public_key_der,
            "retry returns the first result"
        );
        c.create_key(CreateKeyRequest {
            algorithm: "ed25519".into(),
            ..req
        })
        .await
        .unwrap_err()
        .expect(409, Code::AlreadyExists, "already_exists");

        let r1 = c.rotate(&name, &op("rot")).await.unwrap();
        let r2 = c.rotate(&name, &op("rot")).await.unwrap();
        assert_eq!(
            (r1.kid.as_str(), r2.kid.as_str()),
            (format!("{name}#v2").as_str(), format!("{name}#v2").as_str())
        );
        assert_eq!(
            c.get_key(&name, false).await.unwrap().versions.len(),
            2,
            "one rotation, not two"
        );
        c.rotate(&name, &op("create")).await.unwrap_err().expect(
            409,
            Code::AlreadyExists,
            "already_exists",
        );

        // ML-DSA signing is randomised: equal bytes prove the retry was answered, not re-signed
        let s = SignRequest {
            context: Vec::new(),
            key: name.clone(),
            message: b"m".to_vec(),
            op_id: op("sig"),
            ..Default::default()
        };
        let s1 = c.sign_req(s.clone()).await.unwrap();
        let s2 = c.sign_req(s.clone()).await.unwrap();
        assert_eq!(s1.signature, s2.signature);
        c.sign_req(SignRequest {
            message: b"other".to_vec(),
            ..s.clone()
        })
        .await
        .unwrap_err()
        .expect(409, Code::AlreadyExists, "already_exists");

        // a remembered answer is not handed out once its version is disabled
        assert_eq!(s1.kid, format!("{name}#v2"));
        c.set_state(&name, 2, "disabled").await.unwrap();
        c.sign_req(s).await.unwrap_err().expect(
            409,
            Code::FailedPrecondition,
            "key_version_not_enabled",
        );
    }
}

/// An `op_id` is the principal's own: another token of the same tenant,
/// holding only `kms:wrap`, replaying it gets `already_exists`, never the
/// first caller's data key (issue 28).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_principals_op_id_does_not_replay_its_data_key() {
    let srv = TestServer::start().await;
    let mut admin = srv.client(Front::Grpc, &srv.admin_token).await;
    admin.create("dk", "aes-256-gcm").await.unwrap();
    let owner = srv.token("admin", "kms:wrap");
    let other = srv.token("admin", "kms:wrap");
    for front in FRONTS {
        let op_id = format!("dk-{front:?}");
        let req = GenerateDataKeyRequest {
            key: "dk".into(),
            length: 32,
            op_id: op_id.clone(),
            ..Default::default()
        };
        let mut a = srv.client(front, &owner).await;
        let first = a.datakey(req.clone()).await.unwrap();
        let again = a.datakey(req.clone()).await.unwrap();
        assert_eq!(
            first.plaintext, again.plaintext,
            "the owner's retry is answered"
        );
        let mut b = srv.client(front, &other).await;
        let err = b.datakey(req.clone()).await.unwrap_err();
        err.expect(409, Code::AlreadyExists, "already_exists");
        assert!(
            err.message.contains("another caller"),
            "says why: {}",
            err.message
        );
        // and a fresh op_id of its own works
        let mine = b
            .datakey(GenerateDataKeyRequest {
                op_id: format!("{op_id}-b"),
                ..req
            })
            .await
            .unwrap();
        assert_ne!(mine.plaintext, first.plaintext);
    }
}

/// Quotas refuse with `resource_exhausted` naming the limit, per tenant,
/// on both fronts; an op_id retry of a key that exists is still answered
/// (issue 28).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_with_the_limit_named() {
    let srv = TestServer::start_with(|cfg| {
        cfg.quotas = ron_kms::service::Quotas {
            keys_per_tenant: 3,
            versions_per_key: 2,
        }
    })
    .await;
    let mut g = srv.client(Front::Grpc, &srv.admin_token).await;
    g.create("a", "ed25519").await.unwrap();
    g.create("b", "ed25519").await.unwrap();
    g.create("c", "ed25519").await.unwrap();
    g.rotate("a", "").await.unwrap();
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let e = c.create("d", "ed25519").await.unwrap_err();
        e.expect(429, Code::ResourceExhausted, "resource_exhausted");
        assert!(e.message.contains("max_keys_per_tenant = 3"), "{e:?}");
        assert_eq!(e.retry_after_ms, None, "a retry does not help: {e:?}");
        let e = c.rotate("a", "").await.unwrap_err();
        e.expect(429, Code::ResourceExhausted, "resource_exhausted");
        assert!(e.message.contains("max_versions_per_key = 2"), "{e:?}");
        // another key below its own limit still rotates once
        if front == Front::Grpc {
            c.rotate("b", "").await.unwrap();
        }
    }
    // another tenant has its own count
    let other = srv.token("other", "kms:admin");
    let mut o = srv.client(Front::Grpc, &other).await;
    o.create("d", "ed25519").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_every_key() {
    let srv = TestServer::start().await;
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        if front == Front::Grpc {
            for i in 0..7 {
                c.create(&format!("key-{i:02}"), "ed25519").await.unwrap();
            }
        }
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = c.list_keys(3, &token).await.unwrap();
            assert!(page.keys.len() <= 3);
            seen.extend(page.keys.into_iter().map(|k| k.name));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(
            seen,
            (0..7).map(|i| format!("key-{i:02}")).collect::<Vec<_>>()
        );
        c.list_keys(3, "!!!").await.unwrap_err().expect(
            400,
            Code::InvalidArgument,
            "invalid_argument",
        );
    }
}
