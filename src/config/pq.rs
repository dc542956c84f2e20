//! The PQ policy's settings: the default from `KMS_PQ_*` over `[pq]`, and a
//! policy per tenant from `[pq.tenants.NAME]` (docs/pq-policy.md).
use std::collections::BTreeMap;

use serde::Deserialize;

use super::source::Src;
use super::{err, parse_bool, ConfigError};
use crate::policy::{PqPolicy, RollbackRule};

/// The PQ policy settings.
#[derive(Clone, Debug, Default)]
pub struct PqConfig {
    /// The policy of tenants with nothing more specific.
    pub default: PqPolicy,
    /// Per-tenant policies from the config file.
    pub tenants: BTreeMap<String, PqPolicy>,
    /// How many distinct principals' genuine classical refusals, within
    /// which window, roll a tenant back (`KMS_PQ_ROLLBACK_THRESHOLD`,
    /// `KMS_PQ_ROLLBACK_WINDOW_SECS`).
    pub rollback: RollbackRule,
}

/// `[pq]`: the default PQ policy, and `[pq.tenants.NAME]` per tenant.
/// Unset fields take the phase's defaults (docs/pq-policy.md).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqFile {
    pub phase: Option<u8>,
    pub produce_hybrid: Option<bool>,
    pub verify_mode: Option<String>,
    pub rollout_percent: Option<u8>,
    pub auto_rollback: Option<bool>,
    pub accept_legacy_bundles: Option<bool>,
    /// Distinct principals whose genuine classical signatures must be
    /// refused within the window before a rollback (2..=1000).
    pub rollback_threshold: Option<usize>,
    pub rollback_window_secs: Option<u64>,
    pub tenants: Option<BTreeMap<String, PqTenantFile>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqTenantFile {
    pub phase: Option<u8>,
    pub produce_hybrid: Option<bool>,
    pub verify_mode: Option<String>,
    pub rollout_percent: Option<u8>,
    pub auto_rollback: Option<bool>,
    pub accept_legacy_bundles: Option<bool>,
}

/// A policy's switches that do not depend on the phase.
#[derive(Default)]
struct Switches {
    auto_rollback: Option<bool>,
    accept_legacy_bundles: Option<bool>,
}

/// A policy from its parts, each with the name of where it came from.
fn pq_policy(
    phase: (Option<u8>, String),
    produce: (Option<bool>, String),
    mode: (Option<String>, String),
    rollout: (Option<u8>, String),
    switches: Switches,
) -> Result<PqPolicy, ConfigError> {
    let p = phase.0.unwrap_or(0);
    if p > 3 {
        return Err(err(phase.1, "must be 0, 1, 2 or 3"));
    }
    let mut policy = PqPolicy::for_phase(p);
    if let Some(b) = produce.0 {
        policy.produce_hybrid = b;
    }
    if let Some(m) = mode.0 {
        policy.verify_mode = crate::policy::VerifyMode::parse(m.trim())
            .ok_or_else(|| err(&mode.1, format!("{m:?} is not or, and or pq_only")))?;
    }
    if let Some(r) = rollout.0 {
        if r > 100 {
            return Err(err(rollout.1, "must be 0 to 100"));
        }
        policy.rollout_percent = r;
    }
    if let Some(b) = switches.auto_rollback {
        policy.auto_rollback = b;
    }
    if let Some(b) = switches.accept_legacy_bundles {
        policy.accept_legacy_bundles = b;
    }
    policy.validate().map_err(|e| err(phase.1, e))?;
    Ok(policy)
}

