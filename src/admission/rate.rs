//! Per-tenant rate caps: token buckets (GCRA, from `governor`) counted in
//! cost units.
//!
//! - The default cap, `tenant_rps` units per second with a bucket of
//!   `tenant_burst` units (default: one second's worth, at least 1), applies
//!   to every tenant without an entry in `tenants`. Its buckets are made on a
//!   tenant's first request and swept once full again (a full bucket is the
//!   same as none), so memory follows the tenants seen recently, not all
//!   tenants ever seen.
//! - A tenant with an entry in `tenants` has its own cap instead: its `rps`
//!   with its `burst` (default: one second of its `rps`), or **no cap** when
//!   its `rps` is `None`, whatever the default.
//! - A request of `n` units takes `n` tokens or none. When there are too few
//!   the answer is the wait until there would be enough; a request larger
//!   than the whole bucket can never pass and is refused with a 1 s wait.
//! - A rate that is not a positive finite number means no cap.
//!
//! [`RateLimits::peek`] answers "is there at least one token?" without
//! taking any: a second limiter reads the same state through a store that
//! never writes.
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use super::AdmissionConfig;

/// The wait advised for a request larger than its tenant's whole bucket.
pub const TOO_BIG_RETRY: Duration = Duration::from_secs(1);

/// Default-cap buckets kept before the first sweep; after a sweep the next
/// comes at twice the survivors (amortised O(1) per new tenant).
const SWEEP_MIN: usize = 1024;

/// Per-tenant token buckets. Generic over the clock for tests.
pub struct RateLimits<C: Clock = DefaultClock> {
    clock: C,
    default: Option<Quota>,
    /// Tenants with their own cap (`None`: uncapped). Fixed at start.
    overrides: HashMap<String, Option<Bucket<C>>>,
    /// Default-cap buckets, made on first use.
    lazy: Mutex<Lazy<C>>,
}

struct Lazy<C: Clock> {
    buckets: HashMap<String, Bucket<C>>,
    sweep_at: usize,
}

/// One tenant's bucket: the limiter and a read-only twin over its state.
struct Bucket<C: Clock> {
    limiter: RateLimiter<NotKeyed, Shared, C, NoOpMiddleware<C::Instant>>,
    peek: RateLimiter<NotKeyed, ReadOnly, C, NoOpMiddleware<C::Instant>>,
    burst: NonZeroU32,
}

/// A bucket's state, shared by its limiter and the read-only twin.
struct Shared(Arc<InMemoryState>);

/// Runs governor's decision on the current state but never stores the
/// result: a check through it takes no tokens.
struct ReadOnly(Arc<InMemoryState>);

impl StateStore for Shared {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl StateStore for ReadOnly {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // a measurement that always declines reads the state and leaves it
        let current = self
            .0
            .measure_and_replace(key, Err::<((), Nanos), Option<Nanos>>)
            .err()
            .flatten();
        f(current).map(|(outcome, _)| outcome)
    }
}

/// `rps` units per second with a bucket of `burst` (default: one second's
/// worth, at least 1); `None` when `rps` is not a positive finite number.
fn quota(rps: f64, burst: Option<u32>) -> Option<Quota> {
    if !(rps.is_finite() && rps > 0.0) {
        return None;
    }
    let period = Duration::try_from_secs_f64(1.0 / rps).ok()?;
    // `as` saturates: a huge rps gets a u32::MAX bucket
    let burst = burst.unwrap_or(rps.round() as u32).max(1);
    let burst = NonZeroU32::new(burst)?;
    Quota::with_period(period).map(|q| q.allow_burst(burst))
}

impl<C: Clock + Clone> Bucket<C> {
    fn new(quota: Quota, clock: &C) -> Self {
        let state = Arc::new(InMemoryState::default());
        Bucket {
            limiter: RateLimiter::new(quota, Shared(Arc::clone(&state)), clock.clone()),
            peek: RateLimiter::new(quota, ReadOnly(state), clock.clone()),
            burst: quota.burst_size(),
        }
    }

    fn take(&self, n: NonZeroU32) -> Result<(), Duration> {
        match self.limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.limiter.clock().now())),
            Err(_insufficient_capacity) => Err(TOO_BIG_RETRY),
        }
    }

    fn peek(&self) -> Result<(), Duration> {
        self.peek
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.peek.clock().now()))
    }

    /// Indistinguishable from a fresh bucket.
    fn is_full(&self) -> bool {
        matches!(self.peek.check_n(self.burst), Ok(Ok(())))
    }
}

