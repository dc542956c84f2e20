//! A fault-injecting wrapper around any backend, for chaos drills and
//! tests. Switchable at run time through [`Faults`] (reached through
//! [`crate::server::Running::faults`]; enabled by `KMS_FAULT_INJECTION=true`):
//!
//! - `down`: every custody call (and the health probe) fails with
//!   [`BackendError::Unavailable`] without reaching the wrapped backend, as a
//!   lost HSM session or TPM would;
//! - `latency`: each call sleeps this long first (a slow device);
//! - `error rate`: each call fails with that probability (a flaky device);
//! - `flap`: alternate `up` and `down` periods on a schedule, starting now.
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Backend, BackendError, Capabilities, Generated, KeyLabel, KeyOp, Performed};

/// The switches shared by the wrapper and whoever drives the drill.
#[derive(Debug, Default)]
pub struct Faults {
    down: AtomicBool,
    latency_us: AtomicU64,
    /// Probability of an injected error, in parts per million.
    error_ppm: AtomicU32,
    flap: Mutex<Option<Flap>>,
}

#[derive(Clone, Copy, Debug)]
struct Flap {
    start: Instant,
    up: Duration,
    down: Duration,
}

impl Faults {
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    pub fn set_latency(&self, latency: Duration) {
        self.latency_us
            .store(latency.as_micros() as u64, Ordering::SeqCst);
    }
    /// `rate` in [0, 1]: the share of calls that fail.
    pub fn set_error_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1_000_000.0) as u32;
        self.error_ppm.store(ppm, Ordering::SeqCst);
    }
    /// Alternate `up` then `down` periods from now on; `None` stops flapping.
    pub fn set_flap(&self, schedule: Option<(Duration, Duration)>) {
        *self.flap.lock().unwrap_or_else(|p| p.into_inner()) = schedule.map(|(up, down)| Flap {
            start: Instant::now(),
            up,
            down,
        });
    }
    /// Everything back to normal.
    pub fn clear(&self) {
        self.set_down(false);
        self.set_latency(Duration::ZERO);
        self.set_error_rate(0.0);
        self.set_flap(None);
    }

    /// Whether custody is down right now (switch or flap schedule).
    pub fn is_down(&self) -> bool {
        if self.down.load(Ordering::SeqCst) {
            return true;
        }
        let flap = *self.flap.lock().unwrap_or_else(|p| p.into_inner());
        flap.is_some_and(|f| {
            let cycle = (f.up + f.down).as_nanos().max(1);
            f.start.elapsed().as_nanos() % cycle >= f.up.as_nanos()
        })
    }

    fn injected_error(&self) -> bool {
        let ppm = self.error_ppm.load(Ordering::Relaxed);
        if ppm == 0 {
            return false;
        }
        let mut b = [0u8; 4];
        let _ = crate::crypto::random_bytes(&mut b);
        u32::from_le_bytes(b) % 1_000_000 < ppm
    }
}

pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
    /// The inner backend's, marked `device_bound`: injected latency sleeps
    /// the calling thread, so every custody call must run on the blocking
    /// pool, as for a real slow device.
    caps: Capabilities,
}

impl FaultyBackend {
    pub fn new(inner: Arc<dyn Backend>, faults: Arc<Faults>) -> Self {
        let mut caps = inner.capabilities().clone();
        caps.device_bound = true;
        FaultyBackend {
            inner,
            faults,
            caps,
        }
    }

    /// The down switch and flap schedule only — no latency and no random
    /// errors: for the health probe, which the service may run on a
    /// request's async worker, and which a random error would make report
    /// custody down.
    fn gate_no_latency(&self) -> Result<(), BackendError> {
        if self.faults.is_down() {
            return Err(BackendError::Unavailable(format!(
                "{} is down (fault injection)",
                self.inner.name()
            )));
        }
        Ok(())
    }

    fn gate(&self) -> Result<(), BackendError> {
        let lat = self.faults.latency_us.load(Ordering::Relaxed);
        if lat > 0 {
            std::thread::sleep(Duration::from_micros(lat));
        }
        if self.faults.is_down() {
            Err(BackendError::Unavailable(format!(
                "{} is down (fault injection)",
                self.inner.name()
            )))
        } else if self.faults.injected_error() {
            Err(BackendError::Unavailable(format!(
                "{} failed (fault injection, error rate)",
                self.inner.name()
            )))
        } else {
            Ok(())
        }
    }
}

impl Backend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn generate(&self, label: KeyLabel<'_>) -> Result<Generated, BackendError> {
        self.gate()?;
        self.inner.generate(label)
    }
    fn perform(&self, label: KeyLabel<'_>, handle: &[u8], op: KeyOp<'_>) -> Performed {
        self.gate()?;
        self.inner.perform(label, handle, op)
    }
    fn destroy(&self, label: KeyLabel<'_>, handle: &[u8]) -> Result<(), BackendError> {
        self.gate()?;
        self.inner.destroy(label, handle)
    }
    fn health(&self) -> Result<(), BackendError> {
        self.gate_no_latency()?;
        self.inner.health()
    }
    fn attest(&self) -> Option<Result<super::Attested, BackendError>> {
        if let Err(e) = self.gate() {
            return self.inner.capabilities().attestation.then_some(Err(e));
        }
        self.inner.attest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flap_schedule_and_error_rate() {
        let f = Faults::default();
        assert!(!f.is_down());
        // 200 ms up, 200 ms down: checked at ~300 ms and ~500 ms, so a
        // sleep may overrun by up to ~90 ms on a busy machine
        f.set_flap(Some((
            Duration::from_millis(200),
            Duration::from_millis(200),
        )));
        assert!(!f.is_down(), "starts up");
        std::thread::sleep(Duration::from_millis(300));
        assert!(f.is_down(), "then down");
        std::thread::sleep(Duration::from_millis(200));
        assert!(!f.is_down(), "then up again");
        f.clear();
        f.set_error_rate(1.0);
        assert!(f.injected_error());
        f.set_error_rate(0.5);
        let hits = (0..2000).filter(|_| f.injected_error()).count();
        assert!((800..1200).contains(&hits), "{hits} of 2000 at 50%");
        f.clear();
        assert!((0..1000).all(|_| !f.injected_error()));
    }
}
