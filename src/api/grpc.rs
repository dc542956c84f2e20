//! The gRPC front (tonic): `ron.kms.v1.Kms`, reflection and the standard
//! health service. Credentials come from the `authorization` metadata
//! (`Bearer <token>`); every response carries `x-request-id`.
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::call::{Call, Incoming};
use super::error::statuses;
use super::{new_request_id, MAX_BODY_BYTES, REQUEST_ID_HEADER};
use crate::auth::Caller;
use crate::error::Error;
use crate::ingress::conn::ConnInfo;
use crate::ops::{spec, Method};
use crate::proto::kms_server::{Kms, KmsServer};
use crate::proto::*;
use crate::service::KmsService;

#[derive(Clone)]
pub struct GrpcFront {
    kms: Arc<KmsService>,
}

impl GrpcFront {
    pub fn new(kms: Arc<KmsService>) -> Self {
        GrpcFront { kms }
    }

    /// The tonic service with the 1 MiB message cap.
    pub fn into_server(self) -> KmsServer<Self> {
        KmsServer::new(self)
            .max_decoding_message_size(MAX_BODY_BYTES)
            .max_encoding_message_size(4 * MAX_BODY_BYTES)
    }

    /// The shared call skeleton ([`super::call`]) around `op`; tonic has
    /// already decoded the (≤ 1 MiB) message. Admission runs inside the
    /// operation.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        method: Method,
        req: Request<Req>,
        op: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Arc<KmsService>, Caller, Req) -> Fut,
        Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
        Resp: Send + 'static,
    {
        let incoming = Incoming::from_parts("grpc", req.metadata().as_ref(), req.extensions());
        let msg = req.into_inner();
        let (call, result) = Call::run(
            &self.kms,
            spec(method),
            incoming,
            |_, _, caller| std::future::ready(Ok((caller, msg))),
            op,
        )
        .await;
        match result {
            Ok(resp) => {
                let mut r = Response::new(resp);
                let rid = MetadataValue::try_from(call.request_id.as_str())
                    .expect("request ids are ASCII");
                r.metadata_mut().insert(REQUEST_ID_HEADER, rid);
                Ok(r)
            }
            Err(e) => Err(to_status(&e, &call.request_id)),
        }
    }
}

/// Map a domain error to a tonic status with the shared metadata.
pub fn to_status(e: &Error, request_id: &str) -> Status {
    let (_, code) = statuses(e);
    let mut st = Status::new(code, e.public_message(request_id));
    let md = st.metadata_mut();
    if let Ok(v) = MetadataValue::try_from(request_id) {
        md.insert(REQUEST_ID_HEADER, v);
    }
    md.insert("kms-error-code", MetadataValue::from_static(e.code()));
    if let Some(ms) = e.retry_after_ms() {
        // gRFC A6: how long the client should wait before its next attempt
        if let Ok(v) = MetadataValue::try_from(ms.to_string()) {
            md.insert("grpc-retry-pushback-ms", v);
        }
    }
    st
}

