//! Admission: whether a request may start now, may wait a little, or is
//! refused at once with retry advice (DESIGN.md §6).
//!
//! Every request is weighed in *cost units* ([`mod@cost`]: one unit ≈ 25 µs of
//! CPU, so an ML-DSA-87 signature weighs 5 and an Ed25519 one 1) and passes
//! two checks, in this order:
//!
//! 1. **The tenant's token bucket** ([`rate`]): at most `tenant_rps` units per
//!    second with bursts of `tenant_burst`, or the tenant's own cap from
//!    `tenants`. Too few tokens: [`ShedKind::RateLimit`], with the wait until
//!    there would be enough. A request refused here takes nothing from the
//!    gate.
//! 2. **The op's fair gate** ([`fair`]): each op (sign, verify, wrap, unwrap,
//!    admin) has a capacity of `inflight[op]` units. While there is room and
//!    nobody waits, requests go through, whoever sends them: idle capacity
//!    is lent out. Under contention each active tenant is entitled to its
//!    fair share, `max(C × weight / Σ active weights, share_min × C)`; a
//!    tenant whose demand (units held plus waiting) is already over it is
//!    refused with [`ShedKind::TenantShare`], and anyone else waits in a
//!    queue of at most `queue` requests for at most `max_wait`. A full queue,
//!    a wait expected to pass half of `max_wait` (from the moving average of
//!    how long units are held), or a wait that runs out, is
//!    [`ShedKind::Overload`]. Freed units go to
//!    the waiting tenant holding the least per weight, oldest request first
//!    within a tenant, and a big request at the head is not overtaken by
//!    small ones.
//!
//! Tokens taken in step 1 are not given back when step 2 refuses: the
//! bucket counts what a tenant asks for, not what it gets.
//!
//! A refusal costs microseconds and is counted in
//! `kms_reject_total{reason}` with [`ShedKind::reason`]. The fronts map
//! [`ShedKind::TenantShare`] and [`ShedKind::RateLimit`] to HTTP 429 /
//! gRPC `RESOURCE_EXHAUSTED`, and [`ShedKind::Overload`] to 503 /
//! `UNAVAILABLE`, with [`Shed::retry_after`] as `Retry-After` /
//! `grpc-retry-pushback-ms`.
//!
//! [`Admission::precheck`] runs both checks for one unit before the request
//! body is decoded and takes nothing; [`Admission::admit`] takes the units
//! and returns a [`Permit`] that gives them back when dropped.
//!
//! | setting | environment | default |
//! |---|---|---|
//! | [`AdmissionConfig::inflight`] | `KMS_MAX_INFLIGHT_SIGN`, `_VERIFY`, `_WRAP`, `_UNWRAP`, `_ADMIN` | 64, 64, 64, 64, 16 |
//! | [`AdmissionConfig::queue`] | `KMS_ADMISSION_QUEUE` | 256 |
//! | [`AdmissionConfig::max_wait`] | `KMS_ADMISSION_MAX_WAIT_MS` | 50 ms |
//! | [`AdmissionConfig::share_min`] | `KMS_TENANT_SHARE_MIN` | 0.05 |
//! | [`AdmissionConfig::tenant_rps`] | `KMS_TENANT_RPS` | no cap |
//! | [`AdmissionConfig::tenant_burst`] | `KMS_TENANT_BURST` | one second's worth |
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub mod cost;
pub mod fair;
pub mod rate;

pub use cost::cost;
pub use fair::Permit;

use fair::{FairGate, GateSettings};
use rate::RateLimits;

pub use crate::error::{Shed, ShedKind};
pub use crate::ops::Gate;

/// One tenant's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantLimits {
    /// Relative size of the tenant's fair share (default 1.0); kept within
    /// 0.0001..=10000, NaN counting as 1.
    pub weight: f64,
    /// The tenant's own cap in units per second, replacing the default;
    /// `None` means no cap for this tenant, even when there is a default.
    pub rps: Option<f64>,
    /// The tenant's bucket size; default one second of its `rps`.
    pub burst: Option<u32>,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            weight: 1.0,
            rps: None,
            burst: None,
        }
    }
}

