//! Sealed keys on a TPM: what the TPM cannot do natively (Ed25519, ML-DSA,
//! ML-KEM, the hybrids, AES-256-GCM wrap keys) is a software key encrypted
//! with AES-256-GCM under a fresh 32-byte data key, and that data key is a
//! TPM *sealed data object* under the SRK. Using the key means loading the
//! sealed object, `TPM2_Unseal`, and opening the software key into
//! zeroizing memory for one operation.
//!
//! This module owns the data keys and the backend's [`Sealer`] impl. It
//! must not keep a data key or an unsealed key beyond the call, and it does
//! not run the algorithms: the shared sealed-key operations
//! ([`crate::backend::soft::SealedCustody`]) do, on what `unseal` returns.
use tss_esapi::structures::SensitiveData;
use tss_esapi::traits::Marshall;
use zeroize::Zeroizing;

use super::device::{with_loaded, Conn};
use super::error::{Ctx, Fail};
use super::handle::{self, Parsed};
use super::templates::sealed_object_template;
use super::TpmBackend;
use crate::backend::soft::{crypto_err, label_aad, Sealer};
use crate::backend::{BackendError, KeyLabel};
use crate::crypto::{aead, random_bytes};

/// Bytes of the data key a sealed object holds.
const DEK_LEN: usize = 32;

/// A new sealed data object holding `dek`: its public and private areas.
fn create_sealed_object(conn: &mut Conn, dek: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Fail> {
    let template = sealed_object_template().ctx("sealed-object template")?;
    let data = SensitiveData::try_from(dek.to_vec()).ctx("sealed data")?;
    let created = conn
        .ctx
        .create(conn.srk, template, None, Some(data), None, None)
        .ctx("TPM2_Create (sealed object)")?;
    Ok((
        created.out_public.marshall().ctx("marshal public")?,
        created.out_private.value().to_vec(),
    ))
}

impl Sealer for TpmBackend {
    /// Seal under a fresh data key held by a new TPM sealed object.
    fn seal(&self, label: KeyLabel<'_>, private: &[u8]) -> Result<Vec<u8>, BackendError> {
        let mut dek = Zeroizing::new(vec![0u8; DEK_LEN]);
        random_bytes(&mut dek).map_err(|e| BackendError::Crypto(e.to_string()))?;
        let (public, object_private) = self.run(|conn| create_sealed_object(conn, &dek))?;
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        random_bytes(&mut nonce).map_err(|e| BackendError::Crypto(e.to_string()))?;
        let ct = aead::seal(&dek, &nonce, &label_aad(&label), private).map_err(crypto_err)?;
        Ok(handle::sealed(&public, &object_private, &nonce, &ct))
    }

    fn unseal(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let Parsed::Sealed {
            object,
            nonce,
            sealed,
        } = handle::parse(handle)?
        else {
            return Err(BackendError::Sealed("not a sealed-key handle"));
        };
        let dek = self.run(|conn| {
            with_loaded(conn, &object, |ctx, h| {
                let data = ctx.unseal(h.into()).ctx("TPM2_Unseal")?;
                Ok(Zeroizing::new(data.value().to_vec()))
            })
        })?;
        if dek.len() != DEK_LEN {
            return Err(BackendError::Sealed("sealed object holds no data key"));
        }
        aead::open(&dek, &nonce, &label_aad(&label), sealed).map_err(|_| {
            BackendError::Sealed("authentication failed (wrong TPM or corrupted record)")
        })
    }
}
