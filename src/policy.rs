//! The per-tenant post-quantum migration policy (DESIGN.md §5,
//! docs/pq-policy.md): which signatures hybrid keys produce, which
//! signatures verify accepts, and the automatic rollback that keeps a
//! migration from breaking callers.
//!
//! Precedence for a tenant: a stored value (set through the admin API or by
//! a rollback) wins over the tenant's entry in the config file, which wins
//! over the default (`KMS_PQ_*`, or the config file's `[pq]` table).
//!
//! Nothing a caller of Verify sends moves the policy on its own: a rollback
//! needs refusals of *genuine* classical signatures (valid plain signatures
//! by the key, what the previous phase accepted) from a threshold of
//! distinct principals within a window ([`RollbackRule`]). A stripped,
//! forged or tampered signature is invalid, counted as a downgrade attempt,
//! and moves nothing.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::crypto::hybrid::{Presented, SignatureKind};
use crate::store::Store;

const META_PREFIX: &str = "pq_policy/";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    Or,
    And,
    PqOnly,
}

impl VerifyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyMode::Or => "or",
            VerifyMode::And => "and",
            VerifyMode::PqOnly => "pq_only",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "or" => Some(VerifyMode::Or),
            "and" => Some(VerifyMode::And),
            "pq_only" => Some(VerifyMode::PqOnly),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PqPolicy {
    pub phase: u8,
    pub produce_hybrid: bool,
    pub verify_mode: VerifyMode,
    pub rollout_percent: u8,
    /// Whether genuine classical refusals may roll the tenant back to `or`
    /// (at the [`RollbackRule`] threshold). Stored policies from before
    /// this field read as `true`, the behaviour they had.
    #[serde(default = "yes")]
    pub auto_rollback: bool,
    /// Whether RKS v1 bundles (issued before the composite format) verify.
    #[serde(default = "yes")]
    pub accept_legacy_bundles: bool,
}

fn yes() -> bool {
    true
}

impl Default for PqPolicy {
    fn default() -> Self {
        PqPolicy::for_phase(0)
    }
}

impl PqPolicy {
    /// The settings a phase means when nothing else is said (DESIGN.md §5).
    pub fn for_phase(phase: u8) -> Self {
        let (produce_hybrid, verify_mode) = match phase {
            0 => (false, VerifyMode::Or),
            1 => (true, VerifyMode::Or),
            2 => (true, VerifyMode::And),
            _ => (true, VerifyMode::PqOnly),
        };
        PqPolicy {
            phase: phase.min(3),
            produce_hybrid,
            verify_mode,
            rollout_percent: 100,
            auto_rollback: true,
            accept_legacy_bundles: true,
        }
    }

    /// Field-naming validation errors.
    pub fn validate(&self) -> Result<(), String> {
        if self.phase > 3 {
            return Err("phase must be 0, 1, 2 or 3".into());
        }
        if self.rollout_percent > 100 {
            return Err("rollout_percent must be 0 to 100".into());
        }
        if self.phase == 3 && (self.verify_mode != VerifyMode::PqOnly || !self.produce_hybrid) {
            return Err(
                "phase 3 is PQ only: verify_mode must be pq_only and produce_hybrid true".into(),
            );
        }
        Ok(())
    }

    /// What applies to one key: keys inside the rollout follow this policy,
    /// the others follow the previous phase's defaults. Phase 3 applies to
    /// every key.
    pub fn effective(&self, tenant: &str, key_name: &str) -> Effective {
        if self.phase >= 3 || rollout_bucket(tenant, key_name) < self.rollout_percent {
            Effective {
                produce_hybrid: self.produce_hybrid,
                verify_mode: self.verify_mode,
            }
        } else {
            let prev = PqPolicy::for_phase(self.phase.saturating_sub(1));
            Effective {
                produce_hybrid: prev.produce_hybrid,
                // a rollback to "or" also covers the keys outside the rollout
                verify_mode: if self.verify_mode == VerifyMode::Or {
                    VerifyMode::Or
                } else {
                    prev.verify_mode
                },
            }
        }
    }
}

/// `SHA-256(tenant || 0x00 || key name)`, first two bytes big-endian, mod
/// 100: a key's place in the rollout, the same on every replica and restart.
pub fn rollout_bucket(tenant: &str, key_name: &str) -> u8 {
    let h = crate::crypto::sha256(&[tenant.as_bytes(), &[0], key_name.as_bytes()].concat());
    (u16::from_be_bytes([h[0], h[1]]) % 100) as u8
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    pub produce_hybrid: bool,
    pub verify_mode: VerifyMode,
}

