//! Sign and verify: what custody signs for a key and the tenant's PQ
//! policy, the private-key operation in custody (on the bounded pool when it
//! is heavy), verification from the (cached) public key and the policy's
//! verdict. Never touches the store.
use super::calls::{sign_call, sign_desc, verify_call, verify_desc};
use super::*;
use crate::backend::SignInput;
use crate::crypto::hybrid::{self, Presented};
use crate::crypto::Prehash;
use crate::policy::Verdict;

/// A context string fits the composite's one length byte.
fn check_context(ctx: &[u8]) -> Result<()> {
    if ctx.len() > hybrid::MAX_CONTEXT_LEN {
        return Err(Error::InvalidArgument(format!(
            "field context: at most {} bytes",
            hybrid::MAX_CONTEXT_LEN
        )));
    }
    Ok(())
}

fn context_refused(alg: Algorithm) -> Error {
    Error::InvalidArgument(format!(
        "field context: only hybrid-ed25519-ml-dsa-65 keys take a context string, not {alg} keys"
    ))
}

/// How custody signs the bytes [`KmsService::what_to_sign`] chose.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Message,
    /// A hybrid key's classical component alone (the PQ policy's phase 0).
    Classical,
    /// A digest of the kind the key's algorithm takes.
    Prehashed,
}

fn sign_input(bytes: &[u8], form: Form) -> SignInput<'_> {
    match form {
        Form::Message => SignInput::Message(bytes),
        Form::Classical => SignInput::ClassicalComponent(bytes),
        Form::Prehashed => SignInput::Prehashed(bytes),
    }
}

/// The digest a Sign or Verify request sends in place of its message, if
/// it sends one, checked against what a key of `alg` takes
/// (`Algorithm::prehash`): one of message and digest, a known
/// `digest_algorithm` that is the key's, the digest's exact length.
fn digest_of(
    alg: Algorithm,
    message: &[u8],
    digest: &[u8],
    digest_algorithm: &str,
) -> Result<Option<Prehash>> {
    if digest.is_empty() {
        if !digest_algorithm.is_empty() {
            return Err(Error::InvalidArgument(
                "field digest_algorithm: given without a digest".into(),
            ));
        }
        return Ok(None);
    }
    if !message.is_empty() {
        return Err(Error::InvalidArgument(
            "fields message and digest: send one of them, not both".into(),
        ));
    }
    let named = if digest_algorithm.is_empty() {
        None
    } else {
        Some(Prehash::parse(digest_algorithm).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "field digest_algorithm: unknown {digest_algorithm:?}; one of sha256 (ecdsa-p256), mu (ml-dsa-44/65/87), sha512 (hybrid-ed25519-ml-dsa-65)"
            ))
        })?)
    };
    let Some(takes) = alg.prehash() else {
        return Err(Error::InvalidArgument(if alg == Algorithm::Ed25519 {
            "field digest: ed25519 keys sign whole messages (pure Ed25519 hashes the message itself); Ed25519ph, RFC 8032's pre-hashed variant, is the digest form and ron-kms does not offer it: send the message".into()
        } else {
            format!("field digest: {alg} keys do not sign digests")
        }));
    };
    if named.is_some_and(|n| n != takes) {
        return Err(Error::InvalidArgument(format!(
            "field digest_algorithm: {alg} keys take a {takes} digest, not {digest_algorithm}"
        )));
    }
    if digest.len() != takes.digest_len() {
        return Err(Error::InvalidArgument(format!(
            "field digest: a {takes} digest for {alg} is {} bytes, not {}",
            takes.digest_len(),
            digest.len()
        )));
    }
    Ok(Some(takes))
}

/// The idempotency hash of a Sign request. A message request hashes as it
/// always did; a digest request hashes its digest and kind as well.
fn sign_hash(req: &proto::SignRequest) -> [u8; 32] {
    if req.digest.is_empty() && req.digest_algorithm.is_empty() {
        request_hash(&[b"Sign", req.key.as_bytes(), &req.message, &req.context])
    } else {
        request_hash(&[
            b"SignDigest",
            req.key.as_bytes(),
            &req.message,
            &req.context,
            &req.digest,
            req.digest_algorithm.as_bytes(),
        ])
    }
}

/// One single-algorithm verification, of a message or of a digest.
fn verify_one(
    p: &crate::crypto::Provider,
    alg: Algorithm,
    prehashed: bool,
    public: &[u8],
    input: &[u8],
    signature: &[u8],
) -> Result<bool> {
    let s = p.signer(alg)?;
    Ok(if prehashed {
        s.verify_prehashed(public, input, signature)
    } else {
        s.verify(public, input, signature)
    })
}

