//! What a token grants beyond its scopes, and who may grant what
//! (docs/tokens.md):
//!
//! - [`KeyPatterns`]: a token restricted to key-name patterns sees every
//!   other key of its tenant exactly as a missing one. A pattern is a key
//!   name (`audit-signer`) or a prefix followed by one `*` (`payments-*`;
//!   `*` alone is every key). Prefix-only patterns keep "is this pattern
//!   inside that one" a string comparison, which the minting rule needs.
//! - [`may_grant`]: nobody grants wider than they hold. A token's scopes
//!   and key patterns must lie within its creator's; another tenant's tokens
//!   need `kms:operator`.
use std::fmt;

use super::{Caller, Scope, Scopes};
use crate::error::Error;

/// The most patterns one token may carry.
pub const MAX_PATTERNS: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(p: &str) -> Result<Self, String> {
        let (body, prefix) = match p.strip_suffix('*') {
            Some(b) => (b, true),
            None => (p, false),
        };
        let ok_chars = body
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c));
        if !ok_chars || body.len() > 127 || (!prefix && body.is_empty()) {
            return Err(format!(
                "key pattern {p:?}: a key name, or a prefix of one followed by a single '*'"
            ));
        }
        Ok(if prefix {
            Pattern::Prefix(body.to_string())
        } else {
            Pattern::Exact(body.to_string())
        })
    }

    fn allows(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(n) => n == name,
            Pattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }

    /// Every name `inner` allows, `self` allows too.
    fn contains(&self, inner: &Pattern) -> bool {
        match (self, inner) {
            (Pattern::Exact(a), Pattern::Exact(b)) => a == b,
            (Pattern::Exact(_), Pattern::Prefix(_)) => false,
            (Pattern::Prefix(a), Pattern::Exact(b) | Pattern::Prefix(b)) => {
                b.starts_with(a.as_str())
            }
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(n) => f.write_str(n),
            Pattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// The key names a restricted token may use. A token without patterns is
/// unrestricted (every key of its tenant); that is `Option<KeyPatterns>`'s
/// `None` everywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPatterns(Vec<Pattern>);

impl KeyPatterns {
    /// Parse a list of patterns; an empty list is no restriction (`None`).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Option<Self>, String> {
        if items.is_empty() {
            return Ok(None);
        }
        if items.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} key patterns"));
        }
        let mut v = Vec::with_capacity(items.len());
        for p in items {
            let p = Pattern::parse(p.as_ref().trim())?;
            if !v.contains(&p) {
                v.push(p);
            }
        }
        Ok(Some(KeyPatterns(v)))
    }

    /// The stored form: comma-separated (a pattern holds no comma).
    pub fn from_stored(s: &str) -> Result<Option<Self>, String> {
        let items: Vec<&str> = s.split(',').filter(|p| !p.is_empty()).collect();
        Self::parse(&items)
    }

    pub fn to_stored(this: Option<&Self>) -> String {
        this.map(|k| k.to_list().join(",")).unwrap_or_default()
    }

    pub fn to_list(&self) -> Vec<String> {
        self.0.iter().map(|p| p.to_string()).collect()
    }

    pub fn allows(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.allows(name))
    }

    /// Every name `inner` allows, `self` allows too.
    pub fn covers(&self, inner: &KeyPatterns) -> bool {
        inner.0.iter().all(|q| self.0.iter().any(|p| p.contains(q)))
    }
}

/// `restriction` allows `name` (no restriction allows every name).
pub fn allows(restriction: Option<&KeyPatterns>, name: &str) -> bool {
    restriction.is_none_or(|k| k.allows(name))
}

/// May `caller` manage tokens of `tenant`? Its own tenant with
/// `kms:admin`; another tenant with `kms:operator` too.
pub fn may_manage(caller: &Caller, tenant: &str) -> Result<(), Error> {
    caller.require(Scope::Admin)?;
    if tenant != caller.tenant && !caller.scopes.contains(Scope::Operator) {
        return Err(Error::PermissionDenied(
            "managing another tenant's tokens needs kms:operator".into(),
        ));
    }
    Ok(())
}

