//! The command line: `run`, `drill`, and the hidden child commands.
use super::*;

#[derive(Parser)]
#[command(
    name = "kms-bench",
    version,
    about = "Load generator and yardstick for ron-kms"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
pub(crate) enum BackendArg {
    SealedFile,
    Pkcs11,
}

impl BackendArg {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BackendArg::SealedFile => "sealed-file",
            BackendArg::Pkcs11 => "pkcs11",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum MixKind {
    Steady,
    Burst,
    RotateFlood,
    TenantIsolation,
}

impl MixKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MixKind::Steady => "steady",
            MixKind::Burst => "burst",
            MixKind::RotateFlood => "rotate-flood",
            MixKind::TenantIsolation => "tenant-isolation",
        }
    }
}

#[derive(clap::Args, Clone)]
pub(crate) struct RunArgs {
    #[arg(long, value_enum, default_value = "grpc")]
    pub(crate) transport: Transport,
    #[arg(long, value_enum, default_value = "sign")]
    pub(crate) op: Op,
    /// ed25519, ecdsa-p256, ml-dsa-44/65/87 (sign, verify); ml-kem-768/1024
    /// (wrap, unwrap).
    #[arg(long, default_value = "ed25519")]
    pub(crate) alg: String,
    /// Requests in flight (closed loop), or workers (open loop); a
    /// comma-separated list sweeps.
    #[arg(long, default_value = "64", value_delimiter = ',')]
    pub(crate) concurrency: Vec<usize>,
    /// gRPC: HTTP/2 connections shared by the workers. HTTP: ignored (one
    /// HTTP/1.1 keep-alive connection per worker, as wrk does).
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    /// Open loop: requests per second, latency measured from each
    /// request's due time. Without it the loop is closed.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) warmup: f64,
    /// Bytes per message (sign, verify) or plaintext (wrap, unwrap).
    #[arg(long, default_value_t = 32)]
    pub(crate) size: usize,
    /// Sign and verify a digest instead of a message (docs/api.md,
    /// "Signing a digest"): SHA-256 for ecdsa-p256, μ for ml-dsa-*, the
    /// SHA-512 pre-hash for the hybrid. Not with --mix.
    #[arg(long, conflicts_with = "mix")]
    pub(crate) digest: bool,
    /// A load mix instead of one operation (PERFORMANCE.md, "Mixes"):
    /// `steady` 70% sign / 20% verify / 5% wrap / 5% unwrap; `burst` the
    /// same mix in an open loop (needs --rate) at 10x the rate for the
    /// middle fifth of the measured window; `rotate-flood` signing while
    /// the key is rotated --rotate-rate times a second; `tenant-isolation`
    /// two tenants signing, one with 80% of the workers. Sign keys use
    /// --alg, wrap keys ml-kem-768. No yardstick (the bare server holds one
    /// key of one algorithm).
    #[arg(long, value_enum)]
    pub(crate) mix: Option<MixKind>,
    /// rotate-flood: rotations per second (10x a busy rotation rate of 1/s).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rotate_rate: f64,
    /// Create this many keys (of --alg) and spread the load over them
    /// uniformly (the memory target: 10,000 keys under full load).
    #[arg(long, default_value_t = 1)]
    pub(crate) keys: usize,
    /// Send batch RPCs of this many items instead of single calls (ops/s
    /// counts items, latencies are per batch request).
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: usize,
    /// Also run the yardstick and report ratios to it: the bare server for
    /// sealed-file; for `--backend pkcs11`, signing directly through
    /// cryptoki with the service's own token key (sign), or a sealed-file
    /// service (verify, which never touches the token).
    #[arg(long)]
    pub(crate) yardstick: bool,
    /// Custody of the service under test: `sealed-file` (the default), or
    /// `pkcs11` on a fresh SoftHSM2 token made for the run.
    #[arg(long, value_enum, default_value = "sealed-file")]
    pub(crate) backend: BackendArg,
    /// `--backend pkcs11`: the sessions the service pools, which is also
    /// the direct yardstick's thread count (default: the service's own
    /// default for this machine).
    #[arg(long)]
    pub(crate) pkcs11_sessions: Option<usize>,
    /// Run the service with its audit log off (only the bench can).
    #[arg(long)]
    pub(crate) no_audit: bool,
    /// Compare the audit log on and off in this one run: a second service
    /// child runs with the log off, and at each --concurrency N pairs of
    /// runs alternate between the two (on first in odd pairs, off first in
    /// even ones, so a host that drifts favours neither). Prints each
    /// pair's on ÷ off throughput, the median per concurrency, and the
    /// peak ratio (best on ÷ best off over the concurrencies).
    #[arg(long, default_value_t = 0)]
    pub(crate) audit_pairs: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub(crate) quiet: bool,
}