impl KmsService {
    /// What custody signs for this request: the message itself, or for a
    /// hybrid key the composite's message representative M′ (phases 1–3)
    /// or, where the tenant's policy still signs classically (phase 0, or
    /// outside the rollout), the message for a plain Ed25519 signature by
    /// the key's classical component (`true`).
    ///
    /// With a digest (`digest` is `Some`, `message` then holds it): the
    /// digest itself, or for a hybrid key M′ built from the pre-hash; the
    /// classical component alone cannot sign a digest.
    fn what_to_sign(
        &self,
        caller: &Caller,
        rec: &KeyRecord,
        message: Vec<u8>,
        digest: Option<Prehash>,
        ctx: &[u8],
    ) -> Result<(Vec<u8>, Form)> {
        if rec.algorithm != Algorithm::HybridEd25519MlDsa65 {
            if !ctx.is_empty() {
                return Err(context_refused(rec.algorithm));
            }
            let form = if digest.is_some() {
                Form::Prehashed
            } else {
                Form::Message
            };
            return Ok((message, form));
        }
        let composite = self
            .policies
            .get(&caller.tenant)
            .policy
            .effective(&caller.tenant, &rec.name)
            .produce_hybrid;
        if composite {
            let m = if digest.is_some() {
                hybrid::representative_of_prehash(&message, ctx)
            } else {
                hybrid::representative(&message, ctx)
            }
            .map_err(|e| Error::InvalidArgument(format!("field context: {e}")))?;
            return Ok((m, Form::Message));
        }
        if digest.is_some() {
            return Err(Error::FailedPrecondition(
                "field digest: the tenant's PQ policy signs this key with its classical component alone (phase 0, or outside the rollout), and Ed25519 cannot sign a digest: send the message".into(),
            ));
        }
        if !ctx.is_empty() {
            return Err(Error::FailedPrecondition(
                "field context: the tenant's PQ policy signs this key with its classical component alone (phase 0, or outside the rollout), and a plain Ed25519 signature has no context".into(),
            ));
        }
        if message.starts_with(hybrid::PREFIX) {
            return Err(Error::InvalidArgument(
                "field message: a message that starts with the composite signature prefix \"CompositeAlgorithmSignatures2025\" cannot be signed with the classical component alone".into(),
            ));
        }
        Ok((message, Form::Classical))
    }

    // ----- crypto ------------------------------------------------------

    pub(super) async fn sign_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::SignRequest,
    ) -> Result<proto::SignResponse> {
        caller.require(Scope::Sign)?;
        let key = KeyRef::parse(&req.key)?;
        check_context(&req.context)?;
        let hash = sign_hash(&req);
        if let Some(c) = self.cached(caller, &req.op_id, &hash)? {
            if let CachedAnswer::Sign(r) = &c.answer {
                // A remembered answer is only given while the version that
                // produced it is still enabled.
                self.resolve(caller, &KeyRef::parse(&r.kid)?, Purpose::Sign, "sign")?;
                return Ok(r.clone());
            }
            return Err(Error::AlreadyExists(
                "op_id was used by another operation".into(),
            ));
        }
        let (rec, vn) = self.resolve(caller, &key, Purpose::Sign, "sign")?;
        self.custody_ready()?;
        let kid = rec.kid(vn);
        let digest = digest_of(
            rec.algorithm,
            &req.message,
            &req.digest,
            &req.digest_algorithm,
        )?;
        let input = if digest.is_some() {
            req.digest
        } else {
            req.message
        };
        let (bytes, form) = self.what_to_sign(caller, &rec, input, digest, &req.context)?;
        let signature = self
            .in_custody(&rec, vn, &kid, move |b, l, h| {
                b.sign(l, h, sign_input(&bytes, form))
            })
            .await?;
        let resp = proto::SignResponse {
            kid,
            algorithm: rec.algorithm.as_str().to_string(),
            signature,
        };
        self.remember(caller, &req.op_id, hash, CachedAnswer::Sign(resp.clone()));
        Ok(resp)
    }

    pub(super) async fn verify_inner(
        self: &Arc<Self>,
        caller: &Caller,
        mut req: proto::VerifyRequest,
    ) -> Result<proto::VerifyResponse> {
        caller.require(Scope::Verify)?;
        self.jws_to_verify(caller, &mut req)?;
        let key = KeyRef::parse(&req.key)?;
        check_context(&req.context)?;
        let (rec, vn) = self.resolve(caller, &key, Purpose::Sign, "verify")?;
        let alg = rec.algorithm;
        let hybrid_key = alg == Algorithm::HybridEd25519MlDsa65;
        if !hybrid_key && !req.context.is_empty() {
            return Err(context_refused(alg));
        }
        let digest = digest_of(alg, &req.message, &req.digest, &req.digest_algorithm)?;
        if hybrid_key && digest.is_some() && req.signature.len() != hybrid::COMPOSITE_SIG_LEN {
            return Err(Error::InvalidArgument(
                "field digest: only a composite signature can be verified against a digest; a plain Ed25519 signature or an RKS v1 bundle is over the message itself".into(),
            ));
        }
        let kid = rec.kid(vn);
        let (public, cache_age_ms) = self.verify_key(caller, &rec, vn, &kid)?;
        let entry = self.policies.get(&caller.tenant);
        let mode = entry
            .policy
            .effective(&caller.tenant, &rec.name)
            .verify_mode;
        let presented = if hybrid_key {
            let hybrid = self
                .provider
                .hybrid_signer()
                .ok_or_else(|| Error::Internal("no hybrid signer in the provider".into()))?;
            if digest.is_some() {
                hybrid.check_prehashed(&public.public, &req.digest, &req.context, &req.signature)
            } else {
                hybrid.check(&public.public, &req.message, &req.context, &req.signature)
            }
        } else {
            let prehashed = digest.is_some();
            let input = if prehashed { req.digest } else { req.message };
            // RustCrypto's μ verification is slower than liboqs's
            let heavy = alg.verify_is_heavy() || (prehashed && digest == Some(Prehash::Mu));
            let valid = if heavy {
                let (p, public, sig) = (self.provider.clone(), public.clone(), req.signature);
                self.blocking(move || verify_one(&p, alg, prehashed, &public.public, &input, &sig))
                    .await?
            } else {
                verify_one(
                    &self.provider,
                    alg,
                    prehashed,
                    &public.public,
                    &input,
                    &req.signature,
                )?
            };
            if alg.is_classical_signature() {
                Presented::Classical(valid)
            } else {
                Presented::Pq(valid)
            }
        };
        let verdict = crate::policy::decide(
            mode,
            hybrid_key,
            entry.policy.accept_legacy_bundles,
            presented,
        );
        let answer = |valid: bool, kind: &str| proto::VerifyResponse {
            valid,
            kid: kid.clone(),
            algorithm: alg.as_str().to_string(),
            signature_kind: kind.to_string(),
            cache_age_ms,
        };
        match verdict {
            Verdict::Valid(kind) => Ok(answer(true, kind.as_str())),
            Verdict::Invalid { downgrade } => {
                if downgrade {
                    self.downgrade_attempt(caller, &kid, presented, mode).await;
                }
                Ok(answer(false, ""))
            }
            Verdict::Refused {
                why,
                genuine,
                downgrade,
            } => {
                if downgrade {
                    self.downgrade_attempt(caller, &kid, presented, mode).await;
                }
                Err(self.refused_by_pq_policy(caller, &kid, why, genuine).await)
            }
        }
    }
}

