//! Files that hold secrets (the master key, a passphrase, a TLS private key,
//! a PIN): the checks every reader of one makes before trusting it. Knows
//! paths and permissions only, never what the file holds.
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Why a secret file was refused: its path and what is wrong. Never the
/// file's contents.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct SecretFileError {
    pub path: String,
    pub msg: String,
}

/// Refuse a secret file that group or others can read (or that cannot be
/// examined), naming the fix.
pub fn check_private(path: &Path) -> Result<(), SecretFileError> {
    let err = |msg: String| SecretFileError {
        path: path.display().to_string(),
        msg,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "mode {mode:04o} lets group or others read it; run chmod 600"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owner_readable_files_pass() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, b"x").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = check_private(&p);
            assert_eq!(r.is_ok(), ok, "{mode:o}");
            if let Err(e) = r {
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
        assert!(check_private(&dir.path().join("missing")).is_err());
    }
}
