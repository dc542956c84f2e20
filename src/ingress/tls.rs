//! TLS for both fronts, and the tenant a verified client certificate speaks
//! for (mTLS).
//!
//! One rustls server config serves both fronts (they differ only in ALPN).
//! The provider is aws-lc-rs, named explicitly ([`provider`]), so nothing
//! depends on a process-wide default provider. Key exchange prefers the
//! post-quantum hybrid X25519MLKEM768 (draft-ietf-tls-ecdhe-mlkem), so
//! recorded traffic (Unwrap and GenerateDataKey answers carry key material)
//! is not open to harvest-now-decrypt-later; X25519, P-256 and P-384 stay
//! for older clients unless `require_pq_kx` turns them off (then TLS 1.3
//! only, since TLS 1.2 has no ML-KEM). With a client CA bundle the server asks
//! for a client certificate (and requires one when configured to); a
//! presented certificate that does not chain to that bundle fails the
//! handshake. A verified certificate is mapped to a tenant by its URI SANs
//! ([`MtlsRule`]); a certificate that maps to no tenant is not an error of
//! the handshake, but every request on that connection is refused as
//! unauthenticated ([`PeerInfo::cert`]).
//!
//! With a CRL file beside the CA bundle, a presented certificate that a
//! CRL of the file lists as revoked fails the handshake, and the file is
//! re-read when it changes ([`crate::ingress::crl`]). The choices:
//!
//! - **Depth: the whole chain.** The leaf and every intermediate the client
//!   sends are looked up, so revoking an intermediate CA refuses every
//!   certificate under it. (The trust anchors themselves are not: a CA is
//!   withdrawn by removing it from the bundle.)
//! - **Unknown status is accepted.** A certificate whose issuer has no CRL
//!   in the file is accepted: the file need only hold the CRLs of the CAs
//!   whose certificates get revoked.
//! - **Expired CRLs still apply.** A CRL past its nextUpdate still revokes
//!   what it lists (rustls' default; enforcing it would refuse every client
//!   of that CA whenever the CRL publisher stalls); loading one logs a
//!   warning, since revocations made since then are missing.
//! - **Checked on load.** Every CRL must parse, and one issued by a CA of
//!   the bundle must carry that CA's signature; otherwise the file is
//!   refused (at start: an error; on reload: the CRLs loaded before stay in
//!   force). CRLs of intermediates are checked against them at the
//!   handshake, where a bad signature fails it.
//! - **No session resumption.** Resuming a TLS session skips the client
//!   certificate check, so with a CRL file the server neither keeps session
//!   state nor sends TLS 1.3 tickets: every connection does a full
//!   handshake under the CRLs in force. Connections already open are not
//!   cut when a CRL changes.
//!
//! Errors name the file and what is wrong with it; they never carry key
//! bytes or PEM contents.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::auth::{validate_tenant, CertIdentity, Scopes};
use crate::ingress::crl::{ReloadingVerifier, POLL_PERIOD};
use crate::secret_file::check_private;

/// The placeholder an [`MtlsRule::uri_pattern`] must contain exactly once.
pub const TENANT_PLACEHOLDER: &str = "{tenant}";

/// Scopes certificate callers get unless configured otherwise: everything
/// but `kms:admin`.
pub const DEFAULT_MTLS_SCOPES: &str = "kms:read,kms:sign,kms:verify,kms:wrap,kms:unwrap";

/// How a verified client certificate maps to a tenant.
#[derive(Clone, Debug)]
pub struct MtlsRule {
    /// A URI SAN pattern with exactly one `{tenant}` placeholder, e.g.
    /// `spiffe://ron-kms.test/tenant/{tenant}`. The placeholder matches a
    /// tenant name ([`validate_tenant`]) and nothing else (no `/`; the text
    /// around it must match exactly).
    pub uri_pattern: String,
    /// Scopes granted to certificate callers (default
    /// [`DEFAULT_MTLS_SCOPES`]: no admin).
    pub scopes: Scopes,
}

impl MtlsRule {
    /// The default scopes for certificate callers ([`DEFAULT_MTLS_SCOPES`]).
    pub fn default_scopes() -> Scopes {
        Scopes::parse(DEFAULT_MTLS_SCOPES).expect("DEFAULT_MTLS_SCOPES parses")
    }

