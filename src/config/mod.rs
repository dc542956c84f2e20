//! One typed config, merged from three sources: TOML file < `KMS_*`
//! environment < command-line flags, validated once at start-up. Errors name
//! the field the way the operator wrote it (`KMS_GRPC_ADDR`, `--http-addr`,
//! `grpc_addr in ron-kms.toml`).
//!
//! The environment is read through the [`Env`] trait, so tests pass a map
//! instead of touching the process environment. Secrets (the master
//! passphrase) are referenced by file path or env-var *name*, never given as
//! values here, and are read only when the server starts.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::crypto::Algorithm;

pub const DEFAULT_DATA_DIR: &str = "./ron-kms-data";
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:9445";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9446";
pub const DEFAULT_BOOTSTRAP_TENANT: &str = "admin";

/// Where environment variables come from.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

#[derive(Debug, Error)]
#[error("config: {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// The TOML file's shape: the env names without `KMS_`, lower-cased.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub grpc_addr: Option<String>,
    pub http_addr: Option<String>,
    pub backend: Option<String>,
    pub master_key_file: Option<PathBuf>,
    pub master_passphrase_file: Option<PathBuf>,
    pub master_passphrase_env: Option<String>,
    pub algorithms: Option<Vec<String>>,
    pub blocking_threads: Option<usize>,
    pub bootstrap_tenant: Option<String>,
    pub log: Option<String>,
    pub amnesia: Option<bool>,
    pub store: Option<String>,
    pub store_password_file: Option<PathBuf>,
    pub store_ca_file: Option<PathBuf>,
    pub store_pool_size: Option<u32>,
    pub store_reconcile_secs: Option<u64>,
    pub node_id: Option<String>,
    pub audit_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    pub audit_checkpoint_interval: Option<u64>,
    pub audit_max_file_bytes: Option<u64>,
    pub audit_min_free_bytes: Option<u64>,
    pub audit_sync: Option<String>,
    pub audit_sync_interval_ms: Option<u64>,
    pub console_addr: Option<String>,
    pub transit_mount: Option<String>,
    pub pq: Option<PqFile>,
    pub verify_cache_max: Option<u64>,
    pub verify_cache_ttl_ms: Option<u64>,
    pub op_cache_tenant_bytes: Option<u64>,
    pub op_cache_total_bytes: Option<u64>,
    pub max_keys_per_tenant: Option<u64>,
    pub max_versions_per_key: Option<u64>,
    pub auth_failures_per_sec: Option<u64>,
    pub auth_failure_burst: Option<u64>,
    pub failover: Option<String>,
    pub fault_injection: Option<bool>,
    pub pkcs11_module: Option<PathBuf>,
    pub pkcs11_token_label: Option<String>,
    pub pkcs11_pin_file: Option<PathBuf>,
    pub pkcs11_pin_env: Option<String>,
    pub pkcs11_pool_size: Option<usize>,
    pub tpm_tcti: Option<String>,
    pub tpm_ek_ca_file: Option<PathBuf>,
    pub tpm_seal_pcrs: Option<String>,
    pub tpm_queue_depth: Option<usize>,
    pub attestation_required: Option<bool>,
    pub attestation_pcrs: Option<String>,
    pub attestation_pcr_digest: Option<String>,
    pub attestation_interval_secs: Option<u64>,
    pub fault_latency_ms: Option<u64>,
    pub admission: Option<limits::AdmissionFile>,
    pub tenants: Option<std::collections::BTreeMap<String, limits::TenantFile>>,
    pub ingress: Option<limits::IngressFile>,
    pub tls: Option<limits::TlsFile>,
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Flags of `ron-kms serve` that override file and env.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub grpc_addr: Option<String>,
    pub http_addr: Option<String>,
    /// `--amnesia`: everything in memory, nothing written anywhere.
    pub amnesia: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendKind {
    SealedFile,
    Pkcs11(Pkcs11Config),
    Tpm(TpmConfig),
}

