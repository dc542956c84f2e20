//! Unit tests of configuration loading: defaults, precedence, and every
//! setting's validation, named by the field that was wrong.
use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults() {
    let c = load(&Flags::default(), &env(&[])).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("./ron-kms-data"));
    assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:9445");
    assert_eq!(c.http_addr.to_string(), "127.0.0.1:9446");
    assert_eq!(
        c.master,
        MasterKeySource::KeyFile(PathBuf::from("./ron-kms-data/master.key"))
    );
    assert_eq!(
        c.algorithms.len(),
        14,
        "every algorithm, SLH-DSA and HMAC included"
    );
}

#[test]
fn file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "grpc_addr = \"127.0.0.1:1\"\nhttp_addr = \"127.0.0.1:2\"\ndata_dir = \"/from/file\"\n",
    )
    .unwrap();
    let flags = Flags {
        config: Some(f.clone()),
        ..Default::default()
    };
    let c = load(&flags, &env(&[])).unwrap();
    assert_eq!(c.grpc_addr.port(), 1);
    assert_eq!(c.data_dir, PathBuf::from("/from/file"));
    let c = load(&flags, &env(&[("KMS_GRPC_ADDR", "127.0.0.1:3")])).unwrap();
    assert_eq!(c.grpc_addr.port(), 3);
    assert_eq!(c.http_addr.port(), 2);
    let flags = Flags {
        grpc_addr: Some("127.0.0.1:4".into()),
        ..flags
    };
    let c = load(&flags, &env(&[("KMS_GRPC_ADDR", "127.0.0.1:3")])).unwrap();
    assert_eq!(c.grpc_addr.port(), 4);
}

