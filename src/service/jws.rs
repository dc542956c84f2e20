//! JOSE (docs/jose.md): the tenant's JWKS of published keys, SignJws (a
//! compact JWS whose `alg` and `kid` the service sets from the key), and
//! the compact-JWS form of Verify.
use serde_json::{json, Map, Value};

use super::calls::Call;
use super::*;
use crate::crypto::jose::{b64url, jwk, jws_alg};
use crate::ops::Method;

/// Largest protected header a caller may add to (bytes of JSON).
const MAX_HEADER: usize = 4096;

/// Header members the service owns, or that would change how the JWS is
/// read (unencoded payloads, critical extensions this service does not
/// know): refused in SignJws's `header`.
const RESERVED: [&str; 4] = ["alg", "kid", "crit", "b64"];

fn b64url_decode(field: &str, s: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("field jws: the {field} is not base64url")))
}

/// A tenant's JWKS answer: the body and its ETag, and the keyring
/// generation it was built at.
pub struct Jwks {
    generation: u64,
    pub body: String,
    pub etag: String,
}

impl KmsService {
    /// The JWK set of `tenant`'s published keys: every enabled version of
    /// each, as the snapshot holds it now (a version disabled a moment ago
    /// is gone from the next answer). A tenant with nothing published, or
    /// no such tenant, has an empty set: the answer says nothing more. The
    /// answer is built once per keyring change and reused until the next,
    /// so an unauthenticated caller repeating the request costs a lookup.
    pub fn jwks(&self, tenant: &str) -> Arc<Jwks> {
        let generation = self.keyring.generation();
        if let Some(j) = self.jwks_cache.get(tenant) {
            if j.generation == generation {
                return j;
            }
        }
        let body = self.jwk_set(tenant).to_string();
        let etag = format!("\"{}\"", &hex::encode(sha256(body.as_bytes()))[..32]);
        let j = Arc::new(Jwks {
            generation,
            body,
            etag,
        });
        if keyring::validate_name(tenant).is_ok() {
            self.jwks_cache.insert(tenant.to_string(), j.clone());
        }
        j
    }

    fn jwk_set(&self, tenant: &str) -> Value {
        let mut keys = Vec::new();
        if keyring::validate_name(tenant).is_ok() {
            let snap = self.keyring.snapshot();
            let mut after: Option<String> = None;
            loop {
                let page = snap.page(tenant, after.as_deref(), 1000, |_| true);
                let Some(last) = page.last() else { break };
                after = Some(last.name.clone());
                // published, and of an algorithm this deployment allows
                let shown = |r: &&Arc<KeyRecord>| {
                    r.settings.published && self.allowed.contains(&r.algorithm)
                };
                for rec in page.iter().filter(shown) {
                    // what Verify would take: enabled, and not below the
                    // key's min_decryption_version
                    let usable = |v: &&VersionRecord| {
                        v.state == VersionState::Enabled
                            && v.version >= rec.settings.min_decryption_version
                    };
                    for v in rec.versions.iter().filter(usable) {
                        if let Some(k) = jwk(rec.algorithm, &v.public_key, &rec.kid(v.version)) {
                            keys.push(k);
                        }
                    }
                }
            }
        }
        json!({ "keys": keys })
    }

