//! The crash-point test of the master key's and salt's first write: a crash
//! (a kill, or a power cut losing what was not synced) after each step of
//! [`crate::secret_file::write_private`] never leaves a data dir whose next
//! start makes a second master key over committed data.
use super::*;
use crate::backend::{KeyLabel, SignInput};
use crate::crypto::Algorithm;
use crate::secret_file::{Step, CRASH_AFTER};

fn committed_check(cfg: &Config) -> bool {
    let store = SqliteStore::open(&cfg.store_path()).unwrap();
    store.get_meta(MASTER_CHECK_KEY).unwrap().is_some()
}

fn label() -> KeyLabel<'static> {
    KeyLabel {
        tenant: "t",
        kid: "k#v1",
        algorithm: Algorithm::Ed25519,
    }
}

/// One first start that crashes after `step` of the file's write, then two
/// starts: the second seals a key, the third must open it.
fn crash_then_restart(cfg: &Config, step: Step, power_cut: bool) {
    let what = format!("{:?} after {step:?} (power cut: {power_cut})", cfg.master);
    CRASH_AFTER.with(|c| c.set(Some((step, power_cut))));
    let first = open_data_dir(cfg);
    CRASH_AFTER.with(|c| c.set(None));
    let Err(e) = first else {
        panic!("{what}: the crashed start went on");
    };
    assert!(e.to_string().contains("simulated crash"), "{what}: {e}");
    // the check value is committed only after the file is durable
    assert!(
        !committed_check(cfg),
        "{what}: committed before the file was durable"
    );
    let opened = open_data_dir(cfg).unwrap_or_else(|e| panic!("{what}: restart: {e}"));
    let g = opened.backend.generate(label()).unwrap();
    drop(opened);
    assert!(committed_check(cfg), "{what}");
    let again = open_data_dir(cfg).unwrap_or_else(|e| panic!("{what}: third start: {e}"));
    again
        .backend
        .sign(label(), &g.handle, SignInput::Message(b"m"))
        .unwrap_or_else(|e| panic!("{what}: the key sealed before is lost: {e}"));
    // no temporary file is left to be mistaken for anything
    let leftovers: Vec<_> = std::fs::read_dir(&cfg.data_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
}

#[test]
fn a_crash_at_any_step_of_the_master_key_write_never_makes_a_second_key_over_data() {
    for power_cut in [false, true] {
        for step in Step::ALL {
            let dir = tempfile::tempdir().unwrap();
            let cfg = Config::for_data_dir(&dir.path().join("data"));
            crash_then_restart(&cfg, step, power_cut);
        }
    }
}

#[test]
fn a_crash_at_any_step_of_the_salt_write_never_makes_a_second_key_over_data() {
    for step in Step::ALL {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass");
        crate::secret_file::write_private(&pass, b"correct horse battery staple").unwrap();
        let mut cfg = Config::for_data_dir(&dir.path().join("data"));
        cfg.master = MasterKeySource::Passphrase(PassphraseSource::File(pass));
        crash_then_restart(&cfg, step, true);
    }
}

#[test]
fn a_sealed_store_whose_key_file_vanished_is_refused_not_rekeyed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::for_data_dir(&dir.path().join("data"));
    let opened = open_data_dir(&cfg).unwrap();
    opened.backend.generate(label()).unwrap();
    drop(opened);
    let MasterKeySource::KeyFile(key) = &cfg.master else {
        unreachable!()
    };
    std::fs::remove_file(key).unwrap();
    for _ in 0..2 {
        assert!(matches!(
            open_data_dir(&cfg),
            Err(StartError::MasterKeyMissing(_))
        ));
        assert!(!key.exists());
    }
}
