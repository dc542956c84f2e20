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
mod drill;
mod load;
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

#[derive(Parser)]
#[command(
    name = "kms-bench",
    version,
    about = "Load generator and yardstick for ron-kms"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive one operation against a fresh ron-kms (and, with --yardstick,
    /// the bare server); one run per --concurrency value.
    Run(RunArgs),
    /// Chaos drills: fault, load and a verdict table (docs/RUNBOOK.md).
    Drill(drill::DrillArgs),
    /// (internal) Run ron-kms in this process for the bench.
    #[command(hide = true)]
    Service {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        no_audit: bool,
        /// The address both fronts listen on (port chosen by the system).
        #[arg(long, default_value = "127.0.0.1")]
        listen: String,
    },
    /// (internal) The network-jitter drill's packet delayer: binds an
    /// NFQUEUE in the current network namespace (drill/network.rs).
    #[command(hide = true)]
    Impair {
        #[arg(long)]
        queue: u16,
    },
    /// (internal) Run the bare yardstick server.
    #[command(hide = true)]
    Bare {
        #[arg(long)]
        alg: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum MixKind {
    Steady,
    Burst,
    RotateFlood,
    TenantIsolation,
}

impl MixKind {
    fn as_str(self) -> &'static str {
        match self {
            MixKind::Steady => "steady",
            MixKind::Burst => "burst",
            MixKind::RotateFlood => "rotate-flood",
            MixKind::TenantIsolation => "tenant-isolation",
        }
    }
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "grpc")]
    transport: Transport,
    #[arg(long, value_enum, default_value = "sign")]
    op: Op,
    /// ed25519, ecdsa-p256, ml-dsa-44/65/87 (sign, verify); ml-kem-768/1024
    /// (wrap, unwrap).
    #[arg(long, default_value = "ed25519")]
    alg: String,
    /// Requests in flight (closed loop), or workers (open loop); a
    /// comma-separated list sweeps.
    #[arg(long, default_value = "64", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// gRPC: HTTP/2 connections shared by the workers. HTTP: ignored (one
    /// HTTP/1.1 keep-alive connection per worker, as wrk does).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Open loop: requests per second, latency measured from each
    /// request's due time. Without it the loop is closed.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Bytes per message (sign, verify) or plaintext (wrap, unwrap).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// A load mix instead of one operation (PERFORMANCE.md, "Mixes"):
    /// `steady` 70% sign / 20% verify / 5% wrap / 5% unwrap; `burst` the
    /// same mix in an open loop (needs --rate) at 10x the rate for the
    /// middle fifth of the measured window; `rotate-flood` signing while
    /// the key is rotated --rotate-rate times a second; `tenant-isolation`
    /// two tenants signing, one with 80% of the workers. Sign keys use
    /// --alg, wrap keys ml-kem-768. No yardstick (the bare server holds one
    /// key of one algorithm).
    #[arg(long, value_enum)]
    mix: Option<MixKind>,
    /// rotate-flood: rotations per second (10x a busy rotation rate of 1/s).
    #[arg(long, default_value_t = 10.0)]
    rotate_rate: f64,
    /// Create this many keys (of --alg) and spread the load over them
    /// uniformly (the memory target: 10,000 keys under full load).
    #[arg(long, default_value_t = 1)]
    keys: usize,
    /// Send batch RPCs of this many items instead of single calls (ops/s
    /// counts items, latencies are per batch request).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Also run the bare server and report ratios to it.
    #[arg(long)]
    yardstick: bool,
    /// Run the service with its audit log off (only the bench can).
    #[arg(long)]
    no_audit: bool,
    /// Compare the audit log on and off in this one run: a second service
    /// child runs with the log off, and at each --concurrency N pairs of
    /// runs alternate between the two (on first in odd pairs, off first in
    /// even ones, so a host that drifts favours neither). Prints each
    /// pair's on ÷ off throughput, the median per concurrency, and the
    /// peak ratio (best on ÷ best off over the concurrencies).
    #[arg(long, default_value_t = 0)]
    audit_pairs: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

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

