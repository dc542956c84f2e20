//! The in-memory token table: SHA-256 of the secret → what the token
//! grants, one hash-map read per request whatever the number of tokens.
//!
//! It follows the store (docs/tokens.md, "Revocation"):
//! - this replica's own creates and revokes change the table before they
//!   are answered, so the next request sees them;
//! - other writers (replicas, `ron-kms tokens` offline) move the store's
//!   token generation; a shared store also announces [`Change::Tokens`].
//!   [`TokenTable::poll`] (every 500 ms) compares the generation and
//!   reloads on a change, and a miss re-checks it at most once a second;
//! - expiry is checked on every request against the clock, and
//!   [`TokenTable::due_expiries`] hands each expiry to the service once for
//!   its audit record;
//! - last-used times are kept in the entry and written back in batches, at
//!   most once a minute per token, never on the request path.
//!
//! [`Change::Tokens`]: crate::store::Change::Tokens
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::grant::KeyPatterns;
use super::{now_ms, token_id, Caller, Scopes, TOKEN_PREFIX};
use crate::crypto::sha256;
use crate::error::Error;
use crate::store::{Store, TokenRecord};

/// How often a miss may re-check the store's token generation.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// Last-used times are this coarse.
const TOUCH_EVERY_MS: i64 = 60_000;

/// Why a presented credential was refused. The caller always gets the same
/// `unauthenticated`; the audit record says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization`, or not a bearer token of ours.
    Malformed,
    Unknown,
    Revoked,
    Expired,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::Revoked => "revoked",
            Refusal::Expired => "expired",
        }
    }
}

struct Entry {
    id: String,
    tenant: String,
    scopes: Scopes,
    keys: Option<Arc<KeyPatterns>>,
    expires_at_ms: Option<i64>,
    revoked: bool,
    last_used_ms: AtomicI64,
}

impl Entry {
    /// `None` for a row this binary cannot read (unknown scopes or
    /// patterns): skipped rather than granting less or more than was meant.
    fn of(r: &TokenRecord) -> Option<Self> {
        Some(Entry {
            id: r.id.clone(),
            tenant: r.tenant.clone(),
            scopes: Scopes::parse(&r.scopes).ok()?,
            keys: KeyPatterns::from_stored(&r.key_patterns)
                .ok()?
                .map(Arc::new),
            expires_at_ms: r.expires_at_ms,
            revoked: r.revoked_at_ms.is_some(),
            last_used_ms: AtomicI64::new(r.last_used_ms.unwrap_or(0)),
        })
    }
}

#[derive(Default)]
struct Map {
    by_hash: HashMap<[u8; 32], Arc<Entry>>,
    by_id: HashMap<String, [u8; 32]>,
}

impl Map {
    fn insert(&mut self, hash: [u8; 32], e: Entry) {
        self.by_id.insert(e.id.clone(), hash);
        self.by_hash.insert(hash, Arc::new(e));
    }
}

/// This replica's own writes, kept until a reload has seen them in the
/// store: a reload that read the store just before a create or revoke
/// committed must not bring back the old state.
#[derive(Default)]
struct Local {
    inserted: HashMap<[u8; 32], TokenRecord>,
    revoked: std::collections::HashSet<String>,
}

pub struct TokenTable {
    store: Arc<dyn Store>,
    map: RwLock<Map>,
    local: Mutex<Local>,
    /// Whether a load has run (expiries older than the first load are
    /// audited by whichever replica was running then; at start, by us).
    loaded: std::sync::atomic::AtomicBool,
    /// The store's token generation the map reflects.
    generation: Mutex<Vec<u8>>,
    last_recheck: Mutex<Instant>,
    /// Pending expiries: (expires_at_ms, id), for their audit records.
    expiries: Mutex<BTreeSet<(i64, String)>>,
    /// Last-used times not yet written back.
    touched: Mutex<Vec<(String, i64)>>,
}

impl TokenTable {
    pub fn load(store: Arc<dyn Store>) -> Result<Self, Error> {
        let t = TokenTable {
            store,
            map: RwLock::new(Map::default()),
            local: Mutex::new(Local::default()),
            loaded: std::sync::atomic::AtomicBool::new(false),
            generation: Mutex::new(Vec::new()),
            last_recheck: Mutex::new(Instant::now()),
            expiries: Mutex::new(BTreeSet::new()),
            touched: Mutex::new(Vec::new()),
        };
        t.reload()?;
        Ok(t)
    }

    pub fn is_empty(&self) -> bool {
        self.read().by_hash.is_empty()
    }

