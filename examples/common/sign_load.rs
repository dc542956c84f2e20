//! Closed-loop signing load for the custody benchmarks: `inflight`
//! requests kept in flight for `secs`, through the in-process service API
//! or over gRPC on loopback; each returns signatures per second.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use ron_kms::auth::Caller;
use ron_kms::config::Config;
use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::{CreateKeyRequest, SignRequest};
use ron_kms::server::Running;
use ron_kms::service::KmsService;

/// A started server with an ECDSA P-256 key named `p256`, and the
/// bootstrap token and caller to sign with.
pub struct Served {
    pub running: Running,
    pub token: String,
    pub kms: Arc<KmsService>,
    pub caller: Caller,
}

/// `[SECONDS [ROUNDS]]` from the command line (3 s, 5 rounds), and a fresh
/// scratch directory for benchmark `name`.
pub fn args_and_dir(name: &str) -> (f64, usize, PathBuf) {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("ron-kms-{name}-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (secs, rounds, dir)
}

/// The run's first line: what, where (host, cores), audit, lengths.
pub fn print_header(what: &str, cfg: &Config, secs: f64, rounds: usize) {
    let audit = if cfg.audit.off_for_benchmarks {
        "off"
    } else {
        "on"
    };
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    println!(
        "# {what}; host {} ({} cpus); audit {audit}; {secs} s per run, {rounds} rounds",
        host.trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
}

/// The benchmarks' runtime: two workers, as the service's own default on
/// this 2-core host.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A config on `data` with both fronts on loopback ephemeral ports; the
/// audit log off with `RON_KMS_BENCH_AUDIT=off` (to see its share).
pub fn bench_config(data: &Path) -> Config {
    let mut cfg = Config::for_data_dir(data);
    cfg.grpc_addr = "127.0.0.1:0".parse().unwrap();
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    let audit = std::env::var("RON_KMS_BENCH_AUDIT").unwrap_or_else(|_| "on".into());
    cfg.audit.off_for_benchmarks = audit == "off";
    cfg
}

/// Start ron-kms on `cfg` and create the `p256` key.
pub fn start_with_p256(rt: &Runtime, cfg: &Config) -> Served {
    let running = rt.block_on(ron_kms::server::start(cfg)).unwrap();
    let token = running.bootstrap_token.clone().unwrap();
    let kms = running.kms.clone();
    let caller = rt
        .block_on(kms.authenticate(Some(&format!("Bearer {token}")), "bench".into()))
        .unwrap();
    rt.block_on(kms.create_key(
        &caller,
        CreateKeyRequest {
            name: "p256".into(),
            algorithm: "ecdsa-p256".into(),
            ..Default::default()
        },
    ))
    .unwrap();
    Served {
        running,
        token,
        kms,
        caller,
    }
}

fn request(key: &str, msg: &[u8]) -> SignRequest {
    SignRequest {
        context: Vec::new(),
        key: key.into(),
        message: msg.to_vec(),
        op_id: String::new(),
        ..Default::default()
    }
}

/// `KmsService::sign` with the `p256` key (no transport): ops/s.
pub fn service(served: &Served, rt: &Runtime, msg: &[u8], inflight: usize, secs: f64) -> f64 {
    let (kms, caller, key) = (&served.kms, &served.caller, "p256");
    rt.block_on(async {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..inflight {
            let (kms, caller, done) = (kms.clone(), caller.clone(), done.clone());
            let req = request(key, msg);
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let r = kms.sign(&caller, req.clone()).await.unwrap();
                    assert!(!r.signature.is_empty());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
    })
}

/// The same over gRPC, one connection per request in flight: ops/s.
pub fn grpc(served: &Served, rt: &Runtime, msg: &[u8], inflight: usize, secs: f64) -> f64 {
    let (token, key) = (&served.token, "p256");
    rt.block_on(async {
        let addr = format!("http://{}", served.running.grpc_addr);
        let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..inflight {
            let mut c = KmsClient::connect(addr.clone()).await.unwrap();
            let (auth, done) = (auth.clone(), done.clone());
            let req = request(key, msg);
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let mut r = tonic::Request::new(req.clone());
                    r.metadata_mut().insert("authorization", auth.clone());
                    c.sign(r).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
    })
}