/// Where the TPM is and what its attestation must show (`KMS_TPM_*`,
/// `KMS_ATTESTATION_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmConfig {
    /// TCTI: `swtpm:host=…,port=…`, `device:/dev/tpmrm0`, `tabrmd`.
    pub tcti: String,
    /// Calls allowed to wait for the TPM at once; more are refused
    /// (`overloaded`).
    pub queue_depth: usize,
    /// `KMS_TPM_EK_CA_FILE`: PEM certificates (roots and intermediates)
    /// the TPM's endorsement-key certificate must chain to; unset: the
    /// TPM's identity is trusted on first use.
    pub ek_ca_file: Option<PathBuf>,
    /// `KMS_TPM_SEAL_PCRS`: seal data keys under a policy on these PCRs.
    pub seal_pcrs: Option<crate::backend::tpm::PcrSelection>,
    pub attestation: crate::backend::tpm::attest::AttestationSettings,
    /// Refuse private-key operations while the quote does not verify.
    pub attestation_required: bool,
    /// How often the quote is taken again.
    pub attestation_interval: Duration,
}

pub const DEFAULT_ATTESTATION_INTERVAL_SECS: u64 = 60;

/// Where the token is and how to log in (`KMS_PKCS11_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Config {
    pub module: PathBuf,
    pub token_label: String,
    /// The user PIN: a file (0600) or the *name* of an env var.
    pub pin: PassphraseSource,
    /// Logged-in sessions to pool; 0 (the default) sizes the pool from the
    /// machine's cores ([`crate::backend::pkcs11::default_pool_size`]).
    /// Never more than the token reports it allows.
    pub pool_size: usize,
}

/// `KMS_PKCS11_POOL_SIZE` unset: sized from the cores and the token.
pub const DEFAULT_PKCS11_POOL_SIZE: usize = 0;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassphraseSource {
    File(PathBuf),
    /// The *name* of the environment variable holding the passphrase.
    Env(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MasterKeySource {
    KeyFile(PathBuf),
    Passphrase(PassphraseSource),
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Where records persist: SQLite under the data dir, or PostgreSQL
    /// shared by several replicas.
    pub store: StoreKind,
    /// This replica's name in audit records and logs (`KMS_NODE_ID`,
    /// default the host name).
    pub node_id: String,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub backend: BackendKind,
    pub master: MasterKeySource,
    pub algorithms: Vec<Algorithm>,
    pub blocking_threads: usize,
    pub bootstrap_tenant: String,
    /// The process's logs and tokio-console.
    pub log: LogConfig,
    /// Keys, tokens and the master key live only in process memory; the
    /// data dir is not created, locked or written. For development and CI.
    pub amnesia: bool,
    pub audit: AuditConfig,
    pub pq: PqConfig,
    pub verify_cache: VerifyCacheConfig,
    /// `KMS_OP_CACHE_*`: how many bytes remembered `op_id` answers may hold.
    pub op_cache: OpCacheConfig,
    /// `KMS_MAX_KEYS_PER_TENANT`, `KMS_MAX_VERSIONS_PER_KEY`.
    pub quotas: crate::service::Quotas,
    /// `KMS_AUTH_FAILURES_PER_SEC`, `KMS_AUTH_FAILURE_BURST`: failed
    /// authentications a source address may make before it is shed.
    pub preauth: PreauthConfig,
    /// `KMS_FAILOVER`: what still works while custody is down.
    pub failover: Failover,
    /// Fault injection (chaos drills, tests).
    pub faults: FaultsConfig,
    /// Per-op capacity, tenant fair share and rate caps.
    pub admission: crate::admission::AdmissionConfig,
    /// Connection cap, timeouts, HTTP/2 stream limit.
    pub ingress: crate::ingress::Limits,
    /// TLS (and mTLS identity) on both fronts; plain text when `None`.
    pub tls: Option<crate::ingress::tls::TlsSettings>,
    /// `KMS_TRANSIT_MOUNT`: the Vault-transit-compatible front's mount path
    /// on the HTTP port (`transit` serves `/v1/transit/…`); off when `None`
    /// (docs/transit.md).
    pub transit_mount: Option<String>,
}

/// `KMS_STORE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// `<data dir>/kms.sqlite3` (the default).
    Sqlite,
    Postgres(PgConfig),
}

/// `KMS_STORE=postgres://…` and its companions.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// libpq-style URL or key=value string. May carry a password (it comes
    /// from an env var or the config file, never a flag); never printed.
    pub url: String,
    /// `KMS_STORE_PASSWORD_FILE`: the password, instead of one in the URL.
    pub password_file: Option<PathBuf>,
    /// `KMS_STORE_CA_FILE`: CA certificates (PEM) the server's certificate
    /// must chain to. Set, TLS is required; unset, the connection is plain.
    pub ca_file: Option<PathBuf>,
    pub pool_size: u32,
    pub reconcile_interval: Duration,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &crate::store::postgres::redact_url(&self.url))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .field("reconcile_interval", &self.reconcile_interval)
            .finish()
    }
}

