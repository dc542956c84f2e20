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
use crate::store::{KeyRecord, VersionRecord, VersionState};
use crate::store::{OpRecord, Store};

mod admin;
mod audited;
mod batch;
pub use batch::MAX_BATCH_ITEMS;
mod crypto_ops;
mod pq;
mod replica;
pub mod verify_cache;

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
pub const OP_CACHE_MAX: u64 = 100_000;

/// A remembered answer to a crypto operation that carried an `op_id`.
enum CachedAnswer {
    Sign(proto::SignResponse),
    Wrap(proto::WrapResponse),
    DataKey(proto::GenerateDataKeyResponse),
}

impl Drop for CachedAnswer {
    fn drop(&mut self) {
        if let CachedAnswer::DataKey(r) = self {
            zeroize::Zeroize::zeroize(&mut r.plaintext);
        }
    }
}

struct Cached {
    request_hash: [u8; 32],
    answer: CachedAnswer,
}

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
    op_cache: moka::sync::Cache<(String, String), Arc<Cached>>,
    audit: Arc<AuditLog>,
    policies: crate::policy::Policies,
    verify_cache: VerifyCache,
    custody: CustodyProbe,
    attestation: Arc<AttestationGate>,
    /// Custody is a serial device: every custody call goes to the
    /// blocking pool (see [`crate::backend::Capabilities::device_bound`]).
    device_bound: bool,
    admission: crate::admission::Admission,
    request_timeout: Duration,
    verify_only_failover: bool,
}

/// One line of `/readyz`.
pub struct Check {
    pub name: &'static str,
    pub outcome: std::result::Result<(), String>,
    /// A failing check that is not required is shown as degraded.
    pub required: bool,
}

/// The service's view of custody attestation: whether it is required, and
/// the outcome of the last attestation (updated at start-up and on the
/// configured interval by the server).
pub struct AttestationGate {
    required: bool,
    ready: std::sync::atomic::AtomicBool,
    /// Why the last attestation failed (for the log and `/readyz`; callers
    /// are told only that attestation is missing).
    detail: std::sync::Mutex<String>,
}

