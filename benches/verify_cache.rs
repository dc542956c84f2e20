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
use ron_kms::crypto::{Algorithm, Provider};
use ron_kms::proto::{SignRequest, VerifyRequest};
use ron_kms::service::KmsService;

mod common;
use common::{caller, SIGN_ALGS};

struct Server {
    _running: ron_kms::server::Running,
    kms: Arc<KmsService>,
}

fn server(rt: &tokio::runtime::Runtime, cache_max: u64) -> Server {
    let mut cfg = common::amnesia_config();
    cfg.verify_cache.max = cache_max;
    rt.block_on(async {
        let (r, kms) = common::start_with_keys(&cfg, SIGN_ALGS).await;
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
    for &a in SIGN_ALGS {
        let alg = a.as_str();
        for (label, srv) in [("cache_hit", &cached), ("cache_miss", &uncached)] {
            let kms = srv.kms.clone();
            let sig = rt
                .block_on(kms.sign(
                    &caller(),
                    SignRequest {
                        context: Vec::new(),
                        key: alg.to_string(),
                        message: msg.clone(),
                        op_id: String::new(),
                        ..Default::default()
                    },
                ))
                .unwrap()
                .signature;
            let req = VerifyRequest {
                context: Vec::new(),
                key: alg.to_string(),
                message: msg.clone(),
                signature: sig.clone(),
                ..Default::default()
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
                let public = kms.public_key_of(&caller(), &key.versions[0].kid).unwrap();
                let signer = provider.signer(a).unwrap();
                let hybrid = provider.hybrid_signer().unwrap();
                g.bench_with_input(BenchmarkId::new("raw_crypto", alg), &sig, |b, sig| {
                    if a == Algorithm::HybridEd25519MlDsa65 {
                        // the composite: M' from the message, both halves
                        b.iter(|| {
                            assert_eq!(
                                hybrid.check(&public, &msg, b"", sig),
                                ron_kms::crypto::hybrid::Presented::Composite {
                                    classical: true,
                                    pq: true
                                }
                            )
                        })
                    } else {
                        b.iter(|| assert!(signer.verify(&public, &msg, sig)))
                    }
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
