//! The Vault-transit-compatible front (docs/transit.md): transit's routes
//! under `/v1/<mount>/` on the HTTP port, mapped onto the same service,
//! tenancy, admission and audit as `/v1/kms`. Off unless
//! `KMS_TRANSIT_MOUNT` is set.
//!
//! What differs from the `/v1/kms` front is only the shape: the token comes
//! in `X-Vault-Token` (or `Authorization: Bearer`), bodies and answers are
//! transit's (`{"data": …}`, `{"errors": […]}`), ciphertexts and
//! signatures carry transit's `vault:vN:` prefix. Each transit call runs as
//! one or more service calls, so each is admitted, scoped and audited like
//! the `/v1/kms` operation it maps to. What transit has and ron-kms does
//! not is refused with a 400 that names the field; nothing is ignored.
mod crypto;
mod keys;
mod sign;

use std::future::Future;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post, MethodRouter};
use axum::{Json, Router};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::call::{Call, Incoming};
use super::error::statuses;
use super::{MAX_BODY_BYTES, REQUEST_ID_HEADER};
use crate::auth::Caller;
use crate::error::Error;
use crate::ingress::decompress;
use crate::ops::{spec, Method};
use crate::service::KmsService;

/// Checks `KMS_TRANSIT_MOUNT`: one to 64 characters of `[a-z0-9_-]`, and not
/// `kms` (the native front's prefix). Returns it trimmed of slashes.
pub fn check_mount(m: &str) -> Result<String, String> {
    let m = m.trim_matches('/');
    let ok = !m.is_empty()
        && m.len() <= 64
        && m.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if !ok {
        return Err(format!(
            "{m:?} is not a mount path: 1 to 64 characters of a-z, 0-9, '_' and '-'"
        ));
    }
    if m == "kms" {
        return Err("\"kms\" is the native front's prefix; pick another mount path".into());
    }
    Ok(m.to_string())
}

#[derive(Clone)]
pub(super) struct TransitFront {
    kms: Arc<KmsService>,
}

type S = axum::extract::State<TransitFront>;

/// The transit routes under `/v1/<mount>/`.
pub fn router(kms: Arc<KmsService>, mount: &str) -> Router {
    let at = |p: &str| format!("/v1/{mount}/{p}");
    Router::new()
        // LIST is transit's verb for listing; GET …?list=true is the same
        .route(&at("keys"), any(keys::list))
        .route(&at("keys/{name}"), any(keys::key))
        .route(&at("keys/{name}/config"), write(keys::config))
        .route(&at("keys/{name}/rotate"), write(keys::rotate))
        .route(&at("encrypt/{name}"), write(crypto::encrypt))
        .route(&at("decrypt/{name}"), write(crypto::decrypt))
        .route(&at("rewrap/{name}"), write(crypto::rewrap))
        .route(&at("datakey/{kind}/{name}"), write(crypto::datakey))
        .route(&at("sign/{name}"), write(sign::sign))
        .route(&at("sign/{name}/{hash}"), write(sign::sign_with))
        .route(&at("verify/{name}"), write(sign::verify))
        .route(&at("verify/{name}/{hash}"), write(sign::verify_with))
        .route(&at("hmac/{name}"), write(sign::hmac))
        .route(&at("hmac/{name}/{hash}"), write(sign::hmac_with))
        .route(&at("{*rest}"), any(unsupported))
        .with_state(TransitFront { kms })
}

/// A write route: POST and PUT alike (transit's clients use both); any
/// other method is refused in transit's shape.
fn write<H, T>(h: H) -> MethodRouter<TransitFront>
where
    H: axum::handler::Handler<T, TransitFront> + Clone,
    T: 'static,
{
    post(h.clone()).put(h).fallback(wrong_method)
}

async fn wrong_method(req: Request) -> Response {
    method_not_allowed(req.method())
}

pub(super) fn method_not_allowed(m: &axum::http::Method) -> Response {
    errors(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{m} is not allowed on this route"),
        None,
        &super::new_request_id(),
    )
}

/// Any other transit path (export, backup, restore, trim, hash, random,
/// cache-config, keys/…/import, …): refused, saying so.
async fn unsupported(req: Request) -> Response {
    let rid = super::new_request_id();
    errors(
        StatusCode::NOT_FOUND,
        &format!(
            "{} {} is not supported by ron-kms's transit front (docs/transit.md lists what is)",
            req.method(),
            req.uri().path()
        ),
        None,
        &rid,
    )
}

