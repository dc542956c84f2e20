//! Transit's encryption routes: encrypt, decrypt, rewrap (each single or
//! with `batch_input`) and datakey.
//!
//! Ciphertexts are `vault:vN:` + base64 of ron-kms's envelope (docs/api.md),
//! whose associated data is [`aad`] of the request's `context` and
//! `associated_data`.
use std::sync::Arc;

use axum::extract::{Path, Request};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{
    b64, b64_opt, batch_or_one, build, enc, item, key_at, merge_batch, refuse_unless, split_vault,
    vault, version_of, with_ref, Answer, Num, S,
};
use crate::auth::Caller;
use crate::error::Error;
use crate::ops::Method;
use crate::proto;
use crate::service::KmsService;

/// The associated data a transit ciphertext is sealed with: nothing when
/// there is neither context nor associated data, else
/// `u32_be(len(context)) || context || associated_data`.
pub fn aad(context: &[u8], associated: &[u8]) -> Vec<u8> {
    if context.is_empty() && associated.is_empty() {
        return Vec::new();
    }
    let mut a = Vec::with_capacity(4 + context.len() + associated.len());
    a.extend_from_slice(&(context.len() as u32).to_be_bytes());
    a.extend_from_slice(context);
    a.extend_from_slice(associated);
    a
}

/// One item of encrypt, decrypt or rewrap (the top level is one too).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct CipherItem {
    plaintext: Option<String>,
    ciphertext: Option<String>,
    context: Option<String>,
    associated_data: Option<String>,
    key_version: Option<Num>,
    nonce: Option<String>,
    reference: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct CipherBody {
    #[serde(flatten)]
    one: CipherItem,
    batch_input: Option<Vec<CipherItem>>,
    #[serde(rename = "type")]
    ty: Option<String>,
    convergent_encryption: Option<bool>,
    partial_failure_response_code: Option<Num>,
    /// datakey only
    bits: Option<Num>,
}

impl CipherBody {
    fn common(&self) -> Result<(), Error> {
        if self.ty.is_some() {
            return Err(Error::InvalidArgument(
                "field type: keys are not created on first use; create the key first (keys/<name>)"
                    .into(),
            ));
        }
        refuse_unless(
            "convergent_encryption",
            &self.convergent_encryption,
            &[false],
            "every encryption takes a fresh random nonce",
        )?;
        refuse_unless(
            "partial_failure_response_code",
            &self.partial_failure_response_code,
            &[Num(0), Num(200)],
            "a batch answers 200 with an error in each failed item",
        )
    }

    /// The items: `batch_input`, or the top level as one (`batch`: whether
    /// the answer is `batch_results`), each holding only what `route`
    /// takes.
    fn items(self, route: Route) -> Result<(Vec<CipherItem>, bool), Error> {
        self.common()?;
        if self.bits.is_some() && route != Route::Datakey {
            return Err(Error::InvalidArgument(
                "field bits: only for datakey".into(),
            ));
        }
        let top_is_empty = self.one.is_empty();
        let (items, batch) = batch_or_one(
            self.batch_input,
            self.one,
            top_is_empty,
            "plaintext, ciphertext, context, associated_data, key_version, nonce and reference",
        )?;
        for it in &items {
            it.fits(route)?;
        }
        Ok((items, batch))
    }
}

/// Which route a body is for: each takes its own fields.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Route {
    Encrypt,
    Decrypt,
    Rewrap,
    Datakey,
}

impl CipherItem {
    fn is_empty(&self) -> bool {
        self.plaintext.is_none()
            && self.ciphertext.is_none()
            && self.context.is_none()
            && self.associated_data.is_none()
            && self.key_version.is_none()
            && self.nonce.is_none()
            && self.reference.is_none()
    }