/// The second tenant the service child makes a token for.
const TENANT_B: &str = "bench-b";

/// The child that runs ron-kms: prints its token and addresses, then serves
/// until its stdin closes (the bench exiting closes it).
async fn child_service(
    data_dir: PathBuf,
    no_audit: bool,
    listen: &str,
) -> Result<ExitCode, String> {
    let flags = ron_kms::config::Flags {
        config: None,
        data_dir: Some(data_dir),
        grpc_addr: Some(format!("{listen}:0")),
        http_addr: Some(format!("{listen}:0")),
        amnesia: false,
    };
    let mut cfg =
        ron_kms::config::load(&flags, &ron_kms::config::ProcessEnv).map_err(|e| e.to_string())?;
    cfg.audit.off_for_benchmarks = no_audit;
    let running = ron_kms::server::start(&cfg)
        .await
        .map_err(|e| e.to_string())?;
    // A restart on a used data dir (the kill-9 drill) bootstraps nothing:
    // the caller keeps the tokens it had ("token - -").
    match running.bootstrap_token.clone() {
        Some(token) => {
            // a second tenant, for the tenant-isolation mix
            let other = ron_kms::auth::create_token(
                running.kms.store().as_ref(),
                TENANT_B,
                ron_kms::auth::Scopes::all(),
            )
            .map_err(|e| e.to_string())?;
            running.kms.tokens().reload().map_err(|e| e.to_string())?;
            println!("token {token} {other}");
        }
        None => println!("token - -"),
    }
    println!(
        "grpc http://{} http http://{}",
        running.grpc_addr, running.http_addr
    );
    let _ = std::io::stdout().flush();
    match running.faults.clone() {
        Some(f) => serve_fault_commands(f).await,
        None => wait_for_stdin_eof().await,
    }
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// With fault injection on, the service child's stdin carries the drill's
/// switches, one per line: `down`, `up`, `latency MS`, `errors RATE`,
/// `flap UP_MS DOWN_MS`, `clear`. EOF ends the child.
async fn serve_fault_commands(f: std::sync::Arc<ron_kms::backend::faults::Faults>) {
    let _ = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        while std::io::stdin()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            let w: Vec<&str> = line.split_whitespace().collect();
            let ms = |s: &str| Duration::from_millis(s.parse().unwrap_or(0));
            match w.as_slice() {
                ["down"] => f.set_down(true),
                ["up"] => f.set_down(false),
                ["latency", m] => f.set_latency(ms(m)),
                ["errors", r] => f.set_error_rate(r.parse().unwrap_or(0.0)),
                ["flap", u, d] => f.set_flap(Some((ms(u), ms(d)))),
                ["clear"] => f.clear(),
                _ => eprintln!("kms-bench service: unknown fault command {:?}", line.trim()),
            }
            line.clear();
        }
    })
    .await;
}

async fn child_bare(alg: &str) -> Result<ExitCode, String> {
    let alg = Algorithm::parse(alg).ok_or_else(|| format!("unknown algorithm {alg}"))?;
    let (g, h) = bare::serve(alg).await?;
    println!("token none");
    println!("grpc http://{g} http http://{h}");
    let _ = std::io::stdout().flush();
    wait_for_stdin_eof().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_stdin_eof() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
    })
    .await;
}

/// A server in a child process; killed when dropped.
struct Server {
    child: Child,
    endpoint: Endpoint,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    fn start(
        args: &[&str],
        transport: Transport,
        dir: Option<tempfile::TempDir>,
    ) -> Result<Server, String> {
        Self::start_env(args, &[], transport, dir)
    }

