//! Whether the service can serve: custody's liveness (probed, and learnt
//! from every custody call), attestation when it is required, and the
//! `/readyz` checks.
use super::*;

/// One line of `/readyz`.
pub struct Check {
    pub name: &'static str,
    pub outcome: std::result::Result<(), String>,
    /// A failing check that is not required is shown as degraded.
    pub required: bool,
}

/// The service's view of custody attestation: whether it is required, and
/// the outcome of the last attestation (updated at start-up and on the
/// configured interval by the server).
pub struct AttestationGate {
    required: bool,
    ready: std::sync::atomic::AtomicBool,
    /// Why the last attestation failed (for the log and `/readyz`; callers
    /// are told only that attestation is missing).
    detail: std::sync::Mutex<String>,
}

impl AttestationGate {
    pub fn new(required: bool) -> Self {
        metrics::gauge!("kms_attestation_required").set(if required { 1.0 } else { 0.0 });
        AttestationGate {
            required,
            ready: std::sync::atomic::AtomicBool::new(false),
            detail: std::sync::Mutex::new("not attested yet".into()),
        }
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Record one attestation's outcome; exported as `attestation_ready`.
    pub fn record(&self, outcome: std::result::Result<(), String>) {
        let ok = outcome.is_ok();
        let was = self.ready.swap(ok, std::sync::atomic::Ordering::AcqRel);
        metrics::gauge!("attestation_ready").set(if ok { 1.0 } else { 0.0 });
        match outcome {
            Ok(()) => {
                if !was {
                    tracing::info!("attestation verified");
                }
            }
            Err(why) => {
                if was {
                    tracing::warn!(reason = %why, "attestation lost");
                } else {
                    tracing::warn!(reason = %why, "attestation failed");
                }
                *self.detail.lock().unwrap_or_else(|p| p.into_inner()) = why;
            }
        }
    }

    /// `Err` while attestation is required and not verified.
    pub fn check(&self) -> Result<()> {
        if !self.required || self.ready() {
            return Ok(());
        }
        Err(Error::AttestationMissing(
            "custody's last attestation did not verify; private-key operations are refused".into(),
        ))
    }

    pub(super) fn readiness(&self) -> std::result::Result<(), String> {
        if self.ready() {
            Ok(())
        } else {
            Err(self
                .detail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone())
        }
    }
}

/// Whether custody answers, probed at most every [`CustodyProbe::EVERY`]
/// and updated by every custody call's outcome, so the hot path knows
/// without a device round trip per request.
pub(super) struct CustodyProbe {
    up: std::sync::atomic::AtomicBool,
    /// Milliseconds since `origin` of the last probe: an atomic, so every
    /// sign and verify reads it without taking a lock.
    last_ms: std::sync::atomic::AtomicU64,
    origin: std::time::Instant,
}

impl CustodyProbe {
    const EVERY: Duration = Duration::from_millis(200);

    /// Up until a call or a probe says otherwise.
    pub(super) fn new() -> Self {
        CustodyProbe {
            up: std::sync::atomic::AtomicBool::new(true),
            last_ms: std::sync::atomic::AtomicU64::new(0),
            origin: std::time::Instant::now(),
        }
    }
}

impl KmsService {
    /// Whether custody answers: the last known state, re-probed (a cheap
    /// health call) when older than [`CustodyProbe::EVERY`].
    pub(super) fn custody_up(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = self.custody.origin.elapsed().as_millis() as u64;
        let last = self.custody.last_ms.load(Ordering::Relaxed);
        // one caller wins the probe; the others use the last known state
        let due = now.saturating_sub(last) >= CustodyProbe::EVERY.as_millis() as u64
            && self
                .custody
                .last_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if due {
            // a busy device is a live one
            let up = !matches!(
                self.backend.health(),
                Err(crate::backend::BackendError::Unavailable(_))
            );
            self.custody.up.store(up, Ordering::Release);
        }
        self.custody.up.load(Ordering::Acquire)
    }

    /// Record a custody call's outcome: an `Unavailable` marks custody down
    /// at once, a success marks it up.
    pub(super) fn custody_saw<T>(&self, r: &std::result::Result<T, crate::backend::BackendError>) {
        use std::sync::atomic::Ordering;
        match r {
            Ok(_) => self.custody.up.store(true, Ordering::Release),
            Err(crate::backend::BackendError::Unavailable(_)) => {
                self.custody.up.store(false, Ordering::Release)
            }
            Err(_) => {}
        }
    }

    /// Readiness: each named dependency and whether it answers; with
    /// attestation required, whether it is verified. A shared store that is
    /// away is reported but does not make the replica unready: sign, verify,
    /// wrap and unwrap go on from the snapshot (mutations fail fast), and a
    /// load balancer that dropped every replica would stop those too.
    pub fn readiness(&self) -> Vec<Check> {
        let check = |name, outcome| Check {
            name,
            outcome,
            required: true,
        };
        let mut r = vec![
            check(
                "backend",
                match self.backend.health() {
                    Ok(()) | Err(crate::backend::BackendError::Busy(_)) => Ok(()),
                    Err(e) => Err(e.to_string()),
                },
            ),
            Check {
                name: "store",
                outcome: self.store.health().map_err(|e| e.to_string()),
                required: !self.store.shared(),
            },
            check("audit", self.audit.integrity()),
        ];
        if self.attestation.required() {
            r.push(check("attestation", self.attestation.readiness()));
        }
        r
    }

    /// Whether every required dependency answers.
    pub fn ready(&self) -> bool {
        self.readiness()
            .iter()
            .all(|c| c.outcome.is_ok() || !c.required)
    }

    /// The attestation state the server updates.
    pub fn attestation(&self) -> &Arc<AttestationGate> {
        &self.attestation
    }
}
