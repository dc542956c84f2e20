//! Identity: bearer tokens and client certificates → tenant, scopes and
//! key restriction (docs/tokens.md).
//!
//! Tokens are `rkms_` followed by 43 base64url characters (32 random bytes).
//! Only their SHA-256 is stored; lookups hash the presented token first, so
//! the lookup's timing depends on a hash of the secret, never on the secret
//! itself. A token's public id is the first 16 hex digits of that hash.
//! [`table::TokenTable`] holds the tokens in memory; [`grant`] says what a
//! token may use and who may grant what.
pub mod grant;
pub mod table;

use std::sync::Arc;

use base64::Engine as _;

use crate::crypto::{random_bytes, sha256};
use crate::error::Error;
use crate::store::{Store, TokenRecord};

pub use grant::KeyPatterns;
pub use table::{Refusal, TokenTable};

pub const TOKEN_PREFIX: &str = "rkms_";

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
    /// Every scope of `other` is in `self`.
    pub fn covers(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
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
    /// `token:<token id>` or `cert:<…>`: safe to log.
    pub principal: String,
    pub scopes: Scopes,
    /// The key names the credential may use; `None`: every key of the
    /// tenant. Keys outside look exactly like missing ones.
    pub keys: Option<Arc<KeyPatterns>>,
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

    /// Whether the credential may use the key called `name`.
    pub fn may_use(&self, name: &str) -> bool {
        grant::allows(self.keys.as_deref(), name)
    }
}

/// Tenant names follow the key-name rule.
pub fn validate_tenant(t: &str) -> Result<(), String> {
    crate::keyring::validate_name(t)
        .map_err(|_| "tenant must match [a-z0-9][a-z0-9._-]{0,127}".to_string())
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

/// A token's public id: the first 16 hex digits of its hash.
pub fn token_id(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..8])
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a new token grants.
#[derive(Clone, Debug, Default)]
pub struct NewToken {
    pub tenant: String,
    pub scopes: Scopes,
    pub keys: Option<KeyPatterns>,
    pub expires_at_ms: Option<i64>,
    pub description: String,
    pub created_by: String,
}

/// The most characters of a token's description.
pub const MAX_DESCRIPTION: usize = 200;

/// A fresh secret and the record that stores only its hash. The returned
/// string is the only copy of the secret.
pub fn mint(t: &NewToken) -> Result<(String, TokenRecord), Error> {
    validate_tenant(&t.tenant).map_err(Error::InvalidArgument)?;
    if t.description.chars().count() > MAX_DESCRIPTION {
        return Err(Error::InvalidArgument(format!(
            "field description: at most {MAX_DESCRIPTION} characters"
        )));
    }
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    random_bytes(&mut raw[..])?;
    let secret = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..])
    );
    let hash = sha256(secret.as_bytes());
    let rec = TokenRecord {
        id: token_id(&hash),
        hash,
        tenant: t.tenant.clone(),
        scopes: t.scopes.to_list(),
        key_patterns: KeyPatterns::to_stored(t.keys.as_ref()),
        expires_at_ms: t.expires_at_ms,
        description: t.description.clone(),
        created_by: t.created_by.clone(),
        created_at_ms: now_ms(),
        last_used_ms: None,
        revoked_at_ms: None,
    };
    Ok((secret, rec))
}

/// Create a token, store its hash, return the secret (offline commands,
/// tests). A running server learns of it through the store's token
/// generation.
pub fn create_token(store: &dyn Store, t: &NewToken) -> Result<(String, TokenRecord), Error> {
    let (secret, rec) = mint(t)?;
    store.insert_token(&rec)?;
    Ok((secret, rec))
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