#[tonic::async_trait]
impl Kms for GrpcFront {
    async fn create_key(
        &self,
        r: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        self.unary(Method::CreateKey, r, |k, c, b| async move {
            k.create_key(&c, b).await
        })
        .await
    }
    async fn get_key(&self, r: Request<GetKeyRequest>) -> Result<Response<GetKeyResponse>, Status> {
        self.unary(Method::GetKey, r, |k, c, b| async move {
            k.get_key(&c, b).await
        })
        .await
    }
    async fn list_keys(
        &self,
        r: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        self.unary(Method::ListKeys, r, |k, c, b| async move {
            k.list_keys(&c, b).await
        })
        .await
    }
    async fn rotate_key(
        &self,
        r: Request<RotateKeyRequest>,
    ) -> Result<Response<RotateKeyResponse>, Status> {
        self.unary(Method::RotateKey, r, |k, c, b| async move {
            k.rotate_key(&c, b).await
        })
        .await
    }
    async fn set_key_version_state(
        &self,
        r: Request<SetKeyVersionStateRequest>,
    ) -> Result<Response<SetKeyVersionStateResponse>, Status> {
        self.unary(Method::SetKeyVersionState, r, |k, c, b| async move {
            k.set_key_version_state(&c, b).await
        })
        .await
    }
    async fn update_key(
        &self,
        r: Request<UpdateKeyRequest>,
    ) -> Result<Response<UpdateKeyResponse>, Status> {
        self.unary(Method::UpdateKey, r, |k, c, b| async move {
            k.update_key(&c, b).await
        })
        .await
    }
    async fn delete_key(
        &self,
        r: Request<DeleteKeyRequest>,
    ) -> Result<Response<DeleteKeyResponse>, Status> {
        self.unary(Method::DeleteKey, r, |k, c, b| async move {
            k.delete_key(&c, b).await
        })
        .await
    }
    async fn sign_jws(
        &self,
        r: Request<SignJwsRequest>,
    ) -> Result<Response<SignJwsResponse>, Status> {
        self.unary(Method::SignJws, r, |k, c, b| async move {
            k.sign_jws(&c, b).await
        })
        .await
    }
    async fn sign(&self, r: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        self.unary(
            Method::Sign,
            r,
            |k, c, b| async move { k.sign(&c, b).await },
        )
        .await
    }
    async fn verify(&self, r: Request<VerifyRequest>) -> Result<Response<VerifyResponse>, Status> {
        self.unary(
            Method::Verify,
            r,
            |k, c, b| async move { k.verify(&c, b).await },
        )
        .await
    }
    async fn wrap(&self, r: Request<WrapRequest>) -> Result<Response<WrapResponse>, Status> {
        self.unary(
            Method::Wrap,
            r,
            |k, c, b| async move { k.wrap(&c, b).await },
        )
        .await
    }
    async fn unwrap(&self, r: Request<UnwrapRequest>) -> Result<Response<UnwrapResponse>, Status> {
        self.unary(
            Method::Unwrap,
            r,
            |k, c, b| async move { k.unwrap(&c, b).await },
        )
        .await
    }
    async fn mac(&self, r: Request<MacRequest>) -> Result<Response<MacResponse>, Status> {
        self.unary(Method::Mac, r, |k, c, b| async move { k.mac(&c, b).await })
            .await
    }
    async fn verify_mac(
        &self,
        r: Request<VerifyMacRequest>,
    ) -> Result<Response<VerifyMacResponse>, Status> {
        self.unary(Method::VerifyMac, r, |k, c, b| async move {
            k.verify_mac(&c, b).await
        })
        .await
    }
    async fn generate_data_key(
        &self,
        r: Request<GenerateDataKeyRequest>,
    ) -> Result<Response<GenerateDataKeyResponse>, Status> {
        self.unary(Method::GenerateDataKey, r, |k, c, b| async move {
            k.generate_data_key(&c, b).await
        })
        .await
    }
    async fn get_pq_policy(
        &self,
        r: Request<GetPqPolicyRequest>,
    ) -> Result<Response<PqPolicyResponse>, Status> {
        self.unary(Method::GetPqPolicy, r, |k, c, b| async move {
            k.get_pq_policy(&c, b).await
        })
        .await
    }
    async fn set_pq_policy(
        &self,
        r: Request<SetPqPolicyRequest>,
    ) -> Result<Response<PqPolicyResponse>, Status> {
        self.unary(Method::SetPqPolicy, r, |k, c, b| async move {
            k.set_pq_policy(&c, b).await
        })
        .await
    }
    async fn create_token(
        &self,
        r: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        self.unary(Method::CreateToken, r, |k, c, b| async move {
            k.create_token(&c, b).await
        })
        .await
    }
    async fn list_tokens(
        &self,
        r: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        self.unary(Method::ListTokens, r, |k, c, b| async move {
            k.list_tokens(&c, b).await
        })
        .await
    }
    async fn revoke_token(
        &self,
        r: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        self.unary(Method::RevokeToken, r, |k, c, b| async move {
            k.revoke_token(&c, b).await
        })
        .await
    }
    async fn hash_audit_input(
        &self,
        r: Request<HashAuditInputRequest>,
    ) -> Result<Response<HashAuditInputResponse>, Status> {
        self.unary(Method::HashAuditInput, r, |k, c, b| async move {
            k.hash_audit_input(&c, b).await
        })
        .await
    }
    async fn sign_batch(
        &self,
        r: Request<SignBatchRequest>,
    ) -> Result<Response<SignBatchResponse>, Status> {
        self.unary(Method::SignBatch, r, |k, c, b| async move {
            k.sign_batch(&c, b).await
        })
        .await
    }
    async fn verify_batch(
        &self,
        r: Request<VerifyBatchRequest>,
    ) -> Result<Response<VerifyBatchResponse>, Status> {
        self.unary(Method::VerifyBatch, r, |k, c, b| async move {
            k.verify_batch(&c, b).await
        })
        .await
    }
    async fn wrap_batch(
        &self,
        r: Request<WrapBatchRequest>,
    ) -> Result<Response<WrapBatchResponse>, Status> {
        self.unary(Method::WrapBatch, r, |k, c, b| async move {
            k.wrap_batch(&c, b).await
        })
        .await
    }
    async fn unwrap_batch(
        &self,
        r: Request<UnwrapBatchRequest>,
    ) -> Result<Response<UnwrapBatchResponse>, Status> {
        self.unary(Method::UnwrapBatch, r, |k, c, b| async move {
            k.unwrap_batch(&c, b).await
        })
        .await
    }
}

