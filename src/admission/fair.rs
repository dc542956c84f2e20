//! [`FairGate`]: one op's capacity in cost units, shared fairly among
//! tenants, with a short bounded wait queue.
//!
//! A tenant is *active* while it holds units or has requests waiting; only
//! active tenants are tracked, so memory is bounded by capacity plus queue
//! however many tenants there are. A tenant's *fair share* is
//! `max(C × w / Σw, share_min × C)`, where `C` is the capacity, `w` its
//! weight and `Σw` the sum of the weights of the active tenants, itself
//! included. Its *demand* is the units it holds plus the units it has
//! waiting.
//!
//! An arriving request of `c` units is
//! 1. granted at once when nobody is waiting and `c` units are free: idle
//!    capacity is lent out, even beyond the share (work-conserving);
//! 2. otherwise shed as [`ShedKind::TenantShare`] when its tenant's demand
//!    is already over its share and another tenant is active;
//! 3. otherwise shed as [`ShedKind::Overload`] when the queue is full, or
//!    when the wait it would face is already longer than half of `max_wait`
//!    (the margin keeps requests queued near the edge from timing out): the
//!    expected wait is (units queued ahead of it + its cost) × the mean time
//!    a unit is held ÷ capacity, where "ahead" is its tenant's own queued
//!    units times the number of tenants with waiters (the queue is served in
//!    fair order, not FIFO). Under sustained overload this sheds at arrival,
//!    in microseconds, instead of letting requests sit out `max_wait` and be
//!    shed anyway; the mean hold time is a moving average over released
//!    permits, so it follows the device's and the CPU's real speed;
//! 4. otherwise queued, for at most `max_wait`; a request still waiting then
//!    leaves the queue and is shed as [`ShedKind::Overload`].
//!
//! Rule 2 looks at the demand before the request, so a tenant within its
//! share may always queue one more request: a tenant with nothing in use can
//! queue a request that costs more than its whole share, and a busy tenant
//! at its share keeps a request waiting to take its next turn.
//!
//! When units come back (a [`Permit`] is dropped), a request queues or a
//! waiter leaves, the gate hands units out in fair order: among tenants with
//! waiters it picks the one holding the fewest units per weight (ties: the
//! earliest waiting request) and grants that tenant's oldest request if it
//! fits. If it does not fit, nothing else is granted until it does, so a big
//! request is not starved by a stream of small ones. In this choice a weight
//! counts as at least `share_min × Σw`, so the minimum share holds here as it
//! does at arrival.
//!
//! Grants travel to waiters over a `oneshot` channel after the lock is
//! released. A waiter that gave up (timed out, or its future was dropped
//! because the client went away) removes itself from the queue; a permit
//! that reaches a waiter that has just given up is dropped and returns its
//! units like any other.
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// Weight of the newest sample in the mean hold time.
const HOLD_EWMA_ALPHA: f64 = 0.05;

use super::ShedKind;

/// Weights outside this range are clamped to it (a weight of 0 would make a
/// tenant's units-per-weight infinite); NaN counts as 1.
const WEIGHT_RANGE: (f64, f64) = (1e-4, 1e4);

/// Sizing of one gate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateSettings {
    /// Units that may be in use at once (at least 1).
    pub capacity: u32,
    /// Requests that may wait beyond the capacity; 0 sheds at once.
    pub queue: usize,
    /// Longest a request waits in the queue.
    pub max_wait: Duration,
    /// The smallest fair share, as a fraction of the capacity.
    pub share_min: f64,
}

/// One op's capacity, shared fairly among tenants. See the module docs.
pub struct FairGate {
    settings: GateSettings,
    weights: Arc<HashMap<String, f64>>,
    state: Mutex<State>,
}

/// The outcome of [`FairGate::arrive`].
#[derive(Debug)]
pub enum Arrival {
    /// Units granted at once.
    Granted(Permit),
    /// Queued: [`Ticket::wait`] for the grant.
    Queued(Ticket),
    /// Refused.
    Shed(ShedKind),
}