/// Transit's error shape: `{"errors": [message]}`.
fn errors(status: StatusCode, message: &str, retry_after_ms: Option<u64>, rid: &str) -> Response {
    let mut r = (status, Json(serde_json::json!({ "errors": [message] }))).into_response();
    if let Ok(v) = HeaderValue::from_str(rid) {
        r.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    if let Some(ms) = retry_after_ms {
        let secs = ms.div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

/// The status of an error on this front: `/v1/kms`'s, except that a bad
/// or missing token is 403, and a refused precondition or a name already
/// taken (409 there) is 400, as transit answers them.
fn error_response(e: &Error, rid: &str) -> Response {
    let (status, _) = statuses(e);
    let status = match status {
        StatusCode::UNAUTHORIZED => StatusCode::FORBIDDEN,
        StatusCode::CONFLICT => StatusCode::BAD_REQUEST,
        s => s,
    };
    errors(status, &e.public_message(rid), e.retry_after_ms(), rid)
}

/// Transit's success shape, `data` holding the answer.
fn ok_response(data: serde_json::Value, rid: &str) -> Response {
    let body = serde_json::json!({
        "request_id": rid,
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": null,
    });
    let mut r = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(rid) {
        r.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    r
}

/// What an answer is on the wire: data, or nothing (204).
pub(super) enum Answer {
    Data(serde_json::Value),
    NoContent,
}

impl TransitFront {
    /// One transit request: authenticate (`X-Vault-Token` or bearer), shed
    /// early against `method`'s gate, read and decode the JSON body, then
    /// `op` (which calls the service, once or more).
    async fn run<Req, F, Fut>(&self, req: Request, method: Method, op: F) -> Response
    where
        Req: DeserializeOwned + Default + Send + 'static,
        F: FnOnce(Arc<KmsService>, Caller, Req) -> Fut,
        Fut: Future<Output = Result<Answer, Error>> + Send + 'static,
    {
        let mut incoming = Incoming::from_parts("http", req.headers(), req.extensions());
        if let Some(t) = req
            .headers()
            .get("x-vault-token")
            .and_then(|v| v.to_str().ok())
        {
            incoming.authorization = Some(format!("Bearer {}", t.trim()));
        }
        let decode = move |kms: Arc<KmsService>,
                           spec: &'static crate::ops::OpSpec,
                           caller: Caller| async move {
            if let Err(e) = kms.admission().precheck(spec.gate, &caller.tenant) {
                if req.version() == http::Version::HTTP_2 {
                    super::drain_body(req.into_body()).await;
                }
                return Err(Error::from(e));
            }
            let encoding = decompress::encoding(req.headers())?;
            let (parts, body) = req.into_parts();
            let bytes =
                decompress::read_body(&parts.headers, body, encoding, MAX_BODY_BYTES).await?;
            Ok((caller, super::http::decode_json::<Req>(&bytes)?))
        };
        let (call, result) = Call::run(&self.kms, spec(method), incoming, decode, op).await;
        match result {
            Ok(Answer::Data(d)) => ok_response(d, &call.request_id),
            Ok(Answer::NoContent) => {
                let mut r = StatusCode::NO_CONTENT.into_response();
                if let Ok(v) = HeaderValue::from_str(&call.request_id) {
                    r.headers_mut().insert(REQUEST_ID_HEADER, v);
                }
                r
            }
            Err(e) => error_response(&e, &call.request_id),
        }
    }
}

/// Standard base64, as transit takes its inputs.
fn b64(field: &str, s: &str) -> Result<Vec<u8>, Error> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("field {field}: not valid base64")))
}

fn b64_opt(field: &str, s: &Option<String>) -> Result<Vec<u8>, Error> {
    s.as_deref().map_or(Ok(Vec::new()), |s| b64(field, s))
}

fn enc(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A field transit has and this front refuses unless it holds `allowed`
/// (its default) — never ignored.
fn refuse_unless<T: PartialEq + std::fmt::Debug>(
    field: &str,
    v: &Option<T>,
    allowed: &[T],
    why: &str,
) -> Result<(), Error> {
    match v {
        Some(x) if !allowed.contains(x) => Err(Error::InvalidArgument(format!(
            "field {field}: {x:?} is not supported by ron-kms ({why})"
        ))),
        _ => Ok(()),
    }
}

/// A number that transit clients send as a JSON number or a string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Num(pub u64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum N {
            I(u64),
            S(String),
        }
        match N::deserialize(d)? {
            N::I(n) => Ok(Num(n)),
            N::S(s) if s.trim().is_empty() => Ok(Num(0)),
            N::S(s) => s
                .trim()
                .parse()
                .map(Num)
                .map_err(|_| serde::de::Error::custom("expected a whole number")),
        }
    }
}

impl Num {
    fn u32(self, field: &str) -> Result<u32, Error> {
        u32::try_from(self.0)
            .map_err(|_| Error::InvalidArgument(format!("field {field}: too large")))
    }
}

