//! Chaos drills (docs/RUNBOOK.md): each starts a ron-kms of its own (the
//! service child, with fault injection on), drives load with this bench's
//! workers, injects its fault, and prints a verdict table: requests ok /
//! shed / failed by code and p50/p95/p99 before, during and after, the
//! recovery time, the keys checked and whether the audit chain verifies.
//!
//! A request refused with a retryable code (`unavailable`, `saturated`,
//! `tenant_share`, `rate_limit`, `overloaded`, `timeout`: 503 or 429 with
//! retry advice) counts as *shed*; anything else that is not ok counts as
//! *failed* and fails the drill.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ron_kms::proto::{GetKeyRequest, SignRequest};

use super::*;
use stats::Tally;

/// The codes a shed request may carry (all retryable, with retry advice).
const SHED_CODES: &[&str] = &[
    "unavailable",
    "saturated",
    "tenant_share",
    "rate_limit",
    "overloaded",
    "timeout",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DrillKind {
    /// Custody flapping (down/up on a schedule), slow and erroring.
    HsmFlap,
    /// 10x the steady rate for a window, then back.
    Burst,
    /// Rotations at 10x a busy rate while signing and verifying with the
    /// rotating key.
    RotateFlood,
    /// Slow-loris connections, gzip bombs and oversized bodies mixed into
    /// normal traffic.
    HostileClients,
    /// The TPM simulator (swtpm) killed under signing load and restarted.
    TpmLoss,
    /// Many keys (100,000; 2,000 in the short form) and verify over all of
    /// them with the verify cache at its bound: RSS stays bounded.
    MemoryPressure,
    /// The process killed (SIGKILL) mid-load and restarted.
    #[value(name = "kill-9")]
    Kill9,
    /// Delay, jitter and loss, then a partition, on the path between the
    /// bench and the service, in a network namespace the drill makes
    /// (needs root).
    NetworkJitter,
}

impl DrillKind {
    fn name(self) -> &'static str {
        match self {
            DrillKind::HsmFlap => "hsm-flap",
            DrillKind::Burst => "burst",
            DrillKind::RotateFlood => "rotate-flood",
            DrillKind::Kill9 => "kill-9",
            DrillKind::MemoryPressure => "memory-pressure",
            DrillKind::TpmLoss => "tpm-loss",
            DrillKind::HostileClients => "hostile-clients",
            DrillKind::NetworkJitter => "network-jitter",
        }
    }
}

#[derive(clap::Args)]
pub struct DrillArgs {
    /// The drills to run, in order (default: all).
    #[arg(value_enum)]
    drills: Vec<DrillKind>,
    /// The short forms (seconds per phase instead of minutes), as CI runs
    /// them.
    #[arg(long)]
    short: bool,
    /// Workers (closed loop) driving the steady load.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// One phase's tallies.
struct Phase {
    name: &'static str,
    tally: Tally,
    secs: f64,
}

/// A drill's outcome: its phases and its checks.
struct Verdict {
    drill: &'static str,
    phases: Vec<Phase>,
    facts: Vec<(String, String)>,
    checks: Vec<(String, bool)>,
}

impl Verdict {
    fn new(drill: &'static str) -> Self {
        Verdict {
            drill,
            phases: Vec::new(),
            facts: Vec::new(),
            checks: Vec::new(),
        }
    }
    fn fact(&mut self, k: &str, v: impl std::fmt::Display) {
        self.facts.push((k.to_string(), v.to_string()));
    }
    fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.checks.push((what.into(), ok));
    }
    fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.1)
    }

    /// A recovery time as fact `what` ("never" when there was none), and
    /// checked as `claim`: it came within `within`.
    fn recovery(&mut self, what: &str, rec: Option<Duration>, claim: &str, within: Duration) {
        let shown = rec.map_or("never".into(), |d| format!("{} ms", d.as_millis()));
        self.fact(what, shown);
        self.check(claim, rec.is_some_and(|d| d < within));
    }

    /// Phase `name`: `secs` of the steady sign + verify mix on key `key`
    /// from `n` closed-loop workers.
    async fn steady(
        &mut self,
        ep: &Endpoint,
        key: &str,
        name: &'static str,
        n: usize,
        secs: f64,
    ) -> Result<(), String> {
        let g = closed(sign_verify(ep, key, false).await?, workers(ep, n).await?);
        self.phases.push(phase(name, vec![g], secs).await);
        Ok(())
    }

    /// At least 99% of phase `i`'s requests were ok.
    fn check_ok_share(&mut self, i: usize, when: &str) {
        let t = &self.phases[i].tally;
        let share = t.ok as f64 / (t.ok + t.errors.values().sum::<u64>()).max(1) as f64;
        self.check(
            format!("{when}, {:.2}% of requests ok (>= 99%)", share * 100.0),
            share >= 0.99,
        );
    }

    /// The drill's key still reads back and signs.
    async fn check_key(&mut self, ep: &Endpoint, name: &str) {
        let k = keys_ok(ep, &[name.to_string()]).await;
        self.fact("keys checked", format!("{k} of 1"));
        self.check("no key lost", k == 1);
    }

    /// Every phase: no failure other than a shed.
    fn check_only_sheds(&mut self) {
        let failed: BTreeMap<String, u64> = self
            .phases
            .iter()
            .flat_map(|p| p.tally.errors.iter())
            .filter(|(c, _)| !SHED_CODES.contains(&c.as_str()))
            .fold(BTreeMap::new(), |mut m, (c, n)| {
                *m.entry(c.clone()).or_insert(0) += n;
                m
            });
        let what = if failed.is_empty() {
            "no request failed other than shed with retry advice".to_string()
        } else {
            format!("requests failed other than shed: {failed:?}")
        };
        self.check(what, failed.is_empty());
    }

    fn print(&self) {
        println!(
            "\n## drill {} — host {}, {}, commit {}",
            self.drill,
            super::host(),
            super::date(),
            super::commit()
        );
        println!(
            "\n| phase | s | ok | shed | failed | codes | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|---:|---|---:|---:|---:|"
        );
        for p in &self.phases {
            let shed: u64 = p
                .tally
                .errors
                .iter()
                .filter(|(c, _)| SHED_CODES.contains(&c.as_str()))
                .map(|(_, n)| n)
                .sum();
            let all: u64 = p.tally.errors.values().sum();
            let codes = p
                .tally
                .errors
                .iter()
                .map(|(c, n)| format!("{c}:{n}"))
                .collect::<Vec<_>>()
                .join(" ");
            let q = |x: f64| p.tally.latency_us.value_at_quantile(x) as f64 / 1000.0;
            println!(
                "| {} | {:.0} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
                p.name,
                p.secs,
                p.tally.ok,
                shed,
                all - shed,
                if codes.is_empty() {
                    "—".into()
                } else {
                    codes
                },
                q(0.50),
                q(0.95),
                q(0.99)
            );
        }
        println!();
        for (k, v) in &self.facts {
            println!("- {k}: {v}");
        }
        for (what, ok) in &self.checks {
            println!("- [{}] {what}", if *ok { "pass" } else { "FAIL" });
        }
        println!(
            "\nverdict: {} {}",
            self.drill,
            if self.passed() { "PASSED" } else { "FAILED" }
        );
    }
}

