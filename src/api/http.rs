//! The HTTP front (axum): the same operations at `/v1/kms`, JSON bodies that
//! mirror the protobuf messages field for field (bytes as base64), unknown
//! fields refused, a 1 MiB body cap, `Authorization: Bearer <token>`, and the
//! error envelope `{"error":{"code","message","retryable","request_id"}}`.
//! Also `/healthz` and `/readyz`.
use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::statuses;
use super::{new_request_id, MAX_BODY_BYTES, REQUEST_ID_HEADER};
use crate::auth::Caller;
use crate::error::Error;
use crate::ingress::conn::ConnInfo;
use crate::ingress::decompress;
use crate::ops::Gate;
use crate::proto::*;
use crate::service::KmsService;

#[derive(Clone)]
pub struct HttpFront {
    kms: Arc<KmsService>,
}

/// Where a request message comes from.
#[derive(Clone, Copy)]
enum From {
    /// JSON body (an empty body counts as `{}`).
    Body,
    /// The query string (GET routes).
    Query,
}

fn envelope(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after_ms: Option<u64>,
    request_id: &str,
) -> Response {
    let retryable = retry_after_ms.is_some();
    let body = serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "retryable": retryable,
            "request_id": request_id,
        }
    });
    let mut r = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    if let Some(ms) = retry_after_ms {
        // whole seconds, rounded up: never "retry at once"
        let secs = ms.div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

/// The JSON response for an error.
pub fn error_response(e: &Error, request_id: &str) -> Response {
    let (http, _) = statuses(e);
    envelope(
        http,
        e.code(),
        &e.public_message(request_id),
        e.retry_after_ms(),
        request_id,
    )
}

fn ok_response<T: Serialize>(body: &T, request_id: &str) -> Response {
    let mut r = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    r
}

fn decode_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            Error::InvalidArgument(format!("request body: {inner}"))
        } else {
            Error::InvalidArgument(format!("field {path}: {inner}"))
        }
    })
}

impl HttpFront {
    pub fn new(kms: Arc<KmsService>) -> Self {
        HttpFront { kms }
    }

    /// Authenticate, shed early, read and decode, fill path parameters,
    /// run, encode — all within the request timeout.
    async fn unary<Req, Resp, Fill, F, Fut>(
        &self,
        req: Request,
        class: Gate,
        from: From,
        fill: Fill,
        op: F,
    ) -> Response
    where
        Req: DeserializeOwned + Default,
        Resp: Serialize,
        Fill: FnOnce(&mut Req) -> Result<(), Error>,
        F: FnOnce(Arc<KmsService>, Caller, Req) -> Fut,
        Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
        Resp: Send + 'static,
    {
        let started = std::time::Instant::now();
        let request_id = super::request_id_from(
            req.headers()
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let span = tracing::info_span!("http", request_id = %request_id);
        let limit = self.kms.request_timeout();
        let deadline = tokio::time::Instant::now() + limit;
        let rid = request_id.clone();
        let kms = self.kms.clone();
        let work = async move {
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let peer = req.extensions().get::<ConnInfo>().map(|c| c.peer.clone());
            // Authenticate before reading the body: an anonymous caller
            // costs a header parse, not a 1 MiB buffer.
            let caller = kms
                .authenticate_peer(
                    auth.as_deref(),
                    peer.as_ref().and_then(|p| p.cert.as_ref()),
                    rid,
                )
                .await?;
            // A request that admission would shed is shed before its body
            // is read or decoded.
            if let Err(e) = kms.admission().precheck(class, &caller.tenant) {
                // over HTTP/2, close the stream cleanly (see drain_body)
                if req.version() == http::Version::HTTP_2 {
                    super::drain_body(req.into_body()).await;
                }
                return Err(Error::from(e));
            }
            let mut msg: Req = match from {
                From::Query => Query::<Req>::try_from_uri(req.uri())
                    .map(|q| q.0)
                    .map_err(|e| {
                        Error::InvalidArgument(format!("query string: {}", e.body_text()))
                    })?,
                From::Body => {
                    let encoding = decompress::encoding(req.headers())?;
                    let (parts, body) = req.into_parts();
                    let bytes =
                        decompress::read_body(&parts.headers, body, encoding, MAX_BODY_BYTES)
                            .await?;
                    decode_json(&bytes)?
                }
            };
            fill(&mut msg)?;
            Ok((caller, msg))
        };
        let result = tracing::Instrument::instrument(
            async {
                let (caller, msg) = within(deadline, limit, work).await?;
                // Once decoded, the operation runs to its end in a task of its
                // own: neither the request timeout nor a client that hangs up
                // can stop it between its effect and its audit record.
                let task = tokio::spawn(tracing::Instrument::in_current_span(op(
                    self.kms.clone(),
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
        match result {
            Ok(resp) => ok_response(&resp, &request_id),
            Err(e) => {
                if matches!(e, Error::Shed(_)) {
                    crate::telemetry::shed_time("http", started.elapsed());
                }
                error_response(&e, &request_id)
            }
        }
    }
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

/// A path's name must agree with the body's, when the body names one.
fn same_name(path: &str, body: &mut String) -> Result<(), Error> {
    if body.is_empty() {
        *body = path.to_string();
        Ok(())
    } else if body == path {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "field name: differs from the key name in the path".into(),
        ))
    }
}

type S = State<HttpFront>;

async fn create_key(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Admin,
        From::Body,
        |_: &mut CreateKeyRequest| Ok(()),
        |k, c, b| async move { k.create_key(&c, b).await },
    )
    .await
}

async fn list_keys(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Admin,
        From::Query,
        |_: &mut ListKeysRequest| Ok(()),
        |k, c, b| async move { k.list_keys(&c, b).await },
    )
    .await
}

async fn get_key(State(f): S, Path(name): Path<String>, r: Request) -> Response {
    f.unary(
        r,
        Gate::Admin,
        From::Query,
        move |m: &mut GetKeyRequest| same_name(&name, &mut m.name),
        |k, c, b| async move { k.get_key(&c, b).await },
    )
    .await
}

async fn rotate_key_at(State(f): S, Path(name): Path<String>, r: Request) -> Response {
    f.unary(
        r,
        Gate::Admin,
        From::Body,
        move |m: &mut RotateKeyRequest| same_name(&name, &mut m.name),
        |k, c, b| async move { k.rotate_key(&c, b).await },
    )
    .await
}

async fn rotate_key(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Admin,
        From::Body,
        |_: &mut RotateKeyRequest| Ok(()),
        |k, c, b| async move { k.rotate_key(&c, b).await },
    )
    .await
}

async fn set_state(
    State(f): S,
    Path((name, version)): Path<(String, String)>,
    r: Request,
) -> Response {
    f.unary(
        r,
        Gate::Admin,
        From::Body,
        move |m: &mut SetKeyVersionStateRequest| {
            same_name(&name, &mut m.name)?;
            let digits = version.strip_prefix('v').unwrap_or(&version);
            let v: u32 = digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse().ok())
                .flatten()
                .ok_or_else(|| {
                    Error::InvalidArgument("version in the path must be a number".into())
                })?;
            if m.version != 0 && m.version != v {
                return Err(Error::InvalidArgument(
                    "field version: differs from the version in the path".into(),
                ));
            }
            m.version = v;
            Ok(())
        },
        |k, c, b| async move { k.set_key_version_state(&c, b).await },
    )
    .await
}

async fn sign(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Sign,
        From::Body,
        |_: &mut SignRequest| Ok(()),
        |k, c, b| async move { k.sign(&c, b).await },
    )
    .await
}

