//! Every operation of ron-kms, implemented once. Both fronts (gRPC and HTTP)
//! authenticate, decode into the generated request messages, call one method
//! here and encode the result; no business logic lives in a front.
//!
//! Threading: private-key operations whose CPU cost exceeds ~50 µs (see
//! [`Algorithm::private_op_is_heavy`]) and every store write run on tokio's
//! blocking threads, at most `blocking_threads` at once; cheap ones run
//! inline. Mutations are serialised by one mutex held on a blocking thread,
//! write the store first and only then swap the in-memory snapshot, so the
//! hot path never observes a state the store does not hold.
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::audit::{AuditLog, Event};
use crate::auth::{Caller, Scope, TokenTable};
use crate::backend::{Backend, KeyLabel};
use crate::crypto::{aead, envelope, random_bytes, sha256, spki, Algorithm, Provider, Purpose};
use crate::error::{Error, Result};
use crate::keyring::{self, KeyRef, Keyring};
use crate::proto;
use crate::store::{KeyRecord, KeySettings, VersionRecord, VersionState};
use crate::store::{OpRecord, Store};

// by role: every call's admission and audit; key management; signing;
// wrapping; the PQ policy; batches; health; idempotency; replication
mod audit_input;
mod batch;
mod calls;
mod health;
mod idempotency;
mod jws;
mod keys;
mod mac;
mod op_cache;
mod policy;
mod replica;
mod sign;
pub mod strangers;
mod tokens;
pub mod verify_cache;
mod wrap;

pub use batch::MAX_BATCH_ITEMS;
use health::CustodyProbe;
pub use health::{AttestationGate, Check};
use idempotency::{request_hash, CachedAnswer};
pub use keys::key_to_proto;
use verify_cache::VerifyCache;

/// Largest plaintext Wrap accepts.
pub const MAX_WRAP_PLAINTEXT: usize = 8 * 1024;
/// Largest caller AAD accepted by Wrap, Unwrap and GenerateDataKey.
pub const MAX_AAD: usize = 8 * 1024;
pub const MAX_OP_ID_LEN: usize = 128;
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// How long a crypto operation's `op_id` answer is remembered (in memory).
pub const OP_CACHE_TTL: Duration = Duration::from_secs(600);
pub use op_cache::{
    DEFAULT_TENANT_BYTES as DEFAULT_OP_CACHE_TENANT_BYTES,
    DEFAULT_TOTAL_BYTES as DEFAULT_OP_CACHE_TOTAL_BYTES,
};

pub struct KmsService {
    keyring: Keyring,
    store: Arc<dyn Store>,
    backend: Arc<dyn Backend>,
    provider: Arc<Provider>,
    tokens: Arc<TokenTable>,
    allowed: Vec<Algorithm>,
    blocking: Arc<Semaphore>,
    /// Serialises mutations. Taken in async context before a mutation gets
    /// its blocking thread, so a burst of admin calls waits here instead of
    /// occupying the crypto pool.
    admin_lock: tokio::sync::Mutex<()>,
    op_cache: op_cache::OpCache,
    audit: Arc<AuditLog>,
    policies: crate::policy::Policies,
    verify_cache: VerifyCache,
    /// The JWKS answers, per tenant, with the keyring generation they were
    /// built at (docs/jose.md).
    jwks_cache: moka::sync::Cache<String, Arc<jws::Jwks>>,
    custody: CustodyProbe,
    attestation: Arc<AttestationGate>,
    /// Custody is a serial device: every custody call goes to the
    /// blocking pool (see [`crate::backend::Capabilities::device_bound`]).
    device_bound: bool,
    admission: crate::admission::Admission,
    request_timeout: Duration,
    verify_only_failover: bool,
    quotas: Quotas,
    strangers: strangers::Strangers,
}

/// Default of [`Quotas::keys_per_tenant`].
pub const DEFAULT_MAX_KEYS_PER_TENANT: u64 = 250_000;
/// Default of [`Quotas::versions_per_key`].
pub const DEFAULT_MAX_VERSIONS_PER_KEY: u64 = 10_000;

/// Per-tenant limits (`KMS_MAX_KEYS_PER_TENANT`, `KMS_MAX_VERSIONS_PER_KEY`).
/// Checked against this replica's view under its mutation lock; replicas
/// creating keys for one tenant at the same moment can pass a limit by the
/// few they race with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    pub keys_per_tenant: u64,
    pub versions_per_key: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            keys_per_tenant: DEFAULT_MAX_KEYS_PER_TENANT,
            versions_per_key: DEFAULT_MAX_VERSIONS_PER_KEY,
        }
    }
}