/// Units held in a gate. Dropping it returns them and wakes waiters in fair
/// order.
pub struct Permit {
    gate: Arc<FairGate>,
    tenant: Arc<str>,
    /// 0 once disarmed (its units were returned another way).
    cost: u32,
    /// When the units were granted (for the mean hold time).
    since: Instant,
}

/// A place in a gate's queue. Dropping it before the grant leaves the queue.
pub struct Ticket {
    gate: Arc<FairGate>,
    tenant: Arc<str>,
    seq: u64,
    rx: oneshot::Receiver<Permit>,
    /// The permit was received: nothing to withdraw on drop.
    done: bool,
}

type Grants = Vec<(oneshot::Sender<Permit>, Permit)>;

#[derive(Default)]
struct State {
    /// Units in use, all tenants.
    used: u32,
    /// Requests queued, all tenants.
    waiting: usize,
    /// Arrival order of queued requests (tie-break between tenants).
    next_seq: u64,
    /// Σ weight over `tenants` (exactly the active tenants).
    weight_sum: f64,
    /// Moving average of how long a permit's units are held, in seconds
    /// (0 until the first release).
    hold_secs: f64,
    tenants: HashMap<Arc<str>, Tenant>,
}

struct Tenant {
    weight: f64,
    used: u32,
    /// Units of the requests in `waiters`.
    queued: u32,
    waiters: VecDeque<Waiter>,
}

struct Waiter {
    seq: u64,
    cost: u32,
    tx: oneshot::Sender<Permit>,
}

enum Decision {
    Grant,
    Queue,
    Shed(ShedKind),
}

fn clamp_or(x: f64, (lo, hi): (f64, f64), fallback: f64) -> f64 {
    if x.is_nan() {
        fallback
    } else {
        x.clamp(lo, hi)
    }
}

impl FairGate {
    /// A gate with these settings; `weights` by tenant (absent: 1.0).
    /// Capacity is raised to at least 1 and `share_min` kept within 0..=1.
    pub fn new(settings: GateSettings, weights: Arc<HashMap<String, f64>>) -> Arc<Self> {
        let settings = GateSettings {
            capacity: settings.capacity.max(1),
            share_min: clamp_or(settings.share_min, (0.0, 1.0), 0.0),
            ..settings
        };
        Arc::new(FairGate {
            settings,
            weights,
            state: Mutex::new(State::default()),
        })
    }

    /// The settings in force (after clamping).
    pub fn settings(&self) -> &GateSettings {
        &self.settings
    }

    /// Units in use.
    pub fn in_use(&self) -> u32 {
        self.lock().used
    }

    /// Requests waiting in the queue.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Tenants tracked (the active ones).
    pub fn active_tenants(&self) -> usize {
        self.lock().tenants.len()
    }

    /// A tenant's fair share in units as of now, counting it as active.
    pub fn share(&self, tenant: &str) -> f64 {
        let st = self.lock();
        let weight = st
            .tenants
            .get(tenant)
            .map_or_else(|| self.weight(tenant), |t| t.weight);
        st.share(&self.settings, weight, !st.tenants.contains_key(tenant))
    }

    /// What [`arrive`](Self::arrive) would decide for a request of 1 unit,
    /// without taking or queueing anything.
    pub fn precheck(&self, tenant: &str) -> Result<(), ShedKind> {
        match self
            .lock()
            .decide(&self.settings, tenant, self.weight(tenant), 1)
        {
            Decision::Shed(kind) => Err(kind),
            Decision::Grant | Decision::Queue => Ok(()),
        }
    }

