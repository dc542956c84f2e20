//! The custody backend's settings: which backend (`KMS_BACKEND`), and the
//! PKCS#11 and TPM settings that only that backend may carry. A setting for
//! another backend than the one chosen is an error naming it.
use std::path::PathBuf;
use std::time::Duration;

use super::{
    err, parse_bool, pick, BackendKind, ConfigError, Env, PassphraseSource, Picked, Pkcs11Config,
    TpmConfig, DEFAULT_ATTESTATION_INTERVAL_SECS, DEFAULT_PKCS11_POOL_SIZE,
};

/// The file's backend keys, moved out of [`super::FileConfig`].
pub(super) struct Fields {
    pub pkcs11_module: Option<PathBuf>,
    pub pkcs11_token_label: Option<String>,
    pub pkcs11_pin_file: Option<PathBuf>,
    pub pkcs11_pin_env: Option<String>,
    pub pkcs11_pool_size: Option<usize>,
    pub tpm_tcti: Option<String>,
    pub tpm_queue_depth: Option<usize>,
    pub attestation_required: Option<bool>,
    pub attestation_pcrs: Option<String>,
    pub attestation_pcr_digest: Option<String>,
    pub attestation_interval_secs: Option<u64>,
}

/// The backend named by `backend_p` (sealed-file when unset) with its
/// settings, env over file.
pub(super) fn load(
    f: Fields,
    backend_p: &Picked<String>,
    env: &dyn Env,
    fname: &str,
) -> Result<BackendKind, ConfigError> {
    let id = |s: String| s;
    let pk_module = pick(
        None,
        "",
        env,
        "KMS_PKCS11_MODULE",
        PathBuf::from,
        f.pkcs11_module,
        "pkcs11_module",
        fname,
    );
    let pk_label = pick(
        None,
        "",
        env,
        "KMS_PKCS11_TOKEN_LABEL",
        id,
        f.pkcs11_token_label,
        "pkcs11_token_label",
        fname,
    );
    let pk_pin_file = pick(
        None,
        "",
        env,
        "KMS_PKCS11_PIN_FILE",
        PathBuf::from,
        f.pkcs11_pin_file,
        "pkcs11_pin_file",
        fname,
    );
    let pk_pin_env = pick(
        None,
        "",
        env,
        "KMS_PKCS11_PIN_ENV",
        id,
        f.pkcs11_pin_env,
        "pkcs11_pin_env",
        fname,
    );
    let pk_pool = pick(
        None,
        "",
        env,
        "KMS_PKCS11_POOL_SIZE",
        |s: String| s.trim().parse::<usize>().unwrap_or(0),
        f.pkcs11_pool_size,
        "pkcs11_pool_size",
        fname,
    );
    let tpm_tcti = pick(
        None,
        "",
        env,
        "KMS_TPM_TCTI",
        id,
        f.tpm_tcti,
        "tpm_tcti",
        fname,
    );
    let tpm_queue = pick(
        None,
        "",
        env,
        "KMS_TPM_QUEUE_DEPTH",
        |s: String| s.trim().parse::<usize>().unwrap_or(0),
        f.tpm_queue_depth,
        "tpm_queue_depth",
        fname,
    );
    let att_required = pick(
        None,
        "",
        env,
        "KMS_ATTESTATION_REQUIRED",
        |s: String| parse_bool(&s),
        f.attestation_required.map(Some),
        "attestation_required",
        fname,
    );
    let att_pcrs = pick(
        None,
        "",
        env,
        "KMS_ATTESTATION_PCRS",
        id,
        f.attestation_pcrs,
        "attestation_pcrs",
        fname,
    );
    let att_digest = pick(
        None,
        "",
        env,
        "KMS_ATTESTATION_PCR_DIGEST",
        id,
        f.attestation_pcr_digest,
        "attestation_pcr_digest",
        fname,
    );
    let att_interval = pick(
        None,
        "",
        env,
        "KMS_ATTESTATION_INTERVAL_SECS",
        |s: String| s.trim().parse::<u64>().unwrap_or(0),
        f.attestation_interval_secs,
        "attestation_interval_secs",
        fname,
    );
    let backend_name = backend_p.value.as_deref().unwrap_or("sealed-file");
    if backend_name != "tpm" {
        let set = [
            (tpm_tcti.value.is_some(), &tpm_tcti.origin),
            (tpm_queue.value.is_some(), &tpm_queue.origin),
            (att_required.value.is_some(), &att_required.origin),
            (att_pcrs.value.is_some(), &att_pcrs.origin),
            (att_digest.value.is_some(), &att_digest.origin),
            (att_interval.value.is_some(), &att_interval.origin),
        ];
        if let Some((_, origin)) = set.iter().find(|(is_set, _)| *is_set) {
            return Err(err(
                origin.as_str(),
                format!(
                    "is a tpm setting, but the backend is {backend_name} (set KMS_BACKEND=tpm)"
                ),
            ));
        }
    }
    if backend_name != "pkcs11" {
        let set = [
            (pk_module.value.is_some(), &pk_module.origin),
            (pk_label.value.is_some(), &pk_label.origin),
            (pk_pin_file.value.is_some(), &pk_pin_file.origin),
            (pk_pin_env.value.is_some(), &pk_pin_env.origin),
            (pk_pool.value.is_some(), &pk_pool.origin),
        ];
        if let Some((_, origin)) = set.iter().find(|(is_set, _)| *is_set) {
            return Err(err(
                origin.as_str(),
                format!("is a pkcs11 setting, but the backend is {backend_name} (set KMS_BACKEND=pkcs11)"),
            ));
        }
    }
    let backend = match backend_name {
        "sealed-file" => BackendKind::SealedFile,
        "pkcs11" => {
            let module = pk_module
                .value
                .ok_or_else(|| err("KMS_PKCS11_MODULE", "is required with KMS_BACKEND=pkcs11 (the path of the PKCS#11 module, e.g. libsofthsm2.so)"))?;
            let token_label = pk_label.value.filter(|l| !l.is_empty()).ok_or_else(|| {
                err(
                    "KMS_PKCS11_TOKEN_LABEL",
                    "is required with KMS_BACKEND=pkcs11",
                )
            })?;
            let pin = match (pk_pin_file.value, pk_pin_env.value) {
                (Some(f), None) => PassphraseSource::File(f),
                (None, Some(e)) => {
                    if e.is_empty() || e.contains('=') {
                        return Err(err(pk_pin_env.origin, "must be the name of an environment variable"));
                    }
                    PassphraseSource::Env(e)
                }
                (None, None) => {
                    return Err(err(
                        "KMS_PKCS11_PIN_FILE",
                        "the user PIN is required with KMS_BACKEND=pkcs11: set KMS_PKCS11_PIN_FILE or KMS_PKCS11_PIN_ENV",
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(err(
                        "KMS_PKCS11_PIN_FILE",
                        "set only one of KMS_PKCS11_PIN_FILE, KMS_PKCS11_PIN_ENV",
                    ))
                }
            };
            let pool_size = match pk_pool.value {
                None => DEFAULT_PKCS11_POOL_SIZE,
                Some(n @ 1..=256) => n,
                Some(_) => return Err(err(pk_pool.origin, "must be a whole number from 1 to 256")),
            };
            BackendKind::Pkcs11(Pkcs11Config {
                module,
                token_label,
                pin,
                pool_size,
            })
        }
        "tpm" => {
            use crate::backend::tpm::attest::AttestationSettings;
            let tcti = tpm_tcti.value.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
                err(
                    "KMS_TPM_TCTI",
                    "is required with KMS_BACKEND=tpm (e.g. device:/dev/tpmrm0, tabrmd, swtpm:host=127.0.0.1,port=2321)",
                )
            })?;
            let queue_depth = match tpm_queue.value {
                None => crate::backend::tpm::DEFAULT_QUEUE_DEPTH,
                Some(n @ 1..=4096) => n,
                Some(_) => {
                    return Err(err(
                        tpm_queue.origin,
                        "must be a whole number from 1 to 4096",
                    ))
                }
            };
            let mut attestation = AttestationSettings::default();
            if let Some(sel) = att_pcrs.value {
                let (bank, slots) = AttestationSettings::parse_selection(sel.trim())
                    .map_err(|m| err(&att_pcrs.origin, m))?;
                attestation.bank = bank;
                attestation.slots = slots;
            }
            if let Some(d) = att_digest.value {
                let bytes = hex::decode(d.trim())
                    .ok()
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| {
                        err(
                            &att_digest.origin,
                            "must be 64 hex digits (a SHA-256 digest)",
                        )
                    })?;
                attestation.expected_digest = Some(bytes);
            }
            let attestation_required = match att_required.value {
                None => false,
                Some(Some(b)) => b,
                Some(None) => return Err(err(att_required.origin, "must be true or false")),
            };
            if attestation_required && attestation.expected_digest.is_none() {
                return Err(err(
                    "KMS_ATTESTATION_PCR_DIGEST",
                    "is required with KMS_ATTESTATION_REQUIRED=true: the PCR digest the quote must show",
                ));
            }
            let attestation_interval = match att_interval.value {
                None => Duration::from_secs(DEFAULT_ATTESTATION_INTERVAL_SECS),
                Some(n @ 1..=86_400) => Duration::from_secs(n),
                Some(_) => return Err(err(att_interval.origin, "must be 1 to 86400 seconds")),
            };
            BackendKind::Tpm(TpmConfig {
                tcti,
                queue_depth,
                attestation,
                attestation_required,
                attestation_interval,
            })
        }
        other => {
            return Err(err(
                &backend_p.origin,
                format!("{other:?} is not one of sealed-file, pkcs11, tpm"),
            ))
        }
    };
    Ok(backend)
}
