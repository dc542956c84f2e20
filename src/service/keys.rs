//! Key management: create, get, list, rotate, version state, and the
//! keys' client-visible form. Mutations are
//! serialised (`KmsService::mutation`), write the store first and only then
//! swap the in-memory snapshot.
use super::calls::Call;
use super::replica::{Settled, ROTATE_ATTEMPTS};
use super::*;
use crate::ops::Method;

impl KmsService {
    // ----- admin -------------------------------------------------------

    pub(super) async fn create_key_inner(
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
        if req.published {
            publishable(alg)?;
        }
        let published: &[u8] = if req.published { b"published" } else { b"" };
        let op = Self::op_record(
            caller,
            &req.op_id,
            &[
                b"CreateKey",
                req.name.as_bytes(),
                alg.as_str().as_bytes(),
                published,
            ],
        )?;
        let settings = KeySettings {
            published: req.published,
            ..KeySettings::default()
        };
        let this = self.clone();
        let tenant = caller.tenant.clone();
        let name = req.name;
        let rec = self
            .mutation(move || {
                // Read, then check the op_id, then (for a retry) read again:
                // the key and its op_id commit together, so a replica that
                // answers with another replica's result shows what it did.
                let existing = this.fresh(&tenant, &name)?;
                if this.prior_op(&op)?.is_some() {
                    return this
                        .fresh(&tenant, &name)?
                        .ok_or_else(|| Error::NotFound(format!("key {name}")));
                }
                if existing.is_some() {
                    return Err(Error::AlreadyExists(format!("key {name} already exists")));
                }
                let held = this.keyring.snapshot().tenant_len(&tenant) as u64;
                if held >= this.quotas.keys_per_tenant {
                    return Err(Error::ResourceExhausted(format!(
                        "the tenant holds {held} keys, its limit (max_keys_per_tenant = {})",
                        this.quotas.keys_per_tenant
                    )));
                }
                let kid = crate::store::kid(&name, 1);
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
                    settings,
                    versions: vec![VersionRecord {
                        version: 1,
                        state: VersionState::Enabled,
                        public_key: g.public,
                        handle: Some(g.handle),
                        created_at_ms: now,
                    }],
                };
                let op = op.map(|o| OpRecord {
                    result: kid.clone(),
                    ..o
                });
                let written = this.store.create_key(&rec, op.as_ref());
                let handle = rec.versions[0].handle.as_deref().unwrap_or_default();
                match this.settle(written, &op, &tenant, &name, || {
                    this.discard(&tenant, &kid, alg, handle)
                })? {
                    Settled::Written => Ok(this.keyring.put(rec)),
                    Settled::Prior(_) | Settled::Retry => this
                        .keyring
                        .get(&tenant, &name)
                        .ok_or_else(|| Error::NotFound(format!("key {name}"))),
                }
            })
            .await?;
        tracing::info!(request_id = %caller.request_id, tenant = %caller.tenant, principal = %caller.principal, key = %rec.name, algorithm = %rec.algorithm, "key created");
        Ok(proto::CreateKeyResponse {
            key: Some(key_to_proto(&rec, false)),
        })
    }

    pub(super) async fn get_key_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::GetKeyRequest,
    ) -> Result<proto::GetKeyResponse> {
        caller.require(Scope::Read)?;
        keyring::validate_name(&req.name)?;
        let rec = self
            .keyring
            .get(&caller.tenant, &req.name)
            .filter(|_| caller.may_use(&req.name))
            .ok_or_else(|| Error::NotFound(format!("key {}", req.name)))?;
        Ok(proto::GetKeyResponse {
            key: Some(key_to_proto(&rec, req.pem)),
        })
    }

    pub(super) async fn list_keys_inner(
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
        let mut page = snap.page(&caller.tenant, after.as_deref(), size + 1, |name| {
            caller.may_use(name)
        });
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

    pub(super) async fn rotate_key_inner(
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
                for _ in 0..ROTATE_ATTEMPTS {
                    let cur = this
                        .fresh(&tenant, &name)?
                        .ok_or_else(|| Error::NotFound(format!("key {name}")))?;
                    if let Some(kid) = this.prior_op(&op)? {
                        return Ok((this.fresh(&tenant, &name)?.unwrap_or(cur), kid));
                    }
                    if cur.versions.len() as u64 >= this.quotas.versions_per_key {
                        return Err(Error::ResourceExhausted(format!(
                            "key {name} has {} versions, its limit (max_versions_per_key = {})",
                            cur.versions.len(),
                            this.quotas.versions_per_key
                        )));
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
                    let op = op.clone().map(|o| OpRecord {
                        result: kid.clone(),
                        ..o
                    });
                    let written = this.store.add_version(&tenant, &name, &v, op.as_ref());
                    let handle = v.handle.as_deref().unwrap_or_default();
                    match this.settle(written, &op, &tenant, &name, || {
                        this.discard(&tenant, &kid, cur.algorithm, handle)
                    })? {
                        Settled::Written => {}
                        Settled::Prior(kid) => {
                            let rec = this.keyring.get(&tenant, &name).unwrap_or(cur);
                            return Ok((rec, kid));
                        }
                        Settled::Retry => continue,
                    }
                    let mut rec = (*cur).clone();
                    rec.versions.push(v);
                    rec.primary_version = next;
                    this.verify_cache
                        .invalidate(&tenant, rec.versions.iter().map(|v| rec.kid(v.version)));
                    return Ok((this.keyring.put(rec), kid));
                }
                Err(Error::Unavailable(format!(
                    "key {name} is being rotated concurrently on other replicas; retry"
                )))
            })
            .await?;
        tracing::info!(request_id = %caller.request_id, tenant = %caller.tenant, principal = %caller.principal, kid = %kid, "key rotated");
        Ok(proto::RotateKeyResponse {
            key: Some(key_to_proto(&rec, false)),
            kid,
        })
    }

    pub(super) async fn set_key_version_state_inner(
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
                    .fresh(&tenant, &name)?
                    .ok_or_else(|| Error::NotFound(format!("key {name}")))?;
                if this.prior_op(&op)?.is_some() {
                    return Ok(this.fresh(&tenant, &name)?.unwrap_or(cur));
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
                let written = this.store.set_state(&tenant, &name, vn, state, op.as_ref());
                match this.settle(written, &op, &tenant, &name, || {})? {
                    Settled::Written => {}
                    Settled::Prior(_) | Settled::Retry => {
                        return Ok(this.keyring.get(&tenant, &name).unwrap_or(cur));
                    }
                }
                let mut rec = (*cur).clone();
                let slot = &mut rec.versions[(vn - 1) as usize];
                slot.state = state;
                if state == VersionState::Destroyed {
                    slot.handle = None;
                }
                this.verify_cache
                    .invalidate(&tenant, rec.versions.iter().map(|v| rec.kid(v.version)));
                Ok(this.keyring.put(rec))
            })
            .await?;
        tracing::info!(request_id = %caller.request_id, tenant = %caller.tenant, principal = %caller.principal, kid = %crate::store::kid(&rec.name, vn), state = state.as_str(), "key version state set");
        Ok(proto::SetKeyVersionStateResponse {
            key: Some(key_to_proto(&rec, false)),
        })
    }
}

