//! What crosses the interface to the TPM, and who may use an object.
//!
//! - **One salted HMAC session per connection**, salted to the storage
//!   root key (whose public area is pinned: [`super::identity`]), with
//!   AES-128-CFB parameter encryption. Every command that carries a secret
//!   runs in it: `TPM2_Create` sends the new object's authValue and a
//!   sealed data key encrypted; `TPM2_Unseal` returns the data key
//!   encrypted; `TPM2_Sign` and `TPM2_Load` are authorized by HMAC, so an
//!   object's authValue never crosses the interface after its creation. A
//!   listener on the bus (or on swtpm's TCP socket) sees only ciphertext and
//!   the public areas. Which half of a command is encrypted is set per
//!   command ([`Params`]): the TSS refuses a session that asks to encrypt a
//!   parameter a command does not have.
//! - **A random authValue per object** ([`Authorization`]): 32 random bytes
//!   (the *secret*) are kept in the key's handle; the authValue is
//!   HMAC-SHA256 over the key's label under the secret, so it exists only
//!   where the store and the label are. A *binding*, HMAC-SHA256 over the
//!   label and the object's public and private areas under the secret, is
//!   checked here
//!   before the blob goes to the TPM: a blob copied into another key's row
//!   is refused without a wrong-authValue attempt reaching the TPM's
//!   dictionary-attack counter.
//!
//! This module derives and checks; it sends no command of its own except
//! the session's start.
use ring::hmac;
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{Auth, SymmetricDefinition};
use tss_esapi::{Context, WrapperErrorKind};
use zeroize::Zeroizing;

use super::handle::{AuthRef, Blob, SECRET_LEN};
use crate::backend::soft::label_aad;
use crate::backend::{BackendError, KeyLabel};
use crate::crypto::random_bytes;

const AUTH_CONTEXT: &[u8] = b"ron-kms tpm object auth v1\0";
const BINDING_CONTEXT: &[u8] = b"ron-kms tpm object binding v1\0";

/// Start the connection's session: HMAC, salted to `srk`, AES-128-CFB
/// parameter encryption, SHA-256. (Public for the direct-TSS yardstick in
/// `examples/tpm_bench.rs`, so that it runs the same session.)
pub fn start(ctx: &mut Context, srk: KeyHandle) -> tss_esapi::Result<AuthSession> {
    let s = ctx
        .execute_without_session(|c| {
            c.start_auth_session(
                Some(srk),
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
        })?
        .ok_or(tss_esapi::Error::WrapperError(
            WrapperErrorKind::WrongValueFromTpm,
        ))?;
    params(ctx, s, Params::Both)?;
    Ok(s)
}

/// A policy session for one use: salted to `salt` with AES-128-CFB
/// encryption of the response's first parameter (an unsealed data key);
/// or, with `trial`, an unsalted trial session that only computes a
/// policy digest.
pub(super) fn start_policy(
    ctx: &mut Context,
    salt: KeyHandle,
    trial: bool,
) -> tss_esapi::Result<PolicySession> {
    let (kind, key, sym) = if trial {
        (SessionType::Trial, None, SymmetricDefinition::Null)
    } else {
        (
            SessionType::Policy,
            Some(salt),
            SymmetricDefinition::AES_128_CFB,
        )
    };
    let s = ctx
        .execute_without_session(|c| {
            c.start_auth_session(key, None, None, kind, sym, HashingAlgorithm::Sha256)
        })?
        .ok_or(tss_esapi::Error::WrapperError(
            WrapperErrorKind::WrongValueFromTpm,
        ))?;
    if !trial {
        let (attrs, mask) = SessionAttributesBuilder::new()
            .with_continue_session(false)
            .with_decrypt(false)
            .with_encrypt(true)
            .build();
        ctx.tr_sess_set_attributes(s, attrs, mask)?;
    }
    PolicySession::try_from(s)
}

/// Run the sealed objects' policy in `ps`: the PCRs of `sel` hold the
/// values whose digest is `digest` (empty: their current values, which the
/// object's authPolicy then checks), and the caller knows the authValue.
pub(super) fn pcr_policy(
    ctx: &mut Context,
    ps: PolicySession,
    sel: tss_esapi::structures::PcrSelectionList,
    digest: &[u8],
) -> tss_esapi::Result<()> {
    let d = tss_esapi::structures::Digest::try_from(digest.to_vec())?;
    ctx.execute_without_session(|c| {
        c.policy_pcr(ps, d, sel)?;
        c.policy_auth_value(ps)
    })
}

/// Which of a command's first parameters the session encrypts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Params {
    /// The command's (`TPM2_Sign`'s digest, `TPM2_Load`'s private area).
    Command,
    /// The response's (`TPM2_Unseal`'s data).
    Response,
    /// Both (`TPM2_Create`: the sensitive area in, the private area out).
    Both,
}

