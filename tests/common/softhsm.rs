//! A throw-away SoftHSM2 token for one test: its own token dir and
//! `SOFTHSM2_CONF`, initialised with `softhsm2-util`, and a 0600 PIN file.
//! `scripts/install-deps.sh` installs softhsm2 and opensc (`pkcs11-tool`).
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PIN: &str = "4711-test-pin";
const SO_PIN: &str = "5678-test-so";

pub struct SoftHsm {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub tokens: PathBuf,
    pub label: String,
    pub pin_file: PathBuf,
}

/// The SoftHSM2 module, wherever Debian put it.
pub fn module() -> PathBuf {
    for p in [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("libsofthsm2.so not found: install softhsm2 (scripts/install-deps.sh does)");
}

impl SoftHsm {
    /// A fresh token labelled `label` under `dir`.
    pub fn new(dir: &Path, label: &str) -> Self {
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                PIN,
                "--so-pin",
                SO_PIN,
            ])
            .output()
            .expect("softhsm2-util runs (install softhsm2: scripts/install-deps.sh)");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.join("pin");
        ron_kms::secret_file::write_private(&pin_file, PIN.as_bytes()).unwrap();
        SoftHsm {
            dir: dir.to_path_buf(),
            conf,
            tokens,
            label: label.to_string(),
            pin_file,
        }
    }

    /// The environment `ron-kms serve` needs for this token.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("SOFTHSM2_CONF", self.conf.clone().into()),
            ("KMS_BACKEND", "pkcs11".into()),
            ("KMS_PKCS11_MODULE", module().into()),
            ("KMS_PKCS11_TOKEN_LABEL", self.label.clone().into()),
            ("KMS_PKCS11_PIN_FILE", self.pin_file.clone().into()),
        ]
    }

    /// The backend part of an in-process [`ron_kms::config::Config`]. The
    /// caller's process must have `SOFTHSM2_CONF` pointing at [`Self::conf`]
    /// before the module is first loaded.
    pub fn backend(&self, pool_size: usize) -> ron_kms::config::BackendKind {
        ron_kms::config::BackendKind::Pkcs11(ron_kms::config::Pkcs11Config {
            module: module(),
            token_label: self.label.clone(),
            pin: ron_kms::config::PassphraseSource::File(self.pin_file.clone()),
            pool_size,
        })
    }

    /// The token's own directory (one per token under the token dir).
    pub fn token_dir(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.tokens)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(dirs.len(), 1, "one token under {}", self.tokens.display());
        dirs.pop().unwrap()
    }

    /// `pkcs11-tool --list-objects` as the user: an independent reading of
    /// what is in the token, with each object's access flags.
    pub fn list_objects(&self) -> String {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &self.conf)
            .env("RON_KMS_TEST_PIN", PIN)
            .arg("--module")
            .arg(module())
            .args([
                "--token-label",
                &self.label,
                "--login",
                "--pin",
                "env:RON_KMS_TEST_PIN",
                "--list-objects",
            ])
            .output()
            .expect("pkcs11-tool runs (install opensc: scripts/install-deps.sh)");
        assert!(
            out.status.success(),
            "pkcs11-tool --list-objects: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}
