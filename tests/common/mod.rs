//! Test harness: a real ron-kms on loopback (both fronts on real sockets)
//! and one client type that speaks either gRPC (tonic) or HTTP (reqwest), so
//! every scenario runs unchanged over both.
#![allow(dead_code)]

pub mod certs;
pub mod crl;
pub mod independent;
pub mod jose;
pub mod load;
pub mod mac;
pub mod pg;
pub mod process;
pub mod settings;
pub mod softhsm;
pub mod swtpm;

use std::path::{Path, PathBuf};

use ron_kms::auth::{create_token, NewToken, Scopes};
use ron_kms::config::Config;
use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::*;
use ron_kms::server::{self, Running};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    /// The TPM simulator when custody is `tpm` (dropped after the server).
    pub tpm: Option<swtpm::Swtpm>,
    /// For custody that is process-wide (a PKCS#11 module is initialised
    /// once per process): the real binary, serving from its own process.
    pub process: Option<process::Served>,
    pub hsm: Option<softhsm::SoftHsm>,
    pub admin_token: String,
}

/// Which custody a conformance test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Custody {
    SealedFile,
    /// A fresh SoftHSM2 token, served by the real binary in its own process.
    Pkcs11,
    /// A fresh swtpm, served in-process.
    Tpm,
}

/// A temp dir under `/dev/shm` when it exists and is writable, otherwise
/// the usual one (the choice is printed).
fn ram_tempdir() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(e) => {
            println!("no RAM file system for the data dir ({e}); using the default temp dir");
            tempfile::tempdir().unwrap()
        }
    }
}