/// `vault:vN:<payload>`: the version and the payload text.
fn split_vault(field: &str, s: &str) -> Result<(u32, String), Error> {
    let bad = || {
        Error::InvalidArgument(format!(
            "field {field}: expected vault:v<version>:<base64> as this key made it"
        ))
    };
    let rest = s.trim().strip_prefix("vault:v").ok_or_else(bad)?;
    let (v, payload) = rest.split_once(':').ok_or_else(bad)?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let v: u32 = v.parse().map_err(|_| bad())?;
    if v == 0 {
        return Err(bad());
    }
    Ok((v, payload.to_string()))
}

fn vault(version: u32, payload: &str) -> String {
    format!("vault:v{version}:{payload}")
}

/// The version in a service answer's `name#vN`.
fn version_of(kid: &str) -> u32 {
    kid.rsplit_once("#v")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// `name`, or `name#vN` when the caller asked for a version (0: the latest).
fn key_at(name: &str, version: Option<Num>, field: &str) -> Result<String, Error> {
    match version {
        None | Some(Num(0)) => Ok(name.to_string()),
        Some(v) => Ok(crate::store::kid(name, v.u32(field)?)),
    }
}

/// The body's `name`, when a client repeats it (hvac does on verify), must
/// be the path's.
fn same_name(path: &str, body: &Option<String>) -> Result<(), Error> {
    match body {
        Some(b) if b != path => Err(Error::InvalidArgument(
            "field name: differs from the key name in the path".into(),
        )),
        _ => Ok(()),
    }
}

/// One answer of a batch: its fields, or `{"error": …}`.
fn item<T: Serialize>(r: Result<T, Error>, rid: &str) -> serde_json::Value {
    match r {
        Ok(v) => serde_json::to_value(v).unwrap_or_default(),
        Err(e) => serde_json::json!({ "error": e.public_message(rid) }),
    }
}

fn item_error(e: &crate::proto::ItemError) -> serde_json::Value {
    serde_json::json!({ "error": e.message })
}

/// A batch answer carries the item's `reference` back, when it had one.
fn with_ref(mut v: serde_json::Value, reference: &Option<String>) -> serde_json::Value {
    if let Some(r) = reference {
        v["reference"] = serde_json::json!(r);
    }
    v
}

/// Requests built per item: the ones that could be built, and for each item
/// its request's index or the error that stopped it.
pub(super) fn build<I, T>(
    items: &[I],
    f: impl Fn(&I) -> Result<T, Error>,
) -> (Vec<T>, Vec<Result<usize, Error>>) {
    let mut reqs = Vec::new();
    let slots = items
        .iter()
        .map(|i| {
            f(i).map(|r| {
                reqs.push(r);
                reqs.len() - 1
            })
        })
        .collect();
    (reqs, slots)
}

/// `batch_input`, or the top level as the one item (`true`: the answer is
/// `batch_results`). With a batch the top level must hold none of the item
/// fields (`top_is_empty`), which then go in each item (`fields` names
/// them for the error).
pub(super) fn batch_or_one<I>(
    batch: Option<Vec<I>>,
    one: I,
    top_is_empty: bool,
    fields: &str,
) -> Result<(Vec<I>, bool), Error> {
    match batch {
        Some(items) => {
            if !top_is_empty {
                return Err(Error::InvalidArgument(format!(
                    "with batch_input, {fields} go in each item"
                )));
            }
            if items.is_empty() || items.len() > crate::service::MAX_BATCH_ITEMS {
                return Err(Error::InvalidArgument(format!(
                    "field batch_input: 1 to {} items",
                    crate::service::MAX_BATCH_ITEMS
                )));
            }
            Ok((items, true))
        }
        None => Ok((vec![one], false)),
    }
}

/// A batch's answers in the request's order: for each item, the error that
/// stopped it before the service saw it, or the service's answer (`ok`
/// turned into its JSON) or error — each with the item's `reference`.
pub(super) fn merge_batch<I, T, R>(
    slots: Vec<Result<usize, Error>>,
    items: &[I],
    reference: impl Fn(&I) -> &Option<String>,
    out: &[T],
    parts: impl Fn(&T) -> (Option<&R>, Option<&crate::proto::ItemError>),
    ok: impl Fn(&R) -> Result<serde_json::Value, Error>,
    rid: &str,
) -> Vec<serde_json::Value> {
    slots
        .into_iter()
        .zip(items)
        .map(|(s, it)| {
            let v = match s.map(|i| out.get(i).map(&parts)) {
                Err(e) => item::<()>(Err(e), rid),
                Ok(Some((Some(r), _))) => item(ok(r), rid),
                Ok(Some((None, Some(e)))) => item_error(e),
                Ok(_) => serde_json::json!({ "error": "no answer" }),
            };
            with_ref(v, reference(it))
        })
        .collect()
}