    /// Ask for `cost` units (clamped to 1..=capacity) for `tenant`. Never
    /// blocks.
    pub fn arrive(self: &Arc<Self>, tenant: &str, cost: u32) -> Arrival {
        let cost = cost.clamp(1, self.settings.capacity);
        let weight = self.weight(tenant);
        let mut st = self.lock();
        match st.decide(&self.settings, tenant, weight, cost) {
            Decision::Shed(kind) => Arrival::Shed(kind),
            Decision::Grant => {
                let (key, t) = st.tenant(tenant, weight);
                t.used += cost;
                st.used += cost;
                Arrival::Granted(Permit {
                    gate: Arc::clone(self),
                    tenant: key,
                    cost,
                    since: Instant::now(),
                })
            }
            Decision::Queue => {
                let (tx, rx) = oneshot::channel();
                let seq = st.next_seq;
                st.next_seq += 1;
                let (key, t) = st.tenant(tenant, weight);
                t.waiters.push_back(Waiter { seq, cost, tx });
                t.queued += cost;
                st.waiting += 1;
                // units may be free behind a blocked head that this tenant
                // now outranks
                let grants = st.dispatch(self);
                drop(st);
                self.deliver(grants);
                Arrival::Queued(Ticket {
                    gate: Arc::clone(self),
                    tenant: key,
                    seq,
                    rx,
                    done: false,
                })
            }
        }
    }

    /// [`arrive`](Self::arrive), then wait for the grant if queued.
    pub async fn acquire(self: &Arc<Self>, tenant: &str, cost: u32) -> Result<Permit, ShedKind> {
        match self.arrive(tenant, cost) {
            Arrival::Granted(permit) => Ok(permit),
            Arrival::Queued(ticket) => ticket.wait().await,
            Arrival::Shed(kind) => Err(kind),
        }
    }

    fn weight(&self, tenant: &str) -> f64 {
        self.weights
            .get(tenant)
            .map_or(1.0, |&w| clamp_or(w, WEIGHT_RANGE, 1.0))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Return units held for `held` and hand them out again.
    fn release(self: &Arc<Self>, tenant: &str, cost: u32, held: Duration) {
        let grants = {
            let mut st = self.lock();
            let h = held.as_secs_f64();
            st.hold_secs = if st.hold_secs == 0.0 {
                h
            } else {
                (1.0 - HOLD_EWMA_ALPHA) * st.hold_secs + HOLD_EWMA_ALPHA * h
            };
            st.give_back(tenant, cost);
            st.dispatch(self)
        };
        self.deliver(grants);
    }

    /// Send grants, with the lock released. A grant whose waiter has gone
    /// comes back and is handed out again, here rather than through the
    /// permit's drop, so a run of departed waiters cannot recurse.
    fn deliver(self: &Arc<Self>, mut grants: Grants) {
        while !grants.is_empty() {
            let returned: Vec<_> = grants
                .drain(..)
                .filter_map(|(tx, permit)| tx.send(permit).err().map(Permit::disarm))
                .collect();
            if returned.is_empty() {
                return;
            }
            let mut st = self.lock();
            for (tenant, cost) in &returned {
                st.give_back(tenant, *cost);
            }
            grants = st.dispatch(self);
        }
    }
}

impl State {
    fn share(&self, s: &GateSettings, weight: f64, absent: bool) -> f64 {
        let sum = self.weight_sum + if absent { weight } else { 0.0 };
        let capacity = f64::from(s.capacity);
        (capacity * weight / sum).max(s.share_min * capacity)
    }

    fn decide(&self, s: &GateSettings, tenant: &str, weight: f64, cost: u32) -> Decision {
        if self.waiting == 0 && self.used + cost <= s.capacity {
            return Decision::Grant;
        }
        let me = self.tenants.get(tenant);
        let demand = me.map_or(0, |t| t.used + t.queued);
        let others_active = self.tenants.len() > usize::from(me.is_some());
        let weight = me.map_or(weight, |t| t.weight);
        if others_active && f64::from(demand) > self.share(s, weight, me.is_none()) {
            Decision::Shed(ShedKind::TenantShare)
        } else if self.waiting >= s.queue || self.expected_wait(s, me, cost) > s.max_wait / 2 {
            Decision::Shed(ShedKind::Overload)
        } else {
            Decision::Queue
        }
    }

