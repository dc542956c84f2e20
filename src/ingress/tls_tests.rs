//! Unit tests of [`super`]: the mTLS tenant rule, server config and file
//! checks, the PQ key-exchange order, client identities and CRLs.
use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PATTERN: &str = "spiffe://ron-kms.test/tenant/{tenant}";

fn rule() -> MtlsRule {
    MtlsRule::parse(PATTERN, MtlsRule::default_scopes()).unwrap()
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        issuer: Issuer::new(p, key),
        pem: cert.pem(),
    }
}

/// (cert DER, cert PEM, key PEM) of a leaf signed by `ca`.
fn leaf(ca: &Ca, sans: Vec<SanType>, server: bool) -> (CertificateDer<'static>, String, String) {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "leaf");
    p.subject_alt_names = sans;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.der().clone(), cert.pem(), key.serialize_pem())
}

fn uri(u: &str) -> SanType {
    SanType::URI(u.try_into().unwrap())
}

fn write(path: &Path, body: &str, mode: u32) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap();
    f.write_all(body.as_bytes()).unwrap();
}

struct Files {
    dir: tempfile::TempDir,
    ca: Ca,
    settings: TlsSettings,
}

fn files(key_mode: u32, with_ca: bool, require: bool) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("test CA");
    let (_, cert_pem, key_pem) = leaf(
        &ca,
        vec![SanType::DnsName("localhost".try_into().unwrap())],
        true,
    );
    let cert_file = dir.path().join("server.pem");
    let key_file = dir.path().join("server.key");
    let ca_file = dir.path().join("ca.pem");
    write(&cert_file, &format!("{cert_pem}{}", ca.pem), 0o644);
    write(&key_file, &key_pem, key_mode);
    write(&ca_file, &ca.pem, 0o644);
    let settings = TlsSettings {
        require_pq_kx: false,
        cert_file,
        key_file,
        client_ca_file: with_ca.then_some(ca_file),
        client_crl_file: None,
        require_client_cert: require,
        mtls: with_ca.then(rule),
    };
    Files { dir, ca, settings }
}

#[test]
fn pattern_needs_exactly_one_placeholder() {
    let s = Scopes::all();
    assert!(MtlsRule::parse(PATTERN, s).is_ok());
    assert!(MtlsRule::parse("spiffe://x/{tenant}/svc", s).is_ok());
    for bad in [
        "spiffe://ron-kms.test/tenant/",
        "spiffe://x/{tenant}/{tenant}",
        "spiffe://x/{tenan}",
        "{tenant}",
        "",
        "spiffe://x/ {tenant}",
    ] {
        let err = MtlsRule::parse(bad, s).unwrap_err();
        assert!(err.contains("pattern"), "{bad:?}: {err}");
    }
}

#[test]
fn default_scopes_exclude_admin() {
    use crate::auth::Scope;
    let s = MtlsRule::default_scopes();
    assert!(!s.contains(Scope::Admin));
    for sc in [
        Scope::Read,
        Scope::Sign,
        Scope::Verify,
        Scope::Wrap,
        Scope::Unwrap,
    ] {
        assert!(s.contains(sc));
    }
}

