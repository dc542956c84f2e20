//! The store conformance suite: one battery of cases, run on the embedded
//! SQLite store and on PostgreSQL (a throw-away cluster, tests/common/pg.rs).
//! Each case gets a factory that opens *another* handle on the same
//! database, as a second process or replica would.
mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ron_kms::crypto::Algorithm;
use ron_kms::store::postgres::{PgSettings, PgStore};
use ron_kms::store::sqlite::SqliteStore;
use ron_kms::store::{Change, OpRecord, Store, StoreError, TokenRecord};
use ron_kms::store::{KeyRecord, KeySettings, VersionRecord, VersionState};

type Open = dyn Fn() -> Arc<dyn Store>;
type Case = (&'static str, fn(&Open));

fn version(v: u32) -> VersionRecord {
    VersionRecord {
        version: v,
        state: VersionState::Enabled,
        public_key: vec![v as u8; 32],
        handle: Some(vec![0xA0 | v as u8; 48]),
        created_at_ms: 1_700_000_000_000 + v as i64,
    }
}

fn key(tenant: &str, name: &str) -> KeyRecord {
    KeyRecord {
        tenant: tenant.into(),
        name: name.into(),
        algorithm: Algorithm::Ed25519,
        primary_version: 1,
        created_at_ms: 1_700_000_000_000,
        settings: KeySettings::default(),
        versions: vec![version(1)],
    }
}

fn op(tenant: &str, id: &str, result: &str) -> OpRecord {
    OpRecord {
        tenant: tenant.into(),
        op_id: id.into(),
        request_hash: [7; 32],
        result: result.into(),
    }
}

fn states(k: &KeyRecord) -> Vec<VersionState> {
    k.versions.iter().map(|v| v.state).collect()
}

/// Every case, in order, on fresh names (the database is shared by the
/// cases of one run).
fn suite(open: &Open) {
    let cases: &[Case] = &[
        ("round trip", round_trip),
        ("rotation is atomic with its op_id", rotation_atomic_with_op),
        ("names and versions are unique", uniqueness),
        ("missing things are NotFound", not_found),
        ("destroy wipes the handle", destroy_wipes),
        (
            "settings persist; delete removes a key",
            settings_and_delete,
        ),
        ("tokens and meta", tokens_and_meta),
        ("racing one op_id: exactly one applies", op_id_race),
        ("racing one rotation: exactly one version 2", rotation_race),
        ("reopening migrates nothing twice", reopen),
    ];
    for (name, case) in cases {
        let t = Instant::now();
        case(open);
        eprintln!("  ok  {name} ({} ms)", t.elapsed().as_millis());
    }
}

fn round_trip(open: &Open) {
    let s = open();
    let mut k = key("t1", "alpha");
    k.algorithm = Algorithm::MlDsa65;
    s.create_key(&k, Some(&op("t1", "c1", "alpha#v1"))).unwrap();
    s.add_version("t1", "alpha", &version(2), None).unwrap();
    s.set_state("t1", "alpha", 1, VersionState::Disabled, None)
        .unwrap();
    // read back through another handle
    let other = open();
    let got = other.load_key("t1", "alpha").unwrap().unwrap();
    assert_eq!(got.algorithm, Algorithm::MlDsa65);
    assert_eq!(got.primary_version, 2);
    assert_eq!(
        states(&got),
        [VersionState::Disabled, VersionState::Enabled]
    );
    assert_eq!(got.versions[1].public_key, version(2).public_key);
    assert_eq!(got.versions[1].handle, version(2).handle);
    assert_eq!(got.versions[1].created_at_ms, version(2).created_at_ms);
    let all = other.load_keys().unwrap();
    let listed = all
        .iter()
        .find(|r| r.tenant == "t1" && r.name == "alpha")
        .unwrap();
    assert_eq!(listed.versions.len(), 2);
    assert_eq!(states(listed), states(&got));
    assert_eq!(
        other.find_op("t1", "c1").unwrap(),
        Some(op("t1", "c1", "alpha#v1"))
    );
    // op ids are per tenant
    assert_eq!(other.find_op("t2", "c1").unwrap(), None);
    assert!(other.load_key("t2", "alpha").unwrap().is_none());
    other.health().unwrap();
}

fn rotation_atomic_with_op(open: &Open) {
    let s = open();
    s.create_key(&key("t1", "beta"), None).unwrap();
    s.add_version("t1", "beta", &version(2), Some(&op("t1", "r1", "beta#v2")))
        .unwrap();
    // the op_id is taken: the whole rotation rolls back
    let e = s
        .add_version("t1", "beta", &version(3), Some(&op("t1", "r1", "beta#v3")))
        .unwrap_err();
    assert!(matches!(e, StoreError::OpConflict(_)), "{e:?}");
    let k = open().load_key("t1", "beta").unwrap().unwrap();
    assert_eq!(k.versions.len(), 2);
    assert_eq!(k.primary_version, 2);
    // and so does a state change under a taken op_id
    let e = s
        .set_state(
            "t1",
            "beta",
            1,
            VersionState::Disabled,
            Some(&op("t1", "r1", "x")),
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::OpConflict(_)), "{e:?}");
    assert_eq!(
        states(&open().load_key("t1", "beta").unwrap().unwrap()),
        [VersionState::Enabled, VersionState::Enabled]
    );
}

