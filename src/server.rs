//! Start-up and shutdown: open the data dir, store and custody, build the
//! service, bind both fronts on real sockets and serve until told to stop.
//!
//! Start-up refuses to run, with an error naming the cause, when: the data
//! dir is in use by another ron-kms process, the master key does not match
//! the one this data dir was sealed with, the master key file is readable by
//! others, or the store's schema is newer than this binary.
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::api::grpc::{GrpcEdge, GrpcFront};
use crate::api::http;
use crate::auth::{mint, NewToken, Scopes, TokenTable};
use crate::backend::breaker::{Breaker, BreakerSettings};
use crate::backend::pkcs11::{Pkcs11Backend, Pkcs11Settings};
use crate::backend::sealed_file::{MasterKey, SealedFileBackend};
use crate::backend::tpm::TpmBackend;
use crate::backend::Backend;
use crate::config::{BackendKind, Config, MasterKeySource, PassphraseSource};
use crate::crypto::{aead, Provider};
use crate::ingress::Ingress;
use crate::service::KmsService;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("data dir {path}: {msg}")]
    DataDir { path: String, msg: String },
    #[error(transparent)]
    MasterKey(#[from] crate::backend::sealed_file::master::MasterKeyError),
    #[error("master key does not match the one this data dir was sealed with")]
    MasterKeyMismatch,
    /// The store was sealed under a master key whose file (or salt) is
    /// gone: a new one would open none of the sealed keys, so none is made.
    #[error("{0} is missing, but this store was sealed with a master key: restore it from its backup (a new master key would open none of the sealed keys, so none is created)")]
    MasterKeyMissing(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Service(#[from] crate::error::Error),
    #[error("cannot listen on {addr}: {msg}")]
    Bind { addr: SocketAddr, msg: String },
    #[error("{0}")]
    Other(String),
}

const MASTER_CHECK_KEY: &str = "master_key_check";
const MASTER_CHECK_PLAINTEXT: &[u8] = b"ron-kms master key check v1";

/// Everything that custody and the service need, opened from a data dir.
pub struct Opened {
    pub store: Arc<dyn Store>,
    pub backend: Arc<dyn Backend>,
    /// The same backend, typed, when custody is `sealed-file`.
    pub sealed_file: Option<Arc<SealedFileBackend>>,
    /// The same backend, typed, when custody is `pkcs11`.
    pub pkcs11: Option<Arc<Pkcs11Backend>>,
    /// The same backend, typed, when custody is `tpm`.
    pub tpm: Option<Arc<TpmBackend>>,
    pub provider: Arc<Provider>,
    /// Holds the data-dir lock while alive (none in amnesia mode).
    _lock: Option<File>,
}

fn dir_err(path: &Path, msg: impl std::fmt::Display) -> StartError {
    StartError::DataDir {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// The data dir holds the store, sealed keys, the master key (by default)
/// and the audit log: it must be this user's and closed to everyone else.
/// Refused otherwise, with the fix named.
pub fn check_data_dir(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let meta = std::fs::metadata(dir).map_err(|e| dir_err(dir, e))?;
    if !meta.is_dir() {
        return Err(dir_err(dir, "not a directory"));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(dir_err(
            dir,
            format!(
                "owned by uid {}, not by this process's uid {me}; run ron-kms as its owner, or chown -R {me} {}",
                meta.uid(),
                dir.display()
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(dir_err(
            dir,
            format!(
                "mode {mode:04o} lets group or others in; run chmod 700 {}",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Read a secret from its file (which must not be readable by others) or
/// from the env var it names; `file_var` and `env_var` name the settings in
/// errors.
fn read_secret(
    src: &PassphraseSource,
    file_var: &str,
    env_var: &str,
) -> Result<Zeroizing<Vec<u8>>, StartError> {
    let raw = match src {
        PassphraseSource::File(p) => Zeroizing::new(
            {
                crate::backend::sealed_file::master::check_private(p)?;
                std::fs::read(p)
            }
            .map_err(|e| StartError::Other(format!("{file_var} {}: {e}", p.display())))?,
        ),
        PassphraseSource::Env(name) => match std::env::var_os(name) {
            Some(v) => Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(v)),
            None => {
                return Err(StartError::Other(format!(
                    "{env_var} names {name}, which is not set"
                )))
            }
        },
    };
    let mut trimmed = Zeroizing::new(raw.to_vec());
    while trimmed.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        trimmed.pop();
    }
    Ok(trimmed)
}

/// Open the data dir: lock it, open the store, load the master key and
/// check it against the one the store was sealed with.
pub fn open_data_dir(cfg: &Config) -> Result<Opened, StartError> {
    open_data_dir_for(cfg, true)
}

/// [`open_data_dir`]; `seal_check`: hold TPM custody to the PCR state its
/// keys are sealed to (not while re-sealing them).
fn open_data_dir_for(cfg: &Config, seal_check: bool) -> Result<Opened, StartError> {
    if cfg.amnesia {
        return open_in_memory();
    }
    let dir = &cfg.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| dir_err(dir, e))?;
    check_data_dir(dir)?;
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join("lock"))
        .map_err(|e| dir_err(dir, e))?;
    lock.try_lock()
        .map_err(|_| dir_err(dir, "in use by another ron-kms process"))?;
    let store = open_store(cfg)?;
    let provider = Arc::new(Provider::default());
    match &cfg.backend {
        BackendKind::SealedFile => {
            // a store sealed before never gets a fresh key file or salt
            let sealed = store.get_meta(MASTER_CHECK_KEY)?.is_some();
            let must_exist = |p: &Path, what: &str| {
                if sealed && !p.exists() {
                    Err(StartError::MasterKeyMissing(format!(
                        "{what} {}",
                        p.display()
                    )))
                } else {
                    Ok(())
                }
            };
            let master = match &cfg.master {
                MasterKeySource::KeyFile(p) => {
                    must_exist(p, "the master key file")?;
                    MasterKey::load_or_create(p)?.0
                }
                MasterKeySource::Passphrase(src) => {
                    let pass = read_secret(
                        src,
                        "KMS_MASTER_PASSPHRASE_FILE",
                        "KMS_MASTER_PASSPHRASE_ENV",
                    )?;
                    let salt = dir.join("master.salt");
                    must_exist(&salt, "the passphrase's salt file")?;
                    MasterKey::from_passphrase(&pass, &salt)?
                }
            };
            check_master(store.as_ref(), &master)?;
            let b = Arc::new(SealedFileBackend::new(master, provider.clone()));
            Ok(Opened {
                store,
                backend: b.clone(),
                sealed_file: Some(b),
                pkcs11: None,
                tpm: None,
                provider,
                _lock: Some(lock),
            })
        }
        BackendKind::Pkcs11(p) => {
            let pin = read_secret(&p.pin, "KMS_PKCS11_PIN_FILE", "KMS_PKCS11_PIN_ENV")?;
            let pin = Zeroizing::new(
                String::from_utf8(pin.to_vec())
                    .map_err(|_| StartError::Other("the PKCS#11 PIN is not UTF-8".into()))?,
            );
            let b = Arc::new(
                Pkcs11Backend::open(
                    Pkcs11Settings {
                        module: p.module.clone(),
                        token_label: p.token_label.clone(),
                        pin,
                        pool_size: p.pool_size,
                    },
                    provider.clone(),
                )
                .map_err(|e| StartError::Other(format!("pkcs11: {e}")))?,
            );
            Ok(Opened {
                store,
                backend: b.clone(),
                sealed_file: None,
                pkcs11: Some(b),
                tpm: None,
                provider,
                _lock: Some(lock),
            })
        }
        BackendKind::Tpm(t) => {
            let b = Arc::new(tpm::open_tpm(
                store.as_ref(),
                t,
                provider.clone(),
                seal_check,
            )?);
            Ok(Opened {
                store,
                backend: b.clone(),
                sealed_file: None,
                pkcs11: None,
                tpm: Some(b),
                provider,
                _lock: Some(lock),
            })
        }
    }
}

/// The configured store: SQLite under the data dir, or PostgreSQL.
pub fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, StartError> {
    match &cfg.store {
        crate::config::StoreKind::Sqlite => Ok(Arc::new(SqliteStore::open(&cfg.store_path())?)),
        crate::config::StoreKind::Postgres(pg) => {
            let password = match &pg.password_file {
                Some(p) => Some(read_secret(
                    &PassphraseSource::File(p.clone()),
                    "KMS_STORE_PASSWORD_FILE",
                    "",
                )?),
                None => None,
            };
            let tls = match &pg.ca_file {
                Some(ca) => Some(Arc::new(
                    crate::ingress::tls::client_config(ca)
                        .map_err(|e| StartError::Other(format!("KMS_STORE_CA_FILE: {e}")))?,
                )),
                None => {
                    tracing::warn!("the connection to PostgreSQL is not encrypted (set KMS_STORE_CA_FILE to require TLS)");
                    None
                }
            };
            let settings = crate::store::postgres::PgSettings {
                pool_size: pg.pool_size,
                reconcile_interval: pg.reconcile_interval,
                tls,
                ..Default::default()
            };
            let store = crate::store::postgres::PgStore::open(
                &pg.url,
                password.as_ref().map(|p| p.as_slice()),
                settings,
            )
            .map_err(|e| StartError::Other(format!("store: {e}")))?;
            tracing::info!(
                store = %crate::store::postgres::redact_url(&pg.url),
                node = %cfg.node_id,
                tls = pg.ca_file.is_some(),
                "shared store (PostgreSQL)"
            );
            Ok(Arc::new(store))
        }
    }
}

/// Amnesia mode: an in-memory store and a random master key that exists
/// only in this process. Nothing is created or written on disk.
fn open_in_memory() -> Result<Opened, StartError> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory()?);
    let mut k = Zeroizing::new([0u8; 32]);
    crate::crypto::random_bytes(&mut k[..]).map_err(|e| StartError::Other(e.to_string()))?;
    let master = MasterKey::from_bytes(*k);
    let provider = Arc::new(Provider::default());
    let backend = Arc::new(SealedFileBackend::new(master, provider.clone()).ephemeral());
    Ok(Opened {
        store,
        backend: backend.clone(),
        sealed_file: Some(backend),
        pkcs11: None,
        tpm: None,
        provider,
        _lock: None,
    })
}

/// The store remembers a value sealed under the master key; a different
/// master key fails here, at start-up, instead of on the first unseal.
fn check_master(store: &dyn Store, master: &MasterKey) -> Result<(), StartError> {
    let stored = match store.get_meta(MASTER_CHECK_KEY)? {
        Some(blob) => blob,
        None => {
            let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
            crate::crypto::random_bytes(&mut nonce)
                .map_err(|e| StartError::Other(e.to_string()))?;
            let ct = aead::seal(master.bytes(), &nonce, b"", MASTER_CHECK_PLAINTEXT)
                .map_err(|e| StartError::Other(e.to_string()))?;
            // Replicas starting together on an empty shared store: the first
            // value stored wins and every replica checks against it.
            store.insert_meta(MASTER_CHECK_KEY, &[&nonce[..], &ct].concat())?
        }
    };
    if stored.len() < aead::AEAD_NONCE_LEN {
        return Err(StartError::MasterKeyMismatch);
    }
    let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
    nonce.copy_from_slice(&stored[..aead::AEAD_NONCE_LEN]);
    match aead::open(master.bytes(), &nonce, b"", &stored[aead::AEAD_NONCE_LEN..]) {
        Ok(p) if p.as_slice() == MASTER_CHECK_PLAINTEXT => Ok(()),
        _ => Err(StartError::MasterKeyMismatch),
    }
}

/// A running server.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Set on the first start of an empty deployment: the admin token of the
    /// bootstrap tenant. It is stored only hashed, and written to
    /// [`Bootstrap::file`] unless amnesia.
    pub bootstrap_token: Option<String>,
    pub bootstrap_file: Option<std::path::PathBuf>,
    pub kms: Arc<KmsService>,
    /// The fault-injection switch when `KMS_FAULT_INJECTION` is on.
    pub faults: Option<Arc<crate::backend::faults::Faults>>,
    /// The circuit breaker in front of custody.
    pub breaker: Arc<Breaker>,
    /// The fronts' listeners (connection counts, limits).
    pub grpc_ingress: Arc<Ingress>,
    pub http_ingress: Arc<Ingress>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _opened: Opened,
}

impl Running {
    /// Stop accepting, let in-flight requests finish, and return.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        // every request has been answered: seal the audit log
        self.kms.audit().close().await;
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| StartError::Bind {
        addr,
        msg: e.to_string(),
    })
}

/// Take and verify one attestation (on a blocking thread: the TPM is a
/// device) and record the outcome.
async fn attest_once(backend: &Arc<dyn Backend>, gate: &Arc<crate::service::AttestationGate>) {
    let b = backend.clone();
    let outcome = match tokio::task::spawn_blocking(move || b.attest()).await {
        Ok(Some(Ok(a))) => {
            tracing::debug!(pcr_digest = %hex::encode(&a.pcr_digest), "quote verified");
            Ok(())
        }
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(None) => Err("custody cannot attest".into()),
        Err(e) => Err(format!("attestation task failed: {e}")),
    };
    gate.record(outcome);
}

/// Set the gRPC health status of `ron.kms.v1.Kms`.
async fn report_health(reporter: &tonic_health::server::HealthReporter, ready: bool) {
    type Svc = crate::proto::kms_server::KmsServer<GrpcFront>;
    if ready {
        reporter.set_serving::<Svc>().await;
    } else {
        reporter.set_not_serving::<Svc>().await;
    }
}

/// The name of the bootstrap token's file in the data dir.
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-token";

/// The first start of an empty deployment creates one token with every
/// scope (`kms:operator` included) for the bootstrap tenant, once across
/// replicas racing on one empty store, and writes it to a 0600 file in the
/// data dir (amnesia: memory only; the caller prints it).
async fn bootstrap(
    cfg: &Config,
    store: &Arc<dyn Store>,
    tokens: &Arc<TokenTable>,
) -> Result<Option<Bootstrap>, StartError> {
    if !tokens.is_empty() {
        return Ok(None);
    }
    let (secret, rec) = mint(&NewToken {
        tenant: cfg.bootstrap_tenant.clone(),
        scopes: Scopes::all(),
        description: "bootstrap: every scope; revoke it once operators hold their own tokens"
            .into(),
        created_by: "bootstrap".into(),
        ..NewToken::default()
    })?;
    let (s, t) = (store.clone(), tokens.clone());
    let file = (!cfg.amnesia).then(|| cfg.data_dir.join(BOOTSTRAP_TOKEN_FILE));
    let secret = Zeroizing::new(secret);
    let for_file = secret.clone();
    let target = file.clone();
    let created = tokio::task::spawn_blocking(move || -> Result<bool, StartError> {
        let created = s.insert_bootstrap_token(&rec)?;
        if created {
            if let Some(path) = &target {
                crate::secret_file::write_private(path, format!("{}\n", *for_file).as_bytes())
                    .map_err(|e| StartError::Other(format!("bootstrap token: {e}")))?;
            }
        }
        t.reload()?;
        Ok(created)
    })
    .await
    .map_err(|e| StartError::Other(e.to_string()))??;
    Ok(created.then(|| Bootstrap {
        token: secret.to_string(),
        file,
    }))
}

/// What the first start created.
pub struct Bootstrap {
    /// The secret: for amnesia mode and `--print-bootstrap-token` to print,
    /// and for in-process callers (tests, benchmarks). Never logged.
    pub token: String,
    /// Where it was written (0600), unless amnesia.
    pub file: Option<std::path::PathBuf>,
}

/// Open everything and start serving gRPC and HTTP.
pub async fn start(cfg: &Config) -> Result<Running, StartError> {
    let cfg2 = cfg.clone();
    let opened = tokio::task::spawn_blocking(move || open_data_dir(&cfg2))
        .await
        .map_err(|e| StartError::Other(e.to_string()))??;
    let store = opened.store.clone();
    let tokens = Arc::new(TokenTable::load(store.clone())?);
    let bootstrap_token = bootstrap(cfg, &store, &tokens).await?;
    let mut backend: Arc<dyn Backend> = opened.backend.clone();
    let faults = cfg.faults.injection.then(|| {
        let f = Arc::new(crate::backend::faults::Faults::default());
        backend = Arc::new(crate::backend::faults::FaultyBackend::new(
            backend.clone(),
            f.clone(),
        ));
        tracing::warn!("fault injection is on: custody can be switched off (chaos drills)");
        if let Some(l) = cfg.faults.latency {
            f.set_latency(l);
        }
        f
    });
    crate::telemetry::init();
    let breaker = Arc::new(Breaker::new(backend, BreakerSettings::default()));
    let backend: Arc<dyn Backend> = breaker.clone();
    // The audit key's checkpoint signatures use custody without the fault
    // switch: drills take the request path's custody away, not the audit log.
    let audit = audit_keys::open_audit(cfg, store.clone(), opened.backend.clone()).await?;
    metrics::counter!("kms_audit_integrity_failed_total").increment(audit.integrity_failures());
    let kms = Arc::new(KmsService::new(
        store,
        backend,
        opened.provider.clone(),
        tokens,
        cfg.service_options(),
        audit,
    )?);
    kms.follow_store()?;

    // Attestation (a TPM): once before serving, so a required attestation
    // is decided before the first request, then on the configured interval.
    let (tx, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let BackendKind::Tpm(t) = &cfg.backend {
        attest_once(kms.backend(), kms.attestation()).await;
        let (b, gate, every) = (
            kms.backend().clone(),
            kms.attestation().clone(),
            t.attestation_interval,
        );
        let mut stop = rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                attest_once(&b, &gate).await;
            }
        }));
    }

    // Tokens follow the store: other writers, expiries, last-used times.
    let upkeep_kms = kms.clone();
    let mut upkeep_stop = rx.clone();
    tasks.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round = 0u64;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = upkeep_stop.wait_for(|s| *s) => break,
            }
            round += 1;
            upkeep_kms.maintain_tokens(round.is_multiple_of(30)).await;
            upkeep_kms.flush_refusals(false).await;
        }
        upkeep_kms.flush_refusals(true).await;
        let table = upkeep_kms.tokens().clone();
        let _ = tokio::task::spawn_blocking(move || table.flush_last_used()).await;
    }));

    let grpc_listener = bind(cfg.grpc_addr).await?;
    let http_listener = bind(cfg.http_addr).await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|e| StartError::Other(e.to_string()))?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|e| StartError::Other(e.to_string()))?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    report_health(&health_reporter, kms.ready()).await;
    // Reflection as both `grpc.reflection.v1` and the older `v1alpha`, which
    // many clients still speak (Python's grpcio-reflection among them).
    let reflecting = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_err = |e| StartError::Other(format!("gRPC reflection: {e}"));
    let reflection = reflecting().build_v1().map_err(reflection_err)?;
    let reflection_v1alpha = reflecting().build_v1alpha().map_err(reflection_err)?;
    // gRPC health follows /readyz, checked every second.
    let health_kms = kms.clone();
    let mut health_rx = rx.clone();
    let health_task = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = health_rx.wait_for(|s| *s) => break,
            }
            let k = health_kms.clone();
            let ready = tokio::task::spawn_blocking(move || k.ready())
                .await
                .unwrap_or(false);
            report_health(&health_reporter, ready).await;
        }
    });
    // Ingress: both fronts accept through our own loop (connection cap,
    // first-request and idle deadlines, TLS), one per front.
    let (grpc_tls, http_tls, mtls) = match &cfg.tls {
        Some(t) => {
            use crate::ingress::tls::{client_verifier, server_config_with};
            let tls_err = |e: crate::ingress::tls::TlsError| StartError::Other(format!("tls: {e}"));
            // One verifier for both fronts: one watcher of the CRL file.
            let verifier = client_verifier(t).map_err(tls_err)?;
            (
                Some(server_config_with(t, &[b"h2"], verifier.clone()).map_err(tls_err)?),
                Some(server_config_with(t, &[b"h2", b"http/1.1"], verifier).map_err(tls_err)?),
                t.mtls.clone(),
            )
        }
        None => {
            for addr in [grpc_addr, http_addr] {
                if !addr.ip().is_loopback() {
                    tracing::warn!(%addr, "serving plain text on a non-loopback address; set KMS_TLS_CERT_FILE and KMS_TLS_KEY_FILE");
                }
            }
            (None, None, None)
        }
    };
    let limits = cfg.ingress.clone();
    let grpc_ingress = Arc::new(Ingress::new(limits.clone(), grpc_tls, mtls.clone()));
    let http_ingress = Arc::new(Ingress::new(limits.clone(), http_tls, mtls));

    let grpc_front = GrpcFront::new(kms.clone()).into_server();
    let grpc_accepted = grpc_ingress.accept(grpc_listener, rx.clone());
    let grpc_edge = GrpcEdge::new(kms.clone());
    let mut grpc_rx = rx.clone();
    let grpc_task = tokio::spawn(async move {
        let res = tonic::transport::Server::builder()
            .max_concurrent_streams(limits.h2_max_streams)
            .http2_max_header_list_size(crate::ingress::MAX_HEADER_BYTES as u32)
            .http2_max_pending_accept_reset_streams(Some(20))
            .layer(grpc_edge)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(grpc_front)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(grpc_accepted),
                async move {
                    let _ = grpc_rx.wait_for(|s| *s).await;
                },
            )
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "gRPC server stopped with an error");
        }
    });

    let mut router = http::router(kms.clone());
    if let Some(mount) = &cfg.transit_mount {
        // transit's routes first: the native router's fallback answers
        // every path it does not know
        router = crate::api::transit::router(kms.clone(), mount).merge(router);
        tracing::info!(mount = %mount, "transit front enabled");
    }
    let http_accepted = http_ingress.accept(http_listener, rx.clone());
    let http_task = tokio::spawn(http_ingress.clone().serve_http(
        http_accepted,
        router,
        rx.clone(),
    ));

    tracing::info!(%grpc_addr, %http_addr, backend = kms.backend().name(), keys = kms.key_count(), "ron-kms serving");
    let (bootstrap_token, bootstrap_file) = match bootstrap_token {
        Some(b) => (Some(b.token), b.file),
        None => (None, None),
    };
    Ok(Running {
        grpc_addr,
        http_addr,
        bootstrap_token,
        bootstrap_file,
        kms,
        faults,
        breaker,
        grpc_ingress,
        http_ingress,
        shutdown: tx,
        tasks: {
            tasks.extend([grpc_task, http_task, health_task]);
            tasks
        },
        _opened: opened,
    })
}

mod audit_keys;
mod tpm;
pub use tpm::{reseal_tpm, Resealed};

#[cfg(test)]
mod tests;
