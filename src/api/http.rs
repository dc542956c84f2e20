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
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::call::{Call, Incoming};
use super::error::statuses;
use super::{new_request_id, MAX_BODY_BYTES, REQUEST_ID_HEADER};
use crate::auth::Caller;
use crate::error::Error;
use crate::ingress::decompress;
use crate::ops::{spec, Method, OpSpec};
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

/// A JSON body as `T` (an empty body is `T::default()`), its error naming
/// the field (shared with the transit front).
pub(super) fn decode_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, Error> {
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

    /// The shared call skeleton ([`super::call`]) with this front's
    /// decoding: shed early (before the body is read), read the body under
    /// the cap (or the query string), decode JSON, fill path parameters.
    async fn unary<Req, Resp, Fill, F, Fut>(
        &self,
        req: Request,
        method: Method,
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
        let incoming = Incoming::from_parts("http", req.headers(), req.extensions());
        // Authentication comes first (in the skeleton): an anonymous caller
        // costs a header parse, not a 1 MiB buffer.
        let decode = move |kms: Arc<KmsService>, spec: &'static OpSpec, caller: Caller| async move {
            // A request that admission would shed is shed before its body
            // is read or decoded.
            if let Err(e) = kms.admission().precheck(spec.gate, &caller.tenant) {
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
        let (call, result) = Call::run(&self.kms, spec(method), incoming, decode, op).await;
        match result {
            Ok(resp) => ok_response(&resp, &call.request_id),
            Err(e) => error_response(&e, &call.request_id),
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
        Method::CreateKey,
        From::Body,
        |_: &mut CreateKeyRequest| Ok(()),
        |k, c, b| async move { k.create_key(&c, b).await },
    )
    .await
}

async fn list_keys(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::ListKeys,
        From::Query,
        |_: &mut ListKeysRequest| Ok(()),
        |k, c, b| async move { k.list_keys(&c, b).await },
    )
    .await
}

async fn get_key(State(f): S, Path(name): Path<String>, r: Request) -> Response {
    f.unary(
        r,
        Method::GetKey,
        From::Query,
        move |m: &mut GetKeyRequest| same_name(&name, &mut m.name),
        |k, c, b| async move { k.get_key(&c, b).await },
    )
    .await
}

async fn rotate_key_at(State(f): S, Path(name): Path<String>, r: Request) -> Response {
    f.unary(
        r,
        Method::RotateKey,
        From::Body,
        move |m: &mut RotateKeyRequest| same_name(&name, &mut m.name),
        |k, c, b| async move { k.rotate_key(&c, b).await },
    )
    .await
}

async fn rotate_key(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::RotateKey,
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
        Method::SetKeyVersionState,
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

async fn update_key(State(f): S, Path(name): Path<String>, r: Request) -> Response {
    f.unary(
        r,
        Method::UpdateKey,
        From::Body,
        move |m: &mut UpdateKeyRequest| same_name(&name, &mut m.name),
        |k, c, b| async move { k.update_key(&c, b).await },
    )
    .await
}

async fn delete_key(State(f): S, Path(name): Path<String>, r: Request) -> Response {
    f.unary(
        r,
        Method::DeleteKey,
        From::Query,
        move |m: &mut DeleteKeyRequest| same_name(&name, &mut m.name),
        |k, c, b| async move { k.delete_key(&c, b).await },
    )
    .await
}

async fn sign(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::Sign,
        From::Body,
        |_: &mut SignRequest| Ok(()),
        |k, c, b| async move { k.sign(&c, b).await },
    )
    .await
}

async fn sign_jws(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::SignJws,
        From::Body,
        |_: &mut SignJwsRequest| Ok(()),
        |k, c, b| async move { k.sign_jws(&c, b).await },
    )
    .await
}

async fn verify(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::Verify,
        From::Body,
        |_: &mut VerifyRequest| Ok(()),
        |k, c, b| async move { k.verify(&c, b).await },
    )
    .await
}

async fn wrap(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::Wrap,
        From::Body,
        |_: &mut WrapRequest| Ok(()),
        |k, c, b| async move { k.wrap(&c, b).await },
    )
    .await
}

async fn unwrap(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::Unwrap,
        From::Body,
        |_: &mut UnwrapRequest| Ok(()),
        |k, c, b| async move { k.unwrap(&c, b).await },
    )
    .await
}

