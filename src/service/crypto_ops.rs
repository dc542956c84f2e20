//! Sign, verify, wrap, unwrap and data keys: read the snapshot, run the
//! private-key operation in custody (on the bounded pool when it is heavy),
//! never touch the store.
use super::*;
use crate::backend::SignInput;
use crate::crypto::hybrid::{self, Presented};
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

fn sign_input(bytes: &[u8], classical: bool) -> SignInput<'_> {
    if classical {
        SignInput::ClassicalComponent(bytes)
    } else {
        SignInput::Message(bytes)
    }
}

impl KmsService {
    /// What custody signs for this request: the message itself, or for a
    /// hybrid key the composite's message representative M′ (phases 1–3)
    /// or, where the tenant's policy still signs classically (phase 0, or
    /// outside the rollout), the message for a plain Ed25519 signature by
    /// the key's classical component (`true`).
    fn what_to_sign(
        &self,
        caller: &Caller,
        rec: &KeyRecord,
        message: Vec<u8>,
        ctx: &[u8],
    ) -> Result<(Vec<u8>, bool)> {
        if rec.algorithm != Algorithm::HybridEd25519MlDsa65 {
            if !ctx.is_empty() {
                return Err(context_refused(rec.algorithm));
            }
            return Ok((message, false));
        }
        let composite = self
            .policies
            .get(&caller.tenant)
            .policy
            .effective(&caller.tenant, &rec.name)
            .produce_hybrid;
        if composite {
            let m = hybrid::representative(&message, ctx)
                .map_err(|e| Error::InvalidArgument(format!("field context: {e}")))?;
            return Ok((m, false));
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
        Ok((message, true))
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
        let hash = request_hash(&[b"Sign", req.key.as_bytes(), &req.message, &req.context]);
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
        self.attestation.check()?;
        if !self.custody_up() {
            // fail fast: no queueing for the blocking pool behind a dead device
            return Err(Error::Unavailable(format!(
                "custody ({}) is unavailable",
                self.backend.name()
            )));
        }
        let kid = rec.kid(vn);
        let (bytes, classical) = self.what_to_sign(caller, &rec, req.message, &req.context)?;
        let signature = if self.offload(rec.algorithm) {
            let (this, rec, kid) = (self.clone(), rec.clone(), kid.clone());
            self.blocking(move || {
                let r = this.backend.sign(
                    label(&rec, &kid),
                    handle(&rec, vn)?,
                    sign_input(&bytes, classical),
                );
                this.custody_saw(&r);
                Ok(r?)
            })
            .await?
        } else {
            let r = self.backend.sign(
                label(&rec, &kid),
                handle(&rec, vn)?,
                sign_input(&bytes, classical),
            );
            self.custody_saw(&r);
            r?
        };
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
        req: proto::VerifyRequest,
    ) -> Result<proto::VerifyResponse> {
        caller.require(Scope::Verify)?;
        let key = KeyRef::parse(&req.key)?;
        check_context(&req.context)?;
        let (rec, vn) = self.resolve(caller, &key, Purpose::Sign, "verify")?;
        let alg = rec.algorithm;
        let hybrid_key = alg == Algorithm::HybridEd25519MlDsa65;
        if !hybrid_key && !req.context.is_empty() {
            return Err(context_refused(alg));
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
            hybrid.check(&public.public, &req.message, &req.context, &req.signature)
        } else {
            let valid = if alg.verify_is_heavy() {
                let (p, public, msg, sig) = (
                    self.provider.clone(),
                    public.clone(),
                    req.message,
                    req.signature,
                );
                self.blocking(move || Ok(p.signer(alg)?.verify(&public.public, &msg, &sig)))
                    .await?
            } else {
                self.provider
                    .signer(alg)?
                    .verify(&public.public, &req.message, &req.signature)
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

    /// Seal `plaintext` into a wrap envelope under `rec` version `vn`.
    fn wrap_bytes(
        &self,
        rec: &KeyRecord,
        vn: u32,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        let kid = rec.kid(vn);
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        random_bytes(&mut nonce)?;
        match rec.algorithm {
            Algorithm::Aes256Gcm => {
                self.attestation.check()?;
                let header = envelope::header(rec.algorithm, &kid, &[]);
                let ad = envelope::associated_data(&header, aad);
                let sealed = self.backend.aead_seal(
                    label(rec, &kid),
                    handle(rec, vn)?,
                    &nonce,
                    &ad,
                    plaintext,
                )?;
                Ok(envelope::assemble(&header, &nonce, &sealed))
            }
            a if a.is_kem() => {
                let public = &rec
                    .version(vn)
                    .ok_or_else(|| Error::Internal("resolved version missing".into()))?
                    .public_key;
                let (ct, ss) = self.provider.kem(rec.algorithm)?.encapsulate(public)?;
                let header = envelope::header(rec.algorithm, &kid, &ct);
                let key = envelope::kem_wrap_key(rec.algorithm, &ss);
                let ad = envelope::associated_data(&header, aad);
                let sealed = aead::seal(&key[..], &nonce, &ad, plaintext)?;
                Ok(envelope::assemble(&header, &nonce, &sealed))
            }
            other => Err(Error::Internal(format!("{other} is not a wrap algorithm"))),
        }
    }

    /// [`Self::wrap_bytes`], on the blocking pool when the key is in a
    /// device (AES keys; a KEM wrap uses only the public key).
    async fn wrap_offloaded(
        self: &Arc<Self>,
        rec: &Arc<KeyRecord>,
        vn: u32,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        if rec.algorithm == Algorithm::Aes256Gcm && self.offload(rec.algorithm) {
            let (this, rec) = (self.clone(), rec.clone());
            let (plaintext, aad) = (Zeroizing::new(plaintext.to_vec()), aad.to_vec());
            self.blocking(move || this.wrap_bytes(&rec, vn, &plaintext, &aad))
                .await
        } else {
            self.wrap_bytes(rec, vn, plaintext, aad)
        }
    }

    pub(super) async fn wrap_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::WrapRequest,
    ) -> Result<proto::WrapResponse> {
        caller.require(Scope::Wrap)?;
        let key = KeyRef::parse(&req.key)?;
        if req.plaintext.len() > MAX_WRAP_PLAINTEXT {
            return Err(Error::InvalidArgument(format!(
                "plaintext must be at most {MAX_WRAP_PLAINTEXT} bytes"
            )));
        }
        if req.aad.len() > MAX_AAD {
            return Err(Error::InvalidArgument(format!(
                "aad must be at most {MAX_AAD} bytes"
            )));
        }
        let hash = request_hash(&[b"Wrap", req.key.as_bytes(), &req.plaintext, &req.aad]);
        if let Some(c) = self.cached(caller, &req.op_id, &hash)? {
            if let CachedAnswer::Wrap(r) = &c.answer {
                // A remembered answer is only given while the version that
                // produced it is still enabled.
                self.resolve(caller, &KeyRef::parse(&r.kid)?, Purpose::Wrap, "wrap")?;
                return Ok(r.clone());
            }
            return Err(Error::AlreadyExists(
                "op_id was used by another operation".into(),
            ));
        }
        let (rec, vn) = self.resolve(caller, &key, Purpose::Wrap, "wrap")?;
        let ciphertext = self
            .wrap_offloaded(&rec, vn, &req.plaintext, &req.aad)
            .await?;
        let resp = proto::WrapResponse {
            kid: rec.kid(vn),
            algorithm: rec.algorithm.as_str().to_string(),
            ciphertext,
        };
        self.remember(caller, &req.op_id, hash, CachedAnswer::Wrap(resp.clone()));
        Ok(resp)
    }

    pub(super) async fn unwrap_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::UnwrapRequest,
    ) -> Result<proto::UnwrapResponse> {
        caller.require(Scope::Unwrap)?;
        if req.aad.len() > MAX_AAD {
            return Err(Error::InvalidArgument(format!(
                "aad must be at most {MAX_AAD} bytes"
            )));
        }
        let env =
            envelope::parse(&req.ciphertext).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let named = KeyRef::parse(env.kid)
            .ok()
            .filter(|k| k.version.is_some())
            .ok_or_else(|| {
                Error::InvalidArgument("ciphertext carries a malformed key id".into())
            })?;
        if !req.key.is_empty() {
            let asked = KeyRef::parse(&req.key)?;
            if asked.name != named.name || asked.version.is_some_and(|v| Some(v) != named.version) {
                return Err(Error::InvalidArgument(format!(
                    "ciphertext was wrapped under {}, not {}",
                    env.kid, req.key
                )));
            }
        }
        let (rec, vn) = self.resolve(caller, &named, Purpose::Wrap, "unwrap")?;
        if rec.algorithm != env.algorithm {
            return Err(Error::UnwrapFailed);
        }
        let kid = rec.kid(vn);
        let ad = envelope::associated_data(env.header, &req.aad);
        self.attestation.check()?;
        let plaintext: Zeroizing<Vec<u8>> = match rec.algorithm {
            Algorithm::Aes256Gcm if self.offload(rec.algorithm) => {
                let (this, rec2, kid2) = (self.clone(), rec.clone(), kid.clone());
                let (nonce, sealed) = (env.nonce, env.sealed.to_vec());
                self.blocking(move || {
                    Ok(this.backend.aead_open(
                        label(&rec2, &kid2),
                        handle(&rec2, vn)?,
                        &nonce,
                        &ad,
                        &sealed,
                    )?)
                })
                .await?
            }
            Algorithm::Aes256Gcm => self.backend.aead_open(
                label(&rec, &kid),
                handle(&rec, vn)?,
                &env.nonce,
                &ad,
                env.sealed,
            )?,
            _ => {
                let ss = if self.offload(rec.algorithm) {
                    let (this, rec2, kid2, kem_ct) = (
                        self.clone(),
                        rec.clone(),
                        kid.clone(),
                        env.kem_ciphertext.to_vec(),
                    );
                    self.blocking(move || {
                        Ok(this.backend.decapsulate(
                            label(&rec2, &kid2),
                            handle(&rec2, vn)?,
                            &kem_ct,
                        )?)
                    })
                    .await?
                } else {
                    self.backend.decapsulate(
                        label(&rec, &kid),
                        handle(&rec, vn)?,
                        env.kem_ciphertext,
                    )?
                };
                let key = envelope::kem_wrap_key(rec.algorithm, &ss);
                aead::open(&key[..], &env.nonce, &ad, env.sealed)
                    .map_err(|_| Error::UnwrapFailed)?
            }
        };
        Ok(proto::UnwrapResponse {
            kid,
            plaintext: plaintext.to_vec(),
        })
    }

    pub(super) async fn generate_data_key_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::GenerateDataKeyRequest,
    ) -> Result<proto::GenerateDataKeyResponse> {
        caller.require(Scope::Wrap)?;
        let key = KeyRef::parse(&req.key)?;
        let len = match req.length {
            0 => 32,
            n @ 16..=64 => n as usize,
            _ => {
                return Err(Error::InvalidArgument(
                    "length must be between 16 and 64 bytes".into(),
                ))
            }
        };
        if req.aad.len() > MAX_AAD {
            return Err(Error::InvalidArgument(format!(
                "aad must be at most {MAX_AAD} bytes"
            )));
        }
        let hash = request_hash(&[
            b"GenerateDataKey",
            req.key.as_bytes(),
            &(len as u32).to_be_bytes(),
            &req.aad,
        ]);
        if let Some(c) = self.cached(caller, &req.op_id, &hash)? {
            if let CachedAnswer::DataKey(r) = &c.answer {
                // A remembered answer is only given while the version that
                // produced it is still enabled.
                self.resolve(caller, &KeyRef::parse(&r.kid)?, Purpose::Wrap, "datakey")?;
                return Ok(r.clone());
            }
            return Err(Error::AlreadyExists(
                "op_id was used by another operation".into(),
            ));
        }
        let (rec, vn) = self.resolve(caller, &key, Purpose::Wrap, "datakey")?;
        let mut plaintext = Zeroizing::new(vec![0u8; len]);
        random_bytes(&mut plaintext)?;
        let ciphertext = self.wrap_offloaded(&rec, vn, &plaintext, &req.aad).await?;
        let resp = proto::GenerateDataKeyResponse {
            kid: rec.kid(vn),
            plaintext: plaintext.to_vec(),
            ciphertext,
        };
        self.remember(
            caller,
            &req.op_id,
            hash,
            CachedAnswer::DataKey(resp.clone()),
        );
        Ok(resp)
    }
}
