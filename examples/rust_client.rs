//! A minimal Rust client of ron-kms over gRPC, using the crate's generated
//! client. Run against a live server:
//!
//! ```sh
//! KMS_ADDR=http://127.0.0.1:9445 KMS_TOKEN=rkms_… cargo run --example rust_client
//! ```
//!
//! It creates an Ed25519 key, signs, verifies the signature twice (through
//! the service, and locally with ring from the DER public key), then creates
//! an ML-KEM-768 key and wraps and unwraps a data key.
use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::*;
use tonic::metadata::MetadataValue;
use tonic::Request;

type Failure = Box<dyn std::error::Error>;

/// A request with the bearer token in its metadata.
fn authed<T>(auth: &MetadataValue<tonic::metadata::Ascii>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", auth.clone());
    r
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let addr = std::env::var("KMS_ADDR").unwrap_or_else(|_| "http://127.0.0.1:9445".into());
    let token = std::env::var("KMS_TOKEN").map_err(|_| "set KMS_TOKEN")?;
    let auth: MetadataValue<_> = format!("Bearer {token}").parse()?;
    let mut kms = KmsClient::connect(addr).await?;
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();

    // 1. a signing key
    let name = format!("rust-example-{suffix}");
    let key = kms
        .create_key(authed(
            &auth,
            CreateKeyRequest {
                name: name.clone(),
                algorithm: "ed25519".into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .key
        .ok_or("no key in response")?;
    println!("created {} ({})", key.versions[0].kid, key.algorithm);

    // 2. sign, and verify through the service
    let message = b"release v1.2.3".to_vec();
    let sig = kms
        .sign(authed(
            &auth,
            SignRequest {
                context: Vec::new(),
                key: name.clone(),
                message: message.clone(),
                op_id: String::new(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let verdict = kms
        .verify(authed(
            &auth,
            VerifyRequest {
                context: Vec::new(),
                key: sig.kid.clone(),
                message: message.clone(),
                signature: sig.signature.clone(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    assert!(verdict.valid, "service says the signature is invalid");
    println!(
        "signed with {}: service verify = {}",
        sig.kid, verdict.valid
    );

    // 3. verify locally: an Ed25519 SPKI is a 12-byte prefix + the 32-byte key
    let spki = &key.versions[0].public_key_der;
    let raw = &spki[spki.len() - 32..];
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, raw)
        .verify(&message, &sig.signature)
        .map_err(|_| "local verification failed")?;
    println!("local verify with ring: ok");

    // 4. envelope encryption with ML-KEM-768
    let wrap_key = format!("rust-example-kem-{suffix}");
    kms.create_key(authed(
        &auth,
        CreateKeyRequest {
            name: wrap_key.clone(),
            algorithm: "ml-kem-768".into(),
            ..Default::default()
        },
    ))
    .await?;
    let dk = kms
        .generate_data_key(authed(
            &auth,
            GenerateDataKeyRequest {
                key: wrap_key.clone(),
                length: 32,
                aad: b"tenant=demo".to_vec(),
                op_id: String::new(),
            },
        ))
        .await?
        .into_inner();
    let back = kms
        .unwrap(authed(
            &auth,
            UnwrapRequest {
                key: String::new(),
                ciphertext: dk.ciphertext.clone(),
                aad: b"tenant=demo".to_vec(),
            },
        ))
        .await?
        .into_inner();
    assert_eq!(
        back.plaintext, dk.plaintext,
        "unwrap returned a different data key"
    );
    println!(
        "data key wrapped under {} ({} bytes) and unwrapped: ok",
        dk.kid,
        dk.ciphertext.len()
    );
    println!("rust example: all steps passed");
    Ok(())
}