async fn mac(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::Mac,
        From::Body,
        |_: &mut MacRequest| Ok(()),
        |k, c, b| async move { k.mac(&c, b).await },
    )
    .await
}

async fn verify_mac(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::VerifyMac,
        From::Body,
        |_: &mut VerifyMacRequest| Ok(()),
        |k, c, b| async move { k.verify_mac(&c, b).await },
    )
    .await
}

async fn datakey(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::GenerateDataKey,
        From::Body,
        |_: &mut GenerateDataKeyRequest| Ok(()),
        |k, c, b| async move { k.generate_data_key(&c, b).await },
    )
    .await
}

async fn sign_batch(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::SignBatch,
        From::Body,
        |_: &mut SignBatchRequest| Ok(()),
        |k, c, b| async move { k.sign_batch(&c, b).await },
    )
    .await
}

async fn verify_batch(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::VerifyBatch,
        From::Body,
        |_: &mut VerifyBatchRequest| Ok(()),
        |k, c, b| async move { k.verify_batch(&c, b).await },
    )
    .await
}

async fn wrap_batch(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::WrapBatch,
        From::Body,
        |_: &mut WrapBatchRequest| Ok(()),
        |k, c, b| async move { k.wrap_batch(&c, b).await },
    )
    .await
}

async fn unwrap_batch(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::UnwrapBatch,
        From::Body,
        |_: &mut UnwrapBatchRequest| Ok(()),
        |k, c, b| async move { k.unwrap_batch(&c, b).await },
    )
    .await
}

async fn create_token(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::CreateToken,
        From::Body,
        |_: &mut CreateTokenRequest| Ok(()),
        |k, c, b| async move { k.create_token(&c, b).await },
    )
    .await
}

async fn list_tokens(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::ListTokens,
        From::Query,
        |_: &mut ListTokensRequest| Ok(()),
        |k, c, b| async move { k.list_tokens(&c, b).await },
    )
    .await
}

async fn revoke_token(State(f): S, Path(id): Path<String>, r: Request) -> Response {
    f.unary(
        r,
        Method::RevokeToken,
        From::Body,
        move |m: &mut RevokeTokenRequest| same_name(&id, &mut m.id),
        |k, c, b| async move { k.revoke_token(&c, b).await },
    )
    .await
}

async fn hash_audit_input(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::HashAuditInput,
        From::Body,
        |_: &mut HashAuditInputRequest| Ok(()),
        |k, c, b| async move { k.hash_audit_input(&c, b).await },
    )
    .await
}

async fn get_pq_policy(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::GetPqPolicy,
        From::Query,
        |_: &mut GetPqPolicyRequest| Ok(()),
        |k, c, b| async move { k.get_pq_policy(&c, b).await },
    )
    .await
}

async fn set_pq_policy(State(f): S, r: Request) -> Response {
    f.unary(
        r,
        Method::SetPqPolicy,
        From::Body,
        |_: &mut SetPqPolicyRequest| Ok(()),
        |k, c, b| async move { k.set_pq_policy(&c, b).await },
    )
    .await
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Readiness. Without credentials only each check's name and `ok`,
/// `error` or `degraded` are shown; a token with `kms:operator` also gets
/// the reasons (they can name paths and hosts).
async fn readyz(State(f): S, headers: axum::http::HeaderMap) -> Response {
    let operator = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(auth) => f
            .kms
            .authenticate(Some(auth), new_request_id())
            .await
            .is_ok_and(|c| c.require(crate::ops::Scope::Operator).is_ok()),
        None => false,
    };
    let kms = f.kms.clone();
    let checks = tokio::task::spawn_blocking(move || kms.readiness())
        .await
        .unwrap_or_default();
    let ready = !checks.is_empty() && checks.iter().all(|c| c.outcome.is_ok() || !c.required);
    let detail: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|c| {
            let state = match (&c.outcome, c.required) {
                (Ok(()), _) => "ok",
                (Err(_), true) => "error",
                (Err(_), false) => "degraded",
            };
            let v = match c.outcome {
                Err(e) if operator => format!("{state}: {e}"),
                _ => state.to_string(),
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
/// as JSON. A test keeps its paths equal to [`routes`].
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

/// `GET /v1/kms/jwks/{tenant}`: the tenant's published keys as a JWK set,
/// unauthenticated (public keys only; docs/jose.md). Cacheable: an ETag
/// over the body, `If-None-Match` answered 304, and `max-age=0,
/// must-revalidate`, so a cache asks again each time and a version
/// disabled a moment ago is gone from the next answer.
async fn jwks(State(f): S, Path(tenant): Path<String>, req: Request) -> Response {
    let j = f.kms.jwks(&tenant);
    let etag = j.etag.clone();
    let cache = [
        (
            header::CACHE_CONTROL,
            "public, max-age=0, must-revalidate".to_string(),
        ),
        (header::ETAG, etag.clone()),
    ];
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            // weak comparison (RFC 9110 §13.1.2): W/"x" matches "x"
            v.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
            })
        });
    if fresh {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(header::CONTENT_TYPE, "application/jwk-set+json".to_string())],
        j.body.clone(),
    )
        .into_response()
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