pub const DEFAULT_STORE_POOL_SIZE: u32 = 4;
pub const DEFAULT_STORE_RECONCILE_SECS: u64 = 10;

impl Config {
    /// Defaults with `data_dir` set: what tests and embedders start from.
    pub fn for_data_dir(data_dir: &Path) -> Self {
        Config {
            data_dir: data_dir.to_path_buf(),
            store: StoreKind::Sqlite,
            node_id: store::host_name(),
            grpc_addr: DEFAULT_GRPC_ADDR.parse().expect("valid default"),
            http_addr: DEFAULT_HTTP_ADDR.parse().expect("valid default"),
            backend: BackendKind::SealedFile,
            master: MasterKeySource::KeyFile(data_dir.join("master.key")),
            algorithms: Algorithm::ALL.to_vec(),
            blocking_threads: service::default_blocking_threads(),
            bootstrap_tenant: DEFAULT_BOOTSTRAP_TENANT.into(),
            log: LogConfig::default(),
            amnesia: false,
            audit: AuditConfig::for_data_dir(data_dir),
            pq: PqConfig::default(),
            verify_cache: VerifyCacheConfig::default(),
            op_cache: OpCacheConfig::default(),
            quotas: crate::service::Quotas::default(),
            preauth: PreauthConfig::default(),
            failover: Failover::None,
            faults: FaultsConfig::default(),
            admission: Default::default(),
            ingress: Default::default(),
            tls: None,
            transit_mount: None,
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("kms.sqlite3")
    }

    /// `KMS_ATTESTATION_REQUIRED` (only a TPM can attest).
    pub fn attestation_required(&self) -> bool {
        matches!(&self.backend, BackendKind::Tpm(t) if t.attestation_required)
    }
}

fn parse_addr(p: Raw<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let s = p.value.unwrap_or_else(|| default.to_string());
    s.parse().map_err(|_| {
        err(
            &p.origin,
            format!("{s:?} is not a socket address like 127.0.0.1:9445"),
        )
    })
}

/// The config file named by `--config` or `KMS_CONFIG`, parsed, and its
/// name for messages.
fn read_file(flags: &Flags, env: &dyn Env) -> Result<(FileConfig, String), ConfigError> {
    let (path, origin) = match (&flags.config, env.var("KMS_CONFIG")) {
        (Some(p), _) => (p.clone(), "--config"),
        (None, Some(p)) => (PathBuf::from(p), "KMS_CONFIG"),
        (None, None) => return Ok((FileConfig::default(), "config file".to_string())),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| err(format!("{origin} {}", path.display()), e.to_string()))?;
    let f: FileConfig = toml::from_str(&text).map_err(|e| {
        err(
            format!("config file {}", path.display()),
            e.message().to_string(),
        )
    })?;
    Ok((f, path.display().to_string()))
}

/// Merge and validate, section by section: where the service listens and
/// keeps its data, amnesia, the store, custody and its master key, the
/// service, the audit log and logs, the PQ policy, admission, ingress and
/// TLS.
pub fn load(flags: &Flags, env: &dyn Env) -> Result<Config, ConfigError> {
    let (mut file, file_name) = read_file(flags, env)?;
    let src = Src {
        env,
        fname: &file_name,
    };

    let data_dir = src
        .flagged(
            flags.data_dir.clone(),
            "--data-dir",
            "KMS_DATA_DIR",
            "data_dir",
            file.data_dir.take(),
            PathBuf::from,
        )
        .value
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let grpc_addr = parse_addr(
        src.flagged(
            flags.grpc_addr.clone(),
            "--grpc-addr",
            "KMS_GRPC_ADDR",
            "grpc_addr",
            file.grpc_addr.take(),
            |s| s,
        ),
        DEFAULT_GRPC_ADDR,
    )?;
    let http_addr = parse_addr(
        src.flagged(
            flags.http_addr.clone(),
            "--http-addr",
            "KMS_HTTP_ADDR",
            "http_addr",
            file.http_addr.take(),
            |s| s,
        ),
        DEFAULT_HTTP_ADDR,
    )?;
    if grpc_addr == http_addr && grpc_addr.port() != 0 {
        return Err(err("KMS_HTTP_ADDR", "must differ from the gRPC address"));
    }

    let amnesia_p = src.flagged(
        flags.amnesia.then_some(Ok(true)),
        "--amnesia",
        "KMS_AMNESIA",
        "amnesia",
        file.amnesia.take().map(Ok),
        |s| match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            _ => Err(()),
        },
    );
    let amnesia = Amnesia {
        on: match amnesia_p.value {
            None => false,
            Some(Ok(b)) => b,
            Some(Err(())) => return Err(err(amnesia_p.origin, "must be true or false")),
        },
        origin: amnesia_p.origin,
    };