    /// Refuses a field `route` does not take.
    fn fits(&self, route: Route) -> Result<(), Error> {
        let refuse =
            |field: &str, why: &str| Err(Error::InvalidArgument(format!("field {field}: {why}")));
        match route {
            Route::Encrypt if self.ciphertext.is_some() => {
                refuse("ciphertext", "encrypt takes plaintext")
            }
            Route::Decrypt | Route::Rewrap if self.plaintext.is_some() => {
                refuse("plaintext", "this route takes ciphertext")
            }
            Route::Decrypt if self.key_version.is_some() => {
                refuse("key_version", "the ciphertext names its version")
            }
            Route::Datakey if self.plaintext.is_some() || self.ciphertext.is_some() => {
                refuse("plaintext/ciphertext", "datakey makes the key itself")
            }
            Route::Datakey if self.reference.is_some() => {
                refuse("reference", "only batch items carry a reference")
            }
            _ => Ok(()),
        }
    }

    fn aad(&self) -> Result<Vec<u8>, Error> {
        if self.nonce.is_some() {
            return Err(Error::InvalidArgument(
                "field nonce: not supported; every encryption takes a fresh random nonce".into(),
            ));
        }
        Ok(aad(
            &b64_opt("context", &self.context)?,
            &b64_opt("associated_data", &self.associated_data)?,
        ))
    }

    fn wrap_request(&self, name: &str) -> Result<proto::WrapRequest, Error> {
        let plaintext = self
            .plaintext
            .as_deref()
            .ok_or_else(|| Error::InvalidArgument("field plaintext: required".into()))?;
        Ok(proto::WrapRequest {
            key: key_at(name, self.key_version, "key_version")?,
            plaintext: b64("plaintext", plaintext)?,
            aad: self.aad()?,
            ..Default::default()
        })
    }

    fn unwrap_request(&self, name: &str) -> Result<proto::UnwrapRequest, Error> {
        let ct = self
            .ciphertext
            .as_deref()
            .ok_or_else(|| Error::InvalidArgument("field ciphertext: required".into()))?;
        let (v, payload) = split_vault("ciphertext", ct)?;
        Ok(proto::UnwrapRequest {
            key: crate::store::kid(name, v),
            ciphertext: b64("ciphertext", &payload)?,
            aad: self.aad()?,
        })
    }
}

fn wrapped(r: &proto::WrapResponse, reference: &Option<String>) -> Value {
    let v = version_of(&r.kid);
    with_ref(
        json!({
            "ciphertext": vault(v, &enc(&r.ciphertext)),
            "key_version": v,
        }),
        reference,
    )
}

pub(super) async fn encrypt(
    axum::extract::State(f): S,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    f.run(
        req,
        Method::Wrap,
        move |kms, caller, b: CipherBody| async move {
            let (items, batch) = b.items(Route::Encrypt)?;
            if !batch {
                let r = kms.wrap(&caller, items[0].wrap_request(&name)?).await?;
                return Ok(Answer::Data(wrapped(&r, &items[0].reference)));
            }
            let (reqs, slots) = build(&items, |i| i.wrap_request(&name));
            let out = kms
                .wrap_batch(&caller, proto::WrapBatchRequest { items: reqs })
                .await?
                .items;
            let results = merge_batch(
                slots,
                &items,
                |it| &it.reference,
                &out,
                |o| (o.ok.as_ref(), o.error.as_ref()),
                |r| Ok(wrapped(r, &None)),
                &caller.request_id,
            );
            Ok(Answer::Data(json!({ "batch_results": results })))
        },
    )
    .await
}

fn plain(r: &proto::UnwrapResponse, reference: &Option<String>) -> Value {
    with_ref(json!({ "plaintext": enc(&r.plaintext) }), reference)
}

