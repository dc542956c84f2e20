//! CRL parameters for a test CA (rcgen): shared by the integration tests'
//! PKI (`certs.rs`) and the TLS unit tests (`src/ingress/tls_tests.rs`).
use rcgen::{
    date_time_ymd, CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber,
};

/// CRL number `number`, valid from 1 June 2020 to 1 January `until`,
/// revoking the certificates `revoked` (DER).
pub fn params(number: u64, revoked: &[&[u8]], until: i32) -> CertificateRevocationListParams {
    let revoked_certs = revoked
        .iter()
        .map(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(der).expect("certificate DER");
            RevokedCertParams {
                serial_number: SerialNumber::from_slice(c.raw_serial()),
                revocation_time: date_time_ymd(2020, 6, 1),
                reason_code: None,
                invalidity_date: None,
            }
        })
        .collect();
    CertificateRevocationListParams {
        this_update: date_time_ymd(2020, 6, 1),
        next_update: date_time_ymd(until, 1, 1),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
}