/// Where a tenant's policy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Default,
    Config,
    Admin,
    Rollback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Config => "config",
            Source::Admin => "admin",
            Source::Rollback => "rollback",
        }
    }
}

/// A tenant's policy with its provenance (what the admin API shows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub policy: PqPolicy,
    pub source: Source,
    pub updated_at_ms: i64,
    #[serde(default)]
    pub rollback_reason: String,
    #[serde(default)]
    pub rolled_back_at_ms: i64,
}

/// The verify decision under a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid, and of a kind the tenant's mode accepts.
    Valid(SignatureKind),
    /// Not a valid signature: Verify answers `valid: false`. `downgrade`: it
    /// has the marks of a downgrade attempt (a classical-only form where the
    /// policy requires PQ that is not a valid plain signature, or a genuine
    /// component beside a broken one); counted in
    /// `kms_pq_downgrade_attempt_total` and audited.
    Invalid { downgrade: bool },
    /// The policy refuses this kind of signature (`pq_policy`). `genuine`:
    /// a valid plain classical signature by the key, what the previous phase
    /// accepted; only these count toward a rollback. `downgrade` as above.
    Refused {
        why: String,
        genuine: bool,
        downgrade: bool,
    },
}

/// Decide a verification. `hybrid_key`: the key is
/// `hybrid-ed25519-ml-dsa-65` (verify mode `and` applies to hybrid keys
/// only); `accept_legacy`: the tenant still accepts RKS v1 bundles.
///
/// Every component a signature carries must verify; the mode then decides
/// which kinds are acceptable: `or` every kind, `and` (hybrid keys) a
/// composite or a two-component legacy bundle, `pq_only` anything with a
/// valid PQ component.
pub fn decide(mode: VerifyMode, hybrid_key: bool, accept_legacy: bool, p: Presented) -> Verdict {
    let refuses_classical = mode == VerifyMode::PqOnly || (hybrid_key && mode == VerifyMode::And);
    let refused = |why: String, genuine: bool, downgrade: bool| Verdict::Refused {
        why,
        genuine,
        downgrade,
    };
    match p {
        Presented::Malformed => Verdict::Invalid { downgrade: false },
        Presented::Composite { classical, pq } => match (classical, pq) {
            (true, true) => Verdict::Valid(SignatureKind::Hybrid),
            (false, false) => Verdict::Invalid { downgrade: false },
            // one genuine half beside a broken one: tampering
            _ => Verdict::Invalid { downgrade: true },
        },
        Presented::Pq(true) => Verdict::Valid(SignatureKind::PqOnly),
        Presented::Pq(false) => Verdict::Invalid { downgrade: false },
        Presented::Classical(false) => Verdict::Invalid {
            downgrade: refuses_classical,
        },
        Presented::Classical(true) if refuses_classical => refused(
            format!(
                "the tenant's PQ policy (verify_mode {}) refuses classical-only signatures",
                mode.as_str()
            ),
            true,
            false,
        ),
        Presented::Classical(true) => Verdict::Valid(SignatureKind::ClassicalOnly),
        Presented::Legacy { classical, pq } => {
            let parts = [classical, pq];
            if parts.contains(&Some(false)) {
                return Verdict::Invalid {
                    downgrade: parts.contains(&Some(true)),
                };
            }
            if !accept_legacy {
                return refused(
                    "the tenant's PQ policy has retired RKS v1 bundles (accept_legacy_bundles false); sign again for a composite signature".into(),
                    false,
                    false,
                );
            }
            let acceptable = match mode {
                VerifyMode::Or => true,
                VerifyMode::And => classical.is_some() && pq.is_some(),
                VerifyMode::PqOnly => pq.is_some(),
            };
            if acceptable {
                Verdict::Valid(SignatureKind::LegacyBundle)
            } else {
                // a one-component legacy bundle is separable by
                // construction: never genuine, and classical-only is the
                // stripped form of a two-component one
                refused(
                    format!(
                        "the tenant's PQ policy (verify_mode {}) refuses this RKS v1 bundle ({} component only)",
                        mode.as_str(),
                        if pq.is_some() { "ml-dsa-65" } else { "ed25519" }
                    ),
                    false,
                    pq.is_none(),
                )
            }
        }
    }
}

