//! The call skeleton both fronts share: a request id, a span, the request
//! timeout, authentication (bearer token or client certificate), the
//! front's own decoding, and the operation itself run to its end in a task
//! of its own. Each front only extracts what it needs from its protocol and
//! encodes the outcome.
use std::future::Future;
use std::sync::Arc;

use crate::auth::{Caller, CertIdentity};
use crate::error::Error;
use crate::ingress::conn::ConnInfo;
use crate::ops::OpSpec;
use crate::service::KmsService;

/// What a front knows of a request before the skeleton runs.
pub(super) struct Incoming {
    /// `"grpc"` or `"http"`, for the span and the shed-time metric.
    pub front: &'static str,
    /// The caller's `x-request-id` header, if any.
    pub request_id: Option<String>,
    /// The `authorization` value, if any.
    pub authorization: Option<String>,
    /// The verified client certificate's identity, if the connection has one.
    pub cert: Option<Result<CertIdentity, String>>,
    /// The peer's address, when the connection knows it.
    pub source: Option<std::net::IpAddr>,
}

impl Incoming {
    /// What the request's headers and its connection (the [`ConnInfo`]
    /// extension the accept loop sets) say.
    pub fn from_parts(
        front: &'static str,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Incoming {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let peer = extensions.get::<ConnInfo>().map(|c| &c.peer);
        Incoming {
            front,
            request_id: header(super::REQUEST_ID_HEADER),
            authorization: header(http::header::AUTHORIZATION.as_str()),
            cert: peer.and_then(|p| p.cert.clone()),
            source: peer.and_then(|p| p.remote).map(|a| a.ip()),
        }
    }
}

/// A request on its way through the skeleton.
pub(super) struct Call {
    /// The request id the answer carries (and every log line of the call).
    pub request_id: String,
}

/// `work` under the request's deadline; past it, `timeout`.
pub(super) async fn within<T>(
    deadline: tokio::time::Instant,
    limit: std::time::Duration,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout_at(deadline, work).await {
        Ok(r) => r,
        Err(_) => {
            crate::telemetry::reject("timeout");
            Err(Error::Timeout(limit.as_millis() as u64))
        }
    }
}

impl Call {
    /// Run one operation for `incoming`: authenticate, then `decode` the
    /// message (which may refuse early, e.g. a shed before reading a body),
    /// then `op` in a task of its own, all within the request timeout.
    /// Returns the request id and the outcome.
    pub(super) async fn run<Req, Resp, D, DFut, F, Fut>(
        kms: &Arc<KmsService>,
        spec: &'static OpSpec,
        incoming: Incoming,
        decode: D,
        op: F,
    ) -> (Call, Result<Resp, Error>)
    where
        D: FnOnce(Arc<KmsService>, &'static OpSpec, Caller) -> DFut,
        DFut: Future<Output = Result<(Caller, Req), Error>>,
        F: FnOnce(Arc<KmsService>, Caller, Req) -> Fut,
        Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
        Resp: Send + 'static,
    {
        let started = std::time::Instant::now();
        let request_id = super::request_id_from(incoming.request_id.as_deref());
        let span = match incoming.front {
            "grpc" => tracing::info_span!("grpc", request_id = %request_id),
            _ => tracing::info_span!("http", request_id = %request_id),
        };
        let limit = kms.request_timeout();
        let deadline = tokio::time::Instant::now() + limit;
        let rid = request_id.clone();
        let result = tracing::Instrument::instrument(
            async {
                let source = incoming
                    .source
                    .map_or(crate::service::strangers::Source::Other, |a| {
                        crate::service::strangers::Source::of(a)
                    });
                kms.preauth(source, spec.gate)?;
                let (caller, msg) = within(deadline, limit, async {
                    let caller = kms
                        .authenticate_peer(
                            incoming.authorization.as_deref(),
                            incoming.cert.as_ref(),
                            source,
                            rid,
                        )
                        .await?;
                    decode(kms.clone(), spec, caller).await
                })
                .await?;
                // Once decoded, the operation runs to its end in a task of its
                // own: neither the request timeout nor a client that hangs up
                // can stop it between its effect and its audit record.
                let task = tokio::spawn(tracing::Instrument::in_current_span(op(
                    kms.clone(),
                    caller,
                    msg,
                )));
                within(deadline, limit, async {
                    task.await
                        .map_err(|e| Error::Internal(format!("operation task failed: {e}")))?
                })
                .await
            },
            span,
        )
        .await;
        if let Err(Error::Shed(_)) = &result {
            crate::telemetry::shed_time(incoming.front, started.elapsed());
        }
        (Call { request_id }, result)
    }
}
