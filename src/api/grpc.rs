//! The gRPC front (tonic): `ron.kms.v1.Kms`, reflection and the standard
//! health service. Credentials come from the `authorization` metadata
//! (`Bearer <token>`); every response carries `x-request-id`.
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::error::{classify, public_message};
use super::{new_request_id, MAX_BODY_BYTES, REQUEST_ID_HEADER};
use crate::auth::Caller;
use crate::error::Error;
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

    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: Request<Req>,
        op: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Arc<KmsService>, Caller, Req) -> Fut,
        Fut: Future<Output = Result<Resp, Error>>,
    {
        let request_id = super::request_id_from(
            req.metadata()
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let span = tracing::info_span!("grpc", request_id = %request_id);
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let result = tracing::Instrument::instrument(
            async {
                match self
                    .kms
                    .authenticate(auth.as_deref(), request_id.clone())
                    .await
                {
                    Ok(caller) => op(self.kms.clone(), caller, req.into_inner()).await,
                    Err(e) => Err(e),
                }
            },
            span,
        )
        .await;
        let rid = MetadataValue::try_from(request_id.as_str()).expect("request ids are ASCII");
        match result {
            Ok(resp) => {
                let mut r = Response::new(resp);
                r.metadata_mut().insert(REQUEST_ID_HEADER, rid);
                Ok(r)
            }
            Err(e) => Err(to_status(&e, &request_id)),
        }
    }
}

/// Map a domain error to a tonic status with the shared metadata.
pub fn to_status(e: &Error, request_id: &str) -> Status {
    let c = classify(e);
    let mut st = Status::new(c.grpc, public_message(e, request_id));
    let md = st.metadata_mut();
    if let Ok(v) = MetadataValue::try_from(request_id) {
        md.insert(REQUEST_ID_HEADER, v);
    }
    md.insert("kms-error-code", MetadataValue::from_static(c.code));
    st
}

#[tonic::async_trait]
impl Kms for GrpcFront {
    async fn create_key(
        &self,
        r: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        self.unary(r, |k, c, b| async move { k.create_key(&c, b).await })
            .await
    }
    async fn get_key(&self, r: Request<GetKeyRequest>) -> Result<Response<GetKeyResponse>, Status> {
        self.unary(r, |k, c, b| async move { k.get_key(&c, b).await })
            .await
    }
    async fn list_keys(
        &self,
        r: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        self.unary(r, |k, c, b| async move { k.list_keys(&c, b).await })
            .await
    }
    async fn rotate_key(
        &self,
        r: Request<RotateKeyRequest>,
    ) -> Result<Response<RotateKeyResponse>, Status> {
        self.unary(r, |k, c, b| async move { k.rotate_key(&c, b).await })
            .await
    }
    async fn set_key_version_state(
        &self,
        r: Request<SetKeyVersionStateRequest>,
    ) -> Result<Response<SetKeyVersionStateResponse>, Status> {
        self.unary(
            r,
            |k, c, b| async move { k.set_key_version_state(&c, b).await },
        )
        .await
    }
    async fn sign(&self, r: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        self.unary(r, |k, c, b| async move { k.sign(&c, b).await })
            .await
    }
    async fn verify(&self, r: Request<VerifyRequest>) -> Result<Response<VerifyResponse>, Status> {
        self.unary(r, |k, c, b| async move { k.verify(&c, b).await })
            .await
    }
    async fn wrap(&self, r: Request<WrapRequest>) -> Result<Response<WrapResponse>, Status> {
        self.unary(r, |k, c, b| async move { k.wrap(&c, b).await })
            .await
    }
    async fn unwrap(&self, r: Request<UnwrapRequest>) -> Result<Response<UnwrapResponse>, Status> {
        self.unary(r, |k, c, b| async move { k.unwrap(&c, b).await })
            .await
    }
    async fn generate_data_key(
        &self,
        r: Request<GenerateDataKeyRequest>,
    ) -> Result<Response<GenerateDataKeyResponse>, Status> {
        self.unary(r, |k, c, b| async move { k.generate_data_key(&c, b).await })
            .await
    }
    async fn get_pq_policy(
        &self,
        r: Request<GetPqPolicyRequest>,
    ) -> Result<Response<PqPolicyResponse>, Status> {
        self.unary(r, |k, c, b| async move { k.get_pq_policy(&c, b).await })
            .await
    }
    async fn set_pq_policy(
        &self,
        r: Request<SetPqPolicyRequest>,
    ) -> Result<Response<PqPolicyResponse>, Status> {
        self.unary(r, |k, c, b| async move { k.set_pq_policy(&c, b).await })
            .await
    }
}

/// tonic reports a message over the decode limit as OUT_OF_RANGE; our
/// contract says RESOURCE_EXHAUSTED (as grpc-go and grpc-java do). The
/// service itself never returns OUT_OF_RANGE, so this layer rewrites that
/// code in trailers-only responses and nothing else.
#[derive(Clone, Copy, Default)]
pub struct OversizeAsResourceExhausted;

impl<S> tower::Layer<S> for OversizeAsResourceExhausted {
    type Service = OversizeService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OversizeService { inner }
    }
}

#[derive(Clone)]
pub struct OversizeService<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for OversizeService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let h = resp.headers_mut();
            if h.get("grpc-status").map(|v| v.as_bytes()) == Some(b"11") {
                h.insert("grpc-status", http::HeaderValue::from_static("8"));
                crate::telemetry::reject("too_large");
                h.insert(
                    "kms-error-code",
                    http::HeaderValue::from_static("too_large"),
                );
                if let Ok(v) = http::HeaderValue::from_str(&new_request_id()) {
                    h.insert(REQUEST_ID_HEADER, v);
                }
            }
            Ok(resp)
        })
    }
}