    /// Check `pattern` (exactly one `{tenant}`, not the placeholder alone)
    /// and build the rule. The error says what is wrong with the pattern.
    pub fn parse(pattern: &str, scopes: Scopes) -> Result<Self, String> {
        let (prefix, suffix) = split_pattern(pattern).ok_or_else(|| {
            format!("mTLS URI pattern {pattern:?} must contain {TENANT_PLACEHOLDER} exactly once")
        })?;
        if prefix.is_empty() && suffix.is_empty() {
            return Err(format!(
                "mTLS URI pattern {pattern:?} needs fixed text around {TENANT_PLACEHOLDER}, \
                 e.g. spiffe://example.org/tenant/{TENANT_PLACEHOLDER}"
            ));
        }
        if pattern.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "mTLS URI pattern {pattern:?} must not contain whitespace or control characters"
            ));
        }
        Ok(MtlsRule {
            uri_pattern: pattern.to_string(),
            scopes,
        })
    }

    /// The tenant `uri` names under this rule: the text between the
    /// pattern's exact prefix and suffix, when it is a valid tenant name.
    pub fn tenant_of(&self, uri: &str) -> Option<String> {
        let (prefix, suffix) = split_pattern(&self.uri_pattern)?;
        let tenant = uri.strip_prefix(prefix)?.strip_suffix(suffix)?;
        validate_tenant(tenant).ok()?;
        Some(tenant.to_string())
    }
}

/// `(prefix, suffix)` around the single placeholder, or None when the
/// pattern has no placeholder or more than one.
fn split_pattern(pattern: &str) -> Option<(&str, &str)> {
    let (prefix, suffix) = pattern.split_once(TENANT_PLACEHOLDER)?;
    if suffix.contains(TENANT_PLACEHOLDER) {
        return None;
    }
    Some((prefix, suffix))
}

/// Where the server's certificate and key are, and how clients are
/// authenticated.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1); must not be readable by
    /// group or others.
    pub key_file: PathBuf,
    /// PEM CA bundle: enables client certificates (optional unless
    /// `require_client_cert`).
    pub client_ca_file: Option<PathBuf>,
    /// PEM file of one or more `X509 CRL` sections (or one DER CRL) for the
    /// client CAs: a listed client certificate fails the handshake. Re-read
    /// when it changes. Needs `client_ca_file`.
    pub client_crl_file: Option<PathBuf>,
    /// When true, a handshake without a client certificate fails. Needs
    /// `client_ca_file`.
    pub require_client_cert: bool,
    /// How verified certificates map to tenants. Needed when
    /// `client_ca_file` is set.
    pub mtls: Option<MtlsRule>,
    /// Offer only the post-quantum hybrid X25519MLKEM768 (TLS 1.3): a
    /// client that offers only classical groups fails the handshake.
    pub require_pq_kx: bool,
}

/// The crypto provider of every TLS endpoint ron-kms runs (both fronts,
/// the PostgreSQL client, the CLI): aws-lc-rs with key exchange groups in
/// this order, X25519MLKEM768 first; with `require_pq` that group alone.
pub fn provider(require_pq: bool) -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::kx_group;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = if require_pq {
        vec![kx_group::X25519MLKEM768]
    } else {
        vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
            kx_group::SECP384R1,
        ]
    };
    p
}

/// Per-connection peer info (both fronts attach it to every request of the
/// connection).
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub remote: Option<std::net::SocketAddr>,
    /// `Some(Ok)`: a verified certificate mapped to a tenant.
    /// `Some(Err(reason))`: a verified certificate that matches no rule; the
    /// request must be refused as unauthenticated (log the reason).
    /// `None`: no client certificate.
    pub cert: Option<Result<CertIdentity, String>>,
    pub tls: bool,
}

/// What is wrong with the TLS settings. Messages name the file; they never
/// include key bytes or PEM contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate file {path}: {msg}")]
    Cert { path: String, msg: String },
    #[error("TLS private key file {path}: {msg}")]
    Key { path: String, msg: String },
    #[error("TLS client CA file {path}: {msg}")]
    ClientCa { path: String, msg: String },
    #[error("TLS client CRL file {path}: {msg}")]
    ClientCrl { path: String, msg: String },
    #[error("TLS settings: {0}")]
    Settings(String),
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// A PEM parsing error in words, without echoing any of the file's bytes
/// (the library's own messages can include lines of the file).
fn pem_reason(e: &rustls_pki_types::pem::Error, wanted: &str) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => format!("no {wanted} PEM section found"),
        E::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        E::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        E::Base64Decode(_) => "a PEM section is not valid base64".into(),
        E::Io(io) => format!("cannot read: {io}"),
        E::SectionTooLarge => "a PEM section is too large".into(),
        _ => "not valid PEM".into(),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

