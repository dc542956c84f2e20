//! Operations through `KmsService` in-process (the whole operation path:
//! auth scope check, admission, key lookup, custody, the crypto, the audit
//! hook; no network), each next to the raw crypto it does, measured in the
//! same run (the limit the service figure is compared with). The service
//! runs on a 2-worker tokio runtime; the benchmark thread drives one request
//! at a time with `block_on` unless said otherwise. Keys are in amnesia
//! (in-memory sealed-file) custody with the audit log off, except in the
//! `audit_*` groups.
//!
//! - `sign/service/<alg>`: one sign of a 32-byte message per signature
//!   algorithm; `sign/raw_crypto/<alg>`: the provider's sign with a key of
//!   the same algorithm (what custody calls after unsealing the key);
//!   `sign/raw_prepared/ed25519`: an Ed25519 sign with an expanded
//!   `ed25519_dalek::SigningKey`, which is what the service's Ed25519 sign
//!   does once the key is in the custody's prepared-key cache.
//! - `wrap/service/<alg>` and `unwrap/service/<alg>`: wrap a 32-byte data
//!   key (no caller AAD) under ML-KEM-768 and AES-256-GCM, and unwrap it;
//!   `raw_crypto` is the same envelope built/opened directly: for ML-KEM,
//!   encapsulate (decapsulate) + HKDF + AES-256-GCM seal (open) + envelope
//!   assembly (parsing); for AES-256-GCM, the seal (open) + envelope.
//! - `admission/admit_drop/*`: `Admission::admit` of one Ed25519-sized unit
//!   for one tenant and dropping the permit, uncontended (the future is
//!   polled once and must be ready): with the default settings (no rate
//!   cap: the fair gate only) and with a per-tenant rate cap set high
//!   enough never to refuse (token bucket + fair gate);
//!   `admission/precheck/default` is the pre-decode check.
//! - `audit_sign_sequential/{audit_off,audit_on}`: one Ed25519 sign at a
//!   time through a service with a data dir in a temp dir, the audit log off
//!   or on (files, group commit). With the log on every request waits for
//!   its batch's fsync, and with one request in flight each batch is one
//!   request, so this is the *latency* an audited request sees, not the
//!   throughput the service can reach.
//! - `audit_sign_batched_64/{audit_off,audit_on}`: 64 concurrent Ed25519
//!   signs spawned on the runtime and joined per iteration
//!   (`Throughput::Elements(64)`: ops/s is requests per second), so group
//!   commit shares fsyncs and the per-request cost of auditing under
//!   concurrency shows.
//!
//! Throughput is in operations, so Criterion prints ops/s.
//!
//! ```sh
//! cargo bench --bench service
//! ```
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use ron_kms::admission::{Admission, AdmissionConfig};
use ron_kms::ops::Gate;

use ron_kms::config::Config;
use ron_kms::crypto::{aead, envelope, random_bytes, Algorithm, KeyPair, Provider};
use ron_kms::proto::{SignRequest, UnwrapRequest, WrapRequest};
use ron_kms::service::KmsService;
use tokio::runtime::Runtime;

mod common;
use common::{caller, SIGN_ALGS};

const WRAP_ALGS: &[Algorithm] = &[Algorithm::MlKem768, Algorithm::Aes256Gcm];

const MSG: &[u8; 32] = b"a 32-byte message digest to sign";
const DATA_KEY: &[u8; 32] = b"a 32-byte data key to be wrapped";
const BATCH: usize = 64;

fn quick(g: &mut BenchmarkGroup<'_, WallTime>, elements: u64) {
    g.sample_size(15)
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(elements));
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

struct Server {
    kms: Arc<KmsService>,
    _running: ron_kms::server::Running,
    /// The data dir (audit groups only), removed when dropped.
    _dir: Option<tempfile::TempDir>,
}