impl AttestationGate {
    pub fn new(required: bool) -> Self {
        metrics::gauge!("kms_attestation_required").set(if required { 1.0 } else { 0.0 });
        AttestationGate {
            required,
            ready: std::sync::atomic::AtomicBool::new(false),
            detail: std::sync::Mutex::new("not attested yet".into()),
        }
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Record one attestation's outcome; exported as `attestation_ready`.
    pub fn record(&self, outcome: std::result::Result<(), String>) {
        let ok = outcome.is_ok();
        let was = self.ready.swap(ok, std::sync::atomic::Ordering::AcqRel);
        metrics::gauge!("attestation_ready").set(if ok { 1.0 } else { 0.0 });
        match outcome {
            Ok(()) => {
                if !was {
                    tracing::info!("attestation verified");
                }
            }
            Err(why) => {
                if was {
                    tracing::warn!(reason = %why, "attestation lost");
                } else {
                    tracing::warn!(reason = %why, "attestation failed");
                }
                *self.detail.lock().unwrap_or_else(|p| p.into_inner()) = why;
            }
        }
    }

    /// `Err` while attestation is required and not verified.
    pub fn check(&self) -> Result<()> {
        if !self.required || self.ready() {
            return Ok(());
        }
        Err(Error::AttestationMissing(
            "custody's last attestation did not verify; private-key operations are refused".into(),
        ))
    }

    fn readiness(&self) -> std::result::Result<(), String> {
        if self.ready() {
            Ok(())
        } else {
            Err(self
                .detail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone())
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

/// Whether custody answers, probed at most every [`CustodyProbe::EVERY`]
/// and updated by every custody call's outcome, so the hot path knows
/// without a device round trip per request.
struct CustodyProbe {
    up: std::sync::atomic::AtomicBool,
    /// Milliseconds since `origin` of the last probe: an atomic, so every
    /// sign and verify reads it without taking a lock.
    last_ms: std::sync::atomic::AtomicU64,
    origin: std::time::Instant,
}

impl CustodyProbe {
    const EVERY: Duration = Duration::from_millis(200);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// SHA-256 over length-prefixed parts: the identity of a request's input.
fn request_hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut buf = Vec::new();
    for p in parts {
        buf.extend_from_slice(&(p.len() as u64).to_be_bytes());
        buf.extend_from_slice(p);
    }
    sha256(&buf)
}

fn validate_op_id(op_id: &str) -> Result<()> {
    if op_id.len() > MAX_OP_ID_LEN || !op_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidArgument(format!(
            "op_id must be at most {MAX_OP_ID_LEN} printable ASCII characters"
        )));
    }
    Ok(())
}

fn version_to_proto(rec: &KeyRecord, v: &VersionRecord, pem: bool) -> proto::KeyVersion {
    let der = spki::encode(rec.algorithm, &v.public_key);
    let components = spki::components(rec.algorithm, &v.public_key)
        .into_iter()
        .map(|(alg, der)| proto::ComponentKey {
            algorithm: alg.to_string(),
            public_key_pem: if pem { spki::pem(&der) } else { String::new() },
            public_key_der: der,
        })
        .collect();
    proto::KeyVersion {
        version: v.version,
        kid: rec.kid(v.version),
        state: v.state.as_str().to_string(),
        public_key_pem: if pem { spki::pem(&der) } else { String::new() },
        public_key_der: der,
        created_at_ms: v.created_at_ms,
        components,
    }
}

/// (kid, algorithm) of a key for its audit record: the primary version.
fn key_desc(k: Option<&proto::Key>) -> (String, String) {
    k.map(|k| {
        (
            crate::store::kid(&k.name, k.primary_version),
            k.algorithm.clone(),
        )
    })
    .unwrap_or_default()
}

/// The client-visible form of a key record.
pub fn key_to_proto(rec: &KeyRecord, pem: bool) -> proto::Key {
    proto::Key {
        name: rec.name.clone(),
        purpose: rec.purpose().as_str().to_string(),
        algorithm: rec.algorithm.as_str().to_string(),
        primary_version: rec.primary_version,
        versions: rec
            .versions
            .iter()
            .map(|v| version_to_proto(rec, v, pem))
            .collect(),
        created_at_ms: rec.created_at_ms,
    }
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
            attestation: Arc::new(AttestationGate::new(opts.attestation_required)),
            device_bound,
            policies,
            verify_cache: VerifyCache::new(opts.verify_cache_max, opts.verify_cache_ttl),
            custody: CustodyProbe {
                up: std::sync::atomic::AtomicBool::new(true),
                last_ms: std::sync::atomic::AtomicU64::new(0),
                origin: std::time::Instant::now(),
            },
            keyring,
            store,
            backend,
            provider,
            tokens,
            allowed,
            blocking: Arc::new(Semaphore::new(blocking_threads.max(1))),
            admin_lock: tokio::sync::Mutex::new(()),
            op_cache: moka::sync::Cache::builder()
                .max_capacity(OP_CACHE_MAX)
                .time_to_live(OP_CACHE_TTL)
                .build(),
            audit,
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
        if !self.allowed.contains(&rec.algorithm) {
            return Err(Error::FailedPrecondition(format!(
                "algorithm {} is not allowed by this deployment",
                rec.algorithm
            )));
        }
        Ok((rec, vn))
    }

    /// For a mutation carrying an `op_id`: the op record to write, or the
    /// earlier result when this is a retry.
    fn prior_op(&self, op: &Option<OpRecord>) -> Result<Option<String>> {
        let Some(op) = op else { return Ok(None) };
        match self.store.find_op(&op.tenant, &op.op_id)? {
            None => Ok(None),
            Some(prev) if prev.request_hash == op.request_hash => Ok(Some(prev.result)),
            Some(_) => Err(Error::AlreadyExists(format!(
                "op_id {:?} was already used with different input",
                op.op_id
            ))),
        }
    }

    fn op_record(caller: &Caller, op_id: &str, parts: &[&[u8]]) -> Result<Option<OpRecord>> {
        if op_id.is_empty() {
            return Ok(None);
        }
        validate_op_id(op_id)?;
        Ok(Some(OpRecord {
            tenant: caller.tenant.clone(),
            op_id: op_id.to_string(),
            request_hash: request_hash(parts),
            result: String::new(),
        }))
    }

    /// In-memory idempotency for crypto operations: `Some(answer)` on a
    /// retry, `AlreadyExists` on reuse with other input.
    fn cached(&self, caller: &Caller, op_id: &str, hash: &[u8; 32]) -> Result<Option<Arc<Cached>>> {
        if op_id.is_empty() {
            return Ok(None);
        }
        validate_op_id(op_id)?;
        match self
            .op_cache
            .get(&(caller.tenant.clone(), op_id.to_string()))
        {
            None => Ok(None),
            Some(c) if &c.request_hash == hash => Ok(Some(c)),
            Some(_) => Err(Error::AlreadyExists(format!(
                "op_id {op_id:?} was already used with different input"
            ))),
        }
    }

    fn remember(&self, caller: &Caller, op_id: &str, request_hash: [u8; 32], answer: CachedAnswer) {
        if !op_id.is_empty() {
            self.op_cache.insert(
                (caller.tenant.clone(), op_id.to_string()),
                Arc::new(Cached {
                    request_hash,
                    answer,
                }),
            );
        }
    }

    /// Whether custody answers: the last known state, re-probed (a cheap
    /// health call) when older than [`CustodyProbe::EVERY`].
    fn custody_up(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = self.custody.origin.elapsed().as_millis() as u64;
        let last = self.custody.last_ms.load(Ordering::Relaxed);
        // one caller wins the probe; the others use the last known state
        let due = now.saturating_sub(last) >= CustodyProbe::EVERY.as_millis() as u64
            && self
                .custody
                .last_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if due {
            // a busy device is a live one
            let up = !matches!(
                self.backend.health(),
                Err(crate::backend::BackendError::Unavailable(_))
            );
            self.custody.up.store(up, Ordering::Release);
        }
        self.custody.up.load(Ordering::Acquire)
    }

    /// Record a custody call's outcome: an `Unavailable` marks custody down
    /// at once, a success marks it up.
    fn custody_saw<T>(&self, r: &std::result::Result<T, crate::backend::BackendError>) {
        use std::sync::atomic::Ordering;
        match r {
            Ok(_) => self.custody.up.store(true, Ordering::Release),
            Err(crate::backend::BackendError::Unavailable(_)) => {
                self.custody.up.store(false, Ordering::Release)
            }
            Err(_) => {}
        }
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

    /// Readiness: each named dependency and whether it answers; with
    /// attestation required, whether it is verified. A shared store that is
    /// away is reported but does not make the replica unready: sign, verify,
    /// wrap and unwrap go on from the snapshot (mutations fail fast), and a
    /// load balancer that dropped every replica would stop those too.
    pub fn readiness(&self) -> Vec<Check> {
        let check = |name, outcome| Check {
            name,
            outcome,
            required: true,
        };
        let mut r = vec![
            check(
                "backend",
                match self.backend.health() {
                    Ok(()) | Err(crate::backend::BackendError::Busy(_)) => Ok(()),
                    Err(e) => Err(e.to_string()),
                },
            ),
            Check {
                name: "store",
                outcome: self.store.health().map_err(|e| e.to_string()),
                required: !self.store.shared(),
            },
            check("audit", self.audit.integrity()),
        ];
        if self.attestation.required() {
            r.push(check("attestation", self.attestation.readiness()));
        }
        r
    }

    /// Whether every required dependency answers.
    pub fn ready(&self) -> bool {
        self.readiness()
            .iter()
            .all(|c| c.outcome.is_ok() || !c.required)
    }

    /// The attestation state the server updates.
    pub fn attestation(&self) -> &Arc<AttestationGate> {
        &self.attestation
    }

    /// Whether a custody call for `alg` runs on the blocking pool: when the
    /// algorithm is CPU-heavy, or custody is a serial device.
    fn offload(&self, alg: Algorithm) -> bool {
        alg.private_op_is_heavy() || self.device_bound
    }
}
