//! What the benches share: the signature algorithms, an admin caller, and a
//! service started from a config with one key per named algorithm.
#![allow(dead_code)]
use std::sync::Arc;

use ron_kms::auth::{Caller, Scopes};
use ron_kms::config::Config;
use ron_kms::crypto::Algorithm;
use ron_kms::proto::CreateKeyRequest;
use ron_kms::service::KmsService;

pub const SIGN_ALGS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::EcdsaP256,
    Algorithm::MlDsa44,
    Algorithm::MlDsa65,
    Algorithm::MlDsa87,
    Algorithm::HybridEd25519MlDsa65,
    Algorithm::SlhDsaSha2_128s,
    Algorithm::SlhDsaSha2_128f,
];

pub fn caller() -> Caller {
    Caller {
        tenant: "admin".into(),
        principal: "bench".into(),
        scopes: Scopes::all(),
        keys: None,
        request_id: "bench".into(),
    }
}

/// An in-memory (amnesia) config with the audit log off, on loopback.
pub fn amnesia_config() -> Config {
    let mut cfg = Config::for_data_dir(std::path::Path::new("unused-in-amnesia"));
    cfg.amnesia = true;
    cfg.audit.off_for_benchmarks = true;
    loopback(&mut cfg);
    cfg
}

/// Both fronts on ephemeral loopback ports; hybrid keys sign composite
/// signatures (PQ phase 1).
pub fn loopback(cfg: &mut Config) {
    cfg.grpc_addr = "127.0.0.1:0".parse().unwrap();
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.pq.default = ron_kms::policy::PqPolicy::for_phase(1);
}

/// Start `cfg` and create a key named after each algorithm in `algs`.
pub async fn start_with_keys(
    cfg: &Config,
    algs: &[Algorithm],
) -> (ron_kms::server::Running, Arc<KmsService>) {
    let r = ron_kms::server::start(cfg).await.unwrap();
    let kms = r.kms.clone();
    for alg in algs {
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
    (r, kms)
}
