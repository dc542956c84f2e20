//! Sealed keys on a TPM: what the TPM cannot do natively (Ed25519, ML-DSA,
//! ML-KEM, the hybrids, AES-256-GCM wrap keys) is a software key encrypted
//! with AES-256-GCM under a fresh 32-byte data key, and that data key is a
//! TPM *sealed data object* under the SRK, with its own random authValue
//! bound to the key's label ([`super::session`]). Using the key means
//! loading the sealed object, `TPM2_Unseal` (the data key comes back
//! encrypted by the session), and opening the software key into zeroizing
//! memory for one operation.
//!
//! With `KMS_TPM_SEAL_PCRS`, a new sealed object also has a policy:
//! `TPM2_PolicyPCR` (the selected PCRs hold the values the keys are sealed
//! to) and `TPM2_PolicyAuthValue`, and unseals only in a policy session
//! that satisfies both. [`TpmBackend::reseal`] moves a key to another
//! target state while the current one still holds.
//!
//! This module owns the data keys and the backend's [`Sealer`] impl. It
//! must not keep a data key or an unsealed key beyond the call, and it does
//! not run the algorithms: the shared sealed-key operations
//! ([`crate::backend::soft::SealedCustody`]) do, on what `unseal` returns.
use tss_esapi::constants::Tss2ResponseCodeKind;
use tss_esapi::handles::{ObjectHandle, SessionHandle};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, SensitiveData};
use tss_esapi::traits::Marshall;
use zeroize::Zeroizing;

use super::attest::{PcrBank, PcrSelection};
use super::device::{with_loaded, Conn};
use super::error::{Ctx, Fail};
use super::handle::{self, Parsed, PcrRef, SealedRef};
use super::session::{self, Authorization, Params};
use super::templates::sealed_object_template;
use super::TpmBackend;
use crate::backend::soft::{crypto_err, label_aad, Sealer};
use crate::backend::{BackendError, KeyLabel};
use crate::crypto::{aead, random_bytes};

/// Bytes of the data key a sealed object holds.
const DEK_LEN: usize = 32;

/// The policy digest of "PCRs `sel` hold values hashing to `target`, and
/// the caller knows the authValue", computed by the TPM in a trial session.
fn policy_digest(
    conn: &mut Conn,
    sel: &PcrSelection,
    target: &[u8],
) -> Result<tss_esapi::structures::Digest, Fail> {
    let trial = session::start_policy(&mut conn.ctx, conn.srk, true).ctx("trial session")?;
    let r = session::pcr_policy(
        &mut conn.ctx,
        trial,
        sel.list().ctx("PCR selection")?,
        target,
    )
    .ctx("TPM2_PolicyPCR (trial)")
    .and_then(|_| {
        conn.ctx
            .execute_without_session(|c| c.policy_get_digest(trial))
            .ctx("TPM2_PolicyGetDigest")
    });
    let _ = conn
        .ctx
        .flush_context(ObjectHandle::from(SessionHandle::from(AuthSession::from(
            trial,
        ))));
    r
}

