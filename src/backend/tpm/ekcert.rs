//! The endorsement key's certificate: with `KMS_TPM_EK_CA_FILE`, the TPM
//! must hold a certificate for one of its endorsement keys that chains to
//! a self-signed certificate in that file, and that certificate must be
//! for the EK this TPM presents. The session is then salted to that EK
//! ([`super::device`]), so every answer in it — the SRK and AK public areas
//! included — comes from the TPM holding the certified EK's private part.
//!
//! The certificates are read from the TPM's NV indices of the TCG EK
//! Credential Profile: ECC P-256 (`0x01c0000a`), ECC P-384 (`0x01c00016`)
//! and RSA 2048 (`0x01c00002`), tried in that order; the first one that
//! verifies wins. The file holds PEM certificates: the roots it trusts and
//! any intermediates between them and the EK certificates. This module
//! parses and verifies; it sends no TPM command.
use std::path::{Path, PathBuf};

use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::Public;
use x509_parser::certificate::X509Certificate;
use x509_parser::public_key::PublicKey;

/// The endorsement keys whose certificates are looked for, in order.
pub(super) const EK_KINDS: [(AsymmetricAlgorithmSelection, &str); 3] = [
    (
        AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        "ECC P-256",
    ),
    (
        AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP384),
        "ECC P-384",
    ),
    (
        AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        "RSA 2048",
    ),
];

/// Longest chain from an EK certificate to a root.
const MAX_DEPTH: usize = 5;

/// The certificates of `KMS_TPM_EK_CA_FILE`, DER each.
#[derive(Debug)]
pub struct EkCa {
    path: PathBuf,
    certs: Vec<Vec<u8>>,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| format!("not an X.509 certificate: {e}"))
}

fn self_signed(c: &X509Certificate<'_>) -> bool {
    c.subject() == c.issuer() && c.verify_signature(None).is_ok()
}

/// The public key a TPM public area holds, as a certificate's
/// SubjectPublicKeyInfo carries it: the SEC1 point `04 ‖ x ‖ y`, or the RSA
/// modulus without leading zeros.
fn tpm_key(public: &Public) -> Result<Vec<u8>, String> {
    match public {
        Public::Ecc {
            unique, parameters, ..
        } => {
            let n = match parameters.ecc_curve() {
                EccCurve::NistP256 => 32,
                EccCurve::NistP384 => 48,
                c => return Err(format!("EK curve {c:?} is not supported")),
            };
            let mut out = vec![4u8];
            for c in [unique.x().value(), unique.y().value()] {
                if c.len() > n {
                    return Err("EK coordinate too long".into());
                }
                out.extend(std::iter::repeat_n(0u8, n - c.len()));
                out.extend_from_slice(c);
            }
            Ok(out)
        }
        Public::Rsa { unique, .. } => Ok(strip(unique.value()).to_vec()),
        _ => Err("the EK is neither ECC nor RSA".into()),
    }
}

fn strip(b: &[u8]) -> &[u8] {
    let z = b.iter().take_while(|x| **x == 0).count();
    &b[z..]
}

fn cert_key(c: &X509Certificate<'_>) -> Result<Vec<u8>, String> {
    match c
        .public_key()
        .parsed()
        .map_err(|e| format!("its public key: {e}"))?
    {
        PublicKey::EC(p) => Ok(p.data().to_vec()),
        PublicKey::RSA(r) => Ok(strip(r.modulus).to_vec()),
        _ => Err("its public key is neither ECC nor RSA".into()),
    }
}

impl EkCa {
    /// Read the PEM file; it must hold at least one certificate, and a
    /// self-signed one (a root).
    pub fn load(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let data = std::fs::read(path).map_err(|e| format!("KMS_TPM_EK_CA_FILE {shown}: {e}"))?;
        let mut certs = Vec::new();
        for pem in x509_parser::pem::Pem::iter_from_buffer(&data) {
            let pem = pem.map_err(|e| format!("KMS_TPM_EK_CA_FILE {shown}: {e}"))?;
            if pem.label == "CERTIFICATE" {
                parse(&pem.contents).map_err(|e| format!("KMS_TPM_EK_CA_FILE {shown}: {e}"))?;
                certs.push(pem.contents);
            }
        }
        if certs.is_empty() {
            return Err(format!(
                "KMS_TPM_EK_CA_FILE {shown}: no PEM certificate in it"
            ));
        }
        let ca = EkCa {
            path: path.to_path_buf(),
            certs,
        };
        if !ca
            .certs
            .iter()
            .any(|d| parse(d).is_ok_and(|c| self_signed(&c)))
        {
            return Err(format!(
                "KMS_TPM_EK_CA_FILE {shown}: no self-signed (root) certificate in it"
            ));
        }
        Ok(ca)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Ok` when `cert` (DER, as read from the TPM's NV index; padding after
    /// it is ignored) is valid now, certifies `ek`, and chains through
    /// certificates of the file to a self-signed one of the file, each
    /// signature verifying, each issuer a valid CA.
    pub fn verify(&self, cert: &[u8], ek: &Public) -> Result<(), String> {
        let leaf = parse(cert)?;
        if !leaf.validity().is_valid() {
            return Err("the EK certificate is not valid now".into());
        }
        let want = tpm_key(ek)?;
        if cert_key(&leaf)? != want {
            return Err("the EK certificate is for another key than this TPM's EK".into());
        }
        let pool: Vec<X509Certificate<'_>> = self
            .certs
            .iter()
            .map(|d| parse(d))
            .collect::<Result<_, _>>()?;
        let mut current = leaf;
        for _ in 0..MAX_DEPTH {
            let issuer = pool
                .iter()
                .filter(|c| c.subject() == current.issuer())
                .find(|c| current.verify_signature(Some(c.public_key())).is_ok())
                .ok_or_else(|| {
                    format!(
                        "no certificate in {} issued {:?} (issuer {:?})",
                        self.path.display(),
                        current.subject().to_string(),
                        current.issuer().to_string()
                    )
                })?;
            if !issuer.is_ca() || !issuer.validity().is_valid() {
                return Err(format!(
                    "{:?} in {} is not a valid CA certificate",
                    issuer.subject().to_string(),
                    self.path.display()
                ));
            }
            if self_signed(issuer) {
                return Ok(());
            }
            current = issuer.clone();
        }
        Err(format!(
            "no root in {} within {MAX_DEPTH} certificates of the EK's",
            self.path.display()
        ))
    }
}
