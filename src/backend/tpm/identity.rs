//! Which TPM this is: the public areas of its endorsement key (EK, the
//! TCG default ECC P-256 template), its storage root key (SRK) and its
//! attestation key (AK), all primaries re-derived from the TPM's seeds on
//! every connect, so the same TPM gives the same three.
//!
//! At first start the service pins them in the store (`tpm_identity`);
//! every later connect — start-up and every reconnect — compares what the
//! TPM presents with the pin, and a difference is refused with a message
//! naming which key differs. The pinned SRK is also what the session is
//! salted to ([`super::session`]), and the pinned AK is the only key whose
//! quotes verify ([`super::attest`]). Pinning is trust on first use: the
//! first start trusts whatever TPM answers (docs/tpm.md says what that
//! means).
//!
//! Encoding: `"RKTPMID1"` ‖ (u16 len ‖ marshalled `TPMT_PUBLIC`) for the
//! EK, the SRK and the AK in that order. This module owns the bytes and the
//! comparison; it sends no command.

const MAGIC: &[u8; 8] = b"RKTPMID1";

/// The three public areas (marshalled `TPMT_PUBLIC`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub ek: Vec<u8>,
    pub srk: Vec<u8>,
    pub ak: Vec<u8>,
}

/// `sha256:` and the first 8 bytes of a public area's SHA-256, for messages.
pub fn fingerprint(public: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, public);
    format!("sha256:{}", hex::encode(&d.as_ref()[..8]))
}

impl Identity {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for p in [&self.ek, &self.srk, &self.ak] {
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        let mut rest = b
            .strip_prefix(&MAGIC[..])
            .ok_or("not a pinned TPM identity")?;
        let mut take = || -> Result<Vec<u8>, String> {
            if rest.len() < 2 {
                return Err("truncated pinned TPM identity".into());
            }
            let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            if n == 0 || rest.len() < 2 + n {
                return Err("truncated pinned TPM identity".into());
            }
            let v = rest[2..2 + n].to_vec();
            rest = &rest[2 + n..];
            Ok(v)
        };
        let (ek, srk, ak) = (take()?, take()?, take()?);
        if !rest.is_empty() {
            return Err("trailing bytes after the pinned TPM identity".into());
        }
        Ok(Identity { ek, srk, ak })
    }

    /// `Ok` when `self` (what the TPM presents now) is `pinned`; else why
    /// not, naming the key that differs.
    pub fn check(&self, pinned: &Identity) -> Result<(), String> {
        if self.ek != pinned.ek {
            return Err(format!(
                "TPM mismatch: this TPM's endorsement key ({}) is not the one pinned in the store at first start ({}); a different TPM answers. Keys in the store were made by the pinned TPM and cannot be used with this one: point KMS_TPM_TCTI at that TPM",
                fingerprint(&self.ek),
                fingerprint(&pinned.ek)
            ));
        }
        if self.srk != pinned.srk {
            return Err(format!(
                "TPM mismatch: the storage root key ({}) is not the pinned one ({}) on the same endorsement key; the owner hierarchy was cleared (TPM2_Clear) or changed, and keys made under the pinned SRK cannot be loaded",
                fingerprint(&self.srk),
                fingerprint(&pinned.srk)
            ));
        }
        if self.ak != pinned.ak {
            return Err(format!(
                "TPM mismatch: the attestation key ({}) is not the pinned one ({}) on the same endorsement key",
                fingerprint(&self.ak),
                fingerprint(&pinned.ak)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_differences_are_named() {
        let a = Identity {
            ek: vec![1; 90],
            srk: vec![2; 88],
            ak: vec![3; 86],
        };
        let b = a.encode();
        assert_eq!(Identity::decode(&b).unwrap(), a);
        assert!(Identity::decode(&b[..b.len() - 1]).is_err());
        assert!(Identity::decode(&[&b[..], &[0]].concat()).is_err());
        assert!(Identity::decode(b"RKTPMID0").is_err());
        assert!(a.check(&a).is_ok());
        let other = Identity {
            ek: vec![9; 90],
            ..a.clone()
        };
        assert!(other.check(&a).unwrap_err().contains("endorsement key"));
        let cleared = Identity {
            srk: vec![9; 88],
            ..a.clone()
        };
        assert!(cleared.check(&a).unwrap_err().contains("storage root key"));
    }
}