    /// How long a request of `cost` units from `me` would wait if queued
    /// now (module docs, rule 3); zero until a hold time is known.
    fn expected_wait(&self, s: &GateSettings, me: Option<&Tenant>, cost: u32) -> Duration {
        if self.hold_secs == 0.0 {
            return Duration::ZERO;
        }
        let with_waiters = self
            .tenants
            .values()
            .filter(|t| !t.waiters.is_empty())
            .count();
        let ahead = f64::from(me.map_or(0, |t| t.queued)) * with_waiters.max(1) as f64;
        let secs = (ahead + f64::from(cost)) * self.hold_secs / f64::from(s.capacity);
        Duration::from_secs_f64(secs.min(3600.0))
    }

    /// The tenant's entry, created (active) if absent.
    fn tenant(&mut self, tenant: &str, weight: f64) -> (Arc<str>, &mut Tenant) {
        let key = self
            .tenants
            .get_key_value(tenant)
            .map_or_else(|| Arc::from(tenant), |(key, _)| Arc::clone(key));
        let entry = match self.tenants.entry(Arc::clone(&key)) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                self.weight_sum += weight;
                v.insert(Tenant {
                    weight,
                    used: 0,
                    queued: 0,
                    waiters: VecDeque::new(),
                })
            }
        };
        (key, entry)
    }

    /// Stop tracking a tenant that holds nothing and waits for nothing.
    fn forget_if_idle(&mut self, tenant: &str) {
        let idle = self
            .tenants
            .get(tenant)
            .is_some_and(|t| t.used == 0 && t.waiters.is_empty());
        if idle {
            if let Some(t) = self.tenants.remove(tenant) {
                self.weight_sum -= t.weight;
            }
            if self.tenants.is_empty() {
                // no float drift survives an idle moment
                self.weight_sum = 0.0;
            }
        }
    }

    fn give_back(&mut self, tenant: &str, cost: u32) {
        self.used = self.used.saturating_sub(cost);
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.used = t.used.saturating_sub(cost);
        }
        self.forget_if_idle(tenant);
    }

    /// Take a waiter out of the queue; false if it is not there (granted).
    fn withdraw(&mut self, tenant: &str, seq: u64) -> bool {
        let Some(t) = self.tenants.get_mut(tenant) else {
            return false;
        };
        let Some(i) = t.waiters.iter().position(|w| w.seq == seq) else {
            return false;
        };
        if let Some(w) = t.waiters.remove(i) {
            t.queued -= w.cost;
            self.waiting -= 1;
        }
        self.forget_if_idle(tenant);
        true
    }

    /// The tenant with waiters holding the fewest units per weight, a weight
    /// counting as at least `share_min × Σw` (so the floor on the share holds
    /// here too); ties go to the earliest waiting request.
    fn next_tenant(&self, s: &GateSettings) -> Option<Arc<str>> {
        let floor = s.share_min * self.weight_sum;
        self.tenants
            .iter()
            .filter_map(|(key, t)| {
                let head = t.waiters.front()?;
                let load = f64::from(t.used) / t.weight.max(floor);
                Some((key, load, head.seq))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.2.cmp(&b.2)))
            .map(|(key, ..)| Arc::clone(key))
    }

    /// Grant queued requests in fair order while the chosen one fits.
    fn dispatch(&mut self, gate: &Arc<FairGate>) -> Grants {
        let mut grants = Vec::new();
        while self.waiting > 0 {
            let Some(key) = self.next_tenant(&gate.settings) else {
                break;
            };
            let free = gate.settings.capacity.saturating_sub(self.used);
            let Some(t) = self.tenants.get_mut(&key) else {
                break;
            };
            if t.waiters.front().is_none_or(|w| w.cost > free) {
                break;
            }
            let Some(w) = t.waiters.pop_front() else {
                break;
            };
            t.queued -= w.cost;
            t.used += w.cost;
            self.used += w.cost;
            self.waiting -= 1;
            let permit = Permit {
                gate: Arc::clone(gate),
                tenant: key,
                cost: w.cost,
                since: Instant::now(),
            };
            grants.push((w.tx, permit));
        }
        grants
    }
}