fn uniqueness(open: &Open) {
    let s = open();
    s.create_key(&key("t1", "gamma"), None).unwrap();
    let e = open().create_key(&key("t1", "gamma"), None).unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists(_)), "{e:?}");
    // the same name in another tenant is another key
    open().create_key(&key("t2", "gamma"), None).unwrap();
    // a version number is used once
    s.add_version("t1", "gamma", &version(2), None).unwrap();
    let e = open()
        .add_version("t1", "gamma", &version(2), None)
        .unwrap_err();
    assert!(matches!(e, StoreError::VersionConflict(_)), "{e:?}");
    assert_eq!(
        open()
            .load_key("t1", "gamma")
            .unwrap()
            .unwrap()
            .versions
            .len(),
        2
    );
}

fn not_found(open: &Open) {
    let s = open();
    assert!(s.load_key("t1", "nope").unwrap().is_none());
    let e = s.add_version("t1", "nope", &version(2), None).unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    s.create_key(&key("t1", "delta"), None).unwrap();
    let e = s
        .set_state("t1", "delta", 9, VersionState::Disabled, None)
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    // a failed mutation leaves its op_id free
    let e = s
        .add_version("t1", "nope", &version(2), Some(&op("t1", "nf", "x")))
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    assert_eq!(s.find_op("t1", "nf").unwrap(), None);
}

fn destroy_wipes(open: &Open) {
    let s = open();
    s.create_key(&key("t1", "eps"), None).unwrap();
    s.set_state("t1", "eps", 1, VersionState::Disabled, None)
        .unwrap();
    s.set_state("t1", "eps", 1, VersionState::Destroyed, None)
        .unwrap();
    let k = open().load_key("t1", "eps").unwrap().unwrap();
    assert_eq!(k.versions[0].state, VersionState::Destroyed);
    assert!(k.versions[0].handle.is_none());
    assert_eq!(k.versions[0].public_key, version(1).public_key);
}