/// Only keys with a JWK form may be published in the JWKS (docs/jose.md).
fn publishable(alg: Algorithm) -> Result<()> {
    if crate::crypto::jose::jws_alg(alg).is_none() {
        return Err(Error::InvalidArgument(format!(
            "field published: {alg} keys have no JWK form; ed25519, ecdsa-p256 and ml-dsa-44/65/87 keys do"
        )));
    }
    Ok(())
}

/// Checks a key's new settings against its versions (docs/api.md, "Key
/// settings").
fn check_settings(rec: &KeyRecord, s: &KeySettings) -> Result<()> {
    if s.published && !rec.settings.published {
        publishable(rec.algorithm)?;
    }
    let latest = rec.latest_version();
    if s.min_decryption_version > latest {
        return Err(Error::InvalidArgument(format!(
            "min_decryption_version {} is above the latest version ({latest})",
            s.min_decryption_version
        )));
    }
    if s.min_encryption_version != 0
        && (s.min_encryption_version > latest
            || s.min_encryption_version < s.min_decryption_version)
    {
        return Err(Error::InvalidArgument(format!(
            "min_encryption_version must be 0 or from min_decryption_version ({}) to the latest version ({latest})",
            s.min_decryption_version
        )));
    }
    Ok(())
}

impl KmsService {
    pub(super) async fn update_key_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::UpdateKeyRequest,
    ) -> Result<proto::UpdateKeyResponse> {
        caller.require(Scope::Admin)?;
        keyring::validate_name(&req.name)?;
        let enc = |v: Option<u32>| v.map_or_else(|| b"-".to_vec(), |v| v.to_be_bytes().to_vec());
        let op = Self::op_record(
            caller,
            &req.op_id,
            &[
                b"UpdateKey",
                req.name.as_bytes(),
                &enc(req.min_decryption_version),
                &enc(req.min_encryption_version),
                &enc(req.deletion_allowed.map(u32::from)),
                &enc(req.published.map(u32::from)),
            ],
        )?;
        let this = self.clone();
        let tenant = caller.tenant.clone();
        let name = req.name.clone();
        let rec = self
            .mutation(move || {
                // a write that lost a race with another replica's change to
                // the same key is done again on what that replica wrote
                for _ in 0..ROTATE_ATTEMPTS {
                    let cur = this
                        .fresh(&tenant, &name)?
                        .ok_or_else(|| Error::NotFound(format!("key {name}")))?;
                    if this.prior_op(&op)?.is_some() {
                        return Ok(this.fresh(&tenant, &name)?.unwrap_or(cur));
                    }
                    let mut next = cur.settings;
                    if let Some(v) = req.min_decryption_version {
                        next.min_decryption_version = v;
                    }
                    if let Some(v) = req.min_encryption_version {
                        next.min_encryption_version = v;
                    }
                    if let Some(v) = req.deletion_allowed {
                        next.deletion_allowed = v;
                    }
                    if let Some(v) = req.published {
                        next.published = v;
                    }
                    check_settings(&cur, &next)?;
                    if next == cur.settings && op.is_none() {
                        return Ok(cur);
                    }
                    let op = op.clone().map(|o| OpRecord {
                        result: name.clone(),
                        ..o
                    });
                    let written =
                        this.store
                            .set_settings(&tenant, &name, &cur.settings, &next, op.as_ref());
                    match this.settle(written, &op, &tenant, &name, || {})? {
                        Settled::Written => {}
                        Settled::Prior(_) => {
                            return Ok(this.keyring.get(&tenant, &name).unwrap_or(cur));
                        }
                        Settled::Retry => continue,
                    }
                    let mut rec = (*cur).clone();
                    rec.settings = next;
                    this.verify_cache
                        .invalidate(&tenant, rec.versions.iter().map(|v| rec.kid(v.version)));
                    return Ok(this.keyring.put(rec));
                }
                Err(Error::Unavailable(format!(
                    "key {name} kept changing on other replicas while its settings were written; try again"
                )))
            })
            .await?;
        tracing::info!(request_id = %caller.request_id, tenant = %caller.tenant, principal = %caller.principal, key = %rec.name, min_decryption_version = rec.settings.min_decryption_version, min_encryption_version = rec.settings.min_encryption_version, deletion_allowed = rec.settings.deletion_allowed, published = rec.settings.published, "key settings changed");
        Ok(proto::UpdateKeyResponse {
            key: Some(key_to_proto(&rec, false)),
        })
    }

    pub(super) async fn delete_key_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::DeleteKeyRequest,
    ) -> Result<proto::DeleteKeyResponse> {
        caller.require(Scope::Admin)?;
        keyring::validate_name(&req.name)?;
        let op = Self::op_record(caller, &req.op_id, &[b"DeleteKey", req.name.as_bytes()])?;
        let this = self.clone();
        let tenant = caller.tenant.clone();
        let name = req.name.clone();
        let destroyed = self
            .mutation(move || {
                if let Some(prior) = this.prior_op(&op)? {
                    return Ok(prior.parse::<u32>().unwrap_or(0));
                }
                // Custody first, then the records, if the key still has the
                // versions custody emptied (another replica may rotate
                // meanwhile: then its new version is destroyed too, on the
                // next attempt). A version whose material is gone but whose
                // record stays is marked destroyed, so the store never
                // points at material that no longer exists.
                let mut gone: Vec<Vec<u8>> = Vec::new();
                for _ in 0..ROTATE_ATTEMPTS {
                    let cur = this
                        .fresh(&tenant, &name)?
                        .ok_or_else(|| Error::NotFound(format!("key {name}")))?;
                    if !cur.settings.deletion_allowed {
                        this.mark_destroyed(&cur, &gone);
                        return Err(Error::FailedPrecondition(format!(
                            "key {name} does not allow deletion (set deletion_allowed with UpdateKey first)"
                        )));
                    }
                    for v in &cur.versions {
                        let Some(h) = &v.handle else { continue };
                        if gone.contains(h) {
                            continue;
                        }
                        let kid = cur.kid(v.version);
                        if let Err(e) = this.backend.destroy(label(&cur, &kid), h) {
                            this.mark_destroyed(&cur, &gone);
                            return Err(e.into());
                        }
                        gone.push(h.clone());
                    }
                    let destroyed = gone.len() as u32;
                    let op = op.clone().map(|o| OpRecord {
                        result: destroyed.to_string(),
                        ..o
                    });
                    let written =
                        this.store
                            .delete_key(&tenant, &name, cur.versions.len() as u32, op.as_ref());
                    match this.settle(written, &op, &tenant, &name, || {}) {
                        Ok(Settled::Written) => {
                            this.forget(&tenant, &name);
                            return Ok(destroyed);
                        }
                        Ok(Settled::Prior(r)) => return Ok(r.parse::<u32>().unwrap_or(0)),
                        Ok(Settled::Retry) => continue,
                        Err(e) => {
                            this.mark_destroyed(&cur, &gone);
                            return Err(e);
                        }
                    }
                }
                if let Some(cur) = this.fresh(&tenant, &name)? {
                    this.mark_destroyed(&cur, &gone);
                }
                Err(Error::Unavailable(format!(
                    "key {name} kept changing on other replicas while it was deleted; try again"
                )))
            })
            .await?;
        tracing::info!(request_id = %caller.request_id, tenant = %caller.tenant, principal = %caller.principal, key = %req.name, destroyed_versions = destroyed, "key deleted");
        Ok(proto::DeleteKeyResponse {
            name: req.name,
            destroyed_versions: destroyed,
        })
    }

    /// After a delete failed part-way: record the versions whose material
    /// custody destroyed (`gone`) as destroyed (best effort; logged when
    /// that fails too).
    fn mark_destroyed(&self, rec: &KeyRecord, gone: &[Vec<u8>]) {
        if gone.is_empty() {
            return;
        }
        let mut rec2 = rec.clone();
        for v in rec2
            .versions
            .iter_mut()
            .filter(|v| v.handle.as_ref().is_some_and(|h| gone.contains(h)))
        {
            if let Err(e) = self.store.set_state(
                &rec.tenant,
                &rec.name,
                v.version,
                VersionState::Destroyed,
                None,
            ) {
                tracing::error!(key = %rec.name, version = v.version, error = %e, "could not record a destroyed version after a failed delete");
                continue;
            }
            v.state = VersionState::Destroyed;
            v.handle = None;
        }
        self.verify_cache
            .invalidate(&rec.tenant, rec.versions.iter().map(|v| rec.kid(v.version)));
        self.keyring.put(rec2);
    }

    pub async fn update_key(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::UpdateKeyRequest,
    ) -> Result<proto::UpdateKeyResponse> {
        let call = Call::new(Method::UpdateKey, &req.name);
        self.call(caller, call, self.update_key_inner(caller, req), |r| {
            key_desc(r.key.as_ref())
        })
        .await
    }

    pub async fn delete_key(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::DeleteKeyRequest,
    ) -> Result<proto::DeleteKeyResponse> {
        let call = Call::new(Method::DeleteKey, &req.name);
        let name = req.name.clone();
        self.call(
            caller,
            call,
            self.delete_key_inner(caller, req),
            move |_| (name.clone(), String::new()),
        )
        .await
    }

    pub async fn create_key(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::CreateKeyRequest,
    ) -> Result<proto::CreateKeyResponse> {
        let call = Call::new(Method::CreateKey, &req.name);
        self.call(caller, call, self.create_key_inner(caller, req), |r| {
            key_desc(r.key.as_ref())
        })
        .await
    }

    pub async fn get_key(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::GetKeyRequest,
    ) -> Result<proto::GetKeyResponse> {
        let call = Call::new(Method::GetKey, &req.name);
        self.call(caller, call, self.get_key_inner(caller, req), |r| {
            key_desc(r.key.as_ref())
        })
        .await
    }

    pub async fn list_keys(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::ListKeysRequest,
    ) -> Result<proto::ListKeysResponse> {
        let call = Call::new(Method::ListKeys, "");
        self.call(caller, call, self.list_keys_inner(caller, req), |_| {
            (String::new(), String::new())
        })
        .await
    }

    pub async fn rotate_key(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::RotateKeyRequest,
    ) -> Result<proto::RotateKeyResponse> {
        let call = Call::new(Method::RotateKey, &req.name);
        self.call(caller, call, self.rotate_key_inner(caller, req), |r| {
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
        let kid = crate::store::kid(&req.name, req.version);
        let op: &'static str = match req.state.as_str() {
            "enabled" => "enable_version",
            "disabled" => "disable_version",
            "destroyed" => "destroy_version",
            _ => "set_version_state",
        };
        let call = Call::new(Method::SetKeyVersionState, &req.name)
            .op(op)
            .failed_kid(kid.clone());
        let run = self.set_key_version_state_inner(caller, req);
        self.call(caller, call, run, move |r| {
            (
                kid.clone(),
                r.key
                    .as_ref()
                    .map(|k| k.algorithm.clone())
                    .unwrap_or_default(),
            )
        })
        .await
    }
}

pub(super) fn version_to_proto(rec: &KeyRecord, v: &VersionRecord, pem: bool) -> proto::KeyVersion {
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
pub(super) fn key_desc(k: Option<&proto::Key>) -> (String, String) {
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
        min_decryption_version: rec.settings.min_decryption_version,
        min_encryption_version: rec.settings.min_encryption_version,
        deletion_allowed: rec.settings.deletion_allowed,
        published: rec.settings.published,
    }
}
