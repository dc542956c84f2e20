//! Transit's signing routes: sign, verify (of a signature or an HMAC) and
//! hmac; each single or with `batch_input`.
//!
//! Signatures are `vault:vN:` + base64 of the signature (`asn1`: ECDSA as
//! DER) or base64url without padding (`jws`: ECDSA as `r || s`); HMACs are
//! `vault:vN:` + base64 of the tag.
use std::sync::Arc;

use axum::extract::{Path, Request};
use axum::response::Response;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    b64, batch_or_one, build, enc, item, key_at, merge_batch, refuse_unless, same_name,
    split_vault, vault, version_of, with_ref, Answer, Num, TransitFront, S,
};
use crate::auth::Caller;
use crate::crypto::Algorithm;
use crate::error::Error;
use crate::ops::Method;
use crate::proto;
use crate::service::KmsService;

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct SignItem {
    input: Option<String>,
    signature: Option<String>,
    hmac: Option<String>,
    context: Option<String>,
    reference: Option<String>,
}

impl SignItem {
    fn is_empty(&self) -> bool {
        self.input.is_none()
            && self.signature.is_none()
            && self.hmac.is_none()
            && self.context.is_none()
            && self.reference.is_none()
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct SignBody {
    #[serde(flatten)]
    one: SignItem,
    batch_input: Option<Vec<SignItem>>,
    name: Option<String>,
    key_version: Option<Num>,
    hash_algorithm: Option<String>,
    /// transit's older name for `hash_algorithm` (and hmac's own)
    algorithm: Option<String>,
    prehashed: Option<bool>,
    marshaling_algorithm: Option<String>,
    signature_algorithm: Option<String>,
    salt_length: Option<String>,
    partial_failure_response_code: Option<Num>,
}

/// Which route a body is for.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    Sign,
    Verify,
    Hmac,
}

/// How signatures are encoded after `vault:vN:`.
#[derive(Clone, Copy, PartialEq)]
enum Marshal {
    Asn1,
    Jws,
}

/// What a request settles once for all its items.
struct Plan {
    name: String,
    key_version: Option<Num>,
    /// The hash named by the path, `hash_algorithm` or `algorithm`.
    hash: Option<String>,
    prehashed: bool,
    marshal: Marshal,
    batch: bool,
    items: Vec<SignItem>,
    /// The key's algorithm, when the caller has the key.
    algorithm: Option<Algorithm>,
}

const SIGN_HASH_WHY: &str =
    "ECDSA P-256 keys sign SHA-256 digests; Ed25519 and ML-DSA sign the input itself";

impl SignBody {
    fn plan(
        self,
        route: Route,
        kms: &KmsService,
        caller: &Caller,
        name: String,
        path_hash: Option<String>,
    ) -> Result<Plan, Error> {
        same_name(&name, &self.name)?;
        // the route's scope first: what the checks below learn about the key
        // is for callers who may use it so
        caller.require(match route {
            Route::Sign | Route::Hmac => crate::ops::Scope::Sign,
            Route::Verify => crate::ops::Scope::Verify,
        })?;
        refuse_unless(
            "signature_algorithm",
            &self.signature_algorithm.as_deref(),
            &[],
            "RSA keys are not offered",
        )?;
        refuse_unless(
            "salt_length",
            &self.salt_length.as_deref(),
            &[],
            "RSA keys are not offered",
        )?;
        refuse_unless(
            "partial_failure_response_code",
            &self.partial_failure_response_code,
            &[Num(0), Num(200)],
            "a batch answers 200 with an error in each failed item",
        )?;
        let mut hash = None;
        for (field, h) in [
            ("hash (in the path)", path_hash),
            ("hash_algorithm", self.hash_algorithm),
            ("algorithm", self.algorithm),
        ] {
            match (&hash, h) {
                (_, None) => {}
                (None, Some(h)) => hash = Some(h),
                (Some(a), Some(b)) if *a == b => {}
                (Some(_), Some(_)) => {
                    return Err(Error::InvalidArgument(format!(
                        "field {field}: names another hash than the one already given"
                    )))
                }
            }
        }
        let marshal = match self.marshaling_algorithm.as_deref() {
            None | Some("asn1") => Marshal::Asn1,
            Some("jws") => Marshal::Jws,
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "field marshaling_algorithm: {other:?} is not asn1 or jws"
                )))
            }
        };
        if route == Route::Hmac && (self.prehashed == Some(true) || marshal == Marshal::Jws) {
            return Err(Error::InvalidArgument(
                "fields prehashed, marshaling_algorithm: hmac takes neither".into(),
            ));
        }
        if route == Route::Verify && self.key_version.is_some() {
            return Err(Error::InvalidArgument(
                "field key_version: the signature or HMAC names its version".into(),
            ));
        }
        let top_is_empty = self.one.is_empty();
        let (items, batch) = batch_or_one(
            self.batch_input,
            self.one,
            top_is_empty,
            "input, signature, hmac, context and reference",
        )?;
        for it in &items {
            if route != Route::Verify && (it.signature.is_some() || it.hmac.is_some()) {
                return Err(Error::InvalidArgument(
                    "fields signature, hmac: only for verify".into(),
                ));
            }
            if it.context.is_some() {
                return Err(Error::InvalidArgument(
                    "field context: derived keys are not offered (docs/transit.md)".into(),
                ));
            }
        }
        Ok(Plan {
            algorithm: kms.key_algorithm(caller, &name),
            name,
            key_version: self.key_version,
            hash,
            prehashed: self.prehashed.unwrap_or(false),
            marshal,
            batch,
            items,
        })
    }
}

