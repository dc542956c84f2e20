//! The key and version records the store persists and the keyring's
//! snapshot holds: a key's tenant, name, algorithm and versions, and the
//! version state machine (`VersionState::can_become`). Plain data with no
//! I/O; the store owns them because it is what they are written to.
use super::StoreError;
use crate::crypto::{Algorithm, Purpose};

/// Lifecycle of one key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionState {
    Enabled,
    Disabled,
    /// Material wiped from custody and store; the record stays for audit.
    Destroyed,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Enabled => "enabled",
            VersionState::Disabled => "disabled",
            VersionState::Destroyed => "destroyed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enabled" => Some(VersionState::Enabled),
            "disabled" => Some(VersionState::Disabled),
            "destroyed" => Some(VersionState::Destroyed),
            _ => None,
        }
    }
    /// Allowed transitions: enabled ↔ disabled, disabled → destroyed. Setting
    /// the current state again is allowed (idempotent).
    pub fn can_become(self, next: VersionState) -> bool {
        use VersionState::*;
        self == next
            || matches!(
                (self, next),
                (Enabled, Disabled) | (Disabled, Enabled) | (Disabled, Destroyed)
            )
    }
}

/// One version of a key.
#[derive(Clone, Debug)]
pub struct VersionRecord {
    pub version: u32,
    pub state: VersionState,
    /// Raw public key (empty for symmetric keys).
    pub public_key: Vec<u8>,
    /// Custody handle; `None` once destroyed.
    pub handle: Option<Vec<u8>>,
    pub created_at_ms: i64,
}

/// Settings of a key that hold for all its versions (docs/api.md, "Key
/// settings"). The default is no floor and no deletion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeySettings {
    /// Versions below this are refused for every operation: unwrap and
    /// verify of what they made as well as new work. 0 or 1: no floor.
    pub min_decryption_version: u32,
    /// Versions below this are refused for sign, wrap, MAC and data keys
    /// (a caller naming an older version explicitly). 0: no floor.
    pub min_encryption_version: u32,
    /// Whether DeleteKey may remove the key.
    pub deletion_allowed: bool,
    /// Whether the key's enabled versions appear in the tenant's JWKS
    /// (`GET /v1/kms/jwks/{tenant}`, docs/jose.md).
    pub published: bool,
}

impl KeySettings {
    /// The floor for an operation that makes something new (`produces`) or
    /// uses what an older version made.
    pub fn floor(&self, produces: bool) -> u32 {
        if produces {
            self.min_decryption_version.max(self.min_encryption_version)
        } else {
            self.min_decryption_version
        }
    }
}

/// A key: tenant-scoped name, fixed algorithm, ordered versions.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    pub tenant: String,
    pub name: String,
    pub algorithm: Algorithm,
    pub primary_version: u32,
    pub created_at_ms: i64,
    pub settings: KeySettings,
    /// Sorted by version, starting at 1, without gaps.
    pub versions: Vec<VersionRecord>,
}

impl KeyRecord {
    pub fn purpose(&self) -> Purpose {
        self.algorithm.purpose()
    }
    pub fn version(&self, v: u32) -> Option<&VersionRecord> {
        self.versions.get((v as usize).checked_sub(1)?)
    }
    pub fn kid(&self, v: u32) -> String {
        kid(&self.name, v)
    }
    pub fn latest_version(&self) -> u32 {
        self.versions.last().map(|v| v.version).unwrap_or(0)
    }
}

/// Records read back from a database row, checked as they are rebuilt:
/// a value this build does not know, or versions out of order, is
/// [`StoreError::Corrupt`] (both dialects read through these).
impl KeyRecord {
    /// A key from its row, before its versions are read.
    pub(crate) fn decoded(
        tenant: String,
        name: String,
        alg: &str,
        primary_version: u32,
        created_at_ms: i64,
        settings: KeySettings,
    ) -> Result<KeyRecord, StoreError> {
        let algorithm = Algorithm::parse(alg)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown algorithm {alg:?}")))?;
        Ok(KeyRecord {
            tenant,
            name,
            algorithm,
            primary_version,
            created_at_ms,
            settings,
            versions: Vec::new(),
        })
    }

    /// Append the next version from its row: it must be the next number.
    pub(crate) fn push_decoded(
        &mut self,
        version: u32,
        state: &str,
        public_key: Vec<u8>,
        handle: Option<Vec<u8>>,
        created_at_ms: i64,
    ) -> Result<(), StoreError> {
        let state = VersionState::parse(state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown state {state:?}")))?;
        if version as usize != self.versions.len() + 1 {
            return Err(StoreError::Corrupt(format!(
                "key {}/{} has a gap before version {version}",
                self.tenant, self.name
            )));
        }
        self.versions.push(VersionRecord {
            version,
            state,
            public_key,
            handle,
            created_at_ms,
        });
        Ok(())
    }

    /// Once every version is read: the primary is one of them.
    pub(crate) fn check_primary(&self) -> Result<(), StoreError> {
        if self.version(self.primary_version).is_none() {
            return Err(StoreError::Corrupt(format!(
                "key {}/{} names a missing primary version",
                self.tenant, self.name
            )));
        }
        Ok(())
    }
}

/// `name#vN`.
pub fn kid(name: &str, version: u32) -> String {
    format!("{name}#v{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine() {
        use VersionState::*;
        assert!(Enabled.can_become(Disabled));
        assert!(Disabled.can_become(Enabled));
        assert!(Disabled.can_become(Destroyed));
        assert!(!Enabled.can_become(Destroyed));
        assert!(!Destroyed.can_become(Enabled));
        assert!(!Destroyed.can_become(Disabled));
    }
}
