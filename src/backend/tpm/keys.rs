//! Native keys: ECDSA P-256 signing keys the TPM creates under the storage
//! root key, each with its own random authValue bound to the key's label
//! ([`super::session`]). The TPM returns the key's public area and its
//! private area encrypted under the SRK; both, and the authorization
//! secret, are the handle, loaded for each signature and flushed after it.
//! The TPM signs a SHA-256 digest computed here (null hash-check ticket) in
//! the connection's HMAC session; the signature leaves DER-encoded.
//!
//! This module must not decide whether a key is native (the backend does,
//! from its capabilities) or keep a key loaded between calls (a TPM has few
//! transient object slots).
use tss_esapi::structures::{Digest, SignatureScheme};
use tss_esapi::traits::Marshall;

use super::device::{with_loaded, Device};
use super::error::Ctx;
use super::handle::{self, Blob};
use super::session::{self, Authorization, Params};
use super::templates::{ecdsa_rs, null_ticket, p256_point, signing_key_template};
use crate::backend::{ecdsa_der, BackendError, Generated, KeyLabel};

/// Create an ECDSA P-256 signing key for `label` under the SRK.
pub(super) fn generate(device: &Device, label: &KeyLabel<'_>) -> Result<Generated, BackendError> {
    let mut auth = Authorization::new()?;
    let auth_value = auth.auth_value(label)?;
    let (public, private, point) = device.run(|conn| {
        let template = signing_key_template().ctx("signing-key template")?;
        session::params(&mut conn.ctx, conn.session, Params::Both).ctx("session attributes")?;
        let created = conn
            .ctx
            .create(conn.srk, template, Some(auth_value), None, None, None)
            .ctx("TPM2_Create (signing key)")?;
        let point = p256_point(&created.out_public)?;
        Ok((
            created.out_public.marshall().ctx("marshal public")?,
            created.out_private.value().to_vec(),
            point,
        ))
    })?;
    auth.bind(label, &public, &private);
    Ok(Generated {
        public: point,
        handle: handle::native(&public, &private, auth.as_ref()),
    })
}

/// ECDSA P-256 over a SHA-256 `digest`, DER-encoded, with the key of
/// `label` (refused before the TPM sees it when the blob is bound to
/// another label).
pub(super) fn sign(
    device: &Device,
    label: &KeyLabel<'_>,
    blob: &Blob<'_>,
    digest: &[u8],
) -> Result<Vec<u8>, BackendError> {
    let auth = session::check(label, blob)?;
    let sig = device.run(|conn| {
        with_loaded(conn, blob, auth, |ctx, s, h| {
            session::params(ctx, s, Params::Command).ctx("session attributes")?;
            let digest = Digest::try_from(digest.to_vec()).ctx("digest")?;
            let ticket = null_ticket().ctx("hash-check ticket")?;
            ctx.sign(h, digest, SignatureScheme::Null, ticket)
                .ctx("TPM2_Sign")
        })
    })?;
    ecdsa_der(&ecdsa_rs(&sig)?)
}