pub(super) async fn decrypt(
    axum::extract::State(f): S,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    f.run(
        req,
        Method::Unwrap,
        move |kms, caller, b: CipherBody| async move {
            let (items, batch) = b.items(Route::Decrypt)?;
            if !batch {
                let r = kms.unwrap(&caller, items[0].unwrap_request(&name)?).await?;
                return Ok(Answer::Data(plain(&r, &items[0].reference)));
            }
            let (reqs, slots) = build(&items, |i| i.unwrap_request(&name));
            let out = kms
                .unwrap_batch(&caller, proto::UnwrapBatchRequest { items: reqs })
                .await?
                .items;
            let results = merge_batch(
                slots,
                &items,
                |it| &it.reference,
                &out,
                |o| (o.ok.as_ref(), o.error.as_ref()),
                |r| Ok(plain(r, &None)),
                &caller.request_id,
            );
            Ok(Answer::Data(json!({ "batch_results": results })))
        },
    )
    .await
}

/// Decrypt under the version the ciphertext names, encrypt under the
/// latest (or `key_version`): two service calls, each admitted and
/// audited, needing both kms:unwrap and kms:wrap.
async fn rewrap_one(
    kms: &Arc<KmsService>,
    caller: &Caller,
    name: &str,
    it: &CipherItem,
) -> Result<Value, Error> {
    let opened = kms.unwrap(caller, it.unwrap_request(name)?).await?;
    let plaintext = Zeroizing::new(opened.plaintext);
    let r = kms
        .wrap(
            caller,
            proto::WrapRequest {
                key: key_at(name, it.key_version, "key_version")?,
                plaintext: plaintext.to_vec(),
                aad: it.aad()?,
                ..Default::default()
            },
        )
        .await?;
    Ok(wrapped(&r, &it.reference))
}

pub(super) async fn rewrap(
    axum::extract::State(f): S,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    f.run(
        req,
        Method::Unwrap,
        move |kms, caller, b: CipherBody| async move {
            let (items, batch) = b.items(Route::Rewrap)?;
            if !batch {
                return Ok(Answer::Data(
                    rewrap_one(&kms, &caller, &name, &items[0]).await?,
                ));
            }
            let mut results = Vec::with_capacity(items.len());
            for it in &items {
                let r = rewrap_one(&kms, &caller, &name, it).await;
                results.push(match r {
                    Ok(v) => v,
                    Err(e) => with_ref(item::<()>(Err(e), &caller.request_id), &it.reference),
                });
            }
            Ok(Answer::Data(json!({ "batch_results": results })))
        },
    )
    .await
}

pub(super) async fn datakey(
    axum::extract::State(f): S,
    Path((kind, name)): Path<(String, String)>,
    req: Request,
) -> Response {
    f.run(
        req,
        Method::GenerateDataKey,
        move |kms, caller, b: CipherBody| async move {
            let with_plaintext = match kind.as_str() {
                "plaintext" => true,
                "wrapped" => false,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "datakey type {other:?}: plaintext or wrapped"
                    )))
                }
            };
            let bits = b.bits.map_or(Ok(256), |n| n.u32("bits"))?;
            if !matches!(bits, 128 | 256 | 512) {
                return Err(Error::InvalidArgument(format!(
                    "field bits: {bits} is not 128, 256 or 512"
                )));
            }
            let (items, batch) = b.items(Route::Datakey)?;
            if batch {
                return Err(Error::InvalidArgument(
                    "field batch_input: datakey takes one request".into(),
                ));
            }
            let it = &items[0];
            let r = kms
                .generate_data_key(
                    &caller,
                    proto::GenerateDataKeyRequest {
                        key: key_at(&name, it.key_version, "key_version")?,
                        length: bits / 8,
                        aad: it.aad()?,
                        ..Default::default()
                    },
                )
                .await?;
            let plaintext = Zeroizing::new(r.plaintext);
            let v = version_of(&r.kid);
            let mut out = json!({
                "ciphertext": vault(v, &enc(&r.ciphertext)),
                "key_version": v,
            });
            if with_plaintext {
                out["plaintext"] = json!(enc(&plaintext));
            }
            Ok(Answer::Data(out))
        },
    )
    .await
}