/// Phase lengths in seconds: before, during, after.
fn lengths(short: bool, long: (f64, f64, f64)) -> (f64, f64, f64) {
    if short {
        (2.0, 4.0, 3.0)
    } else {
        long
    }
}

/// A service child with fault injection, its data dir kept by the drill.
fn start_service(data: &Path, envs: &[(&str, &str)]) -> Result<Server, String> {
    let mut all = vec![("KMS_FAULT_INJECTION", "true"), ("KMS_LOG", "warn")];
    all.extend_from_slice(envs);
    Server::start_env(
        &["service", "--data-dir", &data.to_string_lossy()],
        &all,
        Transport::Grpc,
        None,
    )
}

/// Workers over `conns` shared channels.
async fn workers(ep: &Endpoint, n: usize) -> Result<Vec<Client>, String> {
    let chans = load::grpc_clients(ep, 4).await?;
    (0..n)
        .map(|i| Client::grpc(chans[i % chans.len()].clone(), &ep.token))
        .collect()
}

/// Closed-loop `clients` running `mix` back to back.
fn closed(mix: Mix, clients: Vec<Client>) -> Group {
    Group {
        clients,
        mix,
        pace: Pace::Closed,
    }
}

/// Run `groups` for `secs` and keep the merged tally as phase `name`.
async fn phase(name: &'static str, groups: Vec<Group>, secs: f64) -> Phase {
    let (out, _) = load::run(groups, Duration::ZERO, Duration::from_secs_f64(secs), false).await;
    Phase {
        name,
        tally: out.total,
        secs,
    }
}

/// The steady sign + verify mix on key `name`.
async fn sign_verify(ep: &Endpoint, name: &str, create: bool) -> Result<Mix, String> {
    let c = load::grpc_clients(ep, 1).await?.remove(0);
    let sign = prepare(
        c.clone(),
        &ep.token,
        Op::Sign,
        Algorithm::Ed25519,
        name,
        32,
        false,
        create,
    )
    .await?;
    // Preparing the verify signs once. On a fresh custody device under a
    // busy disk that first sign was once answered `unavailable` (retry
    // advice): a client that honours the advice tries again, and so does the
    // set-up, for up to 10 s, before it calls the drill failed to run.
    let t = Instant::now();
    let verify = loop {
        match prepare(
            c.clone(),
            &ep.token,
            Op::Verify,
            Algorithm::Ed25519,
            name,
            32,
            false,
            false,
        )
        .await
        {
            Err(e) if retryable(&e) && t.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => break r?,
        }
    };
    Ok(Mix::new(vec![
        ("sign".into(), sign, 50),
        ("verify".into(), verify, 50),
    ]))
}