/// What the service was configured with beyond its parts.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    pub allowed: Vec<Algorithm>,
    pub blocking_threads: usize,
    pub pq_default: crate::policy::PqPolicy,
    pub pq_tenants: std::collections::BTreeMap<String, crate::policy::PqPolicy>,
    pub pq_rollback: crate::policy::RollbackRule,
    pub verify_cache_max: u64,
    pub verify_cache_ttl: Duration,
    /// Quotas: keys a tenant may hold, versions a key may have.
    pub quotas: Quotas,
    /// Failed authentications a source address may make per second, and
    /// its burst, before it is shed (`KMS_AUTH_FAILURES_PER_SEC`,
    /// `KMS_AUTH_FAILURE_BURST`).
    pub auth_failures_per_sec: f64,
    pub auth_failure_burst: f64,
    /// Byte budget of one tenant's remembered `op_id` answers.
    pub op_cache_tenant_bytes: u64,
    /// Byte budget of all tenants' remembered `op_id` answers.
    pub op_cache_total_bytes: u64,
    /// Refuse private-key operations while custody's attestation is not
    /// verified (`KMS_ATTESTATION_REQUIRED`).
    pub attestation_required: bool,
    pub admission: crate::admission::AdmissionConfig,
    /// Longest a request may take on either front (`KMS_REQUEST_TIMEOUT_MS`).
    pub request_timeout: Duration,
    /// `KMS_FAILOVER=verify-only`: verify from the snapshot while custody
    /// is down.
    pub verify_only_failover: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn label<'a>(rec: &'a KeyRecord, kid: &'a str) -> KeyLabel<'a> {
    KeyLabel {
        tenant: &rec.tenant,
        kid,
        algorithm: rec.algorithm,
    }
}

fn handle(rec: &KeyRecord, version: u32) -> Result<&[u8]> {
    rec.version(version)
        .and_then(|v| v.handle.as_deref())
        .ok_or_else(|| Error::Internal(format!("{} has no custody handle", rec.kid(version))))
}

impl KmsService {
    pub fn new(
        store: Arc<dyn Store>,
        backend: Arc<dyn Backend>,
        provider: Arc<Provider>,
        tokens: Arc<TokenTable>,
        opts: ServiceOptions,
        audit: Arc<AuditLog>,
    ) -> Result<Self> {
        let keyring = Keyring::new(store.load_keys()?);
        let policies = crate::policy::Policies::load(
            store.clone(),
            opts.pq_default,
            opts.pq_tenants,
            opts.pq_rollback,
        )
        .map_err(Error::Internal)?;
        let allowed = opts.allowed;
        let blocking_threads = opts.blocking_threads;
        let device_bound = backend.capabilities().device_bound;
        Ok(KmsService {
            admission: crate::admission::Admission::new(opts.admission),
            request_timeout: opts.request_timeout,
            verify_only_failover: opts.verify_only_failover,
            quotas: opts.quotas,
            attestation: Arc::new(AttestationGate::new(opts.attestation_required)),
            device_bound,
            policies,
            verify_cache: VerifyCache::new(opts.verify_cache_max, opts.verify_cache_ttl),
            jwks_cache: moka::sync::Cache::new(4096),
            custody: CustodyProbe::new(),
            keyring,
            store,
            backend,
            provider,
            tokens,
            allowed,
            blocking: Arc::new(Semaphore::new(blocking_threads.max(1))),
            admin_lock: tokio::sync::Mutex::new(()),
            op_cache: op_cache::OpCache::new(
                opts.op_cache_tenant_bytes,
                opts.op_cache_total_bytes,
                OP_CACHE_TTL,
            ),
            audit,
            strangers: strangers::Strangers::new(
                opts.auth_failures_per_sec,
                opts.auth_failure_burst,
                strangers::INTERVAL,
            ),
        })
    }

    /// Admission control: per-op capacity, tenant fair share, rate caps.
    pub fn admission(&self) -> &crate::admission::Admission {
        &self.admission
    }

    /// The request timeout both fronts apply.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    pub fn tokens(&self) -> &Arc<TokenTable> {
        &self.tokens
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn key_count(&self) -> usize {
        self.keyring.snapshot().len()
    }

    /// Run `f` on the bounded blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = self
            .blocking
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("shutting down".into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
    }

