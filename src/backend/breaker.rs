//! The circuit breaker in front of custody.
//!
//! Closed: calls pass; `failures_to_open` consecutive
//! [`BackendError::Unavailable`] results open it. Open: calls fail at once
//! with `Unavailable` and a retry hint, without touching the device. When the
//! open period ends, the next call is the probe (half-open): it runs the
//! backend's health check — which, for a device, is where a reconnect
//! happens — and closes the breaker on success or opens it again for twice
//! as long (capped), with jitter. Only `Unavailable` counts: a bad
//! ciphertext or a wrong key is the caller's problem, not the device's.
//!
//! State is exported as `backend_breaker_state` (0 closed, 1 open,
//! 2 half-open).
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{jittered, Backend, BackendError, Capabilities, Generated, KeyLabel, KeyOp, Performed};

#[derive(Clone, Copy, Debug)]
pub struct BreakerSettings {
    pub failures_to_open: u32,
    pub open_base: Duration,
    pub open_max: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures_to_open: 5,
            open_base: Duration::from_millis(250),
            open_max: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

enum State {
    Closed { failures: u32 },
    Open { until: Instant, period: Duration },
    HalfOpen { period: Duration },
}

pub struct Breaker {
    inner: Arc<dyn Backend>,
    settings: BreakerSettings,
    state: Mutex<State>,
}

enum Admit {
    Go,
    Probe(Duration),
    Refuse(Duration),
}

fn publish(s: &State) {
    let v = match s {
        State::Closed { .. } => 0.0,
        State::Open { .. } => 1.0,
        State::HalfOpen { .. } => 2.0,
    };
    metrics::gauge!("backend_breaker_state").set(v);
}

impl Breaker {
    pub fn new(inner: Arc<dyn Backend>, settings: BreakerSettings) -> Self {
        let state = State::Closed { failures: 0 };
        publish(&state);
        Breaker {
            inner,
            settings,
            state: Mutex::new(state),
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn admit(&self) -> Admit {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *st {
            State::Closed { .. } => Admit::Go,
            State::Open { until, period } => {
                let now = Instant::now();
                if now < until {
                    Admit::Refuse(until - now)
                } else {
                    *st = State::HalfOpen { period };
                    publish(&st);
                    Admit::Probe(period)
                }
            }
            // one probe at a time; everyone else waits it out
            State::HalfOpen { period } => Admit::Refuse(period.min(Duration::from_millis(100))),
        }
    }

    fn open(&self, st: &mut State, period: Duration) {
        let period = period.min(self.settings.open_max);
        *st = State::Open {
            until: Instant::now() + jittered(period),
            period,
        };
        publish(st);
        tracing::warn!(
            backend = self.inner.name(),
            open_ms = period.as_millis() as u64,
            "custody circuit breaker open"
        );
    }

    fn record<T>(&self, r: &Result<T, BackendError>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match (r, &mut *st) {
            (Err(BackendError::Unavailable(_)), State::Closed { failures }) => {
                *failures += 1;
                if *failures >= self.settings.failures_to_open {
                    self.open(&mut st, self.settings.open_base);
                }
            }
            (Err(BackendError::Unavailable(_)), _) => {}
            (_, State::Closed { failures }) => *failures = 0,
            _ => {}
        }
    }

    fn refused(&self, wait: Duration) -> BackendError {
        BackendError::Unavailable(format!(
            "{} circuit breaker open; retry in {} ms",
            self.inner.name(),
            wait.as_millis().max(1)
        ))
    }

    /// The half-open probe: the backend's health check decides.
    fn probe(&self, period: Duration) -> Result<(), BackendError> {
        let r = self.inner.health();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &r {
            Ok(()) => {
                *st = State::Closed { failures: 0 };
                publish(&st);
                tracing::info!(
                    backend = self.inner.name(),
                    "custody circuit breaker closed"
                );
            }
            Err(_) => self.open(&mut st, period * 2),
        }
        r
    }

    fn call<T>(
        &self,
        f: impl FnOnce(&dyn Backend) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        match self.admit() {
            Admit::Go => {}
            Admit::Refuse(wait) => return Err(self.refused(wait)),
            Admit::Probe(period) => {
                if self.probe(period).is_err() {
                    return Err(self.refused(period));
                }
            }
        }
        let r = f(self.inner.as_ref());
        self.record(&r);
        r
    }
}

impl Backend for Breaker {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn generate(&self, label: KeyLabel<'_>) -> Result<Generated, BackendError> {
        self.call(|b| b.generate(label))
    }
    fn perform(&self, label: KeyLabel<'_>, handle: &[u8], op: KeyOp<'_>) -> Performed {
        self.call(|b| b.perform(label, handle, op))
    }
    fn destroy(&self, label: KeyLabel<'_>, handle: &[u8]) -> Result<(), BackendError> {
        self.call(|b| b.destroy(label, handle))
    }
    /// Readiness: open means not ready (without touching the device); at the
    /// end of the open period this is the probe.
    fn health(&self) -> Result<(), BackendError> {
        match self.admit() {
            Admit::Go => {
                let r = self.inner.health();
                self.record(&r);
                r
            }
            Admit::Refuse(wait) => Err(self.refused(wait)),
            Admit::Probe(period) => self.probe(period),
        }
    }
    /// Not gated: attestation is how an operator learns the device's state,
    /// and it must not open the breaker (a failed quote is not a failed
    /// device).
    fn attest(&self) -> Option<Result<super::Attested, BackendError>> {
        self.inner.attest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::faults::{Faults, FaultyBackend};
    use crate::backend::sealed_file::{MasterKey, SealedFileBackend};
    use crate::backend::SignInput;
    use crate::crypto::{Algorithm, Provider};

    #[test]
    fn opens_fails_fast_half_opens_and_closes() {
        let faults = Arc::new(Faults::default());
        let inner: Arc<dyn Backend> = Arc::new(FaultyBackend::new(
            Arc::new(SealedFileBackend::new(
                MasterKey::from_bytes([1u8; 32]),
                Arc::new(Provider::default()),
            )),
            faults.clone(),
        ));
        let b = Breaker::new(
            inner,
            BreakerSettings {
                failures_to_open: 3,
                open_base: Duration::from_millis(40),
                open_max: Duration::from_millis(200),
            },
        );
        let label = KeyLabel {
            tenant: "t",
            kid: "k#v1",
            algorithm: Algorithm::Ed25519,
        };
        let g = b.generate(label).unwrap();
        faults.set_down(true);
        for _ in 0..3 {
            assert!(b.sign(label, &g.handle, SignInput::Message(b"m")).is_err());
        }
        assert_eq!(b.state(), BreakerState::Open);
        // fails fast without reaching the device, even once it is back
        faults.set_down(false);
        let e = b
            .sign(label, &g.handle, SignInput::Message(b"m"))
            .unwrap_err();
        assert!(e.to_string().contains("circuit breaker open"), "{e}");
        std::thread::sleep(Duration::from_millis(60));
        // the probe succeeds: closed, and the call goes through
        assert!(b.sign(label, &g.handle, SignInput::Message(b"m")).is_ok());
        assert_eq!(b.state(), BreakerState::Closed);

        // a failed probe reopens for longer
        faults.set_down(true);
        for _ in 0..3 {
            let _ = b.sign(label, &g.handle, SignInput::Message(b"m"));
        }
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.health().is_err());
        assert_eq!(b.state(), BreakerState::Open);
        faults.set_down(false);
        std::thread::sleep(Duration::from_millis(100));
        assert!(b.health().is_ok());
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn caller_errors_do_not_count() {
        let inner: Arc<dyn Backend> = Arc::new(SealedFileBackend::new(
            MasterKey::from_bytes([1u8; 32]),
            Arc::new(Provider::default()),
        ));
        let b = Breaker::new(inner, BreakerSettings::default());
        let label = KeyLabel {
            tenant: "t",
            kid: "k#v1",
            algorithm: Algorithm::Ed25519,
        };
        for _ in 0..20 {
            assert!(b.sign(label, b"garbage", SignInput::Message(b"m")).is_err());
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
