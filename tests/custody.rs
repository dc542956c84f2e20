//! Keys survive a restart; nothing private is ever on disk in the clear; the
//! data dir is guarded against a wrong master key and a second process.
mod common;

use common::{all_files, disk_windows, files_containing, Front, TestServer, FRONTS};
use ron_kms::backend::soft::Sealer;
use ron_kms::backend::KeyLabel;
use ron_kms::config::MasterKeySource;
use ron_kms::crypto::Algorithm;
use ron_kms::server::{open_data_dir, start, StartError};
use ron_kms::store::{KeyRecord, VersionRecord, VersionState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_a_restart() {
    let mut srv = TestServer::start().await;
    let mut before = Vec::new();
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let s = format!("s-{front:?}").to_lowercase();
        let w = format!("w-{front:?}").to_lowercase();
        c.create(&s, "ml-dsa-65").await.unwrap();
        c.create(&w, "ml-kem-1024").await.unwrap();
        c.rotate(&s, "").await.unwrap();
        c.set_state(&s, 1, "disabled").await.unwrap();
        let sig = c.sign(&s, b"persist me").await.unwrap();
        let ct = c.wrap(&w, b"plain", b"").await.unwrap().ciphertext;
        before.push((front, s, w, sig, ct));
    }
    srv.restart().await;
    for (front, s, _w, sig, ct) in before {
        let mut c = srv.client(front, &srv.admin_token).await;
        assert_eq!(sig.kid, format!("{s}#v2"));
        assert!(
            c.verify(&sig.kid, b"persist me", &sig.signature)
                .await
                .unwrap()
                .valid
        );
        assert_eq!(c.unwrap("", &ct, b"").await.unwrap().plaintext, b"plain");
        let k = c.get_key(&s, false).await.unwrap();
        assert_eq!(
            (k.primary_version, k.versions[0].state.as_str()),
            (2, "disabled"),
            "state survives"
        );
        assert_eq!(c.sign(&s, b"again").await.unwrap().kid, format!("{s}#v2"));
    }
}