/// Admission settings; see the module docs for the environment variables.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// Capacity in cost units per op, indexed like [`Gate::ALL`]
    /// (`KMS_MAX_INFLIGHT_SIGN`, `_VERIFY`, `_WRAP`, `_UNWRAP`, `_ADMIN`);
    /// 0 counts as 1.
    pub inflight: [u32; 5],
    /// Waiting requests per op beyond capacity (`KMS_ADMISSION_QUEUE`);
    /// 0 sheds at once.
    pub queue: usize,
    /// Longest a queued request waits for a permit
    /// (`KMS_ADMISSION_MAX_WAIT_MS`).
    pub max_wait: Duration,
    /// The smallest fair share as a fraction of capacity
    /// (`KMS_TENANT_SHARE_MIN`, default 0.05).
    pub share_min: f64,
    /// Default per-tenant cap in cost units per second (`KMS_TENANT_RPS`);
    /// `None`: no cap.
    pub tenant_rps: Option<f64>,
    /// Bucket size for the default cap (`KMS_TENANT_BURST`); default
    /// `max(1, tenant_rps)`, one second's worth.
    pub tenant_burst: Option<u32>,
    /// Per-tenant weights and caps.
    pub tenants: BTreeMap<String, TenantLimits>,
    /// CPU cores the gates share out (default: the cores this process may
    /// run on). One request holds at most `capacity / (2 × cores)` units of
    /// a gate, so the dearest requests (ML-DSA over μ, costing more than
    /// that) still run two per core: one computing, one ready to start the
    /// moment the first ends (with one per core, the service reached 0.66
    /// of the bare server on ML-DSA-65 μ signing, with two 0.9; docs/admission.md).
    pub cores: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            inflight: [64, 64, 64, 64, 16],
            queue: 256,
            max_wait: Duration::from_millis(50),
            share_min: 0.05,
            tenant_rps: None,
            tenant_burst: None,
            tenants: BTreeMap::new(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        }
    }
}

/// Per-op fair gates and per-tenant token buckets. `Send + Sync`: share one
/// behind an `Arc`.
pub struct Admission {
    cfg: AdmissionConfig,
    gates: [Arc<FairGate>; 5],
    rates: RateLimits,
}

