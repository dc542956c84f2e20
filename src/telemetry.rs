//! Metrics (the `metrics` facade, Prometheus exposition at `/metrics`) with
//! the names of DESIGN.md §10, and their one place of registration.
//!
//! Counters and gauges that may stay untouched in a deployment (every
//! `kms_reject_total` reason, the PQ policy rollbacks, the verify cache,
//! device breakers and reconnects, CRL reloads, attestation) are registered at zero at
//! start, so dashboards and alerts see a series from the first scrape; zero
//! is their truthful value until something happens. `kms_attestation_required`
//! says whether `attestation_ready == 0` matters.
use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets: 10 µs to 10 s, roughly ×2.5 apart.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Audit batch sizes (records per fsync): 1 to the batch cap.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

pub const REJECT_REASONS: &[&str] = &[
    "overload",
    "tenant_share",
    "rate_limit",
    "pq_policy",
    "too_large",
    "decompress_ratio",
    "unauthenticated",
    "forbidden",
    "timeout",
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the Prometheus recorder once per process and register every
/// series. Returns `None` when another recorder was installed first (an
/// embedding application's): `/metrics` then says so.
pub fn init() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let h = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("kms_latency_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(Matcher::Full("kms_shed_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("kms_audit_batch_records".into()),
                    BATCH_BUCKETS,
                )
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            Some(h)
        })
        .as_ref()
}

fn describe() {
    describe_histogram!(
        "kms_latency_seconds",
        Unit::Seconds,
        "Operation latency as the caller sees it, audit commit included"
    );
    describe_counter!(
        "kms_ops_total",
        "Operations by op, algorithm and result (ok or the error code)"
    );
    describe_counter!(
        "kms_reject_total",
        "Requests refused before or instead of doing work, by reason"
    );
    describe_gauge!("kms_inflight", "Operations in progress, by op");
    describe_histogram!(
        "kms_shed_seconds",
        Unit::Seconds,
        "Server time spent on a request that admission refused, from its arrival at the front"
    );
    describe_gauge!("kms_admission_in_use", "Admission cost units in use, by op");
    describe_gauge!(
        "kms_admission_waiting",
        "Requests waiting in the admission queue, by op"
    );
    describe_counter!("backend_reconnects_total", "Custody device reconnects");
    describe_gauge!(
        "backend_breaker_state",
        "Custody circuit breaker: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        "kms_pq_policy_rollback_total",
        "Tenants rolled back to verify_mode=or after a PQ policy refusal"
    );
    describe_counter!("verify_cache_hit_total", "Verify cache hits");
    describe_counter!("verify_cache_miss_total", "Verify cache misses");
    describe_counter!(
        "verify_cache_stale_total",
        "Verify cache entries found older than the TTL: reloaded while custody is up, refused while it is down"
    );
    describe_gauge!(
        "verify_cache_age_ms",
        "Age of the cached public key last served while custody was unavailable"
    );
    describe_histogram!(
        "kms_audit_batch_records",
        Unit::Count,
        "Audit records made durable by one group commit (one fsync)"
    );
    describe_counter!(
        "kms_audit_integrity_failed_total",
        "Audit chain integrity failures detected"
    );
    describe_gauge!(
        "kms_audit_writer_failed",
        "1 once the audit writer failed (I/O error, full disk, panic): writes and signing are refused until a restart"
    );
    describe_gauge!(
        "kms_audit_low_space",
        "1 while the audit log's file system is below its free-space floor (KMS_AUDIT_MIN_FREE_BYTES): unready, writes and signing refused"
    );
    describe_gauge!(
        "kms_audit_free_bytes",
        "Free bytes on the audit log's file system, as last measured"
    );
    describe_counter!(
        "kms_audit_checkpoint_deferred_total",
        "Audit checkpoints put off because the audit key in custody could not sign"
    );
    describe_counter!(
        "kms_tls_crl_reload_total",
        "Reloads of the TLS client CRL file after it changed, by result (ok, or error: the CRLs before stay in force)"
    );
    describe_gauge!(
        "attestation_ready",
        "1 when custody attestation is verified"
    );
    describe_gauge!(
        "kms_attestation_required",
        "1 when the deployment requires attestation before signing"
    );
    for r in REJECT_REASONS {
        counter!("kms_reject_total", "reason" => *r).absolute(0);
    }
    counter!("backend_reconnects_total").absolute(0);
    gauge!("backend_breaker_state").set(0.0);
    counter!("kms_pq_policy_rollback_total").absolute(0);
    counter!("verify_cache_hit_total").absolute(0);
    counter!("verify_cache_miss_total").absolute(0);
    counter!("verify_cache_stale_total").absolute(0);
    gauge!("verify_cache_age_ms").set(0.0);
    gauge!("verify_cache_ttl_ms").set(0.0);
    counter!("kms_audit_integrity_failed_total").absolute(0);
    counter!("kms_audit_checkpoint_deferred_total").absolute(0);
    gauge!("kms_audit_writer_failed").set(0.0);
    gauge!("kms_audit_low_space").set(0.0);
    for result in ["ok", "error"] {
        counter!("kms_tls_crl_reload_total", "result" => result).absolute(0);
    }
    gauge!("attestation_ready").set(0.0);
    gauge!("kms_attestation_required").set(0.0);
}

/// Count a refusal.
pub fn reject(reason: &'static str) {
    counter!("kms_reject_total", "reason" => reason).increment(1);
}

/// Server time from a request's arrival at its front to the admission
/// refusal's answer (`kms_shed_seconds{front}`): what a shed costs.
pub fn shed_time(front: &'static str, elapsed: std::time::Duration) {
    metrics::histogram!("kms_shed_seconds", "front" => front).record(elapsed.as_secs_f64());
}

/// The Prometheus text exposition.
pub fn render() -> Option<String> {
    HANDLE.get().and_then(|h| h.as_ref()).map(|h| h.render())
}

/// Milliseconds since the epoch as the UTC civil time (year, month, day,
/// hour, minute, second), for the dates answers and the CLI print.
pub fn civil_utc(ms: i64) -> (i64, i64, i64, i64, i64, i64) {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil date from days since 1970-01-01 (H. Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}