    let (store, store_p) = store::load(&mut file, &src, &amnesia)?;
    let node_id = store::node_id(&mut file, &src)?;
    let backend = backend::load(&mut file, &src, &amnesia)?;
    let master = backend::master(&mut file, &src, &amnesia, &backend, &data_dir)?;
    let svc = service::load(&mut file, &src)?;
    let log = observe::log(&mut file, &src)?;
    let audit = observe::audit(&mut file, &src, &amnesia, &data_dir)?;
    let pq = pq::load(file.pq.take().unwrap_or_default(), &src)?;
    let transit_p = src.text(
        "KMS_TRANSIT_MOUNT",
        "transit_mount",
        file.transit_mount.take(),
    );
    let transit_mount = match transit_p.value.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(m) => {
            Some(crate::api::transit::check_mount(m).map_err(|e| err(&transit_p.origin, e))?)
        }
    };
    let limits = limits::load(
        file.admission.take().unwrap_or_default(),
        file.tenants.take(),
        file.ingress.take().unwrap_or_default(),
        file.tls.take().unwrap_or_default(),
        env,
        &file_name,
    )?;

    if matches!(store, StoreKind::Postgres(_)) && matches!(backend, BackendKind::Tpm(_)) {
        return Err(err(
            store_p.origin,
            "TPM custody is per host: keys sealed by one TPM cannot be used by replicas on other hosts, so a shared store cannot hold them; use sealed-file (the same master key on every node) or pkcs11 (a shared HSM)",
        ));
    }

    Ok(Config {
        data_dir,
        store,
        node_id,
        grpc_addr,
        http_addr,
        backend,
        master,
        algorithms: svc.algorithms,
        blocking_threads: svc.blocking_threads,
        bootstrap_tenant: svc.bootstrap_tenant,
        log,
        amnesia: amnesia.on,
        audit,
        pq,
        verify_cache: svc.verify_cache,
        op_cache: svc.op_cache,
        quotas: svc.quotas,
        preauth: svc.preauth,
        failover: svc.failover,
        faults: svc.faults,
        admission: limits.admission,
        ingress: limits.ingress,
        tls: limits.tls,
        transit_mount,
    })
}

mod backend;
mod limits;
mod observe;
mod pq;
mod service;
mod source;
mod store;

pub use observe::{AuditConfig, LogConfig, LogFormat};
pub use pq::{PqConfig, PqFile, PqTenantFile};
pub use service::{
    Failover, FaultsConfig, OpCacheConfig, PreauthConfig, VerifyCacheConfig,
    DEFAULT_VERIFY_CACHE_MAX, DEFAULT_VERIFY_CACHE_TTL_MS,
};
use source::{Amnesia, Raw, Src};

#[cfg(test)]
mod tests;

impl Config {
    /// What the service is built with (the composition root passes it to
    /// `KmsService::new`).
    pub fn service_options(&self) -> crate::service::ServiceOptions {
        let cfg = self;
        crate::service::ServiceOptions {
            allowed: cfg.algorithms.clone(),
            blocking_threads: cfg.blocking_threads,
            pq_default: cfg.pq.default,
            pq_tenants: cfg.pq.tenants.clone(),
            pq_rollback: cfg.pq.rollback,
            verify_cache_max: cfg.verify_cache.max,
            verify_cache_ttl: std::time::Duration::from_millis(cfg.verify_cache.ttl_ms),
            quotas: cfg.quotas,
            auth_failures_per_sec: cfg.preauth.failures_per_sec as f64,
            auth_failure_burst: cfg.preauth.burst as f64,
            op_cache_tenant_bytes: cfg.op_cache.tenant_bytes,
            op_cache_total_bytes: cfg.op_cache.total_bytes,
            attestation_required: cfg.attestation_required(),
            admission: cfg.admission.clone(),
            request_timeout: cfg.ingress.request_timeout,
            verify_only_failover: cfg.failover == Failover::VerifyOnly,
        }
    }
}
