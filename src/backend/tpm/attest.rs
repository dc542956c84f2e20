//! TPM attestation: a quote over the configured PCRs, signed by an
//! attestation key (AK), verified here in software.
//!
//! The AK is an ECC P-256 restricted signing key created as a primary in the
//! endorsement hierarchy (the same key on every call, from the TPM's
//! endorsement seed); its public area is pinned in the store at first start
//! with the rest of the TPM's identity ([`super::identity`]), and it is
//! flushed after each quote. One attestation:
//!
//! 1. a fresh 32-byte nonce;
//! 2. `TPM2_Quote` over the PCR selection, qualified by the nonce, and
//!    `TPM2_PCR_Read` of the same PCRs;
//! 3. checks, all in software ([`verify_quote`]): the quote's ECDSA
//!    signature verifies under the *pinned* AK's public key (ring), not
//!    under whatever key the TPM returned, so a quote by any other key
//!    fails; it is a quote (`TPM_ST_ATTEST_QUOTE`);
//!    its extra data is the nonce (fresh, not replayed); its PCR digest is
//!    SHA-256 over the PCR values read (in slot order); and, when a policy is
//!    configured, that digest is the expected one.
//!
//! Any failed check makes the attestation fail with the reason; the service
//! keeps the result as its `attestation_ready` state (docs/tpm.md).
use tss_esapi::abstraction::pcr::read_all;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::structure_tags::AttestationType;
use tss_esapi::structures::{
    Attest, AttestInfo, Data, PcrSelectionListBuilder, PcrSlot, Public, Signature, SignatureScheme,
};
use tss_esapi::traits::{Marshall, UnMarshall};

use super::device::create_ak;
use super::error::{Ctx, Fail};
use super::session::{self, Params};
use super::templates::{ecdsa_rs, p256_point};
use super::TpmBackend;
use crate::backend::{Attested, BackendError};
use crate::crypto::random_bytes;

/// The PCR bank a selection reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcrBank {
    Sha1,
    Sha256,
    Sha384,
}

impl PcrBank {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sha1" => Some(PcrBank::Sha1),
            "sha256" => Some(PcrBank::Sha256),
            "sha384" => Some(PcrBank::Sha384),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PcrBank::Sha1 => "sha1",
            PcrBank::Sha256 => "sha256",
            PcrBank::Sha384 => "sha384",
        }
    }

    /// The code a PCR-sealed handle keeps (docs/tpm.md, "Handles").
    pub(super) fn code(self) -> u8 {
        match self {
            PcrBank::Sha1 => 1,
            PcrBank::Sha256 => 2,
            PcrBank::Sha384 => 3,
        }
    }

    pub(super) fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(PcrBank::Sha1),
            2 => Some(PcrBank::Sha256),
            3 => Some(PcrBank::Sha384),
            _ => None,
        }
    }

    fn hashing(self) -> HashingAlgorithm {
        match self {
            PcrBank::Sha1 => HashingAlgorithm::Sha1,
            PcrBank::Sha256 => HashingAlgorithm::Sha256,
            PcrBank::Sha384 => HashingAlgorithm::Sha384,
        }
    }
}

/// A PCR selection: a bank and PCR indices, ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrSelection {
    pub bank: PcrBank,
    pub slots: Vec<u8>,
}

impl std::fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.slots.iter().map(|s| s.to_string()).collect();
        write!(f, "{}:{}", self.bank.as_str(), list.join(","))
    }
}

impl PcrSelection {
    /// `BANK:I,J,K-L`, as [`AttestationSettings::parse_selection`] reads it.
    pub fn parse(s: &str) -> Result<Self, String> {
        AttestationSettings::parse_selection(s).map(|(bank, slots)| PcrSelection { bank, slots })
    }

    /// Bit i set for PCR i.
    pub(super) fn mask(&self) -> u32 {
        self.slots.iter().fold(0, |m, i| m | 1 << i)
    }

    pub(super) fn from_mask(bank: PcrBank, mask: u32) -> Self {
        PcrSelection {
            bank,
            slots: (0..24u8).filter(|i| mask & (1 << i) != 0).collect(),
        }
    }