/// A set-up error whose code comes with retry advice ([`SHED_CODES`]), or
/// the transport's `unavailable`.
fn retryable(e: &str) -> bool {
    let code = e.rsplit(": ").next().unwrap_or(e);
    SHED_CODES.contains(&code) || code == "grpc_unavailable"
}

/// Sign with `name` until it works (or `limit` passes): the recovery time.
async fn until_sign_ok(ep: &Endpoint, name: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut c = load::grpc_clients(ep, 1).await.ok()?.remove(0);
    while t.elapsed() < limit {
        let r = c
            .sign(
                with_auth(
                    SignRequest {
                        context: Vec::new(),
                        key: name.into(),
                        message: b"probe".to_vec(),
                        op_id: String::new(),
                        ..Default::default()
                    },
                    &ep.token,
                )
                .ok()?,
            )
            .await;
        if r.is_ok() {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Every key in `names` still reads back and signs: how many did.
async fn keys_ok(ep: &Endpoint, names: &[String]) -> usize {
    let Ok(mut cs) = load::grpc_clients(ep, 1).await else {
        return 0;
    };
    let c = &mut cs[0];
    let mut ok = 0;
    for n in names {
        let Ok(get) = with_auth(
            GetKeyRequest {
                name: n.clone(),
                pem: false,
            },
            &ep.token,
        ) else {
            continue;
        };
        let Ok(sign) = with_auth(
            SignRequest {
                context: Vec::new(),
                key: n.clone(),
                message: b"check".to_vec(),
                op_id: String::new(),
                ..Default::default()
            },
            &ep.token,
        ) else {
            continue;
        };
        if c.get_key(get).await.is_ok() && c.sign(sign).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

/// Stop the child cleanly (its audit log is sealed) and verify the chain.
fn stop_and_verify(server: Server, data: &Path, v: &mut Verdict) {
    drop(server);
    match ron_kms::audit::verify_dir(&data.join("audit"), None) {
        Ok(s) => {
            v.fact(
                "audit chain",
                format!("{} records, {} checkpoints", s.records, s.checkpoints),
            );
            v.check("audit chain verifies and is sealed", s.unsealed_tail == 0);
        }
        Err(e) => {
            v.fact("audit chain", &e);
            v.check("audit chain verifies", false);
        }
    }
}

/// Records in the audit chain with this op and `result ok`.
fn audited_ok(data: &Path, op: &str) -> u64 {
    let mut n = 0;
    for f in ron_kms::audit::chain::segments(&data.join("audit")).unwrap_or_default() {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if v["op"] == op && v["result"] == "ok" {
                    n += 1;
                }
            }
        }
    }
    n
}

mod custody;
mod network;
mod process;
mod traffic;

pub use network::impair;

pub async fn run(a: DrillArgs) -> Result<ExitCode, String> {
    let drills = if a.drills.is_empty() {
        vec![
            DrillKind::HsmFlap,
            DrillKind::Burst,
            DrillKind::RotateFlood,
            DrillKind::TpmLoss,
            DrillKind::MemoryPressure,
            DrillKind::HostileClients,
            DrillKind::Kill9,
            DrillKind::NetworkJitter,
        ]
    } else {
        a.drills.clone()
    };
    let mut failed = Vec::new();
    for d in drills {
        let t = Instant::now();
        eprintln!(
            "drill {} ({}) …",
            d.name(),
            if a.short { "short" } else { "long" }
        );
        let v = match d {
            DrillKind::HsmFlap => custody::hsm_flap(&a).await,
            DrillKind::Burst => traffic::burst(&a).await,
            DrillKind::RotateFlood => traffic::rotate_flood(&a).await,
            DrillKind::Kill9 => process::kill_9(&a).await,
            DrillKind::MemoryPressure => traffic::memory_pressure(&a).await,
            DrillKind::TpmLoss => custody::tpm_loss(&a).await,
            DrillKind::HostileClients => traffic::hostile_clients(&a).await,
            DrillKind::NetworkJitter => network::network_jitter(&a).await,
        };
        match v {
            Ok(v) => {
                v.print();
                if !v.passed() {
                    failed.push(d.name());
                }
            }
            Err(e) => {
                println!("\nverdict: {} FAILED to run: {e}", d.name());
                failed.push(d.name());
            }
        }
        eprintln!("drill {} took {:.0} s", d.name(), t.elapsed().as_secs_f64());
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("drills failed: {failed:?}");
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::retryable;

    #[test]
    fn set_up_retries_only_errors_with_retry_advice() {
        for e in [
            "sign: unavailable",
            "sign: saturated",
            "sign: grpc_unavailable",
            "wrap: rate_limit",
        ] {
            assert!(retryable(e), "{e}");
        }
        for e in [
            "sign: not_found",
            "sign: permission_denied",
            "sign: grpc_internal",
            "create_key: already_exists",
        ] {
            assert!(!retryable(e), "{e}");
        }
    }
}
