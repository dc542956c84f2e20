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
mod tests;
