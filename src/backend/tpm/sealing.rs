//! Sealed keys on a TPM: what the TPM cannot do natively (Ed25519, ML-DSA,
//! ML-KEM, the hybrids, AES-256-GCM wrap keys) is a software key encrypted
//! with AES-256-GCM under a fresh 32-byte data key, and that data key is a
//! TPM *sealed data object* under the SRK, with its own random authValue
//! bound to the key's label ([`super::session`]). Using the key means
//! loading the sealed object, `TPM2_Unseal` (the data key comes back
//! encrypted by the session), and opening the software key into zeroizing
//! memory for one operation.
//!
//! This module owns the data keys and the backend's [`Sealer`] impl. It
//! must not keep a data key or an unsealed key beyond the call, and it does
//! not run the algorithms: the shared sealed-key operations
//! ([`crate::backend::soft::SealedCustody`]) do, on what `unseal` returns.
use tss_esapi::structures::SensitiveData;
use tss_esapi::traits::Marshall;
use zeroize::Zeroizing;

use tss_esapi::structures::Auth;

use super::device::{with_loaded, Conn};
use super::error::{Ctx, Fail};
use super::handle::{self, Parsed};
use super::session::{self, Authorization, Params};
use super::templates::sealed_object_template;
use super::TpmBackend;
use crate::backend::soft::{crypto_err, label_aad, Sealer};
use crate::backend::{BackendError, KeyLabel};
use crate::crypto::{aead, random_bytes};

/// Bytes of the data key a sealed object holds.
const DEK_LEN: usize = 32;

/// A new sealed data object holding `dek` with authValue `auth`: its public
/// and private areas. Both go to the TPM encrypted by the session.
fn create_sealed_object(
    conn: &mut Conn,
    dek: &[u8],
    auth: Auth,
) -> Result<(Vec<u8>, Vec<u8>), Fail> {
    let template = sealed_object_template().ctx("sealed-object template")?;
    let data = SensitiveData::try_from(dek.to_vec()).ctx("sealed data")?;
    session::params(&mut conn.ctx, conn.session, Params::Both).ctx("session attributes")?;
    let created = conn
        .ctx
        .create(conn.srk, template, Some(auth), Some(data), None, None)
        .ctx("TPM2_Create (sealed object)")?;
    Ok((
        created.out_public.marshall().ctx("marshal public")?,
        created.out_private.value().to_vec(),
    ))
}

impl TpmBackend {
    /// The data key a sealed object holds, unsealed through the session
    /// (it crosses the interface encrypted).
    fn unseal_data_key(
        &self,
        label: &KeyLabel<'_>,
        object: &handle::Blob<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let auth = session::check(label, object)?;
        self.run(|conn| {
            with_loaded(conn, object, auth, |ctx, s, h| {
                session::params(ctx, s, Params::Response).ctx("session attributes")?;
                let data = ctx.unseal(h.into()).ctx("TPM2_Unseal")?;
                Ok(Zeroizing::new(data.value().to_vec()))
            })
        })
    }

    /// The data key of the sealed key `handle` under `label`. For tests
    /// that look for it where it must not be (the TPM interface's traffic):
    /// it never leaves the process through any API.
    #[doc(hidden)]
    pub fn data_key_for_tests(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let Parsed::Sealed { object, .. } = handle::parse(handle)? else {
            return Err(BackendError::Sealed("not a sealed-key handle"));
        };
        self.unseal_data_key(&label, &object)
    }
}

impl Sealer for TpmBackend {
    /// Seal under a fresh data key held by a new TPM sealed object.
    fn seal(&self, label: KeyLabel<'_>, private: &[u8]) -> Result<Vec<u8>, BackendError> {
        let mut dek = Zeroizing::new(vec![0u8; DEK_LEN]);
        random_bytes(&mut dek).map_err(|e| BackendError::Crypto(e.to_string()))?;
        let mut auth = Authorization::new()?;
        let auth_value = auth.auth_value(&label)?;
        let (public, object_private) =
            self.run(|conn| create_sealed_object(conn, &dek, auth_value))?;
        auth.bind(&label, &public, &object_private);
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        random_bytes(&mut nonce).map_err(|e| BackendError::Crypto(e.to_string()))?;
        let ct = aead::seal(&dek, &nonce, &label_aad(&label), private).map_err(crypto_err)?;
        Ok(handle::sealed(
            &public,
            &object_private,
            auth.as_ref(),
            &nonce,
            &ct,
        ))
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
        let dek = self.unseal_data_key(&label, &object)?;
        if dek.len() != DEK_LEN {
            return Err(BackendError::Sealed("sealed object holds no data key"));
        }
        aead::open(&dek, &nonce, &label_aad(&label), sealed).map_err(|_| {
            BackendError::Sealed("authentication failed (wrong TPM or corrupted record)")
        })
    }
}