#[test]
fn pq_policy_and_verify_cache_settings() {
    use crate::policy::{PqPolicy, VerifyMode};
    let c = load(&Flags::default(), &env(&[])).unwrap();
    assert_eq!(c.pq.default, PqPolicy::for_phase(0));
    assert_eq!(
        (c.verify_cache.max, c.verify_cache.ttl_ms),
        (10_000, 60_000)
    );
    assert!(!c.faults.injection);

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "verify_cache_max = 5\n[pq]\nphase = 1\nrollout_percent = 40\n\
         [pq.tenants.acme]\nphase = 2\n[pq.tenants.bank]\nphase = 3\n",
    )
    .unwrap();
    let flags = Flags {
        config: Some(f.clone()),
        ..Default::default()
    };
    let c = load(&flags, &env(&[])).unwrap();
    assert_eq!(c.verify_cache.max, 5);
    assert_eq!(
        (
            c.pq.default.phase,
            c.pq.default.verify_mode,
            c.pq.default.rollout_percent
        ),
        (1, VerifyMode::Or, 40)
    );
    assert_eq!(c.pq.tenants["acme"], PqPolicy::for_phase(2));
    assert_eq!(c.pq.tenants["bank"].verify_mode, VerifyMode::PqOnly);
    // env wins over [pq] for the default, field by field
    let c = load(
        &flags,
        &env(&[
            ("KMS_PQ_VERIFY_MODE", "and"),
            ("KMS_PQ_PRODUCE_HYBRID", "false"),
            ("KMS_PQ_ROLLOUT_PERCENT", "7"),
            ("KMS_VERIFY_CACHE_TTL_MS", "1500"),
            ("KMS_FAULT_INJECTION", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (
            c.pq.default.phase,
            c.pq.default.produce_hybrid,
            c.pq.default.verify_mode,
            c.pq.default.rollout_percent
        ),
        (1, false, VerifyMode::And, 7)
    );
    assert_eq!(c.verify_cache.ttl_ms, 1500);
    assert!(c.faults.injection);
    // bad values name their place
    for (k, v) in [
        ("KMS_PQ_PHASE", "4"),
        ("KMS_PQ_VERIFY_MODE", "xor"),
        ("KMS_PQ_ROLLOUT_PERCENT", "101"),
        ("KMS_PQ_PRODUCE_HYBRID", "maybe"),
        ("KMS_VERIFY_CACHE_TTL_MS", "0"),
        ("KMS_VERIFY_CACHE_MAX", "-1"),
        ("KMS_PQ_AUTO_ROLLBACK", "sometimes"),
        ("KMS_PQ_ACCEPT_LEGACY_BUNDLES", "2"),
        // one principal alone must never be able to roll a tenant back
        ("KMS_PQ_ROLLBACK_THRESHOLD", "1"),
        ("KMS_PQ_ROLLBACK_THRESHOLD", "1001"),
        ("KMS_PQ_ROLLBACK_WINDOW_SECS", "0"),
    ] {
        let e = load(&Flags::default(), &env(&[(k, v)])).unwrap_err();
        assert_eq!(e.field, k, "{k}={v}: {e}");
    }
    // phase 3 must be pq_only
    let e = load(
        &Flags::default(),
        &env(&[("KMS_PQ_PHASE", "3"), ("KMS_PQ_VERIFY_MODE", "or")]),
    )
    .unwrap_err();
    assert!(e.message.contains("phase 3"), "{e}");
    std::fs::write(&f, "[pq.tenants.acme]\nverify_mode = \"both\"\n").unwrap();
    let e = load(&flags, &env(&[])).unwrap_err();
    assert!(e.field.starts_with("pq.tenants.acme.verify_mode"), "{e}");

    // the rollback rule and the per-tenant switches
    assert_eq!(c.pq.rollback, crate::policy::RollbackRule::default());
    std::fs::write(
        &f,
        "[pq]\nphase = 2\nrollback_threshold = 5\nrollback_window_secs = 60\n\
         accept_legacy_bundles = false\n[pq.tenants.acme]\nphase = 1\nauto_rollback = false\n",
    )
    .unwrap();
    let c = load(&flags, &env(&[("KMS_PQ_ROLLBACK_THRESHOLD", "4")])).unwrap();
    assert_eq!(c.pq.rollback.threshold, 4);
    assert_eq!(c.pq.rollback.window, std::time::Duration::from_secs(60));
    assert!(!c.pq.default.accept_legacy_bundles && c.pq.default.auto_rollback);
    assert!(!c.pq.tenants["acme"].auto_rollback);
    assert!(c.pq.tenants["acme"].accept_legacy_bundles);
}

#[test]
fn pkcs11_settings() {
    let base = [
        ("KMS_BACKEND", "pkcs11"),
        ("KMS_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so"),
        ("KMS_PKCS11_TOKEN_LABEL", "hsm1"),
        ("KMS_PKCS11_PIN_ENV", "HSM_PIN"),
    ];
    let c = load(&Flags::default(), &env(&base)).unwrap();
    assert_eq!(
        c.backend,
        BackendKind::Pkcs11(Pkcs11Config {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "hsm1".into(),
            pin: PassphraseSource::Env("HSM_PIN".into()),
            pool_size: DEFAULT_PKCS11_POOL_SIZE,
        })
    );
    // each required setting, named when missing
    for (missing, field) in [
        ("KMS_PKCS11_MODULE", "KMS_PKCS11_MODULE"),
        ("KMS_PKCS11_TOKEN_LABEL", "KMS_PKCS11_TOKEN_LABEL"),
        ("KMS_PKCS11_PIN_ENV", "KMS_PKCS11_PIN_FILE"),
    ] {
        let pairs: Vec<_> = base
            .iter()
            .copied()
            .filter(|(k, _)| *k != missing)
            .collect();
        let e = load(&Flags::default(), &env(&pairs)).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
    let mut both = base.to_vec();
    both.push(("KMS_PKCS11_PIN_FILE", "/etc/pin"));
    let e = load(&Flags::default(), &env(&both)).unwrap_err();
    assert!(e.message.contains("only one"), "{e}");
    let mut pool = base.to_vec();
    pool.push(("KMS_PKCS11_POOL_SIZE", "0"));
    assert_eq!(
        load(&Flags::default(), &env(&pool)).unwrap_err().field,
        "KMS_PKCS11_POOL_SIZE"
    );
    let mut master = base.to_vec();
    master.push(("KMS_MASTER_KEY_FILE", "/etc/master.key"));
    assert_eq!(
        load(&Flags::default(), &env(&master)).unwrap_err().field,
        "KMS_MASTER_KEY_FILE"
    );
    // a pkcs11 setting without the pkcs11 backend is a mistake, named
    let e = load(
        &Flags::default(),
        &env(&[("KMS_PKCS11_TOKEN_LABEL", "hsm1")]),
    )
    .unwrap_err();
    assert_eq!(e.field, "KMS_PKCS11_TOKEN_LABEL");
    // the file keys work too
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "backend = \"pkcs11\"\npkcs11_module = \"/m.so\"\npkcs11_token_label = \"t\"\npkcs11_pin_file = \"/p\"\npkcs11_pool_size = 3\n",
    )
    .unwrap();
    let c = load(
        &Flags {
            config: Some(f),
            ..Default::default()
        },
        &env(&[]),
    )
    .unwrap();
    assert!(matches!(
        c.backend,
        BackendKind::Pkcs11(Pkcs11Config { pool_size: 3, ref pin, .. }) if *pin == PassphraseSource::File("/p".into())
    ));
}

#[test]
fn tpm_settings() {
    use crate::backend::tpm::attest::{AttestationSettings, PcrBank};
    let tcti = "swtpm:host=127.0.0.1,port=2321";
    let base = [("KMS_BACKEND", "tpm"), ("KMS_TPM_TCTI", tcti)];
    let c = load(&Flags::default(), &env(&base)).unwrap();
    assert_eq!(
        c.backend,
        BackendKind::Tpm(TpmConfig {
            tcti: tcti.into(),
            queue_depth: crate::backend::tpm::DEFAULT_QUEUE_DEPTH,
            ek_ca_file: None,
            seal_pcrs: None,
            attestation: AttestationSettings::default(),
            attestation_required: false,
            attestation_interval: Duration::from_secs(DEFAULT_ATTESTATION_INTERVAL_SECS),
        })
    );
    assert!(!c.attestation_required());
    let digest = "ab".repeat(32);
    let mut full = base.to_vec();
    full.extend([
        ("KMS_TPM_QUEUE_DEPTH", "8"),
        ("KMS_ATTESTATION_PCRS", "sha1:0,7"),
        ("KMS_ATTESTATION_PCR_DIGEST", digest.as_str()),
        ("KMS_ATTESTATION_REQUIRED", "true"),
        ("KMS_ATTESTATION_INTERVAL_SECS", "5"),
    ]);
    let c = load(&Flags::default(), &env(&full)).unwrap();
    let BackendKind::Tpm(t) = &c.backend else {
        panic!("tpm")
    };
    assert_eq!(t.queue_depth, 8);
    assert_eq!(t.attestation.bank, PcrBank::Sha1);
    assert_eq!(t.attestation.slots, vec![0, 7]);
    assert_eq!(t.attestation.expected_digest, Some(vec![0xab; 32]));
    assert_eq!(t.attestation_interval, Duration::from_secs(5));
    assert!(c.attestation_required());
    // each bad value is named
    for (k, v) in [
        ("KMS_TPM_QUEUE_DEPTH", "0"),
        ("KMS_ATTESTATION_PCRS", "sha256:0-99"),
        ("KMS_ATTESTATION_PCR_DIGEST", "abcd"),
        ("KMS_ATTESTATION_REQUIRED", "maybe"),
        ("KMS_ATTESTATION_INTERVAL_SECS", "0"),
    ] {
        let mut bad = base.to_vec();
        bad.push((k, v));
        assert_eq!(load(&Flags::default(), &env(&bad)).unwrap_err().field, k);
    }
    // required attestation needs a policy to check
    let mut req = base.to_vec();
    req.push(("KMS_ATTESTATION_REQUIRED", "true"));
    assert_eq!(
        load(&Flags::default(), &env(&req)).unwrap_err().field,
        "KMS_ATTESTATION_PCR_DIGEST"
    );
    // the TCTI is required; tpm settings need the tpm backend; the
    // master key settings and pkcs11 settings do not go with it
    assert_eq!(
        load(&Flags::default(), &env(&[("KMS_BACKEND", "tpm")]))
            .unwrap_err()
            .field,
        "KMS_TPM_TCTI"
    );
    assert_eq!(
        load(
            &Flags::default(),
            &env(&[("KMS_ATTESTATION_REQUIRED", "true")])
        )
        .unwrap_err()
        .field,
        "KMS_ATTESTATION_REQUIRED"
    );
    for (k, v) in [
        ("KMS_MASTER_KEY_FILE", "/etc/master.key"),
        ("KMS_PKCS11_TOKEN_LABEL", "hsm1"),
    ] {
        let mut bad = base.to_vec();
        bad.push((k, v));
        assert_eq!(load(&Flags::default(), &env(&bad)).unwrap_err().field, k);
    }
}

#[test]
fn errors_name_the_field() {
    let e = load(&Flags::default(), &env(&[("KMS_GRPC_ADDR", "nope")])).unwrap_err();
    assert_eq!(e.field, "KMS_GRPC_ADDR");
    let e = load(
        &Flags {
            http_addr: Some("x".into()),
            ..Default::default()
        },
        &env(&[]),
    )
    .unwrap_err();
    assert_eq!(e.field, "--http-addr");
    let e = load(
        &Flags::default(),
        &env(&[("KMS_ALGORITHMS", "ed25519,rsa")]),
    )
    .unwrap_err();
    assert!(
        e.field == "KMS_ALGORITHMS" && e.message.contains("\"rsa\""),
        "{e}"
    );
    let e = load(&Flags::default(), &env(&[("KMS_BACKEND", "vault")])).unwrap_err();
    assert_eq!(e.field, "KMS_BACKEND");
    let e = load(
        &Flags::default(),
        &env(&[
            ("KMS_MASTER_KEY_FILE", "/k"),
            ("KMS_MASTER_PASSPHRASE_ENV", "P"),
        ]),
    )
    .unwrap_err();
    assert!(e.message.contains("only one"), "{e}");
    let e = load(&Flags::default(), &env(&[("KMS_BLOCKING_THREADS", "0")])).unwrap_err();
    assert_eq!(e.field, "KMS_BLOCKING_THREADS");
}

#[test]
fn the_pre_authentication_limit_is_configurable() {
    let c = load(&Flags::default(), &env(&[])).unwrap();
    assert_eq!((c.preauth.failures_per_sec, c.preauth.burst), (10, 50));
    let o = c.service_options();
    assert_eq!(
        (o.auth_failures_per_sec, o.auth_failure_burst),
        (10.0, 50.0)
    );
    let c = load(
        &Flags::default(),
        &env(&[
            ("KMS_AUTH_FAILURES_PER_SEC", "500"),
            ("KMS_AUTH_FAILURE_BURST", "2000"),
        ]),
    )
    .unwrap();
    assert_eq!((c.preauth.failures_per_sec, c.preauth.burst), (500, 2000));
    for (k, v) in [
        ("KMS_AUTH_FAILURES_PER_SEC", "0"),
        ("KMS_AUTH_FAILURES_PER_SEC", "1.5"),
        ("KMS_AUTH_FAILURE_BURST", "0"),
    ] {
        let e = load(&Flags::default(), &env(&[(k, v)])).unwrap_err();
        assert_eq!(e.field, k, "{e}");
    }
}

#[test]
fn amnesia_conflicts_are_named() {
    let am = Flags {
        amnesia: true,
        ..Default::default()
    };
    assert!(load(&am, &env(&[])).unwrap().amnesia);
    assert!(
        load(&Flags::default(), &env(&[("KMS_AMNESIA", "true")]))
            .unwrap()
            .amnesia
    );
    let e = load(&am, &env(&[("KMS_BACKEND", "pkcs11")])).unwrap_err();
    assert_eq!(e.field, "KMS_BACKEND");
    assert!(
        e.message.contains("conflicts with --amnesia") && e.message.contains("pkcs11"),
        "{e}"
    );
    let e = load(
        &Flags::default(),
        &env(&[("KMS_AMNESIA", "1"), ("KMS_BACKEND", "tpm")]),
    )
    .unwrap_err();
    assert!(e.message.contains("conflicts with KMS_AMNESIA"), "{e}");
    let e = load(&am, &env(&[("KMS_STORE", "postgres://db/kms")])).unwrap_err();
    assert_eq!(e.field, "KMS_STORE");
    let e = load(&am, &env(&[("KMS_MASTER_KEY_FILE", "/k")])).unwrap_err();
    assert_eq!(e.field, "KMS_MASTER_KEY_FILE");
    let e = load(&Flags::default(), &env(&[("KMS_AMNESIA", "maybe")])).unwrap_err();
    assert_eq!(e.field, "KMS_AMNESIA");
}

#[test]
fn unknown_file_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "grpc_adress = \"127.0.0.1:1\"\n").unwrap();
    let e = load(
        &Flags {
            config: Some(f),
            ..Default::default()
        },
        &env(&[]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("grpc_adress"), "{e}");
}

#[test]
fn stores_and_node_ids() {
    let f = Flags::default();
    let c = load(&f, &env(&[])).unwrap();
    assert_eq!(c.store, StoreKind::Sqlite);
    assert!(super::store::valid_node_id(&c.node_id), "{}", c.node_id);
    let c = load(
        &f,
        &env(&[
            ("KMS_STORE", "postgres://kms:s3cret@db:5432/kms"),
            ("KMS_STORE_POOL_SIZE", "8"),
            ("KMS_STORE_RECONCILE_SECS", "30"),
            ("KMS_STORE_PASSWORD_FILE", "/run/secrets/pg"),
            ("KMS_STORE_CA_FILE", "/etc/pg-ca.pem"),
            ("KMS_NODE_ID", "kms-0"),
        ]),
    )
    .unwrap();
    let StoreKind::Postgres(pg) = &c.store else {
        panic!("{:?}", c.store)
    };
    assert_eq!((pg.pool_size, pg.reconcile_interval.as_secs()), (8, 30));
    assert_eq!(
        pg.password_file.as_deref(),
        Some(Path::new("/run/secrets/pg"))
    );
    assert_eq!(c.node_id, "kms-0");
    // the password never shows in Debug output
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("kms:***@db"), "{shown}");

    for (var, val) in [
        ("KMS_STORE", "mysql://db"),
        ("KMS_NODE_ID", "a b"),
        ("KMS_NODE_ID", ""),
    ] {
        let e = load(&f, &env(&[(var, val)])).unwrap_err();
        assert_eq!(e.field, var, "{e}");
    }
    // a refused URL is shown without its password
    let e = load(&f, &env(&[("KMS_STORE", "mysql://u:pw@db")])).unwrap_err();
    assert!(!e.message.contains("pw@"), "{e}");
    for (var, val) in [
        ("KMS_STORE_POOL_SIZE", "0"),
        ("KMS_STORE_RECONCILE_SECS", "0"),
    ] {
        let e = load(&f, &env(&[("KMS_STORE", "postgres://db/kms"), (var, val)])).unwrap_err();
        assert_eq!(e.field, var, "{e}");
    }
    // TPM-sealed keys cannot be shared between hosts
    let e = load(
        &f,
        &env(&[
            ("KMS_STORE", "postgres://db/kms"),
            ("KMS_BACKEND", "tpm"),
            ("KMS_TPM_TCTI", "swtpm:host=127.0.0.1,port=2321"),
        ]),
    )
    .unwrap_err();
    assert_eq!(e.field, "KMS_STORE");
    assert!(e.message.contains("TPM custody is per host"), "{e}");
}

