//! The audit log's keys at start-up: the checkpoint signing key and the
//! key of the records' input hashes, both held in custody and their
//! handles kept in the store's meta table (docs/audit.md).
use std::sync::Arc;

use zeroize::Zeroizing;

use super::StartError;
use crate::backend::Backend;
use crate::config::Config;
use crate::crypto::aead;
use crate::store::Store;

pub(super) const AUDIT_KEY_HANDLE: &str = "audit_key_handle";
const AUDIT_KEY_PUBLIC: &str = "audit_key_public";
pub(super) const AUDIT_INPUT_KEY_HANDLE: &str = "audit_input_key_handle";
const AUDIT_INPUT_KEY_SEALED: &str = "audit_input_key_sealed";
const AUDIT_INPUT_KEY_AAD: &[u8] = b"ron-kms audit input key v1";

/// The key of the audit records' input hashes: 32 random bytes made on
/// first start, sealed (AES-256-GCM) under a wrap key held in custody
/// (`_system/audit-input#v1`) and stored as `nonce || ciphertext`; opened
/// at every start. The plain key exists only in this process's memory.
fn open_input_key(
    store: &dyn Store,
    backend: &dyn Backend,
    suffix: &str,
) -> Result<crate::audit::InputKey, StartError> {
    use crate::backend::KeyLabel;
    use crate::crypto::Algorithm;
    let label = KeyLabel {
        tenant: "_system",
        kid: "audit-input#v1",
        algorithm: Algorithm::Aes256Gcm,
    };
    let err = |e: crate::backend::BackendError| StartError::Other(format!("audit input key: {e}"));
    let handle_key = format!("{AUDIT_INPUT_KEY_HANDLE}{suffix}");
    let sealed_key = format!("{AUDIT_INPUT_KEY_SEALED}{suffix}");
    if let (Some(handle), Some(sealed)) =
        (store.get_meta(&handle_key)?, store.get_meta(&sealed_key)?)
    {
        if sealed.len() < aead::AEAD_NONCE_LEN {
            return Err(StartError::Other(
                "audit input key: sealed value too short".into(),
            ));
        }
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        nonce.copy_from_slice(&sealed[..aead::AEAD_NONCE_LEN]);
        let key = backend
            .aead_open(
                label,
                &handle,
                &nonce,
                AUDIT_INPUT_KEY_AAD,
                &sealed[aead::AEAD_NONCE_LEN..],
            )
            .map_err(err)?;
        return Ok(crate::audit::InputKey::new(&key));
    }
    let g = backend.generate(label).map_err(err)?;
    let mut key = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
    crate::crypto::random_bytes(&mut key[..])
        .and_then(|_| crate::crypto::random_bytes(&mut nonce))
        .map_err(|e| StartError::Other(e.to_string()))?;
    let ct = backend
        .aead_seal(label, &g.handle, &nonce, AUDIT_INPUT_KEY_AAD, &key[..])
        .map_err(err)?;
    store.put_meta(&handle_key, &g.handle)?;
    store.put_meta(&sealed_key, &[&nonce[..], &ct].concat())?;
    Ok(crate::audit::InputKey::new(&key[..]))
}

/// The audit key (Ed25519, in custody, created on first start) and the log.
pub(super) async fn open_audit(
    cfg: &Config,
    store: Arc<dyn Store>,
    backend: Arc<dyn Backend>,
) -> Result<Arc<crate::audit::AuditLog>, StartError> {
    use crate::backend::KeyLabel;
    use crate::crypto::Algorithm;
    const TENANT: &str = "_system";
    const KID: &str = "audit#v1";
    let label = KeyLabel {
        tenant: TENANT,
        kid: KID,
        algorithm: Algorithm::Ed25519,
    };
    // On a shared store every replica has its own audit key (and chain),
    // stored under its node id.
    let suffix = if store.shared() {
        format!("/{}", cfg.node_id)
    } else {
        String::new()
    };
    let input_key = open_input_key(store.as_ref(), backend.as_ref(), &suffix)?;
    let (handle_key, public_key) = if store.shared() {
        (
            format!("{AUDIT_KEY_HANDLE}/{}", cfg.node_id),
            format!("{AUDIT_KEY_PUBLIC}/{}", cfg.node_id),
        )
    } else {
        (AUDIT_KEY_HANDLE.to_string(), AUDIT_KEY_PUBLIC.to_string())
    };
    let (handle, public) = match (store.get_meta(&handle_key)?, store.get_meta(&public_key)?) {
        (Some(h), Some(p)) => (h, p),
        _ => {
            let g = backend
                .generate(label)
                .map_err(|e| StartError::Other(format!("audit key: {e}")))?;
            store.put_meta(&handle_key, &g.handle)?;
            store.put_meta(&public_key, &g.public)?;
            (g.handle, g.public)
        }
    };
    let signer: crate::audit::Signer = Arc::new(move |msg: &[u8]| {
        let label = KeyLabel {
            tenant: TENANT,
            kid: KID,
            algorithm: Algorithm::Ed25519,
        };
        backend
            .sign(label, &handle, crate::backend::SignInput::Message(msg))
            .map_err(|e| e.to_string())
    });
    let opts = crate::audit::Options {
        node: cfg.node_id.clone(),
        sink: if cfg.audit.off_for_benchmarks {
            crate::audit::Sink::Off
        } else if cfg.amnesia {
            crate::audit::Sink::Memory
        } else {
            crate::audit::Sink::Dir(cfg.audit.dir.clone())
        },
        sync: cfg.audit.sync,
        checkpoint_interval: cfg.audit.checkpoint_interval,
        max_file_bytes: cfg.audit.max_file_bytes,
        min_free_bytes: cfg.audit.min_free_bytes,
        input_key,
    };
    let dir_for_task = opts.clone();
    tokio::task::spawn_blocking(move || {
        crate::audit::AuditLog::start_blocking(dir_for_task, &public, signer)
    })
    .await
    .map_err(|e| StartError::Other(e.to_string()))?
    .map_err(|e| StartError::Other(format!("audit log: {e}")))
}