    pub(super) async fn sign_jws_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::SignJwsRequest,
    ) -> Result<proto::SignJwsResponse> {
        caller.require(Scope::Sign)?;
        let key = KeyRef::parse(&req.key)?;
        let (rec, vn) = self.resolve(caller, &key, Purpose::Sign, "sign")?;
        let alg = jws_alg(rec.algorithm).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} keys have no JWS algorithm; ed25519 (EdDSA), ecdsa-p256 (ES256) and ml-dsa-44/65/87 keys do",
                rec.algorithm
            ))
        })?;
        let kid = rec.kid(vn);
        if req.header.len() > MAX_HEADER {
            return Err(Error::InvalidArgument(format!(
                "field header: at most {MAX_HEADER} bytes"
            )));
        }
        let extra: Map<String, Value> = if req.header.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            serde_json::from_slice(&req.header).map_err(|e| {
                Error::InvalidArgument(format!("field header: not a JSON object ({e})"))
            })?
        };
        if let Some(r) = RESERVED.iter().find(|r| extra.contains_key(**r)) {
            return Err(Error::InvalidArgument(format!(
                "field header: {r:?} is set by the service (alg and kid come from the key; crit and b64 are not offered)"
            )));
        }
        // alg and kid first, then the caller's members in their order
        let mut header = format!("{{\"alg\":{},\"kid\":{}", json!(alg), json!(kid));
        for (k, v) in &extra {
            header.push(',');
            header.push_str(&json!(k).to_string());
            header.push(':');
            header.push_str(&v.to_string());
        }
        header.push('}');
        let signing_input = format!("{}.{}", b64url(header.as_bytes()), b64url(&req.payload));
        let signed = self
            .sign_inner(
                caller,
                proto::SignRequest {
                    key: kid.clone(),
                    message: signing_input.clone().into_bytes(),
                    op_id: req.op_id,
                    ..Default::default()
                },
            )
            .await?;
        let sig = if rec.algorithm == Algorithm::EcdsaP256 {
            crate::crypto::der::ecdsa_p256_raw(&signed.signature)
                .ok_or_else(|| {
                    Error::Internal("custody returned a malformed ECDSA signature".into())
                })?
                .to_vec()
        } else {
            signed.signature
        };
        Ok(proto::SignJwsResponse {
            kid: signed.kid,
            alg: alg.to_string(),
            jws: format!("{signing_input}.{}", b64url(&sig)),
        })
    }

    pub async fn sign_jws(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::SignJwsRequest,
    ) -> Result<proto::SignJwsResponse> {
        let call = Call::new(Method::SignJws, &req.key).input(&self.audit, &req.payload);
        // the record names the key's algorithm as every record does
        self.call(caller, call, self.sign_jws_inner(caller, req), |r| {
            let alg = crate::crypto::jose::algorithm_of(&r.alg).map_or("", |a| a.as_str());
            (r.kid.clone(), alg.to_string())
        })
        .await
    }

    /// A Verify of a compact JWS, turned into the ordinary form: the
    /// signing input as the message, the signature as the key's algorithm
    /// encodes it (ES256's `r || s` as DER), and the version the JWS's
    /// `kid` names when `key` names none.
    pub(super) fn jws_to_verify(
        &self,
        caller: &Caller,
        req: &mut proto::VerifyRequest,
    ) -> Result<()> {
        if req.jws.is_empty() {
            return Ok(());
        }
        if !req.message.is_empty() || !req.signature.is_empty() || !req.digest.is_empty() {
            return Err(Error::InvalidArgument(
                "field jws: send it instead of message, digest and signature".into(),
            ));
        }
        let jws = std::mem::take(&mut req.jws);
        let parts: Vec<&str> = jws.trim().split('.').collect();
        let [h, p, s] = parts[..] else {
            return Err(Error::InvalidArgument(
                "field jws: a compact JWS is header.payload.signature".into(),
            ));
        };
        let header: Map<String, Value> = serde_json::from_slice(&b64url_decode("header", h)?)
            .map_err(|_| {
                Error::InvalidArgument("field jws: the header is not a JSON object".into())
            })?;
        if header.contains_key("crit") || header.get("b64") == Some(&Value::Bool(false)) {
            return Err(Error::InvalidArgument(
                "field jws: crit and unencoded payloads (b64: false) are not offered".into(),
            ));
        }
        let _ = b64url_decode("payload", p)?;
        let mut key = KeyRef::parse(&req.key)?;
        if let Some(kid) = header.get("kid") {
            let named = kid
                .as_str()
                .and_then(|k| KeyRef::parse(k).ok())
                .filter(|k| k.name == key.name && k.version.is_some())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "field jws: its kid {kid} is not a version of {}",
                        key.name
                    ))
                })?;
            if key.version.is_some_and(|v| Some(v) != named.version) {
                return Err(Error::InvalidArgument(format!(
                    "field jws: its kid {kid} is not {}",
                    req.key
                )));
            }
            key.version = named.version;
        }
        // the key as Verify will find it: missing, not a signing key, a
        // version not enabled — each answered as Verify answers it
        let alg = self
            .resolve(caller, &key, Purpose::Sign, "verify")?
            .0
            .algorithm;
        let want = jws_alg(alg)
            .ok_or_else(|| Error::InvalidArgument(format!("{alg} keys have no JWS algorithm")))?;
        match header.get("alg").and_then(Value::as_str) {
            Some(a) if a == want => {}
            other => {
                return Err(Error::InvalidArgument(format!(
                    "field jws: alg {} is not the key's ({want})",
                    other.map_or_else(|| "missing".to_string(), |a| format!("{a:?}"))
                )))
            }
        }
        let sig = b64url_decode("signature", s)?;
        req.signature = if alg == Algorithm::EcdsaP256 {
            crate::crypto::der::ecdsa_p256_sig(&sig).ok_or_else(|| {
                Error::InvalidArgument("field jws: an ES256 signature is 64 bytes (r || s)".into())
            })?
        } else {
            sig
        };
        req.message = format!("{h}.{p}").into_bytes();
        if let Some(v) = key.version {
            req.key = crate::store::kid(&key.name, v);
        }
        Ok(())
    }
}
