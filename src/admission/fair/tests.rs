//! Unit tests of the fair-share gate: weights, shares, queueing and
//! cancellation.
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
