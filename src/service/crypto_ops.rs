//! Sign, verify, wrap, unwrap and data keys: read the snapshot, run the
//! private-key operation in custody (on the bounded pool when it is heavy),
//! never touch the store.
use super::*;

impl KmsService {
    // ----- crypto ------------------------------------------------------

    pub(super) async fn sign_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::SignRequest,
    ) -> Result<proto::SignResponse> {
        caller.require(Scope::Sign)?;
        let key = KeyRef::parse(&req.key)?;
        let hash = request_hash(&[b"Sign", req.key.as_bytes(), &req.message]);
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
        let kid = rec.kid(vn);
        let signature = if rec.algorithm.private_op_is_heavy() {
            let (this, rec, kid, msg) = (self.clone(), rec.clone(), kid.clone(), req.message);
            self.blocking(move || {
                Ok(this
                    .backend
                    .sign(label(&rec, &kid), handle(&rec, vn)?, &msg)?)
            })
            .await?
        } else {
            self.backend
                .sign(label(&rec, &kid), handle(&rec, vn)?, &req.message)?
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
        let (rec, vn) = self.resolve(caller, &key, Purpose::Sign, "verify")?;
        let alg = rec.algorithm;
        let public = &rec
            .version(vn)
            .ok_or_else(|| Error::Internal("resolved version missing".into()))?
            .public_key;
        let valid = if alg.verify_is_heavy() {
            let (p, public, msg, sig) = (
                self.provider.clone(),
                public.clone(),
                req.message,
                req.signature,
            );
            self.blocking(move || Ok(p.signer(alg)?.verify(&public, &msg, &sig)))
                .await?
        } else {
            self.provider
                .signer(alg)?
                .verify(public, &req.message, &req.signature)
        };
        Ok(proto::VerifyResponse {
            valid,
            kid: rec.kid(vn),
            algorithm: alg.as_str().to_string(),
        })
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
            Algorithm::MlKem768 | Algorithm::MlKem1024 => {
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
        let ciphertext = self.wrap_bytes(&rec, vn, &req.plaintext, &req.aad)?;
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
        let plaintext: Zeroizing<Vec<u8>> = match rec.algorithm {
            Algorithm::Aes256Gcm => self.backend.aead_open(
                label(&rec, &kid),
                handle(&rec, vn)?,
                &env.nonce,
                &ad,
                env.sealed,
            )?,
            _ => {
                let (this, rec2, kid2, kem_ct) = (
                    self.clone(),
                    rec.clone(),
                    kid.clone(),
                    env.kem_ciphertext.to_vec(),
                );
                let ss = self
                    .blocking(move || {
                        Ok(this.backend.decapsulate(
                            label(&rec2, &kid2),
                            handle(&rec2, vn)?,
                            &kem_ct,
                        )?)
                    })
                    .await?;
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
        let ciphertext = self.wrap_bytes(&rec, vn, &plaintext, &req.aad)?;
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
