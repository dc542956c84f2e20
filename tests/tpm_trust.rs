//! What the TPM custody can be fooled by, on real swtpms (issue 30): the
//! TPM's identity is pinned at first start and another TPM is refused; the
//! interface to the TPM carries no data key or private key in the clear;
//! only the pinned attestation key makes quotes that verify; an EK
//! certificate must chain to the configured CA; a key blob copied into
//! another key's row is refused before the TPM sees it.
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use common::{Front, TestServer};
use ron_kms::backend::tpm::{ak_template, srk_template, Identity};
use ron_kms::backend::KeyLabel;
use ron_kms::crypto::Algorithm;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Data, PcrSelectionListBuilder, PcrSlot, SignatureScheme};
use tss_esapi::traits::Marshall;
use tss_esapi::{Context, TctiNameConf};

const MSG: &[u8] = b"who signs this?";

/// A TCP tap in front of a swtpm: the TCTI's command channel (port P) and
/// control channel (P + 1) are forwarded, and every byte of the command
/// channel is kept, each direction in its own buffer.
struct Tap {
    port: u16,
    to_tpm: Seen,
    from_tpm: Seen,
}

/// What crossed one direction of the tap.
type Seen = Arc<Mutex<Vec<u8>>>;

fn pipe(mut from: TcpStream, mut to: TcpStream, seen: Option<Seen>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(s) = &seen {
                        s.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn forward(l: TcpListener, to: u16, seen: Option<(Seen, Seen)>) {
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { break };
            let up = TcpStream::connect(("127.0.0.1", to)).unwrap();
            let (a, b) = match &seen {
                Some((t, f)) => (Some(t.clone()), Some(f.clone())),
                None => (None, None),
            };
            pipe(c.try_clone().unwrap(), up.try_clone().unwrap(), a);
            pipe(up, c, b);
        }
    });
}