impl Plan {
    fn input(&self, it: &SignItem) -> Result<Vec<u8>, Error> {
        b64(
            "input",
            it.input
                .as_deref()
                .ok_or_else(|| Error::InvalidArgument("field input: required".into()))?,
        )
    }

    /// A signature's hash: SHA-256 (the default) only.
    fn signature_hash(&self) -> Result<(), Error> {
        refuse_unless(
            "hash_algorithm",
            &self.hash.as_deref(),
            &["sha2-256"],
            SIGN_HASH_WHY,
        )
    }

    /// An HMAC's hash: the key's (SHA-256 by default); checked before the
    /// key is used, so a mismatch costs no MAC and no record of one.
    fn hmac_hash(&self) -> Result<(), Error> {
        let want = self.hash.as_deref().unwrap_or("sha2-256");
        refuse_unless(
            "algorithm",
            &Some(want),
            &["sha2-256", "sha2-512"],
            "HMAC keys are SHA-256 or SHA-512",
        )?;
        let have = match self.algorithm {
            Some(Algorithm::HmacSha256) => "sha2-256",
            Some(Algorithm::HmacSha512) => "sha2-512",
            // not an HMAC key, or none: the operation answers that
            _ => return Ok(()),
        };
        if have != want {
            return Err(Error::InvalidArgument(format!(
                "field algorithm: {} is a {have} HMAC key, not {want}",
                self.name
            )));
        }
        Ok(())
    }

    /// `input` as the service takes it: a message, or (`prehashed`) a
    /// SHA-256 digest, which only ECDSA P-256 keys sign.
    fn sign_request(&self, it: &SignItem) -> Result<proto::SignRequest, Error> {
        let input = self.input(it)?;
        let key = key_at(&self.name, self.key_version, "key_version")?;
        Ok(if self.prehashed {
            proto::SignRequest {
                key,
                digest: input,
                digest_algorithm: "sha256".into(),
                ..Default::default()
            }
        } else {
            proto::SignRequest {
                key,
                message: input,
                ..Default::default()
            }
        })
    }

    fn encode_signature(&self, r: &proto::SignResponse) -> Result<Value, Error> {
        let v = version_of(&r.kid);
        let text = match self.marshal {
            Marshal::Asn1 => vault(v, &enc(&r.signature)),
            Marshal::Jws => {
                let raw;
                let bytes = if r.algorithm == Algorithm::EcdsaP256.as_str() {
                    raw = crate::crypto::der::ecdsa_p256_raw(&r.signature)
                        .ok_or_else(|| Error::Internal("malformed ECDSA signature".into()))?;
                    &raw[..]
                } else {
                    &r.signature[..]
                };
                vault(
                    v,
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
                )
            }
        };
        Ok(json!({ "signature": text, "key_version": v }))
    }

    fn verify_request(&self, it: &SignItem, sig: &str) -> Result<proto::VerifyRequest, Error> {
        let (v, payload) = split_vault("signature", sig)?;
        let signature = match self.marshal {
            Marshal::Asn1 => b64("signature", &payload)?,
            Marshal::Jws => {
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload.trim_end_matches('=').as_bytes())
                    .map_err(|_| {
                        Error::InvalidArgument("field signature: not valid base64url".into())
                    })?;
                // an ECDSA key's r || s becomes DER; others are as they are
                match self.algorithm {
                    Some(Algorithm::EcdsaP256) => crate::crypto::der::ecdsa_p256_sig(&raw)
                        .ok_or_else(|| {
                            Error::InvalidArgument(
                                "field signature: a jws ECDSA P-256 signature is 64 bytes".into(),
                            )
                        })?,
                    _ => raw,
                }
            }
        };
        let input = self.input(it)?;
        let key = crate::store::kid(&self.name, v);
        Ok(if self.prehashed {
            proto::VerifyRequest {
                key,
                digest: input,
                digest_algorithm: "sha256".into(),
                signature,
                ..Default::default()
            }
        } else {
            proto::VerifyRequest {
                key,
                message: input,
                signature,
                ..Default::default()
            }
        })
    }
}

