//! What the service offers and how it runs: the algorithm allow-list,
//! the blocking pool, the bootstrap tenant, the verify cache, failover and
//! fault injection.
use std::time::Duration;

use super::source::Src;
use super::{err, ConfigError, FileConfig, DEFAULT_BOOTSTRAP_TENANT};
use crate::crypto::Algorithm;

pub const DEFAULT_VERIFY_CACHE_MAX: u64 = 10_000;
pub const DEFAULT_VERIFY_CACHE_TTL_MS: u64 = 60_000;

/// The verify cache (`KMS_VERIFY_CACHE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyCacheConfig {
    /// Capacity (prepared public keys); 0 turns it off.
    pub max: u64,
    /// How long a cached public key may be used while custody is unavailable.
    pub ttl_ms: u64,
}

impl Default for VerifyCacheConfig {
    fn default() -> Self {
        VerifyCacheConfig {
            max: DEFAULT_VERIFY_CACHE_MAX,
            ttl_ms: DEFAULT_VERIFY_CACHE_TTL_MS,
        }
    }
}

/// The `op_id` answer cache's byte bounds (`KMS_OP_CACHE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpCacheConfig {
    /// One tenant's answers.
    pub tenant_bytes: u64,
    /// All tenants' answers together.
    pub total_bytes: u64,
}

impl Default for OpCacheConfig {
    fn default() -> Self {
        OpCacheConfig {
            tenant_bytes: crate::service::DEFAULT_OP_CACHE_TENANT_BYTES,
            total_bytes: crate::service::DEFAULT_OP_CACHE_TOTAL_BYTES,
        }
    }
}

/// The pre-authentication limit per source address
/// (`KMS_AUTH_FAILURES_PER_SEC`, `KMS_AUTH_FAILURE_BURST`): failed
/// authentications an address may make before it is shed with 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreauthConfig {
    pub failures_per_sec: u64,
    pub burst: u64,
}

impl Default for PreauthConfig {
    fn default() -> Self {
        PreauthConfig {
            failures_per_sec: crate::service::strangers::DEFAULT_FAILURES_PER_SEC as u64,
            burst: crate::service::strangers::DEFAULT_FAILURE_BURST as u64,
        }
    }
}

/// What keeps working while custody is down (`KMS_FAILOVER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failover {
    /// Verify answers from the verify cache within its TTL, then refuses.
    None,
    /// Verify answers from the public key in the snapshot for as long as
    /// custody is down. Sign, unwrap and data keys fail fast either way:
    /// there is no fallback to another custody.
    VerifyOnly,
}

/// Fault injection for tests and chaos drills (`KMS_FAULT_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultsConfig {
    /// Wrap custody in the fault-injecting backend.
    pub injection: bool,
    /// With fault injection: latency every custody call starts with, so
    /// drills and tests can run the binary as a slow device.
    pub latency: Option<Duration>,
}

/// The section's settings.
pub(super) struct Loaded {
    pub algorithms: Vec<Algorithm>,
    pub blocking_threads: usize,
    pub bootstrap_tenant: String,
    pub verify_cache: VerifyCacheConfig,
    pub op_cache: OpCacheConfig,
    pub quotas: crate::service::Quotas,
    pub preauth: PreauthConfig,
    pub failover: Failover,
    pub faults: FaultsConfig,
}

pub(super) fn default_blocking_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
}