impl KmsService {
    pub async fn sign(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::SignRequest,
    ) -> Result<proto::SignResponse> {
        let call = sign_call(&self.audit, &req);
        self.call(caller, call, self.sign_inner(caller, req), sign_desc)
            .await
    }

    pub async fn verify(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::VerifyRequest,
    ) -> Result<proto::VerifyResponse> {
        let call = verify_call(&self.audit, &req);
        self.call(caller, call, self.verify_inner(caller, req), verify_desc)
            .await
    }

    /// The prepared public key of `kid` and, while custody is unavailable,
    /// the age of the cached copy used. Refuses with UNAVAILABLE when custody
    /// is down and the key is not cached, or cached longer ago than the TTL.
    pub(super) fn verify_key(
        &self,
        caller: &Caller,
        rec: &KeyRecord,
        vn: u32,
        kid: &str,
    ) -> Result<(Arc<verify_cache::Prepared>, u64)> {
        use verify_cache::Lookup;
        let up = self.custody_up();
        let cached = self.verify_cache.get(&caller.tenant, kid);
        let load = || -> Result<Arc<verify_cache::Prepared>> {
            let public = &rec
                .version(vn)
                .ok_or_else(|| Error::Internal("resolved version missing".into()))?
                .public_key;
            Ok(self
                .verify_cache
                .insert(&caller.tenant, kid, rec.algorithm, public))
        };
        match (cached, up) {
            (Lookup::Hit(p), true) => Ok((p, 0)),
            (Lookup::Hit(p), false) => {
                let age = p.loaded.elapsed().as_millis() as u64;
                metrics::gauge!("verify_cache_age_ms").set(age as f64);
                Ok((p, age.max(1)))
            }
            (Lookup::Stale(_) | Lookup::Miss, true) => Ok((load()?, 0)),
            // KMS_FAILOVER=verify-only: the public key in the snapshot is
            // what the store holds; verify needs nothing from custody.
            (Lookup::Stale(_) | Lookup::Miss, false) if self.verify_only_failover => {
                metrics::counter!("kms_failover_verify_total").increment(1);
                Ok((load()?, 0))
            }
            (Lookup::Stale(p), false) => Err(Error::Unavailable(format!(
                "custody ({}) is unavailable and the cached public key of {kid} is {} ms old, past the verify cache TTL of {} ms",
                self.backend.name(),
                p.loaded.elapsed().as_millis(),
                self.verify_cache.ttl().as_millis()
            ))),
            (Lookup::Miss, false) => Err(Error::Unavailable(format!(
                "custody ({}) is unavailable and {kid} is not in the verify cache",
                self.backend.name()
            ))),
        }
    }
}
