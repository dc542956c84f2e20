//! Verify through the service with the verify cache hitting, with it off
//! (every lookup a miss: the public key is prepared from the key snapshot),
//! and the raw algorithm's verify alone (the limit measured in the same run),
//! per signature algorithm. The service calls go through the whole
//! operation path except the network and the audit log (off for benches).
//!
//! ```sh
//! cargo bench --bench verify_cache
//! ```
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ron_kms::auth::{Caller, Scopes};
use ron_kms::config::Config;
use ron_kms::crypto::{Algorithm, Provider};
use ron_kms::proto::{CreateKeyRequest, SignRequest, VerifyRequest};
use ron_kms::service::KmsService;

const ALGS: &[&str] = &[
    "ed25519",
    "ecdsa-p256",
    "ml-dsa-44",
    "ml-dsa-65",
    "ml-dsa-87",
    "hybrid-ed25519-ml-dsa-65",
];

fn caller() -> Caller {
    Caller {
        tenant: "admin".into(),
        principal: "bench".into(),
        scopes: Scopes::all(),
        request_id: "bench".into(),
    }
}

struct Server {
    _running: ron_kms::server::Running,
    kms: Arc<KmsService>,
}

fn server(rt: &tokio::runtime::Runtime, cache_max: u64) -> Server {
    rt.block_on(async {
        let mut cfg = Config::for_data_dir(std::path::Path::new("unused-in-amnesia"));
        cfg.amnesia = true;
        cfg.audit_off_for_benchmarks = true;
        cfg.grpc_addr = "127.0.0.1:0".parse().unwrap();
        cfg.http_addr = "127.0.0.1:0".parse().unwrap();
        cfg.verify_cache_max = cache_max;
        // phase 1: hybrid keys sign with both components, verify "or"
        cfg.pq_default = ron_kms::policy::PqPolicy::for_phase(1);
        let r = ron_kms::server::start(&cfg).await.unwrap();
        let kms = r.kms.clone();
        for alg in ALGS {
            kms.create_key(
                &caller(),
                CreateKeyRequest {
                    name: alg.to_string(),
                    algorithm: alg.to_string(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        Server { _running: r, kms }
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cached = server(&rt, 10_000);
    let uncached = server(&rt, 0);
    let provider = Provider::default();
    let msg = b"a 32-byte message digest to sign".to_vec();
    let mut g = c.benchmark_group("verify");
    for alg in ALGS {
        for (label, srv) in [("cache_hit", &cached), ("cache_miss", &uncached)] {
            let kms = srv.kms.clone();
            let sig = rt
                .block_on(kms.sign(
                    &caller(),
                    SignRequest {
                        key: alg.to_string(),
                        message: msg.clone(),
                        op_id: String::new(),
                    },
                ))
                .unwrap()
                .signature;
            let req = VerifyRequest {
                key: alg.to_string(),
                message: msg.clone(),
                signature: sig.clone(),
            };
            g.bench_with_input(BenchmarkId::new(label, alg), &req, |b, req| {
                b.iter(|| {
                    let r = rt.block_on(kms.verify(&caller(), req.clone())).unwrap();
                    assert!(r.valid);
                })
            });
            if label == "cache_hit" {
                // the raw algorithm on the same key, for the ratio
                let key = rt
                    .block_on(kms.get_key(
                        &caller(),
                        ron_kms::proto::GetKeyRequest {
                            name: alg.to_string(),
                            pem: false,
                        },
                    ))
                    .unwrap()
                    .key
                    .unwrap();
                let a = Algorithm::parse(alg).unwrap();
                let public = kms.public_key_of(&caller(), &key.versions[0].kid).unwrap();
                let signer = provider.signer(a).unwrap();
                g.bench_with_input(BenchmarkId::new("raw_crypto", alg), &sig, |b, sig| {
                    b.iter(|| assert!(signer.verify(&public, &msg, sig)))
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
