//! Transit's key routes: create, read, list, delete (`keys/{name}` and
//! `keys`), rotate and config.
use axum::extract::{Path, Request};
use axum::http::Method as Verb;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{refuse_unless, Answer, Num, TransitFront, S};
use crate::crypto::{spki, Algorithm, Purpose};
use crate::error::Error;
use crate::ops::Method;
use crate::proto;

/// A transit key type (with `parameter_set` and `key_size` where transit
/// has them) as a ron-kms algorithm name.
fn algorithm_of(
    ty: Option<&str>,
    parameter_set: Option<&str>,
    key_size: Option<Num>,
) -> Result<&'static str, Error> {
    let ty = ty.unwrap_or("aes256-gcm96");
    if ty != "hmac" && key_size.is_some_and(|n| n.0 != 0) {
        return Err(Error::InvalidArgument(
            "field key_size: only for type hmac".into(),
        ));
    }
    if ty != "ml-dsa" && parameter_set.is_some() {
        return Err(Error::InvalidArgument(
            "field parameter_set: only for type ml-dsa".into(),
        ));
    }
    Ok(match ty {
        "aes256-gcm96" => "aes-256-gcm",
        "ed25519" => "ed25519",
        "ecdsa-p256" => "ecdsa-p256",
        "ml-dsa" => match parameter_set {
            Some("44") => "ml-dsa-44",
            Some("65") => "ml-dsa-65",
            Some("87") => "ml-dsa-87",
            Some(p) => {
                return Err(Error::InvalidArgument(format!(
                    "field parameter_set: {p:?} is not 44, 65 or 87"
                )))
            }
            None => {
                return Err(Error::InvalidArgument(
                    "field parameter_set: required for type ml-dsa (44, 65 or 87)".into(),
                ))
            }
        },
        "hmac" => match key_size {
            None | Some(Num(0)) | Some(Num(32)) => "hmac-sha256",
            Some(Num(n)) => {
                return Err(Error::InvalidArgument(format!(
                    "field key_size: {n} is not supported; hmac keys are 32 bytes (type hmac-sha512 makes a 64-byte SHA-512 key)"
                )))
            }
        },
        other => match Algorithm::parse(other) {
            // ron-kms's own names, for what transit has no type for
            Some(a) => a.as_str(),
            None => {
                return Err(Error::InvalidArgument(format!(
                    "field type: {other:?} is not supported by ron-kms (aes256-gcm96, ed25519, ecdsa-p256, ml-dsa, hmac, or a ron-kms algorithm name; docs/transit.md)"
                )))
            }
        },
    })
}

/// The transit type of a ron-kms algorithm, and its parameter set.
fn transit_type(alg: Algorithm) -> (&'static str, Option<&'static str>) {
    match alg {
        Algorithm::Aes256Gcm => ("aes256-gcm96", None),
        Algorithm::Ed25519 => ("ed25519", None),
        Algorithm::EcdsaP256 => ("ecdsa-p256", None),
        Algorithm::MlDsa44 => ("ml-dsa", Some("44")),
        Algorithm::MlDsa65 => ("ml-dsa", Some("65")),
        Algorithm::MlDsa87 => ("ml-dsa", Some("87")),
        Algorithm::HmacSha256 => ("hmac", None),
        a => (a.as_str(), None),
    }
}

