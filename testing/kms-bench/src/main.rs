//! kms-bench: the load generator and its yardstick (PERFORMANCE.md).
//!
//! `kms-bench run` starts ron-kms in a child process (a temp data dir,
//! sealed-file custody, the audit log on unless `--no-audit`), creates a
//! key, drives one operation over gRPC or HTTP and prints latency
//! percentiles, throughput, errors by code and the server's CPU and peak
//! RSS. With `--yardstick` it also starts a bare server of the same
//! transport (handlers do only the crypto with a preloaded key) and drives
//! it with the same load, and reports the service's throughput and p99 as
//! ratios to it — figures that stay comparable across noisy machines.
//! `--json FILE` writes everything, with host, commit and date.
#![forbid(unsafe_code)]

mod bare;
mod child;
mod cli;
mod direct;
mod drill;
mod load;
mod measure;
mod plan;
mod report;
// The tests' throw-away SoftHSM2 token (its own token dir and
// `SOFTHSM2_CONF`, `softhsm2-util --init-token`, a 0600 PIN file), for
// `--backend pkcs11` and the hsm-flap drill.
#[path = "../../../tests/common/softhsm.rs"]
#[allow(dead_code)]
mod softhsm;
mod stats;

use std::io::{BufRead, BufReader, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ron_kms::crypto::Algorithm;
use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::{
    CreateKeyRequest, RotateKeyRequest, SignRequest, UnwrapRequest, VerifyRequest, WrapRequest,
};
use serde::Serialize;
use tonic::transport::Channel;

use load::{Burst, Client, Endpoint, Group, Mix, Op, Pace, Schedule, Transport, Work};
use stats::{proc_sample, PartReport, RunReport};

use child::*;
use cli::*;
use measure::*;
use plan::*;
use report::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = ron_kms::runtime::builder().build().expect("tokio runtime");
    let r = match cli.cmd {
        Cmd::Run(a) => rt.block_on(run(a)),
        Cmd::Drill(a) => rt.block_on(drill::run(a)),
        Cmd::Service {
            data_dir,
            no_audit,
            listen,
        } => rt.block_on(child_service(data_dir, no_audit, &listen)),
        Cmd::Impair { queue } => drill::impair(queue),
        Cmd::Bare { alg } => rt.block_on(child_bare(&alg)),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kms-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(a: RunArgs) -> Result<ExitCode, String> {
    let alg = Algorithm::parse(&a.alg).ok_or_else(|| format!("unknown algorithm {}", a.alg))?;
    let wants_kem = a.mix.is_none() && matches!(a.op, Op::Wrap | Op::Unwrap);
    if wants_kem != alg.is_kem() {
        return Err(format!(
            "{} is not an algorithm for {}",
            a.alg,
            a.mix.map(MixKind::as_str).unwrap_or(a.op.as_str())
        ));
    }
    if a.mix.is_some() && a.yardstick {
        return Err("mixes have no yardstick: the bare server holds one key".into());
    }
    if a.mix == Some(MixKind::Burst) && a.rate.is_none() {
        return Err("the burst mix is an open loop: give --rate".into());
    }
    if a.audit_pairs > 0 && (a.no_audit || a.yardstick) {
        return Err(
            "--audit-pairs runs the service with the audit log on and off itself; it takes neither --no-audit nor --yardstick".into(),
        );
    }
    let raw = raw_crypto(&a, alg)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let raw_all = raw_crypto_all_cores(&a, alg, cpus)?;
    eprintln!(
        "kms-bench: {} {} {} | raw {} single core: {raw:.0} ops/s, {cpus} cores: {raw_all:.0} ops/s",
        a.transport.as_str(),
        a.mix.map(MixKind::as_str).unwrap_or(a.op.as_str()),
        a.alg,
        a.op.as_str()
    );
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let data_s = data.to_string_lossy().to_string();
    let mut svc_args = vec!["service", "--data-dir", data_s.as_str()];
    if a.no_audit {
        svc_args.push("--no-audit");
    }
    let token = match a.backend {
        BackendArg::Pkcs11 => Some(Token::new(&a)?),
        BackendArg::SealedFile => None,
    };
    let env = token.as_ref().map(Token::env).unwrap_or_default();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let service = Server::start_env(&svc_args, &env, a.transport, Some(dir))?;
    let idle_rss_mib = proc_sample(service.pid())
        .map(|s| s.rss_kib as f64 / 1024.0)
        .unwrap_or(0.0);
    let svc_plan = plan(&service.endpoint, &a, alg, true).await?;
    let bare = if a.yardstick {
        Some(yardstick(&a, alg, token.as_ref()).await?)
    } else {
        None
    };
    let off = if a.audit_pairs > 0 {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data").to_string_lossy().to_string();
        let server = Server::start(
            &["service", "--data-dir", &data, "--no-audit"],
            a.transport,
            Some(dir),
        )?;
        let mut args = a.clone();
        args.no_audit = true;
        let plan = plan(&server.endpoint, &args, alg, true).await?;
        Some(OffService { server, args, plan })
    } else {
        None
    };
    println!("{}", RunReport::header());
    let mut runs = Vec::new();
    let mut ratios = Vec::new();
    let (mut pairs, mut summaries) = (Vec::new(), Vec::new());
    for &conc in &a.concurrency {
        if let Some(off) = &off {
            let (p, s) = audit_pairs((&service, &a, &svc_plan), off, conc, &mut runs).await?;
            pairs.extend(p);
            summaries.push(s);
            continue;
        }
        let s = measure(&service, &a, &svc_plan, conc, "service").await?;
        println!("{}", s.row());
        for p in &s.parts {
            println!("{}", p.row());
        }
        if let Some(skew) = s.tenant_p95_skew {
            println!("  tenant p95 skew (highest / lowest): {skew:.2}");
        }
        if a.mix.is_none() {
            println!(
                "  service / raw crypto on all {cpus} cores: {:.3}",
                s.figures.ops_per_sec / raw_all.max(f64::MIN_POSITIVE)
            );
        }
        if let Some(yard) = &bare {
            let y = match yard {
                Yard::Server(sp, role) => measure(&sp.0, &a, &sp.1, conc, role).await?,
                Yard::Direct(d, n) => tokio::task::block_in_place(|| d.measure(&a, *n, a.batch))?,
            };
            println!("{}", y.row());
            let r = Ratio {
                transport: s.transport.clone(),
                op: s.op.clone(),
                alg: s.alg.clone(),
                concurrency: conc,
                batch: s.batch,
                throughput: s.figures.ops_per_sec / y.figures.ops_per_sec.max(f64::MIN_POSITIVE),
                p95: s.figures.p95_us as f64 / (y.figures.p95_us.max(1)) as f64,
                p99: s.figures.p99_us as f64 / (y.figures.p99_us.max(1)) as f64,
                cpu_per_op: s.server_cpu_us_per_op / y.server_cpu_us_per_op.max(f64::MIN_POSITIVE),
            };
            println!(
                "  ratio service/{}: throughput {:.3}, p95 {:.3}, p99 {:.3}, CPU per op {:.3}",
                y.server, r.throughput, r.p95, r.p99, r.cpu_per_op
            );
            ratios.push(r);
            runs.push(y);
        }
        for (code, n) in &s.figures.errors {
            println!("  service errors: {code} x{n}");
        }
        runs.push(s);
    }
    let peak = audit_peak(&summaries);
    let report = Report {
        tool: "kms-bench",
        version: env!("CARGO_PKG_VERSION"),
        host: host(),
        cpus,
        commit: commit(),
        date: date(),
        raw_crypto_ops_per_sec_single_core: raw,
        raw_crypto_ops_per_sec_all_cores: raw_all,
        service_idle_rss_mib: idle_rss_mib,
        backend: match a.backend {
            BackendArg::SealedFile => {
                std::env::var("KMS_BACKEND").unwrap_or_else(|_| "sealed-file".into())
            }
            b => b.as_str().into(),
        },
        runs,
        ratios,
        audit_peak_ratio: peak.map(|(r, _, _)| r),
        audit_pairs: pairs,
        audit_summary: summaries,
    };
    if let Some((r, c_on, c_off)) = peak {
        println!(
            "audit on / off at peak: {r:.3} (best on at {c_on} in flight, best off at {c_off})"
        );
    }
    println!(
        "host {} | {} cpus | commit {} | {} | service RSS at start {:.1} MiB",
        report.host, report.cpus, report.commit, report.date, report.service_idle_rss_mib
    );
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(p, text + "\n").map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What a run's service is compared with ([`yardstick`]).
enum Yard {
    /// Another server driven with the same load: the bare server, or (for
    /// verify on PKCS#11) a sealed-file service.
    Server(Box<(Server, Plan)>, &'static str),
    /// The token signing directly, on this many threads and sessions.
    Direct(std::sync::Arc<direct::Direct>, usize),
}

/// The yardstick for this run: the bare server for sealed-file; for
/// PKCS#11, the token itself through cryptoki (sign; the service has
/// created its key by now), or a sealed-file service (verify: a token
/// key's verify runs in software, so it is held to sealed-file's).
async fn yardstick(a: &RunArgs, alg: Algorithm, token: Option<&Token>) -> Result<Yard, String> {
    match (token, a.op) {
        (None, _) => {
            let b = Server::start(&["bare", "--alg", alg.as_str()], a.transport, None)?;
            let mut one = a.clone();
            one.keys = 1;
            let p = plan(&b.endpoint, &one, alg, false).await?;
            Ok(Yard::Server(Box::new((b, p)), "bare"))
        }
        (Some(t), Op::Sign) => {
            let d = direct::Direct::open(&softhsm::module(), &t.hsm.label, softhsm::PIN, alg)?;
            Ok(Yard::Direct(std::sync::Arc::new(d), t.sessions))
        }
        (Some(_), Op::Verify) => {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let data = dir.path().join("data").to_string_lossy().to_string();
            let mut args = vec!["service", "--data-dir", data.as_str()];
            if a.no_audit {
                args.push("--no-audit");
            }
            let s = Server::start(&args, a.transport, Some(dir))?;
            let p = plan(&s.endpoint, a, alg, true).await?;
            Ok(Yard::Server(Box::new((s, p)), "sealed-file"))
        }
        (Some(_), op) => Err(format!(
            "no PKCS#11 yardstick for {}: sign (direct cryptoki) or verify (sealed-file)",
            op.as_str()
        )),
    }
}

/// `--backend pkcs11`: a fresh SoftHSM2 token for the run, and the
/// sessions the service is to pool.
struct Token {
    hsm: softhsm::SoftHsm,
    sessions: usize,
    _dir: tempfile::TempDir,
}

impl Token {
    fn new(a: &RunArgs) -> Result<Token, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let hsm = softhsm::SoftHsm::new(dir.path(), "bench");
        // the direct yardstick loads the module in this process
        std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
        let sessions = a
            .pkcs11_sessions
            .unwrap_or_else(ron_kms::backend::pkcs11::default_pool_size);
        Ok(Token {
            hsm,
            sessions,
            _dir: dir,
        })
    }

    /// The service child's environment for this token.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env: Vec<(&'static str, String)> = self
            .hsm
            .env()
            .into_iter()
            .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
            .collect();
        env.push(("KMS_PKCS11_POOL_SIZE", self.sessions.to_string()));
        env
    }
}
