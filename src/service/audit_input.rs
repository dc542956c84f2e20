//! `HashAuditInput`: how an auditor with a `kms:operator` token checks that
//! a record is about a given input (docs/audit.md, "Checking an input")
//! without the input key ever leaving the service.
use super::calls::Call;
use super::*;
use crate::ops::Method;

impl KmsService {
    pub async fn hash_audit_input(
        self: &Arc<Self>,
        caller: &Caller,
        req: proto::HashAuditInputRequest,
    ) -> Result<proto::HashAuditInputResponse> {
        let call = Call::new(Method::HashAuditInput, "").input(&self.audit, &req.input);
        let answer = proto::HashAuditInputResponse {
            input_hmac: hex::encode(self.audit.input_hmac(&req.input)),
            node: self.audit.node().to_string(),
        };
        self.call(caller, call, async move { Ok(answer) }, |_| {
            (String::new(), String::new())
        })
        .await
    }
}