fn settings_and_delete(open: &Open) {
    let s = open();
    s.create_key(&key("t1", "zeta"), None).unwrap();
    s.add_version("t1", "zeta", &version(2), None).unwrap();
    assert_eq!(
        open().load_key("t1", "zeta").unwrap().unwrap().settings,
        KeySettings::default()
    );
    let set = KeySettings {
        min_decryption_version: 2,
        min_encryption_version: 2,
        deletion_allowed: true,
        published: true,
    };
    // a write from a stale read is a conflict, and changes nothing
    let stale = KeySettings {
        deletion_allowed: true,
        ..KeySettings::default()
    };
    let e = s
        .set_settings("t1", "zeta", &stale, &set, None)
        .unwrap_err();
    assert!(matches!(e, StoreError::VersionConflict(_)), "{e:?}");
    s.set_settings(
        "t1",
        "zeta",
        &KeySettings::default(),
        &set,
        Some(&op("t1", "cfg", "zeta")),
    )
    .unwrap();
    let k = open().load_key("t1", "zeta").unwrap().unwrap();
    assert_eq!(k.settings, set);
    assert_eq!(k.versions.len(), 2);
    assert!(open()
        .load_keys()
        .unwrap()
        .iter()
        .any(|k| k.name == "zeta" && k.settings == set));
    // the op_id is recorded with the write, so a retry finds it
    assert_eq!(s.find_op("t1", "cfg").unwrap().unwrap().result, "zeta");
    let e = s.set_settings("t1", "nope", &set, &set, None).unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    // another tenant's key of the same name is another key
    s.create_key(&key("t2", "zeta"), None).unwrap();
    // a version added since custody was emptied: a conflict, nothing gone
    let e = s.delete_key("t1", "zeta", 1, None).unwrap_err();
    assert!(matches!(e, StoreError::VersionConflict(_)), "{e:?}");
    assert!(open().load_key("t1", "zeta").unwrap().is_some());
    // a key that does not allow deletion: a conflict too
    let e = s.delete_key("t2", "zeta", 1, None).unwrap_err();
    assert!(matches!(e, StoreError::VersionConflict(_)), "{e:?}");
    s.delete_key("t1", "zeta", 2, None).unwrap();
    assert!(open().load_key("t1", "zeta").unwrap().is_none());
    assert!(open().load_key("t2", "zeta").unwrap().is_some());
    let e = s.delete_key("t1", "zeta", 2, None).unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    // the name can be made again, from version 1 with default settings
    s.create_key(&key("t1", "zeta"), None).unwrap();
    let k = open().load_key("t1", "zeta").unwrap().unwrap();
    assert_eq!((k.versions.len(), k.settings), (1, KeySettings::default()));
}

