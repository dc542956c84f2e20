//! Every call's frame: authentication of the caller, the [`Call`] that
//! describes an operation (its op-table row, key, input hash, reason), and
//! [`KmsService::call`], which admits it, refuses state changes and
//! private-key use while the audit chain is broken, runs it, records
//! metrics, and answers only once its audit record is durable. Single
//! operations and batch items share it.
use super::strangers::Source;
use super::*;
use crate::admission::Permit;
use crate::ops::{spec, Effect, Gate, Method, OpSpec};

/// One call's admission and audit, described once for single calls and
/// batch items: its row of the op table and what is known of the request
/// before it runs.
pub(super) struct Call {
    pub spec: &'static OpSpec,
    /// The op of the audit record and the metrics (the row's, or a finer
    /// one: SetKeyVersionState records enable_version, disable_version …).
    pub op: &'static str,
    /// The key the request names ("" when none): admission prices it.
    pub key: String,
    /// What the record of a failed call names: the key as the request named
    /// it, or (SetKeyVersionState) the version's kid.
    pub failed_kid: String,
    /// The keyed hash of the request's input, for the record.
    pub input: Option<[u8; 32]>,
    /// Sign or Verify of a digest rather than a message: priced by the
    /// digest rows of the cost table.
    pub digest: bool,
    /// The record's reason (SetPqPolicy: what was asked, and why).
    pub reason: String,
}

/// The calls and record descriptions the single operations and their
/// batch items share.
pub(super) fn sign_call(audit: &AuditLog, r: &proto::SignRequest) -> Call {
    Call {
        digest: !r.digest.is_empty(),
        ..Call::new(Method::Sign, &r.key).input(audit, signed_bytes(&r.message, &r.digest))
    }
}
pub(super) fn verify_call(audit: &AuditLog, r: &proto::VerifyRequest) -> Call {
    let input = if r.jws.is_empty() {
        signed_bytes(&r.message, &r.digest)
    } else {
        r.jws.as_bytes()
    };
    Call {
        digest: !r.digest.is_empty(),
        ..Call::new(Method::Verify, &r.key).input(audit, input)
    }
}
/// What the audit record's input hash covers: the message, or the digest
/// sent in its place.
fn signed_bytes<'a>(message: &'a [u8], digest: &'a [u8]) -> &'a [u8] {
    if digest.is_empty() {
        message
    } else {
        digest
    }
}
pub(super) fn wrap_call(audit: &AuditLog, r: &proto::WrapRequest) -> Call {
    Call::new(Method::Wrap, &r.key).input(audit, &r.plaintext)
}
pub(super) fn unwrap_call(audit: &AuditLog, r: &proto::UnwrapRequest) -> Call {
    Call::new(Method::Unwrap, &r.key).input(audit, &r.ciphertext)
}
pub(super) fn sign_desc(r: &proto::SignResponse) -> (String, String) {
    (r.kid.clone(), r.algorithm.clone())
}
pub(super) fn verify_desc(r: &proto::VerifyResponse) -> (String, String) {
    (r.kid.clone(), format!("{} valid={}", r.algorithm, r.valid))
}
pub(super) fn wrap_desc(r: &proto::WrapResponse) -> (String, String) {
    (r.kid.clone(), r.algorithm.clone())
}
pub(super) fn unwrap_desc(r: &proto::UnwrapResponse) -> (String, String) {
    (r.kid.clone(), String::new())
}

impl Call {
    pub(super) fn new(m: Method, key: &str) -> Self {
        let spec = spec(m);
        Call {
            spec,
            op: spec.audit,
            key: key.to_string(),
            failed_kid: key.to_string(),
            input: None,
            digest: false,
            reason: String::new(),
        }
    }
    pub(super) fn input(mut self, audit: &AuditLog, bytes: &[u8]) -> Self {
        self.input = Some(audit.input_hmac(bytes));
        self
    }
    pub(super) fn op(mut self, op: &'static str) -> Self {
        self.op = op;
        self
    }
    pub(super) fn failed_kid(mut self, kid: String) -> Self {
        self.failed_kid = kid;
        self
    }
    pub(super) fn reason(mut self, reason: String) -> Self {
        self.reason = reason;
        self
    }
}

