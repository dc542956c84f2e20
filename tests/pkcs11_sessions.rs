//! The PKCS#11 session pool never holds more sessions than the token
//! allows. The token here is SoftHSM2 behind a small PKCS#11 module of our
//! own (`tests/fixtures/p11_session_limit.c`, built with the system C
//! compiler) that reports a session limit and refuses sessions beyond it
//! with `CKR_SESSION_COUNT`, as a hardware token with few sessions does, and
//! writes down the most sessions ever open at once. `ron-kms serve` runs as
//! a real process on it and signs under concurrent load.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::softhsm::{module, SoftHsm};
use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::{CreateKeyRequest, SignRequest};

/// The session-limiting module, built into `dir`.
fn build_limiter(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/p11_session_limit.c");
    let out = dir.join("libp11limit.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-I/usr/include/p11-kit-1", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["-ldl", "-lpthread"])
        .status()
        .expect("cc runs (build-essential; p11-kit's pkcs11.h from libp11-kit-dev: scripts/install-deps.sh --test)");
    assert!(status.success(), "building {}", src.display());
    out
}

fn authed<T>(m: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// `ron-kms serve` on a token allowing `limit` sessions, with
/// `KMS_PKCS11_POOL_SIZE=pool` (unset: the default size); signs with a
/// token key and a KEK-sealed key from 16 callers at once, then returns the
/// most sessions the token ever had open and the server's log.
async fn serve_on_limited_token(limit: usize, pool: Option<&str>) -> (usize, String) {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(&dir.path().join("hsm"), "limited");
    let limiter = build_limiter(dir.path());
    let hwm = dir.path().join("high-water");
    let log = dir.path().join("server.log");
    let mut env: Vec<(&str, std::ffi::OsString)> = hsm
        .env()
        .into_iter()
        .filter(|(k, _)| *k != "KMS_PKCS11_MODULE")
        .collect();
    env.push(("KMS_PKCS11_MODULE", limiter.into()));
    env.push(("P11_LIMIT_MODULE", module().into()));
    env.push(("P11_LIMIT_SESSIONS", limit.to_string().into()));
    env.push(("P11_LIMIT_HWM_FILE", hwm.clone().into()));
    env.push(("KMS_LOG_FORMAT", "json".into()));
    if let Some(p) = pool {
        env.push(("KMS_PKCS11_POOL_SIZE", p.into()));
    }
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let data = dir.path().join("data");
    let s = common::process::serve_logged(
        &["--data-dir".as_ref(), data.as_os_str()],
        &env,
        None,
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let token = s.token.clone().unwrap();
    let mut c = KmsClient::connect(s.grpc.clone()).await.unwrap();
    // a token key (ECDSA P-256) and a software key sealed under the
    // token's KEK (ML-DSA-65): both take a session per call
    for (name, alg) in [("tk", "ecdsa-p256"), ("sealed", "ml-dsa-65")] {
        c.create_key(authed(
            CreateKeyRequest {
                name: name.into(),
                algorithm: alg.into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (mut c, token) = (c.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            for j in 0..25 {
                let key = if (i + j) % 2 == 0 { "tk" } else { "sealed" };
                let r = c
                    .sign(authed(
                        SignRequest {
                            key: key.into(),
                            message: format!("{i}/{j}").into_bytes(),
                            ..Default::default()
                        },
                        &token,
                    ))
                    .await;
                assert!(r.is_ok(), "sign {i}/{j} with {key}: {r:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(s);
    let most: usize = std::fs::read_to_string(&hwm)
        .expect("the module saw sessions")
        .trim()
        .parse()
        .unwrap();
    (most, std::fs::read_to_string(&log).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_pool_fits_a_token_that_allows_two_sessions() {
    // the default size is at least 4: without the token's limit it would
    // open a third session and fail to start
    assert!(ron_kms::backend::pkcs11::default_pool_size() >= 4);
    let (most, log) = serve_on_limited_token(2, None).await;
    assert_eq!(most, 2, "the pool holds what the token allows, no more");
    assert!(
        log.contains(r#""token_allows":2"#),
        "the cap is logged: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_pool_larger_than_the_token_allows_is_capped() {
    let (most, log) = serve_on_limited_token(3, Some("16")).await;
    assert_eq!(most, 3);
    assert!(log.contains(r#""configured":16"#), "{log}");
}