    pub(super) fn list(&self) -> tss_esapi::Result<tss_esapi::structures::PcrSelectionList> {
        let slots = self
            .slots
            .iter()
            .map(|i| slot(*i))
            .collect::<Result<Vec<_>, _>>()?;
        PcrSelectionListBuilder::new()
            .with_selection(self.bank.hashing(), &slots)
            .build()
    }

    /// The selected PCRs' current values, in slot order.
    pub(super) fn read_values(&self, ctx: &mut tss_esapi::Context) -> Result<Vec<Vec<u8>>, Fail> {
        let selection = self.list().ctx("PCR selection")?;
        let data = ctx
            .execute_without_session(|c| read_all(c, selection))
            .ctx("TPM2_PCR_Read")?;
        let bank =
            data.pcr_bank(self.bank.hashing())
                .ok_or(Fail::Backend(BackendError::Attestation(format!(
                    "the TPM has no {} PCR bank",
                    self.bank.as_str()
                ))))?;
        self.slots
            .iter()
            .map(|i| {
                slot(*i)
                    .ok()
                    .and_then(|sl| bank.get_digest(sl))
                    .map(|d| d.value().to_vec())
                    .ok_or(Fail::Backend(BackendError::Attestation(format!(
                        "PCR {i} was not read"
                    ))))
            })
            .collect()
    }

    /// SHA-256 over the selected PCRs' current values in slot order: what
    /// `TPM2_PolicyPCR` and a quote's `pcrDigest` compute.
    pub(super) fn read_digest(&self, ctx: &mut tss_esapi::Context) -> Result<Vec<u8>, Fail> {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        for v in self.read_values(ctx)? {
            h.update(&v);
        }
        Ok(h.finish().as_ref().to_vec())
    }
}

/// Which PCRs to quote and what they must hash to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestationSettings {
    pub bank: PcrBank,
    /// PCR indices, ascending, 0–23.
    pub slots: Vec<u8>,
    /// SHA-256 over the selected PCR values in slot order (the quote's
    /// `pcrDigest`); `None` accepts any PCR state (the quote then proves
    /// only that this TPM answered, freshly).
    pub expected_digest: Option<Vec<u8>>,
}

impl Default for AttestationSettings {
    fn default() -> Self {
        AttestationSettings {
            bank: PcrBank::Sha256,
            slots: (0..8).collect(),
            expected_digest: None,
        }
    }
}

impl AttestationSettings {
    /// `BANK:I,J,K-L` (e.g. `sha256:0-7`), as `KMS_ATTESTATION_PCRS` takes it.
    pub fn parse_selection(s: &str) -> Result<(PcrBank, Vec<u8>), String> {
        let (bank, list) = s
            .split_once(':')
            .ok_or("must look like sha256:0-7 or sha256:0,2,7")?;
        let bank = PcrBank::parse(bank.trim())
            .ok_or_else(|| format!("bank {bank:?} is not sha1, sha256 or sha384"))?;
        let mut slots = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: u8 = a
                .trim()
                .parse()
                .map_err(|_| format!("{part:?} is not a PCR index"))?;
            let b: u8 = b
                .trim()
                .parse()
                .map_err(|_| format!("{part:?} is not a PCR index"))?;
            if a > b || b > 23 {
                return Err(format!("{part:?}: PCR indices are 0 to 23"));
            }
            slots.extend(a..=b);
        }
        slots.sort_unstable();
        slots.dedup();
        if slots.is_empty() {
            return Err("names no PCR".into());
        }
        Ok((bank, slots))
    }
}

fn slot(i: u8) -> tss_esapi::Result<PcrSlot> {
    PcrSlot::try_from(1u32 << i)
}

/// What the TPM returned for one attestation.
struct Quote {
    attest: Attest,
    signature: Signature,
    /// PCR values in slot order.
    pcrs: Vec<Vec<u8>>,
}

