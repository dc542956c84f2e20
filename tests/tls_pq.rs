//! Post-quantum key exchange on both fronts, with a real rustls client over
//! loopback: a client that offers only the hybrid X25519MLKEM768 completes
//! the handshake and that group is the one negotiated; a client that offers
//! the hybrid first gets it; with `KMS_TLS_REQUIRE_PQ` a client that offers only
//! classical groups is refused, on both fronts.
mod common;

use std::sync::Arc;

use common::certs::Pki;
use common::TestServer;
use ron_kms::ingress::tls::TlsSettings;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::crypto::SupportedKxGroup;
use rustls::NamedGroup;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(pki: &Pki, require_pq_kx: bool) -> TestServer {
    let settings = TlsSettings {
        cert_file: pki.server_cert_file.clone(),
        key_file: pki.server_key_file.clone(),
        client_ca_file: None,
        client_crl_file: None,
        require_client_cert: false,
        mtls: None,
        require_pq_kx,
    };
    TestServer::start_with(|c| c.tls = Some(settings)).await
}

/// A rustls client that offers exactly `groups` (TLS 1.3 and 1.2).
fn client(
    pki: &Pki,
    groups: Vec<&'static dyn SupportedKxGroup>,
    alpn: &[u8],
) -> rustls::ClientConfig {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = groups;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    c
}

/// Handshake with `addr`; the negotiated group, or the handshake error.
async fn handshake(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> Result<
    (
        NamedGroup,
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    ),
    String,
> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let group = tls
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .expect("a TLS 1.3 key exchange")
        .name();
    Ok((group, tls))
}

fn fronts(s: &TestServer) -> [(&'static str, std::net::SocketAddr, &'static [u8]); 2] {
    [
        ("grpc", s.running().grpc_addr, b"h2"),
        ("http", s.running().http_addr, b"http/1.1"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_fronts_negotiate_x25519mlkem768() {
    let pki = Pki::new();
    let s = start(&pki, false).await;
    for (front, addr, alpn) in fronts(&s) {
        // only the hybrid offered
        let (g, mut tls) = handshake(addr, client(&pki, vec![kx_group::X25519MLKEM768], alpn))
            .await
            .unwrap_or_else(|e| panic!("{front}: {e}"));
        assert_eq!(g, NamedGroup::X25519MLKEM768, "{front}");
        if front == "http" {
            // and the connection serves requests
            tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            tls.read_to_end(&mut out).await.unwrap();
            assert!(
                out.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
        // a current client (hybrid first, classical as fallback) gets the hybrid
        let (g, _) = handshake(
            addr,
            client(&pki, vec![kx_group::X25519MLKEM768, kx_group::X25519], alpn),
        )
        .await
        .unwrap();
        assert_eq!(g, NamedGroup::X25519MLKEM768, "{front}");
        // a client that prefers X25519 sends its key share for X25519 only,
        // and rustls takes that share rather than a HelloRetryRequest
        // (docs/admission.md; KMS_TLS_REQUIRE_PQ refuses such clients)
        let (g, _) = handshake(
            addr,
            client(&pki, vec![kx_group::X25519, kx_group::X25519MLKEM768], alpn),
        )
        .await
        .unwrap();
        assert_eq!(g, NamedGroup::X25519, "{front}");
        // an old client with classical groups only still connects
        let (g, _) = handshake(addr, client(&pki, vec![kx_group::X25519], alpn))
            .await
            .unwrap();
        assert_eq!(g, NamedGroup::X25519, "{front}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_require_switch_classical_only_clients_are_refused() {
    let pki = Pki::new();
    let s = start(&pki, true).await;
    for (front, addr, alpn) in fronts(&s) {
        let e = handshake(
            addr,
            client(
                &pki,
                vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
                alpn,
            ),
        )
        .await
        .map(|_| ())
        .unwrap_err();
        assert!(
            e.to_lowercase().contains("handshake") || e.contains("HandshakeFailure"),
            "{front}: {e}"
        );
        let (g, _) = handshake(addr, client(&pki, vec![kx_group::X25519MLKEM768], alpn))
            .await
            .unwrap_or_else(|e| panic!("{front}: {e}"));
        assert_eq!(g, NamedGroup::X25519MLKEM768, "{front}");
    }
}