pub(super) fn load(file: &mut FileConfig, src: &Src<'_>) -> Result<Loaded, ConfigError> {
    let algs_p = src.raw(
        "KMS_ALGORITHMS",
        "algorithms",
        file.algorithms.take(),
        |s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect::<Vec<_>>()
        },
    );
    let algorithms = match algs_p.value {
        None => Algorithm::ALL.to_vec(),
        Some(list) if list.is_empty() => {
            return Err(err(algs_p.origin, "must name at least one algorithm"))
        }
        Some(list) => list
            .iter()
            .map(|a| {
                Algorithm::parse(a).ok_or_else(|| {
                    err(
                        &algs_p.origin,
                        format!(
                            "unknown algorithm {a:?}; known: {}",
                            Algorithm::ALL.map(|x| x.as_str()).join(", ")
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let blocking_threads = src.number(
        "KMS_BLOCKING_THREADS",
        "blocking_threads",
        file.blocking_threads.take(),
        1..=1024,
        default_blocking_threads(),
        "must be a whole number from 1 to 1024",
    )?;
    let tenant_p = src.text(
        "KMS_BOOTSTRAP_TENANT",
        "bootstrap_tenant",
        file.bootstrap_tenant.take(),
    );
    let bootstrap_tenant = tenant_p
        .value
        .unwrap_or_else(|| DEFAULT_BOOTSTRAP_TENANT.to_string());
    crate::auth::validate_tenant(&bootstrap_tenant).map_err(|m| err(tenant_p.origin, m))?;
    let verify_cache = VerifyCacheConfig {
        max: src.number(
            "KMS_VERIFY_CACHE_MAX",
            "verify_cache_max",
            file.verify_cache_max.take(),
            0..=10_000_000,
            DEFAULT_VERIFY_CACHE_MAX,
            "must be a whole number from 0 (off) to 10000000",
        )?,
        ttl_ms: src.number(
            "KMS_VERIFY_CACHE_TTL_MS",
            "verify_cache_ttl_ms",
            file.verify_cache_ttl_ms.take(),
            1..=86_400_000,
            DEFAULT_VERIFY_CACHE_TTL_MS,
            "must be a whole number of milliseconds from 1 to 86400000",
        )?,
    };
    let op_cache = OpCacheConfig {
        tenant_bytes: src.number(
            "KMS_OP_CACHE_TENANT_BYTES",
            "op_cache_tenant_bytes",
            file.op_cache_tenant_bytes.take(),
            4096..=1 << 40,
            crate::service::DEFAULT_OP_CACHE_TENANT_BYTES,
            "must be a whole number of bytes from 4096 to 2^40",
        )?,
        total_bytes: src.number(
            "KMS_OP_CACHE_TOTAL_BYTES",
            "op_cache_total_bytes",
            file.op_cache_total_bytes.take(),
            4096..=1 << 40,
            crate::service::DEFAULT_OP_CACHE_TOTAL_BYTES,
            "must be a whole number of bytes from 4096 to 2^40",
        )?,
    };
    if op_cache.total_bytes < op_cache.tenant_bytes {
        return Err(err(
            "op_cache_total_bytes",
            "op_cache_total_bytes must be at least op_cache_tenant_bytes",
        ));
    }
    let quotas = crate::service::Quotas {
        keys_per_tenant: src.number(
            "KMS_MAX_KEYS_PER_TENANT",
            "max_keys_per_tenant",
            file.max_keys_per_tenant.take(),
            1..=100_000_000,
            crate::service::DEFAULT_MAX_KEYS_PER_TENANT,
            "must be a whole number from 1 to 100000000",
        )?,
        versions_per_key: src.number(
            "KMS_MAX_VERSIONS_PER_KEY",
            "max_versions_per_key",
            file.max_versions_per_key.take(),
            1..=1_000_000,
            crate::service::DEFAULT_MAX_VERSIONS_PER_KEY,
            "must be a whole number from 1 to 1000000",
        )?,
    };
    let preauth = PreauthConfig {
        failures_per_sec: src.number(
            "KMS_AUTH_FAILURES_PER_SEC",
            "auth_failures_per_sec",
            file.auth_failures_per_sec.take(),
            1..=1_000_000,
            PreauthConfig::default().failures_per_sec,
            "must be a whole number from 1 to 1000000",
        )?,
        burst: src.number(
            "KMS_AUTH_FAILURE_BURST",
            "auth_failure_burst",
            file.auth_failure_burst.take(),
            1..=10_000_000,
            PreauthConfig::default().burst,
            "must be a whole number from 1 to 10000000",
        )?,
    };
    let failover_p = src.text("KMS_FAILOVER", "failover", file.failover.take());
    let failover = match failover_p.value.as_deref() {
        None | Some("none") => Failover::None,
        Some("verify-only") => Failover::VerifyOnly,
        Some(other) => {
            return Err(err(
                failover_p.origin,
                format!("{other:?} is not one of none, verify-only (sign never fails over to other custody)"),
            ))
        }
    };
    let injection = src
        .switch(
            "KMS_FAULT_INJECTION",
            "fault_injection",
            file.fault_injection.take(),
        )?
        .value
        .unwrap_or(false);
    let lat_p = src.number_raw(
        "KMS_FAULT_LATENCY_MS",
        "fault_latency_ms",
        file.fault_latency_ms.take(),
    );
    let latency = match lat_p.value {
        None => None,
        Some(Some(ms)) if ms <= 60_000 && injection => Some(Duration::from_millis(ms)),
        Some(Some(ms)) if ms <= 60_000 => {
            return Err(err(lat_p.origin, "needs KMS_FAULT_INJECTION=true"))
        }
        Some(_) => {
            return Err(err(
                lat_p.origin,
                "must be a whole number of milliseconds up to 60000",
            ))
        }
    };
    Ok(Loaded {
        algorithms,
        blocking_threads,
        bootstrap_tenant,
        verify_cache,
        op_cache,
        quotas,
        preauth,
        failover,
        faults: FaultsConfig { injection, latency },
    })
}