impl Tap {
    fn new(tpm: &common::swtpm::Swtpm) -> Tap {
        let (cmd, ctrl) = loop {
            let a = TcpListener::bind("127.0.0.1:0").unwrap();
            let p = a.local_addr().unwrap().port();
            if p < u16::MAX {
                if let Ok(b) = TcpListener::bind(("127.0.0.1", p + 1)) {
                    break (a, b);
                }
            }
        };
        let port = cmd.local_addr().unwrap().port();
        let to_tpm = Arc::new(Mutex::new(Vec::new()));
        let from_tpm = Arc::new(Mutex::new(Vec::new()));
        forward(cmd, tpm.port, Some((to_tpm.clone(), from_tpm.clone())));
        forward(ctrl, tpm.ctrl_port, None);
        Tap {
            port,
            to_tpm,
            from_tpm,
        }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Whether `needle` crossed the tap, in either direction.
    fn saw(&self, needle: &[u8]) -> bool {
        [&self.to_tpm, &self.from_tpm]
            .iter()
            .any(|b| b.lock().unwrap().windows(needle.len()).any(|w| w == needle))
    }

    fn bytes(&self) -> usize {
        self.to_tpm.lock().unwrap().len() + self.from_tpm.lock().unwrap().len()
    }
}

/// The SRK from ron-kms's template, in the test's own context.
fn srk(ctx: &mut Context) -> tss_esapi::handles::KeyHandle {
    ctx.create_primary(
        Hierarchy::Owner,
        srk_template().unwrap(),
        None,
        None,
        None,
        None,
    )
    .unwrap()
    .key_handle
}

/// A context of the test's own on `tcti`, with password sessions.
fn context(tcti: &str) -> Context {
    let mut ctx = Context::new(TctiNameConf::from_str(tcti).unwrap()).unwrap();
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tpm_is_refused_at_start_and_the_pinned_one_is_not() {
    let mut srv = TestServer::start_tpm_with(|_, _| {}).await;
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    c.create("k", "ecdsa-p256").await.unwrap();
    c.sign("k", MSG).await.unwrap();
    drop(c);
    srv.stop().await;

    // the same data dir on a different (fresh) swtpm
    let dir = tempfile::tempdir().unwrap();
    let other = common::swtpm::Swtpm::start(&dir.path().join("other"));
    let mut cfg = common::config(&srv.data_dir());
    cfg.backend = other.backend();
    let e = match ron_kms::server::start(&cfg).await {
        Ok(_) => panic!("a different TPM must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("TPM mismatch") && e.contains("endorsement key") && e.contains("KMS_TPM_TCTI"),
        "{e}"
    );
    drop(other);

    // the pinned TPM passes, and its key signs
    srv.restart().await;
    let mut c = srv.client(Front::Http, &srv.admin_token).await;
    c.sign("k", MSG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tpm_interface_carries_no_data_key_and_no_private_key_in_the_clear() {
    let mut tap = None;
    let mut srv = TestServer::start_tpm_with(|cfg, tpm| {
        let t = Tap::new(tpm);
        cfg.backend = tpm.backend_with(|c| c.tcti = t.tcti());
        tap = Some(t);
    })
    .await;
    let tap = tap.unwrap();
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    let sealed = [
        ("aes", "aes-256-gcm"),
        ("ed", "ed25519"),
        ("mldsa", "ml-dsa-65"),
        ("mlkem", "ml-kem-768"),
    ];
    for (name, alg) in sealed {
        c.create(name, alg).await.unwrap();
    }
    c.create("p256", "ecdsa-p256").await.unwrap();
    let wrapped = c.wrap("aes", b"the data key", b"ctx").await.unwrap();
    assert_eq!(
        c.unwrap("aes", &wrapped.ciphertext, b"ctx")
            .await
            .unwrap()
            .plaintext,
        b"the data key"
    );
    for k in ["ed", "mldsa", "p256"] {
        c.sign(k, MSG).await.unwrap();
    }
    let dk = c
        .datakey(ron_kms::proto::GenerateDataKeyRequest {
            key: "mlkem".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let opened = c.unwrap("mlkem", &dk.ciphertext, b"").await.unwrap();
    assert_eq!(opened.plaintext, dk.plaintext);
    drop(c);
    srv.stop().await;
    assert!(tap.bytes() > 10_000, "the tap saw the traffic");

    // What must not have crossed: each sealed key's data key and its
    // software private key, opened here through the TPM directly.
    let mut cfg = common::config(&srv.data_dir());
    cfg.backend = srv.tpm.as_ref().unwrap().backend();
    let opened = tokio::task::block_in_place(|| ron_kms::server::open_data_dir(&cfg)).unwrap();
    let tpm = opened.tpm.clone().unwrap();
    for (name, alg) in sealed {
        let handle = common::stored_handle(&srv.data_dir(), "admin", name, 1).unwrap();
        let kid = format!("{name}#v1");
        let label = KeyLabel {
            tenant: "admin",
            kid: &kid,
            algorithm: Algorithm::parse(alg).unwrap(),
        };
        let dek = tpm.data_key_for_tests(label, &handle).unwrap();
        assert_eq!(dek.len(), 32);
        assert!(!tap.saw(&dek), "{name}: the data key crossed in the clear");
        let private = tokio::task::block_in_place(|| {
            ron_kms::backend::soft::Sealer::unseal(&*tpm, label, &handle)
        })
        .unwrap();
        let public = common::stored_public(&srv.data_dir(), "admin", name, 1);
        for (off, w) in common::private_windows(&private, &public) {
            assert!(!tap.saw(w), "{name}: private key bytes at {off} crossed");
        }
        // the sealed object's public area is sent in the clear on every
        // TPM2_Load: the tap did see those commands
        let public_area = &handle[6..6 + u16::from_be_bytes([handle[4], handle[5]]) as usize];
        assert!(
            tap.saw(public_area),
            "{name}: its TPM2_Load went by the tap"
        );
    }
    drop(opened);

    // The control: the same tap sees an unseal's data in the clear when the
    // caller uses a password session and no parameter encryption.
    let secret: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let seen = tokio::task::block_in_place(|| {
        use tss_esapi::attributes::ObjectAttributesBuilder;
        use tss_esapi::interface_types::algorithm::PublicAlgorithm;
        use tss_esapi::structures::{
            Digest, KeyedHashScheme, PublicBuilder, PublicKeyedHashParameters, SensitiveData,
        };
        let mut ctx = context(&tap.tcti());
        let srk = srk(&mut ctx);
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_user_with_auth(true)
            .with_no_da(true)
            .build()
            .unwrap();
        let template = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default())
            .build()
            .unwrap();
        let data = SensitiveData::try_from(secret.clone()).unwrap();
        let created = ctx
            .create(srk, template, None, Some(data), None, None)
            .unwrap();
        let h = ctx
            .load(srk, created.out_private, created.out_public)
            .unwrap();
        ctx.unseal(h.into()).unwrap().value().to_vec()
    });
    assert_eq!(seen, secret);
    assert!(tap.saw(&secret), "without sessions the tap reads the data");
}

/// PCRs `slots` of the sha256 bank as a selection, and their values.
fn read_pcrs(
    ctx: &mut Context,
    slots: &[u32],
) -> (tss_esapi::structures::PcrSelectionList, Vec<Vec<u8>>) {
    let slots: Vec<PcrSlot> = slots
        .iter()
        .map(|i| PcrSlot::try_from(1u32 << i).unwrap())
        .collect();
    let sel = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .unwrap();
    let data = ctx
        .execute_without_session(|c| tss_esapi::abstraction::pcr::read_all(c, sel.clone()))
        .unwrap();
    let bank = data.pcr_bank(HashingAlgorithm::Sha256).unwrap();
    let values = slots
        .iter()
        .map(|s| bank.get_digest(*s).unwrap().value().to_vec())
        .collect();
    (sel, values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_pinned_attestation_key_makes_a_quote_that_verifies() {
    use ron_kms::backend::tpm::attest::verify_quote;
    let mut srv = TestServer::start_tpm_with(|_, _| {}).await;
    srv.stop().await;
    let mut cfg = common::config(&srv.data_dir());
    cfg.backend = srv.tpm.as_ref().unwrap().backend();
    let pinned: Identity = {
        let opened = tokio::task::block_in_place(|| ron_kms::server::open_data_dir(&cfg)).unwrap();
        let id = opened.tpm.as_ref().unwrap().identity().clone();
        id
    };
    let tcti = srv.tpm.as_ref().unwrap().tcti();
    tokio::task::block_in_place(|| {
        let mut ctx = context(&tcti);
        let (sel, pcrs) = read_pcrs(&mut ctx, &[0, 1, 2, 3, 4, 5, 6, 7]);
        let nonce = [7u8; 32];
        let quote = |ctx: &mut Context, ak| {
            let (attest, sig) = ctx
                .quote(
                    ak,
                    Data::try_from(nonce.to_vec()).unwrap(),
                    SignatureScheme::Null,
                    sel.clone(),
                )
                .unwrap();
            (attest.marshall().unwrap(), sig.marshall().unwrap())
        };
        let unmeasured = ring::digest::digest(&ring::digest::SHA256, &[0u8; 32 * 8]);

        // the pinned AK: the endorsement primary from ak_template()
        let ak = ctx
            .create_primary(
                Hierarchy::Endorsement,
                ak_template().unwrap(),
                None,
                None,
                None,
                None,
            )
            .unwrap();
        assert_eq!(ak.out_public.marshall().unwrap(), pinned.ak, "the same AK");
        let (attest, sig) = quote(&mut ctx, ak.key_handle);
        let ok = verify_quote(
            &pinned.ak,
            &attest,
            &sig,
            &nonce,
            &pcrs,
            Some(unmeasured.as_ref()),
        );
        assert!(ok.is_ok(), "{ok:?}");
        // a stale nonce, a wrong PCR digest
        assert!(verify_quote(&pinned.ak, &attest, &sig, &[8u8; 32], &pcrs, None).is_err());
        assert!(verify_quote(&pinned.ak, &attest, &sig, &nonce, &pcrs, Some(&[0u8; 32])).is_err());
        ctx.flush_context(ak.key_handle.into()).unwrap();

        // a fresh AK of the same TPM, same template, under the SRK: a
        // correct quote, by a key nobody pinned
        let srk = srk(&mut ctx);
        let fresh = ctx
            .create(srk, ak_template().unwrap(), None, None, None, None)
            .unwrap();
        let fresh = ctx.load(srk, fresh.out_private, fresh.out_public).unwrap();
        let (attest, sig) = quote(&mut ctx, fresh);
        let e = verify_quote(&pinned.ak, &attest, &sig, &nonce, &pcrs, None).unwrap_err();
        assert!(e.contains("pinned attestation key"), "{e}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_blob_copied_into_another_keys_row_is_refused() {
    let mut srv = TestServer::start_tpm_with(|_, _| {}).await;
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    for (name, alg) in [
        ("a", "ecdsa-p256"),
        ("b", "ecdsa-p256"),
        ("c", "ed25519"),
        ("d", "ed25519"),
    ] {
        c.create(name, alg).await.unwrap();
    }
    drop(c);
    srv.stop().await;
    let db = rusqlite::Connection::open(srv.data_dir().join("kms.sqlite3")).unwrap();
    for (from, to) in [("a", "b"), ("c", "d")] {
        let h = common::stored_handle(&srv.data_dir(), "admin", from, 1).unwrap();
        let n = db
            .execute(
                "UPDATE key_versions SET handle = ?1 WHERE tenant = 'admin' AND name = ?2 AND version = 1",
                rusqlite::params![h, to],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    drop(db);
    srv.restart().await;
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    for name in ["b", "d"] {
        let e = c.sign(name, MSG).await.unwrap_err();
        assert!(
            !e.message.contains("TPM2_") && !e.message.is_empty(),
            "{name}: refused by ron-kms, not by the TPM: {e:?}"
        );
    }
    for name in ["a", "c"] {
        c.sign(name, MSG).await.unwrap();
    }
    drop(c);
    srv.stop().await;
    // no wrong authValue reached the TPM: its dictionary-attack counter is 0
    let tcti = srv.tpm.as_ref().unwrap().tcti();
    let (failures, max_tries, interval) = tokio::task::block_in_place(|| {
        use tss_esapi::constants::PropertyTag;
        let mut ctx = context(&tcti);
        let mut p = |t| ctx.get_tpm_property(t).unwrap();
        (
            p(PropertyTag::LockoutCounter),
            p(PropertyTag::MaxAuthFail),
            p(PropertyTag::LockoutInterval),
        )
    });
    assert_eq!(failures, Some(0));
    // what docs/tpm.md says about swtpm's dictionary-attack lockout
    assert_eq!((max_tries, interval), (Some(3), Some(1000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ek_certificate_must_chain_to_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (tpm, own_ca) = tokio::task::block_in_place(|| {
        common::swtpm::Swtpm::start_certified(&dir.path().join("a"))
    });
    // another TPM's local CA: a different root and intermediate
    let (other, other_ca) = tokio::task::block_in_place(|| {
        common::swtpm::Swtpm::start_certified(&dir.path().join("b"))
    });
    drop(other);

    let start = |data: &str, ca: &std::path::Path| {
        let mut cfg = common::config(&dir.path().join(data));
        cfg.backend = tpm.backend_with(|t| t.ek_ca_file = Some(ca.to_path_buf()));
        cfg
    };
    // the certificate from another CA is refused, naming why
    let e = match ron_kms::server::start(&start("refused", &other_ca)).await {
        Ok(_) => panic!("an EK certificate from another CA must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("no endorsement-key certificate on this TPM verifies under KMS_TPM_EK_CA_FILE"),
        "{e}"
    );
    // only the root, without the intermediate that issued the EK's: refused
    let root_only = dir.path().join("root-only.pem");
    std::fs::copy(
        dir.path().join("a/ca/swtpm-localca-rootca-cert.pem"),
        &root_only,
    )
    .unwrap();
    assert!(ron_kms::server::start(&start("root-only", &root_only))
        .await
        .is_err());

    // its own CA: starts, and signs with a TPM key
    let running = ron_kms::server::start(&start("ok", &own_ca)).await.unwrap();
    let token = running.bootstrap_token.clone().unwrap();
    let kms = running.kms.clone();
    let caller = kms
        .authenticate(Some(&format!("Bearer {token}")), "test".into())
        .await
        .unwrap();
    kms.create_key(
        &caller,
        ron_kms::proto::CreateKeyRequest {
            name: "k".into(),
            algorithm: "ecdsa-p256".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    running.shutdown().await;
}

/// `swtpm_ioctl -h`: a DRTM-style measurement through swtpm's control
/// channel (resets PCR 17 and extends it with the data's hash), usable while
/// ron-kms holds the command channel.
fn measure(tpm: &common::swtpm::Swtpm, data: &str) {
    let out = std::process::Command::new("swtpm_ioctl")
        .arg("--tcp")
        .arg(format!("127.0.0.1:{}", tpm.ctrl_port))
        .arg("-h")
        .arg(data)
        .output()
        .expect("swtpm_ioctl runs (swtpm-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PCR 17 (sha256) of `tpm`, read with the test's own context.
fn pcr17(tpm: &common::swtpm::Swtpm) -> Vec<u8> {
    read_pcrs(&mut context(&tpm.tcti()), &[17]).1.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_sealed_to_pcrs_unseal_only_in_that_state_and_reseal_moves_them() {
    use ron_kms::backend::tpm::PcrSelection;
    let seal = |t: &mut ron_kms::config::TpmConfig| {
        t.seal_pcrs = Some(PcrSelection::parse("sha256:17").unwrap())
    };
    let mut srv = TestServer::start_tpm_with(|cfg, tpm| cfg.backend = tpm.backend_with(seal)).await;
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    c.create("ed", "ed25519").await.unwrap();
    c.create("p256", "ecdsa-p256").await.unwrap();
    c.sign("ed", MSG).await.unwrap();
    let h = common::stored_handle(&srv.data_dir(), "admin", "ed", 1).unwrap();
    assert!(h.starts_with(b"TPM\x05"), "sealed under a PCR policy");

    // the measured state changes under the running server
    measure(srv.tpm.as_ref().unwrap(), "an unexpected boot component");
    let e = c.sign("ed", MSG).await.unwrap_err();
    assert!(
        e.code == "attestation_missing" && e.message.contains("PCRs sha256:17"),
        "{e:?}"
    );
    // a TPM key has no PCR policy: it still signs
    c.sign("p256", MSG).await.unwrap();
    let http = srv.client(Front::Http, &srv.admin_token).await;
    let (status, body) = http.http_raw(reqwest::Method::GET, "/readyz", vec![]).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.to_string()
            .contains("PCRs sha256:17 are not in the state"),
        "{body}"
    );
    drop((c, http));
    srv.stop().await;

    // Recovery, as docs/tpm.md describes it: back in the sealed state (a
    // reboot: swtpm restarted), re-seal to the state the planned change
    // will give, then make the change.
    let planned = "the new boot component";
    let expected_pcr17 = tokio::task::block_in_place(|| {
        let d = tempfile::tempdir().unwrap();
        let scratch = common::swtpm::Swtpm::start(d.path());
        measure(&scratch, planned);
        pcr17(&scratch)
    });
    let target = ring::digest::digest(&ring::digest::SHA256, &expected_pcr17);
    tokio::task::block_in_place(|| srv.tpm.as_mut().unwrap().restart());
    let mut cfg = common::config(&srv.data_dir());
    cfg.backend = srv.tpm.as_ref().unwrap().backend_with(seal);
    let r = tokio::task::block_in_place(|| {
        ron_kms::server::reseal_tpm(&cfg, Some(target.as_ref().to_vec()))
    })
    .unwrap();
    assert!(r.keys >= 3, "the key and the audit log's two keys: {r:?}");
    measure(srv.tpm.as_ref().unwrap(), planned);
    assert_eq!(
        tokio::task::block_in_place(|| pcr17(srv.tpm.as_ref().unwrap())),
        expected_pcr17
    );

    let running = ron_kms::server::start(&cfg).await.unwrap();
    let mut c = common::Client::connect_to(
        Front::Http,
        &format!("http://{}", running.grpc_addr),
        &format!("http://{}", running.http_addr),
        &srv.admin_token,
    )
    .await;
    c.sign("ed", MSG).await.unwrap();
    let (status, body) = c.http_raw(reqwest::Method::GET, "/readyz", vec![]).await;
    assert_eq!(status, 200, "{body}");
    drop(c);
    running.shutdown().await;

    // re-sealing without KMS_TPM_SEAL_PCRS removes the policy and forgets
    // the target; turning it on again seals to the state then
    let mut plain = cfg.clone();
    plain.backend = srv.tpm.as_ref().unwrap().backend();
    let r = tokio::task::block_in_place(|| ron_kms::server::reseal_tpm(&plain, None)).unwrap();
    assert!(r.sealed_to.is_none());
    let h = common::stored_handle(&srv.data_dir(), "admin", "ed", 1).unwrap();
    assert!(h.starts_with(b"TPM\x04"), "no PCR policy");
    measure(srv.tpm.as_ref().unwrap(), "yet another state");
    let running = ron_kms::server::start(&cfg).await.unwrap();
    let c = common::Client::connect_to(
        Front::Http,
        &format!("http://{}", running.grpc_addr),
        &format!("http://{}", running.http_addr),
        &srv.admin_token,
    )
    .await;
    let (status, body) = c.http_raw(reqwest::Method::GET, "/readyz", vec![]).await;
    assert_eq!(status, 200, "sealed to the state at this start: {body}");
    drop(c);
    running.shutdown().await;
}
