//! What a front does with an [`Error`]: the HTTP status and gRPC code of its
//! [`Error::code`]. The code, whether a retry helps, the retry advice and the
//! message the caller may see are the error's own (`crate::error`).
//!
//! HTTP errors use the envelope
//! `{"error":{"code","message","retryable","request_id"}}`; gRPC errors carry
//! the same `code` in the `kms-error-code` metadata and the request id in
//! `x-request-id`.
use http::StatusCode;
use tonic::Code;

use crate::error::Error;

/// (code, HTTP status, gRPC code), for every [`Error::code`].
const STATUSES: &[(&str, StatusCode, Code)] = &[
    (
        "invalid_argument",
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
    ),
    (
        "unknown_algorithm",
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
    ),
    (
        "wrong_key_purpose",
        StatusCode::BAD_REQUEST,
        Code::FailedPrecondition,
    ),
    ("not_found", StatusCode::NOT_FOUND, Code::NotFound),
    ("already_exists", StatusCode::CONFLICT, Code::AlreadyExists),
    (
        "key_version_not_enabled",
        StatusCode::CONFLICT,
        Code::FailedPrecondition,
    ),
    (
        "failed_precondition",
        StatusCode::CONFLICT,
        Code::FailedPrecondition,
    ),
    ("pq_policy", StatusCode::CONFLICT, Code::FailedPrecondition),
    (
        "unwrap_failed",
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
    ),
    (
        "unauthenticated",
        StatusCode::UNAUTHORIZED,
        Code::Unauthenticated,
    ),
    (
        "permission_denied",
        StatusCode::FORBIDDEN,
        Code::PermissionDenied,
    ),
    (
        "too_large",
        StatusCode::PAYLOAD_TOO_LARGE,
        Code::ResourceExhausted,
    ),
    (
        "resource_exhausted",
        StatusCode::TOO_MANY_REQUESTS,
        Code::ResourceExhausted,
    ),
    (
        "overloaded",
        StatusCode::TOO_MANY_REQUESTS,
        Code::ResourceExhausted,
    ),
    (
        "attestation_missing",
        StatusCode::FORBIDDEN,
        Code::FailedPrecondition,
    ),
    (
        "tenant_share",
        StatusCode::TOO_MANY_REQUESTS,
        Code::ResourceExhausted,
    ),
    (
        "rate_limit",
        StatusCode::TOO_MANY_REQUESTS,
        Code::ResourceExhausted,
    ),
    (
        "auth_failures",
        StatusCode::TOO_MANY_REQUESTS,
        Code::ResourceExhausted,
    ),
    (
        "saturated",
        StatusCode::SERVICE_UNAVAILABLE,
        Code::Unavailable,
    ),
    (
        "timeout",
        StatusCode::SERVICE_UNAVAILABLE,
        Code::Unavailable,
    ),
    (
        "decompress_ratio",
        StatusCode::PAYLOAD_TOO_LARGE,
        Code::ResourceExhausted,
    ),
    (
        "unsupported_encoding",
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Code::InvalidArgument,
    ),
    (
        "unavailable",
        StatusCode::SERVICE_UNAVAILABLE,
        Code::Unavailable,
    ),
    (
        "internal",
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
    ),
];

/// The HTTP status and gRPC code of `e`.
pub fn statuses(e: &Error) -> (StatusCode, Code) {
    let code = e.code();
    STATUSES
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, h, g)| (*h, *g))
        .unwrap_or((StatusCode::INTERNAL_SERVER_ERROR, Code::Internal))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code an error can have is in the table, once; the retryable
    /// ones are exactly the 429/503s but a limit reached (too large, a
    /// quota).
    #[test]
    fn every_code_maps_to_one_status() {
        use crate::error::{Shed, ShedKind};
        let shed = |kind| {
            Error::Shed(Shed {
                kind,
                op: crate::ops::Gate::Sign,
                retry_after: std::time::Duration::from_millis(5),
            })
        };
        let all = [
            Error::InvalidArgument(String::new()),
            Error::UnknownAlgorithm(String::new()),
            Error::WrongPurpose {
                kid: String::new(),
                purpose: "",
                op: "",
                needed: "",
            },
            Error::NotFound(String::new()),
            Error::AlreadyExists(String::new()),
            Error::VersionNotEnabled {
                kid: String::new(),
                state: "",
            },
            Error::FailedPrecondition(String::new()),
            Error::PqPolicy(String::new()),
            Error::UnwrapFailed,
            Error::Unauthenticated,
            Error::PermissionDenied(String::new()),
            Error::TooLarge(1),
            Error::Overloaded(String::new()),
            Error::ResourceExhausted(String::new()),
            Error::AttestationMissing(String::new()),
            shed(ShedKind::TenantShare),
            shed(ShedKind::RateLimit),
            shed(ShedKind::Overload),
            shed(ShedKind::AuthFailures),
            Error::Timeout(1),
            Error::DecompressRatio(10),
            Error::UnsupportedEncoding(String::new()),
            Error::Unavailable(String::new()),
            Error::Internal(String::new()),
        ];
        assert_eq!(all.len(), STATUSES.len());
        for e in &all {
            let code = e.code();
            assert_eq!(STATUSES.iter().filter(|s| s.0 == code).count(), 1, "{code}");
            let (http, _) = statuses(e);
            let transient = matches!(http.as_u16(), 429 | 503)
                && !matches!(code, "too_large" | "resource_exhausted");
            assert_eq!(e.retryable(), transient, "{code}");
        }
    }
}