    /// As [`Server::start`], with extra environment for the child.
    fn start_env(
        args: &[&str],
        envs: &[(&str, &str)],
        transport: Transport,
        dir: Option<tempfile::TempDir>,
    ) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.args(args).envs(envs.iter().copied());
        Self::start_cmd(cmd, transport, dir)
    }

    /// As [`Server::start`], with the command made by the caller (a
    /// drill's runs the child in a network namespace).
    fn start_cmd(
        mut cmd: Command,
        transport: Transport,
        dir: Option<tempfile::TempDir>,
    ) -> Result<Server, String> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut next = || -> Result<String, String> {
            lines
                .next()
                .ok_or("the server exited during start-up")?
                .map_err(|e| e.to_string())
        };
        let tokens = next()?;
        let mut tokens = tokens.trim_start_matches("token ").split_whitespace();
        let token = tokens.next().unwrap_or_default().to_string();
        let token_b = tokens.next().map(str::to_string);
        let addrs = next()?;
        let parts: Vec<&str> = addrs.split_whitespace().collect();
        let (grpc, http) = match parts.as_slice() {
            ["grpc", g, "http", h] => (g.to_string(), h.to_string()),
            _ => return Err(format!("unexpected start-up line {addrs:?}")),
        };
        Ok(Server {
            child,
            endpoint: Endpoint {
                transport,
                grpc,
                http,
                token,
                token_b,
            },
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One fault command to a service child started with fault injection.
    fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.child.stdin.as_mut().ok_or("the child has no stdin")?;
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("fault command {line:?}: {e}"))
    }

    /// SIGKILL, and wait for it to be gone.
    fn kill9(&mut self) -> Result<(), String> {
        self.child.kill().map_err(|e| e.to_string())?;
        self.child.wait().map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_auth<T>(m: T, token: &str) -> Result<tonic::Request<T>, String> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "bad token".to_string())?,
    );
    Ok(r)
}

/// Create key `name` (when `create`) and prepare the request `op` repeats
/// against it (a verify's signature and an unwrap's envelope are made here).
async fn prepare(
    mut c: KmsClient<Channel>,
    token: &str,
    op: Op,
    alg: Algorithm,
    name: &str,
    size: usize,
    create: bool,
) -> Result<Work, String> {
    let name = name.to_string();
    if create {
        c.create_key(with_auth(
            CreateKeyRequest {
                name: name.clone(),
                algorithm: alg.as_str().into(),
                ..Default::default()
            },
            token,
        )?)
        .await
        .map_err(|s| format!("create_key: {}", load::grpc_code(&s)))?;
    }
    let message = vec![0x5a; size];
    Ok(match op {
        Op::Sign => Work::Sign(SignRequest {
            context: Vec::new(),
            key: name,
            message,
            op_id: String::new(),
        }),
        Op::Verify => {
            let s = c
                .sign(with_auth(
                    SignRequest {
                        context: Vec::new(),
                        key: name,
                        message: message.clone(),
                        op_id: String::new(),
                    },
                    token,
                )?)
                .await
                .map_err(|s| format!("sign: {}", load::grpc_code(&s)))?
                .into_inner();
            Work::Verify(VerifyRequest {
                context: Vec::new(),
                key: s.kid,
                message,
                signature: s.signature,
            })
        }
        Op::Wrap => Work::Wrap(WrapRequest {
            key: name,
            plaintext: message,
            ..Default::default()
        }),
        Op::Unwrap => {
            let w = c
                .wrap(with_auth(
                    WrapRequest {
                        key: name,
                        plaintext: message,
                        ..Default::default()
                    },
                    token,
                )?)
                .await
                .map_err(|s| format!("wrap: {}", load::grpc_code(&s)))?
                .into_inner();
            Work::Unwrap(UnwrapRequest {
                ciphertext: w.ciphertext,
                ..Default::default()
            })
        }
    })
}

/// Whose token a group's workers present.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tenant {
    A,
    B,
}

/// How many of a run's `concurrency` workers a group gets.
#[derive(Clone, Copy)]
enum Workers {
    /// This fraction of the concurrency (at least one).
    Share(f64),
    Fixed(usize),
}

struct PlanGroup {
    tenant: Tenant,
    workers: Workers,
    entries: Vec<(String, Work, u32)>,
    pace: Pace,
}

