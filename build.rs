//! Compiles `proto/` with protox (no system protoc) and writes the descriptor
//! set used by gRPC reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["ron/kms/v1/kms.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("kms_descriptor.bin"), fds.encode_to_vec())?;

    // HTTP/JSON reuses the generated messages: serde derives, unknown fields
    // refused, absent fields default, bytes as base64.
    let mut b = tonic_prost_build::configure().type_attribute(
        ".ron.kms.v1",
        "#[derive(serde::Serialize, serde::Deserialize)] #[serde(deny_unknown_fields, default)]",
    );
    for field in [
        "KeyVersion.public_key_der",
        "ComponentKey.public_key_der",
        "SignRequest.message",
        "SignRequest.context",
        "SignRequest.digest",
        "SignResponse.signature",
        "VerifyRequest.message",
        "VerifyRequest.signature",
        "VerifyRequest.context",
        "VerifyRequest.digest",
        "WrapRequest.plaintext",
        "WrapRequest.aad",
        "WrapResponse.ciphertext",
        "UnwrapRequest.ciphertext",
        "UnwrapRequest.aad",
        "UnwrapResponse.plaintext",
        "GenerateDataKeyRequest.aad",
        "GenerateDataKeyResponse.plaintext",
        "GenerateDataKeyResponse.ciphertext",
        "MacRequest.message",
        "MacResponse.mac",
        "VerifyMacRequest.message",
        "VerifyMacRequest.mac",
        "SignJwsRequest.header",
        "SignJwsRequest.payload",
    ] {
        b = b.field_attribute(
            format!(".ron.kms.v1.{field}"),
            "#[serde(with = \"crate::api::b64\")]",
        );
    }
    // A batch item holds one of ok and error: JSON leaves the other out.
    for item in [
        "SignBatchItem",
        "VerifyBatchItem",
        "WrapBatchItem",
        "UnwrapBatchItem",
    ] {
        for field in ["ok", "error"] {
            b = b.field_attribute(
                format!(".ron.kms.v1.{item}.{field}"),
                "#[serde(skip_serializing_if = \"Option::is_none\")]",
            );
        }
    }
    // Requests and responses that carry caller input or secrets get a
    // hand-written, redacting Debug (src/api/redact.rs).
    b = b.skip_debug([
        ".ron.kms.v1.SignRequest",
        ".ron.kms.v1.VerifyRequest",
        ".ron.kms.v1.WrapRequest",
        ".ron.kms.v1.UnwrapRequest",
        ".ron.kms.v1.UnwrapResponse",
        ".ron.kms.v1.GenerateDataKeyResponse",
        ".ron.kms.v1.MacRequest",
        ".ron.kms.v1.VerifyMacRequest",
        ".ron.kms.v1.SignJwsRequest",
        ".ron.kms.v1.SignJwsResponse",
    ]);
    b.compile_fds(fds)?;
    Ok(())
}