async fn verify(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Verify,
        From::Body,
        |_: &mut VerifyRequest| Ok(()),
        |k, c, b| async move { k.verify(&c, b).await },
    )
    .await
}

async fn wrap(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Wrap,
        From::Body,
        |_: &mut WrapRequest| Ok(()),
        |k, c, b| async move { k.wrap(&c, b).await },
    )
    .await
}

async fn unwrap(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Unwrap,
        From::Body,
        |_: &mut UnwrapRequest| Ok(()),
        |k, c, b| async move { k.unwrap(&c, b).await },
    )
    .await
}

async fn datakey(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Wrap,
        From::Body,
        |_: &mut GenerateDataKeyRequest| Ok(()),
        |k, c, b| async move { k.generate_data_key(&c, b).await },
    )
    .await
}

async fn sign_batch(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Sign,
        From::Body,
        |_: &mut SignBatchRequest| Ok(()),
        |k, c, b| async move { k.sign_batch(&c, b).await },
    )
    .await
}

async fn verify_batch(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Verify,
        From::Body,
        |_: &mut VerifyBatchRequest| Ok(()),
        |k, c, b| async move { k.verify_batch(&c, b).await },
    )
    .await
}

async fn wrap_batch(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Wrap,
        From::Body,
        |_: &mut WrapBatchRequest| Ok(()),
        |k, c, b| async move { k.wrap_batch(&c, b).await },
    )
    .await
}

async fn unwrap_batch(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Unwrap,
        From::Body,
        |_: &mut UnwrapBatchRequest| Ok(()),
        |k, c, b| async move { k.unwrap_batch(&c, b).await },
    )
    .await
}

async fn get_pq_policy(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Admin,
        From::Query,
        |_: &mut GetPqPolicyRequest| Ok(()),
        |k, c, b| async move { k.get_pq_policy(&c, b).await },
    )
    .await
}

