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
    pub console_addr: Option<String>,
    pub pq: Option<PqFile>,
    pub verify_cache_max: Option<u64>,
    pub verify_cache_ttl_ms: Option<u64>,
    pub failover: Option<String>,
    pub fault_injection: Option<bool>,
    pub pkcs11_module: Option<PathBuf>,
    pub pkcs11_token_label: Option<String>,
    pub pkcs11_pin_file: Option<PathBuf>,
    pub pkcs11_pin_env: Option<String>,
    pub pkcs11_pool_size: Option<usize>,
    pub tpm_tcti: Option<String>,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
    pub pool_size: usize,
}

pub const DEFAULT_PKCS11_POOL_SIZE: usize = 8;

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
    pub log: String,
    /// `text` (default) or `json` (one JSON object per line).
    pub log_format: LogFormat,
    /// Keys, tokens and the master key live only in process memory; the
    /// data dir is not created, locked or written. For development and CI.
    pub amnesia: bool,
    /// Audit segments; default `<data dir>/audit`. Ignored in amnesia mode
    /// (the log is kept in memory).
    pub audit_dir: PathBuf,
    pub audit_checkpoint_interval: u64,
    pub audit_max_file_bytes: u64,
    /// Benchmarks only (library API, never from a file, env or flag): run
    /// without an audit log to measure what it costs.
    pub audit_off_for_benchmarks: bool,
    /// Serve the tokio-console instrumentation API here (builds with the
    /// `console` feature and `--cfg tokio_unstable` only). Off when `None`.
    pub console_addr: Option<SocketAddr>,
    /// The PQ policy of tenants with nothing more specific.
    pub pq_default: crate::policy::PqPolicy,
    /// Per-tenant PQ policies from the config file.
    pub pq_tenants: std::collections::BTreeMap<String, crate::policy::PqPolicy>,
    /// How many distinct principals' genuine classical refusals, within
    /// which window, roll a tenant back (`KMS_PQ_ROLLBACK_THRESHOLD`,
    /// `KMS_PQ_ROLLBACK_WINDOW_SECS`).
    pub pq_rollback: crate::policy::RollbackRule,
    /// Verify cache capacity (prepared public keys); 0 turns it off.
    pub verify_cache_max: u64,
    /// How long a cached public key may be used while custody is unavailable.
    pub verify_cache_ttl_ms: u64,
    /// `KMS_FAILOVER`: what still works while custody is down.
    pub failover: Failover,
    /// Wrap custody in the fault-injecting backend (chaos drills, tests).
    pub fault_injection: bool,
    /// With fault injection: latency every custody call starts with
    /// (`KMS_FAULT_LATENCY_MS`), so drills and tests can run the binary as a
    /// slow device.
    pub fault_latency: Option<Duration>,
    /// Per-op capacity, tenant fair share and rate caps.
    pub admission: crate::admission::AdmissionConfig,
    /// Connection cap, timeouts, HTTP/2 stream limit.
    pub ingress: crate::ingress::Limits,
    /// TLS (and mTLS identity) on both fronts; plain text when `None`.
    pub tls: Option<crate::ingress::tls::TlsSettings>,
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

/// The host name, for the default node id.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| valid_node_id(s))
        .unwrap_or_else(|| "node".into())
}

fn valid_node_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
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

pub const DEFAULT_VERIFY_CACHE_MAX: u64 = 10_000;
pub const DEFAULT_VERIFY_CACHE_TTL_MS: u64 = 60_000;

