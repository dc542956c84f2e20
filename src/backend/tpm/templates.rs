//! The TPM structures ron-kms builds and reads back: object templates (the
//! storage root key, signing keys, the attestation key, sealed data
//! objects), the null hash-check ticket, and the conversion of what the TPM
//! returns — an ECC public area, an ECDSA signature — into bytes.
//!
//! Every template is fixed to this TPM and parent (`fixedTPM`,
//! `fixedParent`). The primaries (SRK, AK) have an empty authValue and are
//! exempt from dictionary-attack lockout (`noDA`), as the TCG's
//! provisioning guidance has the SRK; keys and sealed objects get a random
//! authValue (`super::session`) and dictionary-attack protection. This
//! module must not talk to the TPM: it builds inputs and reads outputs.
use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, HashScheme, KeyedHashScheme, Public, PublicBuilder,
    PublicEccParameters, PublicEccParametersBuilder, PublicKeyedHashParameters, Signature,
    SymmetricDefinitionObject,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use crate::backend::BackendError;

/// What every key ron-kms has the TPM generate shares: it cannot leave
/// this TPM or its parent, the TPM made its secret, and it is used with its
/// authValue. `da`: failed authorizations count toward the TPM's
/// dictionary-attack lockout (keys with a random authValue); else exempt
/// (the primaries, whose authValue is empty).
fn key_attributes(da: bool) -> ObjectAttributesBuilder {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(!da)
}

/// The storage root key's template: an ECC P-256 restricted decryption
/// key (AES-128-CFB for its children), as the TCG's provisioning guidance
/// describes; the same template under the same seed gives the same key.
pub fn srk_template() -> tss_esapi::Result<Public> {
    let attrs = key_attributes(false)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    let params = PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .build()?;
    ecc_p256(attrs, params)
}

/// An ECDSA P-256 (SHA-256) signing key: generated in the TPM, never
/// duplicable (`fixedTPM`, `fixedParent`), signing only, with
/// dictionary-attack protection.
pub fn signing_key_template() -> tss_esapi::Result<Public> {
    ecdsa_p256_template(false)
}

/// The attestation key: ECC P-256, restricted to signing TPM-generated
/// structures (a quote), ECDSA with SHA-256; a primary in the endorsement
/// hierarchy, so this template gives the same key on every call.
pub fn ak_template() -> tss_esapi::Result<Public> {
    ecdsa_p256_template(true)
}

/// ECDSA P-256 with SHA-256, signing only; `restricted` keys (the
/// attestation key) sign only structures the TPM itself produced, and are
/// primaries with an empty authValue (no dictionary-attack protection).
fn ecdsa_p256_template(restricted: bool) -> tss_esapi::Result<Public> {
    let attrs = key_attributes(!restricted)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(restricted)
        .build()?;
    let params = PublicEccParametersBuilder::new_unrestricted_signing_key(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
    .with_restricted(restricted)
    .build()?;
    ecc_p256(attrs, params)
}

/// An ECC public area with SHA-256 names and an empty unique field (the
/// TPM fills it in).
fn ecc_p256(attrs: ObjectAttributes, params: PublicEccParameters) -> tss_esapi::Result<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// A sealed data object: holds caller-supplied bytes that only
/// `TPM2_Unseal` on this TPM returns; with `policy`, only in a policy
/// session that satisfies it (`userWithAuth` clear).
pub(super) fn sealed_object_template(policy: Option<Digest>) -> tss_esapi::Result<Public> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(policy.is_none())
        .with_no_da(false)
        .build()?;
    let b = PublicBuilder::new();
    let b = match policy {
        Some(p) => b.with_auth_policy(p),
        None => b,
    };
    b.with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// `r ‖ s` from a TPM ECDSA signature, each left-padded to 32 bytes.
pub(super) fn ecdsa_rs(sig: &Signature) -> Result<[u8; 64], BackendError> {
    let Signature::EcDsa(s) = sig else {
        return Err(BackendError::Crypto(
            "TPM returned a non-ECDSA signature".into(),
        ));
    };
    let mut rs = [0u8; 64];
    for (i, part) in [s.signature_r().value(), s.signature_s().value()]
        .into_iter()
        .enumerate()
    {
        if part.len() > 32 {
            return Err(BackendError::Crypto(format!(
                "TPM returned a {}-byte ECDSA scalar",
                part.len()
            )));
        }
        rs[i * 32 + 32 - part.len()..(i + 1) * 32].copy_from_slice(part);
    }
    Ok(rs)
}

/// The uncompressed SEC1 point `04 ‖ x ‖ y` of an ECC P-256 public area.
pub(super) fn p256_point(public: &Public) -> Result<Vec<u8>, BackendError> {
    let Public::Ecc { unique, .. } = public else {
        return Err(BackendError::Crypto("TPM key is not an ECC key".into()));
    };
    let mut out = vec![0u8; 65];
    out[0] = 4;
    for (i, c) in [unique.x().value(), unique.y().value()]
        .into_iter()
        .enumerate()
    {
        if c.len() > 32 || c.is_empty() {
            return Err(BackendError::Crypto(format!(
                "TPM returned a {}-byte P-256 coordinate",
                c.len()
            )));
        }
        out[1 + i * 32 + 32 - c.len()..1 + (i + 1) * 32].copy_from_slice(c);
    }
    Ok(out)
}

/// The hash-check ticket `TPM2_Sign` wants for a digest it did not compute
/// itself: the null ticket, allowed for unrestricted keys.
pub fn null_ticket() -> tss_esapi::Result<tss_esapi::structures::HashcheckTicket> {
    TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    }
    .try_into()
}
