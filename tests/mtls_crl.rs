//! Client certificate revocation (KMS_TLS_CLIENT_CRL_FILE), with a real
//! server on loopback and real TLS clients: a certificate added to the CRL
//! file fails its next handshake without a restart, on both fronts and
//! for a client that tries to resume its TLS session; another certificate
//! of the same CA keeps working; a rewrite that no longer loads keeps the
//! CRLs in force; a malformed CRL file stops the start, naming the file.
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::{grpc, Pki};
use common::TestServer;
use ron_kms::ingress::tls::{MtlsRule, TlsSettings};
use ron_kms::proto::{CreateKeyRequest, SignRequest};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const RULE: &str = "spiffe://ron-kms.test/tenant/{tenant}";

/// How long a change of the CRL file may take to be in force (the file is
/// looked at every 500 ms).
const RELOAD_WITHIN: Duration = Duration::from_secs(5);

fn uri(tenant: &str) -> String {
    format!("spiffe://ron-kms.test/tenant/{tenant}")
}

fn settings(pki: &Pki, crl_file: &Path) -> TlsSettings {
    TlsSettings {
        cert_file: pki.server_cert_file.clone(),
        key_file: pki.server_key_file.clone(),
        client_ca_file: Some(pki.ca_file.clone()),
        client_crl_file: Some(crl_file.to_path_buf()),
        require_client_cert: false,
        mtls: Some(MtlsRule::parse(RULE, MtlsRule::default_scopes()).unwrap()),
        require_pq_kx: false,
    }
}

/// Replace `path` the way a CRL publisher should: write beside it, rename.
fn replace(path: &Path, body: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn start(pki: &Pki, crl: &str) -> (TestServer, PathBuf) {
    let crl_file = pki.dir.path().join("clients.crl");
    std::fs::write(&crl_file, crl).unwrap();
    let s = TestServer::start_with(|c| c.tls = Some(settings(pki, &crl_file))).await;
    // Key `k<tenant>` for tenants a and b, made with admin tokens.
    for tenant in ["a", "b"] {
        let mut c = grpc(&s, pki, None).await.unwrap();
        let mut r = tonic::Request::new(CreateKeyRequest {
            name: format!("k{tenant}"),
            algorithm: "ed25519".into(),
            ..Default::default()
        });
        let token = s.token(tenant, "kms:admin");
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        c.create_key(r).await.unwrap();
    }
    (s, crl_file)
}

/// A new gRPC connection with `cert` signs with the key of `tenant`: Ok,
/// or why not. A refusal must come from TLS, not from the service.
async fn grpc_sign(
    s: &TestServer,
    pki: &Pki,
    cert: &(String, String),
    tenant: &str,
) -> Result<(), String> {
    let mut c = grpc(s, pki, Some(cert))
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    match c
        .sign(SignRequest {
            key: format!("k{tenant}"),
            message: b"crl".to_vec(),
            ..Default::default()
        })
        .await
    {
        Ok(r) => {
            assert_eq!(r.into_inner().kid, format!("k{tenant}#v1"));
            Ok(())
        }
        Err(e) => {
            // TLS 1.3: the client's handshake completes before the server
            // checks its certificate; the server then ends the connection.
            assert!(
                e.metadata().get("kms-error-code").is_none(),
                "answered by the service: {e:?}"
            );
            Err(format!("sign: {e:?}"))
        }
    }
}

/// A new HTTPS client (reqwest) with `cert` signs with the key of `tenant`.
async fn https_sign(
    s: &TestServer,
    pki: &Pki,
    cert: &(String, String),
    tenant: &str,
) -> Result<(), String> {
    let (c, k) = cert;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(format!("{c}\n{k}").as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client
        .post(format!(
            "https://localhost:{}/v1/kms/sign",
            s.running().http_addr.port()
        ))
        .json(&serde_json::json!({"key": format!("k{tenant}"), "message": "Y3Js"}))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(r.status(), 200, "a TLS refusal has no HTTP status");
    Ok(())
}

/// A rustls client config with `cert`, kept across connections so that it
/// offers to resume its last session (rustls' default session cache).
fn resuming_client(pki: &Pki, cert: &(String, String)) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        ron_kms::ingress::tls::provider(false),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(cert.0.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap(),
    )
    .unwrap();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// `GET /healthz` over a new connection with `client`: the kind of
/// handshake it took, or why it failed.
async fn raw_healthz(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> Result<rustls::HandshakeKind, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    let read = tls.read_to_end(&mut answer).await;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "read: {read:?}, {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(40)])
        ));
    }
    tls.get_ref()
        .1
        .handshake_kind()
        .ok_or_else(|| "no handshake kind".into())
}

