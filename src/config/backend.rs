//! The custody backend's settings: which backend (`KMS_BACKEND`), and the
//! PKCS#11 and TPM settings that only that backend may carry. A setting for
//! another backend than the one chosen is an error naming it.

use std::path::Path;
use std::time::Duration;

use super::source::{Amnesia, Raw, Src};
use super::{
    err, BackendKind, ConfigError, FileConfig, MasterKeySource, PassphraseSource, Pkcs11Config,
    TpmConfig, DEFAULT_ATTESTATION_INTERVAL_SECS, DEFAULT_PKCS11_POOL_SIZE,
};

/// The backend named by `KMS_BACKEND` (sealed-file when unset) with its
/// settings, env over file.
pub(super) fn load(
    file: &mut FileConfig,
    src: &Src<'_>,
    amnesia: &Amnesia,
) -> Result<BackendKind, ConfigError> {
    let backend_p = src.text("KMS_BACKEND", "backend", file.backend.take());
    if let Some(b) = backend_p.value.as_deref().filter(|b| *b != "sealed-file") {
        amnesia.refuse(
            true,
            &backend_p.origin,
            &format!("the {b} backend would persist keys outside this process"),
        )?;
    }
    let pk_module = src.path(
        "KMS_PKCS11_MODULE",
        "pkcs11_module",
        file.pkcs11_module.take(),
    );
    let pk_label = src.text(
        "KMS_PKCS11_TOKEN_LABEL",
        "pkcs11_token_label",
        file.pkcs11_token_label.take(),
    );
    let pk_pin_file = src.path(
        "KMS_PKCS11_PIN_FILE",
        "pkcs11_pin_file",
        file.pkcs11_pin_file.take(),
    );
    let pk_pin_env = src.text(
        "KMS_PKCS11_PIN_ENV",
        "pkcs11_pin_env",
        file.pkcs11_pin_env.take(),
    );
    let pk_pool = src.number_raw(
        "KMS_PKCS11_POOL_SIZE",
        "pkcs11_pool_size",
        file.pkcs11_pool_size.take(),
    );
    let tpm_tcti = src.text("KMS_TPM_TCTI", "tpm_tcti", file.tpm_tcti.take());
    let tpm_queue = src.number_raw(
        "KMS_TPM_QUEUE_DEPTH",
        "tpm_queue_depth",
        file.tpm_queue_depth.take(),
    );
    let tpm_ek_ca = src.path(
        "KMS_TPM_EK_CA_FILE",
        "tpm_ek_ca_file",
        file.tpm_ek_ca_file.take(),
    );
    let tpm_seal = src.text(
        "KMS_TPM_SEAL_PCRS",
        "tpm_seal_pcrs",
        file.tpm_seal_pcrs.take(),
    );
    let att_required = src.raw(
        "KMS_ATTESTATION_REQUIRED",
        "attestation_required",
        file.attestation_required.take().map(Some),
        |s| super::parse_bool(&s),
    );
    let att_pcrs = src.text(
        "KMS_ATTESTATION_PCRS",
        "attestation_pcrs",
        file.attestation_pcrs.take(),
    );
    let att_digest = src.text(
        "KMS_ATTESTATION_PCR_DIGEST",
        "attestation_pcr_digest",
        file.attestation_pcr_digest.take(),
    );
    let att_interval = src.number_raw(
        "KMS_ATTESTATION_INTERVAL_SECS",
        "attestation_interval_secs",
        file.attestation_interval_secs.take(),
    );
    let backend_name = backend_p.value.as_deref().unwrap_or("sealed-file");
    only_for(
        "tpm",
        backend_name,
        &[
            tpm_tcti.given(),
            tpm_queue.given(),
            tpm_ek_ca.given(),
            tpm_seal.given(),
            att_required.given(),
            att_pcrs.given(),
            att_digest.given(),
            att_interval.given(),
        ],
    )?;
    only_for(
        "pkcs11",
        backend_name,
        &[
            pk_module.given(),
            pk_label.given(),
            pk_pin_file.given(),
            pk_pin_env.given(),
            pk_pool.given(),
        ],
    )?;
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
                Some(Some(n @ 1..=256)) => n,
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
                Some(Some(n @ 1..=4096)) => n,
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
                Some(Some(n @ 1..=86_400)) => Duration::from_secs(n),
                Some(_) => return Err(err(att_interval.origin, "must be 1 to 86400 seconds")),
            };
            BackendKind::Tpm(TpmConfig {
                tcti,
                queue_depth,
                ek_ca_file: tpm_ek_ca.value,
                seal_pcrs: match tpm_seal.value {
                    None => None,
                    Some(v) => Some(
                        crate::backend::tpm::PcrSelection::parse(v.trim())
                            .map_err(|m| err(&tpm_seal.origin, m))?,
                    ),
                },
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

/// Where sealed-file custody's master key comes from: a key file, a
/// passphrase file or the name of a passphrase variable; one at most, and
/// none with a device backend (the device seals keys itself).
pub(super) fn master(
    file: &mut FileConfig,
    src: &Src<'_>,
    amnesia: &Amnesia,
    backend: &BackendKind,
    data_dir: &Path,
) -> Result<MasterKeySource, ConfigError> {
    let key_file = src.path(
        "KMS_MASTER_KEY_FILE",
        "master_key_file",
        file.master_key_file.take(),
    );
    let pass_file = src.path(
        "KMS_MASTER_PASSPHRASE_FILE",
        "master_passphrase_file",
        file.master_passphrase_file.take(),
    );
    let pass_env = src.text(
        "KMS_MASTER_PASSPHRASE_ENV",
        "master_passphrase_env",
        file.master_passphrase_env.take(),
    );
    // the first of the three that is set, for the messages below
    let first_set = [&key_file.origin, &pass_file.origin, &pass_env.origin]
        .into_iter()
        .zip([key_file.is_set(), pass_file.is_set(), pass_env.is_set()])
        .find(|(_, set)| *set)
        .map(|(origin, _)| origin.clone());
    if let Some(origin) = &first_set {
        amnesia.refuse(
            true,
            origin,
            "its master key is random and never leaves memory",
        )?;
    }
    let Raw {
        value: pass_env_v,
        origin: pass_env_o,
    } = pass_env;
    let master = match (key_file.value, pass_file.value, pass_env_v) {
        (None, None, None) => MasterKeySource::KeyFile(data_dir.join("master.key")),
        (Some(k), None, None) => MasterKeySource::KeyFile(k),
        (None, Some(f), None) => MasterKeySource::Passphrase(PassphraseSource::File(f)),
        (None, None, Some(e)) => {
            if e.is_empty() || e.contains('=') {
                return Err(err(pass_env_o, "must be the name of an environment variable"));
            }
            MasterKeySource::Passphrase(PassphraseSource::Env(e))
        }
        _ => {
            return Err(err(
                "KMS_MASTER_KEY_FILE",
                "set only one of KMS_MASTER_KEY_FILE, KMS_MASTER_PASSPHRASE_FILE, KMS_MASTER_PASSPHRASE_ENV",
            ))
        }
    };
    if let (Some(origin), false) = (first_set, matches!(backend, BackendKind::SealedFile)) {
        return Err(err(
            origin,
            "is a sealed-file setting; with KMS_BACKEND=pkcs11 or tpm, custody seals keys itself",
        ));
    }
    Ok(master)
}

/// Settings of backend `name` (`set`: whether each is given, and where)
/// are refused unless `name` is the backend.
fn only_for(name: &str, backend: &str, set: &[(bool, &str)]) -> Result<(), ConfigError> {
    match set.iter().find(|(is_set, _)| *is_set) {
        Some((_, origin)) if backend != name => Err(err(
            *origin,
            format!("is a {name} setting, but the backend is {backend} (set KMS_BACKEND={name})"),
        )),
        _ => Ok(()),
    }
}
