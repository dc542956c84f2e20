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
use crate::keyring::{self, KeyRecord, KeyRef, Keyring, VersionRecord, VersionState};
use crate::proto;
use crate::store::{OpRecord, Store};

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
    proto::KeyVersion {
        version: v.version,
        kid: rec.kid(v.version),
        state: v.state.as_str().to_string(),
        public_key_pem: if pem { spki::pem(&der) } else { String::new() },
        public_key_der: der,
        created_at_ms: v.created_at_ms,
    }
}

/// (kid, algorithm) of a key for its audit record: the primary version.
fn key_desc(k: Option<&proto::Key>) -> (String, String) {
    k.map(|k| {
        (
            keyring::kid(&k.name, k.primary_version),
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
        allowed: Vec<Algorithm>,
        blocking_threads: usize,
        audit: Arc<AuditLog>,
    ) -> Result<Self> {
        let keyring = Keyring::new(store.load_keys()?);
        Ok(KmsService {
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

    // ----- the audited entry points -------------------------------------
    //
    // Every operation, allowed or refused, appends one audit record and
    // answers only once that record's batch is durable. Operations that
    // change state or use a private key are refused up front while the
    // audit chain is broken; get, list and verify stay available.

    fn refuse_if_audit_broken(&self) -> Result<()> {
        self.audit.integrity().map_err(|e| {
            Error::FailedPrecondition(format!(
                "the audit log failed its integrity check ({e}); operations that change state or use private keys are refused until an operator restores it"
            ))
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn audited<T>(
        &self,
        caller: &Caller,
        op: &'static str,
        key: &str,
        input: Option<&[u8]>,
        writes: bool,
        run: impl std::future::Future<Output = Result<T>>,
        describe: impl Fn(&T) -> (String, String),
    ) -> Result<T> {
        self.audited_inner(caller, op, key, input.map(sha256), writes, run, describe)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn audited_inner<T>(
        &self,
        caller: &Caller,
        op: &'static str,
        key: &str,
        input_sha256: Option<[u8; 32]>,
        writes: bool,
        run: impl std::future::Future<Output = Result<T>>,
        describe: impl Fn(&T) -> (String, String),
    ) -> Result<T> {
        if writes {
            self.refuse_if_audit_broken()?;
        }
        let started = std::time::Instant::now();
        metrics::gauge!("kms_inflight", "op" => op).increment(1.0);
        let r = run.await;
        let (kid, alg, result, reason) = match &r {
            Ok(v) => {
                let (k, a) = describe(v);
                (k, a, "ok".to_string(), String::new())
            }
            Err(e) => (
                key.to_string(),
                String::new(),
                crate::api::error::classify(e).code.to_string(),
                String::new(),
            ),
        };
        let event = Event {
            tenant: caller.tenant.clone(),
            principal: caller.principal.clone(),
            op,
            kid,
            alg,
            result,
            reason,
            request_id: caller.request_id.clone(),
            input_sha256,
        };
        tracing::debug!(
            op,
            tenant = %event.tenant,
            principal = %event.principal,
            kid = %event.kid,
            result = %event.result,
            input_sha256 = %event.input_sha256.map(hex::encode).unwrap_or_default(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "operation"
        );
        let alg_label = event.alg.split(' ').next().unwrap_or("").to_string();
        let result_label = event.result.clone();
        let out = match self.audit.append(event).await {
            Ok(_) => r,
            Err(e) => {
                tracing::error!(request_id = %caller.request_id, error = %e, "audit append failed");
                r.and(Err(Error::Unavailable("audit log unavailable".into())))
            }
        };
        metrics::gauge!("kms_inflight", "op" => op).decrement(1.0);
        metrics::histogram!("kms_latency_seconds", "op" => op, "alg" => alg_label.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("kms_ops_total", "op" => op, "alg" => alg_label, "result" => result_label.clone())
            .increment(1);
        if result_label == "permission_denied" {
            crate::telemetry::reject("forbidden");
        }
        out
    }

    pub async fn create_key(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::CreateKeyRequest,
    ) -> Result<proto::CreateKeyResponse> {
        let key = req.name.clone();
        let run = self.create_key_inner(caller, req);
        self.audited(caller, "create_key", &key, None, true, run, |r| {
            key_desc(r.key.as_ref())
        })
        .await
    }

    pub async fn get_key(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::GetKeyRequest,
    ) -> Result<proto::GetKeyResponse> {
        let key = req.name.clone();
        let run = self.get_key_inner(caller, req);
        self.audited(caller, "get_key", &key, None, false, run, |r| {
            key_desc(r.key.as_ref())
        })
        .await
    }

    pub async fn list_keys(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::ListKeysRequest,
    ) -> Result<proto::ListKeysResponse> {
        let run = self.list_keys_inner(caller, req);
        self.audited(caller, "list_keys", "", None, false, run, |_| {
            (String::new(), String::new())
        })
        .await
    }

    pub async fn rotate_key(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::RotateKeyRequest,
    ) -> Result<proto::RotateKeyResponse> {
        let key = req.name.clone();
        let run = self.rotate_key_inner(caller, req);
        self.audited(caller, "rotate_key", &key, None, true, run, |r| {
            (
                r.kid.clone(),
                r.key
                    .as_ref()
                    .map(|k| k.algorithm.clone())
                    .unwrap_or_default(),
            )
        })
        .await
    }

    pub async fn set_key_version_state(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::SetKeyVersionStateRequest,
    ) -> Result<proto::SetKeyVersionStateResponse> {
        let kid = keyring::kid(&req.name, req.version);
        let op: &'static str = match req.state.as_str() {
            "enabled" => "enable_version",
            "disabled" => "disable_version",
            "destroyed" => "destroy_version",
            _ => "set_version_state",
        };
        let run = self.set_key_version_state_inner(caller, req);
        let k2 = kid.clone();
        self.audited(caller, op, &kid, None, true, run, move |r| {
            (
                k2.clone(),
                r.key
                    .as_ref()
                    .map(|k| k.algorithm.clone())
                    .unwrap_or_default(),
            )
        })
        .await
    }

    pub async fn sign(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::SignRequest,
    ) -> Result<proto::SignResponse> {
        let key = req.key.clone();
        let input = sha256(&req.message);
        let run = self.sign_inner(caller, req);
        self.audited_hashed(caller, "sign", &key, input, true, run, |r| {
            (r.kid.clone(), r.algorithm.clone())
        })
        .await
    }

    pub async fn verify(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::VerifyRequest,
    ) -> Result<proto::VerifyResponse> {
        let key = req.key.clone();
        let input = sha256(&req.message);
        let run = self.verify_inner(caller, req);
        self.audited_hashed(caller, "verify", &key, input, false, run, |r| {
            (r.kid.clone(), format!("{} valid={}", r.algorithm, r.valid))
        })
        .await
    }

    pub async fn wrap(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::WrapRequest,
    ) -> Result<proto::WrapResponse> {
        let key = req.key.clone();
        let input = sha256(&req.plaintext);
        let run = self.wrap_inner(caller, req);
        self.audited_hashed(caller, "wrap", &key, input, true, run, |r| {
            (r.kid.clone(), r.algorithm.clone())
        })
        .await
    }

    pub async fn unwrap(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::UnwrapRequest,
    ) -> Result<proto::UnwrapResponse> {
        let key = req.key.clone();
        let input = sha256(&req.ciphertext);
        let run = self.unwrap_inner(caller, req);
        self.audited_hashed(caller, "unwrap", &key, input, true, run, |r| {
            (r.kid.clone(), String::new())
        })
        .await
    }

    pub async fn generate_data_key(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::GenerateDataKeyRequest,
    ) -> Result<proto::GenerateDataKeyResponse> {
        let key = req.key.clone();
        let run = self.generate_data_key_inner(caller, req);
        self.audited(caller, "generate_data_key", &key, None, true, run, |r| {
            (r.kid.clone(), String::new())
        })
        .await
    }

    /// [`Self::audited`] with the input hash computed by the caller (the
    /// input itself has moved into the operation).
    #[allow(clippy::too_many_arguments)]
    async fn audited_hashed<T>(
        &self,
        caller: &Caller,
        op: &'static str,
        key: &str,
        input_sha256: [u8; 32],
        writes: bool,
        run: impl std::future::Future<Output = Result<T>>,
        describe: impl Fn(&T) -> (String, String),
    ) -> Result<T> {
        self.audited_inner(caller, op, key, Some(input_sha256), writes, run, describe)
            .await
    }

    // ----- admin -------------------------------------------------------

    async fn create_key_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::CreateKeyRequest,
    ) -> Result<proto::CreateKeyResponse> {
        caller.require(Scope::Admin)?;
        keyring::validate_name(&req.name)?;
        let alg = self.parse_algorithm(&req.algorithm)?;
        if !req.purpose.is_empty() {
            let p = Purpose::parse(&req.purpose).ok_or_else(|| {
                Error::InvalidArgument("purpose must be \"sign\" or \"wrap\"".into())
            })?;
            if p != alg.purpose() {
                return Err(Error::InvalidArgument(format!(
                    "algorithm {alg} is for {}, not {}",
                    alg.purpose().as_str(),
                    p.as_str()
                )));
            }
        }
        let op = Self::op_record(
            caller,
            &req.op_id,
            &[b"CreateKey", req.name.as_bytes(), alg.as_str().as_bytes()],
        )?;
        let this = self.clone();
        let tenant = caller.tenant.clone();
        let name = req.name;
        let rec = self
            .mutation(move || {
                if this.prior_op(&op)?.is_some() {
                    return this
                        .keyring
                        .get(&tenant, &name)
                        .ok_or_else(|| Error::NotFound(format!("key {name}")));
                }
                if this.keyring.get(&tenant, &name).is_some() {
                    return Err(Error::AlreadyExists(format!("key {name} already exists")));
                }
                let kid = keyring::kid(&name, 1);
                let g = this.backend.generate(KeyLabel {
                    tenant: &tenant,
                    kid: &kid,
                    algorithm: alg,
                })?;
                let now = now_ms();
                let rec = KeyRecord {
                    tenant: tenant.clone(),
                    name: name.clone(),
                    algorithm: alg,
                    primary_version: 1,
                    created_at_ms: now,
                    versions: vec![VersionRecord {
                        version: 1,
                        state: VersionState::Enabled,
                        public_key: g.public,
                        handle: Some(g.handle),
                        created_at_ms: now,
                    }],
                };
                let op = op.map(|o| OpRecord { result: kid, ..o });
                this.store.create_key(&rec, op.as_ref())?;
                this.keyring.put(rec);
                this.keyring
                    .get(&tenant, &name)
                    .ok_or_else(|| Error::Internal("key vanished after create".into()))
            })
            .await?;
        tracing::info!(request_id = %caller.request_id, tenant = %caller.tenant, principal = %caller.principal, key = %rec.name, algorithm = %rec.algorithm, "key created");
        Ok(proto::CreateKeyResponse {
            key: Some(key_to_proto(&rec, false)),
        })
    }

    async fn get_key_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::GetKeyRequest,
    ) -> Result<proto::GetKeyResponse> {
        caller.require(Scope::Read)?;
        keyring::validate_name(&req.name)?;
        let rec = self
            .keyring
            .get(&caller.tenant, &req.name)
            .ok_or_else(|| Error::NotFound(format!("key {}", req.name)))?;
        Ok(proto::GetKeyResponse {
            key: Some(key_to_proto(&rec, req.pem)),
        })
    }

    async fn list_keys_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::ListKeysRequest,
    ) -> Result<proto::ListKeysResponse> {
        caller.require(Scope::Read)?;
        let size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        } as usize;
        let after = if req.page_token.is_empty() {
            None
        } else {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&req.page_token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|n| keyring::validate_name(n).is_ok())
                .ok_or_else(|| Error::InvalidArgument("page_token is malformed".into()))?;
            Some(raw)
        };
        let snap = self.keyring.snapshot();
        let mut page = snap.page(&caller.tenant, after.as_deref(), size + 1);
        let next_page_token = if page.len() > size {
            page.truncate(size);
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(page.last().map(|k| k.name.as_bytes()).unwrap_or_default())
        } else {
            String::new()
        };
        Ok(proto::ListKeysResponse {
            keys: page.iter().map(|k| key_to_proto(k, false)).collect(),
            next_page_token,
        })
    }

    async fn rotate_key_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::RotateKeyRequest,
    ) -> Result<proto::RotateKeyResponse> {
        caller.require(Scope::Admin)?;
        keyring::validate_name(&req.name)?;
        let op = Self::op_record(caller, &req.op_id, &[b"RotateKey", req.name.as_bytes()])?;
        let this = self.clone();
        let tenant = caller.tenant.clone();
        let name = req.name;
        let (rec, kid) = self
            .mutation(move || {
                let cur = this
                    .keyring
                    .get(&tenant, &name)
                    .ok_or_else(|| Error::NotFound(format!("key {name}")))?;
                if let Some(kid) = this.prior_op(&op)? {
                    return Ok((cur, kid));
                }
                let next = cur.latest_version() + 1;
                let kid = cur.kid(next);
                let g = this.backend.generate(label(&cur, &kid))?;
                let v = VersionRecord {
                    version: next,
                    state: VersionState::Enabled,
                    public_key: g.public,
                    handle: Some(g.handle),
                    created_at_ms: now_ms(),
                };
                let op = op.map(|o| OpRecord {
                    result: kid.clone(),
                    ..o
                });
                this.store.add_version(&tenant, &name, &v, op.as_ref())?;
                let mut rec = (*cur).clone();
                rec.versions.push(v);
                rec.primary_version = next;
                this.keyring.put(rec);
                let rec = this
                    .keyring
                    .get(&tenant, &name)
                    .ok_or_else(|| Error::Internal("key vanished after rotate".into()))?;
                Ok((rec, kid))
            })
            .await?;
        tracing::info!(request_id = %caller.request_id, tenant = %caller.tenant, principal = %caller.principal, kid = %kid, "key rotated");
        Ok(proto::RotateKeyResponse {
            key: Some(key_to_proto(&rec, false)),
            kid,
        })
    }

    async fn set_key_version_state_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::SetKeyVersionStateRequest,
    ) -> Result<proto::SetKeyVersionStateResponse> {
        caller.require(Scope::Admin)?;
        keyring::validate_name(&req.name)?;
        if req.version == 0 {
            return Err(Error::InvalidArgument("version must be >= 1".into()));
        }
        let state = VersionState::parse(&req.state).ok_or_else(|| {
            Error::InvalidArgument("state must be enabled, disabled or destroyed".into())
        })?;
        let op = Self::op_record(
            caller,
            &req.op_id,
            &[
                b"SetKeyVersionState",
                req.name.as_bytes(),
                &req.version.to_be_bytes(),
                state.as_str().as_bytes(),
            ],
        )?;
        let this = self.clone();
        let tenant = caller.tenant.clone();
        let (name, vn) = (req.name, req.version);
        let rec = self
            .mutation(move || {
                let cur = this
                    .keyring
                    .get(&tenant, &name)
                    .ok_or_else(|| Error::NotFound(format!("key {name}")))?;
                if this.prior_op(&op)?.is_some() {
                    return Ok(cur);
                }
                let kid = cur.kid(vn);
                let v = cur
                    .version(vn)
                    .ok_or_else(|| Error::NotFound(format!("key version {kid}")))?;
                if !v.state.can_become(state) {
                    return Err(Error::FailedPrecondition(format!(
                        "{kid} cannot go from {} to {} (allowed: enabled <-> disabled, disabled -> destroyed)",
                        v.state.as_str(),
                        state.as_str()
                    )));
                }
                if v.state == state {
                    return Ok(cur);
                }
                if state == VersionState::Destroyed {
                    if let Some(h) = &v.handle {
                        this.backend.destroy(label(&cur, &kid), h)?;
                    }
                }
                let op = op.map(|o| OpRecord {
                    result: kid.clone(),
                    ..o
                });
                this.store.set_state(&tenant, &name, vn, state, op.as_ref())?;
                let mut rec = (*cur).clone();
                let slot = &mut rec.versions[(vn - 1) as usize];
                slot.state = state;
                if state == VersionState::Destroyed {
                    slot.handle = None;
                }
                this.keyring.put(rec);
                this.keyring
                    .get(&tenant, &name)
                    .ok_or_else(|| Error::Internal("key vanished after state change".into()))
            })
            .await?;
        tracing::info!(request_id = %caller.request_id, tenant = %caller.tenant, principal = %caller.principal, kid = %keyring::kid(&rec.name, vn), state = state.as_str(), "key version state set");
        Ok(proto::SetKeyVersionStateResponse {
            key: Some(key_to_proto(&rec, false)),
        })
    }

    // ----- crypto ------------------------------------------------------

    async fn sign_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::SignRequest,
    ) -> Result<proto::SignResponse> {
        caller.require(Scope::Sign)?;
        let key = KeyRef::parse(&req.key)?;
        let hash = request_hash(&[b"Sign", req.key.as_bytes(), &req.message]);
        if let Some(c) = self.cached(caller, &req.op_id, &hash)? {
            if let CachedAnswer::Sign(r) = &c.answer {
                // A remembered answer is only given while the version that
                // produced it is still enabled.
                self.resolve(caller, &KeyRef::parse(&r.kid)?, Purpose::Sign, "sign")?;
                return Ok(r.clone());
            }
            return Err(Error::AlreadyExists(
                "op_id was used by another operation".into(),
            ));
        }
        let (rec, vn) = self.resolve(caller, &key, Purpose::Sign, "sign")?;
        let kid = rec.kid(vn);
        let signature = if rec.algorithm.private_op_is_heavy() {
            let (this, rec, kid, msg) = (self.clone(), rec.clone(), kid.clone(), req.message);
            self.blocking(move || {
                Ok(this
                    .backend
                    .sign(label(&rec, &kid), handle(&rec, vn)?, &msg)?)
            })
            .await?
        } else {
            self.backend
                .sign(label(&rec, &kid), handle(&rec, vn)?, &req.message)?
        };
        let resp = proto::SignResponse {
            kid,
            algorithm: rec.algorithm.as_str().to_string(),
            signature,
        };
        self.remember(caller, &req.op_id, hash, CachedAnswer::Sign(resp.clone()));
        Ok(resp)
    }

    async fn verify_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::VerifyRequest,
    ) -> Result<proto::VerifyResponse> {
        caller.require(Scope::Verify)?;
        let key = KeyRef::parse(&req.key)?;
        let (rec, vn) = self.resolve(caller, &key, Purpose::Sign, "verify")?;
        let alg = rec.algorithm;
        let public = &rec
            .version(vn)
            .ok_or_else(|| Error::Internal("resolved version missing".into()))?
            .public_key;
        let valid = if alg.verify_is_heavy() {
            let (p, public, msg, sig) = (
                self.provider.clone(),
                public.clone(),
                req.message,
                req.signature,
            );
            self.blocking(move || Ok(p.signer(alg)?.verify(&public, &msg, &sig)))
                .await?
        } else {
            self.provider
                .signer(alg)?
                .verify(public, &req.message, &req.signature)
        };
        Ok(proto::VerifyResponse {
            valid,
            kid: rec.kid(vn),
            algorithm: alg.as_str().to_string(),
        })
    }

    /// Seal `plaintext` into a wrap envelope under `rec` version `vn`.
    fn wrap_bytes(
        &self,
        rec: &KeyRecord,
        vn: u32,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        let kid = rec.kid(vn);
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        random_bytes(&mut nonce)?;
        match rec.algorithm {
            Algorithm::Aes256Gcm => {
                let header = envelope::header(rec.algorithm, &kid, &[]);
                let ad = envelope::associated_data(&header, aad);
                let sealed = self.backend.aead_seal(
                    label(rec, &kid),
                    handle(rec, vn)?,
                    &nonce,
                    &ad,
                    plaintext,
                )?;
                Ok(envelope::assemble(&header, &nonce, &sealed))
            }
            Algorithm::MlKem768 | Algorithm::MlKem1024 => {
                let public = &rec
                    .version(vn)
                    .ok_or_else(|| Error::Internal("resolved version missing".into()))?
                    .public_key;
                let (ct, ss) = self.provider.kem(rec.algorithm)?.encapsulate(public)?;
                let header = envelope::header(rec.algorithm, &kid, &ct);
                let key = envelope::kem_wrap_key(rec.algorithm, &ss);
                let ad = envelope::associated_data(&header, aad);
                let sealed = aead::seal(&key[..], &nonce, &ad, plaintext)?;
                Ok(envelope::assemble(&header, &nonce, &sealed))
            }
            other => Err(Error::Internal(format!("{other} is not a wrap algorithm"))),
        }
    }

    async fn wrap_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::WrapRequest,
    ) -> Result<proto::WrapResponse> {
        caller.require(Scope::Wrap)?;
        let key = KeyRef::parse(&req.key)?;
        if req.plaintext.len() > MAX_WRAP_PLAINTEXT {
            return Err(Error::InvalidArgument(format!(
                "plaintext must be at most {MAX_WRAP_PLAINTEXT} bytes"
            )));
        }
        if req.aad.len() > MAX_AAD {
            return Err(Error::InvalidArgument(format!(
                "aad must be at most {MAX_AAD} bytes"
            )));
        }
        let hash = request_hash(&[b"Wrap", req.key.as_bytes(), &req.plaintext, &req.aad]);
        if let Some(c) = self.cached(caller, &req.op_id, &hash)? {
            if let CachedAnswer::Wrap(r) = &c.answer {
                // A remembered answer is only given while the version that
                // produced it is still enabled.
                self.resolve(caller, &KeyRef::parse(&r.kid)?, Purpose::Wrap, "wrap")?;
                return Ok(r.clone());
            }
            return Err(Error::AlreadyExists(
                "op_id was used by another operation".into(),
            ));
        }
        let (rec, vn) = self.resolve(caller, &key, Purpose::Wrap, "wrap")?;
        let ciphertext = self.wrap_bytes(&rec, vn, &req.plaintext, &req.aad)?;
        let resp = proto::WrapResponse {
            kid: rec.kid(vn),
            algorithm: rec.algorithm.as_str().to_string(),
            ciphertext,
        };
        self.remember(caller, &req.op_id, hash, CachedAnswer::Wrap(resp.clone()));
        Ok(resp)
    }

    async fn unwrap_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::UnwrapRequest,
    ) -> Result<proto::UnwrapResponse> {
        caller.require(Scope::Unwrap)?;
        if req.aad.len() > MAX_AAD {
            return Err(Error::InvalidArgument(format!(
                "aad must be at most {MAX_AAD} bytes"
            )));
        }
        let env =
            envelope::parse(&req.ciphertext).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let named = KeyRef::parse(env.kid)
            .ok()
            .filter(|k| k.version.is_some())
            .ok_or_else(|| {
                Error::InvalidArgument("ciphertext carries a malformed key id".into())
            })?;
        if !req.key.is_empty() {
            let asked = KeyRef::parse(&req.key)?;
            if asked.name != named.name || asked.version.is_some_and(|v| Some(v) != named.version) {
                return Err(Error::InvalidArgument(format!(
                    "ciphertext was wrapped under {}, not {}",
                    env.kid, req.key
                )));
            }
        }
        let (rec, vn) = self.resolve(caller, &named, Purpose::Wrap, "unwrap")?;
        if rec.algorithm != env.algorithm {
            return Err(Error::UnwrapFailed);
        }
        let kid = rec.kid(vn);
        let ad = envelope::associated_data(env.header, &req.aad);
        let plaintext: Zeroizing<Vec<u8>> = match rec.algorithm {
            Algorithm::Aes256Gcm => self.backend.aead_open(
                label(&rec, &kid),
                handle(&rec, vn)?,
                &env.nonce,
                &ad,
                env.sealed,
            )?,
            _ => {
                let (this, rec2, kid2, kem_ct) = (
                    self.clone(),
                    rec.clone(),
                    kid.clone(),
                    env.kem_ciphertext.to_vec(),
                );
                let ss = self
                    .blocking(move || {
                        Ok(this.backend.decapsulate(
                            label(&rec2, &kid2),
                            handle(&rec2, vn)?,
                            &kem_ct,
                        )?)
                    })
                    .await?;
                let key = envelope::kem_wrap_key(rec.algorithm, &ss);
                aead::open(&key[..], &env.nonce, &ad, env.sealed)
                    .map_err(|_| Error::UnwrapFailed)?
            }
        };
        Ok(proto::UnwrapResponse {
            kid,
            plaintext: plaintext.to_vec(),
        })
    }

    async fn generate_data_key_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::GenerateDataKeyRequest,
    ) -> Result<proto::GenerateDataKeyResponse> {
        caller.require(Scope::Wrap)?;
        let key = KeyRef::parse(&req.key)?;
        let len = match req.length {
            0 => 32,
            n @ 16..=64 => n as usize,
            _ => {
                return Err(Error::InvalidArgument(
                    "length must be between 16 and 64 bytes".into(),
                ))
            }
        };
        if req.aad.len() > MAX_AAD {
            return Err(Error::InvalidArgument(format!(
                "aad must be at most {MAX_AAD} bytes"
            )));
        }
        let hash = request_hash(&[
            b"GenerateDataKey",
            req.key.as_bytes(),
            &(len as u32).to_be_bytes(),
            &req.aad,
        ]);
        if let Some(c) = self.cached(caller, &req.op_id, &hash)? {
            if let CachedAnswer::DataKey(r) = &c.answer {
                // A remembered answer is only given while the version that
                // produced it is still enabled.
                self.resolve(caller, &KeyRef::parse(&r.kid)?, Purpose::Wrap, "datakey")?;
                return Ok(r.clone());
            }
            return Err(Error::AlreadyExists(
                "op_id was used by another operation".into(),
            ));
        }
        let (rec, vn) = self.resolve(caller, &key, Purpose::Wrap, "datakey")?;
        let mut plaintext = Zeroizing::new(vec![0u8; len]);
        random_bytes(&mut plaintext)?;
        let ciphertext = self.wrap_bytes(&rec, vn, &plaintext, &req.aad)?;
        let resp = proto::GenerateDataKeyResponse {
            kid: rec.kid(vn),
            plaintext: plaintext.to_vec(),
            ciphertext,
        };
        self.remember(
            caller,
            &req.op_id,
            hash,
            CachedAnswer::DataKey(resp.clone()),
        );
        Ok(resp)
    }

    /// Readiness: each named dependency and whether it answers.
    pub fn readiness(&self) -> Vec<(&'static str, std::result::Result<(), String>)> {
        vec![
            ("backend", self.backend.health().map_err(|e| e.to_string())),
            ("store", self.store.health().map_err(|e| e.to_string())),
            ("audit", self.audit.integrity()),
        ]
    }
}
