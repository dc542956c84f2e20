//! The per-tenant post-quantum migration policy (DESIGN.md §5,
//! docs/pq-policy.md): which signatures hybrid keys produce, which
//! signatures verify accepts, and the automatic rollback that keeps a
//! migration from breaking callers.
//!
//! Precedence for a tenant: a stored value (set through the admin API or by
//! a rollback) wins over the tenant's entry in the config file, which wins
//! over the default (`KMS_PQ_*`, or the config file's `[pq]` table).
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::crypto::hybrid::{ComponentResults, SignatureKind};
use crate::crypto::Algorithm;
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
pub enum Decision {
    /// The signature was judged: valid or not.
    Judged(bool),
    /// The policy refuses this kind of signature outright (`pq_policy`).
    /// `genuine`: every component present verified, so the signature really
    /// came from the key (an unmigrated producer, or a replay of one of its
    /// signatures). Only a genuine refusal may roll a tenant back: a forged
    /// or garbage bundle must not let any caller downgrade the tenant.
    Refused { why: String, genuine: bool },
}

/// Decide a verification. `alg` is the key's algorithm; for hybrid keys
/// `components` says which components were present and whether each
/// verified, for single-algorithm keys `single` is the signature's validity.
pub fn decide(
    mode: VerifyMode,
    alg: Algorithm,
    components: Option<ComponentResults>,
    single: bool,
) -> Decision {
    match components {
        Some(r) => {
            let kind = match (r.classical.is_some(), r.pq.is_some()) {
                (true, true) => SignatureKind::Hybrid,
                (true, false) => SignatureKind::ClassicalOnly,
                _ => SignatureKind::PqOnly,
            };
            match mode {
                VerifyMode::Or => Decision::Judged(r.classical == Some(true) || r.pq == Some(true)),
                VerifyMode::And => match kind {
                    SignatureKind::Hybrid => {
                        Decision::Judged(r.classical == Some(true) && r.pq == Some(true))
                    }
                    k => Decision::Refused {
                        why: format!(
                            "the tenant's PQ policy (verify_mode and) requires both components; this signature is {}",
                            k.as_str()
                        ),
                        genuine: genuine(&r),
                    },
                },
                VerifyMode::PqOnly => match r.pq {
                    Some(ok) => Decision::Judged(ok),
                    None => Decision::Refused {
                        why: "the tenant's PQ policy (verify_mode pq_only) refuses classical-only signatures"
                            .into(),
                        genuine: genuine(&r),
                    },
                },
            }
        }
        None if mode == VerifyMode::PqOnly && alg.is_classical_signature() => {
            Decision::Refused {
                why: format!(
                    "the tenant's PQ policy (verify_mode pq_only) refuses classical-only signatures ({alg} key)"
                ),
                genuine: single,
            }
        }
        None => Decision::Judged(single),
    }
}

/// Every component present verified (and at least one was present).
fn genuine(r: &ComponentResults) -> bool {
    (r.classical.is_some() || r.pq.is_some()) && r.classical != Some(false) && r.pq != Some(false)
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
}

impl Policies {
    /// Load stored overrides.
    pub fn load(
        store: Arc<dyn Store>,
        default: PqPolicy,
        configured: BTreeMap<String, PqPolicy>,
    ) -> Result<Self, String> {
        let stored = read_stored(store.as_ref())?;
        Ok(Policies {
            default,
            configured,
            stored: RwLock::new(stored),
            store,
            change: Mutex::new(()),
        })
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
}
