//! Files that hold secrets (the master key, a passphrase, a TLS private key,
//! a PIN, the bootstrap token): the checks every reader of one makes before
//! trusting it, and the crash-safe way to write one. Knows paths and
//! permissions only, never what the file holds.
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

/// The steps of [`write_private`], in order. A crash after any of them
/// leaves either the old file (or none) or the whole new one at `path`,
/// never a part of one; the crash-point test in `server` goes through each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The temporary file exists, empty.
    Created,
    /// Its bytes are written, not yet synced.
    Written,
    /// Its bytes are synced.
    Synced,
    /// It is renamed over `path`; the directory is not yet synced.
    Renamed,
    /// The directory is synced: done.
    DirSynced,
}

impl Step {
    #[cfg(test)]
    pub(crate) const ALL: [Step; 5] = [
        Step::Created,
        Step::Written,
        Step::Synced,
        Step::Renamed,
        Step::DirSynced,
    ];
}

#[cfg(test)]
thread_local! {
    /// Tests only: "crash" after this step (and with `true`, as a power cut
    /// would: what was not yet synced is lost).
    pub(crate) static CRASH_AFTER: std::cell::Cell<Option<(Step, bool)>> =
        const { std::cell::Cell::new(None) };
}

/// Tests: stop after `step` as a crash would, leaving the disk as a kill
/// (or, with `power_cut`, a power cut) at that point leaves it.
#[cfg(test)]
fn crashed(step: Step, tmp: &Path, path: &Path) -> bool {
    let Some((at, power_cut)) = CRASH_AFTER.with(|c| c.get()) else {
        return false;
    };
    if at != step {
        return false;
    }
    if power_cut {
        match step {
            // unsynced bytes are lost: the temporary file holds a part
            Step::Written => {
                let len = std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .open(tmp)
                    .and_then(|f| f.set_len(len / 2));
            }
            // the rename is not durable until the directory is synced
            Step::Renamed => {
                let _ = std::fs::rename(path, tmp);
            }
            _ => {}
        }
    }
    true
}
#[cfg(not(test))]
fn crashed(_: Step, _: &Path, _: &Path) -> bool {
    false
}

/// Write a secret file the crash-safe way: a temporary file beside it
/// created owner-only (0600), written and fsynced, renamed over `path`,
/// then the directory fsynced so the rename itself survives a power cut.
/// A temporary file left by a crash is removed by the next write.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretFileError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |msg: String| SecretFileError {
        path: path.display().to_string(),
        msg,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| err("not a file name".into()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let crash = |step| {
        if crashed(step, &tmp, path) {
            Err(err(format!("simulated crash after {step:?}")))
        } else {
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err(format!("create {}: {e}", tmp.display())))?;
    crash(Step::Created)?;
    f.write_all(bytes).map_err(|e| err(format!("write: {e}")))?;
    crash(Step::Written)?;
    f.sync_all().map_err(|e| err(format!("fsync: {e}")))?;
    drop(f);
    crash(Step::Synced)?;
    std::fs::rename(&tmp, path).map_err(|e| err(format!("rename: {e}")))?;
    crash(Step::Renamed)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(format!("fsync of {}: {e}", dir.display())))?;
    crash(Step::DirSynced)
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
