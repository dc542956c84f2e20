//! Closed-loop signing load for the custody benchmarks: `inflight`
//! requests kept in flight for `secs`, through the in-process service API
//! or over gRPC on loopback; each returns signatures per second.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Start ron-kms on `cfg` and create the `p256` key.
pub fn start_with_p256(rt: &tokio::runtime::Runtime, cfg: &Config) -> Served {
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
    }
}

/// `KmsService::sign` (no transport): ops/s.
pub fn service(
    rt: &tokio::runtime::Runtime,
    kms: &Arc<KmsService>,
    caller: &Caller,
    key: &str,
    msg: &[u8],
    inflight: usize,
    secs: f64,
) -> f64 {
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
pub fn grpc(
    rt: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    token: &str,
    key: &str,
    msg: &[u8],
    inflight: usize,
    secs: f64,
) -> f64 {
    rt.block_on(async {
        let addr = format!("http://{addr}");
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
