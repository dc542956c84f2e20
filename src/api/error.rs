//! The one table from [`Error`] to what clients see: HTTP status, gRPC code,
//! a stable `code` string and whether a retry can help.
//!
//! HTTP errors use the envelope
//! `{"error":{"code","message","retryable","request_id"}}`; gRPC errors carry
//! the same `code` in the `kms-error-code` metadata and the request id in
//! `x-request-id`. Internal errors are logged with their detail and shown to
//! the caller as a generic message.
use http::StatusCode;
use tonic::Code;

use crate::error::Error;

pub struct Class {
    pub http: StatusCode,
    pub grpc: Code,
    pub code: &'static str,
    pub retryable: bool,
}

const fn class(http: StatusCode, grpc: Code, code: &'static str, retryable: bool) -> Class {
    Class {
        http,
        grpc,
        code,
        retryable,
    }
}

pub fn classify(e: &Error) -> Class {
    use Error::*;
    match e {
        InvalidArgument(_) => class(
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            "invalid_argument",
            false,
        ),
        UnknownAlgorithm(_) => class(
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            "unknown_algorithm",
            false,
        ),
        WrongPurpose { .. } => class(
            StatusCode::BAD_REQUEST,
            Code::FailedPrecondition,
            "wrong_key_purpose",
            false,
        ),
        NotFound(_) => class(StatusCode::NOT_FOUND, Code::NotFound, "not_found", false),
        AlreadyExists(_) => class(
            StatusCode::CONFLICT,
            Code::AlreadyExists,
            "already_exists",
            false,
        ),
        VersionNotEnabled { .. } => class(
            StatusCode::CONFLICT,
            Code::FailedPrecondition,
            "key_version_not_enabled",
            false,
        ),
        FailedPrecondition(_) => class(
            StatusCode::CONFLICT,
            Code::FailedPrecondition,
            "failed_precondition",
            false,
        ),
        PqPolicy(_) => class(
            StatusCode::CONFLICT,
            Code::FailedPrecondition,
            "pq_policy",
            false,
        ),
        UnwrapFailed => class(
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            "unwrap_failed",
            false,
        ),
        Unauthenticated => class(
            StatusCode::UNAUTHORIZED,
            Code::Unauthenticated,
            "unauthenticated",
            false,
        ),
        PermissionDenied(_) => class(
            StatusCode::FORBIDDEN,
            Code::PermissionDenied,
            "permission_denied",
            false,
        ),
        TooLarge(_) => class(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            "too_large",
            false,
        ),
        Overloaded(_) => class(
            StatusCode::TOO_MANY_REQUESTS,
            Code::ResourceExhausted,
            "overloaded",
            true,
        ),
        AttestationMissing(_) => class(
            StatusCode::FORBIDDEN,
            Code::FailedPrecondition,
            "attestation_missing",
            false,
        ),
        Shed(s) => match s.kind {
            crate::admission::ShedKind::TenantShare => class(
                StatusCode::TOO_MANY_REQUESTS,
                Code::ResourceExhausted,
                "tenant_share",
                true,
            ),
            crate::admission::ShedKind::RateLimit => class(
                StatusCode::TOO_MANY_REQUESTS,
                Code::ResourceExhausted,
                "rate_limit",
                true,
            ),
            crate::admission::ShedKind::Overload => class(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
                "saturated",
                true,
            ),
        },
        Timeout(_) => class(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            "timeout",
            true,
        ),
        DecompressRatio(_) => class(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            "decompress_ratio",
            false,
        ),
        UnsupportedEncoding(_) => class(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            "unsupported_encoding",
            false,
        ),
        Unavailable(_) => class(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            "unavailable",
            true,
        ),
        Internal(_) => class(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Internal,
            "internal",
            false,
        ),
    }
}

/// The message shown to the caller; internal detail is logged instead.
pub fn public_message(e: &Error, request_id: &str) -> String {
    match e {
        Error::Internal(detail) => {
            tracing::error!(request_id, detail = %detail, "internal error");
            "internal error; see the server log for this request id".to_string()
        }
        Error::Unavailable(detail) => {
            tracing::warn!(request_id, detail = %detail, "dependency unavailable");
            e.to_string()
        }
        other => other.to_string(),
    }
}
