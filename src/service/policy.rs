//! The PQ policy in the request path: downgrade attempts, policy refusals
//! with their thresholded rollback, and the admin operations that read and
//! change a tenant's policy.
use super::calls::Call;
use super::*;
use crate::crypto::hybrid::Presented;
use crate::ops::Method;
use crate::policy::{Entry, PqPolicy, Refusal, VerifyMode};

fn policy_to_proto(tenant: &str, e: &Entry) -> proto::PqPolicyResponse {
    proto::PqPolicyResponse {
        tenant: tenant.to_string(),
        policy: Some(proto::PqPolicy {
            phase: e.policy.phase.into(),
            produce_hybrid: e.policy.produce_hybrid,
            verify_mode: e.policy.verify_mode.as_str().to_string(),
            rollout_percent: Some(e.policy.rollout_percent.into()),
            auto_rollback: Some(e.policy.auto_rollback),
            accept_legacy_bundles: Some(e.policy.accept_legacy_bundles),
        }),
        source: e.source.as_str().to_string(),
        updated_at_ms: e.updated_at_ms,
        rollback_reason: e.rollback_reason.clone(),
        rolled_back_at_ms: e.rolled_back_at_ms,
    }
}

impl KmsService {
    /// A signature with the marks of a downgrade attempt (a classical-only
    /// form where the policy requires PQ that is not a valid plain
    /// signature, or a genuine component beside a broken one): counted in
    /// `kms_pq_downgrade_attempt_total` and audited (op
    /// `pq_downgrade_attempt`). It never moves the policy.
    pub(super) async fn downgrade_attempt(
        &self,
        caller: &Caller,
        kid: &str,
        presented: Presented,
        mode: VerifyMode,
    ) {
        metrics::counter!("kms_pq_downgrade_attempt_total").increment(1);
        let what = match presented {
            Presented::Composite { .. } => "a composite signature with one component broken",
            Presented::Classical(_) => "a classical-only signature that is not valid",
            Presented::Legacy { pq: None, .. } => "a classical-only RKS v1 bundle",
            Presented::Legacy { .. } => "an RKS v1 bundle with one component broken",
            Presented::Pq(_) | Presented::Malformed => "a malformed signature",
        };
        tracing::debug!(
            request_id = %caller.request_id,
            tenant = %caller.tenant,
            kid,
            "PQ downgrade attempt: {what}"
        );
        let event = Event {
            tenant: caller.tenant.clone(),
            principal: caller.principal.clone(),
            op: "pq_downgrade_attempt",
            kid: kid.to_string(),
            result: "refused".into(),
            reason: format!("{what} under verify_mode {}", mode.as_str()),
            request_id: caller.request_id.clone(),
            ..Event::default()
        };
        if let Err(e) = self.audit.append(event).await {
            tracing::error!(error = %e, "audit append failed");
        }
    }

