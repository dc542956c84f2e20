//! The master key of `sealed-file` custody.
//!
//! Two sources: a 32-byte key file (raw bytes, mode 0600, created on first
//! start when missing) or a passphrase stretched with Argon2id (m = 64 MiB,
//! t = 3, p = 1) and a 16-byte random salt kept in a file beside the store.
//! Passphrases come from a file or an environment variable, never from the
//! command line. The key is zeroized on drop and never printed.
use std::path::Path;

use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::random_bytes;

pub const KEY_LEN: usize = 32;
pub const SALT_LEN: usize = 16;
/// Argon2id parameters (memory in KiB, iterations, lanes). Changing them
/// changes the derived key: they are part of the data dir's format.
pub const ARGON2_M_KIB: u32 = 64 * 1024;
pub const ARGON2_T: u32 = 3;
pub const ARGON2_P: u32 = 1;

#[derive(Debug, Error)]
pub enum MasterKeyError {
    #[error("master key file {path}: {msg}")]
    File { path: String, msg: String },
    #[error("passphrase: {0}")]
    Passphrase(String),
}

/// 32 bytes of AES-256 key, zeroized on drop.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn file_err(path: &Path, msg: impl std::fmt::Display) -> MasterKeyError {
    MasterKeyError::File {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Refuse secrets that group or others can read ([`crate::secret_file`]).
pub fn check_private(path: &Path) -> Result<(), MasterKeyError> {
    crate::secret_file::check_private(path).map_err(|e| MasterKeyError::File {
        path: e.path,
        msg: e.msg,
    })
}

/// Write a new file with mode 0600, failing if it exists.
/// Create a new secret file the crash-safe way (temporary file, fsync,
/// rename, directory fsync): once this returns, the file survives a power
/// cut, so the store never commits a check value for a key that can vanish.
fn create_private(path: &Path, bytes: &[u8]) -> Result<(), MasterKeyError> {
    if path.exists() {
        return Err(file_err(path, "exists already"));
    }
    crate::secret_file::write_private(path, bytes).map_err(|e| file_err(path, e.msg))
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        MasterKey(Zeroizing::new(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0[..]
    }

    /// Read the key file, or create it with fresh random bytes when it does
    /// not exist. Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), MasterKeyError> {
        if !path.exists() {
            let mut k = Zeroizing::new([0u8; KEY_LEN]);
            random_bytes(&mut k[..]).map_err(|e| file_err(path, e))?;
            create_private(path, &k[..])?;
            return Ok((MasterKey(k), true));
        }
        check_private(path)?;
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| file_err(path, e))?);
        if bytes.len() != KEY_LEN {
            return Err(file_err(
                path,
                format!("must hold exactly {KEY_LEN} bytes, holds {}", bytes.len()),
            ));
        }
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(&bytes);
        Ok((MasterKey(k), false))
    }

    /// Derive the key from a passphrase with Argon2id and the salt in
    /// `salt_path` (created on first use).
    pub fn from_passphrase(passphrase: &[u8], salt_path: &Path) -> Result<Self, MasterKeyError> {
        if passphrase.len() < 12 {
            return Err(MasterKeyError::Passphrase(
                "must be at least 12 bytes long".into(),
            ));
        }
        let salt = if salt_path.exists() {
            let s = std::fs::read(salt_path).map_err(|e| file_err(salt_path, e))?;
            if s.len() != SALT_LEN {
                return Err(file_err(
                    salt_path,
                    format!("salt must be {SALT_LEN} bytes"),
                ));
            }
            s
        } else {
            let mut s = vec![0u8; SALT_LEN];
            random_bytes(&mut s).map_err(|e| file_err(salt_path, e))?;
            create_private(salt_path, &s)?;
            s
        };
        let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(KEY_LEN))
            .map_err(|e| MasterKeyError::Passphrase(e.to_string()))?;
        let a2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        a2.hash_password_into(passphrase, &salt, &mut k[..])
            .map_err(|e| MasterKeyError::Passphrase(e.to_string()))?;
        Ok(MasterKey(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_file_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        let (k1, created) = MasterKey::load_or_create(&p).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = MasterKey::load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(k1.bytes(), k2.bytes());
        assert_eq!(format!("{k1:?}"), "MasterKey(<redacted>)");
    }

    #[test]
    fn world_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        MasterKey::load_or_create(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = MasterKey::load_or_create(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn passphrase_derivation_is_stable_per_salt() {
        let dir = tempfile::tempdir().unwrap();
        let salt = dir.path().join("master.salt");
        let a = MasterKey::from_passphrase(b"correct horse battery", &salt).unwrap();
        let b = MasterKey::from_passphrase(b"correct horse battery", &salt).unwrap();
        let c = MasterKey::from_passphrase(b"correct horse battery!", &salt).unwrap();
        assert_eq!(a.bytes(), b.bytes());
        assert_ne!(a.bytes(), c.bytes());
        assert!(MasterKey::from_passphrase(b"short", &salt).is_err());
    }
}