/// What one run sends: groups of workers, each with its mix and pace.
struct Plan {
    /// The report's `op`: the operation, or `mix-<name>`.
    name: String,
    groups: Vec<PlanGroup>,
}

impl Plan {
    fn items(&self) -> usize {
        self.groups
            .first()
            .and_then(|g| g.entries.first())
            .map(|e| e.1.items())
            .unwrap_or(1)
    }
}

/// The main group's pace: closed, or open at --rate (with the burst window
/// for the burst mix: the middle fifth of the measured window at 10x).
fn main_pace(a: &RunArgs) -> Pace {
    match a.rate {
        None => Pace::Closed,
        Some(rate) => Pace::Open(Schedule {
            rate,
            burst: (a.mix == Some(MixKind::Burst)).then_some(Burst {
                start: a.warmup + 0.4 * a.duration,
                len: 0.2 * a.duration,
                factor: 10.0,
            }),
        }),
    }
}

/// Create what the run needs on `ep` and plan it. `service` is false for
/// the bare server (one preloaded key: nothing to create).
async fn plan(ep: &Endpoint, a: &RunArgs, alg: Algorithm, service: bool) -> Result<Plan, String> {
    let token = ep.token.as_str();
    let size = a.size;
    let c = load::grpc_clients(ep, 1).await?.remove(0);
    let Some(mix) = a.mix else {
        // one operation, on --keys keys, created 16 at a time
        let mut entries = Vec::new();
        let keys = a.keys.max(1);
        let mut k = 0;
        while k < keys {
            let mut tasks = Vec::new();
            for i in k..(k + 16).min(keys) {
                let name = if i == 0 {
                    format!("bench-{}", alg.as_str())
                } else {
                    format!("bench-{}-{i}", alg.as_str())
                };
                let (c, token, op) = (c.clone(), token.to_string(), a.op);
                tasks.push(tokio::spawn(async move {
                    prepare(c, &token, op, alg, &name, size, service).await
                }));
            }
            k = (k + 16).min(keys);
            for t in tasks {
                let w = t.await.map_err(|e| e.to_string())??;
                entries.push((a.op.as_str().to_string(), w.batch(a.batch), 1));
            }
            if keys > 1 && k % 1000 == 0 && !a.quiet {
                eprintln!("  {k} keys created");
            }
        }
        return Ok(Plan {
            name: a.op.as_str().into(),
            groups: vec![PlanGroup {
                tenant: Tenant::A,
                workers: Workers::Share(1.0),
                entries,
                pace: main_pace(a),
            }],
        });
    };
    let sign = format!("bench-{}", alg.as_str());
    let kem = Algorithm::MlKem768;
    let wrap = "bench-wrap".to_string();
    let groups = match mix {
        MixKind::Steady | MixKind::Burst => {
            let mut entries = vec![(
                "sign".to_string(),
                prepare(c.clone(), token, Op::Sign, alg, &sign, size, true).await?,
                70,
            )];
            entries.push((
                "verify".into(),
                prepare(c.clone(), token, Op::Verify, alg, &sign, size, false).await?,
                20,
            ));
            entries.push((
                "wrap".into(),
                prepare(c.clone(), token, Op::Wrap, kem, &wrap, size, true).await?,
                5,
            ));
            entries.push((
                "unwrap".into(),
                prepare(c.clone(), token, Op::Unwrap, kem, &wrap, size, false).await?,
                5,
            ));
            vec![PlanGroup {
                tenant: Tenant::A,
                workers: Workers::Share(1.0),
                entries,
                pace: main_pace(a),
            }]
        }
        MixKind::RotateFlood => {
            let w = prepare(c.clone(), token, Op::Sign, alg, &sign, size, true).await?;
            vec![
                PlanGroup {
                    tenant: Tenant::A,
                    workers: Workers::Share(1.0),
                    entries: vec![("sign".into(), w, 1)],
                    pace: main_pace(a),
                },
                PlanGroup {
                    tenant: Tenant::A,
                    workers: Workers::Fixed(1),
                    entries: vec![(
                        "rotate".into(),
                        Work::Rotate(RotateKeyRequest {
                            name: sign.clone(),
                            ..Default::default()
                        }),
                        1,
                    )],
                    pace: Pace::Open(Schedule {
                        rate: a.rotate_rate,
                        burst: None,
                    }),
                },
            ]
        }
        MixKind::TenantIsolation => {
            let b = ep
                .token_b
                .as_deref()
                .ok_or("the server gave no second tenant token")?;
            let wa = prepare(c.clone(), token, Op::Sign, alg, &sign, size, true).await?;
            let wb = prepare(c.clone(), b, Op::Sign, alg, &sign, size, true).await?;
            vec![
                PlanGroup {
                    tenant: Tenant::A,
                    workers: Workers::Share(0.8),
                    entries: vec![("tenant-a:sign".into(), wa, 1)],
                    pace: main_pace(a),
                },
                PlanGroup {
                    tenant: Tenant::B,
                    workers: Workers::Share(0.2),
                    entries: vec![("tenant-b:sign".into(), wb, 1)],
                    pace: main_pace(a),
                },
            ]
        }
    };
    Ok(Plan {
        name: format!("mix-{}", mix.as_str()),
        groups,
    })
}