async fn sign_route(f: TransitFront, name: String, hash: Option<String>, req: Request) -> Response {
    f.run(
        req,
        Method::Sign,
        move |kms, caller, b: SignBody| async move {
            let plan = b.plan(Route::Sign, &kms, &caller, name, hash)?;
            plan.signature_hash()?;
            let rid = caller.request_id.clone();
            if !plan.batch {
                let it = &plan.items[0];
                let r = kms.sign(&caller, plan.sign_request(it)?).await?;
                return Ok(Answer::Data(with_ref(
                    plan.encode_signature(&r)?,
                    &it.reference,
                )));
            }
            let (reqs, slots) = build(&plan.items, |it| plan.sign_request(it));
            let out = kms
                .sign_batch(&caller, proto::SignBatchRequest { items: reqs })
                .await?
                .items;
            let results = merge_batch(
                slots,
                &plan.items,
                |it| &it.reference,
                &out,
                |o| (o.ok.as_ref(), o.error.as_ref()),
                |r| plan.encode_signature(r),
                &rid,
            );
            Ok(Answer::Data(json!({ "batch_results": results })))
        },
    )
    .await
}

pub(super) async fn sign(
    axum::extract::State(f): S,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    sign_route(f, name, None, req).await
}

pub(super) async fn sign_with(
    axum::extract::State(f): S,
    Path((name, hash)): Path<(String, String)>,
    req: Request,
) -> Response {
    sign_route(f, name, Some(hash), req).await
}

/// One verify item: of a signature, or (with `hmac`) of an HMAC tag.
async fn verify_one(
    kms: &Arc<KmsService>,
    caller: &Caller,
    plan: &Plan,
    it: &SignItem,
) -> Result<Value, Error> {
    let valid = match (&it.signature, &it.hmac) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(Error::InvalidArgument(
                "fields signature and hmac: send exactly one".into(),
            ))
        }
        (Some(sig), None) => {
            plan.signature_hash()?;
            kms.verify(caller, plan.verify_request(it, sig)?)
                .await?
                .valid
        }
        (None, Some(tag)) => {
            if plan.prehashed || plan.marshal != Marshal::Asn1 {
                return Err(Error::InvalidArgument(
                    "fields prehashed, marshaling_algorithm: an HMAC verify takes neither".into(),
                ));
            }
            plan.hmac_hash()?;
            let (v, payload) = split_vault("hmac", tag)?;
            kms.verify_mac(
                caller,
                proto::VerifyMacRequest {
                    key: crate::store::kid(&plan.name, v),
                    message: plan.input(it)?,
                    mac: b64("hmac", &payload)?,
                },
            )
            .await?
            .valid
        }
    };
    Ok(json!({ "valid": valid }))
}

async fn verify_route(
    f: TransitFront,
    name: String,
    hash: Option<String>,
    req: Request,
) -> Response {
    f.run(
        req,
        Method::Verify,
        move |kms, caller, b: SignBody| async move {
            let plan = b.plan(Route::Verify, &kms, &caller, name, hash)?;
            if !plan.batch {
                let it = &plan.items[0];
                let v = verify_one(&kms, &caller, &plan, it).await?;
                return Ok(Answer::Data(with_ref(v, &it.reference)));
            }
            let mut results = Vec::with_capacity(plan.items.len());
            for it in &plan.items {
                let v = item(
                    verify_one(&kms, &caller, &plan, it).await,
                    &caller.request_id,
                );
                results.push(with_ref(v, &it.reference));
            }
            Ok(Answer::Data(json!({ "batch_results": results })))
        },
    )
    .await
}

pub(super) async fn verify(
    axum::extract::State(f): S,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    verify_route(f, name, None, req).await
}

pub(super) async fn verify_with(
    axum::extract::State(f): S,
    Path((name, hash)): Path<(String, String)>,
    req: Request,
) -> Response {
    verify_route(f, name, Some(hash), req).await
}

async fn hmac_one(
    kms: &Arc<KmsService>,
    caller: &Caller,
    plan: &Plan,
    it: &SignItem,
) -> Result<Value, Error> {
    let r = kms
        .mac(
            caller,
            proto::MacRequest {
                key: key_at(&plan.name, plan.key_version, "key_version")?,
                message: plan.input(it)?,
            },
        )
        .await?;
    Ok(json!({ "hmac": vault(version_of(&r.kid), &enc(&r.mac)) }))
}

async fn hmac_route(
    f: TransitFront,
    name: String,
    path_alg: Option<String>,
    req: Request,
) -> Response {
    f.run(
        req,
        Method::Mac,
        move |kms, caller, b: SignBody| async move {
            let plan = b.plan(Route::Hmac, &kms, &caller, name, path_alg)?;
            plan.hmac_hash()?;
            if !plan.batch {
                let it = &plan.items[0];
                let v = hmac_one(&kms, &caller, &plan, it).await?;
                return Ok(Answer::Data(with_ref(v, &it.reference)));
            }
            let mut results = Vec::with_capacity(plan.items.len());
            for it in &plan.items {
                let v = item(hmac_one(&kms, &caller, &plan, it).await, &caller.request_id);
                results.push(with_ref(v, &it.reference));
            }
            Ok(Answer::Data(json!({ "batch_results": results })))
        },
    )
    .await
}

pub(super) async fn hmac(
    axum::extract::State(f): S,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    hmac_route(f, name, None, req).await
}

pub(super) async fn hmac_with(
    axum::extract::State(f): S,
    Path((name, alg)): Path<(String, String)>,
    req: Request,
) -> Response {
    hmac_route(f, name, Some(alg), req).await
}