/// When refusals of genuine classical signatures roll a tenant back:
/// `threshold` distinct principals within `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollbackRule {
    pub threshold: usize,
    pub window: Duration,
}

impl RollbackRule {
    pub const DEFAULT_THRESHOLD: usize = 3;
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
    /// A threshold of one would let a single caller roll a tenant back.
    pub const MIN_THRESHOLD: usize = 2;
    pub const MAX_THRESHOLD: usize = 1000;
}

impl Default for RollbackRule {
    fn default() -> Self {
        RollbackRule {
            threshold: Self::DEFAULT_THRESHOLD,
            window: Self::DEFAULT_WINDOW,
        }
    }
}

/// One refused genuine classical signature.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub principal: String,
    pub kid: String,
    pub request_id: String,
    pub at: Instant,
}

/// The stored overrides, by tenant.
fn read_stored(store: &dyn Store) -> Result<HashMap<String, Entry>, String> {
    let mut stored = HashMap::new();
    for (k, v) in store.list_meta(META_PREFIX).map_err(|e| e.to_string())? {
        let tenant = k[META_PREFIX.len()..].to_string();
        let e: Entry = serde_json::from_slice(&v)
            .map_err(|e| format!("stored PQ policy of tenant {tenant:?}: {e}"))?;
        stored.insert(tenant, e);
    }
    Ok(stored)
}

/// Every tenant's policy: defaults, config, stored overrides.
pub struct Policies {
    default: PqPolicy,
    configured: BTreeMap<String, PqPolicy>,
    stored: RwLock<HashMap<String, Entry>>,
    store: Arc<dyn Store>,
    /// Serialises changes, so only the first refusal rolls a tenant back.
    change: Mutex<()>,
    rule: RollbackRule,
    /// Genuine refusals per tenant within the window, one per principal
    /// (at most `rule.threshold` per tenant: reaching it empties the list).
    refusals: Mutex<HashMap<String, Vec<Refusal>>>,
}

impl Policies {
    /// Load stored overrides.
    pub fn load(
        store: Arc<dyn Store>,
        default: PqPolicy,
        configured: BTreeMap<String, PqPolicy>,
        rule: RollbackRule,
    ) -> Result<Self, String> {
        let stored = read_stored(store.as_ref())?;
        Ok(Policies {
            default,
            configured,
            stored: RwLock::new(stored),
            store,
            change: Mutex::new(()),
            rule,
            refusals: Mutex::new(HashMap::new()),
        })
    }

    pub fn rollback_rule(&self) -> RollbackRule {
        self.rule
    }

    /// Note a refused genuine classical signature. Returns the refusals
    /// that reach the threshold (distinct principals within the window),
    /// and forgets them, when the tenant is due a rollback; `None` while it
    /// is not, or cannot be rolled back (phase 3, already `or`, or
    /// `auto_rollback` off: then nothing is kept either).
    pub fn note_genuine_refusal(&self, tenant: &str, r: Refusal) -> Option<Vec<Refusal>> {
        let policy = self.get(tenant).policy;
        let mut all = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if !policy.auto_rollback || !self.would_roll_back(tenant) {
            all.remove(tenant);
            return None;
        }
        let list = all.entry(tenant.to_string()).or_default();
        let now = r.at;
        list.retain(|x| now.duration_since(x.at) <= self.rule.window && x.principal != r.principal);
        list.push(r);
        if list.len() < self.rule.threshold {
            return None;
        }
        all.remove(tenant)
    }

    /// Re-read the stored overrides (another replica changed one).
    pub fn reload(&self) -> Result<(), String> {
        let stored = read_stored(self.store.as_ref())?;
        *self.stored.write().unwrap_or_else(|p| p.into_inner()) = stored;
        Ok(())
    }

    /// Whether a meta key holds a PQ policy.
    pub fn is_policy_key(key: &str) -> bool {
        key.starts_with(META_PREFIX)
    }