/// The value of `kms_tls_crl_reload_total{result}` on `/metrics`.
async fn reloads(s: &TestServer, pki: &Pki, result: &str) -> u64 {
    let text = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
        .get(format!(
            "https://localhost:{}/metrics",
            s.running().http_addr.port()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("kms_tls_crl_reload_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("{series} missing from /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Wait until `ok` holds, for at most [`RELOAD_WITHIN`]; how long it took.
async fn within<F: std::future::Future<Output = bool>>(
    what: &str,
    mut ok: impl FnMut() -> F,
) -> Duration {
    let t0 = Instant::now();
    while !ok().await {
        assert!(
            t0.elapsed() < RELOAD_WITHIN,
            "{what}: not within {RELOAD_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cert_added_to_the_crl_fails_its_next_handshake_without_a_restart() {
    let pki = Pki::new();
    let (s, crl_file) = start(&pki, &pki.crl(1, &[])).await;
    let addrs = (s.running().grpc_addr, s.running().http_addr);
    let reloads_before = reloads(&s, &pki, "ok").await;

    let a = pki.client(&uri("a"));
    let b = pki.client(&uri("b"));
    grpc_sign(&s, &pki, &a, "a").await.unwrap();
    https_sign(&s, &pki, &a, "a").await.unwrap();
    // A connection of B's, opened now and used again at the end.
    let mut held_b = grpc(&s, &pki, Some(&b)).await.unwrap();
    held_b
        .sign(SignRequest {
            key: "kb".into(),
            message: b"crl".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    // A client that keeps its session cache is not offered resumption: a
    // resumed session would skip the certificate check.
    let resuming = resuming_client(&pki, &a);
    for _ in 0..2 {
        let kind = raw_healthz(addrs.1, resuming.clone()).await.unwrap();
        assert_eq!(kind, rustls::HandshakeKind::Full);
    }

    replace(&crl_file, &pki.crl(2, &[&a.0]));
    let took = within("A refused over gRPC", || async {
        grpc_sign(&s, &pki, &a, "a").await.is_err()
    })
    .await;
    println!("A refused {took:?} after the CRL file changed");

    // Refused on the other front too, and on resumption.
    let err = https_sign(&s, &pki, &a, "a").await.unwrap_err();
    println!("HTTPS with A: {err}");
    let err = raw_healthz(addrs.1, resuming).await.unwrap_err();
    println!("resuming client with A: {err}");
    // B, of the same CA and not revoked, still gets in on both fronts.
    grpc_sign(&s, &pki, &b, "b").await.unwrap();
    https_sign(&s, &pki, &b, "b").await.unwrap();

    // The same server: the same listeners, the reload counted, and a
    // connection opened before the change still served.
    assert_eq!(
        (s.running().grpc_addr, s.running().http_addr),
        addrs,
        "the server was not restarted"
    );
    assert!(reloads(&s, &pki, "ok").await > reloads_before);
    held_b
        .sign(SignRequest {
            key: "kb".into(),
            message: b"still the same connection".to_vec(),
            ..Default::default()
        })
        .await
        .expect("B's connection from before the change is still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_rewrite_that_does_not_load_keeps_the_crls_in_force() {
    let pki = Pki::new();
    let a = pki.client(&uri("a"));
    let b = pki.client(&uri("b"));
    let (s, crl_file) = start(&pki, &pki.crl(1, &[&a.0])).await;
    grpc_sign(&s, &pki, &a, "a").await.unwrap_err();
    grpc_sign(&s, &pki, &b, "b").await.unwrap();

    // Only this test writes bad CRL files in this binary.
    let errors_before = reloads(&s, &pki, "error").await;
    replace(
        &crl_file,
        "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
    );
    within("the bad file counted", || async {
        reloads(&s, &pki, "error").await > errors_before
    })
    .await;
    grpc_sign(&s, &pki, &a, "a").await.unwrap_err();
    grpc_sign(&s, &pki, &b, "b").await.unwrap();

    // A good file again, revoking nothing: A is back.
    replace(&crl_file, &pki.crl(2, &[]));
    within("A accepted again", || async {
        grpc_sign(&s, &pki, &a, "a").await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn a_malformed_crl_file_stops_the_start_naming_the_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let crl_file = pki.dir.path().join("bad.crl");
    std::fs::write(
        &crl_file,
        "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let mut cfg = common::config(&dir.path().join("data"));
    cfg.tls = Some(settings(&pki, &crl_file));
    let err = match ron_kms::server::start(&cfg).await {
        Ok(_) => panic!("started with a malformed CRL file"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with(&format!(
            "tls: TLS client CRL file {}: CRL #1 is not a valid X.509 CRL",
            crl_file.display()
        )),
        "{err}"
    );
    assert!(!err.contains("bm90IGEgQ1JM"), "{err}");
}
