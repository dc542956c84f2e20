//! A bad-token flood against a real `ron-kms serve` (a child process), and
//! what a legitimate tenant's signing sees meanwhile: issue 28's check that
//! strangers cost bounded disk and CPU (docs/audit.md, "Refused
//! authentications").
//!
//! ```sh
//! cargo build --release --bin ron-kms --example auth_flood
//! target/release/examples/auth_flood [flood req/s, default 10000] [flood seconds, default 60] [alone seconds, default 20] [signs/s, default 500]
//! ```
//!
//! Phase 1 signs alone (gRPC from 127.0.0.1, open loop at the given rate,
//! latency from each request's due time); phase 2 signs the same way while
//! HTTP requests with random bad tokens come from 127.0.0.2 at the flood
//! rate. Prints both phases' p50/p99, their ratio, the flood's answers by
//! status, and how many bytes and `authenticate` records the audit log
//! grew by. `RON_KMS_BIN` names the server binary (default
//! `target/release/ron-kms`).
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::{CreateKeyRequest, SignRequest};

/// The audit log's size, and the count and bytes of its refused
/// authentications' records.
fn audit_bytes(dir: &std::path::Path) -> (u64, u64, u64) {
    let (mut bytes, mut refusals, mut refusal_bytes) = (0, 0, 0);
    for p in ron_kms::audit::chain::segments(dir).unwrap() {
        let text = std::fs::read(&p).unwrap();
        let content = ron_kms::audit::chain::content(&text);
        bytes += content.len() as u64;
        for l in String::from_utf8_lossy(content).lines() {
            if l.contains("\"result\":\"unauthenticated\"") {
                refusals += 1;
                refusal_bytes += l.len() as u64 + 1;
            }
        }
    }
    (bytes, refusals, refusal_bytes)
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

/// Sign at `rate` per second for `secs` from 16 workers; latencies from
/// each request's due time.
async fn sign_for(
    c: KmsClient<tonic::transport::Channel>,
    auth: &str,
    rate: f64,
    secs: f64,
) -> Vec<Duration> {
    let start = Instant::now();
    let n = (rate * secs) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (mut c, next, auth) = (c.clone(), next.clone(), auth.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break lat;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let mut r = tonic::Request::new(SignRequest {
                    key: "k".into(),
                    message: i.to_le_bytes().to_vec(),
                    ..Default::default()
                });
                r.metadata_mut()
                    .insert("authorization", auth.parse().unwrap());
                c.sign(r).await.expect("the tenant's sign");
                lat.push(due.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: f64| args.get(i).and_then(|x| x.parse().ok()).unwrap_or(d);
    let (flood_rate, flood_secs, alone_secs, sign_rate) =
        (arg(1, 10_000.0), arg(2, 60.0), arg(3, 20.0), arg(4, 500.0));
    let bin = std::env::var("RON_KMS_BIN").unwrap_or_else(|_| "target/release/ron-kms".into());
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut child = Command::new(&bin)
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr"])
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(&data)
        .env("KMS_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    let (mut grpc, mut http, mut token) = (String::new(), String::new(), String::new());
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(path) = line
            .split(" token in ")
            .nth(1)
            .and_then(|r| r.split(" (mode 0600").next())
        {
            token = std::fs::read_to_string(path).unwrap().trim().to_string();
        }
        if let Some(rest) = line.split(" serving gRPC on ").nth(1) {
            let mut parts = rest.split_whitespace();
            grpc = parts.next().unwrap().to_string();
            http = parts.nth(3).unwrap().to_string();
            break;
        }
    }
    let auth = format!("Bearer {token}");
    let mut c = KmsClient::connect(format!("http://{grpc}")).await.unwrap();
    let mut r = tonic::Request::new(CreateKeyRequest {
        name: "k".into(),
        algorithm: "ed25519".into(),
        ..Default::default()
    });
    r.metadata_mut()
        .insert("authorization", auth.parse().unwrap());
    c.create_key(r).await.unwrap();
    let audit = data.join("audit");

    let server = child.id().to_string();
    let (s0, g0) = (cpu_seconds(&server), cpu_seconds("self"));
    let mut alone = sign_for(c.clone(), &auth, sign_rate, alone_secs).await;
    let (s1, g1) = (cpu_seconds(&server), cpu_seconds("self"));
    let (before, refusals_before, rbytes_before) = audit_bytes(&audit);

    let stranger = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let url = format!("http://{http}/v1/kms/sign");
    let started = Instant::now();
    let n = (flood_rate * flood_secs) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let codes: Arc<[AtomicU64; 6]> = Arc::new(Default::default());
    let mut flood = Vec::new();
    for _ in 0..64 {
        let (stranger, url, next, codes) =
            (stranger.clone(), url.clone(), next.clone(), codes.clone());
        flood.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let due = started + Duration::from_secs_f64(i as f64 / flood_rate);
                tokio::time::sleep_until(due.into()).await;
                let r = stranger
                    .post(&url)
                    .bearer_auth(format!("rkms_guess{i:039}"))
                    .header("content-type", "application/json")
                    .body(&br#"{"key":"k","message":"eA=="}"#[..])
                    .send()
                    .await;
                let slot = match r.map(|r| r.status().as_u16()) {
                    Ok(401) => 0,
                    Ok(429) => 1,
                    Ok(200) => 2,
                    Ok(_) => 3,
                    Err(_) => 4,
                };
                codes[slot].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut during = sign_for(c.clone(), &auth, sign_rate, flood_secs).await;
    for f in flood {
        f.await.unwrap();
    }
    let flood_elapsed = started.elapsed().as_secs_f64();
    let (s2, g2) = (cpu_seconds(&server), cpu_seconds("self"));
    // the aggregate records of the last interval are written within 10 s
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (after, refusals_after, rbytes_after) = audit_bytes(&audit);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let sent: u64 = codes.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let (a50, a99) = (quantile(&mut alone, 0.5), quantile(&mut alone, 0.99));
    let (d50, d99) = (quantile(&mut during, 0.5), quantile(&mut during, 0.99));
    println!(
        "flood: {sent} bad-token requests in {flood_elapsed:.1} s ({:.0}/s): 401 {}, 429 {}, other {}, errors {}",
        sent as f64 / flood_elapsed,
        codes[0].load(Ordering::Relaxed),
        codes[1].load(Ordering::Relaxed),
        codes[2].load(Ordering::Relaxed) + codes[3].load(Ordering::Relaxed),
        codes[4].load(Ordering::Relaxed),
    );
    println!(
        "audit log during the flood: +{} bytes in all (the tenant's signs included); +{} unauthenticated records, {} bytes",
        after - before,
        refusals_after - refusals_before,
        rbytes_after - rbytes_before
    );
    println!(
        "CPU (cores busy): alone server {:.2}, this load generator {:.2}; during the flood server {:.2}, load generator {:.2}",
        (s1 - s0) / alone_secs,
        (g1 - g0) / alone_secs,
        (s2 - s1) / flood_elapsed,
        (g2 - g1) / flood_elapsed
    );
    println!(
        "sign at {sign_rate}/s alone: p50 {:.2} ms p99 {:.2} ms; during the flood: p50 {:.2} ms p99 {:.2} ms; p99 ratio {:.2}",
        a50.as_secs_f64() * 1e3,
        a99.as_secs_f64() * 1e3,
        d50.as_secs_f64() * 1e3,
        d99.as_secs_f64() * 1e3,
        d99.as_secs_f64() / a99.as_secs_f64()
    );
}
