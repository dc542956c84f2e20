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
//! At most [`MAX_SOURCES`] addresses are tracked; beyond that, new ones
//! share one bucket and one count (source `other`).
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
/// Distinct principals (and reasons) an aggregate names; the rest are
/// counted under `…`.
const NAMED: usize = 8;

/// Where a request came from: its address, or `other` (no address known,
/// or more addresses than are tracked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Addr(IpAddr),
    Other,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Addr(a) => write!(f, "{a}"),
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
    principals: BTreeMap<String, u64>,
    reasons: BTreeMap<&'static str, u64>,
}

/// One address's refusals over an interval: what its record says.
#[derive(Debug, PartialEq, Eq)]
pub struct Aggregate {
    pub source: Source,
    pub refused: u64,
    pub shed: u64,
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
        format!(
            "aggregate count={} shed={} source={} interval_s={} reasons={} principals={}",
            self.refused,
            self.shed,
            self.source,
            interval.as_secs(),
            list(&reasons),
            list(&self.principals)
        )
    }
}

pub struct Strangers {
    map: Mutex<HashMap<Source, Entry>>,
    /// Whether any address is tracked: while none has been refused, the
    /// check before authentication takes no lock.
    any: AtomicBool,
    rate: f64,
    burst: f64,
    interval: Duration,
}

fn tally<K: Ord + Clone>(m: &mut BTreeMap<K, u64>, k: K, other: K) {
    if let Some(v) = m.get_mut(&k) {
        *v += 1;
    } else if m.len() < NAMED {
        m.insert(k, 1);
    } else {
        *m.entry(other).or_default() += 1;
    }
}

impl Strangers {
    pub fn new(rate: f64, burst: f64, interval: Duration) -> Self {
        Strangers {
            map: Mutex::new(HashMap::new()),
            any: AtomicBool::new(false),
            rate,
            burst: burst.max(1.0),
            interval,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
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
        let e = map.entry(src).or_insert_with(|| Entry {
            tokens: self.burst,
            refilled: now,
            window: None,
            refused: 0,
            shed: 0,
            principals: BTreeMap::new(),
            reasons: BTreeMap::new(),
        });
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
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // an address never refused has no entry and is not charged one
        if !map.contains_key(&src) && (map.len() < MAX_SOURCES || !map.contains_key(&Source::Other))
        {
            return Ok(());
        }
        let e = self.entry(&mut map, src, now);
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
    /// recorded now (the first from a quiet address), else it is counted
    /// for the address's aggregate record.
    pub fn refused(&self, src: Source, principal: &str, why: &'static str) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        self.any.store(true, Ordering::Release);
        let e = self.entry(&mut map, src, now);
        e.tokens = (e.tokens - 1.0).max(0.0);
        if e.window.is_none() {
            e.window = Some(now);
            return true;
        }
        e.refused += 1;
        tally(&mut e.principals, principal.to_string(), "…".to_string());
        tally(&mut e.reasons, why, "…");
        false
    }

    /// The aggregates whose interval has passed (all of them with `all`,
    /// at shutdown). An address that was quiet for a whole interval is
    /// forgotten once its bucket is full again.
    pub fn due(&self, all: bool) -> Vec<Aggregate> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|src, e| {
            let dt = now.saturating_duration_since(e.refilled).as_secs_f64();
            e.tokens = (e.tokens + dt * self.rate).min(self.burst);
            e.refilled = now;
            let Some(since) = e.window else {
                return e.tokens < self.burst;
            };
            if !all && now.saturating_duration_since(since) < self.interval {
                return true;
            }
            if e.refused + e.shed == 0 {
                e.window = None;
                return e.tokens < self.burst;
            }
            out.push(Aggregate {
                source: *src,
                refused: std::mem::take(&mut e.refused),
                shed: std::mem::take(&mut e.shed),
                principals: std::mem::take(&mut e.principals),
                reasons: std::mem::take(&mut e.reasons),
            });
            // a flood goes on being gathered, one record per interval
            e.window = Some(now);
            true
        });
        self.any.store(!map.is_empty(), Ordering::Release);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> Source {
        Source::Addr(IpAddr::from([10, 0, 0, n]))
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
}
