//! `/metrics` exposes every name of DESIGN.md §10 after a short mixed run,
//! with counts that follow the operations; `/version` answers.
mod common;

use common::{Front, TestServer, FRONTS};
use tonic::Code;

const NAMES: &[&str] = &[
    "kms_latency_seconds",
    "kms_ops_total",
    "kms_reject_total",
    "kms_inflight",
    "backend_reconnects_total",
    "backend_breaker_state",
    "verify_cache_hit_total",
    "verify_cache_miss_total",
    "verify_cache_stale_total",
    "verify_cache_age_ms",
    "kms_audit_integrity_failed_total",
    "attestation_ready",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_design_metric_is_exposed_after_a_mixed_run() {
    let srv = TestServer::start().await;
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let k = format!("k-{front:?}").to_lowercase();
        c.create(&k, "ed25519").await.unwrap();
        for _ in 0..5 {
            let s = c.sign(&k, b"m").await.unwrap();
            c.verify(&s.kid, b"m", &s.signature).await.unwrap();
        }
        let mut anon = srv.client(front, "").await;
        anon.sign(&k, b"m").await.unwrap_err().expect(
            401,
            Code::Unauthenticated,
            "unauthenticated",
        );
        c.sign(&k, &vec![0u8; (1 << 20) + 1])
            .await
            .unwrap_err()
            .expect(413, Code::ResourceExhausted, "too_large");
    }
    let c = srv.client(Front::Http, "").await;
    let Transport::Http(http, base) = &c.transport else {
        unreachable!()
    };
    let resp = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    for name in NAMES {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics"
        );
    }
    for reason in ron_kms::telemetry::REJECT_REASONS {
        assert!(
            text.contains(&format!("kms_reject_total{{reason=\"{reason}\"}}")),
            "{reason}"
        );
    }
    // the counters move with the operations (the recorder is per process,
    // so other tests in this binary may add to them: at least, not equal)
    let value = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        value("kms_ops_total{op=\"sign\",alg=\"ed25519\",result=\"ok\"}") >= 10.0,
        "{text}"
    );
    assert!(value("kms_reject_total{reason=\"unauthenticated\"}") >= 2.0);
    assert!(value("kms_reject_total{reason=\"too_large\"}") >= 2.0);
    assert!(
        text.contains("kms_latency_seconds_bucket{op=\"sign\",alg=\"ed25519\",le=\"0.00001\"}"),
        "10 µs bucket"
    );
    assert!(text.contains("le=\"10\"}"), "10 s bucket");

    let v: serde_json::Value = http
        .get(format!("{base}/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

use common::Transport;
