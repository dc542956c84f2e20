//! Tokens as a resource (docs/tokens.md): `CreateToken`, `ListTokens`,
//! `RevokeToken`, and the upkeep that follows the store (other writers'
//! tokens, expiries and their audit records, last-used times).
//!
//! Every call is audited like any operation; the record names the token by
//! its id, never the secret. Grants are checked by [`crate::auth::grant`]:
//! within the caller's own scopes and key patterns, another tenant only with
//! `kms:operator`. A revoke refuses the token on this replica before it is
//! answered, and on the others through the store.
use super::calls::Call;
use super::*;
use crate::auth::grant::{may_grant, may_manage};
use crate::auth::{mint, KeyPatterns, NewToken, Scopes};
use crate::ops::Method;
use crate::store::TokenRecord;

/// The longest lifetime a token may be given: ten years.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 86_400;

fn token_to_proto(r: &TokenRecord, now: i64) -> proto::Token {
    let state = if r.revoked_at_ms.is_some() {
        "revoked"
    } else if r.expires_at_ms.is_some_and(|at| now >= at) {
        "expired"
    } else {
        "active"
    };
    proto::Token {
        id: r.id.clone(),
        tenant: r.tenant.clone(),
        scopes: r.scopes.split(',').map(str::to_string).collect(),
        key_patterns: r
            .key_patterns
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        expires_at_ms: r.expires_at_ms,
        description: r.description.clone(),
        created_by: r.created_by.clone(),
        created_at_ms: r.created_at_ms,
        last_used_ms: r.last_used_ms,
        revoked_at_ms: r.revoked_at_ms,
        state: state.into(),
    }
}

/// The tenant a request names, or the caller's.
fn target_tenant(caller: &Caller, named: &str) -> Result<String> {
    if named.is_empty() {
        return Ok(caller.tenant.clone());
    }
    crate::auth::validate_tenant(named)
        .map_err(|m| Error::InvalidArgument(format!("field tenant: {m}")))?;
    Ok(named.to_string())
}

fn token_desc(t: Option<&proto::Token>) -> (String, String) {
    (
        t.map(|t| format!("token:{}", t.id)).unwrap_or_default(),
        String::new(),
    )
}