#[test]
fn audit_sync_and_transit_mount() {
    use crate::audit::AuditSync;
    let c = load(&Flags::default(), &env(&[])).unwrap();
    assert_eq!(c.audit.sync, AuditSync::Fsync);
    assert_eq!(c.transit_mount, None);
    let c = load(
        &Flags::default(),
        &env(&[
            ("KMS_AUDIT_SYNC", "write"),
            ("KMS_AUDIT_SYNC_INTERVAL_MS", "250"),
            ("KMS_TRANSIT_MOUNT", "/transit/"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.audit.sync,
        AuditSync::Write {
            interval: std::time::Duration::from_millis(250)
        }
    );
    assert_eq!(c.transit_mount.as_deref(), Some("transit"));
    let c = load(&Flags::default(), &env(&[("KMS_AUDIT_SYNC", "write")])).unwrap();
    assert_eq!(
        c.audit.sync,
        AuditSync::Write {
            interval: crate::audit::DEFAULT_SYNC_INTERVAL
        }
    );
    for (k, v, says) in [
        ("KMS_AUDIT_SYNC", "fdatasync", "not fsync or write"),
        ("KMS_AUDIT_SYNC_INTERVAL_MS", "0", "1 to 60000"),
        ("KMS_TRANSIT_MOUNT", "kms", "native front"),
        ("KMS_TRANSIT_MOUNT", "Transit", "not a mount path"),
    ] {
        let e = load(&Flags::default(), &env(&[(k, v)])).unwrap_err();
        assert_eq!(e.field, k, "{e:?}");
        assert!(e.message.contains(says), "{k}={v}: {e:?}");
    }
}