#[test]
fn tenant_of_matches_exactly() {
    let r = rule();
    assert_eq!(
        r.tenant_of("spiffe://ron-kms.test/tenant/a").as_deref(),
        Some("a")
    );
    assert_eq!(
        r.tenant_of("spiffe://ron-kms.test/tenant/team-1.prod_x")
            .as_deref(),
        Some("team-1.prod_x")
    );
    for bad in [
        "spiffe://ron-kms.test/tenant/",
        "spiffe://ron-kms.test/tenant/../b",
        "spiffe://ron-kms.test/tenant/a/b",
        "spiffe://ron-kms.test/tenant/a/",
        "spiffe://ron-kms.test/tenant/A",
        "spiffe://ron-kms.test/tenant/.hidden",
        "spiffe://ron-kms.test/tenant/a?x=1",
        "spiffe://ron-kms.test/tenant/a#f",
        "spiffe://ron-kms.test/tenant/a%2fb",
        "spiffe://other.test/tenant/a",
        "xspiffe://ron-kms.test/tenant/a",
        "SPIFFE://ron-kms.test/tenant/a",
        "",
    ] {
        assert_eq!(r.tenant_of(bad), None, "{bad:?}");
    }
    let long = format!("spiffe://ron-kms.test/tenant/{}", "a".repeat(129));
    assert_eq!(r.tenant_of(&long), None);

    let with_suffix = MtlsRule::parse("spiffe://x/{tenant}/svc", Scopes::all()).unwrap();
    assert_eq!(
        with_suffix.tenant_of("spiffe://x/t1/svc").as_deref(),
        Some("t1")
    );
    assert_eq!(with_suffix.tenant_of("spiffe://x/t1/svc/"), None);
    assert_eq!(with_suffix.tenant_of("spiffe://x/t1/x/svc"), None);
    assert_eq!(with_suffix.tenant_of("spiffe://x/t1"), None);
}

