//! Mac and VerifyMac on either front (HMAC keys, issue 33).
use ron_kms::proto::{MacRequest, MacResponse, VerifyMacRequest, VerifyMacResponse};

use super::{from_status, ApiErr, Client, Transport};

impl Client {
    pub async fn mac(&mut self, key: &str, message: &[u8]) -> Result<MacResponse, ApiErr> {
        let req = MacRequest {
            key: key.into(),
            message: message.to_vec(),
        };
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.mac(r).await.map(|r| r.into_inner()).map_err(from_status)
            }
            Transport::Http(..) => {
                self.http(reqwest::Method::POST, "/v1/kms/mac", Some(&req))
                    .await
            }
        }
    }

    pub async fn verify_mac(
        &mut self,
        key: &str,
        message: &[u8],
        mac: &[u8],
    ) -> Result<VerifyMacResponse, ApiErr> {
        let req = VerifyMacRequest {
            key: key.into(),
            message: message.to_vec(),
            mac: mac.to_vec(),
        };
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.verify_mac(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                self.http(reqwest::Method::POST, "/v1/kms/verify-mac", Some(&req))
                    .await
            }
        }
    }
}
