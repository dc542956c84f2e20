//! The verify cache (docs/pq-policy.md): a steady verify load is served from
//! the cache; disable invalidates in the same call; while custody is down
//! (fault injection) verify answers from the cache within the TTL, carrying
//! the cache age, and refuses after it, while sign fails with UNAVAILABLE.
mod common;

use std::time::Duration;

use common::{metric, Front, TestServer, FRONTS};
use tonic::Code;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cache_counts() -> (f64, f64, f64) {
    (
        metric("verify_cache_hit_total"),
        metric("verify_cache_miss_total"),
        metric("verify_cache_stale_total"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_hits_the_cache_and_disable_invalidates_at_once() {
    let _g = SERIAL.lock().await;
    let srv = TestServer::start().await;
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    let mut sigs = Vec::new();
    for (k, alg) in [
        ("e", "ed25519"),
        ("m", "ml-dsa-65"),
        ("h", "hybrid-ed25519-ml-dsa-65"),
    ] {
        c.create(k, alg).await.unwrap();
        sigs.push((k, c.sign(k, b"m").await.unwrap().signature));
    }
    let (h0, m0, s0) = cache_counts();
    let n = 1000;
    for i in 0..n {
        let (k, sig) = &sigs[i % sigs.len()];
        assert!(c.verify(k, b"m", sig).await.unwrap().valid);
    }
    let (h1, m1, s1) = cache_counts();
    let (hits, misses, stale) = (h1 - h0, m1 - m0, s1 - s0);
    assert_eq!(
        hits + misses + stale,
        n as f64,
        "every verify looks in the cache once"
    );
    let ratio = hits / n as f64;
    eprintln!("verify cache: {hits} hits, {misses} misses, {stale} stale of {n}: {ratio:.4}");
    assert!(ratio >= 0.99, "hit ratio {ratio}");
    assert!(misses <= 3.0, "one miss per key at most: {misses}");

    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let k = format!("d-{front:?}").to_lowercase();
        c.create(&k, "ed25519").await.unwrap();
        let s = c.sign(&k, b"m").await.unwrap().signature;
        assert!(c.verify(&format!("{k}#v1"), b"m", &s).await.unwrap().valid);
        c.set_state(&k, 1, "disabled").await.unwrap();
        c.verify(&format!("{k}#v1"), b"m", &s)
            .await
            .unwrap_err()
            .expect(409, Code::FailedPrecondition, "key_version_not_enabled");
        // re-enabled: verified again, from a fresh cache entry
        let (_, m_before, _) = cache_counts();
        c.set_state(&k, 1, "enabled").await.unwrap();
        assert!(c.verify(&format!("{k}#v1"), b"m", &s).await.unwrap().valid);
        assert_eq!(
            cache_counts().1,
            m_before + 1.0,
            "disable dropped the entry"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_custody_outage_verify_uses_the_cache_within_its_ttl() {
    let _g = SERIAL.lock().await;
    const TTL_MS: u64 = 1500;
    let srv = TestServer::start_with(|c| {
        c.faults.injection = true;
        c.verify_cache.ttl_ms = TTL_MS;
    })
    .await;
    let faults = srv.running().faults.clone().expect("fault injection on");
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let k = format!("k-{front:?}").to_lowercase();
        let cold = format!("cold-{front:?}").to_lowercase();
        c.create(&k, "ed25519").await.unwrap();
        c.create(&cold, "ed25519").await.unwrap();
        let s = c.sign(&k, b"m").await.unwrap().signature;
        let s_cold = c.sign(&cold, b"m").await.unwrap().signature;
        let v = c.verify(&k, b"m", &s).await.unwrap();
        assert!(v.valid);
        assert_eq!(v.cache_age_ms, 0, "custody up: no cache age reported");

        faults.set_down(true);
        c.sign(&k, b"m")
            .await
            .unwrap_err()
            .expect(503, Code::Unavailable, "unavailable");
        // within the TTL: answered from the cache, with its age
        let v = c.verify(&k, b"m", &s).await.unwrap();
        assert!(v.valid);
        assert!(
            v.cache_age_ms > 0 && v.cache_age_ms <= TTL_MS,
            "{}",
            v.cache_age_ms
        );
        assert!(!c.verify(&k, b"other", &s).await.unwrap().valid);
        // a key not in the cache cannot be served
        c.verify(&cold, b"m", &s_cold).await.unwrap_err().expect(
            503,
            Code::Unavailable,
            "unavailable",
        );
        // past the TTL: refused
        tokio::time::sleep(Duration::from_millis(TTL_MS + 200)).await;
        let stale_before = metric("verify_cache_stale_total");
        c.verify(&k, b"m", &s)
            .await
            .unwrap_err()
            .expect(503, Code::Unavailable, "unavailable");
        assert_eq!(metric("verify_cache_stale_total"), stale_before + 1.0);

        // custody back: verify and sign work again
        faults.set_down(false);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(c.verify(&k, b"m", &s).await.unwrap().valid);
        assert!(c.verify(&cold, b"m", &s_cold).await.unwrap().valid);
        c.sign(&k, b"m").await.unwrap();
    }
}

/// `KMS_FAILOVER=verify-only`: while custody is down, verify answers from
/// the public key in the snapshot (a key never verified before, and past
/// the cache TTL), wrong signatures are still false, and sign, unwrap and
/// data keys fail fast with UNAVAILABLE and retry advice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_only_failover_verifies_from_public_material() {
    let _g = SERIAL.lock().await;
    const TTL_MS: u64 = 300;
    let srv = TestServer::start_with(|c| {
        c.faults.injection = true;
        c.verify_cache.ttl_ms = TTL_MS;
        c.failover = ron_kms::config::Failover::VerifyOnly;
    })
    .await;
    let faults = srv.running().faults.clone().expect("fault injection on");
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let name = |p: &str| format!("{p}-{front:?}").to_lowercase();
        let mut sigs = Vec::new();
        for (k, alg) in [
            ("ed", "ed25519"),
            ("mldsa", "ml-dsa-65"),
            ("hyb", "hybrid-ed25519-ml-dsa-65"),
        ] {
            c.create(&name(k), alg).await.unwrap();
            sigs.push((name(k), c.sign(&name(k), b"m").await.unwrap().signature));
        }
        c.create(&name("wrap"), "ml-kem-768").await.unwrap();
        let wrapped = c.wrap(&name("wrap"), b"secret", b"").await.unwrap();

        faults.set_down(true);
        // longer than the TTL: the cache alone could not answer
        tokio::time::sleep(Duration::from_millis(TTL_MS + 100)).await;
        let before = metric("kms_failover_verify_total");
        for (k, s) in &sigs {
            assert!(c.verify(k, b"m", s).await.unwrap().valid, "{k}");
            assert!(!c.verify(k, b"forged", s).await.unwrap().valid, "{k}");
        }
        assert!(metric("kms_failover_verify_total") >= before + 1.0);
        let t = std::time::Instant::now();
        let e = c.sign(&name("ed"), b"m").await.unwrap_err();
        e.expect(503, Code::Unavailable, "unavailable");
        assert!(e.retry_after_ms.is_some(), "{e:?}");
        let e = c
            .unwrap(&name("wrap"), &wrapped.ciphertext, b"")
            .await
            .unwrap_err();
        e.expect(503, Code::Unavailable, "unavailable");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "sign and unwrap fail fast: {:?}",
            t.elapsed()
        );

        faults.set_down(false);
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.sign(&name("ed"), b"m").await.unwrap();
    }
}