/// One measured run of `plan` against `srv` at `conc` workers.
async fn measure(
    srv: &Server,
    a: &RunArgs,
    plan: &Plan,
    conc: usize,
    role: &str,
) -> Result<RunReport, String> {
    let ep = &srv.endpoint;
    let shared = match ep.transport {
        Transport::Grpc => load::grpc_clients(ep, a.connections).await?,
        Transport::Http => Vec::new(),
    };
    let mut groups = Vec::new();
    let mut made = 0usize;
    let mut workers_total = 0usize;
    for g in &plan.groups {
        let token = match g.tenant {
            Tenant::A => ep.token.clone(),
            Tenant::B => ep.token_b.clone().unwrap_or_default(),
        };
        let n = match g.workers {
            Workers::Share(f) => ((conc as f64 * f).round() as usize).max(1),
            Workers::Fixed(n) => n,
        };
        if matches!(g.workers, Workers::Share(_)) {
            workers_total += n;
        }
        let mut clients = Vec::new();
        for _ in 0..n {
            clients.push(match ep.transport {
                Transport::Grpc => Client::grpc(shared[made % shared.len()].clone(), &token)?,
                Transport::Http => Client::http(ep, &token).await?,
            });
            made += 1;
        }
        groups.push(Group {
            clients,
            mix: Mix::new(g.entries.clone()),
            pace: g.pace,
        });
    }
    let (warmup, duration) = (
        Duration::from_secs_f64(a.warmup),
        Duration::from_secs_f64(a.duration),
    );
    // /proc readings: at the start and end of the measured window, and the
    // server's RSS every 100 ms in between
    let pid = srv.pid();
    let sampler = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        let s0 = proc_sample(pid).unwrap_or_default();
        let c0 = proc_sample(std::process::id()).unwrap_or_default();
        let t0 = Instant::now();
        let mut peak = s0.rss_kib;
        while t0.elapsed() < duration {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(s) = proc_sample(pid) {
                peak = peak.max(s.rss_kib);
            }
        }
        let s1 = proc_sample(pid).unwrap_or_default();
        let c1 = proc_sample(std::process::id()).unwrap_or_default();
        let secs = t0.elapsed().as_secs_f64();
        (
            (s1.cpu_seconds - s0.cpu_seconds) / secs,
            (c1.cpu_seconds - c0.cpu_seconds) / secs,
            peak,
        )
    });
    let (outcome, window) = load::run(
        groups,
        warmup,
        duration,
        !a.quiet && std::io::stderr().is_terminal(),
    )
    .await;
    let (server_cpu, client_cpu, peak_kib) = sampler.await.map_err(|e| e.to_string())?;
    let secs = window.as_secs_f64();
    let parts: Vec<PartReport> = if outcome.parts.len() > 1 {
        outcome
            .parts
            .iter()
            .map(|(label, t)| PartReport::of(label, t, secs))
            .collect()
    } else {
        Vec::new()
    };
    let tenant_p95: Vec<u64> = parts
        .iter()
        .filter(|p| p.label.starts_with("tenant-"))
        .map(|p| p.p95_us)
        .collect();
    let tenant_p95_skew = (tenant_p95.len() > 1).then(|| {
        let max = *tenant_p95.iter().max().unwrap_or(&1) as f64;
        let min = (*tenant_p95.iter().min().unwrap_or(&1)).max(1) as f64;
        max / min
    });
    let total = PartReport::of(&plan.name, &outcome.total, secs);
    let ops = total.ops_per_sec;
    Ok(RunReport {
        server: role.into(),
        transport: ep.transport.as_str().into(),
        op: plan.name.clone(),
        alg: a.alg.clone(),
        mode: if a.rate.is_some() { "open" } else { "closed" }.into(),
        concurrency: workers_total,
        batch: plan.items(),
        keys: a.keys.max(1),
        connections: if ep.transport == Transport::Grpc {
            a.connections
        } else {
            made
        },
        rate: a.rate,
        audit: role == "service" && !a.no_audit,
        seconds: secs,
        requests: total.requests,
        ok: total.ok,
        errors: total.errors,
        ops_per_sec: ops,
        p50_us: total.p50_us,
        p95_us: total.p95_us,
        p99_us: total.p99_us,
        max_us: total.max_us,
        server_cpu_cores: server_cpu,
        server_cpu_us_per_op: if ops > 0.0 {
            server_cpu * 1e6 / ops
        } else {
            0.0
        },
        client_cpu_cores: client_cpu,
        server_peak_rss_mib: peak_kib as f64 / 1024.0,
        parts,
        tenant_p95_skew,
    })
}

