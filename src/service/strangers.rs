//! Refused authentications, per source address. A flood of bad tokens must
//! cost bounded disk and CPU:
//!
//! - **A pre-authentication limit.** Each source address has a token
//!   bucket of failed authentications (`KMS_AUTH_FAILURES_PER_SEC`,
//!   default [`DEFAULT_FAILURES_PER_SEC`]; burst `KMS_AUTH_FAILURE_BURST`,
//!   default [`DEFAULT_FAILURE_BURST`]). An address whose bucket is empty is
//!   refused with 429 `auth_failures` before its token is parsed or hashed
//!   and before any record is written; requests that authenticate do not
//!   spend the bucket.
//! - **Aggregated records.** The first refusal from a quiet address is
//!   recorded at once (as before: op `authenticate`, result
//!   `unauthenticated`, the presented token's id as principal). Every
//!   further refusal (and every shed) from it within [`INTERVAL`] is
//!   counted, and the counts are written as one record per address per
//!   interval (reason `aggregate count=N shed=M source=ADDR …`).
//!
//! An IPv6 source is its /64 (one host's usual allocation), so walking a
//! prefix is one source. At most [`MAX_SOURCES`] sources are tracked;
//! beyond that, new ones share one bucket and one count (source `other`).
//!
//! Many sources cannot multiply the records either: at most
//! [`MAX_FIRST_RECORDS`] first refusals are recorded at once per interval
//! (the rest are counted in aggregates), and at most [`MAX_AGGREGATES`]
//! per-source aggregates are written per interval; the counts of the rest
//! are merged into one record with source `other` (`sources=K` says how
//! many were merged). So refused authentications cost at most
//! `MAX_FIRST_RECORDS + MAX_AGGREGATES + 1` records per interval, however
//! many addresses they come from.
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const DEFAULT_FAILURES_PER_SEC: f64 = 10.0;
pub const DEFAULT_FAILURE_BURST: f64 = 50.0;
/// How long refusals from one address are gathered into one record.
pub const INTERVAL: Duration = Duration::from_secs(10);
pub const MAX_SOURCES: usize = 65_536;
/// First refusals recorded at once per interval, across all sources.
pub const MAX_FIRST_RECORDS: u32 = 64;
/// Per-source aggregate records per interval; the rest are merged.
pub const MAX_AGGREGATES: u32 = 64;
/// Distinct principals (and reasons) an aggregate names; the rest are
/// counted under `…`.
const NAMED: usize = 8;

/// Where a request came from: its IPv4 address or IPv6 /64, or `other`
/// (no address known, more sources than are tracked, or merged).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    V4(std::net::Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Net([u16; 4]),
    Other,
}

impl Source {
    /// The source of a peer address: IPv4 (an IPv4-mapped IPv6 address
    /// counts as IPv4) as it is, IPv6 by its /64.
    pub fn of(addr: IpAddr) -> Source {
        match addr {
            IpAddr::V4(a) => Source::V4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => {
                    let s = a.segments();
                    Source::V6Net([s[0], s[1], s[2], s[3]])
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(a) => write!(f, "{a}"),
            Source::V6Net([a, b, c, d]) => {
                let net = std::net::Ipv6Addr::new(*a, *b, *c, *d, 0, 0, 0, 0);
                write!(f, "{net}/64")
            }
            Source::Other => f.write_str("other"),
        }
    }
}

#[derive(Debug)]
struct Entry {
    tokens: f64,
    refilled: Instant,
    /// Set while refusals are being gathered.
    window: Option<Instant>,
    refused: u64,
    shed: u64,
    /// Sources whose counts were merged into this one (`other` only).
    merged: u64,
    principals: BTreeMap<String, u64>,
    reasons: BTreeMap<&'static str, u64>,
}

impl Entry {
    fn new(tokens: f64, now: Instant) -> Self {
        Entry {
            tokens,
            refilled: now,
            window: None,
            refused: 0,
            shed: 0,
            merged: 0,
            principals: BTreeMap::new(),
            reasons: BTreeMap::new(),
        }
    }
}

/// One address's refusals over an interval: what its record says.
#[derive(Debug, PartialEq, Eq)]
pub struct Aggregate {
    pub source: Source,
    pub refused: u64,
    pub shed: u64,
    /// Sources merged into this aggregate (0 for a source's own).
    pub merged: u64,
    pub principals: BTreeMap<String, u64>,
    pub reasons: BTreeMap<&'static str, u64>,
}

impl Aggregate {
    /// The record's reason.
    pub fn reason(&self, interval: Duration) -> String {
        let list = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let reasons: BTreeMap<String, u64> = self
            .reasons
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let merged = match self.merged {
            0 => String::new(),
            k => format!(" sources={k}"),
        };
        format!(
            "aggregate count={} shed={} source={}{merged} interval_s={} reasons={} principals={}",
            self.refused,
            self.shed,
            self.source,
            interval.as_secs(),
            list(&reasons),
            list(&self.principals)
        )
    }
}

struct Inner {
    map: HashMap<Source, Entry>,
    /// The current interval's start, and the first refusals recorded at
    /// once and aggregates written in it.
    since: Instant,
    first_records: u32,
    aggregates: u32,
}

pub struct Strangers {
    inner: Mutex<Inner>,
    /// Whether any address is tracked: while none has been refused, the
    /// check before authentication takes no lock.
    any: AtomicBool,
    rate: f64,
    burst: f64,
    interval: Duration,
}

fn tally<K: Ord + Clone>(m: &mut BTreeMap<K, u64>, k: K, n: u64, other: K) {
    if let Some(v) = m.get_mut(&k) {
        *v += n;
    } else if m.len() < NAMED {
        m.insert(k, n);
    } else {
        *m.entry(other).or_default() += n;
    }
}

impl Strangers {
    pub fn new(rate: f64, burst: f64, interval: Duration) -> Self {
        Strangers {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                since: Instant::now(),
                first_records: 0,
                aggregates: 0,
            }),
            any: AtomicBool::new(false),
            rate,
            burst: burst.max(1.0),
            interval,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.saturating_duration_since(g.since) >= self.interval {
            g.since = now;
            g.first_records = 0;
            g.aggregates = 0;
        }
        g
    }