pub fn config(data_dir: &Path) -> Config {
    let mut c = Config::for_data_dir(data_dir);
    c.grpc_addr = "127.0.0.1:0".parse().unwrap();
    c.http_addr = "127.0.0.1:0".parse().unwrap();
    c
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start with the test config adjusted by `f`.
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Self {
        Self::start_from(tempfile::tempdir().unwrap(), f).await
    }

    /// As [`TestServer::start_with`], with the data dir on a RAM file
    /// system (`/dev/shm`) where there is one, so that the disk's commit
    /// latency is not part of what a test measures. For the tests that
    /// time requests against an injected device latency: on a shared
    /// machine an fdatasync can stall for tens of milliseconds behind
    /// another process's writeback (CI writes gigabytes of build output
    /// just before the tests run), and every audited request waits for
    /// its commit.
    pub async fn start_on_tmpfs_with(f: impl FnOnce(&mut Config)) -> Self {
        Self::start_from(ram_tempdir(), f).await
    }

    /// In-process with its data under `dir`, the test config adjusted by `f`.
    async fn start_from(dir: tempfile::TempDir, f: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = config(&dir.path().join("data"));
        f(&mut cfg);
        Self::start_in(dir, &cfg, None).await
    }

    /// Serve `cfg` in-process from `dir` (with its swtpm, if any).
    async fn start_in(dir: tempfile::TempDir, cfg: &Config, tpm: Option<swtpm::Swtpm>) -> Self {
        let running = server::start(cfg).await.unwrap();
        let admin_token = running
            .bootstrap_token
            .clone()
            .expect("first start bootstraps");
        TestServer {
            dir,
            running: Some(running),
            tpm,
            process: None,
            hsm: None,
            admin_token,
        }
    }

    /// In-process on a fresh swtpm (state under the test's temp dir), with
    /// the config adjusted by `f`.
    pub async fn start_tpm_with(f: impl FnOnce(&mut Config, &swtpm::Swtpm)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tpm = swtpm::Swtpm::start(&dir.path().join("tpm"));
        let mut cfg = config(&dir.path().join("data"));
        cfg.backend = tpm.backend();
        f(&mut cfg, &tpm);
        Self::start_in(dir, &cfg, Some(tpm)).await
    }

    /// A server on `custody`: in-process for sealed-file; for PKCS#11 a
    /// fresh SoftHSM2 token and the real binary in its own process.
    pub async fn start_on(custody: Custody) -> Self {
        match custody {
            Custody::SealedFile => Self::start().await,
            Custody::Pkcs11 => Self::start_pkcs11(&[]).await,
            Custody::Tpm => Self::start_tpm_with(|_, _| {}).await,
        }
    }

    /// The real binary on a fresh SoftHSM2 token, with extra environment.
    pub async fn start_pkcs11(extra_env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let hsm = softhsm::SoftHsm::new(&dir.path().join("hsm"), "ron-kms-test");
        let data = dir.path().join("data");
        let env = hsm.env();
        let mut envs: Vec<(&str, &std::ffi::OsStr)> =
            env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
        envs.extend_from_slice(extra_env);
        let served = tokio::task::block_in_place(|| {
            process::serve_with(&["--data-dir".as_ref(), data.as_os_str()], &envs, None)
        });
        let admin_token = served.token.clone().expect("first start bootstraps");
        TestServer {
            dir,
            running: None,
            tpm: None,
            process: Some(served),
            hsm: Some(hsm),
            admin_token,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Stop and start again on the same data dir (new ports).
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        let mut cfg = config(&self.data_dir());
        if let Some(t) = &self.tpm {
            cfg.backend = t.backend();
        }
        let r = server::start(&cfg).await.unwrap();
        assert!(r.bootstrap_token.is_none(), "bootstrap happens only once");
        self.running = Some(r);
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// A new token for `tenant` with `scopes`, visible to the server at once.
    pub fn token(&self, tenant: &str, scopes: &str) -> String {
        let kms = &self.running().kms;
        let (t, _) = create_token(
            kms.store().as_ref(),
            &NewToken {
                tenant: tenant.into(),
                scopes: Scopes::parse(scopes).unwrap(),
                ..NewToken::default()
            },
        )
        .unwrap();
        kms.tokens().reload().unwrap();
        t
    }

    pub async fn client(&self, front: Front, token: &str) -> Client {
        match (&self.running, &self.process) {
            (Some(r), _) => Client::connect(front, r, token).await,
            (None, Some(p)) => {
                Client::connect_to(front, &p.grpc, &format!("http://{}", p.http), token).await
            }
            (None, None) => panic!("server is stopped"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    Grpc,
    Http,
}

pub const FRONTS: [Front; 2] = [Front::Grpc, Front::Http];

/// An error as a client sees it, on either front.
#[derive(Debug, Clone)]
pub struct ApiErr {
    pub http: Option<u16>,
    pub grpc: Option<tonic::Code>,
    pub code: String,
    pub message: String,
    /// gRPC: `grpc-retry-pushback-ms`; HTTP: the `Retry-After` header, in ms.
    pub retry_after_ms: Option<u64>,
}

impl ApiErr {
    /// Assert the exact status on whichever front produced this error.
    #[track_caller]
    pub fn expect(&self, http: u16, grpc: tonic::Code, code: &str) {
        match (self.http, self.grpc) {
            (Some(h), None) => assert_eq!(h, http, "HTTP status for {self:?}"),
            (None, Some(g)) => assert_eq!(g, grpc, "gRPC code for {self:?}"),
            _ => panic!("malformed ApiErr {self:?}"),
        }
        assert_eq!(self.code, code, "error code for {self:?}");
    }
}

/// A batch RPC on either front: `$name` is the tonic method.
macro_rules! batch_call {
    ($name:ident, $req:ident, $resp:ident, $path:literal) => {
        pub async fn $name(&mut self, req: $req) -> Result<$resp, ApiErr> {
            match &mut self.transport {
                Transport::Grpc(_) => {
                    let r = self.grpc_req(req);
                    let Transport::Grpc(c) = &mut self.transport else {
                        unreachable!()
                    };
                    c.$name(r)
                        .await
                        .map(|r| r.into_inner())
                        .map_err(from_status)
                }
                Transport::Http(..) => self.http(reqwest::Method::POST, $path, Some(&req)).await,
            }
        }
    };
}

pub enum Transport {
    Grpc(KmsClient<Channel>),
    Http(reqwest::Client, String),
}

pub struct Client {
    pub front: Front,
    pub transport: Transport,
    pub token: String,
}

fn from_status(s: tonic::Status) -> ApiErr {
    ApiErr {
        http: None,
        grpc: Some(s.code()),
        code: s
            .metadata()
            .get("kms-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        message: s.message().to_string(),
        retry_after_ms: s
            .metadata()
            .get("grpc-retry-pushback-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    }
}

impl Client {
    pub async fn connect(front: Front, r: &Running, token: &str) -> Self {
        Self::connect_to(
            front,
            &format!("http://{}", r.grpc_addr),
            &format!("http://{}", r.http_addr),
            token,
        )
        .await
    }

    /// `grpc` and `http` are base URLs (`http://host:port`).
    pub async fn connect_to(front: Front, grpc: &str, http: &str, token: &str) -> Self {
        let transport = match front {
            Front::Grpc => Transport::Grpc(
                KmsClient::connect(grpc.to_string())
                    .await
                    .unwrap()
                    .max_encoding_message_size(8 << 20),
            ),
            Front::Http => Transport::Http(reqwest::Client::new(), http.to_string()),
        };
        Client {
            front,
            transport,
            token: token.to_string(),
        }
    }

    fn grpc_req<T>(&self, m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        if !self.token.is_empty() {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", self.token).parse().unwrap(),
            );
        }
        r
    }

    /// Send raw bytes to an HTTP route: (status, JSON body).
    pub async fn http_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let (status, _, v) = self.http_full(method, path, body).await;
        (status, v)
    }

    /// As [`Client::http_raw`], with the `Retry-After` header in ms.
    async fn http_full(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, Option<u64>, serde_json::Value) {
        let Transport::Http(c, base) = &self.transport else {
            panic!("http_raw on a gRPC client")
        };
        let mut rb = c.request(method, format!("{base}{path}")).body(body);
        if !self.token.is_empty() {
            rb = rb.bearer_auth(&self.token);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        assert!(
            resp.headers().contains_key("x-request-id"),
            "every response carries a request id"
        );
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|s| s * 1000);
        let v = resp
            .json::<serde_json::Value>()
            .await
            .unwrap_or(serde_json::Value::Null);
        (status, retry_after, v)
    }

    async fn http<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Resp, ApiErr> {
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let (status, retry_after, v) = self.http_full(method, path, bytes).await;
        if status == 200 {
            Ok(serde_json::from_value(v).expect("response matches the message schema"))
        } else {
            let e = &v["error"];
            assert_eq!(
                e["request_id"].as_str().map(str::len),
                Some(16),
                "envelope has request_id: {v}"
            );
            assert!(e["retryable"].is_boolean(), "envelope has retryable: {v}");
            Err(ApiErr {
                http: Some(status),
                grpc: None,
                code: e["code"].as_str().unwrap_or("").to_string(),
                message: e["message"].as_str().unwrap_or("").to_string(),
                retry_after_ms: retry_after,
            })
        }
    }

    pub async fn create_key(&mut self, req: CreateKeyRequest) -> Result<CreateKeyResponse, ApiErr> {
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.create_key(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                self.http(reqwest::Method::POST, "/v1/kms/keys", Some(&req))
                    .await
            }
        }
    }

    pub async fn create(&mut self, name: &str, alg: &str) -> Result<Key, ApiErr> {
        self.create_key(CreateKeyRequest {
            name: name.into(),
            algorithm: alg.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.key.unwrap())
    }

    pub async fn get_key(&mut self, name: &str, pem: bool) -> Result<Key, ApiErr> {
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(GetKeyRequest {
                    name: name.into(),
                    pem,
                });
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.get_key(r)
                    .await
                    .map(|r| r.into_inner().key.unwrap())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                let path = format!("/v1/kms/keys/{name}{}", if pem { "?pem=true" } else { "" });
                self.http::<(), GetKeyResponse>(reqwest::Method::GET, &path, None)
                    .await
                    .map(|r| r.key.unwrap())
            }
        }
    }

    pub async fn list_keys(
        &mut self,
        page_size: u32,
        page_token: &str,
    ) -> Result<ListKeysResponse, ApiErr> {
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(ListKeysRequest {
                    page_size,
                    page_token: page_token.into(),
                });
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.list_keys(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                let path = format!("/v1/kms/keys?page_size={page_size}&page_token={page_token}");
                self.http::<(), _>(reqwest::Method::GET, &path, None).await
            }
        }
    }

    pub async fn create_token(
        &mut self,
        req: CreateTokenRequest,
    ) -> Result<CreateTokenResponse, ApiErr> {
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.create_token(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                self.http(reqwest::Method::POST, "/v1/kms/tokens", Some(&req))
                    .await
            }
        }
    }

    /// Every token of `tenant` ("" for the caller's), inactive ones too.
    pub async fn list_tokens(&mut self, tenant: &str) -> Result<ListTokensResponse, ApiErr> {
        let req = ListTokensRequest {
            tenant: tenant.into(),
            page_size: 1000,
            page_token: String::new(),
            include_inactive: true,
        };
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.list_tokens(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                let path =
                    format!("/v1/kms/tokens?tenant={tenant}&page_size=1000&include_inactive=true");
                self.http::<(), _>(reqwest::Method::GET, &path, None).await
            }
        }
    }

    pub async fn revoke_token(
        &mut self,
        id: &str,
        tenant: &str,
    ) -> Result<RevokeTokenResponse, ApiErr> {
        let req = RevokeTokenRequest {
            id: id.into(),
            tenant: tenant.into(),
        };
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.revoke_token(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                let path = format!("/v1/kms/tokens/{id}/revoke");
                self.http(reqwest::Method::POST, &path, Some(&req)).await
            }
        }
    }

    pub async fn rotate(&mut self, name: &str, op_id: &str) -> Result<RotateKeyResponse, ApiErr> {
        let req = RotateKeyRequest {
            name: name.into(),
            op_id: op_id.into(),
        };
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.rotate_key(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                let body = serde_json::json!({ "op_id": op_id });
                self.http(
                    reqwest::Method::POST,
                    &format!("/v1/kms/keys/{name}/rotate"),
                    Some(&body),
                )
                .await
            }
        }
    }

    pub async fn set_state(
        &mut self,
        name: &str,
        version: u32,
        state: &str,
    ) -> Result<Key, ApiErr> {
        let req = SetKeyVersionStateRequest {
            name: name.into(),
            version,
            state: state.into(),
            op_id: String::new(),
        };
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.set_key_version_state(r)
                    .await
                    .map(|r| r.into_inner().key.unwrap())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                let body = serde_json::json!({ "state": state });
                self.http::<_, SetKeyVersionStateResponse>(
                    reqwest::Method::POST,
                    &format!("/v1/kms/keys/{name}/versions/{version}/state"),
                    Some(&body),
                )
                .await
                .map(|r| r.key.unwrap())
            }
        }
    }

    batch_call!(
        sign_batch,
        SignBatchRequest,
        SignBatchResponse,
        "/v1/kms/batch/sign"
    );
    batch_call!(
        verify_batch,
        VerifyBatchRequest,
        VerifyBatchResponse,
        "/v1/kms/batch/verify"
    );
    batch_call!(
        wrap_batch,
        WrapBatchRequest,
        WrapBatchResponse,
        "/v1/kms/batch/wrap"
    );
    batch_call!(
        unwrap_batch,
        UnwrapBatchRequest,
        UnwrapBatchResponse,
        "/v1/kms/batch/unwrap"
    );
    batch_call!(
        hash_audit_input,
        HashAuditInputRequest,
        HashAuditInputResponse,
        "/v1/kms/audit/input-hmac"
    );

    /// The `input_hmac` this node's records carry for `input` (needs a
    /// kms:operator token).
    pub async fn input_hmac(&mut self, input: &[u8]) -> String {
        self.hash_audit_input(HashAuditInputRequest {
            input: input.to_vec(),
        })
        .await
        .unwrap()
        .input_hmac
    }

    pub async fn sign_req(&mut self, req: SignRequest) -> Result<SignResponse, ApiErr> {
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.sign(r).await.map(|r| r.into_inner()).map_err(from_status)
            }
            Transport::Http(..) => {
                self.http(reqwest::Method::POST, "/v1/kms/sign", Some(&req))
                    .await
            }
        }
    }

    pub async fn sign(&mut self, key: &str, message: &[u8]) -> Result<SignResponse, ApiErr> {
        self.sign_ctx(key, message, b"").await
    }

    /// Sign with a composite signature's context string.
    pub async fn sign_ctx(
        &mut self,
        key: &str,
        message: &[u8],
        context: &[u8],
    ) -> Result<SignResponse, ApiErr> {
        self.sign_req(SignRequest {
            context: context.to_vec(),
            key: key.into(),
            message: message.to_vec(),
            op_id: String::new(),
            ..Default::default()
        })
        .await
    }

    pub async fn verify(
        &mut self,
        key: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<VerifyResponse, ApiErr> {
        self.verify_ctx(key, message, signature, b"").await
    }

    /// Verify with a composite signature's context string.
    pub async fn verify_ctx(
        &mut self,
        key: &str,
        message: &[u8],
        signature: &[u8],
        context: &[u8],
    ) -> Result<VerifyResponse, ApiErr> {
        self.verify_req(VerifyRequest {
            context: context.to_vec(),
            key: key.into(),
            message: message.to_vec(),
            signature: signature.to_vec(),
            ..Default::default()
        })
        .await
    }

    pub async fn verify_req(&mut self, req: VerifyRequest) -> Result<VerifyResponse, ApiErr> {
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.verify(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                self.http(reqwest::Method::POST, "/v1/kms/verify", Some(&req))
                    .await
            }
        }
    }

    /// Phase 1 of the PQ policy: hybrid keys sign composite signatures
    /// (phase 0, the default, signs with the classical component alone).
    pub async fn sign_composites(&mut self) {
        self.set_pq_policy(
            PqPolicy {
                phase: 1,
                produce_hybrid: true,
                verify_mode: "or".into(),
                ..Default::default()
            },
            "composite signatures",
        )
        .await
        .unwrap();
    }

    pub async fn get_pq_policy(&mut self) -> Result<PqPolicyResponse, ApiErr> {
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(GetPqPolicyRequest {});
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.get_pq_policy(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                self.http::<(), _>(reqwest::Method::GET, "/v1/kms/policy/pq", None)
                    .await
            }
        }
    }

    pub async fn set_pq_policy(
        &mut self,
        policy: PqPolicy,
        reason: &str,
    ) -> Result<PqPolicyResponse, ApiErr> {
        let req = SetPqPolicyRequest {
            policy: Some(policy),
            reason: reason.into(),
        };
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.set_pq_policy(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                self.http(reqwest::Method::PUT, "/v1/kms/policy/pq", Some(&req))
                    .await
            }
        }
    }

    pub async fn wrap_req(&mut self, req: WrapRequest) -> Result<WrapResponse, ApiErr> {
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.wrap(r).await.map(|r| r.into_inner()).map_err(from_status)
            }
            Transport::Http(..) => {
                self.http(reqwest::Method::POST, "/v1/kms/wrap", Some(&req))
                    .await
            }
        }
    }

    pub async fn wrap(
        &mut self,
        key: &str,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<WrapResponse, ApiErr> {
        self.wrap_req(WrapRequest {
            key: key.into(),
            plaintext: plaintext.to_vec(),
            aad: aad.to_vec(),
            op_id: String::new(),
        })
        .await
    }

    pub async fn unwrap(
        &mut self,
        key: &str,
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<UnwrapResponse, ApiErr> {
        let req = UnwrapRequest {
            key: key.into(),
            ciphertext: ciphertext.to_vec(),
            aad: aad.to_vec(),
        };
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.unwrap(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                self.http(reqwest::Method::POST, "/v1/kms/unwrap", Some(&req))
                    .await
            }
        }
    }

    pub async fn datakey(
        &mut self,
        req: GenerateDataKeyRequest,
    ) -> Result<GenerateDataKeyResponse, ApiErr> {
        match &mut self.transport {
            Transport::Grpc(_) => {
                let r = self.grpc_req(req);
                let Transport::Grpc(c) = &mut self.transport else {
                    unreachable!()
                };
                c.generate_data_key(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(from_status)
            }
            Transport::Http(..) => {
                self.http(reqwest::Method::POST, "/v1/kms/datakey", Some(&req))
                    .await
            }
        }
    }
}

/// Every file below `dir`, recursively.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Files under `dir` containing `needle`.
/// Every 16-byte window of every file under `dirs`.
pub fn disk_windows(dirs: &[PathBuf]) -> std::collections::HashSet<Vec<u8>> {
    let mut set = std::collections::HashSet::new();
    for d in dirs {
        for f in all_files(d) {
            for w in std::fs::read(f).unwrap().windows(16) {
                set.insert(w.to_vec());
            }
        }
    }
    set
}

/// The 16-byte windows of a private key encoding that are wholly private,
/// with their offsets. Some encodings embed public values (a P-256 PKCS#8
/// carries the public point, an ML-KEM decapsulation key its encapsulation
/// key, an ML-DSA key shares rho with its public key): every byte inside a
/// window that also occurs in `public` is public, and a window that touches
/// one is left out. (Leaving out only the public windows themselves is not
/// enough: a window of one private byte and 15 public ones is found on disk
/// whenever that byte equals the byte stored before the public key — 1 in
/// 256 per ML-KEM key; tests/custody.rs failed 2 of 60 runs that way.)
pub fn private_windows<'a>(private: &'a [u8], public: &[u8]) -> Vec<(usize, &'a [u8])> {
    let mut public_byte = vec![false; private.len()];
    for (off, w) in private.windows(16).enumerate() {
        if public.windows(16).any(|p| p == w) {
            public_byte[off..off + 16]
                .iter_mut()
                .for_each(|b| *b = true);
        }
    }
    private
        .windows(16)
        .enumerate()
        .filter(|(off, _)| !public_byte[*off..*off + 16].iter().any(|b| *b))
        .collect()
}