#[test]
fn server_config_builds() {
    let f = files(0o600, false, false);
    let c = server_config(&f.settings, &[b"h2", b"http/1.1"]).unwrap();
    assert_eq!(c.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    let f = files(0o600, true, true);
    let c = server_config(&f.settings, &[b"h2"]).unwrap();
    assert_eq!(c.alpn_protocols, vec![b"h2".to_vec()]);
}

#[test]
fn world_readable_key_is_refused() {
    let f = files(0o644, false, false);
    let err = server_config(&f.settings, &[b"h2"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&f.settings.key_file.display().to_string()),
        "{err}"
    );
    assert!(err.contains("0644"), "{err}");
    assert!(!err.contains("BEGIN"), "{err}");
}

/// Every endpoint offers the post-quantum hybrid first: the fronts, and
/// the client ron-kms uses for PostgreSQL.
#[test]
fn x25519mlkem768_is_offered_first_everywhere() {
    use rustls::NamedGroup;
    let f = files(0o600, false, false);
    let names = |p: &rustls::crypto::CryptoProvider| -> Vec<NamedGroup> {
        p.kx_groups.iter().map(|g| g.name()).collect()
    };
    let server = server_config(&f.settings, &[b"h2"]).unwrap();
    assert_eq!(
        names(server.crypto_provider())[0],
        NamedGroup::X25519MLKEM768
    );
    let client = client_config(&f.dir.path().join("ca.pem")).unwrap();
    let offered = names(client.crypto_provider());
    assert_eq!(offered[0], NamedGroup::X25519MLKEM768);
    assert!(offered.contains(&NamedGroup::X25519));
    let mut s = f.settings.clone();
    s.require_pq_kx = true;
    let strict = server_config(&s, &[b"h2"]).unwrap();
    assert_eq!(
        names(strict.crypto_provider()),
        [NamedGroup::X25519MLKEM768]
    );
}

#[test]
fn bad_files_are_named() {
    let f = files(0o600, true, false);

    let mut s = f.settings.clone();
    s.cert_file = f.settings.key_file.clone();
    let err = server_config(&s, &[b"h2"]).unwrap_err().to_string();
    assert!(err.starts_with("TLS certificate file"), "{err}");
    assert!(err.contains("no CERTIFICATE"), "{err}");

    let mut s = f.settings.clone();
    s.key_file = f.dir.path().join("missing.key");
    let err = server_config(&s, &[b"h2"]).unwrap_err().to_string();
    assert!(err.contains("missing.key"), "{err}");

    // A key that is not the certificate's.
    let other_key = f.dir.path().join("other.key");
    write(
        &other_key,
        &KeyPair::generate().unwrap().serialize_pem(),
        0o600,
    );
    let mut s = f.settings.clone();
    s.key_file = other_key;
    let err = server_config(&s, &[b"h2"]).unwrap_err().to_string();
    assert!(err.contains("other.key"), "{err}");
    assert!(!err.contains("BEGIN"), "{err}");

    // Garbage in the key file is described, not echoed.
    let junk_key = f.dir.path().join("junk.key");
    write(
        &junk_key,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0!!\n-----END PRIVATE KEY-----\n",
        0o600,
    );
    let mut s = f.settings.clone();
    s.key_file = junk_key;
    let err = server_config(&s, &[b"h2"]).unwrap_err().to_string();
    assert!(err.contains("junk.key"), "{err}");
    assert!(!err.contains("c2VjcmV0"), "{err}");

    let mut s = f.settings.clone();
    s.client_ca_file = Some(f.settings.key_file.clone());
    let err = server_config(&s, &[b"h2"]).unwrap_err().to_string();
    assert!(err.starts_with("TLS client CA file"), "{err}");

    let mut s = f.settings.clone();
    s.mtls = None;
    assert!(server_config(&s, &[b"h2"]).is_err());

    let mut s = f.settings.clone();
    s.client_ca_file = None;
    s.require_client_cert = true;
    assert!(server_config(&s, &[b"h2"]).is_err());
}

#[test]
fn identity_maps_uri_san_to_tenant() {
    let ca = ca("id CA");
    let (der, _, _) = leaf(
        &ca,
        vec![
            SanType::DnsName("client.example".try_into().unwrap()),
            uri("spiffe://elsewhere/tenant/zzz"),
            uri("spiffe://ron-kms.test/tenant/acme"),
        ],
        false,
    );
    let chain = [der.clone()];
    let id = identity_from_chain(Some(&chain), Some(&rule()))
        .unwrap()
        .unwrap();
    assert_eq!(id.tenant, "acme");
    assert_eq!(id.scopes, MtlsRule::default_scopes());
    let hex12 = id.principal.strip_prefix("cert:").unwrap();
    assert_eq!(hex12.len(), 12);
    assert!(hex12
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    // Stable per certificate.
    let again = identity_from_chain(Some(&chain), Some(&rule()))
        .unwrap()
        .unwrap();
    assert_eq!(again, id);
}

#[test]
fn identity_without_matching_san_is_an_error() {
    let ca = ca("id CA");
    let (der, _, _) = leaf(&ca, vec![uri("spiffe://ron-kms.test/tenant/Bad/x")], false);
    let chain = [der];
    let err = identity_from_chain(Some(&chain), Some(&rule()))
        .unwrap()
        .unwrap_err();
    assert!(err.starts_with("client certificate cert:"), "{err}");
    assert!(err.contains("no URI SAN"), "{err}");

    let (der, _, _) = leaf(
        &ca,
        vec![SanType::DnsName("x.test".try_into().unwrap())],
        false,
    );
    let chain = [der];
    assert!(identity_from_chain(Some(&chain), Some(&rule()))
        .unwrap()
        .is_err());

    let err = identity_from_chain(Some(&chain), None)
        .unwrap()
        .unwrap_err();
    assert_eq!(err, "client certificates are not mapped to tenants");

    assert!(identity_from_chain(None, Some(&rule())).is_none());
    assert!(identity_from_chain(Some(&[]), Some(&rule())).is_none());

    let junk = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])];
    assert!(identity_from_chain(Some(&junk), Some(&rule()))
        .unwrap()
        .is_err());
}

/// One handshake over an in-memory pipe. Returns the server's result
/// (the mapped identity of the peer) once a byte made it across.
async fn handshake(
    server: Arc<ServerConfig>,
    ca_pem: &str,
    client_cert: Option<(String, String)>,
) -> Result<Option<Result<CertIdentity, String>>, String> {
    let provider = Arc::new(super::provider(false));
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut client = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    client.alpn_protocols = vec![b"h2".to_vec()];

    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();

    let server_side = async move {
        let mut tls = acceptor.accept(s_io).await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        let id = identity_from_chain(conn.peer_certificates(), Some(&rule()));
        tls.write_all(b"k").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(id)
    };
    let client_side = async move {
        let mut tls = connector.connect(name, c_io).await?;
        tls.write_all(b"x").await?;
        tls.flush().await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        Ok::<_, std::io::Error>(())
    };
    let (s, c) = tokio::join!(server_side, client_side);
    if s.is_ok() {
        c.map_err(|e| format!("client: {e}"))?;
    }
    s
}

