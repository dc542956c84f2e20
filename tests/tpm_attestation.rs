//! TPM attestation on swtpm: a quote over PCRs 0–7 (sha256), verified in
//! software against an expected PCR digest. With
//! `KMS_ATTESTATION_REQUIRED=true`, private-key operations are refused
//! (FAILED_PRECONDITION / 403 `attestation_missing`) while the quote does
//! not verify, and allowed when it does; re-attestation runs on the
//! interval and follows the device.
//!
//! One test function: `attestation_ready` is a process-wide gauge.
mod common;

use std::time::{Duration, Instant};

use common::{independent, Front, TestServer, FRONTS};
use tonic::Code;

/// What PCRs 0–7 of the sha256 bank hash to on a TPM that measured nothing
/// (swtpm after `startup-clear`: every PCR 0–15 is 32 zero bytes), computed
/// here from the TPM 2.0 spec's definition of a quote's `pcrDigest`: the
/// quote key's hash over the selected PCR values, concatenated in order.
fn digest_of_unmeasured_pcrs_0_to_7() -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, &[0u8; 32 * 8])
        .as_ref()
        .to_vec()
}

async fn readyz(srv: &TestServer) -> (u16, serde_json::Value) {
    let c = srv.client(Front::Http, &srv.admin_token).await;
    c.http_raw(reqwest::Method::GET, "/readyz", vec![]).await
}

/// Poll `f` every 100 ms until it holds, for at most 15 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let t = Instant::now();
    while !f().await {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{what}: not within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_needs_a_verified_quote_when_attestation_is_required() {
    // 1. The expected PCR policy is wrong: the quote verifies as a quote,
    //    but its PCR digest is not the expected one.
    let wrong = ring::digest::digest(&ring::digest::SHA256, b"some other boot")
        .as_ref()
        .to_vec();
    let srv = TestServer::start_tpm_with(|cfg, tpm| {
        cfg.backend = tpm.backend_with(|t| {
            t.attestation_required = true;
            t.attestation.expected_digest = Some(wrong);
        });
    })
    .await;
    assert_eq!(common::metric("attestation_ready"), 0.0);
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let f = format!("{front:?}").to_lowercase();
        let name = format!("k-{f}");
        // key management needs no private-key operation
        let key = c.create(&name, "ecdsa-p256").await.unwrap();
        c.sign(&name, b"m").await.unwrap_err().expect(
            403,
            Code::FailedPrecondition,
            "attestation_missing",
        );
        c.create(&format!("w-{f}"), "aes-256-gcm").await.unwrap();
        c.wrap(&format!("w-{f}"), b"secret", b"")
            .await
            .unwrap_err()
            .expect(403, Code::FailedPrecondition, "attestation_missing");
        assert!(!key.versions[0].public_key_der.is_empty());
    }
    let (status, body) = readyz(&srv).await;
    assert_eq!(status, 503, "{body}");
    let why = body["checks"]["attestation"].as_str().unwrap();
    assert!(
        why.contains("is not the expected"),
        "readyz says why: {body}"
    );
    drop(srv);

    // 2. The right policy, computed independently: the quote verifies,
    //    sign is allowed, and the signature verifies independently.
    let srv = TestServer::start_tpm_with(|cfg, tpm| {
        cfg.backend = tpm.backend_with(|t| {
            t.attestation_required = true;
            t.attestation.expected_digest = Some(digest_of_unmeasured_pcrs_0_to_7());
            t.attestation_interval = Duration::from_secs(1);
        });
        cfg.faults.injection = true;
    })
    .await;
    assert_eq!(common::metric("attestation_ready"), 1.0);
    let (status, body) = readyz(&srv).await;
    assert_eq!(status, 200, "{body}");
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    let key = c.create("k", "ecdsa-p256").await.unwrap();
    let sig = c.sign("k", b"m").await.unwrap().signature;
    assert!(independent::verify(
        "ecdsa-p256",
        &key.versions[0].public_key_der,
        b"m",
        &sig
    ));

    // 3. Re-attestation follows the device: custody goes away (fault
    //    injection), the next quote fails and sign is refused as
    //    unattested; custody comes back, the next quote verifies, sign works.
    let faults = srv.running().faults.clone().unwrap();
    faults.set_down(true);
    eventually("attestation lost", || async {
        common::metric("attestation_ready") == 0.0
    })
    .await;
    c.sign("k", b"m").await.unwrap_err().expect(
        403,
        Code::FailedPrecondition,
        "attestation_missing",
    );
    faults.clear();
    eventually("attestation back", || async {
        common::metric("attestation_ready") == 1.0
    })
    .await;
    // (the breaker may still be open from the outage for a moment)
    let t = Instant::now();
    while c.sign("k", b"m").await.is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "sign allowed again: not within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