/// What the gRPC edge does around tonic, for every service (ours, health,
/// reflection):
/// - marks the connection as serving as soon as a request's head arrives,
///   which lifts the ingress's first-request deadline
///   ([`crate::ingress::conn`]);
/// - sheds early: for a `ron.kms.v1.Kms` call whose caller is already known
///   from the head (a known token, or a client certificate mapped to a
///   tenant), asks admission whether it would be refused (nothing taken) and,
///   if so, answers trailers-only with the refusal and its retry advice
///   before tonic reads or decodes the message. Callers that are not known
///   yet go on to the handler, which authenticates them properly;
/// - rewrites two of tonic's own answers to bad input in trailers-only
///   responses (the service's errors always carry `kms-error-code`, tonic's
///   never do): a message over the decode limit is OUT_OF_RANGE in tonic,
///   our contract says RESOURCE_EXHAUSTED `too_large` (as grpc-go and
///   grpc-java do); a message that is not valid protobuf (or a broken gRPC
///   frame) is INTERNAL in tonic, following gRPC's status-code guide, but the
///   fault is the caller's, so we answer INVALID_ARGUMENT `invalid_argument`
///   and INTERNAL stays reserved for our own faults (the ones alerts page on).
#[derive(Clone)]
pub struct GrpcEdge {
    kms: Arc<KmsService>,
}

impl GrpcEdge {
    pub fn new(kms: Arc<KmsService>) -> Self {
        GrpcEdge { kms }
    }
}

impl<S> tower::Layer<S> for GrpcEdge {
    type Service = GrpcEdgeService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcEdgeService {
            inner,
            kms: self.kms.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcEdgeService<S> {
    inner: S,
    kms: Arc<KmsService>,
}

impl<S> GrpcEdgeService<S> {
    /// The refusal admission would give this request now, judged from its
    /// head alone.
    fn early_shed<B>(&self, req: &http::Request<B>) -> Option<Error> {
        let op = crate::ops::by_grpc_path(req.uri().path())?.gate;
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let tenant = match auth {
            Some(_) => self.kms.tokens().known_tenant(auth)?,
            None => match req
                .extensions()
                .get::<ConnInfo>()
                .and_then(|c| c.peer.cert.as_ref())
            {
                Some(Ok(id)) => id.tenant.clone(),
                _ => return None,
            },
        };
        self.kms
            .admission()
            .precheck(op, &tenant)
            .err()
            .map(Error::Shed)
    }
}

/// A trailers-only gRPC answer for `e`: status, code, retry advice and a
/// request id in the headers, no body.
fn trailers_only<RB: Default>(e: &Error, request_id: &str) -> http::Response<RB> {
    let st = to_status(e, request_id);
    let mut resp = http::Response::new(RB::default());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", http::HeaderValue::from(i32::from(st.code())));
    if let Ok(v) = http::HeaderValue::from_str(&percent_message(st.message())) {
        h.insert("grpc-message", v);
    }
    for kv in st.metadata().iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_str().as_bytes()),
                http::HeaderValue::from_bytes(v.as_encoded_bytes()),
            ) {
                h.insert(k, v);
            }
        }
    }
    resp
}

/// grpc-message is percent-encoded outside printable ASCII (gRPC spec).
fn percent_message(m: &str) -> String {
    let mut out = String::with_capacity(m.len());
    for b in m.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcEdgeService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let started = std::time::Instant::now();
        if let Some(c) = req.extensions().get::<ConnInfo>() {
            c.mark_seen();
        }
        if let Some(e) = self.early_shed(&req) {
            let request_id = super::request_id_from(
                req.headers()
                    .get(REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok()),
            );
            let resp = trailers_only(&e, &request_id);
            crate::telemetry::shed_time("grpc", started.elapsed());
            let body = req.into_body();
            return Box::pin(async move {
                super::drain_body(body).await;
                Ok(resp)
            });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let h = resp.headers_mut();
            if h.contains_key("kms-error-code") {
                return Ok(resp);
            }
            let rewrite = match h.get("grpc-status").map(|v| v.as_bytes()) {
                Some(b"11") => {
                    crate::telemetry::reject("too_large");
                    Some(("8", "too_large"))
                }
                Some(b"13") => Some(("3", "invalid_argument")),
                _ => None,
            };
            if let Some((status, code)) = rewrite {
                h.insert("grpc-status", http::HeaderValue::from_static(status));
                h.insert("kms-error-code", http::HeaderValue::from_static(code));
                if let Ok(v) = http::HeaderValue::from_str(&new_request_id()) {
                    h.insert(REQUEST_ID_HEADER, v);
                }
            }
            Ok(resp)
        })
    }
}
