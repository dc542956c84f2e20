//! The PQ policy's settings: the default from `KMS_PQ_*` over `[pq]`, and a
//! policy per tenant from `[pq.tenants.NAME]` (docs/pq-policy.md).
use std::collections::BTreeMap;

use serde::Deserialize;

use super::{err, parse_bool, ConfigError, Env};
use crate::policy::PqPolicy;

/// `[pq]`: the default PQ policy, and `[pq.tenants.NAME]` per tenant.
/// Unset fields take the phase's defaults (docs/pq-policy.md).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqFile {
    pub phase: Option<u8>,
    pub produce_hybrid: Option<bool>,
    pub verify_mode: Option<String>,
    pub rollout_percent: Option<u8>,
    pub tenants: Option<BTreeMap<String, PqTenantFile>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqTenantFile {
    pub phase: Option<u8>,
    pub produce_hybrid: Option<bool>,
    pub verify_mode: Option<String>,
    pub rollout_percent: Option<u8>,
}

/// A policy from its parts, each with the name of where it came from.
fn pq_policy(
    phase: (Option<u8>, String),
    produce: (Option<bool>, String),
    mode: (Option<String>, String),
    rollout: (Option<u8>, String),
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
    policy.validate().map_err(|e| err(phase.1, e))?;
    Ok(policy)
}

/// The default policy and the per-tenant ones.
pub(super) fn load(
    pqf: PqFile,
    env: &dyn Env,
    fname: &str,
) -> Result<(PqPolicy, BTreeMap<String, PqPolicy>), ConfigError> {
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
    let pq_default = pq_policy(
        (phase, phase_o),
        (produce, prod_o),
        (mode, mode_o),
        (rollout, roll_o),
    )?;
    let mut pq_tenants = BTreeMap::new();
    for (tenant, t) in pqf.tenants.unwrap_or_default() {
        let at = |k: &str| format!("pq.tenants.{tenant}.{k} in {fname}");
        crate::auth::validate_tenant(&tenant).map_err(|e| err(at("(name)"), e))?;
        let p = pq_policy(
            (t.phase, at("phase")),
            (t.produce_hybrid, at("produce_hybrid")),
            (t.verify_mode, at("verify_mode")),
            (t.rollout_percent, at("rollout_percent")),
        )?;
        pq_tenants.insert(tenant, p);
    }
    Ok((pq_default, pq_tenants))
}
