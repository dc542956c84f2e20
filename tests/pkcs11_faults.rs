//! The token becomes unavailable mid-load, twice: once through the
//! fault-injecting backend wrapper, once for real (the token's directory
//! taken away from SoftHSM2, then put back). Each time: requests fail fast
//! with UNAVAILABLE, the circuit breaker opens, and after recovery the same
//! server signs again — no restart, no lost keys.
//!
//! One test in its own binary: a PKCS#11 module is initialised once per
//! process, and this server runs in-process so the test can reach its fault
//! switch and breaker.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::softhsm::SoftHsm;
use common::{independent, metric, Front, TestServer};
use ron_kms::backend::breaker::BreakerState;
use tonic::Code;

#[derive(Default)]
struct Tally {
    ok: u64,
    unavailable: u64,
    other: Vec<String>,
    /// the slowest refused request
    slowest_refusal: Duration,
}

/// Sign with `keys` round-robin from `workers` clients until `stop`.
async fn load(
    srv: &TestServer,
    keys: &[&str],
    workers: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = Vec::new();
    for w in 0..workers {
        let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
        let (stop, tally) = (stop.clone(), tally.clone());
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        handles.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[i % keys.len()];
                i += 1;
                let t = Instant::now();
                let r = c.sign(key, b"under load").await;
                let took = t.elapsed();
                {
                    let mut tl = tally.lock().unwrap();
                    match r {
                        Ok(_) => tl.ok += 1,
                        Err(e) if e.grpc == Some(Code::Unavailable) => {
                            tl.unavailable += 1;
                            tl.slowest_refusal = tl.slowest_refusal.max(took);
                        }
                        Err(e) => tl.other.push(format!("{e:?}")),
                    }
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    handles
}

fn snapshot(t: &Mutex<Tally>) -> (u64, u64) {
    let t = t.lock().unwrap();
    (t.ok, t.unavailable)
}

/// Wait until a sign succeeds again; returns how long that took.
async fn until_signing(c: &mut common::Client, key: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        if c.sign(key, b"probe").await.is_ok() {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "no recovery within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_outage_mid_load_fails_fast_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(&dir.path().join("hsm"), "ron-kms-faults");
    // the only test in this process: the module reads this when loaded
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let backend = hsm.backend(4);
    let srv = TestServer::start_with(move |c| {
        c.backend = backend;
        c.faults.injection = true;
    })
    .await;
    let r = srv.running();
    let faults = r.faults.clone().expect("fault injection on");
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    let keys = ["p256", "ed", "pq"];
    let mut publics = Vec::new();
    for (name, alg) in [
        ("p256", "ecdsa-p256"),
        ("ed", "ed25519"),
        ("pq", "ml-dsa-65"),
    ] {
        let k = c.create(name, alg).await.unwrap();
        publics.push((name, alg, k.versions[0].public_key_der.clone()));
    }

    for round in ["fault wrapper", "token directory taken away"] {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let workers = load(&srv, &keys, 4, stop.clone(), tally.clone()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (ok_before, _) = snapshot(&tally);
        assert!(
            ok_before > 0,
            "{round}: signing under load before the outage"
        );
        let reconnects_before = metric("backend_reconnects_total");

        // the outage
        let token_dir = hsm.token_dir();
        let away = hsm.tokens.with_file_name("token-away");
        if round == "fault wrapper" {
            faults.set_down(true);
        } else {
            std::fs::rename(&token_dir, &away).unwrap();
        }
        let t = Instant::now();
        while r.breaker.state() == BreakerState::Closed {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{round}: breaker never opened"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let opened_after = t.elapsed();
        assert_eq!(metric("backend_breaker_state"), 1.0, "{round}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (ok_mid, unavail_mid) = snapshot(&tally);
        assert!(unavail_mid > 0, "{round}: refusals during the outage");
        let e = c.sign("p256", b"m").await.unwrap_err();
        e.expect(503, Code::Unavailable, "unavailable");

        // recovery
        if round == "fault wrapper" {
            faults.set_down(false);
        } else {
            std::fs::rename(&away, &token_dir).unwrap();
        }
        let recovered_in = until_signing(&mut c, "p256", Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }
        let t = tally.lock().unwrap();
        assert!(
            t.other.is_empty(),
            "{round}: unexpected errors {:?}",
            t.other
        );
        assert!(t.ok > ok_mid, "{round}: signing resumed under load");
        // fail fast: no refused request waited on the device
        assert!(
            t.slowest_refusal < Duration::from_secs(2),
            "{round}: a refusal took {:?}",
            t.slowest_refusal
        );
        assert_eq!(r.breaker.state(), BreakerState::Closed, "{round}");
        assert_eq!(metric("backend_breaker_state"), 0.0, "{round}");
        let reconnects = metric("backend_reconnects_total") - reconnects_before;
        if round != "fault wrapper" {
            assert!(reconnects >= 1.0, "{round}: the module was re-initialised");
        }
        eprintln!(
            "{round}: breaker open after {opened_after:?}; ok {} / unavailable {} \
             (slowest refusal {:?}); signing again {recovered_in:?} after recovery; \
             reconnects {reconnects}",
            t.ok, t.unavailable, t.slowest_refusal
        );
    }

    // no lost keys: every key signs, and verifies independently
    for (name, alg, spki) in publics {
        let s = c.sign(name, b"after the outages").await.unwrap();
        assert!(
            independent::verify(alg, &spki, b"after the outages", &s.signature),
            "{name} verifies"
        );
    }
}