#[tokio::test]
async fn handshake_maps_client_certs() {
    let f = files(0o600, true, false);
    let config = server_config(&f.settings, &[b"h2"]).unwrap();

    // A client certificate from the configured CA: accepted and mapped.
    let (_, cert, key) = leaf(&f.ca, vec![uri("spiffe://ron-kms.test/tenant/a")], false);
    let id = handshake(config.clone(), &f.ca.pem, Some((cert, key)))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(id.tenant, "a");
    assert!(id.principal.starts_with("cert:"));

    // Verified but unmapped: the handshake succeeds, the identity is an error.
    let (_, cert, key) = leaf(&f.ca, vec![uri("spiffe://other/a")], false);
    let got = handshake(config.clone(), &f.ca.pem, Some((cert, key)))
        .await
        .unwrap();
    assert!(matches!(got, Some(Err(_))), "{got:?}");

    // A client certificate from another CA: the handshake fails.
    let other = ca("other CA");
    let (_, cert, key) = leaf(&other, vec![uri("spiffe://ron-kms.test/tenant/a")], false);
    let err = handshake(config.clone(), &f.ca.pem, Some((cert, key)))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // No client certificate while optional: fine, no identity.
    let got = handshake(config, &f.ca.pem, None).await.unwrap();
    assert!(got.is_none());

    // No client certificate while required: the handshake fails.
    let f = files(0o600, true, true);
    let config = server_config(&f.settings, &[b"h2"]).unwrap();
    let err = handshake(config, &f.ca.pem, None).await.unwrap_err();
    assert!(err.contains("no certificates"), "{err}");
}

