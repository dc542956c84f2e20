//! The two fronts and what they share. Fronts are thin: read the request id
//! and credentials, decode, call [`crate::service::KmsService`], encode. An
//! error is mapped in exactly one place ([`error`]).
mod call;
pub mod error;
pub mod grpc;
pub mod http;
mod redact;
pub mod transit;

/// Largest request body either front accepts (1 MiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Header carrying the request id on both fronts.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The caller's `x-request-id` when it is sane (1–64 characters of
/// `[A-Za-z0-9._-]`), else a fresh one. Either way it is safe to log.
pub fn request_id_from(header: Option<&str>) -> String {
    match header {
        Some(h)
            if !h.is_empty()
                && h.len() <= 64
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
        {
            h.to_string()
        }
        _ => new_request_id(),
    }
}

/// A fresh request id: 16 hex digits from the OS CSPRNG.
pub fn new_request_id() -> String {
    let mut b = [0u8; 8];
    // The id is not a secret; on an RNG failure fall back to time.
    if crate::crypto::random_bytes(&mut b).is_err() {
        b = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0))
        .to_be_bytes();
    }
    hex::encode(b)
}

/// serde adapter: `Vec<u8>` as standard base64 with padding (JSON front).
pub mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(|_| serde::de::Error::custom("invalid base64 (standard alphabet, padded)"))
    }
}

/// Read what is left of a shed HTTP/2 request's body (gRPC's early shed, and
/// the HTTP front's check before the body), up to `EARLY_SHED_DRAIN_MAX`
/// bytes or `EARLY_SHED_DRAIN_FOR`, so the refusal goes out after the
/// caller's end of stream. Answering first makes the server reset the
/// stream (`RST_STREAM NO_ERROR`) with the caller's DATA frame still on the
/// way; under a shed storm those late frames land on streams the server has
/// already forgotten, each one costs a protocol-error reset, and once h2's
/// limit of 1,024 such resets per connection is reached the whole
/// connection gets GOAWAY `ENHANCE_YOUR_CALM`, failing every call on it
/// (the burst drill's long form showed 4,519 calls lost that way before this
/// drain).
pub(crate) async fn drain_body<B>(body: B)
where
    B: hyper::body::Body + Send + 'static,
{
    use http_body_util::BodyExt as _;
    let mut body = std::pin::pin!(body);
    let mut read = 0usize;
    let _ = tokio::time::timeout(EARLY_SHED_DRAIN_FOR, async {
        while read <= EARLY_SHED_DRAIN_MAX {
            match body.as_mut().frame().await {
                Some(Ok(f)) => read += f.data_ref().map(hyper::body::Buf::remaining).unwrap_or(0),
                _ => break,
            }
        }
    })
    .await;
}

const EARLY_SHED_DRAIN_MAX: usize = 64 * 1024;
const EARLY_SHED_DRAIN_FOR: std::time::Duration = std::time::Duration::from_millis(200);
