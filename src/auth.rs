//! Identity: bearer tokens → tenant + scopes.
//!
//! Tokens are `rkms_` followed by 43 base64url characters (32 random bytes).
//! Only their SHA-256 is stored; lookups hash the presented token first, so
//! the lookup's timing depends on a hash of the secret, never on the secret
//! itself. Tokens created while the server runs (`ron-kms tokens create`
//! writes the shared store) are picked up on the first miss, at most one
//! reload per second.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::crypto::{random_bytes, sha256};
use crate::error::Error;
use crate::store::{Store, TokenRecord};

pub const TOKEN_PREFIX: &str = "rkms_";
const RELOAD_EVERY: Duration = Duration::from_secs(1);

pub use crate::ops::Scope;

/// The identity a verified client certificate carries, mapped to a tenant by
/// the ingress (`crate::ingress::tls`): a credential of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIdentity {
    pub tenant: String,
    /// `cert:<first 12 hex digits of the SHA-256 of the leaf DER>`: safe to
    /// log, stable per certificate.
    pub principal: String,
    pub scopes: Scopes,
}

/// A set of scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Self {
        Scopes(Scope::ALL.iter().fold(0, |acc, s| acc | s.bit()))
    }
    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }
    /// Parse `kms:sign,kms:verify`; unknown scopes are an error naming them.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut bits = 0;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let scope = Scope::ALL
                .iter()
                .find(|x| x.as_str() == part)
                .ok_or_else(|| format!("unknown scope {part:?}"))?;
            bits |= scope.bit();
        }
        if bits == 0 {
            return Err("at least one scope is required".into());
        }
        Ok(Scopes(bits))
    }
    pub fn to_list(self) -> String {
        Scope::ALL
            .iter()
            .filter(|s| self.contains(**s))
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant: String,
    /// `token:<first 12 hex digits of the token hash>`: safe to log.
    pub principal: String,
    pub scopes: Scopes,
    pub request_id: String,
}

impl Caller {
    pub fn require(&self, scope: Scope) -> Result<(), Error> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "token lacks scope {}",
                scope.as_str()
            )))
        }
    }
}

#[derive(Clone)]
struct Identity {
    tenant: String,
    scopes: Scopes,
}

/// Tenant names follow the key-name rule.
pub fn validate_tenant(t: &str) -> Result<(), String> {
    crate::keyring::validate_name(t)
        .map_err(|_| "tenant must match [a-z0-9][a-z0-9._-]{0,127}".to_string())
}

/// In-memory token table backed by the store.
pub struct TokenTable {
    store: Arc<dyn Store>,
    map: RwLock<HashMap<[u8; 32], Identity>>,
    last_reload: Mutex<Instant>,
}

impl TokenTable {
    pub fn load(store: Arc<dyn Store>) -> Result<Self, Error> {
        let t = TokenTable {
            store,
            map: RwLock::new(HashMap::new()),
            last_reload: Mutex::new(Instant::now()),
        };
        t.reload()?;
        Ok(t)
    }

    pub fn is_empty(&self) -> bool {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Re-read every token from the store.
    pub fn reload(&self) -> Result<(), Error> {
        let rows = self.store.load_tokens()?;
        let mut map = HashMap::with_capacity(rows.len());
        for r in rows {
            // A row with scopes this binary does not know is skipped rather
            // than granting less or more than was meant.
            if let Ok(scopes) = Scopes::parse(&r.scopes) {
                map.insert(
                    r.hash,
                    Identity {
                        tenant: r.tenant,
                        scopes,
                    },
                );
            }
        }
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    fn lookup(&self, hash: &[u8; 32]) -> Option<Identity> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned()
    }

    /// The tenant of a known token, from the in-memory table only (no
    /// reload, no audit): for decisions made before a request is decoded.
    /// `None` for anything that is not a known token.
    pub fn known_tenant(&self, authorization: Option<&str>) -> Option<String> {
        let token = authorization.and_then(parse_bearer)?;
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
            return None;
        }
        self.lookup(&sha256(token.as_bytes())).map(|id| id.tenant)
    }

    /// Authenticate the value of an `authorization` header.
    pub async fn authenticate(
        self: &Arc<Self>,
        authorization: Option<&str>,
        request_id: String,
    ) -> Result<Caller, Error> {
        let r = self.authenticate_inner(authorization, request_id).await;
        if r.is_err() {
            crate::telemetry::reject("unauthenticated");
        }
        r
    }

    async fn authenticate_inner(
        self: &Arc<Self>,
        authorization: Option<&str>,
        request_id: String,
    ) -> Result<Caller, Error> {
        let token = authorization
            .and_then(parse_bearer)
            .ok_or(Error::Unauthenticated)?;
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
            return Err(Error::Unauthenticated);
        }
        let hash = sha256(token.as_bytes());
        let mut id = self.lookup(&hash);
        if id.is_none() && self.reload_due() {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.reload())
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            id = self.lookup(&hash);
        }
        let id = id.ok_or(Error::Unauthenticated)?;
        Ok(Caller {
            tenant: id.tenant,
            principal: format!("token:{}", &hex::encode(hash)[..12]),
            scopes: id.scopes,
            request_id,
        })
    }

    fn reload_due(&self) -> bool {
        let mut last = self.last_reload.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= RELOAD_EVERY {
            *last = Instant::now();
            true
        } else {
            false
        }
    }
}

/// `Bearer <token>` → `<token>` (scheme case-insensitive).
pub fn parse_bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = rest.trim();
    (!t.is_empty()).then_some(t)
}

/// Create a token for `tenant` with `scopes`, store its hash, return it.
/// The returned string is the only copy of the token.
pub fn create_token(store: &dyn Store, tenant: &str, scopes: Scopes) -> Result<String, Error> {
    validate_tenant(tenant).map_err(Error::InvalidArgument)?;
    let mut raw = [0u8; 32];
    random_bytes(&mut raw)?;
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    store.insert_token(&TokenRecord {
        hash: sha256(token.as_bytes()),
        tenant: tenant.to_string(),
        scopes: scopes.to_list(),
        created_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    })?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print() {
        let s = Scopes::parse("kms:sign, kms:verify").unwrap();
        assert!(s.contains(Scope::Sign) && s.contains(Scope::Verify) && !s.contains(Scope::Admin));
        assert_eq!(s.to_list(), "kms:sign,kms:verify");
        assert!(Scopes::parse("kms:sign,kms:root").is_err());
        assert!(Scopes::parse("").is_err());
        assert_eq!(
            Scopes::parse(&Scopes::all().to_list()).unwrap(),
            Scopes::all()
        );
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(parse_bearer("Bearer abc"), Some("abc"));
        assert_eq!(parse_bearer("bearer  abc "), Some("abc"));
        assert_eq!(parse_bearer("Basic abc"), None);
        assert_eq!(parse_bearer("Bearer "), None);
    }
}