    pub fn get(&self, tenant: &str) -> Entry {
        if let Some(e) = self
            .stored
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return e.clone();
        }
        match self.configured.get(tenant) {
            Some(p) => Entry {
                policy: *p,
                source: Source::Config,
                updated_at_ms: 0,
                rollback_reason: String::new(),
                rolled_back_at_ms: 0,
            },
            None => Entry {
                policy: self.default,
                source: Source::Default,
                updated_at_ms: 0,
                rollback_reason: String::new(),
                rolled_back_at_ms: 0,
            },
        }
    }

    fn put(&self, tenant: &str, e: Entry) -> Result<Entry, crate::Error> {
        let json = serde_json::to_vec(&e).map_err(|e| crate::Error::Internal(e.to_string()))?;
        self.store
            .put_meta(&format!("{META_PREFIX}{tenant}"), &json)?;
        self.stored
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.to_string(), e.clone());
        Ok(e)
    }

    /// Replace a tenant's policy (admin API). Blocking (one store write).
    pub fn set(&self, tenant: &str, policy: PqPolicy, now_ms: i64) -> Result<Entry, crate::Error> {
        policy
            .validate()
            .map_err(|e| crate::Error::InvalidArgument(format!("field policy: {e}")))?;
        let _g = self.change.lock().unwrap_or_else(|p| p.into_inner());
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
        self.put(
            tenant,
            Entry {
                policy,
                source: Source::Admin,
                updated_at_ms: now_ms,
                rollback_reason: String::new(),
                rolled_back_at_ms: 0,
            },
        )
    }

    /// Whether a refusal now would roll `tenant` back (a cheap check before
    /// taking the admin path).
    pub fn would_roll_back(&self, tenant: &str) -> bool {
        let p = self.get(tenant).policy;
        p.phase < 3 && p.verify_mode != VerifyMode::Or
    }

    /// Roll a tenant in phase 0–2 back to `verify_mode = or` after a policy
    /// refusal. Returns the new entry when this call changed it; `None` when
    /// the tenant is in phase 3 (never rolled back) or already at `or`.
    /// Blocking (one store write).
    pub fn rollback(
        &self,
        tenant: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Option<Entry>, crate::Error> {
        let _g = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.get(tenant);
        if cur.policy.phase >= 3 || cur.policy.verify_mode == VerifyMode::Or {
            return Ok(None);
        }
        let mut policy = cur.policy;
        policy.verify_mode = VerifyMode::Or;
        self.put(
            tenant,
            Entry {
                policy,
                source: Source::Rollback,
                updated_at_ms: now_ms,
                rollback_reason: reason.chars().take(300).collect(),
                rolled_back_at_ms: now_ms,
            },
        )
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_is_deterministic_and_spread() {
        assert_eq!(rollout_bucket("t", "k"), rollout_bucket("t", "k"));
        let inside = (0..1000)
            .filter(|i| rollout_bucket("acme", &format!("key-{i}")) < 30)
            .count();
        assert!(
            (230..370).contains(&inside),
            "{inside} of 1000 in a 30% rollout"
        );
    }

    #[test]
    fn keys_outside_the_rollout_follow_the_previous_phase() {
        let p = PqPolicy {
            rollout_percent: 0,
            ..PqPolicy::for_phase(2)
        };
        let e = p.effective("t", "k");
        assert_eq!((e.produce_hybrid, e.verify_mode), (true, VerifyMode::Or));
        let p = PqPolicy {
            rollout_percent: 0,
            ..PqPolicy::for_phase(1)
        };
        assert!(!p.effective("t", "k").produce_hybrid);
        let p = PqPolicy {
            rollout_percent: 0,
            ..PqPolicy::for_phase(3)
        };
        assert_eq!(p.effective("t", "k").verify_mode, VerifyMode::PqOnly);
    }

    #[test]
    fn phase_3_must_be_pq_only() {
        let mut p = PqPolicy::for_phase(3);
        assert!(p.validate().is_ok());
        p.verify_mode = VerifyMode::And;
        assert!(p.validate().is_err());
    }

    #[test]
    fn every_component_must_verify_and_the_mode_picks_the_kinds() {
        use Presented::*;
        use VerifyMode::*;
        let comp = |c, q| Composite {
            classical: c,
            pq: q,
        };
        let leg = |c, q| Legacy {
            classical: c,
            pq: q,
        };
        for mode in [Or, And, PqOnly] {
            assert_eq!(
                decide(mode, true, true, comp(true, true)),
                Verdict::Valid(SignatureKind::Hybrid)
            );
            // a broken component is invalid in every mode; beside a good one
            // it is a downgrade attempt
            for (c, q) in [(true, false), (false, true)] {
                assert_eq!(
                    decide(mode, true, true, comp(c, q)),
                    Verdict::Invalid { downgrade: true }
                );
                assert_eq!(
                    decide(mode, true, true, leg(Some(c), Some(q))),
                    Verdict::Invalid { downgrade: true }
                );
            }
            assert_eq!(
                decide(mode, true, true, Malformed),
                Verdict::Invalid { downgrade: false }
            );
            // retired legacy bundles are refused, never genuine
            assert!(matches!(
                decide(mode, true, false, leg(Some(true), Some(true))),
                Verdict::Refused { genuine: false, .. }
            ));
        }
        assert_eq!(
            decide(Or, true, true, Classical(true)),
            Verdict::Valid(SignatureKind::ClassicalOnly)
        );
        assert_eq!(
            decide(Or, true, true, Classical(false)),
            Verdict::Invalid { downgrade: false }
        );
        for mode in [And, PqOnly] {
            assert!(matches!(
                decide(mode, true, true, Classical(true)),
                Verdict::Refused {
                    genuine: true,
                    downgrade: false,
                    ..
                }
            ));
            assert_eq!(
                decide(mode, true, true, Classical(false)),
                Verdict::Invalid { downgrade: true }
            );
            // the stripped form of a legacy bundle: refused, never genuine
            assert!(matches!(
                decide(mode, true, true, leg(Some(true), None)),
                Verdict::Refused {
                    genuine: false,
                    downgrade: true,
                    ..
                }
            ));
        }
        // `and` is about hybrid keys; a classical key's signature passes it
        assert_eq!(
            decide(And, false, true, Classical(true)),
            Verdict::Valid(SignatureKind::ClassicalOnly)
        );
        assert!(matches!(
            decide(PqOnly, false, true, Classical(true)),
            Verdict::Refused { genuine: true, .. }
        ));
        assert_eq!(
            decide(And, true, true, leg(Some(true), Some(true))),
            Verdict::Valid(SignatureKind::LegacyBundle)
        );
        assert!(matches!(
            decide(And, true, true, leg(None, Some(true))),
            Verdict::Refused {
                genuine: false,
                downgrade: false,
                ..
            }
        ));
        assert_eq!(
            decide(PqOnly, true, true, leg(None, Some(true))),
            Verdict::Valid(SignatureKind::LegacyBundle)
        );
    }

    #[test]
    fn a_rollback_needs_distinct_principals_within_the_window() {
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sqlite::SqliteStore::in_memory().unwrap());
        let rule = RollbackRule {
            threshold: 3,
            window: Duration::from_secs(60),
        };
        let p = Policies::load(store, PqPolicy::for_phase(2), BTreeMap::new(), rule).unwrap();
        let t0 = Instant::now();
        let r = |who: &str, secs: u64| Refusal {
            principal: who.into(),
            kid: "k#v1".into(),
            request_id: "r".into(),
            at: t0 + Duration::from_secs(secs),
        };
        // one principal, however often, never reaches the threshold
        for i in 0..10 {
            assert!(p.note_genuine_refusal("t", r("a", i)).is_none());
        }
        assert!(p.note_genuine_refusal("t", r("b", 10)).is_none());
        // a third principal, but the first refusal of "a" is out of window
        // only when it is older than 60 s: here it is not
        let hit = p.note_genuine_refusal("t", r("c", 20)).unwrap();
        let who: Vec<_> = hit.iter().map(|x| x.principal.as_str()).collect();
        assert_eq!(who, ["a", "b", "c"]);
        // forgotten once reached
        assert!(p.note_genuine_refusal("t", r("d", 21)).is_none());
        // outside the window the old ones no longer count
        assert!(p.note_genuine_refusal("t", r("e", 200)).is_none());
        assert!(p.note_genuine_refusal("t", r("f", 201)).is_none());
        // with auto_rollback off nothing is kept or returned
        p.set(
            "u",
            PqPolicy {
                auto_rollback: false,
                ..PqPolicy::for_phase(2)
            },
            0,
        )
        .unwrap();
        for who in ["a", "b", "c", "d"] {
            assert!(p.note_genuine_refusal("u", r(who, 1)).is_none());
        }
        // phase 3 never rolls back
        p.set("v", PqPolicy::for_phase(3), 0).unwrap();
        for who in ["a", "b", "c", "d"] {
            assert!(p.note_genuine_refusal("v", r(who, 1)).is_none());
        }
    }
}
