//! The TPM backend on a real TPM 2.0 simulator (swtpm, one per test):
//! the device going away under a signing load and coming back, and the
//! bounded queue in front of it. The conformance suite (every algorithm)
//! runs on the TPM in `tests/algorithms.rs`; attestation is in
//! `tests/tpm_attestation.rs`.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{independent, ApiErr, Front, TestServer};
use tonic::Code;

const MSG: &[u8] = b"tpm says hello";

/// What one load worker saw.
#[derive(Default)]
struct Seen {
    ok: u64,
    /// (code, how long the failed call took)
    errors: Vec<(String, Duration)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swtpm_killed_mid_load_fails_fast_and_every_key_works_after_restart() {
    let mut srv = TestServer::start_tpm_with(|_, _| {}).await;
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    let native = c.create("native", "ecdsa-p256").await.unwrap();
    let sealed = c.create("sealed", "ed25519").await.unwrap();
    let pq = c.create("pq", "ml-dsa-65").await.unwrap();
    c.create("aes", "aes-256-gcm").await.unwrap();
    let wrapped = c.wrap("aes", b"data key", b"ctx").await.unwrap();
    let before = c.sign("native", MSG).await.unwrap().signature;
    // (a verify now puts the public key in the verify cache, which answers
    // while custody is marked down: docs/pq-policy.md)
    assert!(c.verify("native", MSG, &before).await.unwrap().valid);
    let reconnects_before = common::metric("backend_reconnects_total");

    // a signing load: four clients, native and sealed keys
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut workers = Vec::new();
    for i in 0..4 {
        let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
        let (stop, seen) = (stop.clone(), seen.clone());
        let key = if i % 2 == 0 { "native" } else { "sealed" };
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = c.sign(key, MSG).await;
                let took = t.elapsed();
                let mut s = seen.lock().unwrap();
                match r {
                    Ok(_) => s.ok += 1,
                    Err(e) => s.errors.push((e.code.clone(), took)),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ok_before_kill = seen.lock().unwrap().ok;
    assert!(ok_before_kill > 0, "the load signs while the TPM is up");

    // the TPM goes away for two seconds
    tokio::task::block_in_place(|| srv.tpm.as_mut().unwrap().kill());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok_while_down, errors_while_down) = {
        let s = seen.lock().unwrap();
        (s.ok, s.errors.len())
    };
    assert!(errors_while_down > 0, "calls fail while the TPM is away");
    // verification is software on the stored public key: the TPM's absence
    // does not touch it
    assert!(
        c.verify("native", MSG, &before).await.unwrap().valid,
        "verify works while the TPM is away"
    );

    // back, on the same state dir: the same seeds, so the same SRK
    tokio::task::block_in_place(|| srv.tpm.as_mut().unwrap().restart());
    let back = Instant::now();
    loop {
        if seen.lock().unwrap().ok > ok_while_down + 20 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "signing did not recover within 30 s of the TPM's restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered_after = back.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let s = std::mem::take(&mut *seen.lock().unwrap());
    // every failure was a fast, retryable "unavailable": no hang, no
    // other error (QUEUE_WAIT, the longest a call may wait, is 5 s)
    for (code, took) in &s.errors {
        assert_eq!(code, "unavailable", "errors while down: {:?}", s.errors);
        assert!(
            *took < Duration::from_secs(2),
            "a call took {took:?} to fail: not fast"
        );
    }
    let slowest = s.errors.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!(
        "swtpm kill/restart: {} ok before kill, {} failed while down (slowest failure {slowest:?}), \
         signing again {recovered_after:?} after restart",
        ok_before_kill,
        s.errors.len()
    );
    assert!(
        common::metric("backend_reconnects_total") > reconnects_before,
        "the backend reconnected"
    );

    // every key still works, checked independently; the wrapped secret opens
    for (name, alg, key) in [
        ("native", "ecdsa-p256", &native),
        ("sealed", "ed25519", &sealed),
        ("pq", "ml-dsa-65", &pq),
    ] {
        let sig = c.sign(name, MSG).await.unwrap().signature;
        assert!(
            independent::verify(alg, &key.versions[0].public_key_der, MSG, &sig),
            "{name} verifies independently after the restart"
        );
    }
    let opened = c.unwrap("aes", &wrapped.ciphertext, b"ctx").await.unwrap();
    assert_eq!(opened.plaintext, b"data key");
    // and ron-kms never restarted: same process, same server
    assert!(srv.running.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_sheds_load_as_overloaded_and_does_not_open_the_breaker() {
    let srv = TestServer::start_tpm_with(|cfg, tpm| {
        cfg.backend = tpm.backend_with(|t| t.queue_depth = 1);
        cfg.blocking_threads = 16;
    })
    .await;
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    c.create("k", "ecdsa-p256").await.unwrap();
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
        calls.push(tokio::spawn(async move {
            let mut out: Vec<Result<(), ApiErr>> = Vec::new();
            for _ in 0..16 {
                out.push(c.sign("k", MSG).await.map(|_| ()));
            }
            out
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    for call in calls {
        for r in call.await.unwrap() {
            match r {
                Ok(()) => ok += 1,
                Err(e) => {
                    e.expect(429, Code::ResourceExhausted, "overloaded");
                    shed += 1;
                }
            }
        }
    }
    eprintln!("queue depth 1, 8 clients x 16 signs: {ok} signed, {shed} shed");
    assert!(ok > 0, "some calls get the TPM");
    assert!(
        shed > 0,
        "with 16 blocking threads and a queue of 1, some are shed"
    );
    assert_eq!(
        srv.running().breaker.state(),
        ron_kms::backend::breaker::BreakerState::Closed,
        "shedding is not a device failure"
    );
}

/// The real binary, configured through the environment as an operator
/// would (`KMS_BACKEND=tpm`, `KMS_TPM_TCTI`): keys are created in the TPM
/// and survive a restart of ron-kms on the same data dir and TPM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_from_a_tpm_configured_by_env_and_keeps_keys_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = common::swtpm::Swtpm::start(&dir.path().join("tpm"));
    let data = dir.path().join("data");
    let tcti = tpm.tcti();
    let envs: Vec<(&str, &std::ffi::OsStr)> = vec![
        ("KMS_BACKEND", "tpm".as_ref()),
        ("KMS_TPM_TCTI", tcti.as_ref()),
    ];
    let args = ["--data-dir".as_ref(), data.as_os_str()];
    let served = tokio::task::block_in_place(|| common::process::serve_with(&args, &envs, None));
    let token = served.token.clone().unwrap();
    let mut c = common::Client::connect_to(
        Front::Http,
        &served.grpc,
        &format!("http://{}", served.http),
        &token,
    )
    .await;
    let key = c.create("k", "ecdsa-p256").await.unwrap();
    let first = c.sign("k", MSG).await.unwrap().signature;
    assert!(independent::verify(
        "ecdsa-p256",
        &key.versions[0].public_key_der,
        MSG,
        &first
    ));
    // the handle in the store is a TPM blob, not a software key
    drop(c);
    assert!(tokio::task::block_in_place(|| served.terminate()).success());
    let h = common::stored_handle(&data, "admin", "k", 1).unwrap();
    assert!(h.starts_with(b"TPM\x03"), "native TPM handle");

    let served = tokio::task::block_in_place(|| common::process::serve_with(&args, &envs, None));
    let mut c = common::Client::connect_to(
        Front::Grpc,
        &served.grpc,
        &format!("http://{}", served.http),
        &token,
    )
    .await;
    let again = c.sign("k", MSG).await.unwrap().signature;
    assert!(independent::verify(
        "ecdsa-p256",
        &key.versions[0].public_key_der,
        MSG,
        &again
    ));
    drop(c);
    drop(served);
}

/// No private key is on disk in the clear: not in the data dir, not in the
/// TPM's own state. Each sealed key is opened through the TPM (as the
/// service does, from a fresh start on the same data dir and TPM) and every
/// wholly private 16-byte window of it is searched for in both directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_private_key_in_the_clear_in_the_data_dir_or_the_tpm_state() {
    use ron_kms::backend::soft::Sealer;
    use ron_kms::backend::KeyLabel;
    use ron_kms::crypto::Algorithm;
    let mut srv = TestServer::start_tpm_with(|_, _| {}).await;
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    for alg in Algorithm::ALL {
        c.create(&format!("k-{}", alg.as_str()), alg.as_str())
            .await
            .unwrap();
    }
    drop(c);
    srv.stop().await;
    let tpm_state = srv.tpm.as_ref().unwrap().state.clone();
    let mut cfg = common::config(&srv.data_dir());
    cfg.backend = srv.tpm.as_ref().unwrap().backend();
    let opened = tokio::task::block_in_place(|| ron_kms::server::open_data_dir(&cfg)).unwrap();
    let tpm = opened.tpm.clone().unwrap();
    let on_disk = common::disk_windows(&[srv.data_dir(), tpm_state.clone()]);
    let mut sealed = 0;
    for alg in Algorithm::ALL {
        let name = format!("k-{}", alg.as_str());
        let handle = common::stored_handle(&srv.data_dir(), "admin", &name, 1).unwrap();
        if alg == Algorithm::EcdsaP256 {
            // its private part exists only inside the TPM-encrypted blob
            assert!(handle.starts_with(b"TPM\x03"), "{name} is TPM-native");
            continue;
        }
        assert!(handle.starts_with(b"TPM\x04"), "{name} is TPM-sealed");
        let kid = format!("{name}#v1");
        let private = tokio::task::block_in_place(|| {
            tpm.unseal(
                KeyLabel {
                    tenant: "admin",
                    kid: &kid,
                    algorithm: alg,
                },
                &handle,
            )
        })
        .unwrap();
        let public = common::stored_public(&srv.data_dir(), "admin", &name, 1);
        let mut windows = 0;
        for (off, w) in common::private_windows(&private, &public) {
            windows += 1;
            assert!(
                !on_disk.contains(w),
                "{name}: private key bytes at offset {off} in the clear"
            );
        }
        assert!(windows >= 16, "{name}: {windows} private windows checked");
        sealed += 1;
    }
    assert_eq!(sealed, Algorithm::ALL.len() - 1);
    drop(opened);
}