/// A new sealed data object holding `dek` with authValue `auth` (and, with
/// `policy`, the PCR policy for `target`): its public and private areas.
/// Both go to the TPM encrypted by the session.
fn create_sealed_object(
    conn: &mut Conn,
    dek: &[u8],
    auth: Auth,
    policy: Option<(&PcrSelection, &[u8])>,
) -> Result<(Vec<u8>, Vec<u8>), Fail> {
    let digest = match policy {
        Some((sel, target)) => Some(policy_digest(conn, sel, target)?),
        None => None,
    };
    let template = sealed_object_template(digest).ctx("sealed-object template")?;
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
    /// A new sealed object for `dek` under `label`, with the PCR policy of
    /// `seal` when given: its handle, ending in `nonce` and `ct`.
    fn seal_data_key(
        &self,
        label: &KeyLabel<'_>,
        dek: &[u8],
        seal: Option<(&PcrSelection, &[u8])>,
        nonce: &[u8; aead::AEAD_NONCE_LEN],
        ct: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let mut auth = Authorization::new()?;
        let auth_value = auth.auth_value(label)?;
        let (public, object_private) =
            self.run(|conn| create_sealed_object(conn, dek, auth_value, seal))?;
        auth.bind(label, &public, &object_private);
        let pcrs = seal.map(|(sel, _)| PcrRef {
            bank: sel.bank.code(),
            mask: sel.mask(),
        });
        Ok(handle::sealed(
            &public,
            &object_private,
            auth.as_ref(),
            pcrs,
            nonce,
            ct,
        ))
    }

    /// The data key a sealed object holds, unsealed through the session
    /// (it crosses the interface encrypted); under its PCR policy when it
    /// has one.
    fn unseal_data_key(
        &self,
        label: &KeyLabel<'_>,
        object: &handle::Blob<'_>,
        pcrs: Option<PcrRef>,
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let auth = session::check(label, object)?;
        let Some(p) = pcrs else {
            return self.run(|conn| {
                with_loaded(conn, object, auth, |ctx, s, h| {
                    session::params(ctx, s, Params::Response).ctx("session attributes")?;
                    let data = ctx.unseal(h.into()).ctx("TPM2_Unseal")?;
                    Ok(Zeroizing::new(data.value().to_vec()))
                })
            });
        };
        let bank =
            PcrBank::from_code(p.bank).ok_or(BackendError::Sealed("malformed tpm handle"))?;
        let sel = PcrSelection::from_mask(bank, p.mask);
        self.run(|conn| {
            let ps = session::start_policy(&mut conn.ctx, conn.srk, false).ctx("policy session")?;
            let r = with_loaded(conn, object, auth, |ctx, _s, h| {
                session::pcr_policy(ctx, ps, sel.list().ctx("PCR selection")?, &[])
                    .ctx("TPM2_PolicyPCR")?;
                match ctx.execute_with_session(Some(ps.into()), |c| c.unseal(h.into())) {
                    Ok(d) => Ok(Zeroizing::new(d.value().to_vec())),
                    Err(tss_esapi::Error::Tss2Error(rc))
                        if rc.kind() == Some(Tss2ResponseCodeKind::PolicyFail) =>
                    {
                        Err(Fail::Backend(BackendError::Attestation(format!(
                            "the TPM refuses to unseal: PCRs {sel} are not in the state the keys are sealed to (KMS_TPM_SEAL_PCRS; docs/tpm.md, \"Sealing to PCRs\")"
                        ))))
                    }
                    Err(e) => Err(Fail::Tss("TPM2_Unseal".into(), e)),
                }
            });
            if r.is_err() {
                // a session is closed by the TPM only when its command succeeds
                let _ = conn.ctx.flush_context(ObjectHandle::from(SessionHandle::from(
                    AuthSession::from(ps),
                )));
            }
            r
        })
    }

    /// The data key of a sealed key's handle ([`Self::unseal_data_key`]),
    /// refusing what is not a data key.
    fn data_key(
        &self,
        label: &KeyLabel<'_>,
        sealed: &SealedRef<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let dek = self.unseal_data_key(label, &sealed.object, sealed.pcrs)?;
        if dek.len() != DEK_LEN {
            return Err(BackendError::Sealed("sealed object holds no data key"));
        }
        Ok(dek)
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
        let s = handle::parse_sealed(handle)?;
        self.unseal_data_key(&label, &s.object, s.pcrs)
    }

    /// The sealed key `handle` of `label` sealed again, to the PCR values
    /// whose digest is `target` under `KMS_TPM_SEAL_PCRS` (without it: with
    /// no PCR policy): its data key is unsealed under its current policy
    /// (so the PCRs must still be in the state it is sealed to) and put in
    /// a new sealed object; the software key's ciphertext is kept. `None`
    /// for a native key's handle, which has no policy to change.
    pub fn reseal(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
        target: &[u8],
    ) -> Result<Option<Vec<u8>>, BackendError> {
        let Parsed::Sealed(s) = handle::parse(handle)? else {
            return Ok(None);
        };
        let dek = self.data_key(&label, &s)?;
        let seal = self.seal_pcrs().map(|sel| (sel, target));
        self.seal_data_key(&label, &dek, seal, &s.nonce, s.sealed)
            .map(Some)
    }
}

impl Sealer for TpmBackend {
    /// Seal under a fresh data key held by a new TPM sealed object (under
    /// the PCR policy, with `KMS_TPM_SEAL_PCRS`).
    fn seal(&self, label: KeyLabel<'_>, private: &[u8]) -> Result<Vec<u8>, BackendError> {
        let mut dek = Zeroizing::new(vec![0u8; DEK_LEN]);
        random_bytes(&mut dek).map_err(|e| BackendError::Crypto(e.to_string()))?;
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        random_bytes(&mut nonce).map_err(|e| BackendError::Crypto(e.to_string()))?;
        let ct = aead::seal(&dek, &nonce, &label_aad(&label), private).map_err(crypto_err)?;
        let target = self.seal_target();
        let seal = match (self.seal_pcrs(), &target) {
            (Some(sel), Some(t)) => Some((sel, t.as_slice())),
            (Some(_), None) => {
                return Err(BackendError::Attestation(
                    "the PCR state to seal to is not known yet".into(),
                ))
            }
            (None, _) => None,
        };
        self.seal_data_key(&label, &dek, seal, &nonce, &ct)
    }

    fn unseal(
        &self,
        label: KeyLabel<'_>,
        handle: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let s = handle::parse_sealed(handle)?;
        let dek = self.data_key(&label, &s)?;
        aead::open(&dek, &s.nonce, &label_aad(&label), s.sealed).map_err(|_| {
            BackendError::Sealed("authentication failed (wrong TPM or corrupted record)")
        })
    }
}
