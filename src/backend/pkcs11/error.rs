//! PKCS#11 failures, and [`translate`]: the one function that turns a
//! cryptoki error (a `CK_RV` code) into the [`BackendError`] custody
//! reports.
//!
//! Every `CK_RV` code this backend acts on is named here and nowhere else:
//! which codes mean the device, the session or the login is gone (the
//! connection is dropped and rebuilt), which mean a cached object handle went
//! stale (looked up again once), and which mean a bad ciphertext. This module
//! decides; it must not touch a session or the pool — the pool acts on
//! [`Translated::reconnect`].
use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

use crate::backend::BackendError;

/// The outcome of one token call, before it is translated.
pub(super) enum Fail {
    Ck(CkError),
    Backend(BackendError),
}

impl From<CkError> for Fail {
    fn from(e: CkError) -> Self {
        Fail::Ck(e)
    }
}

impl From<BackendError> for Fail {
    fn from(e: BackendError) -> Self {
        Fail::Backend(e)
    }
}

/// A retryable failure to reach the token.
pub(super) fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("pkcs11: {e}"))
}

/// Errors that mean the device, the session or the login is gone: the
/// connection is dropped and rebuilt.
fn device_class(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::SessionClosed
            | RvError::SessionHandleInvalid
            | RvError::CryptokiNotInitialized
            | RvError::UserNotLoggedIn
            | RvError::GeneralError
            | RvError::FunctionFailed
            | RvError::HostMemory
            | RvError::SlotIdInvalid
    )
}

/// An object handle this connection holds is no longer valid on the token.
pub(super) fn stale_handle(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _)
    )
}

/// `C_Login` on a token this application is already logged in to: login
/// state is per token and application, so this is success.
pub(super) fn already_logged_in(e: &CkError) -> bool {
    matches!(e, CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _))
}

/// What a failed token call means for the caller.
pub(super) struct Translated {
    pub(super) error: BackendError,
    /// The connection is gone or no longer trustworthy: drop it, so the
    /// next call reconnects.
    pub(super) reconnect: bool,
}

/// The one translation of a cryptoki error into custody's error.
/// `token_answers` is asked only when the code alone cannot tell a bad
/// ciphertext from a failing device (a failed `C_Decrypt`).
///
/// Codes this function does not name — a mechanism or key type the token
/// refuses, a bad argument, anything a future module returns — map to
/// [`BackendError::Crypto`]: the token answered and refused this one
/// operation, so retrying will not help, the breaker must not open on it
/// (only `Unavailable` counts), and the connection stays. A device that is
/// really gone shows a device-class code on the next call, or fails the
/// health probe. Mapping unknown codes to `Unavailable` instead would make a
/// deterministic refusal look retryable and let bad input open the breaker.
pub(super) fn translate(e: CkError, token_answers: impl FnOnce() -> bool) -> Translated {
    // SoftHSM2 (and other tokens) answer a failed GCM tag check with
    // CKR_GENERAL_ERROR: a bad ciphertext if the token still answers, a
    // device error if it does not.
    let failed_decrypt = matches!(
        e,
        CkError::Pkcs11(
            RvError::GeneralError | RvError::FunctionFailed,
            Function::Decrypt
        )
    );
    if failed_decrypt && token_answers() {
        return Translated {
            error: BackendError::Decrypt,
            reconnect: false,
        };
    }
    let (error, reconnect) = match &e {
        CkError::Pkcs11(rv, _) if device_class(*rv) => (unavailable(&e), true),
        // A handle this connection holds (the KEK's, or a native key's
        // looked up afresh) is no longer valid: the token's objects changed
        // under us (seen when SoftHSM2's token directory goes away
        // mid-call). Reconnect, as for a device error.
        _ if stale_handle(&e) => (unavailable(&e), true),
        CkError::Pkcs11(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange, _) => {
            (BackendError::Decrypt, false)
        }
        _ => (BackendError::Crypto(format!("pkcs11: {e}")), false),
    };
    Translated { error, reconnect }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(rv: RvError, f: Function) -> CkError {
        CkError::Pkcs11(rv, f)
    }

    #[test]
    fn codes_translate_as_documented() {
        let t = translate(ck(RvError::DeviceRemoved, Function::Sign), || true);
        assert!(matches!(t.error, BackendError::Unavailable(_)) && t.reconnect);
        let t = translate(ck(RvError::ObjectHandleInvalid, Function::Sign), || true);
        assert!(matches!(t.error, BackendError::Unavailable(_)) && t.reconnect);
        let t = translate(ck(RvError::EncryptedDataInvalid, Function::Decrypt), || {
            true
        });
        assert!(matches!(t.error, BackendError::Decrypt) && !t.reconnect);
        // a failed tag check on a token that answers is a bad ciphertext;
        // on one that does not, a device error
        let t = translate(ck(RvError::GeneralError, Function::Decrypt), || true);
        assert!(matches!(t.error, BackendError::Decrypt) && !t.reconnect);
        let t = translate(ck(RvError::GeneralError, Function::Decrypt), || false);
        assert!(matches!(t.error, BackendError::Unavailable(_)) && t.reconnect);
        // the probe is not asked about other functions
        let t = translate(ck(RvError::GeneralError, Function::Sign), || {
            panic!("not asked")
        });
        assert!(matches!(t.error, BackendError::Unavailable(_)) && t.reconnect);
        // an operation the token refuses: not retryable, connection kept
        let t = translate(ck(RvError::KeyTypeInconsistent, Function::SignInit), || {
            true
        });
        assert!(matches!(t.error, BackendError::Crypto(_)) && !t.reconnect);
    }
}