impl RateLimits<DefaultClock> {
    /// The caps of `cfg`, on the real clock.
    pub fn new(cfg: &AdmissionConfig) -> Self {
        Self::with_clock(cfg, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    /// The caps of `cfg` on `clock`.
    pub fn with_clock(cfg: &AdmissionConfig, clock: C) -> Self {
        let overrides = cfg
            .tenants
            .iter()
            .map(|(tenant, limits)| {
                let bucket = limits
                    .rps
                    .and_then(|rps| quota(rps, limits.burst))
                    .map(|q| Bucket::new(q, &clock));
                (tenant.clone(), bucket)
            })
            .collect();
        RateLimits {
            default: cfg.tenant_rps.and_then(|rps| quota(rps, cfg.tenant_burst)),
            overrides,
            lazy: Mutex::new(Lazy {
                buckets: HashMap::new(),
                sweep_at: SWEEP_MIN,
            }),
            clock,
        }
    }

    /// Take `cost` units (at least 1) from the tenant's bucket, or say how
    /// long until they would be there.
    pub fn check_n(&self, tenant: &str, cost: u32) -> Result<(), Duration> {
        let n = NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN);
        match self.overrides.get(tenant) {
            Some(Some(bucket)) => return bucket.take(n),
            Some(None) => return Ok(()),
            None => {}
        }
        let Some(quota) = self.default else {
            return Ok(());
        };
        let mut lazy = self.lazy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = lazy.buckets.get(tenant) {
            return bucket.take(n);
        }
        if lazy.buckets.len() >= lazy.sweep_at {
            lazy.buckets.retain(|_, b| !b.is_full());
            lazy.sweep_at = (lazy.buckets.len() * 2).max(SWEEP_MIN);
        }
        let bucket = Bucket::new(quota, &self.clock);
        let r = bucket.take(n);
        lazy.buckets.insert(tenant.to_owned(), bucket);
        r
    }

    /// Whether the tenant's bucket holds at least one unit, taking nothing;
    /// otherwise the wait until it will.
    pub fn peek(&self, tenant: &str) -> Result<(), Duration> {
        match self.overrides.get(tenant) {
            Some(Some(bucket)) => bucket.peek(),
            Some(None) => Ok(()),
            None => {
                let lazy = self.lazy.lock().unwrap_or_else(|p| p.into_inner());
                // no bucket yet: a fresh one is full
                lazy.buckets.get(tenant).map_or(Ok(()), Bucket::peek)
            }
        }
    }

    /// Default-cap buckets currently kept (for tests and a gauge).
    pub fn tracked(&self) -> usize {
        self.lazy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .buckets
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::TenantLimits;
    use governor::clock::FakeRelativeClock;

    fn limits(
        rps: Option<f64>,
        burst: Option<u32>,
        tenants: &[(&str, Option<f64>, Option<u32>)],
    ) -> (RateLimits<FakeRelativeClock>, FakeRelativeClock) {
        let cfg = AdmissionConfig {
            tenant_rps: rps,
            tenant_burst: burst,
            tenants: tenants
                .iter()
                .map(|&(t, rps, burst)| {
                    let l = TenantLimits {
                        rps,
                        burst,
                        ..TenantLimits::default()
                    };
                    (t.to_owned(), l)
                })
                .collect(),
            ..AdmissionConfig::default()
        };
        let clock = FakeRelativeClock::default();
        (RateLimits::with_clock(&cfg, clock.clone()), clock)
    }

    fn passes(r: &RateLimits<FakeRelativeClock>, tenant: &str, n: usize) -> usize {
        (0..n).filter(|_| r.check_n(tenant, 1).is_ok()).count()
    }

    #[test]
    fn the_default_cap_sheds_after_the_burst_and_recovers() {
        let (r, clock) = limits(Some(10.0), Some(5), &[]);
        assert_eq!(passes(&r, "a", 20), 5);
        let wait = r.check_n("a", 1).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // each tenant has its own bucket
        assert_eq!(passes(&r, "b", 20), 5);
        clock.advance(Duration::from_millis(100));
        assert_eq!(passes(&r, "a", 20), 1);
        clock.advance(Duration::from_secs(10));
        assert_eq!(passes(&r, "a", 20), 5);
    }

    #[test]
    fn the_default_burst_is_one_second() {
        let (r, _clock) = limits(Some(20.0), None, &[]);
        assert_eq!(passes(&r, "a", 100), 20);
    }

    #[test]
    fn costs_take_that_many_tokens() {
        let (r, clock) = limits(Some(10.0), Some(10), &[]);
        assert!(r.check_n("a", 4).is_ok());
        assert!(r.check_n("a", 4).is_ok());
        // 2 left: a cost of 4 waits for 2 more
        assert_eq!(r.check_n("a", 4), Err(Duration::from_millis(200)));
        assert!(r.check_n("a", 2).is_ok());
        clock.advance(Duration::from_millis(400));
        assert!(r.check_n("a", 4).is_ok());
    }

    #[test]
    fn an_override_with_a_higher_rate() {
        let (r, clock) = limits(Some(1.0), Some(1), &[("big", Some(100.0), None)]);
        assert_eq!(passes(&r, "small", 10), 1);
        assert_eq!(passes(&r, "big", 1000), 100);
        clock.advance(Duration::from_millis(50));
        assert_eq!(passes(&r, "big", 1000), 5);
        // overrides are not default-cap buckets
        assert_eq!(r.tracked(), 1);
    }

    #[test]
    fn an_override_without_a_rate_is_uncapped() {
        let (r, _clock) = limits(Some(1.0), Some(1), &[("free", None, Some(3))]);
        assert_eq!(passes(&r, "free", 1000), 1000);
        assert!(r.check_n("free", 10_000).is_ok());
        assert_eq!(passes(&r, "other", 10), 1);
    }

    #[test]
    fn no_default_means_no_cap() {
        let (r, _clock) = limits(None, Some(1), &[("capped", Some(1.0), None)]);
        assert_eq!(passes(&r, "anyone", 1000), 1000);
        assert_eq!(passes(&r, "capped", 10), 1);
        assert_eq!(r.tracked(), 0);
    }

    #[test]
    fn a_fractional_rate() {
        // one unit every 4 s
        let (r, clock) = limits(Some(0.25), None, &[]);
        assert_eq!(passes(&r, "a", 10), 1);
        assert_eq!(r.check_n("a", 1), Err(Duration::from_secs(4)));
        clock.advance(Duration::from_secs(3));
        assert_eq!(r.check_n("a", 1), Err(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(passes(&r, "a", 10), 1);
    }

    #[test]
    fn a_cost_larger_than_the_bucket_waits_a_second() {
        let (r, _clock) = limits(Some(10.0), Some(5), &[("t", Some(2.0), Some(2))]);
        assert_eq!(r.check_n("a", 6), Err(TOO_BIG_RETRY));
        assert_eq!(r.check_n("t", 3), Err(TOO_BIG_RETRY));
        // and took nothing
        assert_eq!(passes(&r, "a", 10), 5);
    }

    #[test]
    fn invalid_rates_mean_no_cap() {
        for rps in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let (r, _clock) = limits(Some(rps), None, &[]);
            assert_eq!(passes(&r, "a", 100), 100, "{rps}");
        }
    }

    #[test]
    fn peek_takes_nothing() {
        let (r, clock) = limits(Some(10.0), Some(3), &[("o", Some(10.0), Some(3))]);
        for tenant in ["a", "o"] {
            for _ in 0..100 {
                assert_eq!(r.peek(tenant), Ok(()));
            }
            assert_eq!(passes(&r, tenant, 10), 3);
            assert_eq!(r.peek(tenant), Err(Duration::from_millis(100)));
        }
        clock.advance(Duration::from_millis(100));
        assert_eq!(r.peek("a"), Ok(()));
        assert_eq!(r.peek("a"), Ok(()));
        assert_eq!(passes(&r, "a", 10), 1);
        // peeking at an unknown tenant makes no bucket
        assert_eq!(r.peek("new"), Ok(()));
        assert_eq!(r.tracked(), 1);
    }

    #[test]
    fn full_buckets_are_swept() {
        let (r, clock) = limits(Some(1.0), Some(1), &[]);
        for i in 0..SWEEP_MIN {
            assert!(r.check_n(&format!("t{i}"), 1).is_ok());
        }
        assert_eq!(r.tracked(), SWEEP_MIN);
        // still refilling: nothing to sweep
        assert!(r.check_n("x", 1).is_ok());
        assert_eq!(r.tracked(), SWEEP_MIN + 1);
        clock.advance(Duration::from_secs(1));
        for i in 0..SWEEP_MIN {
            assert!(r.check_n(&format!("u{i}"), 1).is_ok());
        }
        // the full ones went at the sweep that the growth triggered
        assert!(r.tracked() < 2 * SWEEP_MIN, "{}", r.tracked());
        // and a swept tenant starts over with a full bucket
        assert!(r.check_n("t0", 1).is_ok());
    }
}