/// `audit`: `None` for amnesia with the audit log off (as
/// `benches/verify_cache.rs`); `Some(on)` for a data dir in a temp dir with
/// the file-backed audit log on or off.
fn server(rt: &Runtime, audit: Option<bool>, algs: &[Algorithm]) -> Server {
    let dir = audit.map(|_| tempfile::tempdir().unwrap());
    let mut cfg = match &dir {
        Some(d) => Config::for_data_dir(&d.path().join("data")),
        None => {
            let mut c = Config::for_data_dir(std::path::Path::new("unused-in-amnesia"));
            c.amnesia = true;
            c
        }
    };
    cfg.audit.off_for_benchmarks = audit != Some(true);
    common::loopback(&mut cfg);
    rt.block_on(async {
        let (r, kms) = common::start_with_keys(&cfg, algs).await;
        Server {
            kms,
            _running: r,
            _dir: dir,
        }
    })
}

fn sign_req(alg: Algorithm) -> SignRequest {
    SignRequest {
        context: Vec::new(),
        key: alg.to_string(),
        message: MSG.to_vec(),
        op_id: String::new(),
        ..Default::default()
    }
}

fn sign(c: &mut Criterion) {
    let rt = runtime();
    let srv = server(&rt, None, SIGN_ALGS);
    let provider = Provider::default();
    let mut g = c.benchmark_group("sign");
    quick(&mut g, 1);
    for &alg in SIGN_ALGS {
        let kms = &srv.kms;
        let req = sign_req(alg);
        g.bench_with_input(BenchmarkId::new("service", alg), &req, |b, req| {
            b.iter(|| rt.block_on(kms.sign(&caller(), req.clone())).unwrap())
        });
        let signer = provider.signer(alg).unwrap();
        let kp = provider.generate(alg).unwrap();
        g.bench_function(BenchmarkId::new("raw_crypto", alg), |b| {
            b.iter(|| signer.sign(black_box(&kp.private), black_box(MSG)).unwrap())
        });
        if alg == Algorithm::Ed25519 {
            use ed25519_dalek::Signer as _;
            let seed: &[u8; 32] = kp.private.as_slice().try_into().unwrap();
            let prepared = ed25519_dalek::SigningKey::from_bytes(seed);
            g.bench_function(BenchmarkId::new("raw_prepared", alg), |b| {
                b.iter(|| prepared.sign(black_box(MSG)).to_bytes())
            });
        }
    }
    g.finish();
}

/// The wrap envelope built directly: what the service's wrap computes.
fn raw_wrap(provider: &Provider, alg: Algorithm, kp: &KeyPair, kid: &str, pt: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
    random_bytes(&mut nonce).unwrap();
    if alg == Algorithm::Aes256Gcm {
        let header = envelope::header(alg, kid, &[]);
        let ad = envelope::associated_data(&header, &[]);
        let sealed = aead::seal(&kp.private, &nonce, &ad, pt).unwrap();
        envelope::assemble(&header, &nonce, &sealed)
    } else {
        let (ct, ss) = provider.kem(alg).unwrap().encapsulate(&kp.public).unwrap();
        let header = envelope::header(alg, kid, &ct);
        let key = envelope::kem_wrap_key(alg, &ss);
        let ad = envelope::associated_data(&header, &[]);
        let sealed = aead::seal(&key[..], &nonce, &ad, pt).unwrap();
        envelope::assemble(&header, &nonce, &sealed)
    }
}

/// The wrap envelope opened directly: what the service's unwrap computes.
fn raw_unwrap(provider: &Provider, kp: &KeyPair, ciphertext: &[u8]) -> Vec<u8> {
    let env = envelope::parse(ciphertext).unwrap();
    let ad = envelope::associated_data(env.header, &[]);
    let pt = if env.algorithm == Algorithm::Aes256Gcm {
        aead::open(&kp.private, &env.nonce, &ad, env.sealed).unwrap()
    } else {
        let ss = provider
            .kem(env.algorithm)
            .unwrap()
            .decapsulate(&kp.private, env.kem_ciphertext)
            .unwrap();
        let key = envelope::kem_wrap_key(env.algorithm, &ss);
        aead::open(&key[..], &env.nonce, &ad, env.sealed).unwrap()
    };
    pt.to_vec()
}

