//! TLS on both fronts and mTLS identity, with real clients (tonic over
//! rustls, reqwest over rustls) and a throw-away PKI: a client certificate
//! from the configured CA maps to a tenant by its URI SAN and acts as that
//! tenant; a certificate from another CA is refused at the handshake; a
//! certificate for A cannot touch B's keys; tokens keep working over TLS.
mod common;

use common::certs::{foreign_client, grpc, Pki};
use common::{Client, Front, TestServer};
use ron_kms::ingress::tls::{MtlsRule, TlsSettings};
use ron_kms::proto::{GetKeyRequest, SignRequest};

const RULE: &str = "spiffe://ron-kms.test/tenant/{tenant}";

fn uri(tenant: &str) -> String {
    format!("spiffe://ron-kms.test/tenant/{tenant}")
}

async fn start(pki: &Pki) -> TestServer {
    let settings = TlsSettings {
        cert_file: pki.server_cert_file.clone(),
        key_file: pki.server_key_file.clone(),
        client_ca_file: Some(pki.ca_file.clone()),
        client_crl_file: None,
        require_client_cert: false,
        mtls: Some(MtlsRule::parse(RULE, MtlsRule::default_scopes()).unwrap()),
        require_pq_kx: false,
    };
    TestServer::start_with(|c| c.tls = Some(settings)).await
}