/// A CRL by `ca` listing `revoked`, valid until 1 January `until`.
fn crl(ca: &Ca, revoked: &[&CertificateDer<'_>], until: i32) -> rcgen::CertificateRevocationList {
    let revoked: Vec<&[u8]> = revoked.iter().map(|d| d.as_ref()).collect();
    crl::params(1, &revoked, until)
        .signed_by(&ca.issuer)
        .unwrap()
}

#[path = "../../tests/common/crl.rs"]
mod crl;

fn with_crl(f: &Files, name: &str, body: &[u8]) -> TlsSettings {
    let path = f.dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    let mut s = f.settings.clone();
    s.client_crl_file = Some(path);
    s
}

fn client_of(ca: &Ca, tenant: &str) -> (CertificateDer<'static>, (String, String)) {
    let (der, cert, key) = leaf(
        ca,
        vec![uri(&format!("spiffe://ron-kms.test/tenant/{tenant}"))],
        false,
    );
    (der, (cert, key))
}

#[tokio::test]
async fn a_crl_refuses_the_certificates_it_lists() {
    let f = files(0o600, true, false);
    let (a_der, a) = client_of(&f.ca, "a");
    let (_, b) = client_of(&f.ca, "b");
    let pem = crl(&f.ca, &[&a_der], 2100).pem().unwrap();
    let config = server_config(&with_crl(&f, "crl.pem", pem.as_bytes()), &[b"h2"]).unwrap();
    // Resumption would skip the check (module doc).
    assert_eq!(config.send_tls13_tickets, 0);
    assert!(!config.session_storage.can_cache());

    let err = handshake(config.clone(), &f.ca.pem, Some(a.clone()))
        .await
        .unwrap_err();
    assert!(err.contains("Revoked"), "{err}");
    let id = handshake(config.clone(), &f.ca.pem, Some(b.clone()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(id.tenant, "b");
    // Without a certificate, while optional: still fine.
    assert!(handshake(config, &f.ca.pem, None).await.unwrap().is_none());

    // DER, and a CRL past its nextUpdate: still applies.
    let der = crl(&f.ca, &[&a_der], 2021);
    let config = server_config(&with_crl(&f, "old.crl", der.der().as_ref()), &[b"h2"]).unwrap();
    let err = handshake(config.clone(), &f.ca.pem, Some(a))
        .await
        .unwrap_err();
    assert!(err.contains("Revoked"), "{err}");
    handshake(config, &f.ca.pem, Some(b)).await.unwrap();
}

#[tokio::test]
async fn an_issuer_without_a_crl_in_the_file_is_accepted() {
    // The bundle holds two CAs; the file only the first one's CRL.
    let mut f = files(0o600, true, false);
    let second = ca("second CA");
    let bundle = f.dir.path().join("bundle.pem");
    std::fs::write(&bundle, format!("{}{}", f.ca.pem, second.pem)).unwrap();
    f.settings.client_ca_file = Some(bundle);
    let (_, other) = client_of(&second, "c");
    let (a_der, a) = client_of(&f.ca, "a");
    let pem = crl(&f.ca, &[&a_der], 2100).pem().unwrap();
    let config = server_config(&with_crl(&f, "crl.pem", pem.as_bytes()), &[b"h2"]).unwrap();

    let id = handshake(config.clone(), &f.ca.pem, Some(other))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(id.tenant, "c");
    let err = handshake(config, &f.ca.pem, Some(a)).await.unwrap_err();
    assert!(err.contains("Revoked"), "{err}");
}

#[test]
fn bad_crl_files_are_named() {
    let f = files(0o600, true, false);
    let (a_der, _) = client_of(&f.ca, "a");
    let refused = |s: &TlsSettings| {
        let err = server_config(s, &[b"h2"]).unwrap_err().to_string();
        let path = s.client_crl_file.as_ref().unwrap().display().to_string();
        assert!(
            err.starts_with(&format!("TLS client CRL file {path}: ")),
            "{err}"
        );
        err
    };

    let mut s = f.settings.clone();
    s.client_crl_file = Some(f.dir.path().join("missing.crl"));
    assert!(refused(&s).contains("cannot read"));

    // A certificate is not a CRL.
    let err = refused(&with_crl(&f, "cert.pem", f.ca.pem.as_bytes()));
    assert!(err.contains("no X509 CRL"), "{err}");

    let err = refused(&with_crl(&f, "empty.pem", b""));
    assert!(err.contains("no X509 CRL"), "{err}");

    // Garbage is described, not echoed.
    let junk = "-----BEGIN X509 CRL-----\nc2VjcmV0!!\n-----END X509 CRL-----\n";
    let err = refused(&with_crl(&f, "junk.pem", junk.as_bytes()));
    assert!(!err.contains("c2VjcmV0"), "{err}");
    let junk = "-----BEGIN X509 CRL-----\nc2VjcmV0\n-----END X509 CRL-----\n";
    let err = refused(&with_crl(&f, "junk2.pem", junk.as_bytes()));
    assert!(err.contains("CRL #1 is not a valid X.509 CRL"), "{err}");
    let err = refused(&with_crl(&f, "junk.der", &[0x30, 0x03, 0x02, 0x01, 0x00]));
    assert!(err.contains("CRL #1"), "{err}");

    // The second of two CRLs named; a CRL in the CA's name signed by
    // another key is refused.
    let good = crl(&f.ca, &[], 2100).pem().unwrap();
    let forged = crl(&ca("test CA"), &[&a_der], 2100).pem().unwrap();
    let err = refused(&with_crl(
        &f,
        "forged.pem",
        format!("{good}{forged}").as_bytes(),
    ));
    assert!(
        err.contains(
            "CRL #2 names the client CA \"CN=test CA\" as its issuer but is not signed by it"
        ),
        "{err}"
    );

    // A CRL file without a CA bundle.
    let mut s = with_crl(&f, "ok.pem", good.as_bytes());
    s.client_ca_file = None;
    s.mtls = None;
    let err = server_config(&s, &[b"h2"]).unwrap_err().to_string();
    assert!(
        err.contains("client CRL file needs a client CA file"),
        "{err}"
    );
}
