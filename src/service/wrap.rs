//! Wrap, unwrap and data keys: seal under a wrap key (in custody for AES,
//! to the public key for the KEMs), open the envelope, never touch the
//! store.
use super::calls::{unwrap_call, unwrap_desc, wrap_call, wrap_desc, Call};
use super::*;
use crate::ops::Method;

impl KmsService {
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

    pub async fn wrap(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::WrapRequest,
    ) -> Result<proto::WrapResponse> {
        let call = wrap_call(&self.audit, &req);
        self.call(caller, call, self.wrap_inner(caller, req), wrap_desc)
            .await
    }

    pub async fn unwrap(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::UnwrapRequest,
    ) -> Result<proto::UnwrapResponse> {
        let call = unwrap_call(&self.audit, &req);
        self.call(caller, call, self.unwrap_inner(caller, req), unwrap_desc)
            .await
    }

    pub async fn generate_data_key(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::GenerateDataKeyRequest,
    ) -> Result<proto::GenerateDataKeyResponse> {
        let call = Call::new(Method::GenerateDataKey, &req.key);
        self.call(
            caller,
            call,
            self.generate_data_key_inner(caller, req),
            |r| (r.kid.clone(), String::new()),
        )
        .await
    }
}