/// Run `f`, then give its admission units back — before the audit commit
/// the caller then waits for: units bound work in progress, and the audit
/// queue has its own bound.
async fn released<T>(permit: Permit, f: impl std::future::Future<Output = T>) -> T {
    let r = f.await;
    drop(permit);
    r
}

/// An operation's metric labels, taken from its audit record.
pub(super) struct Labels {
    alg: String,
    result: String,
}

impl Labels {
    pub(super) fn of(e: &Event) -> Self {
        Labels {
            alg: e.alg.split(' ').next().unwrap_or("").to_string(),
            result: e.result.clone(),
        }
    }

    /// Latency histogram, op counter, and the forbidden reject count.
    pub(super) fn account(self, op: &'static str, elapsed: std::time::Duration) {
        metrics::histogram!("kms_latency_seconds", "op" => op, "alg" => self.alg.clone())
            .record(elapsed.as_secs_f64());
        if self.result == "permission_denied" {
            crate::telemetry::reject("forbidden");
        }
        metrics::counter!("kms_ops_total", "op" => op, "alg" => self.alg, "result" => self.result)
            .increment(1);
    }
}

impl KmsService {
    // ----- the audited entry points -------------------------------------
    //
    // Every operation, allowed or refused, appends one audit record and
    // answers only once that record's batch is durable. Operations that
    // change state or use a private key are refused up front while the
    // audit chain is broken; get, list and verify stay available.

    pub(super) fn refuse_if_audit_broken(&self) -> Result<()> {
        if let Some(why) = self.audit.writer_failure() {
            return Err(Error::Unavailable(format!(
                "the audit log cannot be written ({why}); operations that change state or use private keys are refused until it is fixed and the service restarted"
            )));
        }
        if let Some((free, floor)) = self.audit.low_space() {
            return Err(Error::Unavailable(crate::audit::low_space_message(
                free, floor,
            )));
        }
        self.audit.integrity().map_err(|e| {
            Error::FailedPrecondition(format!(
                "the audit log failed its integrity check ({e}); operations that change state or use private keys are refused until an operator restores it"
            ))
        })
    }