/// The routes that are not operations (public, no credentials).
const PUBLIC_ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/kms/openapi.json"),
    ("GET", "/v1/kms/jwks/{tenant}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/version"),
];

/// Every (method, path) the router serves, in OpenAPI path syntax: the op
/// table's routes ([`crate::ops::OPS`]) and the public ones.
/// tests/openapi.rs checks both the router and docs/openapi/ron-kms.yaml
/// against this list.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    crate::ops::OPS
        .iter()
        .flat_map(|o| o.http.iter().copied())
        .chain(PUBLIC_ROUTES.iter().copied())
        .collect()
}

/// The handler of one operation's route.
fn op_route(m: Method, verb: &str, path: &str) -> axum::routing::MethodRouter<HttpFront> {
    use axum::routing::{on, MethodFilter};
    let filter = match verb {
        "GET" => MethodFilter::GET,
        "PUT" => MethodFilter::PUT,
        "PATCH" => MethodFilter::PATCH,
        "DELETE" => MethodFilter::DELETE,
        _ => MethodFilter::POST,
    };
    match (m, path) {
        (Method::CreateKey, _) => on(filter, create_key),
        (Method::ListKeys, _) => on(filter, list_keys),
        (Method::GetKey, _) => on(filter, get_key),
        (Method::RotateKey, "/v1/kms/rotate") => on(filter, rotate_key),
        (Method::RotateKey, _) => on(filter, rotate_key_at),
        (Method::SetKeyVersionState, _) => on(filter, set_state),
        (Method::UpdateKey, _) => on(filter, update_key),
        (Method::DeleteKey, _) => on(filter, delete_key),
        (Method::Sign, _) => on(filter, sign),
        (Method::Verify, _) => on(filter, verify),
        (Method::SignJws, _) => on(filter, sign_jws),
        (Method::Wrap, _) => on(filter, wrap),
        (Method::Unwrap, _) => on(filter, unwrap),
        (Method::GenerateDataKey, _) => on(filter, datakey),
        (Method::Mac, _) => on(filter, mac),
        (Method::VerifyMac, _) => on(filter, verify_mac),
        (Method::SignBatch, _) => on(filter, sign_batch),
        (Method::VerifyBatch, _) => on(filter, verify_batch),
        (Method::WrapBatch, _) => on(filter, wrap_batch),
        (Method::UnwrapBatch, _) => on(filter, unwrap_batch),
        (Method::GetPqPolicy, _) => on(filter, get_pq_policy),
        (Method::SetPqPolicy, _) => on(filter, set_pq_policy),
        (Method::CreateToken, _) => on(filter, create_token),
        (Method::ListTokens, _) => on(filter, list_tokens),
        (Method::RevokeToken, _) => on(filter, revoke_token),
        (Method::HashAuditInput, _) => on(filter, hash_audit_input),
    }
}

/// The whole HTTP router: every route of the op table, then the public ones.
pub fn router(kms: Arc<KmsService>) -> Router {
    let mut r = Router::new();
    for o in &crate::ops::OPS {
        for (verb, path) in o.http {
            r = r.route(path, op_route(o.method, verb, path));
        }
    }
    r.route("/v1/kms/openapi.json", get(openapi))
        .route("/v1/kms/jwks/{tenant}", get(jwks))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/version", get(version))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(ensure_request_id))
        .with_state(HttpFront::new(kms))
}
