//! Batch entry points: `SignBatch`, `VerifyBatch`, `WrapBatch`,
//! `UnwrapBatch` (docs/batch.md).
//!
//! A batch is a list of single operations sharing one request: each item is
//! admitted (charged its own cost, so a tenant's rate limit counts items,
//! not requests), run and audited exactly as the single call would be, in
//! order, and answers with its own result or error. What the items share is
//! the request's decoding, authentication and one audit hand-off: all the
//! records go to the writer in one message and land in one group commit, and
//! the batch answers once they are durable. That shared commit wait is where
//! a batch saves most (see PERFORMANCE.md, "Batches").
use super::calls::{
    sign_call, sign_desc, unwrap_call, unwrap_desc, verify_call, verify_desc, wrap_call, wrap_desc,
    Call, Labels,
};
use super::*;
use crate::ops::Method;

/// The most items one batch may hold.
pub const MAX_BATCH_ITEMS: usize = 256;

/// One item's error, as the single call would have reported it.
fn item_error(e: &Error, request_id: &str) -> proto::ItemError {
    proto::ItemError {
        code: e.code().to_string(),
        message: e.public_message(request_id),
        retryable: e.retryable(),
        retry_after_ms: e.retry_after_ms().unwrap_or(0),
    }
}

/// What the batch runner needs to know about one kind of item: the call
/// and the record description its single operation uses.
struct Kind<Req, Resp> {
    call: fn(&AuditLog, &Req) -> Call,
    describe: fn(&Resp) -> (String, String),
}