    /// Count a policy refusal and return the error for the caller. A
    /// refusal of a *genuine* classical signature (`genuine`) is noted; when
    /// the refusals of distinct principals within the window reach the
    /// threshold, a phase 0–2 tenant with `auto_rollback` is rolled back to
    /// `verify_mode = or` (audited with those refusals, and metered).
    pub(super) async fn refused_by_pq_policy(
        self: &Arc<Self>,
        caller: &Caller,
        kid: &str,
        why: String,
        genuine: bool,
    ) -> Error {
        crate::telemetry::reject("pq_policy");
        if !genuine {
            return Error::PqPolicy(why);
        }
        let refusal = Refusal {
            principal: caller.principal.clone(),
            kid: kid.to_string(),
            request_id: caller.request_id.clone(),
            at: std::time::Instant::now(),
        };
        let Some(refusals) = self.policies.note_genuine_refusal(&caller.tenant, refusal) else {
            return Error::PqPolicy(why);
        };
        let rule = self.policies.rollback_rule();
        let listed = refusals
            .iter()
            .map(|r| format!("{} on {} (request {})", r.principal, r.kid, r.request_id))
            .collect::<Vec<_>>()
            .join("; ");
        let reason = format!(
            "{} distinct principals' genuine classical signatures refused within {} s: {listed}",
            refusals.len(),
            rule.window.as_secs()
        );
        let system = Caller {
            principal: "ron-kms".into(),
            ..caller.clone()
        };
        let intent = match self
            .intent(&system, "pq_policy_rollback", kid, &reason)
            .await
        {
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!(error = %e, "PQ policy rollback not attempted: its intent could not be recorded");
                return Error::PqPolicy(why);
            }
        };
        let this = self.clone();
        let tenant = caller.tenant.clone();
        let stored = reason.clone();
        let rolled = self
            .mutation(move || this.policies.rollback(&tenant, &stored, now_ms()))
            .await;
        let result = match &rolled {
            Ok(Some(_)) => "ok".to_string(),
            Ok(None) => "unchanged".to_string(),
            Err(e) => e.code().to_string(),
        };
        let event = Event {
            tenant: caller.tenant.clone(),
            principal: "ron-kms".into(),
            op: "pq_policy_rollback",
            kid: kid.to_string(),
            result,
            reason,
            request_id: caller.request_id.clone(),
            intent,
            ..Event::default()
        };
        if let Err(e) = self.audit.append(event).await {
            tracing::error!(error = %e, "audit append failed");
        }
        match rolled {
            Ok(Some(entry)) => {
                metrics::counter!("kms_pq_policy_rollback_total").increment(1);
                tracing::warn!(
                    request_id = %caller.request_id,
                    tenant = %caller.tenant,
                    kid,
                    phase = entry.policy.phase,
                    refusals = refusals.len(),
                    "PQ policy refusals reached the rollback threshold: tenant rolled back to verify_mode or"
                );
                Error::PqPolicy(format!(
                    "{why}; the tenant (phase {}) has been rolled back to verify_mode or",
                    entry.policy.phase
                ))
            }
            Ok(None) => Error::PqPolicy(why),
            Err(e) => {
                tracing::error!(error = %e, "PQ policy rollback failed");
                Error::PqPolicy(why)
            }
        }
    }

    pub(super) async fn get_pq_policy_inner(
        self: &Arc<Self>,
        caller: &Caller,
        _req: proto::GetPqPolicyRequest,
    ) -> Result<proto::PqPolicyResponse> {
        caller.require(Scope::Admin)?;
        Ok(policy_to_proto(
            &caller.tenant,
            &self.policies.get(&caller.tenant),
        ))
    }

    pub(super) async fn set_pq_policy_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::SetPqPolicyRequest,
    ) -> Result<proto::PqPolicyResponse> {
        caller.require(Scope::Admin)?;
        let p = req
            .policy
            .ok_or_else(|| Error::InvalidArgument("field policy: required".into()))?;
        if req.reason.chars().count() > 200 {
            return Err(Error::InvalidArgument(
                "field reason: at most 200 characters".into(),
            ));
        }
        let verify_mode = VerifyMode::parse(&p.verify_mode).ok_or_else(|| {
            Error::InvalidArgument("field policy.verify_mode: must be or, and or pq_only".into())
        })?;
        let phase = u8::try_from(p.phase)
            .ok()
            .filter(|p| *p <= 3)
            .ok_or_else(|| Error::InvalidArgument("field policy.phase: must be 0 to 3".into()))?;
        // absent means the whole tenant, as in the config file
        let rollout_percent = u8::try_from(p.rollout_percent.unwrap_or(100))
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| {
                Error::InvalidArgument("field policy.rollout_percent: must be 0 to 100".into())
            })?;
        let policy = PqPolicy {
            phase,
            produce_hybrid: p.produce_hybrid,
            verify_mode,
            rollout_percent,
            auto_rollback: p.auto_rollback.unwrap_or(true),
            accept_legacy_bundles: p.accept_legacy_bundles.unwrap_or(true),
        };
        policy
            .validate()
            .map_err(|e| Error::InvalidArgument(format!("field policy: {e}")))?;
        let this = self.clone();
        let tenant = caller.tenant.clone();
        let entry = self
            .mutation(move || this.policies.set(&tenant, policy, now_ms()))
            .await?;
        tracing::info!(
            request_id = %caller.request_id,
            tenant = %caller.tenant,
            principal = %caller.principal,
            phase = policy.phase,
            verify_mode = policy.verify_mode.as_str(),
            "PQ policy set"
        );
        Ok(policy_to_proto(&caller.tenant, &entry))
    }
}

impl KmsService {
    pub async fn get_pq_policy(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::GetPqPolicyRequest,
    ) -> Result<proto::PqPolicyResponse> {
        let call = Call::new(Method::GetPqPolicy, "");
        self.call(caller, call, self.get_pq_policy_inner(caller, req), |_| {
            (String::new(), String::new())
        })
        .await
    }

    pub async fn set_pq_policy(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::SetPqPolicyRequest,
    ) -> Result<proto::PqPolicyResponse> {
        // the audit record says what was asked for and why
        let asked = match &req.policy {
            Some(p) => format!(
                "phase={} produce_hybrid={} verify_mode={} rollout_percent={} auto_rollback={} accept_legacy_bundles={}; {}",
                p.phase,
                p.produce_hybrid,
                p.verify_mode.chars().take(16).collect::<String>(),
                p.rollout_percent.unwrap_or(100),
                p.auto_rollback.unwrap_or(true),
                p.accept_legacy_bundles.unwrap_or(true),
                req.reason.chars().take(200).collect::<String>()
            ),
            None => String::new(),
        };
        let call = Call::new(Method::SetPqPolicy, "").reason(asked);
        self.call(caller, call, self.set_pq_policy_inner(caller, req), |_| {
            (String::new(), String::new())
        })
        .await
    }
}