/// A TLS client config ([`provider`], X25519MLKEM768 offered first, TLS
/// 1.2+) that trusts only the CA
/// certificates in the PEM file at `ca_file`: for ron-kms's own outgoing
/// connections (PostgreSQL). Server names are checked against the
/// certificate.
pub fn client_config(ca_file: &Path) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))? {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider(false)))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// All `CERTIFICATE` sections of a PEM file, in order; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_reason(&e, "CERTIFICATE"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE PEM section found".into());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    check_private(path).map_err(|e| e.msg)?;
    let bytes = Zeroizing::new(read_file(path)?);
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        pem_reason(
            &e,
            "PRIVATE KEY (PKCS#8), EC PRIVATE KEY (SEC1) or RSA PRIVATE KEY (PKCS#1)",
        )
    })
}

/// The CRLs of a CRL file: one or more PEM `X509 CRL` sections, or one DER
/// CRL. Each must parse, and one whose issuer is a CA of `cas` (by name)
/// must carry that CA's signature. A CRL past its nextUpdate is kept, with a
/// warning. Errors say which CRL (`#1` is the first) and what is wrong,
/// never the file's bytes.
fn read_crls(
    path: &Path,
    cas: &[CertificateDer<'static>],
) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = read_file(path)?;
    // DER starts with a SEQUENCE tag; PEM with text.
    let crls = if bytes.first() == Some(&0x30) {
        vec![CertificateRevocationListDer::from(bytes)]
    } else {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_reason(&e, "X509 CRL"))?
    };
    if crls.is_empty() {
        return Err("no X509 CRL PEM section found".into());
    }
    for (i, crl) in crls.iter().enumerate() {
        check_crl(path, i + 1, crl.as_ref(), cas)?;
    }
    Ok(crls)
}

fn check_crl(
    path: &Path,
    n: usize,
    der: &[u8],
    cas: &[CertificateDer<'static>],
) -> Result<(), String> {
    use x509_parser::prelude::FromDer as _;
    use x509_parser::revocation_list::CertificateRevocationList;

    let (rest, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| format!("CRL #{n} is not a valid X.509 CRL: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("CRL #{n} is followed by stray bytes"));
    }
    let issuer = crl.issuer();
    let same_name: Vec<_> = cas
        .iter()
        .filter_map(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
        .filter(|(_, c)| c.subject().as_raw() == issuer.as_raw())
        .collect();
    if !same_name.is_empty() {
        let mut verdicts = same_name
            .iter()
            .map(|(_, ca)| crl.verify_signature(ca.public_key()));
        if !verdicts.any(|v| v.is_ok()) {
            return Err(format!(
                "CRL #{n} names the client CA \"{issuer}\" as its issuer but is not signed by it"
            ));
        }
    }
    if let Some(next) = crl.next_update() {
        if next.timestamp() < x509_parser::time::ASN1Time::now().timestamp() {
            tracing::warn!(
                file = %path.display(),
                crl = n,
                %issuer,
                next_update = %next,
                "TLS client CRL is past its nextUpdate: it still revokes what it lists, but revocations made since are missing"
            );
        }
    }
    Ok(())
}

/// The verifier of client certificates `s` asks for: None without a client
/// CA bundle; with a CRL file, one that follows the file as it changes
/// (checked every [`POLL_PERIOD`]). Build it once and hand it to
/// [`server_config_with`] for every front, so the file has one watcher.
pub fn client_verifier(s: &TlsSettings) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    if s.require_client_cert && s.client_ca_file.is_none() {
        return Err(TlsError::Settings(
            "requiring client certificates needs a client CA file".into(),
        ));
    }
    if s.client_crl_file.is_some() && s.client_ca_file.is_none() {
        return Err(TlsError::Settings(
            "a client CRL file needs a client CA file".into(),
        ));
    }
    if s.client_ca_file.is_some() && s.mtls.is_none() {
        return Err(TlsError::Settings(
            "a client CA file needs an mTLS URI pattern mapping certificates to tenants".into(),
        ));
    }
    let Some(ca_file) = &s.client_ca_file else {
        return Ok(None);
    };
    let ca_err = |msg: String| TlsError::ClientCa {
        path: shown(ca_file),
        msg,
    };
    let cas = read_certs(ca_file).map_err(ca_err)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in cas.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| ca_err(format!("certificate #{} is not usable: {e}", i + 1)))?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(provider(s.require_pq_kx));
    let require = s.require_client_cert;
    let builder = move |crls: Vec<CertificateRevocationListDer<'static>>| {
        let mut vb = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        if !require {
            vb = vb.allow_unauthenticated();
        }
        if !crls.is_empty() {
            // The whole chain, unknown status accepted, expiry not
            // enforced: the module doc says why.
            vb = vb.with_crls(crls).allow_unknown_revocation_status();
        }
        vb.build()
    };
    // The bundle alone first, so that its problems are named as its own.
    let plain = builder(Vec::new()).map_err(|e| ca_err(e.to_string()))?;
    let Some(crl_file) = &s.client_crl_file else {
        return Ok(Some(plain));
    };
    let path = crl_file.clone();
    let build = move || {
        let crls = read_crls(&path, &cas)?;
        builder(crls).map_err(|e| format!("a CRL is not usable: {e}"))
    };
    let verifier = ReloadingVerifier::watch(crl_file.clone(), Box::new(build), POLL_PERIOD)
        .map_err(|msg| TlsError::ClientCrl {
            path: shown(crl_file),
            msg,
        })?;
    Ok(Some(verifier))
}