fn wrap_unwrap(c: &mut Criterion) {
    let rt = runtime();
    let srv = server(&rt, None, WRAP_ALGS);
    let kms = &srv.kms;
    let provider = Provider::default();
    let mut wrapped = Vec::new();
    let mut g = c.benchmark_group("wrap");
    quick(&mut g, 1);
    for &alg in WRAP_ALGS {
        let req = WrapRequest {
            key: alg.to_string(),
            plaintext: DATA_KEY.to_vec(),
            aad: Vec::new(),
            op_id: String::new(),
        };
        g.bench_with_input(BenchmarkId::new("service", alg), &req, |b, req| {
            b.iter(|| rt.block_on(kms.wrap(&caller(), req.clone())).unwrap())
        });
        let resp = rt.block_on(kms.wrap(&caller(), req)).unwrap();
        // the raw envelope under a key of our own, with the service's kid
        // so the header is the same size
        let kp = provider.generate(alg).unwrap();
        let raw_ct = raw_wrap(&provider, alg, &kp, &resp.kid, DATA_KEY);
        assert_eq!(raw_ct.len(), resp.ciphertext.len());
        assert_eq!(raw_unwrap(&provider, &kp, &raw_ct), DATA_KEY);
        g.bench_function(BenchmarkId::new("raw_crypto", alg), |b| {
            b.iter(|| raw_wrap(&provider, alg, &kp, &resp.kid, black_box(DATA_KEY)))
        });
        wrapped.push((alg, resp.ciphertext, kp, raw_ct));
    }
    g.finish();

    let mut g = c.benchmark_group("unwrap");
    quick(&mut g, 1);
    for (alg, ciphertext, kp, raw_ct) in &wrapped {
        let req = UnwrapRequest {
            key: alg.to_string(),
            ciphertext: ciphertext.clone(),
            aad: Vec::new(),
        };
        g.bench_with_input(BenchmarkId::new("service", alg), &req, |b, req| {
            b.iter(|| {
                let r = rt.block_on(kms.unwrap(&caller(), req.clone())).unwrap();
                assert_eq!(r.plaintext, DATA_KEY);
            })
        });
        g.bench_function(BenchmarkId::new("raw_crypto", alg), |b| {
            b.iter(|| raw_unwrap(&provider, kp, black_box(raw_ct)))
        });
    }
    g.finish();
}

/// Poll a future once; admission without contention never waits.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("uncontended admission had to wait"),
    }
}

fn admission(c: &mut Criterion) {
    let default = Admission::new(AdmissionConfig::default());
    let capped = Admission::new(AdmissionConfig {
        // a token bucket on every request, never empty at this rate
        tenant_rps: Some(1e9),
        tenant_burst: Some(u32::MAX),
        ..Default::default()
    });
    let mut g = c.benchmark_group("admission");
    quick(&mut g, 1);
    for (label, adm) in [("default", &default), ("rate_capped", &capped)] {
        g.bench_function(BenchmarkId::new("admit_drop", label), |b| {
            b.iter(|| {
                let permit = ready(adm.admit(Gate::Sign, black_box("tenant-a"), 1)).unwrap();
                drop(black_box(permit));
            })
        });
        assert_eq!(adm.in_use(Gate::Sign), 0);
    }
    g.bench_function(BenchmarkId::new("precheck", "default"), |b| {
        b.iter(|| default.precheck(Gate::Sign, black_box("tenant-a")).unwrap())
    });
    g.finish();
}

fn audit(c: &mut Criterion) {
    let rt = runtime();
    let servers = [
        ("audit_off", server(&rt, Some(false), &[Algorithm::Ed25519])),
        ("audit_on", server(&rt, Some(true), &[Algorithm::Ed25519])),
    ];
    let req = sign_req(Algorithm::Ed25519);

    let mut g = c.benchmark_group("audit_sign_sequential");
    quick(&mut g, 1);
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for (label, srv) in &servers {
        let kms = &srv.kms;
        g.bench_with_input(BenchmarkId::from_parameter(label), &req, |b, req| {
            b.iter(|| rt.block_on(kms.sign(&caller(), req.clone())).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("audit_sign_batched_64");
    quick(&mut g, BATCH as u64);
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for (label, srv) in &servers {
        let kms = &srv.kms;
        g.bench_with_input(BenchmarkId::from_parameter(label), &req, |b, req| {
            b.iter(|| {
                rt.block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..BATCH {
                        let (kms, req) = (kms.clone(), req.clone());
                        set.spawn(async move { kms.sign(&caller(), req).await.unwrap() });
                    }
                    while let Some(r) = set.join_next().await {
                        r.unwrap();
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, sign, wrap_unwrap, admission, audit);
criterion_main!(benches);