/// Set the session's encryption for the next command.
pub(super) fn params(ctx: &mut Context, s: AuthSession, p: Params) -> tss_esapi::Result<()> {
    let (attrs, mask) = SessionAttributesBuilder::new()
        .with_continue_session(true)
        .with_decrypt(p != Params::Response)
        .with_encrypt(p != Params::Command)
        .build();
    ctx.tr_sess_set_attributes(s, attrs, mask)
}

/// `context ‖ (u32 len ‖ part)…`: what the object's HMACs are over.
fn message(context: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = context.to_vec();
    for p in parts {
        m.extend_from_slice(&(p.len() as u32).to_be_bytes());
        m.extend_from_slice(p);
    }
    m
}

fn mac(secret: &[u8; SECRET_LEN], context: &[u8], parts: &[&[u8]]) -> hmac::Tag {
    hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret),
        &message(context, parts),
    )
}

/// An object's authorization: the secret kept in its handle, and what
/// follows from it for one label.
pub(super) struct Authorization {
    secret: Zeroizing<[u8; SECRET_LEN]>,
    binding: [u8; SECRET_LEN],
}

impl Authorization {
    /// A fresh one for a new object whose public area is not known yet:
    /// the binding is computed by [`Self::bind`] once it is.
    pub(super) fn new() -> Result<Self, BackendError> {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        random_bytes(&mut secret[..]).map_err(|e| BackendError::Crypto(e.to_string()))?;
        Ok(Authorization {
            secret,
            binding: [0u8; SECRET_LEN],
        })
    }

    /// The authValue of the object for `label`:
    /// HMAC-SHA256(secret, "ron-kms tpm object auth v1\0" ‖ u32 len ‖ label).
    pub(super) fn auth_value(&self, label: &KeyLabel<'_>) -> Result<Auth, BackendError> {
        auth_value(&self.secret, label)
    }

    /// Bind to `label` and the object's public and private areas.
    pub(super) fn bind(&mut self, label: &KeyLabel<'_>, public: &[u8], private: &[u8]) {
        self.binding = binding(&self.secret, label, public, private);
    }

    pub(super) fn as_ref(&self) -> AuthRef<'_> {
        AuthRef {
            secret: &self.secret,
            binding: &self.binding,
        }
    }
}

fn auth_value(secret: &[u8; SECRET_LEN], label: &KeyLabel<'_>) -> Result<Auth, BackendError> {
    let tag = mac(secret, AUTH_CONTEXT, &[&label_aad(label)]);
    Auth::try_from(tag.as_ref().to_vec())
        .map_err(|e| BackendError::Crypto(format!("tpm authValue: {e}")))
}

/// HMAC-SHA256(secret, "ron-kms tpm object binding v1\0" ‖ u32 len ‖ label
/// ‖ u32 len ‖ public ‖ u32 len ‖ private).
fn binding(
    secret: &[u8; SECRET_LEN],
    label: &KeyLabel<'_>,
    public: &[u8],
    private: &[u8],
) -> [u8; SECRET_LEN] {
    let tag = mac(
        secret,
        BINDING_CONTEXT,
        &[&label_aad(label), public, private],
    );
    tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
}

/// The authValue to present for a stored object under `label`, once its
/// binding checks: `None` for a legacy object (empty authValue).
pub(super) fn check(label: &KeyLabel<'_>, blob: &Blob<'_>) -> Result<Option<Auth>, BackendError> {
    let Some(a) = blob.auth else {
        return Ok(None);
    };
    let m = message(
        BINDING_CONTEXT,
        &[&label_aad(label), blob.public, blob.private],
    );
    // constant-time comparison
    if hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, a.secret), &m, a.binding).is_err() {
        return Err(BackendError::Sealed(
            "the TPM blob is bound to another key (copied between rows?)",
        ));
    }
    auth_value(a.secret, label).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;

    fn label<'a>(tenant: &'a str, kid: &'a str) -> KeyLabel<'a> {
        KeyLabel {
            tenant,
            kid,
            algorithm: Algorithm::EcdsaP256,
        }
    }

    #[test]
    fn a_blob_is_bound_to_its_label_and_public_area() {
        let mut a = Authorization::new().unwrap();
        let l = label("t1", "k#v1");
        a.bind(&l, b"public", b"private");
        let blob = |public: &'static [u8], private: &'static [u8], auth| Blob {
            public,
            private,
            auth,
        };
        let want = a.auth_value(&l).unwrap();
        let got = check(&l, &blob(b"public", b"private", Some(a.as_ref())))
            .unwrap()
            .unwrap();
        assert_eq!(got.value(), want.value());
        assert_eq!(want.value().len(), 32);
        for (l2, public, private) in [
            (label("t2", "k#v1"), &b"public"[..], &b"private"[..]),
            (label("t1", "k#v2"), b"public", b"private"),
            (label("t1", "j#v1"), b"public", b"private"),
            (l, b"other public", b"private"),
            (l, b"public", b"other private"),
        ] {
            assert!(check(&l2, &blob(public, private, Some(a.as_ref()))).is_err());
        }
        let legacy = check(&l, &blob(b"public", b"private", None)).unwrap();
        assert!(legacy.is_none(), "a legacy blob has an empty authValue");
    }
}