impl Admission {
    /// Gates and buckets for `cfg`.
    pub fn new(cfg: AdmissionConfig) -> Self {
        let weights: Arc<HashMap<String, f64>> = Arc::new(
            cfg.tenants
                .iter()
                .map(|(tenant, limits)| (tenant.clone(), limits.weight))
                .collect(),
        );
        let gates = Gate::ALL.map(|op| {
            let settings = GateSettings {
                capacity: cfg.inflight[op.index()],
                queue: cfg.queue,
                max_wait: cfg.max_wait,
                share_min: cfg.share_min,
            };
            FairGate::new(settings, Arc::clone(&weights))
        });
        Admission {
            rates: RateLimits::new(&cfg),
            gates,
            cfg,
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> &AdmissionConfig {
        &self.cfg
    }

    /// Cheap early check before the request body is decoded: `Err` when the
    /// tenant's bucket has not even 1 unit ([`ShedKind::RateLimit`]), when
    /// the tenant is over its share while others are active and the gate is
    /// full ([`ShedKind::TenantShare`]), or when the op's gate is saturated
    /// and its queue full ([`ShedKind::Overload`]). Takes nothing (no
    /// permit, no tokens) and never blocks.
    pub fn precheck(&self, op: Gate, tenant: &str) -> Result<(), Shed> {
        if let Err(wait) = self.rates.peek(tenant) {
            return Err(self.shed(ShedKind::RateLimit, op, wait));
        }
        self.gate(op)
            .precheck(tenant)
            .map_err(|kind| self.shed(kind, op, self.cfg.max_wait))
    }

    /// Take `cost` units: first from the tenant's token bucket (clamped to
    /// 1..=the op's capacity; [`ShedKind::RateLimit`] with the wait until it
    /// has them), then from the op's fair gate (clamped to 1..=half a core's
    /// share of the capacity, [`AdmissionConfig::cores`]), waiting in its
    /// queue up to `max_wait` if need be. Every refusal is counted in
    /// `kms_reject_total{reason}`.
    pub async fn admit(&self, op: Gate, tenant: &str, cost: u32) -> Result<Permit, Shed> {
        let gate = self.gate(op);
        let capacity = gate.settings().capacity;
        if let Err(wait) = self.rates.check_n(tenant, cost.clamp(1, capacity)) {
            return Err(self.shed(ShedKind::RateLimit, op, wait));
        }
        let most = (capacity / (2 * self.cfg.cores.max(1))).max(1);
        let cost = cost.clamp(1, most);
        gate.acquire(tenant, cost)
            .await
            .map_err(|kind| self.shed(kind, op, self.cfg.max_wait))
    }

    /// Units in use for an op.
    pub fn in_use(&self, op: Gate) -> u32 {
        self.gate(op).in_use()
    }

    /// Requests waiting for an op.
    pub fn waiting(&self, op: Gate) -> usize {
        self.gate(op).waiting()
    }

    fn gate(&self, op: Gate) -> &Arc<FairGate> {
        &self.gates[op.index()]
    }

    fn shed(&self, kind: ShedKind, op: Gate, retry_after: Duration) -> Shed {
        crate::telemetry::reject(kind.reason());
        Shed {
            kind,
            op,
            retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    fn admission(f: impl FnOnce(&mut AdmissionConfig)) -> Admission {
        let mut cfg = AdmissionConfig::default();
        f(&mut cfg);
        Admission::new(cfg)
    }

    /// Records the `reason` of every `kms_reject_total` increment.
    #[derive(Default)]
    struct Rejects(Mutex<Vec<String>>);

    impl Recorder for Rejects {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            // `counter!(..).increment(1)` registers on every call
            if key.name() == "kms_reject_total" {
                for label in key.labels().filter(|l| l.key() == "reason") {
                    self.0.lock().unwrap().push(label.value().to_owned());
                }
            }
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn ops_and_reasons_have_their_names() {
        let names: Vec<_> = Gate::ALL.iter().map(|op| op.as_str()).collect();
        assert_eq!(names, ["sign", "verify", "wrap", "unwrap", "admin"]);
        for (i, op) in Gate::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i);
        }
        let reasons: Vec<_> = [
            ShedKind::TenantShare,
            ShedKind::RateLimit,
            ShedKind::Overload,
        ]
        .map(ShedKind::reason)
        .to_vec();
        assert_eq!(reasons, ["tenant_share", "rate_limit", "overload"]);
        for r in reasons {
            assert!(crate::telemetry::REJECT_REASONS.contains(&r), "{r}");
        }
    }

    #[test]
    fn admission_is_send_sync_and_permits_are_send_static() {
        fn send_sync<T: Send + Sync>() {}
        fn send_static<T: Send + 'static>() {}
        send_sync::<Admission>();
        send_static::<Permit>();
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_comes_before_the_gate() {
        let a = admission(|c| {
            c.inflight = [1; 5];
            c.tenant_rps = Some(0.001);
            c.tenant_burst = Some(1);
            c.tenants.insert("hog".into(), TenantLimits::default());
        });
        // the uncapped hog fills the sign gate
        let _hog = a.admit(Gate::Sign, "hog", 1).await.unwrap();
        // a capped tenant's first request queues and times out ...
        let shed = a.admit(Gate::Sign, "t", 1).await.unwrap_err();
        assert_eq!(shed.kind, ShedKind::Overload);
        // ... and its second, with the bucket empty, never reaches the gate
        let shed = a.admit(Gate::Sign, "t", 1).await.unwrap_err();
        assert_eq!(shed.kind, ShedKind::RateLimit);
        assert_eq!(shed.op, Gate::Sign);
        assert!(shed.retry_after > Duration::from_secs(900), "{shed:?}");
        assert_eq!((a.in_use(Gate::Sign), a.waiting(Gate::Sign)), (1, 0));
        // other ops have their own gates
        assert_eq!(a.in_use(Gate::Verify), 0);
        assert!(a.admit(Gate::Verify, "hog", 1).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_request_takes_no_gate_units() {
        let a = admission(|c| {
            c.tenant_rps = Some(0.001);
            c.tenant_burst = Some(2);
        });
        let p = a.admit(Gate::Sign, "t", 2).await.unwrap();
        assert_eq!(a.in_use(Gate::Sign), 2);
        assert_eq!(
            a.admit(Gate::Sign, "t", 1).await.unwrap_err().kind,
            ShedKind::RateLimit
        );
        assert_eq!(a.in_use(Gate::Sign), 2);
        drop(p);
        assert_eq!(a.in_use(Gate::Sign), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn precheck_takes_nothing() {
        let a = admission(|c| {
            c.inflight = [1; 5];
            c.queue = 1;
            c.tenant_rps = Some(0.001);
            c.tenant_burst = Some(1);
        });
        for _ in 0..100 {
            assert_eq!(a.precheck(Gate::Sign, "t"), Ok(()));
        }
        assert_eq!((a.in_use(Gate::Sign), a.waiting(Gate::Sign)), (0, 0));
        // the one token is still there
        let p = a.admit(Gate::Sign, "t", 1).await.unwrap();
        let shed = a.precheck(Gate::Sign, "t").unwrap_err();
        assert_eq!(shed.kind, ShedKind::RateLimit);
        assert_eq!(a.in_use(Gate::Sign), 1);
        drop(p);
    }

    #[tokio::test(start_paused = true)]
    async fn precheck_sees_share_and_overload() {
        let a = admission(|c| {
            c.inflight = [2; 5];
            c.queue = 1;
        });
        let _held = [
            a.admit(Gate::Wrap, "a", 1).await.unwrap(),
            a.admit(Gate::Wrap, "b", 1).await.unwrap(),
        ];
        assert_eq!(a.precheck(Gate::Wrap, "c"), Ok(()));
        let waiter = a.admit(Gate::Wrap, "c", 1);
        tokio::pin!(waiter);
        // poll once so it queues
        assert!(poll_once(waiter.as_mut()).await.is_none());
        assert_eq!(a.waiting(Gate::Wrap), 1);
        let shed = a.precheck(Gate::Wrap, "a").unwrap_err();
        assert_eq!(
            (shed.kind, shed.op, shed.retry_after),
            (ShedKind::TenantShare, Gate::Wrap, Duration::from_millis(50))
        );
        assert_eq!(
            a.precheck(Gate::Wrap, "d").unwrap_err().kind,
            ShedKind::Overload
        );
        assert_eq!(a.precheck(Gate::Sign, "a"), Ok(()));
    }

    /// Poll a future once; `None` if it is pending.
    async fn poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn cost_is_clamped_to_the_capacity() {
        let a = admission(|c| {
            c.inflight = [4, 64, 64, 64, 16];
            c.cores = 1;
        });
        let p = a.admit(Gate::Sign, "t", 1000).await.unwrap();
        assert_eq!((p.cost(), a.in_use(Gate::Sign)), (2, 2));
        drop(p);
        let p = a.admit(Gate::Sign, "t", 0).await.unwrap();
        assert_eq!(p.cost(), 1);
    }

    /// On two cores, four of the dearest requests hold the gate at once:
    /// each holds a quarter of its capacity, not all of it.
    #[tokio::test(start_paused = true)]
    async fn a_request_holds_at_most_half_a_cores_share() {
        let a = admission(|c| {
            c.inflight = [64, 64, 64, 64, 16];
            c.cores = 2;
        });
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(a.admit(Gate::Sign, "t", 55).await.unwrap());
        }
        assert!(held.iter().all(|p| p.cost() == 16));
        assert_eq!(
            (
                held.iter().map(|p| p.cost()).sum::<u32>(),
                a.in_use(Gate::Sign)
            ),
            (64, 64)
        );
        drop(held);
        // cheap requests are not affected
        assert_eq!(a.admit(Gate::Sign, "t", 5).await.unwrap().cost(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn every_refusal_is_counted_with_its_reason() {
        let rejects = Rejects::default();
        let _guard = metrics::set_default_local_recorder(&rejects);
        let a = admission(|c| {
            c.inflight = [1; 5];
            c.queue = 1;
            c.tenant_rps = Some(0.001);
            c.tenant_burst = Some(1);
            c.tenants.insert("a".into(), TenantLimits::default());
            c.tenants.insert("b".into(), TenantLimits::default());
        });
        let _held = a.admit(Gate::Sign, "a", 1).await.unwrap();
        // b waits out max_wait: overload
        assert_eq!(
            a.admit(Gate::Sign, "b", 1).await.unwrap_err().kind,
            ShedKind::Overload
        );
        // t's token goes on a request the gate then refuses ...
        assert_eq!(
            a.admit(Gate::Sign, "t", 1).await.unwrap_err().kind,
            ShedKind::Overload
        );
        // ... so its next is rate-limited, at precheck as at admit
        assert_eq!(
            a.precheck(Gate::Sign, "t").unwrap_err().kind,
            ShedKind::RateLimit
        );
        assert_eq!(
            a.admit(Gate::Sign, "t", 1).await.unwrap_err().kind,
            ShedKind::RateLimit
        );
        // a, holding the gate, is over its share while b waits
        let waiter = a.admit(Gate::Sign, "b", 1);
        tokio::pin!(waiter);
        assert!(poll_once(waiter.as_mut()).await.is_none());
        assert_eq!(
            a.admit(Gate::Sign, "a", 1).await.unwrap_err().kind,
            ShedKind::TenantShare
        );
        let seen = rejects.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                "overload",
                "overload",
                "rate_limit",
                "rate_limit",
                "tenant_share"
            ]
        );
    }
}