/// May `caller` hand out (or take back) a token of `tenant` with `scopes`
/// and `keys`? Only within what `caller` holds itself.
pub fn may_grant(
    caller: &Caller,
    tenant: &str,
    scopes: Scopes,
    keys: Option<&KeyPatterns>,
) -> Result<(), Error> {
    may_manage(caller, tenant)?;
    if !caller.scopes.covers(scopes) {
        return Err(Error::PermissionDenied(format!(
            "a token may not hold scopes its creator lacks ({} is not within {})",
            scopes.to_list(),
            caller.scopes.to_list()
        )));
    }
    match (caller.keys.as_deref(), keys) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(Error::PermissionDenied(
            "a key-restricted caller may only manage tokens restricted within its own key patterns"
                .into(),
        )),
        (Some(mine), Some(theirs)) if mine.covers(theirs) => Ok(()),
        (Some(_), Some(_)) => Err(Error::PermissionDenied(
            "key patterns wider than the caller's own".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kp(items: &[&str]) -> KeyPatterns {
        KeyPatterns::parse(items).unwrap().unwrap()
    }

    #[test]
    fn patterns_parse_allow_and_print() {
        let k = kp(&["payments-*", "audit-signer"]);
        assert!(k.allows("payments-eu") && k.allows("payments-") && k.allows("audit-signer"));
        assert!(!k.allows("payment") && !k.allows("audit-signer2") && !k.allows("other"));
        assert_eq!(KeyPatterns::to_stored(Some(&k)), "payments-*,audit-signer");
        assert_eq!(
            KeyPatterns::from_stored("payments-*,audit-signer").unwrap(),
            Some(k)
        );
        assert_eq!(KeyPatterns::from_stored("").unwrap(), None);
        assert!(kp(&["*"]).allows("anything"));
        for bad in ["", "a*b", "**", "A", "a b", "a,b", "é*"] {
            assert!(KeyPatterns::parse(&[bad]).is_err(), "{bad:?}");
        }
        assert!(KeyPatterns::parse(&vec!["a"; MAX_PATTERNS + 1]).is_err());
    }

    #[test]
    fn covering_is_inclusion() {
        assert!(kp(&["payments-*"]).covers(&kp(&["payments-eu-*", "payments-x"])));
        assert!(kp(&["*"]).covers(&kp(&["a", "b*"])));
        assert!(!kp(&["payments-*"]).covers(&kp(&["pay*"])));
        assert!(!kp(&["payments-x"]).covers(&kp(&["payments-*"])));
        assert!(kp(&["a", "b"]).covers(&kp(&["b"])));
        assert!(!kp(&["a"]).covers(&kp(&["a", "b"])));
    }

    fn caller(tenant: &str, scopes: &str, keys: Option<&[&str]>) -> Caller {
        Caller {
            tenant: tenant.into(),
            principal: "token:test".into(),
            scopes: Scopes::parse(scopes).unwrap(),
            keys: keys.map(|k| std::sync::Arc::new(kp(k))),
            request_id: "r".into(),
        }
    }

    #[test]
    fn nobody_grants_wider_than_they_hold() {
        let admin = caller("t", "kms:admin,kms:sign", None);
        let s = |x| Scopes::parse(x).unwrap();
        assert!(may_grant(&admin, "t", s("kms:sign"), None).is_ok());
        assert!(may_grant(&admin, "t", s("kms:verify"), None).is_err());
        assert!(may_grant(&admin, "u", s("kms:sign"), None).is_err());
        assert!(may_grant(&admin, "t", s("kms:operator"), None).is_err());
        let restricted = caller("t", "kms:admin,kms:sign", Some(&["payments-*"]));
        assert!(may_grant(&restricted, "t", s("kms:sign"), None).is_err());
        assert!(may_grant(&restricted, "t", s("kms:sign"), Some(&kp(&["payments-eu"]))).is_ok());
        assert!(may_grant(&restricted, "t", s("kms:sign"), Some(&kp(&["pay*"]))).is_err());
        let op = caller("admin", &Scopes::all().to_list(), None);
        assert!(may_grant(&op, "other", s("kms:sign"), None).is_ok());
        let reader = caller("t", "kms:read", None);
        assert!(may_manage(&reader, "t").is_err());
    }
}