    /// Authenticate a request's `authorization` value. A refusal is audited
    /// too (op `authenticate`, result `unauthenticated`): the principal is
    /// the presented token's hash prefix when it looked like a token, so a
    /// revoked or leaked token being tried shows up in the log, else
    /// `anonymous`. The token itself is never recorded.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        request_id: String,
    ) -> Result<Caller> {
        self.authenticate_peer(authorization, None, Source::Other, request_id)
            .await
    }

    /// [`Self::authenticate`] with what the connection proved: a verified
    /// client certificate mapped to a tenant (mTLS) is a credential of its
    /// own. A bearer token, when present, decides the identity; with both, the
    /// certificate's tenant must be the token's, or the request is refused.
    /// A verified certificate that maps to no tenant is refused, with or
    /// without a token, never treated as anonymous.
    pub async fn authenticate_peer(
        &self,
        authorization: Option<&str>,
        cert: Option<&std::result::Result<crate::auth::CertIdentity, String>>,
        source: Source,
        request_id: String,
    ) -> Result<Caller> {
        let r = match (authorization, cert) {
            (None, Some(Ok(id))) => Ok(Caller {
                tenant: id.tenant.clone(),
                principal: id.principal.clone(),
                scopes: id.scopes,
                keys: None,
                request_id: request_id.clone(),
            }),
            // a verified certificate that maps to no tenant is refused even
            // beside a token: the connection's identity is not one we know
            (_, Some(Err(why))) => {
                tracing::debug!(request_id = %request_id, reason = %why, "client certificate maps to no tenant");
                Err("certificate")
            }
            (auth, cert) => {
                let r = self.tokens.authenticate(auth, request_id.clone()).await;
                match (r, cert) {
                    (Ok(c), Some(Ok(id))) if id.tenant != c.tenant => {
                        tracing::debug!(request_id = %request_id, "token and client certificate name different tenants");
                        Err("tenant_mismatch")
                    }
                    (r, _) => r.map_err(|why| why.as_str()),
                }
            }
        };
        match r {
            Ok(c) => Ok(c),
            Err(why) => {
                crate::telemetry::reject("unauthenticated");
                let principal = authorization
                    .and_then(crate::auth::parse_bearer)
                    .filter(|t| t.starts_with(crate::auth::TOKEN_PREFIX) && t.len() <= 128)
                    .map(|t| format!("token:{}", crate::auth::table::id_of_presented(t)))
                    .unwrap_or_else(|| "anonymous".into());
                // the first refusal from a quiet address now; the rest in
                // its aggregate ([`super::strangers`])
                if !self.strangers.refused(source, &principal, why) {
                    return Err(Error::Unauthenticated);
                }
                let event = Event {
                    principal,
                    op: "authenticate",
                    result: "unauthenticated".into(),
                    reason: why.into(),
                    request_id,
                    ..Event::default()
                };
                if let Err(e) = self.audit.append(event).await {
                    tracing::error!(error = %e, "audit append failed");
                }
                Err(Error::Unauthenticated)
            }
        }
    }

    /// Before authentication: a source address that has failed it too
    /// often is refused with 429, before its credentials are parsed or
    /// hashed and without a record ([`super::strangers`]).
    pub fn preauth(&self, source: Source, gate: Gate) -> Result<()> {
        self.strangers.admit(source).map_err(|retry_after| {
            crate::telemetry::reject("auth_failures");
            Error::Shed(crate::error::Shed {
                kind: crate::error::ShedKind::AuthFailures,
                op: gate,
                retry_after,
            })
        })
    }

    /// Write the aggregate records of refused authentications whose
    /// interval has passed (all of them with `all`, at shutdown).
    pub async fn flush_refusals(&self, all: bool) {
        let interval = self.strangers.interval();
        let events: Vec<Event> = self
            .strangers
            .due(all)
            .into_iter()
            .map(|a| Event {
                principal: match a.principals.len() {
                    1 => a.principals.keys().next().cloned().unwrap_or_default(),
                    0 => "anonymous".into(),
                    _ => "several".into(),
                },
                op: "authenticate",
                result: "unauthenticated".into(),
                reason: a.reason(interval),
                ..Event::default()
            })
            .collect();
        if let Err(e) = self.audit.append_many(events).await {
            tracing::error!(error = %e, "audit append failed");
        }
    }

    /// What is decided before admission charges the tenant: the scope the
    /// operation needs, and whether the caller may use the key it names (a
    /// key outside a restricted token's patterns is as missing as another
    /// tenant's). A read-only token cannot drain its tenant's sign budget.
    pub(super) fn precheck(&self, caller: &Caller, call: &Call) -> Result<()> {
        caller.require(call.spec.scope)?;
        if call.key.is_empty() || caller.keys.is_none() {
            return Ok(());
        }
        // a malformed name is the operation's own invalid_argument
        let Ok(KeyRef { name, .. }) = KeyRef::parse(&call.key) else {
            return Ok(());
        };
        if caller.may_use(&name) {
            Ok(())
        } else if call.spec.method == Method::CreateKey {
            Err(Error::PermissionDenied(
                "this token may not create keys outside its key patterns".into(),
            ))
        } else {
            Err(Error::NotFound(format!("key {name}")))
        }
    }

    /// Admission for one call, by its gate, for the key it names (none
    /// when empty). The cost comes from the key's algorithm in the in-memory
    /// snapshot (a map read; no store, no custody), and whether a digest is
    /// signed or verified; an unknown key costs 1.
    /// A shed is answered at once and is not audited (a flood must not turn
    /// into audit writes); it is counted in `kms_reject_total{reason}`.
    pub(super) async fn admit(&self, caller: &Caller, call: &Call) -> Result<Permit> {
        let (op, key) = (call.spec.gate, call.key.as_str());
        let alg = if key.is_empty() {
            None
        } else {
            KeyRef::parse(key)
                .ok()
                .and_then(|k| self.keyring.get(&caller.tenant, &k.name))
                .map(|r| r.algorithm)
        };
        self.admission
            .admit(
                op,
                &caller.tenant,
                crate::admission::cost::cost(op, alg, call.digest),
            )
            .await
            .map_err(Error::Shed)
    }

    /// One call, from admission to its durable audit record: admitted by
    /// its gate (a shed is answered at once and not audited), refused while
    /// the audit chain is broken when it writes, run, recorded, metered.
    /// Answers only once the record is durable.
    pub(super) async fn call<T>(
        &self,
        caller: &Caller,
        call: Call,
        run: impl std::future::Future<Output = Result<T>>,
        describe: impl Fn(&T) -> (String, String),
    ) -> Result<T> {
        if let Err(e) = self.precheck(caller, &call) {
            let r: Result<T> = Err(e);
            let event = self.audit_event(caller, &call, &r, &describe);
            let labels = Labels::of(&event);
            if let Err(e) = self.audit.append(event).await {
                tracing::error!(request_id = %caller.request_id, error = %e, "audit append failed");
            }
            labels.account(call.op, std::time::Duration::ZERO);
            return r;
        }
        let permit = self.admit(caller, &call).await?;
        let run = released(permit, run);
        if call.spec.writes() {
            self.refuse_if_audit_broken()?;
        }
        let started = std::time::Instant::now();
        // a change's intent is durable before it can commit
        let intent = if call.spec.effect == Effect::Mutation {
            self.intent(caller, call.op, &call.failed_kid, &call.reason)
                .await?
        } else {
            0
        };
        metrics::gauge!("kms_inflight", "op" => call.op).increment(1.0);
        let r = run.await;
        let mut event = self.audit_event(caller, &call, &r, &describe);
        event.intent = intent;
        let labels = Labels::of(&event);
        let out = match self.audit.append(event).await {
            Ok(_) => r,
            // with the writer down, what writes nothing and uses no private
            // key (verify, get, list) is still answered, unrecorded
            Err(_) if !call.spec.writes() && self.audit.writer_failure().is_some() => r,
            Err(e) => {
                tracing::error!(request_id = %caller.request_id, error = %e, "audit append failed");
                r.and(Err(Error::Unavailable("audit log unavailable".into())))
            }
        };
        metrics::gauge!("kms_inflight", "op" => call.op).decrement(1.0);
        labels.account(call.op, started.elapsed());
        out
    }

    /// Append a mutation's intent record and wait until it is durable;
    /// returns its `seq`, which the outcome record names. Nothing changes
    /// when it cannot be written.
    pub(super) async fn intent(
        &self,
        caller: &Caller,
        op: &'static str,
        kid: &str,
        reason: &str,
    ) -> Result<u64> {
        let event = Event {
            tenant: caller.tenant.clone(),
            principal: caller.principal.clone(),
            op,
            kid: kid.to_string(),
            result: crate::audit::chain::INTENT.into(),
            reason: reason.to_string(),
            request_id: caller.request_id.clone(),
            ..Event::default()
        };
        self.audit.append(event).await.map_err(|e| {
            tracing::error!(request_id = %caller.request_id, error = %e, "audit append failed");
            Error::Unavailable("audit log unavailable; nothing was changed".into())
        })
    }

    /// The audit record (and debug log line) of one finished call.
    pub(super) fn audit_event<T>(
        &self,
        caller: &Caller,
        call: &Call,
        r: &Result<T>,
        describe: &impl Fn(&T) -> (String, String),
    ) -> Event {
        let (kid, alg, result) = match r {
            Ok(v) => {
                let (k, a) = describe(v);
                (k, a, "ok".to_string())
            }
            Err(e) => (call.failed_kid.clone(), String::new(), e.code().to_string()),
        };
        let event = Event {
            tenant: caller.tenant.clone(),
            principal: caller.principal.clone(),
            op: call.op,
            kid,
            alg,
            result,
            reason: call.reason.clone(),
            request_id: caller.request_id.clone(),
            input_hmac: call.input,
            intent: 0,
        };
        tracing::debug!(
            op = call.op,
            tenant = %event.tenant,
            principal = %event.principal,
            kid = %event.kid,
            result = %event.result,
            "operation"
        );
        event
    }
}
