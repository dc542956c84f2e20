//! UpdateKey and DeleteKey on either front (key settings, issue 35).
use ron_kms::proto::{DeleteKeyRequest, DeleteKeyResponse, UpdateKeyRequest, UpdateKeyResponse};

use super::{from_status, ApiErr, Client, Transport};

impl Client {
    pub async fn update_key(&mut self, req: UpdateKeyRequest) -> Result<UpdateKeyResponse, ApiErr> {
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.update_key(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                let path = format!("/v1/kms/keys/{}", req.name);
                self.http(reqwest::Method::PATCH, &path, Some(&req)).await
            }
        }
    }

    pub async fn delete_key(&mut self, name: &str) -> Result<DeleteKeyResponse, ApiErr> {
        let req = DeleteKeyRequest {
            name: name.into(),
            ..Default::default()
        };
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.delete_key(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                let path = format!("/v1/kms/keys/{name}");
                self.http::<(), _>(reqwest::Method::DELETE, &path, None)
                    .await
            }
        }
    }
}
