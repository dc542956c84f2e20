//! What auditing costs: Ed25519 sign throughput over gRPC with the audit log
//! on (files, group commit, fsync per batch) and off, measured in the same
//! run on the same machine, alternating on/off so noise hits both.
//!
//! ```sh
//! cargo run --release --example audit_overhead -- [seconds per round, default 5] [requests in flight, default 64] [rounds, default 5]
//! ```
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ron_kms::config::Config;
use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::{CreateKeyRequest, SignRequest};
use tonic::metadata::MetadataValue;

const CONNECTIONS: usize = 4;

#[path = "common/cpu.rs"]
mod cpu;
use cpu::cpu_seconds;

/// One round: (operations per second, CPU microseconds per operation).
async fn round(audit_on: bool, memory: bool, secs: u64, in_flight: usize) -> (f64, f64) {
    let dir = tempfile_dir();
    let mut cfg = Config::for_data_dir(&dir.join("data"));
    cfg.grpc_addr = "127.0.0.1:0".parse().unwrap();
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.audit.off_for_benchmarks = !audit_on;
    cfg.amnesia = memory;
    let r = ron_kms::server::start(&cfg).await.unwrap();
    let auth: MetadataValue<_> = format!("Bearer {}", r.bootstrap_token.clone().unwrap())
        .parse()
        .unwrap();
    let addr = format!("http://{}", r.grpc_addr);
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(KmsClient::connect(addr.clone()).await.unwrap());
    }
    let mut req = tonic::Request::new(CreateKeyRequest {
        name: "k".into(),
        algorithm: "ed25519".into(),
        ..Default::default()
    });
    req.metadata_mut().insert("authorization", auth.clone());
    clients[0].create_key(req).await.unwrap();

    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..in_flight {
        let mut c = clients[i % CONNECTIONS].clone();
        let (auth, done) = (auth.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let mut r = tonic::Request::new(SignRequest {
                    context: Vec::new(),
                    key: "k".into(),
                    message: b"benchmark".to_vec(),
                    op_id: String::new(),
                    ..Default::default()
                });
                r.metadata_mut().insert("authorization", auth.clone());
                c.sign(r).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed) as f64;
    let rate = n / start.elapsed().as_secs_f64();
    let cpu_us = (cpu_seconds() - cpu0) * 1e6 / n.max(1.0);
    r.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    (rate, cpu_us)
}

fn tempfile_dir() -> std::path::PathBuf {
    let mut b = [0u8; 8];
    ron_kms::crypto::random_bytes(&mut b).unwrap();
    let d = std::env::temp_dir().join(format!("ron-kms-bench-{}", hex::encode(b)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let in_flight: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let pairs: usize = std::env::args()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let (mut on, mut off, mut mem) = (Vec::new(), Vec::new(), Vec::new());
    // For profiling one configuration: RON_KMS_BENCH_ONLY=off|on|memory.
    let only = std::env::var("RON_KMS_BENCH_ONLY").unwrap_or_default();
    let want = |m: &str| only.is_empty() || only == m;
    for _ in 0..pairs {
        if want("off") {
            off.push(round(false, false, secs, in_flight).await);
        }
        if want("on") {
            on.push(round(true, false, secs, in_flight).await);
        }
        if want("memory") {
            mem.push(round(true, true, secs, in_flight).await);
        }
    }
    println!(
        "host {} | {} | {CONNECTIONS} connections, {in_flight} in flight, {pairs} x {secs} s rounds each, alternating",
        hostname(),
        date()
    );
    let rates = |v: &[(f64, f64)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
    let cpus = |v: &[(f64, f64)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
    let show = |name: &str, v: &[(f64, f64)]| {
        println!(
            "{name:<28} median {:>7.0} ops/s {:>6.1} CPU us/op  rounds {:?}",
            median(&rates(v)),
            median(&cpus(v)),
            rates(v).iter().map(|x| x.round()).collect::<Vec<_>>()
        )
    };
    show("audit off", &off);
    show("audit on (files, fsync)", &on);
    show("audit in memory (no fsync)", &mem);
    // The host is shared and noisy: compare each round with the audit-off
    // round that ran just before it, and report the median of those ratios.
    let ratios =
        |v: &[(f64, f64)]| -> Vec<f64> { v.iter().zip(&off).map(|(x, o)| x.0 / o.0).collect() };
    // CPU per operation is steadier than throughput on a shared host (time
    // stolen by neighbours is not charged to us): off/on is the throughput
    // ratio a CPU-bound server would see.
    let cpu_ratios =
        |v: &[(f64, f64)]| -> Vec<f64> { v.iter().zip(&off).map(|(x, o)| o.1 / x.1).collect() };
    let r3 = |v: Vec<f64>| {
        v.iter()
            .map(|r| (r * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    };
    for (name, v) in [("on/off", &on), ("in-memory/off", &mem)] {
        println!(
            "ratio {name}: throughput median {:.3} {:?}; CPU-per-op (off/on) median {:.3} {:?}",
            median(&ratios(v)),
            r3(ratios(v)),
            median(&cpu_ratios(v)),
            r3(cpu_ratios(v)),
        );
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn date() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%MZ")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