/// Build the rustls server config for one front: [`provider`], TLS 1.2 and
/// 1.3 (1.3 only with `require_pq_kx`), the given ALPN list (HTTP: `[b"h2", b"http/1.1"]`, gRPC: `[b"h2"]`).
/// With `client_ca_file`, client certificates are verified against that
/// bundle (required when `require_client_cert`, else optional); a presented
/// certificate from another CA fails the handshake. With `client_crl_file`
/// too, a revoked one does. Each call starts its own watcher of the CRL
/// file: a server with several fronts uses [`client_verifier`] once and
/// [`server_config_with`].
pub fn server_config(s: &TlsSettings, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = client_verifier(s)?;
    server_config_with(s, alpn, verifier)
}

/// [`server_config`] with the client-certificate verifier given (from
/// [`client_verifier`] for the same settings).
pub fn server_config_with(
    s: &TlsSettings,
    alpn: &[&[u8]],
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(&s.cert_file).map_err(|msg| TlsError::Cert {
        path: shown(&s.cert_file),
        msg,
    })?;
    let key = read_key(&s.key_file).map_err(|msg| TlsError::Key {
        path: shown(&s.key_file),
        msg,
    })?;

    let provider = Arc::new(provider(s.require_pq_kx));
    let builder = ServerConfig::builder_with_provider(provider);
    let builder = if s.require_pq_kx {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(|e| TlsError::Settings(format!("protocol versions: {e}")))?;

    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(v) => builder.with_client_cert_verifier(v),
    };

    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::Settings(format!(
            "certificate {} with key {}: {e}",
            shown(&s.cert_file),
            shown(&s.key_file)
        ))
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    if s.client_crl_file.is_some() {
        // A resumed session keeps the client certificate it was made with,
        // unchecked: with revocation, every connection does a full
        // handshake (module doc).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// `cert:<first 12 hex digits of SHA-256(der)>`.
fn principal_of(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    format!("cert:{}", &hex::encode(digest.as_ref())[..12])
}

/// Map the verified peer chain (leaf first, as
/// `rustls::ServerConnection::peer_certificates()` returns it) to a
/// [`PeerInfo::cert`] value: None without certificates; otherwise the first
/// URI SAN of the leaf that matches the rule gives the tenant.
pub fn identity_from_chain(
    chain: Option<&[CertificateDer<'_>]>,
    rule: Option<&MtlsRule>,
) -> Option<Result<CertIdentity, String>> {
    let leaf = chain?.first()?;
    let Some(rule) = rule else {
        return Some(Err("client certificates are not mapped to tenants".into()));
    };
    let principal = principal_of(leaf.as_ref());
    Some(
        map_leaf(leaf.as_ref(), rule, &principal).map(|tenant| CertIdentity {
            tenant,
            principal: principal.clone(),
            scopes: rule.scopes,
        }),
    )
}

fn map_leaf(der: &[u8], rule: &MtlsRule, principal: &str) -> Result<String, String> {
    use x509_parser::extensions::GeneralName;

    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("client certificate {principal} cannot be parsed: {e}"))?;
    let san = cert.subject_alternative_name().map_err(|e| {
        format!("client certificate {principal} has an unreadable subjectAltName: {e}")
    })?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    if let Some(tenant) = uris.iter().find_map(|u| rule.tenant_of(u)) {
        return Ok(tenant);
    }
    // The URIs come from a certificate our CA signed; show a few, quoted
    // (escapes control characters) and cut short, for the log.
    let seen: Vec<String> = uris
        .iter()
        .take(3)
        .map(|u| format!("{:?}", u.chars().take(128).collect::<String>()))
        .collect();
    Err(format!(
        "client certificate {principal} has no URI SAN matching {:?} (URI SANs: [{}])",
        rule.uri_pattern,
        seen.join(", ")
    ))
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