impl Config {
    /// Defaults with `data_dir` set: what tests and embedders start from.
    pub fn for_data_dir(data_dir: &Path) -> Self {
        Config {
            data_dir: data_dir.to_path_buf(),
            store: StoreKind::Sqlite,
            node_id: host_name(),
            grpc_addr: DEFAULT_GRPC_ADDR.parse().expect("valid default"),
            http_addr: DEFAULT_HTTP_ADDR.parse().expect("valid default"),
            backend: BackendKind::SealedFile,
            master: MasterKeySource::KeyFile(data_dir.join("master.key")),
            algorithms: Algorithm::ALL.to_vec(),
            blocking_threads: default_blocking_threads(),
            bootstrap_tenant: DEFAULT_BOOTSTRAP_TENANT.into(),
            log: "info".into(),
            log_format: LogFormat::Text,
            amnesia: false,
            audit_dir: data_dir.join("audit"),
            audit_checkpoint_interval: crate::audit::DEFAULT_CHECKPOINT_INTERVAL,
            audit_max_file_bytes: crate::audit::DEFAULT_MAX_FILE_BYTES,
            audit_off_for_benchmarks: false,
            console_addr: None,
            pq_default: crate::policy::PqPolicy::default(),
            pq_tenants: Default::default(),
            pq_rollback: crate::policy::RollbackRule::default(),
            verify_cache_max: DEFAULT_VERIFY_CACHE_MAX,
            verify_cache_ttl_ms: DEFAULT_VERIFY_CACHE_TTL_MS,
            failover: Failover::None,
            fault_injection: false,
            fault_latency: None,
            admission: Default::default(),
            ingress: Default::default(),
            tls: None,
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

fn default_blocking_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
}

/// One value and the name of the place it came from.
struct Picked<T> {
    value: Option<T>,
    origin: String,
}

#[allow(clippy::too_many_arguments)]
fn pick<T>(
    flag: Option<T>,
    flag_name: &str,
    env: &dyn Env,
    env_name: &str,
    parse_env: impl Fn(String) -> T,
    file: Option<T>,
    file_key: &str,
    file_name: &str,
) -> Picked<T> {
    if let Some(v) = flag {
        return Picked {
            value: Some(v),
            origin: flag_name.to_string(),
        };
    }
    if let Some(v) = env.var(env_name) {
        return Picked {
            value: Some(parse_env(v)),
            origin: env_name.to_string(),
        };
    }
    Picked {
        value: file,
        origin: format!("{file_key} in {file_name}"),
    }
}

/// A picked value plus whether it was set, kept after the value is moved.
struct Seen<T> {
    value: Option<T>,
    origin: String,
    value_was_set: bool,
}

impl<T> Seen<T> {
    fn of(p: Picked<T>) -> Self {
        Seen {
            value_was_set: p.value.is_some(),
            value: p.value,
            origin: p.origin,
        }
    }
}

fn parse_addr(p: Picked<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let s = p.value.unwrap_or_else(|| default.to_string());
    s.parse().map_err(|_| {
        err(
            &p.origin,
            format!("{s:?} is not a socket address like 127.0.0.1:9445"),
        )
    })
}

/// Merge and validate.
pub fn load(flags: &Flags, env: &dyn Env) -> Result<Config, ConfigError> {
    let (config_path, config_origin) = match (&flags.config, env.var("KMS_CONFIG")) {
        (Some(p), _) => (Some(p.clone()), "--config"),
        (None, Some(p)) => (Some(PathBuf::from(p)), "KMS_CONFIG"),
        (None, None) => (None, ""),
    };
    let (file, file_name) = match &config_path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| err(format!("{config_origin} {}", p.display()), e.to_string()))?;
            let f: FileConfig = toml::from_str(&text).map_err(|e| {
                err(
                    format!("config file {}", p.display()),
                    e.message().to_string(),
                )
            })?;
            (f, p.display().to_string())
        }
        None => (FileConfig::default(), "config file".to_string()),
    };
    let fname = file_name.as_str();
    let id = |s: String| s;

    let data_dir = pick(
        flags.data_dir.clone(),
        "--data-dir",
        env,
        "KMS_DATA_DIR",
        PathBuf::from,
        file.data_dir,
        "data_dir",
        fname,
    )
    .value
    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let grpc_addr = parse_addr(
        pick(
            flags.grpc_addr.clone(),
            "--grpc-addr",
            env,
            "KMS_GRPC_ADDR",
            id,
            file.grpc_addr,
            "grpc_addr",
            fname,
        ),
        DEFAULT_GRPC_ADDR,
    )?;
    let http_addr = parse_addr(
        pick(
            flags.http_addr.clone(),
            "--http-addr",
            env,
            "KMS_HTTP_ADDR",
            id,
            file.http_addr,
            "http_addr",
            fname,
        ),
        DEFAULT_HTTP_ADDR,
    )?;
    if grpc_addr == http_addr && grpc_addr.port() != 0 {
        return Err(err("KMS_HTTP_ADDR", "must differ from the gRPC address"));
    }

    let amnesia_p = pick(
        flags.amnesia.then_some(Ok(true)),
        "--amnesia",
        env,
        "KMS_AMNESIA",
        |s: String| match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            _ => Err(()),
        },
        file.amnesia.map(Ok),
        "amnesia",
        fname,
    );
    let amnesia = match amnesia_p.value {
        None => false,
        Some(Ok(b)) => b,
        Some(Err(())) => return Err(err(amnesia_p.origin, "must be true or false")),
    };
    let amnesia_origin = amnesia_p.origin;
    let conflict = |what: &str| {
        format!(
            "conflicts with {amnesia_origin}: amnesia mode keeps everything in memory only; {what}"
        )
    };

    let store_p = pick(None, "", env, "KMS_STORE", id, file.store, "store", fname);
    let store = match store_p.value.as_deref() {
        _ if amnesia && store_p.value.is_some() => {
            return Err(err(
                store_p.origin,
                conflict("a configured store would persist keys"),
            ));
        }
        None | Some("sqlite") => StoreKind::Sqlite,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let pw = pick(
                None,
                "",
                env,
                "KMS_STORE_PASSWORD_FILE",
                PathBuf::from,
                file.store_password_file,
                "store_password_file",
                fname,
            );
            let pool = pick(
                None,
                "",
                env,
                "KMS_STORE_POOL_SIZE",
                |s: String| s.trim().parse::<u32>().unwrap_or(0),
                file.store_pool_size,
                "store_pool_size",
                fname,
            );
            let pool_size = match pool.value {
                None => DEFAULT_STORE_POOL_SIZE,
                Some(n @ 1..=64) => n,
                Some(_) => return Err(err(pool.origin, "must be a whole number from 1 to 64")),
            };
            let rec = pick(
                None,
                "",
                env,
                "KMS_STORE_RECONCILE_SECS",
                |s: String| s.trim().parse::<u64>().unwrap_or(0),
                file.store_reconcile_secs,
                "store_reconcile_secs",
                fname,
            );
            let reconcile = match rec.value {
                None => DEFAULT_STORE_RECONCILE_SECS,
                Some(n @ 1..=3600) => n,
                Some(_) => return Err(err(rec.origin, "must be 1 to 3600 seconds")),
            };
            let ca = pick(
                None,
                "",
                env,
                "KMS_STORE_CA_FILE",
                PathBuf::from,
                file.store_ca_file,
                "store_ca_file",
                fname,
            );
            StoreKind::Postgres(PgConfig {
                url: url.to_string(),
                password_file: pw.value,
                ca_file: ca.value,
                pool_size,
                reconcile_interval: Duration::from_secs(reconcile),
            })
        }
        Some(other) => {
            let shown = crate::store::postgres::redact_url(other);
            return Err(err(
                store_p.origin,
                format!(
                    "{shown:?} is not a store: use \"sqlite\" (the default) or a postgres:// URL"
                ),
            ));
        }
    };
    let node_p = pick(
        None,
        "",
        env,
        "KMS_NODE_ID",
        id,
        file.node_id,
        "node_id",
        fname,
    );
    let node_id = match node_p.value {
        None => host_name(),
        Some(n) if valid_node_id(&n) => n,
        Some(_) => {
            return Err(err(
                node_p.origin,
                "must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
            ))
        }
    };

    let backend_p = pick(
        None,
        "",
        env,
        "KMS_BACKEND",
        id,
        file.backend,
        "backend",
        fname,
    );
    if amnesia {
        if let Some(b) = backend_p.value.as_deref().filter(|b| *b != "sealed-file") {
            return Err(err(
                backend_p.origin,
                conflict(&format!(
                    "the {b} backend would persist keys outside this process"
                )),
            ));
        }
    }
    let backend = backend::load(
        backend::Fields {
            pkcs11_module: file.pkcs11_module,
            pkcs11_token_label: file.pkcs11_token_label,
            pkcs11_pin_file: file.pkcs11_pin_file,
            pkcs11_pin_env: file.pkcs11_pin_env,
            pkcs11_pool_size: file.pkcs11_pool_size,
            tpm_tcti: file.tpm_tcti,
            tpm_queue_depth: file.tpm_queue_depth,
            attestation_required: file.attestation_required,
            attestation_pcrs: file.attestation_pcrs,
            attestation_pcr_digest: file.attestation_pcr_digest,
            attestation_interval_secs: file.attestation_interval_secs,
        },
        &backend_p,
        env,
        fname,
    )?;

    let key_file = pick(
        None,
        "",
        env,
        "KMS_MASTER_KEY_FILE",
        PathBuf::from,
        file.master_key_file,
        "master_key_file",
        fname,
    );
    let pass_file = pick(
        None,
        "",
        env,
        "KMS_MASTER_PASSPHRASE_FILE",
        PathBuf::from,
        file.master_passphrase_file,
        "master_passphrase_file",
        fname,
    );
    let pass_env = pick(
        None,
        "",
        env,
        "KMS_MASTER_PASSPHRASE_ENV",
        id,
        file.master_passphrase_env,
        "master_passphrase_env",
        fname,
    );
    if amnesia {
        let set = [
            (key_file.value.is_some(), &key_file.origin),
            (pass_file.value.is_some(), &pass_file.origin),
            (pass_env.value.is_some(), &pass_env.origin),
        ];
        if let Some((_, origin)) = set.iter().find(|(is_set, _)| *is_set) {
            return Err(err(
                origin.as_str(),
                conflict("its master key is random and never leaves memory"),
            ));
        }
    }
    let key_file = Seen::of(key_file);
    let pass_file = Seen::of(pass_file);
    let pass_env = Seen::of(pass_env);
    let master = match (key_file.value, pass_file.value, pass_env.value) {
        (None, None, None) => MasterKeySource::KeyFile(data_dir.join("master.key")),
        (Some(k), None, None) => MasterKeySource::KeyFile(k),
        (None, Some(f), None) => MasterKeySource::Passphrase(PassphraseSource::File(f)),
        (None, None, Some(e)) => {
            if e.is_empty() || e.contains('=') {
                return Err(err(pass_env.origin, "must be the name of an environment variable"));
            }
            MasterKeySource::Passphrase(PassphraseSource::Env(e))
        }
        _ => {
            return Err(err(
                "KMS_MASTER_KEY_FILE",
                "set only one of KMS_MASTER_KEY_FILE, KMS_MASTER_PASSPHRASE_FILE, KMS_MASTER_PASSPHRASE_ENV",
            ))
        }
    };

    if !matches!(backend, BackendKind::SealedFile) {
        let set = [
            (key_file.value_was_set, &key_file.origin),
            (pass_file.value_was_set, &pass_file.origin),
            (pass_env.value_was_set, &pass_env.origin),
        ];
        if let Some((_, origin)) = set.iter().find(|(is_set, _)| *is_set) {
            return Err(err(
                origin.as_str(),
                "is a sealed-file setting; with KMS_BACKEND=pkcs11 or tpm, custody seals keys itself",
            ));
        }
    }
    let algs_p = pick(
        None,
        "",
        env,
        "KMS_ALGORITHMS",
        |s: String| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect::<Vec<_>>()
        },
        file.algorithms,
        "algorithms",
        fname,
    );
    let algorithms = match algs_p.value {
        None => Algorithm::ALL.to_vec(),
        Some(list) => {
            if list.is_empty() {
                return Err(err(algs_p.origin, "must name at least one algorithm"));
            }
            list.iter()
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
                .collect::<Result<Vec<_>, _>>()?
        }
    };

    let threads_p = pick(
        None,
        "",
        env,
        "KMS_BLOCKING_THREADS",
        |s: String| s.trim().parse::<usize>().unwrap_or(0),
        file.blocking_threads,
        "blocking_threads",
        fname,
    );
    let blocking_threads = match threads_p.value {
        None => default_blocking_threads(),
        Some(n @ 1..=1024) => n,
        Some(_) => {
            return Err(err(
                threads_p.origin,
                "must be a whole number from 1 to 1024",
            ))
        }
    };

    let tenant_p = pick(
        None,
        "",
        env,
        "KMS_BOOTSTRAP_TENANT",
        id,
        file.bootstrap_tenant,
        "bootstrap_tenant",
        fname,
    );
    let bootstrap_tenant = tenant_p
        .value
        .unwrap_or_else(|| DEFAULT_BOOTSTRAP_TENANT.to_string());
    crate::auth::validate_tenant(&bootstrap_tenant).map_err(|m| err(tenant_p.origin, m))?;

    let log = pick(None, "", env, "KMS_LOG", id, file.log, "log", fname)
        .value
        .unwrap_or_else(|| "info".to_string());

    let audit_dir_p = pick(
        None,
        "",
        env,
        "KMS_AUDIT_DIR",
        PathBuf::from,
        file.audit_dir,
        "audit_dir",
        fname,
    );
    if amnesia && audit_dir_p.value.is_some() {
        return Err(err(
            audit_dir_p.origin,
            conflict("its audit log is kept in memory"),
        ));
    }
    let audit_dir = audit_dir_p.value.unwrap_or_else(|| data_dir.join("audit"));
    let parse_u64 = |s: String| s.trim().parse::<u64>().unwrap_or(0);
    let interval_p = pick(
        None,
        "",
        env,
        "KMS_AUDIT_CHECKPOINT_INTERVAL",
        parse_u64,
        file.audit_checkpoint_interval,
        "audit_checkpoint_interval",
        fname,
    );
    let audit_checkpoint_interval = match interval_p.value {
        None => crate::audit::DEFAULT_CHECKPOINT_INTERVAL,
        Some(n @ 1..=10_000_000) => n,
        Some(_) => {
            return Err(err(
                interval_p.origin,
                "must be a whole number from 1 to 10000000",
            ))
        }
    };
    let size_p = pick(
        None,
        "",
        env,
        "KMS_AUDIT_MAX_FILE_BYTES",
        parse_u64,
        file.audit_max_file_bytes,
        "audit_max_file_bytes",
        fname,
    );
    let audit_max_file_bytes = match size_p.value {
        None => crate::audit::DEFAULT_MAX_FILE_BYTES,
        Some(n) if n >= 4096 => n,
        Some(_) => return Err(err(size_p.origin, "must be at least 4096")),
    };

    let fmt_p = pick(
        None,
        "",
        env,
        "KMS_LOG_FORMAT",
        id,
        file.log_format,
        "log_format",
        fname,
    );
    let log_format = match fmt_p.value.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => return Err(err(fmt_p.origin, format!("{other:?} is not text or json"))),
    };

    let console_p = pick(
        None,
        "",
        env,
        "KMS_CONSOLE_ADDR",
        id,
        file.console_addr,
        "console_addr",
        fname,
    );
    let console_addr = match console_p.value.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(_) if !cfg!(feature = "console") => {
            return Err(err(
                console_p.origin,
                "this build has no tokio-console support; build with RUSTFLAGS=\"--cfg tokio_unstable\" cargo build --release --features console",
            ))
        }
        Some(a) => Some(a.parse().map_err(|_| {
            err(
                &console_p.origin,
                format!("{a:?} is not a socket address like 127.0.0.1:6669"),
            )
        })?),
    };

    let (pq_default, pq_tenants, pq_rollback) = pq::load(file.pq.unwrap_or_default(), env, fname)?;

    let cache_max_p = pick(
        None,
        "",
        env,
        "KMS_VERIFY_CACHE_MAX",
        |s: String| s.trim().parse::<u64>().ok(),
        file.verify_cache_max.map(Some),
        "verify_cache_max",
        fname,
    );
    let verify_cache_max = match cache_max_p.value {
        None => DEFAULT_VERIFY_CACHE_MAX,
        Some(Some(n)) if n <= 10_000_000 => n,
        Some(_) => {
            return Err(err(
                cache_max_p.origin,
                "must be a whole number from 0 (off) to 10000000",
            ))
        }
    };
    let cache_ttl_p = pick(
        None,
        "",
        env,
        "KMS_VERIFY_CACHE_TTL_MS",
        |s: String| s.trim().parse::<u64>().ok(),
        file.verify_cache_ttl_ms.map(Some),
        "verify_cache_ttl_ms",
        fname,
    );
    let verify_cache_ttl_ms = match cache_ttl_p.value {
        None => DEFAULT_VERIFY_CACHE_TTL_MS,
        Some(Some(n)) if (1..=86_400_000).contains(&n) => n,
        Some(_) => {
            return Err(err(
                cache_ttl_p.origin,
                "must be a whole number of milliseconds from 1 to 86400000",
            ))
        }
    };
    let failover_p = pick(
        None,
        "",
        env,
        "KMS_FAILOVER",
        id,
        file.failover,
        "failover",
        fname,
    );
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
    let faults_p = pick(
        None,
        "",
        env,
        "KMS_FAULT_INJECTION",
        |s: String| parse_bool(&s),
        file.fault_injection.map(Some),
        "fault_injection",
        fname,
    );
    let fault_injection = match faults_p.value {
        None => false,
        Some(Some(b)) => b,
        Some(None) => return Err(err(faults_p.origin, "must be true or false")),
    };
    let lat_p = pick(
        None,
        "",
        env,
        "KMS_FAULT_LATENCY_MS",
        |s: String| s.trim().parse::<u64>().ok(),
        file.fault_latency_ms.map(Some),
        "fault_latency_ms",
        fname,
    );
    let fault_latency = match lat_p.value {
        None => None,
        Some(Some(ms)) if fault_injection && ms <= 60_000 => Some(Duration::from_millis(ms)),
        Some(Some(ms)) if !fault_injection && ms <= 60_000 => {
            return Err(err(lat_p.origin, "needs KMS_FAULT_INJECTION=true"))
        }
        Some(_) => {
            return Err(err(
                lat_p.origin,
                "must be a whole number of milliseconds up to 60000",
            ))
        }
    };
    let limits = limits::load(
        file.admission.unwrap_or_default(),
        file.tenants,
        file.ingress.unwrap_or_default(),
        file.tls.unwrap_or_default(),
        env,
        fname,
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
        algorithms,
        blocking_threads,
        bootstrap_tenant,
        log,
        log_format,
        amnesia,
        audit_dir,
        audit_checkpoint_interval,
        audit_max_file_bytes,
        audit_off_for_benchmarks: false,
        console_addr,
        pq_default,
        pq_tenants,
        pq_rollback,
        verify_cache_max,
        verify_cache_ttl_ms,
        failover,
        fault_injection,
        fault_latency,
        admission: limits.admission,
        ingress: limits.ingress,
        tls: limits.tls,
    })
}

mod backend;
mod limits;
mod pq;

pub use pq::{PqFile, PqTenantFile};

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
            pq_default: cfg.pq_default,
            pq_tenants: cfg.pq_tenants.clone(),
            pq_rollback: cfg.pq_rollback,
            verify_cache_max: cfg.verify_cache_max,
            verify_cache_ttl: std::time::Duration::from_millis(cfg.verify_cache_ttl_ms),
            attestation_required: cfg.attestation_required(),
            admission: cfg.admission.clone(),
            request_timeout: cfg.ingress.request_timeout,
            verify_only_failover: cfg.failover == Failover::VerifyOnly,
        }
    }
}
