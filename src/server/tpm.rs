//! TPM custody at start-up and offline: opening the TPM held to the
//! identity pinned in the store (and pinning it on the first start), the
//! PCR state its sealed keys are bound to, and `ron-kms tpm reseal`
//! (docs/tpm.md).
use std::sync::Arc;

use super::audit_keys::{AUDIT_INPUT_KEY_HANDLE, AUDIT_KEY_HANDLE};
use super::{open_data_dir_for, StartError};
use crate::backend::tpm::{TpmBackend, TpmSettings};
use crate::config::{BackendKind, Config};
use crate::crypto::Provider;
use crate::store::Store;

const TPM_IDENTITY: &str = "tpm_identity";

/// Open the TPM held to the identity pinned in the store; on the first
/// start (no pin yet) pin the identity of the TPM that answers.
pub(super) fn open_tpm(
    store: &dyn Store,
    t: &crate::config::TpmConfig,
    provider: Arc<Provider>,
    seal_check: bool,
) -> Result<TpmBackend, StartError> {
    use crate::backend::tpm::identity::{fingerprint, Identity};
    let err = |e: String| StartError::Other(format!("tpm: {e}"));
    let pinned = store
        .get_meta(TPM_IDENTITY)?
        .map(|b| Identity::decode(&b))
        .transpose()
        .map_err(|e| err(format!("the identity pinned in the store: {e}")))?;
    let first = pinned.is_none();
    let b = TpmBackend::open(
        TpmSettings {
            tcti: t.tcti.clone(),
            queue_depth: t.queue_depth,
            ek_ca_file: t.ek_ca_file.clone(),
            seal_pcrs: t.seal_pcrs.clone(),
            attestation: t.attestation.clone(),
        },
        provider,
        pinned,
    )
    .map_err(err)?;
    if first {
        let id = b.identity().encode();
        let won = store.insert_meta(TPM_IDENTITY, &id)?;
        if won != id {
            return Err(err(
                "another process pinned a different TPM in this store at the same time".into(),
            ));
        }
        tracing::info!(
            ek = %fingerprint(&b.identity().ek),
            srk = %fingerprint(&b.identity().srk),
            ak = %fingerprint(&b.identity().ak),
            "pinned this TPM's identity in the store"
        );
    }
    match b.seal_pcrs().cloned() {
        Some(sel) if seal_check => {
            let stored = match store.get_meta(TPM_SEAL_TARGET)? {
                Some(v) if !v.is_empty() => v,
                cleared => {
                    // the first start with a PCR policy (or the first since
                    // `tpm reseal` removed it): seal to the state now
                    let now = b
                        .current_seal_digest()
                        .map_err(|e| err(e.to_string()))?
                        .unwrap_or_default();
                    let v = seal_target(&sel, &now);
                    if cleared.is_some() {
                        store.put_meta(TPM_SEAL_TARGET, &v)?;
                        v
                    } else {
                        store.insert_meta(TPM_SEAL_TARGET, &v)?
                    }
                }
            };
            let (was, digest) = parse_seal_target(&stored)
                .ok_or_else(|| err(format!("the {TPM_SEAL_TARGET} in the store is malformed")))?;
            if was != sel {
                return Err(err(format!(
                "KMS_TPM_SEAL_PCRS is {sel}, but the keys are sealed to {was}: run `ron-kms tpm reseal` (docs/tpm.md, \"Sealing to PCRs\")"
            )));
            }
            b.set_seal_target(digest);
        }
        _ => {}
    }
    Ok(b)
}

/// What [`reseal_tpm`] did.
#[derive(Debug)]
pub struct Resealed {
    /// Key versions and system keys sealed again.
    pub keys: usize,
    /// The PCR selection and the digest they are sealed to now (none: no
    /// PCR policy).
    pub sealed_to: Option<(String, String)>,
}

