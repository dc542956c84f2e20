//! The one domain error every operation returns.
//!
//! Fronts never invent errors of their own: they map this enum through the
//! table in [`crate::api::error`] to an HTTP status, a gRPC code, a stable
//! machine-readable `code` and a retryable flag. Messages never contain key
//! material or caller input beyond names the caller chose (key names,
//! algorithm strings).
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// A field is malformed or out of range; the message names the field.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The algorithm string is not one ron-kms knows or allows.
    #[error("unknown or disallowed algorithm {0:?}")]
    UnknownAlgorithm(String),
    /// The key exists but its purpose does not allow this operation.
    #[error("key {kid} is a {purpose} key; {op} needs a {needed} key")]
    WrongPurpose {
        kid: String,
        purpose: &'static str,
        op: &'static str,
        needed: &'static str,
    },
    /// Missing key, version or route. Another tenant's key is reported
    /// exactly like a missing one.
    #[error("{0} not found")]
    NotFound(String),
    /// The name is taken, or an `op_id` was reused with different input.
    #[error("{0}")]
    AlreadyExists(String),
    /// The key version exists but is not enabled.
    #[error("key version {kid} is {state}")]
    VersionNotEnabled { kid: String, state: &'static str },
    /// The requested state change is not allowed from the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The tenant's PQ policy refuses this kind of signature (no downgrade).
    #[error("{0}")]
    PqPolicy(String),
    /// A wrapped ciphertext did not authenticate (tampered, wrong AAD, wrong
    /// key). Deliberately says nothing more.
    #[error("ciphertext could not be unwrapped")]
    UnwrapFailed,
    #[error("missing or invalid credentials")]
    Unauthenticated,
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("request body exceeds the {0} byte limit")]
    TooLarge(usize),
    /// Custody's queue is full; retry after a short pause.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Attestation is required and the device's attestation is not (or no
    /// longer) verified: private-key operations are refused.
    #[error("attestation required but not verified: {0}")]
    AttestationMissing(String),
    /// Admission refused the request before any work: the tenant is over
    /// its fair share or its rate cap (429), or the service is saturated
    /// (503). Carries the retry advice.
    #[error("{}", shed_message(.0))]
    Shed(crate::admission::Shed),
    /// The request did not finish within the server's request timeout.
    #[error("request timed out after {0} ms")]
    Timeout(u64),
    /// A compressed body expanded past the allowed ratio while inflating.
    #[error("compressed request body expands more than {0}x")]
    DecompressRatio(u64),
    /// A `Content-Encoding` this server does not accept.
    #[error("unsupported content encoding: {0}")]
    UnsupportedEncoding(String),
    /// A dependency (custody device, store) is unavailable; retry later.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure. The message is logged, the caller sees
    /// a generic text.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn shed_message(s: &crate::admission::Shed) -> String {
    use crate::admission::ShedKind;
    let what = match s.kind {
        ShedKind::TenantShare => "this tenant is over its fair share of",
        ShedKind::RateLimit => "this tenant is over its rate limit for",
        ShedKind::Overload => "the service is saturated for",
    };
    format!(
        "{what} {} requests; retry after {} ms",
        s.op.as_str(),
        s.retry_after.as_millis().max(1)
    )
}

impl Error {
    /// How long a client should wait before retrying, when a retry can help.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Error::Shed(s) => Some((s.retry_after.as_millis() as u64).max(1)),
            Error::Timeout(_) | Error::Overloaded(_) | Error::Unavailable(_) => Some(1000),
            _ => None,
        }
    }
}

impl From<crate::backend::BackendError> for Error {
    fn from(e: crate::backend::BackendError) -> Self {
        use crate::backend::BackendError as B;
        match e {
            B::Unavailable(m) => Error::Unavailable(m),
            B::Decrypt => Error::UnwrapFailed,
            B::Unsupported(a) => Error::UnknownAlgorithm(a.to_string()),
            B::Sealed(m) => Error::Internal(format!("custody: {m}")),
            B::Crypto(m) => Error::Internal(format!("custody crypto: {m}")),
            B::Busy(m) => Error::Overloaded(m),
            B::Attestation(m) => Error::AttestationMissing(m),
        }
    }
}

impl From<crate::admission::Shed> for Error {
    fn from(s: crate::admission::Shed) -> Self {
        Error::Shed(s)
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError as S;
        match e {
            S::AlreadyExists(m) | S::OpConflict(m) => Error::AlreadyExists(m),
            S::VersionConflict(m) => Error::Unavailable(format!("store: {m}")),
            S::NotFound(m) => Error::NotFound(m),
            S::Backend(m) => Error::Unavailable(format!("store: {m}")),
            S::Corrupt(m) => Error::Internal(format!("store: {m}")),
        }
    }
}

impl From<crate::crypto::CryptoError> for Error {
    fn from(e: crate::crypto::CryptoError) -> Self {
        Error::Internal(format!("crypto: {e}"))
    }
}