fn tokens_and_meta(open: &Open) {
    let s = open();
    let g0 = s.token_generation().unwrap();
    let t = TokenRecord {
        id: "5a5a5a5a5a5a5a5a".into(),
        hash: [0x5A; 32],
        tenant: "t1".into(),
        scopes: "kms:sign,kms:verify".into(),
        key_patterns: "payments-*".into(),
        expires_at_ms: Some(99),
        description: "ci".into(),
        created_by: "token:0123".into(),
        created_at_ms: 5,
        last_used_ms: None,
        revoked_at_ms: None,
    };
    s.insert_token(&t).unwrap();
    let g1 = s.token_generation().unwrap();
    assert_ne!(g0, g1, "a token write moves the generation");
    let got = open().load_tokens().unwrap();
    let row = got.iter().find(|r| r.hash == t.hash).unwrap();
    assert_eq!(row, &t, "every field round-trips");
    assert!(s.insert_token(&t).is_err(), "a token hash is stored once");
    let same_id = TokenRecord {
        hash: [0x5B; 32],
        ..t.clone()
    };
    assert!(
        s.insert_token(&same_id).is_err(),
        "a token id is stored once"
    );
    // last-used is coarse and announces nothing
    s.touch_tokens(&[(t.id.clone(), 50)]).unwrap();
    s.touch_tokens(&[(t.id.clone(), 40)]).unwrap();
    assert_eq!(s.token_generation().unwrap(), g1);
    let row = open()
        .load_tokens()
        .unwrap()
        .into_iter()
        .find(|r| r.id == t.id)
        .unwrap();
    assert_eq!(row.last_used_ms, Some(50), "never moves back");
    // revocation: only in the token's tenant; the first time is kept
    assert!(matches!(
        s.revoke_token("other", &t.id, 60),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        s.revoke_token("t1", &t.id, 60).unwrap().revoked_at_ms,
        Some(60)
    );
    assert_ne!(s.token_generation().unwrap(), g1);
    assert_eq!(
        s.revoke_token("t1", &t.id, 70).unwrap().revoked_at_ms,
        Some(60)
    );
    // an expiry is claimed once
    assert!(s.claim_token_expiry(&t.id).unwrap());
    assert!(!open().claim_token_expiry(&t.id).unwrap());
    // the bootstrap token is created once, whoever asks
    let boot = |b: u8| TokenRecord {
        id: format!("b{b:015x}"),
        hash: [b; 32],
        tenant: "admin".into(),
        scopes: "kms:admin".into(),
        ..TokenRecord::default()
    };
    assert!(s.insert_bootstrap_token(&boot(0xB1)).unwrap());
    assert!(!open().insert_bootstrap_token(&boot(0xB2)).unwrap());
    let n = open()
        .load_tokens()
        .unwrap()
        .iter()
        .filter(|r| r.tenant == "admin")
        .count();
    assert_eq!(n, 1);

    s.put_meta("pq_policy/a", b"1").unwrap();
    s.put_meta("pq_policy/b", b"2").unwrap();
    s.put_meta("pq_policy/a", b"3").unwrap();
    s.put_meta("other", b"x").unwrap();
    let o = open();
    assert_eq!(
        o.get_meta("pq_policy/a").unwrap().as_deref(),
        Some(&b"3"[..])
    );
    assert_eq!(o.get_meta("missing").unwrap(), None);
    assert_eq!(
        o.list_meta("pq_policy/").unwrap(),
        vec![
            ("pq_policy/a".to_string(), b"3".to_vec()),
            ("pq_policy/b".to_string(), b"2".to_vec())
        ]
    );
    // insert_meta: the first value stays
    assert_eq!(s.insert_meta("first", b"one").unwrap(), b"one");
    assert_eq!(o.insert_meta("first", b"two").unwrap(), b"one");
}

/// Run `f(i)` on `n` threads released together; their results in order.
fn race<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let gate = Barrier::new(n);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let (gate, f) = (&gate, &f);
                s.spawn(move || {
                    gate.wait();
                    f(i)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn op_id_race(open: &Open) {
    for round in 0..20 {
        let handles: Vec<_> = (0..4).map(|_| open()).collect();
        let name = format!("race{round}");
        let results = race(4, |i| {
            // four replicas creating one key under one op_id, each with its
            // own (differently generated) material
            let mut k = key("t1", &name);
            k.versions[0].public_key = vec![i as u8; 32];
            handles[i].create_key(&k, Some(&op("t1", &format!("op-{name}"), &name)))
        });
        let ok: Vec<_> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_ok())
            .collect();
        assert_eq!(ok.len(), 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, StoreError::OpConflict(_) | StoreError::AlreadyExists(_)),
                    "round {round}: {e:?}"
                );
            }
        }
        let winner = ok[0].0;
        let k = open().load_key("t1", &name).unwrap().unwrap();
        assert_eq!(k.versions[0].public_key, vec![winner as u8; 32]);
    }
}

fn rotation_race(open: &Open) {
    for round in 0..20 {
        let name = format!("rot{round}");
        open().create_key(&key("t1", &name), None).unwrap();
        let handles: Vec<_> = (0..3).map(|_| open()).collect();
        let results = race(3, |i| {
            let mut v = version(2);
            v.public_key = vec![0x40 + i as u8; 32];
            handles[i].add_version("t1", &name, &v, None)
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {round}: {results:?}");
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(matches!(r, StoreError::VersionConflict(_)), "{r:?}");
        }
        let k = open().load_key("t1", &name).unwrap().unwrap();
        assert_eq!((k.versions.len(), k.primary_version), (2, 2));
    }
}

fn reopen(open: &Open) {
    let before = open().load_keys().unwrap().len();
    let again = open();
    again.health().unwrap();
    assert_eq!(again.load_keys().unwrap().len(), before);
}

#[test]
fn conformance_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.sqlite3");
    let open = move || Arc::new(SqliteStore::open(&path).unwrap()) as Arc<dyn Store>;
    suite(&open);
}

