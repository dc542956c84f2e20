//! What one load run measured: latencies in an HDR histogram (1 µs to 60 s,
//! 3 significant digits), outcomes by error code, and the processes' CPU
//! and memory read from /proc.
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One worker's tally; merged into a [`Tally`] at the end of a run.
pub struct Tally {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    /// Failures by code: the KMS error code (`saturated`, `not_found`, …),
    /// or the gRPC/HTTP status when the body carried none.
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    pub fn new() -> Self {
        Tally {
            latency_us: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }

    /// One request's latency and outcome. A request that failed as a
    /// whole fails all of its `items` operations (1 for a single call, the
    /// batch size for a batch).
    pub fn record(&mut self, micros: u64, outcome: Result<Items, String>, items: u64) {
        let _ = self.latency_us.record(micros.clamp(1, 60_000_000));
        match outcome {
            Ok(it) => {
                self.ok += it.ok;
                for code in it.failed {
                    *self.errors.entry(code).or_default() += 1;
                }
            }
            Err(code) => *self.errors.entry(code).or_default() += items,
        }
    }

    pub fn merge_ref(&mut self, other: &Tally) {
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.merge_ref(&other);
    }
}

/// CPU time and memory of one process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub cpu_seconds: f64,
    pub rss_kib: u64,
}

/// Read `/proc/<pid>/stat` (utime + stime) and `/proc/<pid>/status`
/// (VmRSS). `None` when the process is gone.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name is in parentheses and may hold spaces
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    // fields 14 and 15 of proc(5), counted after the ')'
    let cpu_seconds = (ticks(11)? + ticks(12)?) / clock_ticks();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_seconds,
        rss_kib,
    })
}

/// USER_HZ: 100 on every Linux this runs on (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The figures of one run, as printed and written to JSON.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// `service` or `bare` (the yardstick).
    pub server: String,
    pub transport: String,
    pub op: String,
    pub alg: String,
    /// `closed` (N in flight) or `open` (fixed rate).
    pub mode: String,
    pub concurrency: usize,
    pub connections: usize,
    /// Items per request: 1 for single calls, N for `--batch N` (ops/s
    /// counts items; the latencies are whole batch requests').
    pub batch: usize,
    /// Keys the load is spread over (uniformly).
    pub keys: usize,
    /// Open loop only: the intended request rate.
    pub rate: Option<f64>,
    pub audit: bool,
    pub seconds: f64,
    /// The run's throughput and latencies (flattened: the same JSON keys).
    #[serde(flatten)]
    pub figures: Figures,
    /// Server CPU over the measured window, in cores (1.0 = one core busy).
    pub server_cpu_cores: f64,
    /// Server CPU per successful operation.
    pub server_cpu_us_per_op: f64,
    /// Load generator CPU over the window, in cores.
    pub client_cpu_cores: f64,
    /// Highest server RSS sampled during the window.
    pub server_peak_rss_mib: f64,
    /// A mix's parts (per operation, per tenant); empty for one operation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartReport>,
    /// tenant-isolation: the highest tenant p95 over the lowest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_p95_skew: Option<f64>,
}

/// The figures of one part of a run (or of all of it).
#[derive(Clone, Debug, Serialize)]
pub struct PartReport {
    pub label: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// Throughput and latencies over a window.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl PartReport {
    pub fn of(label: &str, t: &Tally, secs: f64) -> PartReport {
        let h = &t.latency_us;
        PartReport {
            label: label.to_string(),
            figures: Figures {
                requests: h.len(),
                ok: t.ok,
                errors: t.errors.clone(),
                ops_per_sec: t.ok as f64 / secs.max(f64::MIN_POSITIVE),
                p50_us: h.value_at_quantile(0.50),
                p95_us: h.value_at_quantile(0.95),
                p99_us: h.value_at_quantile(0.99),
                max_us: h.max(),
            },
        }
    }

    /// An indented line under its run's row.
    pub fn row(&self) -> String {
        let f = &self.figures;
        let errs: u64 = f.errors.values().sum();
        format!(
            "  part {:<20} {:>10.0} {:>8} {:>8} {:>8} {:>9} {:>7}",
            self.label, f.ops_per_sec, f.p50_us, f.p95_us, f.p99_us, f.max_us, errs
        )
    }
}

impl RunReport {
    /// One line for the table.
    pub fn row(&self) -> String {
        let f = &self.figures;
        let errs: u64 = f.errors.values().sum();
        format!(
            "{:<8} {:<5} {:<7} {:<11} {:>4} {:>10.0} {:>8} {:>8} {:>8} {:>9} {:>7} {:>6.2} {:>6.2} {:>7.1}",
            self.server,
            self.transport,
            self.op,
            self.alg,
            self.concurrency,
            f.ops_per_sec,
            f.p50_us,
            f.p95_us,
            f.p99_us,
            f.max_us,
            errs,
            self.server_cpu_cores,
            self.client_cpu_cores,
            self.server_peak_rss_mib,
        )
    }

    pub fn header() -> String {
        format!(
            "{:<8} {:<5} {:<7} {:<11} {:>4} {:>10} {:>8} {:>8} {:>8} {:>9} {:>7} {:>6} {:>6} {:>7}",
            "server",
            "front",
            "op",
            "alg",
            "conc",
            "ops/s",
            "p50 us",
            "p95 us",
            "p99 us",
            "max us",
            "errors",
            "srvCPU",
            "cliCPU",
            "RSS MiB"
        )
    }
}

/// What one request did: how many operations succeeded, and the codes of
/// those that failed (a batch's items; a single call is one item).
#[derive(Debug, Default)]
pub struct Items {
    pub ok: u64,
    pub failed: Vec<String>,
}

impl Items {
    pub fn one() -> Items {
        Items {
            ok: 1,
            failed: Vec::new(),
        }
    }

    /// From each item's failure code (`None` when it succeeded).
    pub fn from_failures(failures: impl Iterator<Item = Option<String>>) -> Items {
        let mut it = Items::default();
        for f in failures {
            match f {
                None => it.ok += 1,
                Some(code) => it.failed.push(code),
            }
        }
        it
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_outcomes_and_merges() {
        let mut a = Tally::new();
        let one = || Items {
            ok: 1,
            failed: Vec::new(),
        };
        a.record(100, Ok(one()), 1);
        a.record(0, Err("saturated".into()), 1);
        let mut b = Tally::new();
        b.record(300, Ok(one()), 1);
        b.record(90_000_000, Err("saturated".into()), 1);
        // a batch of 4: 3 signed, 1 shed; then a batch refused whole
        b.record(
            200,
            Ok(Items {
                ok: 3,
                failed: vec!["rate_limit".into()],
            }),
            4,
        );
        b.record(200, Err("unauthenticated".into()), 4);
        a.merge(b);
        assert_eq!(a.ok, 5);
        assert_eq!(a.errors["saturated"], 2);
        assert_eq!(a.errors["rate_limit"], 1);
        assert_eq!(a.errors["unauthenticated"], 4);
        assert_eq!(a.latency_us.len(), 6, "one latency per request");
        assert!(a.latency_us.max() >= 59_000_000, "clamped to the top bound");
        assert_eq!(a.latency_us.min(), 1, "zero clamps to one microsecond");
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = proc_sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
        assert!(s.cpu_seconds >= 0.0);
        assert!(proc_sample(u32::MAX).is_none());
    }
}
