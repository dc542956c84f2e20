//! Mac and VerifyMac: the tag of a message under an HMAC key, computed in
//! custody (on the token for a PKCS#11 key; unsealed for one operation
//! otherwise); a presented tag is compared with the computed one in
//! constant time. Never touches the store.
use super::calls::Call;
use super::*;
use crate::crypto::mac;
use crate::ops::Method;

impl KmsService {
    /// The tag of `message` under the key `key` names, and the version
    /// that made it.
    async fn tag(
        self: &Arc<Self>,
        caller: &Caller,
        key: &KeyRef,
        message: Vec<u8>,
        op: &'static str,
    ) -> Result<(Arc<KeyRecord>, String, Vec<u8>)> {
        let (rec, vn) = self.resolve(caller, key, Purpose::Mac, op)?;
        self.custody_ready()?;
        let kid = rec.kid(vn);
        let tag = self
            .in_custody(&rec, vn, &kid, move |b, l, h| b.mac(l, h, &message))
            .await?;
        Ok((rec, kid, tag))
    }

    async fn mac_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::MacRequest,
    ) -> Result<proto::MacResponse> {
        caller.require(Scope::Sign)?;
        let key = KeyRef::parse(&req.key)?;
        let (rec, kid, mac) = self.tag(caller, &key, req.message, "mac").await?;
        Ok(proto::MacResponse {
            kid,
            algorithm: rec.algorithm.as_str().to_string(),
            mac,
        })
    }

    async fn verify_mac_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::VerifyMacRequest,
    ) -> Result<proto::VerifyMacResponse> {
        caller.require(Scope::Verify)?;
        let key = KeyRef::parse(&req.key)?;
        if req.mac.is_empty() {
            return Err(Error::InvalidArgument(
                "field mac: required (the tag to check)".into(),
            ));
        }
        let (rec, kid, computed) = self.tag(caller, &key, req.message, "verify_mac").await?;
        Ok(proto::VerifyMacResponse {
            valid: mac::tags_equal(&computed, &req.mac),
            kid,
            algorithm: rec.algorithm.as_str().to_string(),
        })
    }

    pub async fn mac(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::MacRequest,
    ) -> Result<proto::MacResponse> {
        let call = Call::new(Method::Mac, &req.key).input(&self.audit, &req.message);
        self.call(caller, call, self.mac_inner(caller, req), |r| {
            (r.kid.clone(), r.algorithm.clone())
        })
        .await
    }

    pub async fn verify_mac(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::VerifyMacRequest,
    ) -> Result<proto::VerifyMacResponse> {
        let call = Call::new(Method::VerifyMac, &req.key).input(&self.audit, &req.message);
        self.call(caller, call, self.verify_mac_inner(caller, req), |r| {
            (r.kid.clone(), format!("{} valid={}", r.algorithm, r.valid))
        })
        .await
    }
}
