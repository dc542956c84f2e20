//! What a run reports: ratios to the yardstick, audit on/off pairs, the
//! JSON report with host, commit and date.
use super::*;

#[derive(Serialize)]
pub(crate) struct Ratio {
    pub(crate) transport: String,
    pub(crate) op: String,
    pub(crate) alg: String,
    pub(crate) concurrency: usize,
    pub(crate) batch: usize,
    /// service ops/s ÷ bare ops/s
    pub(crate) throughput: f64,
    /// service p95 ÷ bare p95
    pub(crate) p95: f64,
    /// service p99 ÷ bare p99
    pub(crate) p99: f64,
    /// service server-CPU per operation ÷ bare's
    pub(crate) cpu_per_op: f64,
}

/// One alternating pair of `--audit-pairs`.
#[derive(Serialize)]
pub(crate) struct AuditPair {
    pub(crate) concurrency: usize,
    pub(crate) pair: usize,
    pub(crate) on_ops_per_sec: f64,
    pub(crate) off_ops_per_sec: f64,
    /// on ÷ off throughput
    pub(crate) ratio: f64,
    pub(crate) on_server_cpu_us_per_op: f64,
    pub(crate) off_server_cpu_us_per_op: f64,
    pub(crate) on_client_cpu_cores: f64,
    pub(crate) off_client_cpu_cores: f64,
}

/// The pairs at one concurrency.
#[derive(Serialize)]
pub(crate) struct AuditSummary {
    pub(crate) concurrency: usize,
    pub(crate) pairs: usize,
    pub(crate) median_ratio: f64,
    pub(crate) min_ratio: f64,
    pub(crate) max_ratio: f64,
    pub(crate) median_on_ops_per_sec: f64,
    pub(crate) median_off_ops_per_sec: f64,
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The service with its audit log off, for `--audit-pairs`.
pub(crate) struct OffService {
    pub(crate) server: Server,
    pub(crate) args: RunArgs,
    pub(crate) plan: Plan,
}

/// `--audit-pairs` at one concurrency: alternating runs against the
/// service with the log on and the one with it off.
pub(crate) async fn audit_pairs(
    on: (&Server, &RunArgs, &Plan),
    off: &OffService,
    conc: usize,
    runs: &mut Vec<RunReport>,
) -> Result<(Vec<AuditPair>, AuditSummary), String> {
    let (server, args, plan) = on;
    let mut pairs = Vec::new();
    for i in 1..=args.audit_pairs {
        let (s_on, s_off) = if i % 2 == 1 {
            let x = measure(server, args, plan, conc, "service").await?;
            let y = measure(&off.server, &off.args, &off.plan, conc, "service").await?;
            (x, y)
        } else {
            let y = measure(&off.server, &off.args, &off.plan, conc, "service").await?;
            let x = measure(server, args, plan, conc, "service").await?;
            (x, y)
        };
        println!("{}  audit on", s_on.row());
        println!("{}  audit off", s_off.row());
        for (label, s) in [("on", &s_on), ("off", &s_off)] {
            for (code, n) in &s.figures.errors {
                println!("  audit {label} errors: {code} x{n}");
            }
        }
        let ratio = s_on.figures.ops_per_sec / s_off.figures.ops_per_sec.max(f64::MIN_POSITIVE);
        println!("  pair {i}: audit on / off throughput {ratio:.3}");
        pairs.push(AuditPair {
            concurrency: conc,
            pair: i,
            on_ops_per_sec: s_on.figures.ops_per_sec,
            off_ops_per_sec: s_off.figures.ops_per_sec,
            ratio,
            on_server_cpu_us_per_op: s_on.server_cpu_us_per_op,
            off_server_cpu_us_per_op: s_off.server_cpu_us_per_op,
            on_client_cpu_cores: s_on.client_cpu_cores,
            off_client_cpu_cores: s_off.client_cpu_cores,
        });
        runs.push(s_on);
        runs.push(s_off);
    }
    let ratios: Vec<f64> = pairs.iter().map(|p| p.ratio).collect();
    let summary = AuditSummary {
        concurrency: conc,
        pairs: pairs.len(),
        median_ratio: median(ratios.clone()),
        min_ratio: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        max_ratio: ratios.iter().copied().fold(0.0, f64::max),
        median_on_ops_per_sec: median(pairs.iter().map(|p| p.on_ops_per_sec).collect()),
        median_off_ops_per_sec: median(pairs.iter().map(|p| p.off_ops_per_sec).collect()),
    };
    println!(
        "  audit on / off at {conc} in flight: median {:.3} (min {:.3}, max {:.3}) over {} pairs",
        summary.median_ratio, summary.min_ratio, summary.max_ratio, summary.pairs
    );
    Ok((pairs, summary))
}

/// Best audit-on throughput over best audit-off throughput, each the
/// median of its pairs at the concurrency where it peaked.
pub(crate) fn audit_peak(summaries: &[AuditSummary]) -> Option<(f64, usize, usize)> {
    let on = summaries
        .iter()
        .max_by(|a, b| a.median_on_ops_per_sec.total_cmp(&b.median_on_ops_per_sec))?;
    let off = summaries.iter().max_by(|a, b| {
        a.median_off_ops_per_sec
            .total_cmp(&b.median_off_ops_per_sec)
    })?;
    let ratio = on.median_on_ops_per_sec / off.median_off_ops_per_sec.max(f64::MIN_POSITIVE);
    Some((ratio, on.concurrency, off.concurrency))
}

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) tool: &'static str,
    pub(crate) version: &'static str,
    pub(crate) host: String,
    pub(crate) cpus: usize,
    pub(crate) commit: String,
    pub(crate) date: String,
    pub(crate) raw_crypto_ops_per_sec_single_core: f64,
    /// The same loop on every core at once (one thread per core).
    pub(crate) raw_crypto_ops_per_sec_all_cores: f64,
    /// The service's RSS right after start-up, before any key or load.
    pub(crate) service_idle_rss_mib: f64,
    /// The service's custody (`KMS_BACKEND`, which the child inherits).
    pub(crate) backend: String,
    pub(crate) runs: Vec<RunReport>,
    pub(crate) ratios: Vec<Ratio>,
    /// `--audit-pairs`: every pair, the median per concurrency, and the
    /// peak ratio (best on ÷ best off).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) audit_pairs: Vec<AuditPair>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) audit_summary: Vec<AuditSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) audit_peak_ratio: Option<f64>,
}

pub(crate) fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) fn commit() -> String {
    if let Ok(c) = std::env::var("RON_KMS_COMMIT") {
        return c;
    }
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
