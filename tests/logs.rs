//! Logs carry request ids, hashes and lengths — never key material or
//! inputs — and switch to JSON lines with KMS_LOG_FORMAT=json. A caller's
//! x-request-id is kept and echoed.
mod common;

use std::ffi::OsStr;
use std::process::Stdio;

use base64::Engine as _;
use common::process::serve_logged;
use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::*;

fn authed<T>(token: &str, m: T, rid: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r.metadata_mut()
        .insert("x-request-id", rid.parse().unwrap());
    r
}

const SECRET: &[u8] = b"SECRET-INPUT-4f1c9e-MUST-NOT-BE-LOGGED";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_hold_no_inputs_and_carry_request_ids() {
    let root = tempfile::tempdir().unwrap();
    let log_path = root.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let data = root.path().join("data");
    let s = serve_logged(
        &[OsStr::new("--data-dir"), data.as_os_str()],
        &[
            ("KMS_LOG", OsStr::new("debug")),
            ("KMS_LOG_FORMAT", OsStr::new("json")),
        ],
        None,
        Stdio::from(log),
    );
    let token = s.token.clone().unwrap();
    let mut c = KmsClient::connect(s.grpc.clone()).await.unwrap();
    c.create_key(authed(
        &token,
        CreateKeyRequest {
            name: "s".into(),
            algorithm: "ml-dsa-44".into(),
            ..Default::default()
        },
        "trace-create-1",
    ))
    .await
    .unwrap();
    c.create_key(authed(
        &token,
        CreateKeyRequest {
            name: "w".into(),
            algorithm: "aes-256-gcm".into(),
            ..Default::default()
        },
        "trace-create-2",
    ))
    .await
    .unwrap();
    let signed = c
        .sign(authed(
            &token,
            SignRequest {
                context: Vec::new(),
                key: "s".into(),
                message: SECRET.to_vec(),
                op_id: String::new(),
                ..Default::default()
            },
            "trace-sign-1",
        ))
        .await
        .unwrap();
    assert_eq!(
        signed.metadata().get("x-request-id").unwrap(),
        "trace-sign-1",
        "caller's id echoed"
    );
    let wrapped = c
        .wrap(authed(
            &token,
            WrapRequest {
                key: "w".into(),
                plaintext: SECRET.to_vec(),
                aad: vec![],
                op_id: String::new(),
            },
            "trace-wrap-1",
        ))
        .await
        .unwrap()
        .into_inner();
    let back = c
        .unwrap(authed(
            &token,
            UnwrapRequest {
                key: String::new(),
                ciphertext: wrapped.ciphertext,
                aad: vec![],
            },
            "trace-unwrap-1",
        ))
        .await
        .unwrap();
    assert_eq!(back.get_ref().plaintext, SECRET);
    // an invalid id is replaced, not echoed
    let odd = c
        .verify(authed(
            &token,
            VerifyRequest {
                context: Vec::new(),
                key: signed.get_ref().kid.clone(),
                message: SECRET.to_vec(),
                signature: signed.get_ref().signature.clone(),
                ..Default::default()
            },
            "bad id with spaces",
        ))
        .await
        .unwrap();
    assert_ne!(
        odd.metadata().get("x-request-id").unwrap(),
        "bad id with spaces"
    );
    // the keyed hash the audit log carries for the secret
    let keyed = c
        .hash_audit_input(authed(
            &token,
            HashAuditInputRequest {
                input: SECRET.to_vec(),
            },
            "trace-hmac-1",
        ))
        .await
        .unwrap()
        .into_inner()
        .input_hmac;
    assert!(s.terminate().success());

    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.lines().count() >= 6,
        "debug logging produced lines: {text}"
    );
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    for needle in [
        String::from_utf8(SECRET.to_vec()).unwrap(),
        b64[..24].to_string(),
        hex::encode(SECRET)[..32].to_string(),
        token.clone(),
    ] {
        assert!(!text.contains(&needle), "log contains {needle:?}");
    }
    for rid in [
        "trace-create-1",
        "trace-sign-1",
        "trace-wrap-1",
        "trace-unwrap-1",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(rid))
            .unwrap_or_else(|| panic!("no log line carries {rid}"));
        assert!(
            line.contains("\"operation\"") || line.contains("key created"),
            "{line}"
        );
    }
    // neither an input's hash nor its keyed hash reaches the debug log
    let hash = hex::encode(ron_kms::crypto::sha256(SECRET));
    assert_eq!(keyed.len(), 64);
    for needle in [&hash[..16], &keyed[..16]] {
        assert!(!text.contains(needle), "log contains {needle:?}");
    }
}