/// Quote, read and verify; `Ok` only when every check in the module doc
/// passes.
pub fn attest(b: &TpmBackend) -> Result<Attested, BackendError> {
    let s = b.attestation_settings().clone();
    let mut nonce = [0u8; 32];
    random_bytes(&mut nonce).map_err(|e| BackendError::Crypto(e.to_string()))?;
    let sel = PcrSelection {
        bank: s.bank,
        slots: s.slots.clone(),
    };
    let q = b.run(|conn| {
        let selection = sel.list().ctx("PCR selection")?;
        let ak = create_ak(conn)?;
        let quoted: Result<_, Fail> = (|| {
            session::params(&mut conn.ctx, conn.session, Params::Command)
                .ctx("session attributes")?;
            let (attest, signature) = conn
                .ctx
                .quote(
                    ak.key_handle,
                    Data::try_from(nonce.to_vec()).ctx("nonce")?,
                    SignatureScheme::Null,
                    selection,
                )
                .ctx("TPM2_Quote")?;
            let pcrs = sel.read_values(&mut conn.ctx)?;
            Ok((attest, signature, pcrs))
        })();
        let flushed = conn.ctx.flush_context(ak.key_handle.into()).ctx("flush AK");
        let (attest, signature, pcrs) = quoted?;
        flushed?;
        Ok(Quote {
            attest,
            signature,
            pcrs,
        })
    })?;
    let signed = q
        .attest
        .marshall()
        .map_err(|e| BackendError::Attestation(format!("marshal quote: {e}")))?;
    let signature = q
        .signature
        .marshall()
        .map_err(|e| BackendError::Attestation(format!("marshal signature: {e}")))?;
    verify_quote(
        &b.identity().ak,
        &signed,
        &signature,
        &nonce,
        &q.pcrs,
        s.expected_digest.as_deref(),
    )
    .map_err(BackendError::Attestation)
}

/// The software checks of one quote: `attest` (a marshalled `TPMS_ATTEST`)
/// and `signature` (a marshalled `TPMT_SIGNATURE`) as `TPM2_Quote` returned
/// them, checked against the pinned AK's public area `pinned_ak`, the
/// `nonce` the quote was asked for, the PCR values read (in slot order),
/// and the expected PCR digest when there is one.
pub fn verify_quote(
    pinned_ak: &[u8],
    attest: &[u8],
    signature: &[u8],
    nonce: &[u8],
    pcrs: &[Vec<u8>],
    expected: Option<&[u8]>,
) -> Result<Attested, String> {
    let ak = Public::unmarshall(pinned_ak).map_err(|e| format!("the pinned AK: {e}"))?;
    let ak = p256_point(&ak).map_err(|e| e.to_string())?;
    let parsed = Attest::unmarshall(attest).map_err(|e| format!("unmarshal quote: {e}"))?;
    let sig = Signature::unmarshall(signature).map_err(|e| format!("unmarshal signature: {e}"))?;
    let der = crate::backend::ecdsa_der(&ecdsa_rs(&sig).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &ak)
        .verify(attest, &der)
        .map_err(|_| {
            "the quote's signature does not verify under the pinned attestation key".to_string()
        })?;
    if parsed.attestation_type() != AttestationType::Quote {
        return Err("the attestation is not a quote".into());
    }
    if parsed.extra_data().value() != nonce {
        return Err("the quote does not carry this attestation's nonce (replayed?)".into());
    }
    let AttestInfo::Quote { info } = parsed.attested() else {
        return Err("the attestation carries no quote info".into());
    };
    let quoted = info.pcr_digest().value().to_vec();
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for v in pcrs {
        h.update(v);
    }
    if h.finish().as_ref() != quoted.as_slice() {
        return Err("the quoted PCR digest is not the digest of the PCR values read".into());
    }
    if let Some(e) = expected {
        if e != quoted.as_slice() {
            return Err(format!(
                "PCR digest {} is not the expected {}",
                hex::encode(&quoted),
                hex::encode(e)
            ));
        }
    }
    Ok(Attested {
        pcr_digest: quoted,
        ak_public: ak,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_selections_parse() {
        assert_eq!(
            AttestationSettings::parse_selection("sha256:0-7").unwrap(),
            (PcrBank::Sha256, (0..8).collect())
        );
        assert_eq!(
            AttestationSettings::parse_selection("sha1: 7, 0,2-3,2").unwrap(),
            (PcrBank::Sha1, vec![0, 2, 3, 7])
        );
        for bad in [
            "0-7",
            "md5:0",
            "sha256:",
            "sha256:7-3",
            "sha256:24",
            "sha256:x",
        ] {
            assert!(AttestationSettings::parse_selection(bad).is_err(), "{bad}");
        }
    }
}
