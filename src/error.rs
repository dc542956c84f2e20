//! The one domain error every operation returns.
//!
//! Each error knows its stable machine-readable [`Error::code`], whether a
//! retry can help ([`Error::retryable`], [`Error::retry_after_ms`]) and what
//! the caller may be told ([`Error::public_message`]). Fronts never invent
//! errors of their own: they only map the code to an HTTP status and a gRPC
//! code (`crate::api::error`). Messages never contain key
//! material or caller input beyond names the caller chose (key names,
//! algorithm strings).
use std::time::Duration;

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
    /// A configured limit (a quota, the `op_id` answer cache) is reached;
    /// the message names it. A retry does not help until something is
    /// freed.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
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
    Shed(Shed),
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

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedKind {
    /// The tenant is over its fair share while others wait (429).
    TenantShare,
    /// The tenant's token bucket is empty (429).
    RateLimit,
    /// The op's gate and queue are full, or the wait ran out (503).
    Overload,
    /// The source address has failed authentication too often (429),
    /// refused before its credentials are looked at.
    AuthFailures,
}

impl ShedKind {
    /// The `reason` label of `kms_reject_total`.
    pub fn reason(self) -> &'static str {
        match self {
            ShedKind::TenantShare => "tenant_share",
            ShedKind::RateLimit => "rate_limit",
            ShedKind::Overload => "overload",
            ShedKind::AuthFailures => "auth_failures",
        }
    }
}

/// A refused request, with the advised wait before retrying.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op} refused ({}); retry in {} ms", .kind.reason(), .retry_after.as_millis())]
pub struct Shed {
    /// Why.
    pub kind: ShedKind,
    /// The op whose request was refused.
    pub op: crate::ops::Gate,
    /// The advice for `Retry-After` / `grpc-retry-pushback-ms`.
    pub retry_after: Duration,
}

fn shed_message(s: &Shed) -> String {
    let what = match s.kind {
        ShedKind::TenantShare => "this tenant is over its fair share of",
        ShedKind::RateLimit => "this tenant is over its rate limit for",
        ShedKind::Overload => "the service is saturated for",
        ShedKind::AuthFailures => {
            return format!(
                "too many failed authentications from this address; retry after {} ms",
                s.retry_after.as_millis().max(1)
            )
        }
    };
    format!(
        "{what} {} requests; retry after {} ms",
        s.op.as_str(),
        s.retry_after.as_millis().max(1)
    )
}

/// The wait advised with a retryable error that carries no advice of its own.
pub const DEFAULT_RETRY_AFTER_MS: u64 = 1000;

impl Error {
    /// The stable code clients see (`code` in the HTTP envelope,
    /// `kms-error-code` on gRPC; docs/api.md lists them).
    pub fn code(&self) -> &'static str {
        use Error::*;
        match self {
            InvalidArgument(_) => "invalid_argument",
            UnknownAlgorithm(_) => "unknown_algorithm",
            WrongPurpose { .. } => "wrong_key_purpose",
            NotFound(_) => "not_found",
            AlreadyExists(_) => "already_exists",
            VersionNotEnabled { .. } => "key_version_not_enabled",
            FailedPrecondition(_) => "failed_precondition",
            PqPolicy(_) => "pq_policy",
            UnwrapFailed => "unwrap_failed",
            Unauthenticated => "unauthenticated",
            PermissionDenied(_) => "permission_denied",
            TooLarge(_) => "too_large",
            Overloaded(_) => "overloaded",
            ResourceExhausted(_) => "resource_exhausted",
            AttestationMissing(_) => "attestation_missing",
            Shed(s) => match s.kind {
                ShedKind::TenantShare => "tenant_share",
                ShedKind::RateLimit => "rate_limit",
                ShedKind::Overload => "saturated",
                ShedKind::AuthFailures => "auth_failures",
            },
            Timeout(_) => "timeout",
            DecompressRatio(_) => "decompress_ratio",
            UnsupportedEncoding(_) => "unsupported_encoding",
            Unavailable(_) => "unavailable",
            Internal(_) => "internal",
        }
    }

    /// Whether the same request may succeed later.
    pub fn retryable(&self) -> bool {
        self.retry_after_ms().is_some()
    }

    /// How long a client should wait before retrying, when a retry can help:
    /// admission's advice for a shed, [`DEFAULT_RETRY_AFTER_MS`] for the
    /// other transient errors, `None` for errors a retry cannot fix.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Error::Shed(s) => Some((s.retry_after.as_millis() as u64).max(1)),
            Error::Timeout(_) | Error::Overloaded(_) | Error::Unavailable(_) => {
                Some(DEFAULT_RETRY_AFTER_MS)
            }
            _ => None,
        }
    }

    /// The message shown to the caller. An internal error's detail is
    /// logged under the request id instead; a dependency's unavailability
    /// is logged too.
    pub fn public_message(&self, request_id: &str) -> String {
        match self {
            Error::Internal(detail) => {
                tracing::error!(request_id, detail = %detail, "internal error");
                "internal error; see the server log for this request id".to_string()
            }
            Error::Unavailable(detail) => {
                tracing::warn!(request_id, detail = %detail, "dependency unavailable");
                self.to_string()
            }
            other => other.to_string(),
        }
    }
}

impl From<Shed> for Error {
    fn from(s: Shed) -> Self {
        Error::Shed(s)
    }
}

impl From<crate::crypto::CryptoError> for Error {
    fn from(e: crate::crypto::CryptoError) -> Self {
        match e {
            crate::crypto::CryptoError::BadInput(m) => Error::InvalidArgument(m.to_string()),
            other => Error::Internal(format!("crypto: {other}")),
        }
    }
}