/// Seal keys whose private bytes the test knows — one fixed byte string and
/// one freshly generated key per algorithm — then search every file under
/// the data dir for those bytes.
#[test]
fn the_data_dir_holds_no_private_key_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(&dir.path().join("data"));
    let opened = open_data_dir(&cfg).unwrap();
    // (private bytes, public bytes stored in the clear beside them)
    let mut secrets: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();

    let known = b"THIS-IS-A-KNOWN-PRIVATE-KEY-32B!".to_vec();
    let label = KeyLabel {
        tenant: "t",
        kid: "known#v1",
        algorithm: Algorithm::Ed25519,
    };
    let handle = opened
        .sealed_file
        .as_ref()
        .unwrap()
        .seal(label, &known)
        .unwrap();
    secrets.push((known, Vec::new()));
    let mut records = vec![("known".to_string(), Algorithm::Ed25519, Vec::new(), handle)];

    for alg in Algorithm::ALL {
        let name = format!("gen-{}", alg.as_str());
        let kid = format!("{name}#v1");
        let label = KeyLabel {
            tenant: "t",
            kid: &kid,
            algorithm: alg,
        };
        let g = opened.backend.generate(label).unwrap();
        // the test may look inside custody; the service never does this
        let private = opened
            .sealed_file
            .as_ref()
            .unwrap()
            .unseal(label, &g.handle)
            .unwrap();
        secrets.push((private.to_vec(), g.public.clone()));
        records.push((name, alg, g.public, g.handle));
    }
    for (name, alg, public, handle) in records {
        let rec = KeyRecord {
            tenant: "t".into(),
            name,
            algorithm: alg,
            primary_version: 1,
            created_at_ms: 0,
            settings: ron_kms::store::KeySettings::default(),
            versions: vec![VersionRecord {
                version: 1,
                state: VersionState::Enabled,
                public_key: public,
                handle: Some(handle),
                created_at_ms: 0,
            }],
        };
        opened.store.create_key(&rec, None).unwrap();
    }
    assert_eq!(
        opened.store.load_keys().unwrap().len(),
        1 + Algorithm::ALL.len()
    );
    drop(opened);

    let files = all_files(&dir.path().join("data"));
    assert!(
        files.iter().any(|f| f.ends_with("kms.sqlite3")),
        "{files:?}"
    );
    // owner-only: the directory and every file in it
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let on_disk = disk_windows(&[dir.path().join("data")]);
    for (i, (private, public)) in secrets.iter().enumerate() {
        let mut checked = 0;
        for (off, w) in common::private_windows(private, public) {
            checked += 1;
            if on_disk.contains(w) {
                let hits = files_containing(&dir.path().join("data"), w);
                panic!("secret {i} bytes at offset {off} found in {hits:?}");
            }
        }
        assert!(
            checked >= 16,
            "secret {i}: too few private windows checked ({checked})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_master_key_or_a_second_process_is_refused() {
    let srv = TestServer::start().await;
    // second process on the same data dir while the first runs
    let err = start(&common::config(&srv.data_dir()))
        .await
        .err()
        .expect("must refuse");
    assert!(
        err.to_string().contains("in use by another ron-kms"),
        "{err}"
    );

    let mut srv = srv;
    srv.stop().await;
    // a different master key file
    let mut cfg = common::config(&srv.data_dir());
    let other = srv.dir.path().join("other.key");
    std::fs::write(&other, [9u8; 32]).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    cfg.master = MasterKeySource::KeyFile(other);
    let err = start(&cfg).await.err().expect("must refuse");
    assert!(matches!(err, StartError::MasterKeyMismatch), "{err}");
}

/// A power cut after the store committed its master-key check but before
/// the key file's directory entry reached the disk used to leave a start-up
/// that made a second master key. Now the key file is written crash-safe
/// (temporary file, fsync, rename, directory fsync; a crash before the
/// rename leaves only the temporary file), and a store sealed under a key
/// whose file or salt is missing refuses to start and creates nothing
/// (issue 28).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_master_key_file_is_never_replaced_over_sealed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = common::config(&data);
    let r = start(&cfg).await.unwrap();
    r.shutdown().await;
    let key = data.join("master.key");
    let original = std::fs::read(&key).unwrap();
    assert!(
        !data.join(".master.key.tmp").exists(),
        "no temporary file left behind"
    );

    // a crash before the rename: only the temporary file exists
    std::fs::rename(&key, data.join(".master.key.tmp")).unwrap();
    let err = start(&cfg).await.err().expect("refused");
    assert!(matches!(err, StartError::MasterKeyMissing(_)), "{err}");
    assert!(
        err.to_string().contains("restore it from its backup"),
        "{err}"
    );
    assert!(!key.exists(), "no second master key was made");

    // restored from backup: starts, the same key
    std::fs::write(&key, &original).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let r = start(&cfg).await.unwrap();
    r.shutdown().await;

    // passphrase custody: the salt is as precious
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "a long enough passphrase\n").unwrap();
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let data = dir.path().join("data");
    let mut cfg = common::config(&data);
    cfg.master = MasterKeySource::Passphrase(ron_kms::config::PassphraseSource::File(pass));
    start(&cfg).await.unwrap().shutdown().await;
    std::fs::remove_file(data.join("master.salt")).unwrap();
    let err = start(&cfg).await.err().expect("refused");
    assert!(matches!(err, StartError::MasterKeyMissing(_)), "{err}");
    assert!(!data.join("master.salt").exists(), "no new salt was made");
}

/// A data dir group or others can enter is refused at start with the fix
/// named, before anything in it is opened or created (issue 28).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for mode in [0o755, 0o750, 0o701] {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = start(&common::config(&data)).await.err().expect("refused");
        let text = err.to_string();
        assert!(
            text.contains(&format!("chmod 700 {}", data.display())),
            "{mode:o}: {text}"
        );
        assert!(
            std::fs::read_dir(&data).unwrap().next().is_none(),
            "{mode:o}: nothing was created"
        );
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let r = start(&common::config(&data)).await.unwrap();
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passphrase_custody_round_trips_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "a long enough passphrase\n").unwrap();
    let mut cfg = common::config(&dir.path().join("data"));
    cfg.master = MasterKeySource::Passphrase(ron_kms::config::PassphraseSource::File(pass.clone()));
    // a passphrase file others can read is refused
    let err = start(&cfg)
        .await
        .err()
        .expect("0644 passphrase file is refused");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let r = start(&cfg).await.unwrap();
    let token = r.bootstrap_token.clone().unwrap();
    let mut c = common::Client::connect(Front::Grpc, &r, &token).await;
    c.create("k", "ed25519").await.unwrap();
    let sig = c.sign("k", b"m").await.unwrap();
    r.shutdown().await;
    assert!(
        !dir.path().join("data/master.key").exists(),
        "no key file in passphrase mode"
    );

    let r = start(&cfg).await.unwrap();
    let mut c = common::Client::connect(Front::Grpc, &r, &token).await;
    assert!(
        c.verify(&sig.kid, b"m", &sig.signature)
            .await
            .unwrap()
            .valid
    );
    assert!(c.sign("k", b"m").await.is_ok());
    r.shutdown().await;

    std::fs::write(&pass, "a different passphrase!\n").unwrap();
    let err = start(&cfg)
        .await
        .err()
        .expect("wrong passphrase is refused");
    assert!(matches!(err, StartError::MasterKeyMismatch), "{err}");
}