impl KmsService {
    async fn create_token_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::CreateTokenRequest,
    ) -> Result<proto::CreateTokenResponse> {
        let tenant = target_tenant(caller, &req.tenant)?;
        let scopes = Scopes::parse(&req.scopes.join(","))
            .map_err(|m| Error::InvalidArgument(format!("field scopes: {m}")))?;
        let keys = KeyPatterns::parse(&req.key_patterns)
            .map_err(|m| Error::InvalidArgument(format!("field key_patterns: {m}")))?;
        if req.ttl_seconds > MAX_TTL_SECONDS {
            return Err(Error::InvalidArgument(format!(
                "field ttl_seconds: at most {MAX_TTL_SECONDS}"
            )));
        }
        may_grant(caller, &tenant, scopes, keys.as_ref())?;
        let now = now_ms();
        let (secret, rec) = mint(&NewToken {
            tenant,
            scopes,
            keys,
            expires_at_ms: (req.ttl_seconds > 0).then(|| now + req.ttl_seconds as i64 * 1000),
            description: req.description,
            created_by: caller.principal.clone(),
        })?;
        let (store, stored) = (self.store.clone(), rec.clone());
        self.mutation(move || Ok(store.insert_token(&stored)?))
            .await?;
        self.tokens.insert_local(&rec);
        tracing::info!(
            request_id = %caller.request_id,
            principal = %caller.principal,
            token = %rec.id,
            tenant = %rec.tenant,
            "token created"
        );
        Ok(proto::CreateTokenResponse {
            token: Some(token_to_proto(&rec, now)),
            secret,
        })
    }

    async fn list_tokens_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::ListTokensRequest,
    ) -> Result<proto::ListTokensResponse> {
        let tenant = target_tenant(caller, &req.tenant)?;
        may_manage(caller, &tenant)?;
        let size = match req.page_size {
            0 => 100,
            n => n.min(1000),
        } as usize;
        let after = req.page_token;
        if !after.is_empty() && !after.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument("page_token is malformed".into()));
        }
        let store = self.store.clone();
        let rows = self.blocking(move || Ok(store.load_tokens()?)).await?;
        let now = now_ms();
        let mut rows: Vec<TokenRecord> = rows
            .into_iter()
            .filter(|r| r.tenant == tenant && r.id.as_str() > after.as_str())
            .filter(|r| {
                req.include_inactive
                    || (r.revoked_at_ms.is_none() && r.expires_at_ms.is_none_or(|at| now < at))
            })
            .collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last().map(|r| r.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(proto::ListTokensResponse {
            tokens: rows.iter().map(|r| token_to_proto(r, now)).collect(),
            next_page_token,
        })
    }

    async fn revoke_token_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::RevokeTokenRequest,
    ) -> Result<proto::RevokeTokenResponse> {
        let tenant = target_tenant(caller, &req.tenant)?;
        may_manage(caller, &tenant)?;
        let missing = || {
            Error::NotFound(format!(
                "token {}",
                req.id.chars().take(32).collect::<String>()
            ))
        };
        if req.id.is_empty() || req.id.len() > 32 {
            return Err(missing());
        }
        // the token's grants, to refuse taking back a token wider than the
        // caller's own (a token made on another replica a moment ago may not
        // be here yet: look again)
        let mut grants = self.tokens.grants(&req.id);
        if grants.is_none() {
            let table = self.tokens.clone();
            self.blocking(move || table.poll()).await?;
            grants = self.tokens.grants(&req.id);
        }
        let (owner, scopes, keys) = grants.ok_or_else(missing)?;
        if owner != tenant {
            return Err(missing());
        }
        may_grant(caller, &tenant, scopes, keys.as_deref())?;
        let (store, id) = (self.store.clone(), req.id.clone());
        let rec = self
            .mutation(move || Ok(store.revoke_token(&tenant, &id, now_ms())?))
            .await?;
        self.tokens.revoke_local(&rec.id);
        tracing::info!(
            request_id = %caller.request_id,
            principal = %caller.principal,
            token = %rec.id,
            "token revoked"
        );
        Ok(proto::RevokeTokenResponse {
            token: Some(token_to_proto(&rec, now_ms())),
        })
    }

    /// One round of the token upkeep (every 500 ms, from the server):
    /// follow other writers, audit due expiries once across replicas, and
    /// (with `flush`) write back last-used times.
    pub async fn maintain_tokens(self: &Arc<Self>, flush: bool) {
        let table = self.tokens.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<()> {
            table.poll()?;
            if flush {
                table.flush_last_used()?;
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "token upkeep failed; trying again");
        }
        for (id, tenant) in self.tokens.due_expiries(now_ms()) {
            let store = self.store.clone();
            let claim = id.clone();
            let first = tokio::task::spawn_blocking(move || store.claim_token_expiry(&claim)).await;
            if !matches!(first, Ok(Ok(true))) {
                continue;
            }
            let event = Event {
                tenant,
                principal: "system".into(),
                op: "token_expired",
                kid: format!("token:{id}"),
                result: "ok".into(),
                ..Event::default()
            };
            if let Err(e) = self.audit.append(event).await {
                tracing::error!(error = %e, "audit append failed");
            }
        }
    }

    pub async fn create_token(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::CreateTokenRequest,
    ) -> Result<proto::CreateTokenResponse> {
        let reason = format!(
            "tenant={} scopes={} key_patterns={} ttl_seconds={}",
            if req.tenant.is_empty() {
                &caller.tenant
            } else {
                &req.tenant
            }
            .chars()
            .take(128)
            .collect::<String>(),
            req.scopes.join(",").chars().take(200).collect::<String>(),
            req.key_patterns
                .join(",")
                .chars()
                .take(200)
                .collect::<String>(),
            req.ttl_seconds
        );
        let call = Call::new(Method::CreateToken, "").reason(reason);
        self.call(caller, call, self.create_token_inner(caller, req), |r| {
            token_desc(r.token.as_ref())
        })
        .await
    }

    pub async fn list_tokens(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::ListTokensRequest,
    ) -> Result<proto::ListTokensResponse> {
        let call = Call::new(Method::ListTokens, "");
        self.call(caller, call, self.list_tokens_inner(caller, req), |_| {
            (String::new(), String::new())
        })
        .await
    }

    pub async fn revoke_token(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::RevokeTokenRequest,
    ) -> Result<proto::RevokeTokenResponse> {
        let id: String = req.id.chars().take(32).collect();
        let call = Call::new(Method::RevokeToken, "").failed_kid(format!("token:{id}"));
        self.call(caller, call, self.revoke_token_inner(caller, req), |r| {
            token_desc(r.token.as_ref())
        })
        .await
    }
}