/// The public key stored for a key version.
pub fn stored_public(data_dir: &Path, tenant: &str, name: &str, version: u32) -> Vec<u8> {
    let conn = rusqlite::Connection::open(data_dir.join("kms.sqlite3")).unwrap();
    conn.query_row(
        "SELECT public_key FROM key_versions WHERE tenant = ?1 AND name = ?2 AND version = ?3",
        rusqlite::params![tenant, name, version],
        |r| r.get(0),
    )
    .unwrap()
}

pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    assert!(needle.len() >= 16, "needle too short to be meaningful");
    all_files(dir)
        .into_iter()
        .filter(|p| {
            let hay = std::fs::read(p).unwrap();
            hay.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

/// The custody handle stored for one version, read straight from the
/// SQLite file (a separate connection, closed before returning).
pub fn stored_handle(data_dir: &Path, tenant: &str, name: &str, version: u32) -> Option<Vec<u8>> {
    let conn = rusqlite::Connection::open(data_dir.join("kms.sqlite3")).unwrap();
    conn.query_row(
        "SELECT handle FROM key_versions WHERE tenant = ?1 AND name = ?2 AND version = ?3",
        rusqlite::params![tenant, name, version],
        |r| r.get::<_, Option<Vec<u8>>>(0),
    )
    .unwrap()
}

/// A counter or gauge from the in-process Prometheus exposition.
pub fn metric(series: &str) -> f64 {
    let text = ron_kms::telemetry::render().expect("recorder installed");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}