async fn set_pq_policy(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Gate::Admin,
        From::Body,
        |_: &mut SetPqPolicyRequest| Ok(()),
        |k, c, b| async move { k.set_pq_policy(&c, b).await },
    )
    .await
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(State(f): S) -> Response {
    let kms = f.kms.clone();
    let checks = tokio::task::spawn_blocking(move || kms.readiness())
        .await
        .unwrap_or_default();
    let ready = !checks.is_empty() && checks.iter().all(|c| c.outcome.is_ok() || !c.required);
    let detail: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|c| {
            let v = match c.outcome {
                Ok(()) => "ok".to_string(),
                Err(e) if c.required => format!("error: {e}"),
                Err(e) => format!("degraded: {e}"),
            };
            (c.name.to_string(), serde_json::Value::String(v))
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({"ready": ready, "checks": detail})),
    )
        .into_response()
}

/// The OpenAPI description, kept in `docs/openapi/ron-kms.yaml` and served
/// as JSON. A test keeps its paths equal to [`ROUTES`].
pub const OPENAPI_YAML: &str = include_str!("../../docs/openapi/ron-kms.yaml");

/// The OpenAPI document as JSON, parsed once.
pub fn openapi_document() -> Result<&'static serde_json::Value, String> {
    static DOC: OnceLock<Result<serde_json::Value, String>> = OnceLock::new();
    DOC.get_or_init(|| serde_yaml_ng::from_str(OPENAPI_YAML).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

async fn openapi() -> Response {
    match openapi_document() {
        Ok(doc) => Json(doc).into_response(),
        Err(e) => error_response(
            &Error::Internal(format!("openapi document: {e}")),
            &new_request_id(),
        ),
    }
}

async fn metrics_text(State(f): S) -> Response {
    let adm = f.kms.admission();
    for op in crate::ops::Gate::ALL {
        metrics::gauge!("kms_admission_in_use", "op" => op.as_str()).set(adm.in_use(op) as f64);
        metrics::gauge!("kms_admission_waiting", "op" => op.as_str()).set(adm.waiting(op) as f64);
    }
    match crate::telemetry::render() {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => error_response(
            &Error::Unavailable("metrics recorder not installed in this process".into()),
            &new_request_id(),
        ),
    }
}

async fn version() -> Response {
    Json(serde_json::json!({
        "name": "ron-kms",
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

async fn not_found() -> Response {
    envelope(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route",
        None,
        &new_request_id(),
    )
}

async fn method_not_allowed() -> Response {
    envelope(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
        None,
        &new_request_id(),
    )
}

/// Health, readiness, the OpenAPI document and the fallbacks get a request
/// id here; the operations set their own (the one in their logs).
async fn ensure_request_id(mut r: Response) -> Response {
    if !r.headers().contains_key(REQUEST_ID_HEADER) {
        if let Ok(v) = HeaderValue::from_str(&new_request_id()) {
            r.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
    }
    r
}

/// Every (method, path) the router serves, in OpenAPI path syntax. The
/// router below must register exactly these; tests/openapi.rs checks both
/// the router and docs/openapi/ron-kms.yaml against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/kms/keys"),
    ("GET", "/v1/kms/keys"),
    ("GET", "/v1/kms/keys/{name}"),
    ("POST", "/v1/kms/keys/{name}/rotate"),
    ("POST", "/v1/kms/rotate"),
    ("POST", "/v1/kms/keys/{name}/versions/{version}/state"),
    ("POST", "/v1/kms/sign"),
    ("POST", "/v1/kms/verify"),
    ("POST", "/v1/kms/wrap"),
    ("POST", "/v1/kms/unwrap"),
    ("POST", "/v1/kms/datakey"),
    ("POST", "/v1/kms/batch/sign"),
    ("POST", "/v1/kms/batch/verify"),
    ("POST", "/v1/kms/batch/wrap"),
    ("POST", "/v1/kms/batch/unwrap"),
    ("GET", "/v1/kms/policy/pq"),
    ("PUT", "/v1/kms/policy/pq"),
    ("GET", "/v1/kms/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/version"),
];

/// The whole HTTP router.
pub fn router(kms: Arc<KmsService>) -> Router {
    Router::new()
        .route("/v1/kms/keys", post(create_key).get(list_keys))
        .route("/v1/kms/keys/{name}", get(get_key))
        .route("/v1/kms/keys/{name}/rotate", post(rotate_key_at))
        .route("/v1/kms/rotate", post(rotate_key))
        .route(
            "/v1/kms/keys/{name}/versions/{version}/state",
            post(set_state),
        )
        .route("/v1/kms/sign", post(sign))
        .route("/v1/kms/verify", post(verify))
        .route("/v1/kms/wrap", post(wrap))
        .route("/v1/kms/unwrap", post(unwrap))
        .route("/v1/kms/datakey", post(datakey))
        .route("/v1/kms/batch/sign", post(sign_batch))
        .route("/v1/kms/batch/verify", post(verify_batch))
        .route("/v1/kms/batch/wrap", post(wrap_batch))
        .route("/v1/kms/batch/unwrap", post(unwrap_batch))
        .route("/v1/kms/policy/pq", get(get_pq_policy).put(set_pq_policy))
        .route("/v1/kms/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/version", get(version))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(ensure_request_id))
        .with_state(HttpFront::new(kms))
}