impl Permit {
    /// Units held.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// The tenant the units are held for.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Defuse: the caller returns the units instead of `Drop`.
    fn disarm(mut self) -> (Arc<str>, u32) {
        let cost = std::mem::take(&mut self.cost);
        (Arc::clone(&self.tenant), cost)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.cost > 0 {
            self.gate
                .release(&self.tenant, self.cost, self.since.elapsed());
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("tenant", &self.tenant)
            .field("cost", &self.cost)
            .finish()
    }
}

impl Ticket {
    /// Wait up to the gate's `max_wait` for the grant; [`ShedKind::Overload`]
    /// when it does not come in time (the request leaves the queue).
    pub async fn wait(mut self) -> Result<Permit, ShedKind> {
        let max_wait = self.gate.settings.max_wait;
        match tokio::time::timeout(max_wait, &mut self.rx).await {
            Ok(Ok(permit)) => {
                self.done = true;
                Ok(permit)
            }
            // timed out (or, impossibly, the sender vanished): `Drop`
            // withdraws the waiter
            Ok(Err(_)) | Err(_) => Err(ShedKind::Overload),
        }
    }

    /// The permit, if it has been granted already. Never blocks.
    pub fn try_take(&mut self) -> Option<Permit> {
        let permit = self.rx.try_recv().ok()?;
        self.done = true;
        Some(permit)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let grants = {
            let mut st = self.gate.lock();
            if st.withdraw(&self.tenant, self.seq) {
                st.dispatch(&self.gate)
            } else {
                Vec::new()
            }
        };
        self.gate.deliver(grants);
        // A permit granted as we gave up sits in `rx`; it is dropped with
        // it, after this, and returns its units.
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("tenant", &self.tenant)
            .field("seq", &self.seq)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    fn gate(capacity: u32, queue: usize, weights: &[(&str, f64)]) -> Arc<FairGate> {
        let weights = weights.iter().map(|&(t, w)| (t.to_owned(), w)).collect();
        FairGate::new(
            GateSettings {
                capacity,
                queue,
                max_wait: WAIT,
                share_min: 0.05,
            },
            Arc::new(weights),
        )
    }

    fn granted(a: Arrival) -> Permit {
        match a {
            Arrival::Granted(p) => p,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn queued(a: Arrival) -> Ticket {
        match a {
            Arrival::Queued(t) => t,
            other => panic!("expected to queue, got {other:?}"),
        }
    }

    fn shed(a: Arrival) -> ShedKind {
        match a {
            Arrival::Shed(k) => k,
            other => panic!("expected a shed, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_would_outwait_max_wait_is_shed_at_arrival() {
        let g = gate(4, 100, &[]);
        // one permit held for 100 ms: a unit is held 100 ms on average
        let p = granted(g.arrive("a", 1));
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(p);
        let _held: Vec<_> = (0..4).map(|_| granted(g.arrive("a", 1))).collect();
        // next in line: (0 + 1) × 100 ms / 4 = 25 ms, half of max_wait
        let _first = queued(g.arrive("a", 1));
        // behind it: (1 + 1) × 100 ms / 4 = 50 ms: shed now, not in 50 ms
        let t0 = Instant::now();
        assert_eq!(shed(g.arrive("a", 1)), ShedKind::Overload);
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(g.waiting(), 1);
        // another tenant is served in fair order, so it has nobody ahead
        let _b = queued(g.arrive("b", 1));
    }

    #[test]
    fn a_lone_tenant_can_take_all_capacity() {
        let g = gate(8, 4, &[]);
        let held: Vec<_> = (0..8).map(|_| granted(g.arrive("a", 1))).collect();
        assert_eq!(g.in_use(), 8);
        // alone, it queues rather than being shed for its share
        let t = queued(g.arrive("a", 1));
        assert_eq!(g.waiting(), 1);
        drop(t);
        drop(held);
        assert_eq!((g.in_use(), g.waiting(), g.active_tenants()), (0, 0, 0));
    }

    #[test]
    fn a_newcomer_queues_and_is_served_before_the_hog() {
        let g = gate(8, 16, &[]);
        let mut a: Vec<_> = (0..8).map(|_| granted(g.arrive("a", 1))).collect();
        let mut a_waiting = queued(g.arrive("a", 1));
        let mut b = queued(g.arrive("b", 1));
        // a is far over its share (4) while b is active
        assert_eq!(shed(g.arrive("a", 1)), ShedKind::TenantShare);

        a.pop();
        let b1 = b.try_take().expect("b is served first");
        assert!(a_waiting.try_take().is_none());
        assert_eq!(b1.tenant(), "b");

        // b, below its share, keeps winning the released units
        let mut b = queued(g.arrive("b", 1));
        a.pop();
        let _b2 = b.try_take().expect("b again");
        assert!(a_waiting.try_take().is_none());
        // and a gets units once b has nothing waiting
        a.pop();
        assert!(a_waiting.try_take().is_some());
    }

    #[test]
    fn grants_follow_weights_under_saturation() {
        let g = gate(8, 64, &[("a", 3.0), ("b", 1.0)]);
        let mut held: VecDeque<Permit> = VecDeque::new();
        let mut tickets: Vec<Ticket> = Vec::new();
        let mut grants: HashMap<String, u32> = HashMap::new();
        fn count(p: &Permit, grants: &mut HashMap<String, u32>) {
            *grants.entry(p.tenant().to_owned()).or_default() += 1;
        }
        for step in 0..4000 {
            // both tenants keep asking (alternating who asks first) until shed
            let order = if step % 2 == 0 {
                ["a", "b"]
            } else {
                ["b", "a"]
            };
            for t in order {
                for _ in 0..4 {
                    match g.arrive(t, 1) {
                        Arrival::Granted(p) => {
                            count(&p, &mut grants);
                            held.push_back(p);
                        }
                        Arrival::Queued(ticket) => tickets.push(ticket),
                        Arrival::Shed(_) => break,
                    }
                }
            }
            // the oldest request finishes
            held.pop_front();
            tickets.retain_mut(|ticket| match ticket.try_take() {
                Some(p) => {
                    count(&p, &mut grants);
                    held.push_back(p);
                    false
                }
                None => true,
            });
        }
        let (a, b) = (f64::from(grants["a"]), f64::from(grants["b"]));
        let ratio = a / b;
        assert!((2.7..=3.3).contains(&ratio), "a {a} b {b} ratio {ratio}");
    }

    #[test]
    fn a_light_tenant_keeps_the_minimum_share() {
        let g = gate(64, 64, &[("light", 0.01)]);
        // 30 active tenants, "light" among them; t1 holds 2, t0 fills the gate
        let mut held: Vec<_> = (1..29)
            .map(|i| granted(g.arrive(&format!("t{i}"), 1)))
            .collect();
        held.push(granted(g.arrive("t1", 1)));
        held.push(granted(g.arrive("light", 1)));
        held.extend((0..34).map(|_| granted(g.arrive("t0", 1))));
        assert_eq!((g.active_tenants(), g.in_use()), (30, 64));

        // 64 × 0.01 / 29.01 would be 0.02 units
        let floor = 0.05 * 64.0;
        assert_eq!(g.share("light"), floor);
        // with 30 tenants the floor is above everyone's C × w / Σw
        assert_eq!(g.share("t1"), floor);

        // admission: light may queue while its demand is within 3.2 units
        let mut t1 = queued(g.arrive("t1", 1));
        let mut light: Vec<_> = (0..3).map(|_| queued(g.arrive("light", 1))).collect();
        assert_eq!(shed(g.arrive("light", 1)), ShedKind::TenantShare);
        // dispatch: light holding 1 goes before t1 holding 2, although by
        // weight alone it holds 50× more per weight
        drop(held.pop());
        let _l0 = light[0].try_take().expect("light first");
        assert!(t1.try_take().is_none());
        // now both hold 2: the earlier request (t1's) goes first
        drop(held.pop());
        let _t1 = t1.try_take().expect("t1 next");
        assert!(light[1].try_take().is_none());
    }

    #[test]
    fn a_full_queue_sheds_overload() {
        let g = gate(2, 2, &[]);
        let _held = [granted(g.arrive("a", 1)), granted(g.arrive("a", 1))];
        let _q = [queued(g.arrive("a", 1)), queued(g.arrive("a", 1))];
        assert_eq!(shed(g.arrive("a", 1)), ShedKind::Overload);
        assert_eq!(g.precheck("a"), Err(ShedKind::Overload));
        assert_eq!(g.waiting(), 2);
    }

    #[test]
    fn no_queue_sheds_at_once() {
        let g = gate(1, 0, &[]);
        let _held = granted(g.arrive("a", 1));
        assert_eq!(shed(g.arrive("b", 1)), ShedKind::Overload);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_times_out_as_overload_and_leaves_the_queue() {
        let g = gate(1, 4, &[]);
        let held = granted(g.arrive("a", 1));
        let started = tokio::time::Instant::now();
        assert_eq!(g.acquire("b", 1).await.unwrap_err(), ShedKind::Overload);
        let waited = started.elapsed();
        assert!(waited >= WAIT && waited < WAIT * 2, "{waited:?}");
        assert_eq!(g.waiting(), 0);
        drop(held);
        assert_eq!((g.in_use(), g.active_tenants()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_granted_within_max_wait() {
        let g = gate(1, 4, &[]);
        let held = granted(g.arrive("a", 1));
        let waiter = tokio::spawn({
            let g = Arc::clone(&g);
            async move { g.acquire("b", 1).await.map(|p| p.cost()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(g.waiting(), 1);
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(1));
        assert_eq!((g.in_use(), g.waiting(), g.active_tenants()), (0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaks_nothing() {
        let g = gate(1, 4, &[]);
        let held = granted(g.arrive("a", 1));
        // the request future is dropped while queued (client went away)
        let r = tokio::time::timeout(Duration::from_millis(5), g.acquire("b", 1)).await;
        assert!(r.is_err());
        assert_eq!(g.waiting(), 0);
        drop(held);
        assert_eq!((g.in_use(), g.waiting(), g.active_tenants()), (0, 0, 0));
    }

    #[test]
    fn a_grant_to_a_departed_waiter_comes_back() {
        let g = gate(1, 4, &[]);
        let held = granted(g.arrive("a", 1));
        let t1 = queued(g.arrive("b", 1));
        let mut t2 = queued(g.arrive("c", 1));
        // the grant reaches t1 (the permit sits in its channel) ...
        drop(held);
        assert_eq!(g.in_use(), 1);
        // ... but t1 gives up without taking it: the unit goes to t2
        drop(t1);
        let p = t2.try_take().expect("passed on");
        assert_eq!(p.tenant(), "c");
        drop(p);
        assert_eq!((g.in_use(), g.waiting(), g.active_tenants()), (0, 0, 0));
    }

    #[test]
    fn a_big_request_is_not_starved_by_small_ones() {
        let g = gate(8, 16, &[]);
        let mut a: VecDeque<_> = (0..8).map(|_| granted(g.arrive("a", 1))).collect();
        let mut big = queued(g.arrive("b", 4));
        for released in 1..=4 {
            a.pop_front();
            if released < 4 {
                assert!(big.try_take().is_none(), "{released} free");
                // a stream of small requests cannot slip in ahead
                match g.arrive("a", 1) {
                    Arrival::Shed(ShedKind::TenantShare) => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        let p = big.try_take().expect("4 units free");
        assert_eq!(p.cost(), 4);
        assert_eq!(g.in_use(), 8);
    }

    #[test]
    fn a_big_request_waits_behind_other_tenants_small_queued_ones_fairly() {
        // equal weights: b's cost-4 request and a's cost-1 requests both
        // queue; b (holding less) is chosen and nothing passes it
        let g = gate(8, 16, &[]);
        let mut a: VecDeque<_> = (0..8).map(|_| granted(g.arrive("a", 1))).collect();
        let mut a_small = queued(g.arrive("a", 1));
        let mut big = queued(g.arrive("b", 4));
        for _ in 0..3 {
            a.pop_front();
            assert!(a_small.try_take().is_none());
            assert!(big.try_take().is_none());
        }
        a.pop_front();
        let _big = big.try_take().expect("4 units free");
        assert!(a_small.try_take().is_none());
    }

    #[test]
    fn cost_is_clamped_to_capacity() {
        let g = gate(4, 4, &[]);
        let p = granted(g.arrive("a", 100));
        assert_eq!((p.cost(), g.in_use()), (4, 4));
        drop(p);
        let p = granted(g.arrive("a", 0));
        assert_eq!(p.cost(), 1);
    }

    #[test]
    fn precheck_takes_nothing() {
        let g = gate(1, 1, &[]);
        for _ in 0..10 {
            assert_eq!(g.precheck("a"), Ok(()));
        }
        assert_eq!((g.in_use(), g.waiting(), g.active_tenants()), (0, 0, 0));
        let _held = granted(g.arrive("a", 1));
        let _q = queued(g.arrive("b", 1));
        assert_eq!(g.precheck("a"), Err(ShedKind::TenantShare));
        assert_eq!(g.precheck("c"), Err(ShedKind::Overload));
        assert_eq!(g.waiting(), 1);
    }

    /// A small deterministic pseudo-random sequence.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[tokio::test(start_paused = true)]
    async fn churn_with_timeouts_and_cancellations_leaks_nothing() {
        let g = gate(8, 6, &[("heavy", 3.0)]);
        let tasks: Vec<_> = (0..24u64)
            .map(|i| {
                let g = Arc::clone(&g);
                tokio::spawn(async move {
                    let tenant = ["heavy", "a", "b", "c"][(i % 4) as usize];
                    let mut seed = i;
                    for _ in 0..200 {
                        let cost = 1 + (lcg(&mut seed) % 3) as u32;
                        // some callers give up before max_wait
                        let patience = Duration::from_millis(lcg(&mut seed) % 80);
                        let r = tokio::time::timeout(patience, g.acquire(tenant, cost)).await;
                        if let Ok(Ok(_permit)) = r {
                            let hold = Duration::from_millis(lcg(&mut seed) % 5);
                            tokio::time::sleep(hold).await;
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!((g.in_use(), g.waiting(), g.active_tenants()), (0, 0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_churn_and_aborts_leak_nothing() {
        let g = FairGate::new(
            GateSettings {
                capacity: 4,
                queue: 64,
                max_wait: Duration::from_secs(10),
                share_min: 0.05,
            },
            Arc::new(HashMap::new()),
        );
        let spawn = |i: u64| {
            let g = Arc::clone(&g);
            tokio::spawn(async move {
                let tenant = ["a", "b", "c"][(i % 3) as usize];
                let mut seed = i;
                for _ in 0..500 {
                    let cost = 1 + (lcg(&mut seed) % 2) as u32;
                    if let Ok(_permit) = g.acquire(tenant, cost).await {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        let workers: Vec<_> = (0..8).map(spawn).collect();
        // and some that are cancelled wherever they are
        for i in 100..140 {
            let t = spawn(i);
            tokio::task::yield_now().await;
            t.abort();
        }
        for w in workers {
            w.await.unwrap();
        }
        // aborted tasks are dropped asynchronously: let them finish dropping
        for _ in 0..1000 {
            if g.in_use() == 0 && g.waiting() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!((g.in_use(), g.waiting(), g.active_tenants()), (0, 0, 0));
    }

    #[test]
    fn idle_tenants_are_forgotten() {
        let g = gate(4, 4, &[]);
        for i in 0..1000 {
            drop(granted(g.arrive(&format!("t{i}"), 1)));
        }
        assert_eq!(g.active_tenants(), 0);
    }
}