    /// Run one mutation: serialised with every other mutation, on its own
    /// blocking thread (store writes fsync; key generation may be slow).
    async fn mutation<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _g = self.admin_lock.lock().await;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Internal(format!("mutation task failed: {e}")))?
    }

    fn parse_algorithm(&self, s: &str) -> Result<Algorithm> {
        Algorithm::parse(s)
            .filter(|a| self.allowed.contains(a))
            .ok_or_else(|| Error::UnknownAlgorithm(s.to_string()))
    }

    /// Find an enabled version of the caller's key fit for `need`.
    fn resolve(
        &self,
        caller: &Caller,
        key: &KeyRef,
        need: Purpose,
        op: &'static str,
    ) -> Result<(Arc<KeyRecord>, u32)> {
        let rec = self
            .keyring
            .get(&caller.tenant, &key.name)
            .filter(|_| caller.may_use(&key.name))
            .ok_or_else(|| Error::NotFound(format!("key {}", key.name)))?;
        let vn = key.version.unwrap_or(rec.primary_version);
        let v = rec
            .version(vn)
            .ok_or_else(|| Error::NotFound(format!("key version {}", rec.kid(vn))))?;
        if rec.purpose() != need {
            return Err(Error::WrongPurpose {
                kid: rec.kid(vn),
                purpose: rec.purpose().as_str(),
                op,
                needed: need.as_str(),
            });
        }
        if v.state != VersionState::Enabled {
            return Err(Error::VersionNotEnabled {
                kid: rec.kid(vn),
                state: v.state.as_str(),
            });
        }
        // what makes something new, or uses what an older version made
        let produces = matches!(op, "sign" | "wrap" | "datakey" | "mac");
        let floor = rec.settings.floor(produces);
        if vn < floor {
            let which = if produces && rec.settings.min_encryption_version == floor {
                "min_encryption_version"
            } else {
                "min_decryption_version"
            };
            return Err(Error::FailedPrecondition(format!(
                "{} is below the key's {which} ({floor})",
                rec.kid(vn)
            )));
        }
        if !self.allowed.contains(&rec.algorithm) {
            return Err(Error::FailedPrecondition(format!(
                "algorithm {} is not allowed by this deployment",
                rec.algorithm
            )));
        }
        Ok((rec, vn))
    }

    /// The algorithm of one of the caller's keys; `None` when the caller
    /// has no such key (missing, another tenant's, outside its key
    /// patterns). For a front that must pick an encoding before it calls
    /// an operation; the operation itself is what is scoped and audited.
    pub fn key_algorithm(&self, caller: &Caller, name: &str) -> Option<Algorithm> {
        self.keyring
            .get(&caller.tenant, name)
            .filter(|_| caller.may_use(name))
            .map(|r| r.algorithm)
    }

    /// The raw public key of one of the caller's key versions (`name#vN`),
    /// as the provider takes it; for benchmarks that compare against the
    /// raw algorithm.
    pub fn public_key_of(&self, caller: &Caller, kid: &str) -> Result<Vec<u8>> {
        let key = KeyRef::parse(kid)?;
        let rec = self
            .keyring
            .get(&caller.tenant, &key.name)
            .ok_or_else(|| Error::NotFound(format!("key {}", key.name)))?;
        let vn = key.version.unwrap_or(rec.primary_version);
        rec.version(vn)
            .map(|v| v.public_key.clone())
            .ok_or_else(|| Error::NotFound(format!("key version {kid}")))
    }

    /// The verify cache (for tests and benches).
    pub fn verify_cache(&self) -> &VerifyCache {
        &self.verify_cache
    }

    /// Whether a custody call for `alg` runs on the blocking pool: when the
    /// algorithm is CPU-heavy, or custody is a serial device.
    fn offload(&self, alg: Algorithm) -> bool {
        alg.private_op_is_heavy() || self.device_bound
    }

    /// Before a private- or secret-key operation: the attestation holds,
    /// and custody is up (fail fast: no queueing for the blocking pool
    /// behind a dead device).
    fn custody_ready(&self) -> Result<()> {
        self.attestation.check()?;
        if !self.custody_up() {
            return Err(Error::Unavailable(format!(
                "custody ({}) is unavailable",
                self.backend.name()
            )));
        }
        Ok(())
    }

    /// Run `op` on custody with `rec` version `vn` (`kid`): on the bounded
    /// blocking pool when the algorithm is heavy or the device slow
    /// ([`Self::offload`]), else inline; the custody probe sees the outcome.
    async fn in_custody<T, F>(
        self: &Arc<Self>,
        rec: &Arc<KeyRecord>,
        vn: u32,
        kid: &str,
        op: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(
                &dyn Backend,
                KeyLabel<'_>,
                &[u8],
            ) -> std::result::Result<T, crate::backend::BackendError>
            + Send
            + 'static,
    {
        let run = move |this: &KmsService, rec: &KeyRecord, kid: &str| -> Result<T> {
            let r = op(this.backend.as_ref(), label(rec, kid), handle(rec, vn)?);
            this.custody_saw(&r);
            Ok(r?)
        };
        if self.offload(rec.algorithm) {
            let (this, rec, kid) = (self.clone(), rec.clone(), kid.to_string());
            self.blocking(move || run(&this, &rec, &kid)).await
        } else {
            run(self, rec, kid)
        }
    }
}