/// The default policy, the per-tenant ones, and the rollback rule.
pub(super) fn load(pqf: PqFile, src: &Src<'_>) -> Result<PqConfig, ConfigError> {
    let (env, fname) = (src.env, src.fname);
    let env_or = |name: &str, key: &str| -> (Option<String>, String) {
        match env.var(name) {
            Some(v) => (Some(v), name.to_string()),
            None => (None, format!("pq.{key} in {fname}")),
        }
    };
    let (phase_s, phase_o) = env_or("KMS_PQ_PHASE", "phase");
    let phase = match phase_s {
        Some(v) => Some(
            v.trim()
                .parse::<u8>()
                .map_err(|_| err(&phase_o, "must be 0, 1, 2 or 3"))?,
        ),
        None => pqf.phase,
    };
    let (prod_s, prod_o) = env_or("KMS_PQ_PRODUCE_HYBRID", "produce_hybrid");
    let produce = match prod_s {
        Some(v) => Some(parse_bool(&v).ok_or_else(|| err(&prod_o, "must be true or false"))?),
        None => pqf.produce_hybrid,
    };
    let (mode_s, mode_o) = env_or("KMS_PQ_VERIFY_MODE", "verify_mode");
    let mode = mode_s.or(pqf.verify_mode);
    let (roll_s, roll_o) = env_or("KMS_PQ_ROLLOUT_PERCENT", "rollout_percent");
    let rollout = match roll_s {
        Some(v) => Some(
            v.trim()
                .parse::<u8>()
                .map_err(|_| err(&roll_o, "must be 0 to 100"))?,
        ),
        None => pqf.rollout_percent,
    };
    let flag = |name: &str, key: &str, file: Option<bool>| -> Result<Option<bool>, ConfigError> {
        let (v, origin) = env_or(name, key);
        match v {
            Some(v) => Ok(Some(
                parse_bool(&v).ok_or_else(|| err(&origin, "must be true or false"))?,
            )),
            None => Ok(file),
        }
    };
    let switches = Switches {
        auto_rollback: flag("KMS_PQ_AUTO_ROLLBACK", "auto_rollback", pqf.auto_rollback)?,
        accept_legacy_bundles: flag(
            "KMS_PQ_ACCEPT_LEGACY_BUNDLES",
            "accept_legacy_bundles",
            pqf.accept_legacy_bundles,
        )?,
    };
    let pq_default = pq_policy(
        (phase, phase_o),
        (produce, prod_o),
        (mode, mode_o),
        (rollout, roll_o),
        switches,
    )?;
    let (thr_s, thr_o) = env_or("KMS_PQ_ROLLBACK_THRESHOLD", "rollback_threshold");
    let threshold = match thr_s {
        Some(v) => Some(
            v.trim()
                .parse::<usize>()
                .map_err(|_| err(&thr_o, "must be a whole number of principals"))?,
        ),
        None => pqf.rollback_threshold,
    }
    .unwrap_or(RollbackRule::DEFAULT_THRESHOLD);
    if !(RollbackRule::MIN_THRESHOLD..=RollbackRule::MAX_THRESHOLD).contains(&threshold) {
        return Err(err(
            thr_o,
            format!(
                "must be {} to {} (one principal alone must never roll a tenant back)",
                RollbackRule::MIN_THRESHOLD,
                RollbackRule::MAX_THRESHOLD
            ),
        ));
    }
    let (win_s, win_o) = env_or("KMS_PQ_ROLLBACK_WINDOW_SECS", "rollback_window_secs");
    let window = match win_s {
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| err(&win_o, "must be a number of seconds"))?,
        ),
        None => pqf.rollback_window_secs,
    }
    .unwrap_or(RollbackRule::DEFAULT_WINDOW.as_secs());
    if !(1..=86_400).contains(&window) {
        return Err(err(win_o, "must be 1 to 86400 seconds"));
    }
    let rule = RollbackRule {
        threshold,
        window: std::time::Duration::from_secs(window),
    };
    let mut pq_tenants = BTreeMap::new();
    for (tenant, t) in pqf.tenants.unwrap_or_default() {
        let at = |k: &str| format!("pq.tenants.{tenant}.{k} in {fname}");
        crate::auth::validate_tenant(&tenant).map_err(|e| err(at("(name)"), e))?;
        let p = pq_policy(
            (t.phase, at("phase")),
            (t.produce_hybrid, at("produce_hybrid")),
            (t.verify_mode, at("verify_mode")),
            (t.rollout_percent, at("rollout_percent")),
            Switches {
                auto_rollback: t.auto_rollback,
                accept_legacy_bundles: t.accept_legacy_bundles,
            },
        )?;
        pq_tenants.insert(tenant, p);
    }
    Ok(PqConfig {
        default: pq_default,
        tenants: pq_tenants,
        rollback: rule,
    })
}