    fn entry<'m>(
        &self,
        map: &'m mut HashMap<Source, Entry>,
        src: Source,
        now: Instant,
    ) -> &'m mut Entry {
        let src = if map.len() >= MAX_SOURCES && !map.contains_key(&src) {
            Source::Other
        } else {
            src
        };
        let e = map
            .entry(src)
            .or_insert_with(|| Entry::new(self.burst, now));
        let dt = now.saturating_duration_since(e.refilled).as_secs_f64();
        e.tokens = (e.tokens + dt * self.rate).min(self.burst);
        e.refilled = now;
        e
    }

    /// Before authentication: `Err(retry after)` when `src` has used up its
    /// failed authentications (the shed is counted in its next record).
    pub fn admit(&self, src: Source) -> Result<(), Duration> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(());
        }
        let now = Instant::now();
        let mut g = self.lock();
        let map = &mut g.map;
        // an address never refused has no entry and is not charged one
        if !map.contains_key(&src) && (map.len() < MAX_SOURCES || !map.contains_key(&Source::Other))
        {
            return Ok(());
        }
        let e = self.entry(map, src, now);
        if e.tokens >= 1.0 {
            return Ok(());
        }
        e.shed += 1;
        e.window.get_or_insert(now);
        let wait = if self.rate > 0.0 {
            (1.0 - e.tokens) / self.rate
        } else {
            self.interval.as_secs_f64()
        };
        Err(Duration::from_secs_f64(wait.max(0.001)))
    }

    /// A refused authentication from `src`: `true` when it is to be
    /// recorded now (the first from a quiet address, while this interval's
    /// [`MAX_FIRST_RECORDS`] last), else it is counted for the address's
    /// aggregate record.
    pub fn refused(&self, src: Source, principal: &str, why: &'static str) -> bool {
        let now = Instant::now();
        let mut g = self.lock();
        self.any.store(true, Ordering::Release);
        let first_allowed = g.first_records < MAX_FIRST_RECORDS;
        let e = self.entry(&mut g.map, src, now);
        e.tokens = (e.tokens - 1.0).max(0.0);
        if e.window.is_none() {
            e.window = Some(now);
            if first_allowed {
                g.first_records += 1;
                return true;
            }
        }
        e.refused += 1;
        tally(&mut e.principals, principal.to_string(), 1, "…".to_string());
        tally(&mut e.reasons, why, 1, "…");
        false
    }

    /// The aggregates whose interval has passed (all of them with `all`,
    /// at shutdown): at most [`MAX_AGGREGATES`] sources' own per interval,
    /// the rest merged into `other`'s. A source that was quiet for a whole
    /// interval is forgotten once its bucket is full again.
    pub fn due(&self, all: bool) -> Vec<Aggregate> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut g = self.lock();
        let mut budget = MAX_AGGREGATES.saturating_sub(g.aggregates);
        let mut overflow: Option<Entry> = None;
        let (rate, burst, interval) = (self.rate, self.burst, self.interval);
        g.map.retain(|src, e| {
            let dt = now.saturating_duration_since(e.refilled).as_secs_f64();
            e.tokens = (e.tokens + dt * rate).min(burst);
            e.refilled = now;
            let Some(since) = e.window else {
                return e.tokens < burst;
            };
            if !all && now.saturating_duration_since(since) < interval {
                return true;
            }
            if e.refused + e.shed == 0 {
                e.window = None;
                return e.tokens < burst;
            }
            // a flood goes on being gathered, one record per interval
            e.window = Some(now);
            if *src != Source::Other && budget == 0 {
                let o = overflow.get_or_insert_with(|| Entry::new(0.0, now));
                o.refused += std::mem::take(&mut e.refused);
                o.shed += std::mem::take(&mut e.shed);
                o.merged += 1;
                for (k, n) in std::mem::take(&mut e.principals) {
                    tally(&mut o.principals, k, n, "…".to_string());
                }
                for (k, n) in std::mem::take(&mut e.reasons) {
                    tally(&mut o.reasons, k, n, "…");
                }
                return true;
            }
            if *src != Source::Other {
                budget -= 1;
            }
            out.push(Aggregate {
                source: *src,
                refused: std::mem::take(&mut e.refused),
                shed: std::mem::take(&mut e.shed),
                merged: std::mem::take(&mut e.merged),
                principals: std::mem::take(&mut e.principals),
                reasons: std::mem::take(&mut e.reasons),
            });
            true
        });
        g.aggregates = MAX_AGGREGATES - budget;
        if let Some(o) = overflow {
            // merged into `other`, which is written once its own interval
            // has passed (at once with `all`)
            let e = self.entry(&mut g.map, Source::Other, now);
            e.refused += o.refused;
            e.shed += o.shed;
            e.merged += o.merged;
            for (k, n) in o.principals {
                tally(&mut e.principals, k, n, "…".to_string());
            }
            for (k, n) in o.reasons {
                tally(&mut e.reasons, k, n, "…");
            }
            e.window.get_or_insert(now);
            if all {
                out.push(Aggregate {
                    source: Source::Other,
                    refused: std::mem::take(&mut e.refused),
                    shed: std::mem::take(&mut e.shed),
                    merged: std::mem::take(&mut e.merged),
                    principals: std::mem::take(&mut e.principals),
                    reasons: std::mem::take(&mut e.reasons),
                });
            }
        }
        self.any.store(!g.map.is_empty(), Ordering::Release);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> Source {
        Source::of(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn a_flood_from_one_address_is_shed_and_gathered_into_one_record() {
        let s = Strangers::new(0.0, 5.0, Duration::ZERO);
        let a = addr(1);
        assert!(s.admit(a).is_ok(), "a new address is not charged");
        assert!(
            s.refused(a, "anonymous", "missing"),
            "the first is recorded at once"
        );
        for _ in 0..4 {
            assert!(s.admit(a).is_ok());
            assert!(!s.refused(a, "token:1", "unknown"));
        }
        for _ in 0..1000 {
            assert!(
                s.admit(a).is_err(),
                "over the burst: shed before authentication"
            );
        }
        // another address is untouched
        assert!(s.admit(addr(2)).is_ok());
        let due = s.due(false);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].refused, due[0].shed), (4, 1000));
        assert_eq!(due[0].principals["token:1"], 4);
        let reason = due[0].reason(INTERVAL);
        assert!(
            reason.contains("count=4 shed=1000 source=10.0.0.1"),
            "{reason}"
        );
        // a quiet interval later the address is recorded at once again
        assert!(s.due(false).is_empty());
        assert!(s.refused(a, "anonymous", "missing"));
    }

    #[test]
    fn an_aggregate_names_a_bounded_number_of_principals() {
        let s = Strangers::new(1e9, 1e9, Duration::ZERO);
        let a = addr(3);
        s.refused(a, "first", "unknown");
        for i in 0..100 {
            s.refused(a, &format!("token:{i}"), "unknown");
        }
        let due = s.due(true);
        assert_eq!(due[0].principals.len(), NAMED + 1);
        assert_eq!(due[0].principals["…"], 100 - NAMED as u64);
    }

    #[test]
    fn many_sources_cost_a_bounded_number_of_records() {
        let s = Strangers::new(0.0, 5.0, Duration::from_secs(3600));
        let n = 10_000u32;
        let mut at_once = 0;
        for i in 0..n {
            let a = Source::of(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            for _ in 0..3 {
                at_once += s.refused(a, "anonymous", "missing") as u32;
            }
        }
        assert_eq!(at_once, MAX_FIRST_RECORDS, "first records are capped");
        let due = s.due(true);
        assert_eq!(due.len() as u32, MAX_AGGREGATES + 1, "{due:?}");
        let other = due.iter().find(|a| a.source == Source::Other).unwrap();
        assert_eq!(other.merged, u64::from(n - MAX_AGGREGATES));
        let counted: u64 = due.iter().map(|a| a.refused).sum();
        assert_eq!(
            counted,
            u64::from(3 * n - MAX_FIRST_RECORDS),
            "nothing is lost"
        );
        assert!(other
            .reason(INTERVAL)
            .contains(" source=other sources=9936 "));
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        assert_eq!(Source::of(a).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Source::of(mapped), addr(1));
        let s = Strangers::new(0.0, 2.0, Duration::ZERO);
        s.refused(Source::of(a), "anonymous", "missing");
        s.refused(Source::of(a), "anonymous", "missing");
        assert!(
            s.admit(Source::of(b)).is_err(),
            "another address in the /64 shares its bucket"
        );
        assert!(s.admit(Source::of(c)).is_ok());
    }
}
