//! TPM failures, and [`translate`]: the one function that turns a failed
//! TSS command into the [`BackendError`] custody reports.
//!
//! Work on the device returns [`Fail`]: either a TSS error with the command
//! it came from ([`Ctx::ctx`] attaches the name), or a custody error already
//! decided (a malformed blob, a missing point). The device layer probes the
//! TPM after a TSS error and passes the answer to [`translate`]. This module
//! decides; it must not touch the device.
use crate::backend::BackendError;

/// The outcome of TPM work, before it is translated.
pub(super) enum Fail {
    Tss(String, tss_esapi::Error),
    Backend(BackendError),
}

impl Fail {
    /// As a start-up or reconnect message.
    pub(super) fn message(&self) -> String {
        match self {
            Fail::Tss(what, e) => tss_err(what, *e),
            Fail::Backend(e) => e.to_string(),
        }
    }
}

impl From<BackendError> for Fail {
    fn from(e: BackendError) -> Self {
        Fail::Backend(e)
    }
}

/// Name the command a TSS result came from.
pub(super) trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, Fail>;
}

impl<T> Ctx<T> for tss_esapi::Result<T> {
    fn ctx(self, what: &str) -> Result<T, Fail> {
        self.map_err(|e| Fail::Tss(what.to_string(), e))
    }
}

/// A retryable failure to reach the TPM.
pub(super) fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("tpm: {e}"))
}

/// A TSS error as start-up and reconnect messages show it.
pub(super) fn tss_err(what: &str, e: tss_esapi::Error) -> String {
    format!("{what}: {e}")
}

/// The one translation of a failed TSS command. `tpm_answers` is whether
/// the TPM answered the probe (`TPM2_GetRandom`) sent right after it.
///
/// No code table: the same TSS and TCTI response codes come back for a TPM
/// that refused this command and for one whose socket or device went away
/// mid-command, and layered codes (TCTI, ESAPI, TPM) vary across tpm2-tss
/// versions. So every code, known or unknown, maps by the probe: when the
/// TPM still answers, the failure was the command's own (a blob from another
/// TPM, an object it will not load) and is [`BackendError::Crypto`] — not
/// retryable, and it must not open the breaker; when it does not answer, the
/// device is gone and it is `Unavailable` — retryable, and the caller drops
/// the context so the next call reconnects.
pub(super) fn translate(what: &str, e: &tss_esapi::Error, tpm_answers: bool) -> BackendError {
    if tpm_answers {
        BackendError::Crypto(format!("tpm: {what}: {e}"))
    } else {
        unavailable(format!("{what}: {e}"))
    }
}