/// [`raw_crypto`] on `threads` threads at once, summed: the ceiling for the
/// whole machine (the load generator shares it in a real run).
fn raw_crypto_all_cores(a: &RunArgs, alg: Algorithm, threads: usize) -> Result<f64, String> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| raw_crypto(a, alg)))
            .collect();
        let mut sum = 0.0;
        for h in hs {
            sum += h.join().map_err(|_| "raw crypto thread panicked")??;
        }
        Ok(sum)
    })
}

/// Single-core ops/s of the raw crypto (a preloaded key, no server), for
/// one second: the ceiling no server on one core can beat.
fn raw_crypto(a: &RunArgs, alg: Algorithm) -> Result<f64, String> {
    let b = bare::Bare::new(alg)?;
    let msg = vec![0x5a; a.size];
    let sig = if matches!(a.op, Op::Verify | Op::Sign) {
        b.sign_bytes(&msg)?
    } else {
        Vec::new()
    };
    let ct = if a.op == Op::Unwrap {
        b.wrap_bytes(&msg)?
    } else {
        Vec::new()
    };
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(1) {
        for _ in 0..16 {
            match a.op {
                Op::Sign => drop(b.sign_bytes(&msg)?),
                Op::Verify => drop(b.verify_bytes(&msg, &sig)?),
                Op::Wrap => drop(b.wrap_bytes(&msg)?),
                Op::Unwrap => drop(b.unwrap_bytes(&ct)?),
            }
            n += 1;
        }
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

#[derive(Serialize)]
struct Ratio {
    transport: String,
    op: String,
    alg: String,
    concurrency: usize,
    batch: usize,
    /// service ops/s ÷ bare ops/s
    throughput: f64,
    /// service p95 ÷ bare p95
    p95: f64,
    /// service p99 ÷ bare p99
    p99: f64,
    /// service server-CPU per operation ÷ bare's
    cpu_per_op: f64,
}

/// One alternating pair of `--audit-pairs`.
#[derive(Serialize)]
struct AuditPair {
    concurrency: usize,
    pair: usize,
    on_ops_per_sec: f64,
    off_ops_per_sec: f64,
    /// on ÷ off throughput
    ratio: f64,
    on_server_cpu_us_per_op: f64,
    off_server_cpu_us_per_op: f64,
    on_client_cpu_cores: f64,
    off_client_cpu_cores: f64,
}

/// The pairs at one concurrency.
#[derive(Serialize)]
struct AuditSummary {
    concurrency: usize,
    pairs: usize,
    median_ratio: f64,
    min_ratio: f64,
    max_ratio: f64,
    median_on_ops_per_sec: f64,
    median_off_ops_per_sec: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The service with its audit log off, for `--audit-pairs`.
struct OffService {
    server: Server,
    args: RunArgs,
    plan: Plan,
}

/// `--audit-pairs` at one concurrency: alternating runs against the
/// service with the log on and the one with it off.
async fn audit_pairs(
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
            for (code, n) in &s.errors {
                println!("  audit {label} errors: {code} x{n}");
            }
        }
        let ratio = s_on.ops_per_sec / s_off.ops_per_sec.max(f64::MIN_POSITIVE);
        println!("  pair {i}: audit on / off throughput {ratio:.3}");
        pairs.push(AuditPair {
            concurrency: conc,
            pair: i,
            on_ops_per_sec: s_on.ops_per_sec,
            off_ops_per_sec: s_off.ops_per_sec,
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
fn audit_peak(summaries: &[AuditSummary]) -> Option<(f64, usize, usize)> {
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
struct Report {
    tool: &'static str,
    version: &'static str,
    host: String,
    cpus: usize,
    commit: String,
    date: String,
    raw_crypto_ops_per_sec_single_core: f64,
    /// The same loop on every core at once (one thread per core).
    raw_crypto_ops_per_sec_all_cores: f64,
    /// The service's RSS right after start-up, before any key or load.
    service_idle_rss_mib: f64,
    /// The service's custody (`KMS_BACKEND`, which the child inherits).
    backend: String,
    runs: Vec<RunReport>,
    ratios: Vec<Ratio>,
    /// `--audit-pairs`: every pair, the median per concurrency, and the
    /// peak ratio (best on ÷ best off).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    audit_pairs: Vec<AuditPair>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    audit_summary: Vec<AuditSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_peak_ratio: Option<f64>,
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
    let service = Server::start(&svc_args, a.transport, Some(dir))?;
    let idle_rss_mib = proc_sample(service.pid())
        .map(|s| s.rss_kib as f64 / 1024.0)
        .unwrap_or(0.0);
    let svc_plan = plan(&service.endpoint, &a, alg, true).await?;
    let bare = if a.yardstick {
        let b = Server::start(&["bare", "--alg", alg.as_str()], a.transport, None)?;
        let mut one = a.clone();
        one.keys = 1;
        let p = plan(&b.endpoint, &one, alg, false).await?;
        Some((b, p))
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
                s.ops_per_sec / raw_all.max(f64::MIN_POSITIVE)
            );
        }
        if let Some((b, p)) = &bare {
            let y = measure(b, &a, p, conc, "bare").await?;
            println!("{}", y.row());
            let r = Ratio {
                transport: s.transport.clone(),
                op: s.op.clone(),
                alg: s.alg.clone(),
                concurrency: conc,
                batch: s.batch,
                throughput: s.ops_per_sec / y.ops_per_sec.max(f64::MIN_POSITIVE),
                p95: s.p95_us as f64 / (y.p95_us.max(1)) as f64,
                p99: s.p99_us as f64 / (y.p99_us.max(1)) as f64,
                cpu_per_op: s.server_cpu_us_per_op / y.server_cpu_us_per_op.max(f64::MIN_POSITIVE),
            };
            println!(
                "  ratio service/bare: throughput {:.3}, p95 {:.3}, p99 {:.3}, CPU per op {:.3}",
                r.throughput, r.p95, r.p99, r.cpu_per_op
            );
            ratios.push(r);
            runs.push(y);
        }
        for (code, n) in &s.errors {
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
        backend: std::env::var("KMS_BACKEND").unwrap_or_else(|_| "sealed-file".into()),
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

fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn commit() -> String {
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

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
