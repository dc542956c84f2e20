//! The audit pipeline alone, without gRPC: tasks in a closed loop, each
//! doing `signs` Ed25519 signatures (ring, a preloaded key) as its "work" and
//! then appending one record and waiting until it is durable. Reports ops/s,
//! the process's CPU in cores, and CPU microseconds per operation, so the
//! cost of the audit log (`dir` or `mem`) can be compared with `off` on the
//! same machine in the same minute.
//!
//! ```sh
//! cargo run --release --example audit_pipe -- [dir|write|mem|off] [tasks, default 64] [seconds, default 5] [signs per op, default 2]
//! ```
//!
//! `dir` writes a real log (group commit, fdatasync per batch) under the
//! temp dir and removes it afterwards; `write` does the same with
//! `KMS_AUDIT_SYNC=write` (no fdatasync before the answer, one in the
//! background every 100 ms); `mem` keeps it in memory (amnesia).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::signature::{Ed25519KeyPair, KeyPair as _};
use ron_kms::audit::{AuditLog, AuditSync, Event, Options, Signer, Sink};

#[path = "common/cpu.rs"]
mod cpu;
use cpu::cpu_seconds;

fn key() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|x| x.parse().ok()).unwrap_or(d);
    let mode = args.get(1).cloned().unwrap_or_else(|| "dir".into());
    let (tasks, secs, signs) = (arg(2, 64) as usize, arg(3, 5), arg(4, 2) as usize);
    let dir = std::env::temp_dir().join(format!("ron-kms-audit-pipe-{}", std::process::id()));
    let sink = match mode.as_str() {
        "dir" | "write" => Sink::Dir(dir.clone()),
        "mem" => Sink::Memory,
        "off" => Sink::Off,
        other => panic!("mode {other}: dir, write, mem or off"),
    };
    let sync = if mode == "write" {
        AuditSync::Write {
            interval: ron_kms::audit::DEFAULT_SYNC_INTERVAL,
        }
    } else {
        AuditSync::Fsync
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let audit_key = Arc::new(key());
        let public = audit_key.public_key().as_ref().to_vec();
        let signer: Signer = Arc::new(move |m: &[u8]| Ok(audit_key.sign(m).as_ref().to_vec()));
        let opts = Options {
            sink,
            node: "node-1".into(),
            checkpoint_interval: ron_kms::audit::DEFAULT_CHECKPOINT_INTERVAL,
            max_file_bytes: ron_kms::audit::DEFAULT_MAX_FILE_BYTES,
            min_free_bytes: ron_kms::audit::DEFAULT_MIN_FREE_BYTES,
            input_key: ron_kms::audit::InputKey::random(),
            sync,
        };
        let log = tokio::task::spawn_blocking(move || AuditLog::start_blocking(opts, &public, signer))
            .await
            .unwrap()
            .unwrap();
        let work = Arc::new(key());
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let cpu0 = cpu_seconds();
        let deadline = start + Duration::from_secs(secs);
        let mut handles = Vec::new();
        for i in 0..tasks {
            let (log, done, work) = (log.clone(), done.clone(), work.clone());
            handles.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    for _ in 0..signs {
                        std::hint::black_box(work.sign(b"message"));
                    }
                    let e = Event {
                        tenant: "tenant-a".into(),
                        principal: "token:0123456789ab".into(),
                        op: "sign",
                        kid: "k#v1".into(),
                        alg: "ed25519".into(),
                        result: "ok".into(),
                        reason: String::new(),
                        request_id: format!("req-{i}-0123456789abcdef"),
                        input_hmac: Some([7u8; 32]),
                        intent: 0,
                    };
                    log.append(e).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let ops = done.load(Ordering::Relaxed) as f64;
        println!(
            "audit {mode}: {tasks} tasks, {signs} signs per op: {:.0} ops/s, {:.2} cores, {:.2} CPU us/op",
            ops / elapsed,
            cpu / elapsed,
            cpu / ops * 1e6
        );
        log.close().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