impl KmsService {
    /// Run `items` one after the other through admission, `run` and the
    /// audit record builder, then hand every record to the audit log at once
    /// and wait for it. Item `i` is audited under request id
    /// `<request id>/<i>`.
    async fn batch<Req, Resp, A, F, Fut>(
        self: &Arc<Self>,
        caller: &Caller,
        method: Method,
        kind: Kind<Req, Resp>,
        items: Vec<Req>,
        run: F,
    ) -> Result<Vec<A>>
    where
        A: Answer<Resp = Resp>,
        F: Fn(Arc<Self>, Caller, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp>>,
    {
        if items.len() > MAX_BATCH_ITEMS {
            return Err(Error::InvalidArgument(format!(
                "field items: {} items, at most {MAX_BATCH_ITEMS}",
                items.len()
            )));
        }
        // the items' op (the batch's row names the single operation)
        let op = crate::ops::spec(method).audit;
        let started = std::time::Instant::now();
        let n = items.len();
        metrics::gauge!("kms_inflight", "op" => op).increment(n as f64);
        let mut results: Vec<Result<Resp>> = Vec::with_capacity(n);
        // (index into results, its metric labels), for the audited items
        let mut audited = Vec::with_capacity(n);
        let mut events = Vec::with_capacity(n);
        for (i, req) in items.into_iter().enumerate() {
            let call = (kind.call)(&self.audit, &req);
            if let Err(e) = self.precheck(caller, &call) {
                let item_caller = Caller {
                    request_id: format!("{}/{i}", caller.request_id),
                    ..caller.clone()
                };
                let r = Err(e);
                let event = self.audit_event(&item_caller, &call, &r, &kind.describe);
                audited.push((results.len(), Labels::of(&event)));
                events.push(event);
                results.push(r);
                continue;
            }
            // a shed item is answered and counted, not audited (as a single
            // call's shed is)
            let permit = match self.admit(caller, &call).await {
                Ok(p) => p,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            if call.spec.writes() {
                if let Err(e) = self.refuse_if_audit_broken() {
                    drop(permit);
                    results.push(Err(e));
                    continue;
                }
            }
            let item_caller = Caller {
                request_id: format!("{}/{i}", caller.request_id),
                ..caller.clone()
            };
            let r = run(self.clone(), item_caller.clone(), req).await;
            drop(permit);
            let event = self.audit_event(&item_caller, &call, &r, &kind.describe);
            audited.push((results.len(), Labels::of(&event)));
            events.push(event);
            results.push(r);
        }
        // with the writer down, a batch that writes nothing and uses no
        // private key (verify) is still answered, unrecorded
        let unrecorded_ok =
            !crate::ops::spec(method).writes() && self.audit.writer_failure().is_some();
        let appended = match self.audit.append_many(events).await {
            Err(_) if unrecorded_ok => Ok(Vec::new()),
            a => a,
        };
        if let Err(e) = appended {
            tracing::error!(request_id = %caller.request_id, error = %e, "audit append failed");
            for (i, _) in &audited {
                if results[*i].is_ok() {
                    results[*i] = Err(Error::Unavailable("audit log unavailable".into()));
                }
            }
        }
        metrics::gauge!("kms_inflight", "op" => op).decrement(n as f64);
        // every item's answer came when the batch's did
        let elapsed = started.elapsed();
        for (_, labels) in audited {
            labels.account(op, elapsed);
        }
        Ok(results
            .into_iter()
            .enumerate()
            .map(|(i, r)| A::answer(r, &caller.request_id, i))
            .collect())
    }

    pub async fn sign_batch(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::SignBatchRequest,
    ) -> Result<proto::SignBatchResponse> {
        let kind = Kind {
            call: sign_call,
            describe: sign_desc,
        };
        let items = self
            .batch(
                caller,
                Method::SignBatch,
                kind,
                req.items,
                |k, c, r| async move { k.sign_inner(&c, r).await },
            )
            .await?;
        Ok(proto::SignBatchResponse { items })
    }

    pub async fn verify_batch(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::VerifyBatchRequest,
    ) -> Result<proto::VerifyBatchResponse> {
        let kind = Kind {
            call: verify_call,
            describe: verify_desc,
        };
        let items = self
            .batch(
                caller,
                Method::VerifyBatch,
                kind,
                req.items,
                |k, c, r| async move { k.verify_inner(&c, r).await },
            )
            .await?;
        Ok(proto::VerifyBatchResponse { items })
    }

    pub async fn wrap_batch(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::WrapBatchRequest,
    ) -> Result<proto::WrapBatchResponse> {
        let kind = Kind {
            call: wrap_call,
            describe: wrap_desc,
        };
        let items = self
            .batch(
                caller,
                Method::WrapBatch,
                kind,
                req.items,
                |k, c, r| async move { k.wrap_inner(&c, r).await },
            )
            .await?;
        Ok(proto::WrapBatchResponse { items })
    }

    pub async fn unwrap_batch(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::UnwrapBatchRequest,
    ) -> Result<proto::UnwrapBatchResponse> {
        let kind = Kind {
            call: unwrap_call,
            describe: unwrap_desc,
        };
        let items = self
            .batch(
                caller,
                Method::UnwrapBatch,
                kind,
                req.items,
                |k, c, r| async move { k.unwrap_inner(&c, r).await },
            )
            .await?;
        Ok(proto::UnwrapBatchResponse { items })
    }
}

/// A batch item answer: `ok` or `error`, never both.
trait Answer: Sized {
    type Resp;
    fn answer(r: Result<Self::Resp>, request_id: &str, index: usize) -> Self;
}

macro_rules! answer {
    ($($item:ident => $resp:ident),* $(,)?) => {$(
        impl Answer for proto::$item {
            type Resp = proto::$resp;
            fn answer(r: Result<proto::$resp>, request_id: &str, index: usize) -> Self {
                match r {
                    Ok(ok) => Self { ok: Some(ok), error: None },
                    Err(e) => Self {
                        ok: None,
                        error: Some(item_error(&e, &format!("{request_id}/{index}"))),
                    },
                }
            }
        }
    )*};
}

answer! {
    SignBatchItem => SignResponse,
    VerifyBatchItem => VerifyResponse,
    WrapBatchItem => WrapResponse,
    UnwrapBatchItem => UnwrapResponse,
}