fn https(pki: &Pki, cert: Option<&(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap());
    if let Some((c, k)) = cert {
        b = b.identity(reqwest::Identity::from_pem(format!("{c}\n{k}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn http_base(s: &TestServer) -> String {
    format!("https://localhost:{}", s.running().http_addr.port())
}

fn sign_req(key: &str, token: Option<&str>) -> tonic::Request<SignRequest> {
    let mut r = tonic::Request::new(SignRequest {
        key: key.into(),
        message: b"mtls".to_vec(),
        ..Default::default()
    });
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn kms_code(s: &tonic::Status) -> &str {
    s.metadata()
        .get("kms-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Keys `ka` (tenant a) and `kb` (tenant b), made with admin tokens over TLS.
async fn keys(s: &TestServer, pki: &Pki) {
    for (tenant, key) in [("a", "ka"), ("b", "kb")] {
        let token = s.token(tenant, "kms:admin");
        let mut c = grpc(s, pki, None).await.unwrap();
        let mut r = tonic::Request::new(ron_kms::proto::CreateKeyRequest {
            name: key.into(),
            algorithm: "ed25519".into(),
            ..Default::default()
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        c.create_key(r).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cert_for_a_uses_as_keys_and_cannot_touch_bs_over_grpc() {
    let pki = Pki::new();
    let s = start(&pki).await;
    keys(&s, &pki).await;
    let cert_a = pki.client(&uri("a"));
    let mut c = grpc(&s, &pki, Some(&cert_a)).await.unwrap();
    let r = c.sign(sign_req("ka", None)).await.unwrap().into_inner();
    assert_eq!(r.kid, "ka#v1");
    // B's key looks exactly like a missing one
    let e = c.sign(sign_req("kb", None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let missing = c.sign(sign_req("nope", None)).await.unwrap_err();
    assert_eq!(e.message().replace("kb", "nope"), missing.message());
    let e = c
        .get_key(GetKeyRequest {
            name: "kb".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    // certificate callers get the configured scopes: no admin by default
    let e = c
        .create_key(ron_kms::proto::CreateKeyRequest {
            name: "new".into(),
            algorithm: "ed25519".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // a token for another tenant beside the certificate is refused
    let token_b = s.token("b", "kms:sign");
    let e = c.sign(sign_req("kb", Some(&token_b))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // a certificate whose URI maps to no tenant is refused, not anonymous
    let stray = pki.client("spiffe://elsewhere.test/service/x");
    let mut c = grpc(&s, &pki, Some(&stray)).await.unwrap();
    let e = c.sign(sign_req("ka", None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(kms_code(&e), "unauthenticated");
    // tokens keep working over TLS without a client certificate
    let token_a = s.token("a", "kms:sign");
    let mut c = grpc(&s, &pki, None).await.unwrap();
    c.sign(sign_req("ka", Some(&token_a))).await.unwrap();
    let e = c.sign(sign_req("ka", None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cert_for_a_uses_as_keys_and_cannot_touch_bs_over_http() {
    let pki = Pki::new();
    let s = start(&pki).await;
    keys(&s, &pki).await;
    let base = http_base(&s);
    let c = https(&pki, Some(&pki.client(&uri("a"))));
    let sign = |key: &str| {
        c.post(format!("{base}/v1/kms/sign"))
            .json(&serde_json::json!({"key": key, "message": "bXRscw=="}))
            .send()
    };
    let r = sign("ka").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["kid"], "ka#v1");
    let r = sign("kb").await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("{base}/v1/kms/keys/kb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // the same key is served to b's own certificate
    let cb = https(&pki, Some(&pki.client(&uri("b"))));
    let r = cb
        .post(format!("{base}/v1/kms/sign"))
        .json(&serde_json::json!({"key": "kb", "message": "bXRscw=="}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // and health stays reachable over TLS without credentials
    let r = https(&pki, None)
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cert_from_another_ca_is_refused_at_the_handshake() {
    let pki = Pki::new();
    let s = start(&pki).await;
    keys(&s, &pki).await;
    let foreign = foreign_client(&uri("a"));
    // gRPC: the connection (or its first call) fails; nothing is served
    match grpc(&s, &pki, Some(&foreign)).await {
        Err(_) => {}
        Ok(mut c) => {
            let e = c.sign(sign_req("ka", None)).await.unwrap_err();
            // TLS 1.3: the client's handshake completes before the server
            // checks its certificate; the server then ends the connection
            assert!(kms_code(&e).is_empty(), "answered by the service: {e:?}");
            assert!(
                matches!(
                    e.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ),
                "{e:?}"
            );
        }
    }
    // HTTP: the request fails in TLS, with no HTTP status
    let r = https(&pki, Some(&foreign))
        .post(format!("{}/v1/kms/sign", http_base(&s)))
        .json(&serde_json::json!({"key": "ka", "message": "bXRscw=="}))
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
    // plain text to a TLS port gets nothing either
    let plain = Client::connect_to(
        Front::Http,
        "http://127.0.0.1:1",
        &format!("http://{}", s.running().http_addr),
        &s.admin_token,
    )
    .await;
    let common::Transport::Http(rc, base) = &plain.transport else {
        unreachable!()
    };
    assert!(rc.get(format!("{base}/healthz")).send().await.is_err());
    // and the server still serves a proper client
    let mut c = grpc(&s, &pki, Some(&pki.client(&uri("a")))).await.unwrap();
    c.sign(sign_req("ka", None)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_over_mtls_with_a_client_certificate() {
    let pki = Pki::new();
    let s = start(&pki).await;
    keys(&s, &pki).await;
    let (cert, key) = pki.client(&uri("a"));
    let cert_file = pki.dir.path().join("a.pem");
    let key_file = pki.dir.path().join("a.key");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let addr = format!("https://localhost:{}", s.running().grpc_addr.port());
    let out = tokio::process::Command::new(common::process::BIN)
        .args([
            "sign",
            "--key",
            "ka",
            "--message",
            "from the cli",
            "--addr",
            &addr,
        ])
        .arg("--ca-file")
        .arg(&pki.ca_file)
        .arg("--cert-file")
        .arg(&cert_file)
        .arg("--key-file")
        .arg(&key_file)
        .env_remove("KMS_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kid"], "ka#v1");
    // without the CA bundle an https address is refused with a clear error
    let out = tokio::process::Command::new(common::process::BIN)
        .args(["sign", "--key", "ka", "--message", "x", "--addr", &addr])
        .arg("--cert-file")
        .arg(&cert_file)
        .arg("--key-file")
        .arg(&key_file)
        .env_remove("KMS_CA_FILE")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-file"));
}