/// `ron-kms tpm reseal`: seal every TPM-sealed key of the data dir — key
/// versions and the audit log's system keys — again, under `cfg`'s
/// `KMS_TPM_SEAL_PCRS`, to the PCR values whose digest is `target` (None:
/// the PCRs' current values), and record that as the state the keys are
/// sealed to. The PCRs must still hold the state the keys are sealed to now
/// (each key is unsealed first). Offline: it holds the data-dir lock.
pub fn reseal_tpm(cfg: &Config, target: Option<Vec<u8>>) -> Result<Resealed, StartError> {
    use crate::backend::KeyLabel;
    if !matches!(cfg.backend, BackendKind::Tpm(_)) {
        return Err(StartError::Other("tpm reseal needs KMS_BACKEND=tpm".into()));
    }
    let opened = open_data_dir_for(cfg, false)?;
    let tpm = opened.tpm.clone().expect("a tpm backend");
    let store = opened.store.clone();
    let err = |e: crate::backend::BackendError| StartError::Other(format!("tpm reseal: {e}"));
    let target = match (target, tpm.seal_pcrs()) {
        (Some(t), Some(_)) if t.len() == 32 => t,
        (Some(_), Some(_)) => {
            return Err(StartError::Other(
                "tpm reseal: the PCR digest must be 32 bytes (64 hex digits)".into(),
            ))
        }
        (Some(_), None) => {
            return Err(StartError::Other(
                "tpm reseal: a PCR digest needs KMS_TPM_SEAL_PCRS".into(),
            ))
        }
        (None, _) => tpm.current_seal_digest().map_err(err)?.unwrap_or_default(),
    };
    let mut n = 0;
    for rec in store.load_keys()? {
        for v in &rec.versions {
            let Some(h) = &v.handle else { continue };
            let kid = crate::store::kid(&rec.name, v.version);
            let label = KeyLabel {
                tenant: &rec.tenant,
                kid: &kid,
                algorithm: rec.algorithm,
            };
            if let Some(new) = tpm.reseal(label, h, &target).map_err(err)? {
                if !store.replace_handle(&rec.tenant, &rec.name, v.version, h, &new)? {
                    return Err(StartError::Other(format!(
                        "tpm reseal: {}/{kid} changed while it was re-sealed; run it again",
                        rec.tenant
                    )));
                }
                n += 1;
            }
        }
    }
    for (meta, kid, algorithm) in [
        (
            AUDIT_KEY_HANDLE,
            "audit#v1",
            crate::crypto::Algorithm::Ed25519,
        ),
        (
            AUDIT_INPUT_KEY_HANDLE,
            "audit-input#v1",
            crate::crypto::Algorithm::Aes256Gcm,
        ),
    ] {
        let Some(h) = store.get_meta(meta)? else {
            continue;
        };
        let label = KeyLabel {
            tenant: "_system",
            kid,
            algorithm,
        };
        if let Some(new) = tpm.reseal(label, &h, &target).map_err(err)? {
            store.put_meta(meta, &new)?;
            n += 1;
        }
    }
    let sealed_to = match tpm.seal_pcrs() {
        Some(sel) => {
            store.put_meta(TPM_SEAL_TARGET, &seal_target(sel, &target))?;
            Some((sel.to_string(), hex::encode(&target)))
        }
        None => {
            // no policy any more: an empty entry is read as none
            if store.get_meta(TPM_SEAL_TARGET)?.is_some() {
                store.put_meta(TPM_SEAL_TARGET, b"")?;
            }
            None
        }
    };
    Ok(Resealed { keys: n, sealed_to })
}

/// Which PCR values TPM-sealed keys are sealed to:
/// `"bank:i,j" 0x00 digest(32)`.
const TPM_SEAL_TARGET: &str = "tpm_seal_target";

fn seal_target(sel: &crate::backend::tpm::PcrSelection, digest: &[u8]) -> Vec<u8> {
    [sel.to_string().as_bytes(), &[0], digest].concat()
}

fn parse_seal_target(v: &[u8]) -> Option<(crate::backend::tpm::PcrSelection, Vec<u8>)> {
    let i = v.iter().position(|b| *b == 0)?;
    let sel = crate::backend::tpm::PcrSelection::parse(std::str::from_utf8(&v[..i]).ok()?).ok()?;
    let d = v[i + 1..].to_vec();
    (d.len() == 32).then_some((sel, d))
}
