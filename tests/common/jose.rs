//! SignJws on either front, and the tenant's JWKS over plain HTTP (JOSE,
//! issue 34).
use ron_kms::proto::{SignJwsRequest, SignJwsResponse};

use super::{from_status, ApiErr, Client, Transport};

impl Client {
    pub async fn sign_jws(
        &mut self,
        key: &str,
        header: &str,
        payload: &[u8],
    ) -> Result<SignJwsResponse, ApiErr> {
        let req = SignJwsRequest {
            key: key.into(),
            header: header.as_bytes().to_vec(),
            payload: payload.to_vec(),
            ..Default::default()
        };
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.sign_jws(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                self.http(reqwest::Method::POST, "/v1/kms/sign-jws", Some(&req))
                    .await
            }
        }
    }
}

/// `GET /v1/kms/jwks/{tenant}` without credentials: (status, headers, body).
pub async fn fetch_jwks(
    http_addr: &str,
    tenant: &str,
    if_none_match: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut rb = reqwest::Client::new().get(format!("http://{http_addr}/v1/kms/jwks/{tenant}"));
    if let Some(e) = if_none_match {
        rb = rb.header("if-none-match", e);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, headers, body)
}