    /// How many tokens (revoked ones included) the table holds.
    pub fn len(&self) -> usize {
        self.read().by_hash.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-read every token from the store (blocking).
    pub fn reload(&self) -> Result<(), Error> {
        let generation = self.store.token_generation()?;
        let rows = self.store.load_tokens()?;
        let now = now_ms();
        let mut map = Map::default();
        map.by_hash.reserve(rows.len());
        let mut expiries = BTreeSet::new();
        let first = !self.loaded.swap(true, Ordering::Relaxed);
        // under the local lock, so no create or revoke of ours slips between
        // the merge and the swap
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        // an expiry already due but not yet audited stays due
        let pending = self
            .expiries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        {
            let old = self.read();
            let mut add = |map: &mut Map, r: &TokenRecord, revoked_here: bool| {
                let Some(mut e) = Entry::of(r) else { return };
                e.revoked |= revoked_here;
                if let Some(prev) = old.by_hash.get(&r.hash) {
                    // keep a newer last-used time not yet written back
                    e.last_used_ms
                        .fetch_max(prev.last_used_ms.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                if let (Some(at), false) = (e.expires_at_ms, e.revoked) {
                    if at > now || first || pending.contains(&(at, e.id.clone())) {
                        expiries.insert((at, e.id.clone()));
                    }
                }
                map.insert(r.hash, e);
            };
            for r in &rows {
                local.inserted.remove(&r.hash);
                if r.revoked_at_ms.is_some() {
                    local.revoked.remove(&r.id);
                }
                add(&mut map, r, local.revoked.contains(&r.id));
            }
            for r in local.inserted.values() {
                add(&mut map, r, local.revoked.contains(&r.id));
            }
        }
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = map;
        drop(local);
        *self.expiries.lock().unwrap_or_else(|p| p.into_inner()) = expiries;
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) = generation;
        Ok(())
    }

    /// Reload if another writer moved the store's token generation
    /// (blocking). True if it reloaded.
    pub fn poll(&self) -> Result<bool, Error> {
        let now = self.store.token_generation()?;
        let seen = self
            .generation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if now == seen {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    /// A token this replica just stored: usable at once.
    pub fn insert_local(&self, r: &TokenRecord) {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local.inserted.insert(r.hash, r.clone());
        if let Some(e) = Entry::of(r) {
            if let Some(at) = e.expires_at_ms {
                self.expiries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((at, e.id.clone()));
            }
            self.map
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(r.hash, e);
        }
    }

    /// A token this replica just revoked in the store: refused at once.
    pub fn revoke_local(&self, id: &str) {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local.revoked.insert(id.to_string());
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let Some(hash) = map.by_id.get(id).copied() else {
            return;
        };
        if let Some(old) = map.by_hash.get(&hash).cloned() {
            let e = Entry {
                id: old.id.clone(),
                tenant: old.tenant.clone(),
                scopes: old.scopes,
                keys: old.keys.clone(),
                expires_at_ms: old.expires_at_ms,
                revoked: true,
                last_used_ms: AtomicI64::new(old.last_used_ms.load(Ordering::Relaxed)),
            };
            map.by_hash.insert(hash, Arc::new(e));
        }
    }

    /// A token's tenant, scopes and key patterns, by id.
    #[allow(clippy::type_complexity)]
    pub fn grants(&self, id: &str) -> Option<(String, Scopes, Option<Arc<KeyPatterns>>)> {
        let map = self.read();
        let e = map.by_hash.get(map.by_id.get(id)?)?;
        Some((e.tenant.clone(), e.scopes, e.keys.clone()))
    }

    /// Expiries due by `now_ms`, each handed out once by this table.
    pub fn due_expiries(&self, now_ms: i64) -> Vec<(String, String)> {
        let mut due = Vec::new();
        let mut set = self.expiries.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((at, id)) = set.first().cloned() {
            if at > now_ms {
                break;
            }
            set.pop_first();
            let tenant = {
                let map = self.read();
                map.by_id
                    .get(&id)
                    .and_then(|h| map.by_hash.get(h))
                    .filter(|e| !e.revoked)
                    .map(|e| e.tenant.clone())
            };
            if let Some(t) = tenant {
                due.push((id, t));
            }
        }
        due
    }

    /// Write back last-used times (blocking; called off the request path).
    pub fn flush_last_used(&self) -> Result<(), Error> {
        let used = std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()));
        if !used.is_empty() {
            self.store.touch_tokens(&used)?;
        }
        Ok(())
    }

    /// The tenant of a known, usable token, from the in-memory table only
    /// (no reload, no audit): for decisions made before a request is
    /// decoded. `None` for anything else.
    pub fn known_tenant(&self, authorization: Option<&str>) -> Option<String> {
        let token = authorization.and_then(super::parse_bearer)?;
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
            return None;
        }
        let map = self.read();
        let e = map.by_hash.get(&sha256(token.as_bytes()))?;
        let usable = !e.revoked && e.expires_at_ms.is_none_or(|at| now_ms() < at);
        usable.then(|| e.tenant.clone())
    }

    /// Authenticate the value of an `authorization` header.
    pub async fn authenticate(
        self: &Arc<Self>,
        authorization: Option<&str>,
        request_id: String,
    ) -> Result<Caller, Refusal> {
        let token = authorization
            .and_then(super::parse_bearer)
            .filter(|t| t.starts_with(TOKEN_PREFIX) && t.len() <= 128)
            .ok_or(Refusal::Malformed)?;
        let hash = sha256(token.as_bytes());
        let mut found = self.read().by_hash.get(&hash).cloned();
        if found.is_none() && self.recheck_due() {
            // a token written by another process since the last poll
            let this = self.clone();
            if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || this.poll()).await {
                found = self.read().by_hash.get(&hash).cloned();
            }
        }
        let e = found.ok_or(Refusal::Unknown)?;
        if e.revoked {
            return Err(Refusal::Revoked);
        }
        let now = now_ms();
        if e.expires_at_ms.is_some_and(|at| now >= at) {
            return Err(Refusal::Expired);
        }
        let last = e.last_used_ms.load(Ordering::Relaxed);
        if now - last >= TOUCH_EVERY_MS
            && e.last_used_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.touched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((e.id.clone(), now));
        }
        Ok(Caller {
            tenant: e.tenant.clone(),
            principal: format!("token:{}", e.id),
            scopes: e.scopes,
            keys: e.keys.clone(),
            request_id,
        })
    }

    fn recheck_due(&self) -> bool {
        let mut last = self.last_recheck.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= RECHECK_EVERY {
            *last = Instant::now();
            true
        } else {
            false
        }
    }
}

/// The id of the token whose hash is `hash`, for a presented token.
pub fn id_of_presented(token: &str) -> String {
    token_id(&sha256(token.as_bytes()))
}
