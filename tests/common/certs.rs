//! A throw-away test PKI: one CA, a server certificate for `localhost` and
//! 127.0.0.1, client certificates with URI SANs on demand, and CRLs of the
//! CA revoking any of them. Keys are ECDSA P-256 (rcgen's default with
//! ring).
#![allow(dead_code)]

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use ron_kms::proto::kms_client::KmsClient;
use rustls_pki_types::pem::PemObject as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// `ca.pem` in `dir`: the CA certificate (use as the client CA bundle
    /// and as the clients' trust root).
    pub ca_file: PathBuf,
    /// The server certificate alone, PEM.
    pub server_cert_pem: String,
    /// `server.pem` in `dir`: the server certificate followed by the CA
    /// certificate (leaf first).
    pub server_cert_file: PathBuf,
    /// The server key, PEM (PKCS#8).
    pub server_key_pem: String,
    /// `server.key` in `dir`, mode 0600.
    pub server_key_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("CA certificate");
    (Issuer::new(params, key), cert.pem())
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    cn: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf certificate");
    (cert.pem(), key.serialize_pem())
}

fn client_leaf(issuer: &Issuer<'static, KeyPair>, uri: &str) -> (String, String) {
    leaf(
        issuer,
        "ron-kms test client",
        vec![SanType::URI(uri.try_into().expect("URI SAN is IA5"))],
        ExtendedKeyUsagePurpose::ClientAuth,
    )
}

fn write_file(path: &Path, body: &str, mode: u32) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(body.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Pki {
    /// A CA and a server certificate for "localhost" and IP 127.0.0.1
    /// signed by it, written to files in a temp dir.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let (issuer, ca_pem) = new_ca("ron-kms test CA");
        let (server_cert_pem, server_key_pem) = leaf(
            &issuer,
            "localhost",
            vec![
                SanType::DnsName("localhost".try_into().expect("DNS name")),
                SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let ca_file = dir.path().join("ca.pem");
        let server_cert_file = dir.path().join("server.pem");
        let server_key_file = dir.path().join("server.key");
        write_file(&ca_file, &ca_pem, 0o644);
        write_file(
            &server_cert_file,
            &format!("{server_cert_pem}{ca_pem}"),
            0o644,
        );
        write_file(&server_key_file, &server_key_pem, 0o600);
        Pki {
            dir,
            ca_pem,
            ca_file,
            server_cert_pem,
            server_cert_file,
            server_key_pem,
            server_key_file,
            issuer,
        }
    }

    /// A client certificate signed by this CA with URI SAN `uri` (e.g.
    /// "spiffe://ron-kms.test/tenant/a"): (cert_pem, key_pem).
    pub fn client(&self, uri: &str) -> (String, String) {
        client_leaf(&self.issuer, uri)
    }

    /// A client certificate signed by this CA with no URI SAN at all (only
    /// a DNS name): verifies, but maps to no tenant.
    pub fn client_without_uri(&self) -> (String, String) {
        leaf(
            &self.issuer,
            "ron-kms test client",
            vec![SanType::DnsName(
                "client.ron-kms.test".try_into().expect("DNS name"),
            )],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

impl Pki {
    /// A CRL of this CA, PEM, revoking the certificates `revoked` (PEMs, as
    /// [`Pki::client`] returns them); `number` is its CRL number. Valid
    /// from 2020 to 2100.
    pub fn crl(&self, number: u64, revoked: &[&str]) -> String {
        let ders: Vec<_> = revoked
            .iter()
            .map(|pem| {
                rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
                    .expect("certificate PEM")
            })
            .collect();
        let ders: Vec<&[u8]> = ders.iter().map(|d| d.as_ref()).collect();
        super::crl::params(number, &ders, 2100)
            .signed_by(&self.issuer)
            .expect("CRL")
            .pem()
            .expect("CRL PEM")
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// A client certificate from a different, throw-away CA (for "another CA
/// is refused" tests): (cert_pem, key_pem).
pub fn foreign_client(uri: &str) -> (String, String) {
    let (issuer, _) = new_ca("some other CA");
    client_leaf(&issuer, uri)
}

/// A gRPC client over TLS to `s`, trusting `pki`'s CA, presenting `cert`
/// (PEM certificate and key) when given.
pub async fn grpc(
    s: &super::TestServer,
    pki: &Pki,
    cert: Option<&(String, String)>,
) -> Result<KmsClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if let Some((c, k)) = cert {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    let addr = format!("https://localhost:{}", s.running().grpc_addr.port());
    let ch = Channel::from_shared(addr)
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(KmsClient::new(ch))
}