#[test]
fn conformance_on_postgres() {
    let pg = common::pg::Pg::start();
    let url = pg.fresh_db("conformance");
    let open = move || {
        Arc::new(PgStore::open(&url, None, PgSettings::default()).unwrap()) as Arc<dyn Store>
    };
    suite(&open);
    drop(pg);
}

/// TLS to PostgreSQL (`KMS_STORE_CA_FILE`): against a server that accepts
/// TCP over TLS only, the store works with the CA, and is refused without
/// TLS, and with a CA the server's certificate does not chain to.
#[test]
fn postgres_over_tls() {
    let pki = common::certs::Pki::new();
    let pg = common::pg::Pg::start_tls(&pki);
    let db = pg.fresh_db("tls");
    let tls = |ca: &std::path::Path| PgSettings {
        tls: Some(Arc::new(ron_kms::ingress::tls::client_config(ca).unwrap())),
        ..Default::default()
    };
    // the certificate names localhost; connect by that name
    let url = db.replace("127.0.0.1", "localhost");
    let s = PgStore::open(&url, None, tls(&pki.ca_file)).unwrap();
    s.create_key(&key("t1", "over-tls"), None).unwrap();
    assert!(s.load_key("t1", "over-tls").unwrap().is_some());
    // the server is hostssl-only: plain text is refused
    let e = PgStore::open(&url, None, PgSettings::default())
        .err()
        .expect("plain text refused");
    assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
    // another CA: the server's certificate does not verify
    let other = common::certs::Pki::new();
    let e = PgStore::open(&url, None, tls(&other.ca_file))
        .err()
        .expect("untrusted server certificate refused");
    assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
}

/// PostgreSQL only: the change feed delivers every committed mutation to
/// another handle's subscriber, and a newer schema than the binary's is
/// refused.
#[test]
fn postgres_change_feed_and_schema_guard() {
    let pg = common::pg::Pg::start();
    let url = pg.fresh_db("feed");
    let settings = PgSettings {
        reconcile_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let a = PgStore::open(&url, None, settings.clone()).unwrap();
    let b = PgStore::open(&url, None, settings).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    b.subscribe(Arc::new(move |c| {
        let _ = tx.lock().unwrap().send(c);
    }))
    .unwrap();
    std::thread::sleep(Duration::from_millis(300)); // the listener connects
    a.create_key(&key("t9", "fed"), None).unwrap();
    a.add_version("t9", "fed", &version(2), None).unwrap();
    a.set_state("t9", "fed", 1, VersionState::Disabled, None)
        .unwrap();
    a.insert_token(&TokenRecord {
        id: "0101010101010101".into(),
        hash: [1; 32],
        tenant: "t9".into(),
        scopes: "kms:read".into(),
        ..TokenRecord::default()
    })
    .unwrap();
    a.put_meta("pq_policy/t9", b"{}").unwrap();
    // a failed mutation announces nothing
    assert!(a.create_key(&key("t9", "fed"), None).is_err());
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < 6 && Instant::now() < deadline {
        if let Ok(c) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(c);
        }
    }
    assert_eq!(
        got,
        vec![
            // once the LISTEN takes effect: whatever changed before it
            Change::Resync,
            Change::key("t9", "fed"),
            Change::key("t9", "fed"),
            Change::key("t9", "fed"),
            Change::Tokens,
            Change::Meta {
                key: "pq_policy/t9".into(),
            },
        ]
    );
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());

    // a schema from a newer binary is refused, not written over
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    c.execute(
        "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (99, 0)",
        &[],
    )
    .unwrap();
    let e = PgStore::open(&url, None, PgSettings::default())
        .err()
        .expect("newer schema refused");
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    assert!(e.to_string().contains("newer"), "{e}");
}