fn rfc3339(ms: i64) -> String {
    let (y, mo, d, h, mi, s) = crate::telemetry::civil_utc(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// A key as transit's read answers it. Versions are listed unless
/// destroyed; asymmetric ones with their public key (Ed25519: base64 of
/// the raw key, as transit; the others: PEM SubjectPublicKeyInfo).
pub(super) fn key_data(k: &proto::Key) -> Result<Value, Error> {
    let alg = Algorithm::parse(&k.algorithm)
        .ok_or_else(|| Error::Internal(format!("unknown algorithm {}", k.algorithm)))?;
    let (ty, parameter_set) = transit_type(alg);
    let asymmetric = alg.purpose() == Purpose::Sign
        || matches!(
            alg,
            Algorithm::MlKem768 | Algorithm::MlKem1024 | Algorithm::HybridX25519MlKem768
        );
    let mut keys = serde_json::Map::new();
    for v in k.versions.iter().filter(|v| v.state != "destroyed") {
        let entry = if asymmetric {
            let public_key = if alg == Algorithm::Ed25519 {
                spki::raw_public(alg, &v.public_key_der, 32)
                    .map(super::enc)
                    .unwrap_or_default()
            } else if !v.public_key_der.is_empty() {
                spki::pem(&v.public_key_der)
            } else {
                // a composite key: its components' PEMs
                v.components
                    .iter()
                    .map(|c| spki::pem(&c.public_key_der))
                    .collect::<Vec<_>>()
                    .join("")
            };
            json!({
                "name": ty,
                "public_key": public_key,
                "creation_time": rfc3339(v.created_at_ms),
                "state": v.state,
            })
        } else {
            json!(v.created_at_ms.div_euclid(1000))
        };
        keys.insert(v.version.to_string(), entry);
    }
    let latest = k.versions.last().map_or(0, |v| v.version);
    let purpose = alg.purpose();
    let mut data = json!({
        "name": k.name,
        "type": ty,
        "keys": keys,
        "latest_version": latest,
        "min_available_version": 0,
        "min_decryption_version": k.min_decryption_version.max(1),
        "min_encryption_version": k.min_encryption_version,
        "deletion_allowed": k.deletion_allowed,
        "derived": false,
        "exportable": false,
        "allow_plaintext_backup": false,
        "auto_rotate_period": 0,
        "imported_key": false,
        "supports_encryption": purpose == Purpose::Wrap,
        "supports_decryption": purpose == Purpose::Wrap,
        "supports_derivation": false,
        "supports_signing": purpose == Purpose::Sign,
        "algorithm": k.algorithm,
    });
    if let Some(p) = parameter_set {
        data["parameter_set"] = json!(p);
    }
    Ok(data)
}

/// The answer of a call that returns the key (create, rotate, config).
fn key_answer(k: Option<&proto::Key>) -> Result<Answer, Error> {
    Ok(Answer::Data(key_data(k.ok_or_else(|| {
        Error::Internal("no key in the answer".into())
    })?)?))
}

/// `GET keys/{name}` (read) for the service's answer.
pub(super) async fn read(
    kms: &std::sync::Arc<crate::service::KmsService>,
    caller: &crate::auth::Caller,
    name: &str,
) -> Result<Value, Error> {
    let r = kms
        .get_key(
            caller,
            proto::GetKeyRequest {
                name: name.to_string(),
                pem: false,
            },
        )
        .await?;
    key_data(
        r.key
            .as_ref()
            .ok_or_else(|| Error::Internal("no key".into()))?,
    )
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct CreateBody {
    #[serde(rename = "type")]
    ty: Option<String>,
    parameter_set: Option<String>,
    key_size: Option<Num>,
    derived: Option<bool>,
    convergent_encryption: Option<bool>,
    exportable: Option<bool>,
    allow_plaintext_backup: Option<bool>,
    auto_rotate_period: Option<Value>,
    managed_key_name: Option<String>,
    managed_key_id: Option<String>,
}

fn zero_period(v: &Option<Value>) -> Result<(), Error> {
    match v {
        None => Ok(()),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(()),
        Some(Value::String(s)) if matches!(s.as_str(), "" | "0" | "0s" | "0h") => Ok(()),
        Some(other) => Err(Error::InvalidArgument(format!(
            "field auto_rotate_period: {other} is not supported by ron-kms (rotate with keys/<name>/rotate)"
        ))),
    }
}

/// The refusals shared by create and config: what ron-kms never does.
fn never(exportable: &Option<bool>, backup: &Option<bool>) -> Result<(), Error> {
    refuse_unless(
        "exportable",
        exportable,
        &[false],
        "private keys never leave custody",
    )?;
    refuse_unless(
        "allow_plaintext_backup",
        backup,
        &[false],
        "private keys never leave custody",
    )
}

async fn create(f: &TransitFront, name: String, req: Request) -> Response {
    f.run(req, Method::CreateKey, move |kms, caller, b: CreateBody| async move {
        refuse_unless("derived", &b.derived, &[false], "derived keys are not offered; context is bound to each ciphertext instead (docs/transit.md)")?;
        refuse_unless("convergent_encryption", &b.convergent_encryption, &[false], "every encryption takes a fresh random nonce")?;
        never(&b.exportable, &b.allow_plaintext_backup)?;
        zero_period(&b.auto_rotate_period)?;
        if b.managed_key_name.is_some() || b.managed_key_id.is_some() {
            return Err(Error::InvalidArgument(
                "fields managed_key_name, managed_key_id: managed keys are not supported; ron-kms's custody backend holds every key".into(),
            ));
        }
        let algorithm = algorithm_of(b.ty.as_deref(), b.parameter_set.as_deref(), b.key_size)?;
        let r = kms
            .create_key(
                &caller,
                proto::CreateKeyRequest {
                    name,
                    algorithm: algorithm.to_string(),
                    ..Default::default()
                },
            )
            .await?;
        key_answer(r.key.as_ref())
    })
    .await
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Empty {}

/// `keys/{name}`: GET reads, POST or PUT creates, DELETE deletes.
pub(super) async fn key(
    axum::extract::State(f): S,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    match req.method().clone() {
        Verb::POST | Verb::PUT => create(&f, name, req).await,
        Verb::GET => {
            f.run(
                req,
                Method::GetKey,
                move |kms, caller, _: Empty| async move {
                    Ok(Answer::Data(read(&kms, &caller, &name).await?))
                },
            )
            .await
        }
        Verb::DELETE => {
            f.run(
                req,
                Method::DeleteKey,
                move |kms, caller, _: Empty| async move {
                    kms.delete_key(
                        &caller,
                        proto::DeleteKeyRequest {
                            name,
                            ..Default::default()
                        },
                    )
                    .await?;
                    Ok(Answer::NoContent)
                },
            )
            .await
        }
        m => super::method_not_allowed(&m),
    }
}

/// `LIST keys` (or `GET keys?list=true`): every key name of the tenant.
pub(super) async fn list(axum::extract::State(f): S, req: Request) -> Response {
    let listing = req.method().as_str() == "LIST"
        || (req.method() == Verb::GET
            && req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "list=true")));
    if !listing {
        return super::method_not_allowed(req.method());
    }
    f.run(req, Method::ListKeys, |kms, caller, _: Empty| async move {
        let mut names = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = kms
                .list_keys(
                    &caller,
                    proto::ListKeysRequest {
                        page_size: 1000,
                        page_token,
                    },
                )
                .await?;
            names.extend(r.keys.into_iter().map(|k| k.name));
            if r.next_page_token.is_empty() {
                break;
            }
            page_token = r.next_page_token;
        }
        if names.is_empty() {
            // transit answers an empty list with 404
            return Err(Error::NotFound("keys".into()));
        }
        Ok(Answer::Data(json!({ "keys": names })))
    })
    .await
}

pub(super) async fn rotate(
    axum::extract::State(f): S,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    f.run(
        req,
        Method::RotateKey,
        move |kms, caller, _: Empty| async move {
            let r = kms
                .rotate_key(
                    &caller,
                    proto::RotateKeyRequest {
                        name,
                        ..Default::default()
                    },
                )
                .await?;
            key_answer(r.key.as_ref())
        },
    )
    .await
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ConfigBody {
    min_decryption_version: Option<Num>,
    min_encryption_version: Option<Num>,
    deletion_allowed: Option<bool>,
    exportable: Option<bool>,
    allow_plaintext_backup: Option<bool>,
    auto_rotate_period: Option<Value>,
}

pub(super) async fn config(
    axum::extract::State(f): S,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    f.run(
        req,
        Method::UpdateKey,
        move |kms, caller, b: ConfigBody| async move {
            never(&b.exportable, &b.allow_plaintext_backup)?;
            zero_period(&b.auto_rotate_period)?;
            let r = kms
                .update_key(
                    &caller,
                    proto::UpdateKeyRequest {
                        name,
                        min_decryption_version: b
                            .min_decryption_version
                            .map(|n| n.u32("min_decryption_version"))
                            .transpose()?,
                        min_encryption_version: b
                            .min_encryption_version
                            .map(|n| n.u32("min_encryption_version"))
                            .transpose()?,
                        deletion_allowed: b.deletion_allowed,
                        ..Default::default()
                    },
                )
                .await?;
            key_answer(r.key.as_ref())
        },
    )
    .await
}
