//! The protobuf request path into the service: bytes decoded as a request
//! message (the first byte picks which), then handed to the running
//! service (amnesia mode, audit off) with an all-scopes caller. No input
//! may panic the service, and the service must keep answering afterwards.
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use ron_kms::auth::{Caller, Scopes};
use ron_kms::proto::*;
use ron_kms::service::KmsService;

struct World {
    rt: tokio::runtime::Runtime,
    kms: Arc<KmsService>,
    _running: ron_kms::server::Running,
}

fn caller() -> Caller {
    Caller {
        tenant: "admin".into(),
        principal: "fuzz".into(),
        scopes: Scopes::all(),
        keys: None,
        request_id: "fuzz".into(),
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let running = rt.block_on(async {
            let mut cfg = ron_kms::config::Config::for_data_dir(std::path::Path::new("unused"));
            cfg.amnesia = true;
            cfg.audit.off_for_benchmarks = true;
            cfg.grpc_addr = "127.0.0.1:0".parse().unwrap();
            cfg.http_addr = "127.0.0.1:0".parse().unwrap();
            let r = ron_kms::server::start(&cfg).await.unwrap();
            // a few keys for requests to find
            for (name, alg) in [
                ("k", "ed25519"),
                // digest signing: a SignRequest's digest and
                // digest_algorithm reach these keys' checks and crypto
                ("e", "ecdsa-p256"),
                ("m", "ml-dsa-44"),
                ("h", "hybrid-ed25519-ml-dsa-65"),
                ("w", "ml-kem-768"),
                ("a", "aes-256-gcm"),
                ("x", "hybrid-x25519-ml-kem-768"),
                // Mac and VerifyMac reach an HMAC key's custody
                ("t", "hmac-sha256"),
            ] {
                r.kms
                    .create_key(
                        &caller(),
                        CreateKeyRequest {
                            name: name.into(),
                            algorithm: alg.into(),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
            }
            r
        });
        World {
            kms: running.kms.clone(),
            rt,
            _running: running,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let w = world();
    let k = w.kms.clone();
    let c = caller();
    w.rt.block_on(async move {
        macro_rules! call {
            ($t:ty, $m:ident) => {
                if let Ok(req) = <$t>::decode(rest) {
                    let _ = k.$m(&c, req).await;
                }
            };
        }
        match which % 17 {
            0 => call!(CreateKeyRequest, create_key),
            1 => call!(GetKeyRequest, get_key),
            2 => call!(ListKeysRequest, list_keys),
            3 => call!(RotateKeyRequest, rotate_key),
            4 => call!(SetKeyVersionStateRequest, set_key_version_state),
            5 => call!(SignRequest, sign),
            6 => call!(VerifyRequest, verify),
            7 => call!(WrapRequest, wrap),
            8 => call!(UnwrapRequest, unwrap),
            9 => call!(GenerateDataKeyRequest, generate_data_key),
            10 => call!(SetPqPolicyRequest, set_pq_policy),
            11 => call!(MacRequest, mac),
            12 => call!(VerifyMacRequest, verify_mac),
            13 => call!(UpdateKeyRequest, update_key),
            14 => call!(DeleteKeyRequest, delete_key),
            15 => call!(SignJwsRequest, sign_jws),
            _ => call!(GetPqPolicyRequest, get_pq_policy),
        }
        // still answering
        k.list_keys(&c, ListKeysRequest::default())
            .await
            .expect("the service keeps answering");
    });
});
