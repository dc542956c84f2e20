//! The yardstick: a bare server speaking the same gRPC service and the same
//! HTTP/JSON routes as ron-kms, whose handlers do only the crypto with one
//! key loaded at start — no auth, no keyring, no admission, no audit, no
//! metrics (batches loop over the same crypto per item). Whatever throughput and latency the service loses against it, at
//! the same concurrency in the same run, is the service's own overhead.
//!
//! Classical keys are parsed once: Ed25519 into the service's own prepared
//! key type (ed25519-dalek, or aws-lc-rs with the `aws-lc` feature), P-256
//! into a ring key pair; ML-DSA and ML-KEM go
//! through the same provider the service uses, with the private key held in
//! memory.
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use ring::signature as rsig;
use ron_kms::crypto::envelope;
use ron_kms::crypto::scheme::SignatureScheme;
use ron_kms::crypto::{aead, random_bytes, Algorithm, Provider};
use ron_kms::proto::kms_server::{Kms, KmsServer};
use ron_kms::proto::*;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

const KID: &str = "bare#v1";

enum Signer {
    /// The service's own prepared Ed25519 key type (backend::soft).
    Ed25519(ron_kms::backend::soft::Prepared),
    P256(rsig::EcdsaKeyPair),
    /// ML-DSA (and anything else the provider signs) from raw private bytes.
    Provider(Zeroizing<Vec<u8>>),
    None,
}

pub struct Bare {
    alg: Algorithm,
    provider: Provider,
    public: Vec<u8>,
    private: Zeroizing<Vec<u8>>,
    signer: Signer,
}

impl Bare {
    pub fn new(alg: Algorithm) -> Result<Self, String> {
        let provider = Provider::default();
        let kp = provider.generate(alg).map_err(|e| e.to_string())?;
        let rng = ring::rand::SystemRandom::new();
        let signer = match alg {
            Algorithm::Ed25519 => {
                let seed: &[u8; 32] = kp
                    .private
                    .as_slice()
                    .try_into()
                    .map_err(|_| "ed25519 seed")?;
                Signer::Ed25519(ron_kms::backend::soft::prepare(seed).map_err(|e| e.to_string())?)
            }
            Algorithm::EcdsaP256 => Signer::P256(
                rsig::EcdsaKeyPair::from_pkcs8(
                    &rsig::ECDSA_P256_SHA256_ASN1_SIGNING,
                    &kp.private,
                    &rng,
                )
                .map_err(|_| "p-256 key".to_string())?,
            ),
            a if a.is_kem() || a == Algorithm::Aes256Gcm => Signer::None,
            _ => Signer::Provider(kp.private.clone()),
        };
        Ok(Bare {
            alg,
            provider,
            public: kp.public,
            private: kp.private,
            signer,
        })
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Status> {
        match &self.signer {
            Signer::Ed25519(k) => Ok(ron_kms::backend::soft::sign_prepared(k, message)),
            Signer::P256(k) => k
                .sign(&ring::rand::SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| Status::internal("sign")),
            Signer::Provider(p) => self
                .provider
                .signer(self.alg)
                .and_then(|s| s.sign(p, message))
                .map_err(|e| Status::internal(e.to_string())),
            Signer::None => Err(Status::invalid_argument("not a signing key")),
        }
    }

    /// The signer, and for the hybrid the message representative M′ built
    /// from its pre-hash (which it signs as a message); `None`: the digest
    /// itself goes to `sign_prehashed` / `verify_prehashed`. The same
    /// crypto the service's custody runs for a digest.
    fn digest_input(
        &self,
        digest: &[u8],
    ) -> Result<(&dyn SignatureScheme, Option<Vec<u8>>), Status> {
        let s = self
            .provider
            .signer(self.alg)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !self.alg.is_hybrid() {
            return Ok((s, None));
        }
        let m = ron_kms::crypto::hybrid::representative_of_prehash(digest, &[])
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok((s, Some(m)))
    }

    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, Status> {
        match self.digest_input(digest)? {
            (s, Some(m)) => s.sign(&self.private, &m),
            (s, None) => s.sign_prehashed(&self.private, digest),
        }
        .map_err(|e| Status::internal(e.to_string()))
    }

    fn verify_digest(&self, digest: &[u8], signature: &[u8]) -> Result<bool, Status> {
        Ok(match self.digest_input(digest)? {
            (s, Some(m)) => s.verify(&self.public, &m, signature),
            (s, None) => s.verify_prehashed(&self.public, digest, signature),
        })
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<bool, Status> {
        Ok(self
            .provider
            .signer(self.alg)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .verify(&self.public, message, signature))
    }

    fn wrap(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Status> {
        let kem = self
            .provider
            .kem(self.alg)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
        random_bytes(&mut nonce).map_err(|e| Status::internal(e.to_string()))?;
        let (ct, ss) = kem
            .encapsulate(&self.public)
            .map_err(|e| Status::internal(e.to_string()))?;
        let header = envelope::header(self.alg, KID, &ct);
        let key = envelope::kem_wrap_key(self.alg, &ss);
        let ad = envelope::associated_data(&header, aad);
        let sealed = aead::seal(&key[..], &nonce, &ad, plaintext)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(envelope::assemble(&header, &nonce, &sealed))
    }

    fn unwrap(&self, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Status> {
        let env =
            envelope::parse(ciphertext).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let kem = self
            .provider
            .kem(self.alg)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ss = kem
            .decapsulate(&self.private, env.kem_ciphertext)
            .map_err(|_| Status::invalid_argument("unwrap failed"))?;
        let key = envelope::kem_wrap_key(self.alg, &ss);
        let ad = envelope::associated_data(env.header, aad);
        let pt = aead::open(&key[..], &env.nonce, &ad, env.sealed)
            .map_err(|_| Status::invalid_argument("unwrap failed"))?;
        Ok(pt.to_vec())
    }
}

/// The same operations for the raw-crypto loop (no server).
impl Bare {
    pub fn sign_bytes(&self, m: &[u8]) -> Result<Vec<u8>, String> {
        self.sign(m).map_err(|s| s.message().to_string())
    }
    pub fn verify_bytes(&self, m: &[u8], sig: &[u8]) -> Result<bool, String> {
        self.verify(m, sig).map_err(|s| s.message().to_string())
    }
    pub fn wrap_bytes(&self, pt: &[u8]) -> Result<Vec<u8>, String> {
        self.wrap(pt, b"").map_err(|s| s.message().to_string())
    }
    pub fn unwrap_bytes(&self, ct: &[u8]) -> Result<Vec<u8>, String> {
        self.unwrap(ct, b"").map_err(|s| s.message().to_string())
    }
}

#[derive(Clone)]
struct Svc(Arc<Bare>);

type R<T> = Result<Response<T>, Status>;

fn unimplemented<T>() -> R<T> {
    Err(Status::unimplemented(
        "the bare server does sign, verify, wrap and unwrap only",
    ))
}

#[tonic::async_trait]
impl Kms for Svc {
    async fn create_key(&self, _: Request<CreateKeyRequest>) -> R<CreateKeyResponse> {
        unimplemented()
    }
    async fn get_key(&self, _: Request<GetKeyRequest>) -> R<GetKeyResponse> {
        unimplemented()
    }
    async fn list_keys(&self, _: Request<ListKeysRequest>) -> R<ListKeysResponse> {
        unimplemented()
    }
    async fn rotate_key(&self, _: Request<RotateKeyRequest>) -> R<RotateKeyResponse> {
        unimplemented()
    }
    async fn set_key_version_state(
        &self,
        _: Request<SetKeyVersionStateRequest>,
    ) -> R<SetKeyVersionStateResponse> {
        unimplemented()
    }
    async fn sign_jws(&self, _: Request<SignJwsRequest>) -> R<SignJwsResponse> {
        unimplemented()
    }
    async fn update_key(&self, _: Request<UpdateKeyRequest>) -> R<UpdateKeyResponse> {
        unimplemented()
    }
    async fn delete_key(&self, _: Request<DeleteKeyRequest>) -> R<DeleteKeyResponse> {
        unimplemented()
    }
    async fn sign(&self, r: Request<SignRequest>) -> R<SignResponse> {
        Ok(Response::new(sign_response(&self.0, &r.into_inner())?))
    }
    async fn verify(&self, r: Request<VerifyRequest>) -> R<VerifyResponse> {
        Ok(Response::new(verify_response(&self.0, &r.into_inner())?))
    }
    async fn wrap(&self, r: Request<WrapRequest>) -> R<WrapResponse> {
        Ok(Response::new(wrap_response(&self.0, &r.into_inner())?))
    }
    async fn unwrap(&self, r: Request<UnwrapRequest>) -> R<UnwrapResponse> {
        Ok(Response::new(unwrap_response(&self.0, &r.into_inner())?))
    }
    async fn generate_data_key(
        &self,
        _: Request<GenerateDataKeyRequest>,
    ) -> R<GenerateDataKeyResponse> {
        unimplemented()
    }
    async fn mac(&self, _: Request<MacRequest>) -> R<MacResponse> {
        unimplemented()
    }
    async fn verify_mac(&self, _: Request<VerifyMacRequest>) -> R<VerifyMacResponse> {
        unimplemented()
    }
    async fn get_pq_policy(&self, _: Request<GetPqPolicyRequest>) -> R<PqPolicyResponse> {
        unimplemented()
    }
    async fn set_pq_policy(&self, _: Request<SetPqPolicyRequest>) -> R<PqPolicyResponse> {
        unimplemented()
    }
    async fn create_token(&self, _: Request<CreateTokenRequest>) -> R<CreateTokenResponse> {
        unimplemented()
    }
    async fn list_tokens(&self, _: Request<ListTokensRequest>) -> R<ListTokensResponse> {
        unimplemented()
    }
    async fn revoke_token(&self, _: Request<RevokeTokenRequest>) -> R<RevokeTokenResponse> {
        unimplemented()
    }
    async fn hash_audit_input(
        &self,
        _: Request<HashAuditInputRequest>,
    ) -> R<HashAuditInputResponse> {
        unimplemented()
    }
    async fn sign_batch(&self, r: Request<SignBatchRequest>) -> R<SignBatchResponse> {
        Ok(Response::new(sign_batch(&self.0, &r.into_inner())))
    }
    async fn verify_batch(&self, r: Request<VerifyBatchRequest>) -> R<VerifyBatchResponse> {
        Ok(Response::new(verify_batch(&self.0, &r.into_inner())))
    }
    async fn wrap_batch(&self, r: Request<WrapBatchRequest>) -> R<WrapBatchResponse> {
        Ok(Response::new(wrap_batch(&self.0, &r.into_inner())))
    }
    async fn unwrap_batch(&self, r: Request<UnwrapBatchRequest>) -> R<UnwrapBatchResponse> {
        Ok(Response::new(unwrap_batch(&self.0, &r.into_inner())))
    }
}

fn item_error(s: Status) -> Option<ItemError> {
    Some(ItemError {
        code: "invalid_argument".into(),
        message: s.message().to_string(),
        ..Default::default()
    })
}

/// The batch answers: every item in order, each with its crypto's result.
macro_rules! bare_batch {
    ($($name:ident: $req:ident => $resp:ident of $item:ident by $one:ident),* $(,)?) => {$(
        fn $name(b: &Bare, r: &$req) -> $resp {
            let items = r
                .items
                .iter()
                .map(|i| match $one(b, i) {
                    Ok(ok) => $item { ok: Some(ok), error: None },
                    Err(s) => $item { ok: None, error: item_error(s) },
                })
                .collect();
            $resp { items }
        }
    )*};
}

bare_batch! {
    sign_batch: SignBatchRequest => SignBatchResponse of SignBatchItem by sign_response,
    verify_batch: VerifyBatchRequest => VerifyBatchResponse of VerifyBatchItem by verify_response,
    wrap_batch: WrapBatchRequest => WrapBatchResponse of WrapBatchItem by wrap_response,
    unwrap_batch: UnwrapBatchRequest => UnwrapBatchResponse of UnwrapBatchItem by unwrap_response,
}

fn sign_response(b: &Bare, r: &SignRequest) -> Result<SignResponse, Status> {
    let signature = if r.digest.is_empty() {
        b.sign(&r.message)?
    } else {
        b.sign_digest(&r.digest)?
    };
    Ok(SignResponse {
        kid: KID.into(),
        algorithm: b.alg.as_str().into(),
        signature,
    })
}

fn verify_response(b: &Bare, r: &VerifyRequest) -> Result<VerifyResponse, Status> {
    let valid = if r.digest.is_empty() {
        b.verify(&r.message, &r.signature)?
    } else {
        b.verify_digest(&r.digest, &r.signature)?
    };
    Ok(VerifyResponse {
        valid,
        kid: KID.into(),
        algorithm: b.alg.as_str().into(),
        ..Default::default()
    })
}

fn wrap_response(b: &Bare, r: &WrapRequest) -> Result<WrapResponse, Status> {
    Ok(WrapResponse {
        kid: KID.into(),
        algorithm: b.alg.as_str().into(),
        ciphertext: b.wrap(&r.plaintext, &r.aad)?,
    })
}

fn unwrap_response(b: &Bare, r: &UnwrapRequest) -> Result<UnwrapResponse, Status> {
    Ok(UnwrapResponse {
        kid: KID.into(),
        plaintext: b.unwrap(&r.ciphertext, &r.aad)?,
    })
}

type HttpResult<T> = Result<Json<T>, (http::StatusCode, String)>;

fn http_err(s: Status) -> (http::StatusCode, String) {
    (http::StatusCode::BAD_REQUEST, s.message().to_string())
}

async fn http_sign(
    State(b): State<Arc<Bare>>,
    Json(r): Json<SignRequest>,
) -> HttpResult<SignResponse> {
    sign_response(&b, &r).map(Json).map_err(http_err)
}

async fn http_verify(
    State(b): State<Arc<Bare>>,
    Json(r): Json<VerifyRequest>,
) -> HttpResult<VerifyResponse> {
    verify_response(&b, &r).map(Json).map_err(http_err)
}

async fn http_sign_batch(
    State(b): State<Arc<Bare>>,
    Json(r): Json<SignBatchRequest>,
) -> Json<SignBatchResponse> {
    Json(sign_batch(&b, &r))
}

async fn http_verify_batch(
    State(b): State<Arc<Bare>>,
    Json(r): Json<VerifyBatchRequest>,
) -> Json<VerifyBatchResponse> {
    Json(verify_batch(&b, &r))
}

async fn http_wrap_batch(
    State(b): State<Arc<Bare>>,
    Json(r): Json<WrapBatchRequest>,
) -> Json<WrapBatchResponse> {
    Json(wrap_batch(&b, &r))
}

async fn http_unwrap_batch(
    State(b): State<Arc<Bare>>,
    Json(r): Json<UnwrapBatchRequest>,
) -> Json<UnwrapBatchResponse> {
    Json(unwrap_batch(&b, &r))
}

async fn http_wrap(
    State(b): State<Arc<Bare>>,
    Json(r): Json<WrapRequest>,
) -> HttpResult<WrapResponse> {
    wrap_response(&b, &r).map(Json).map_err(http_err)
}

async fn http_unwrap(
    State(b): State<Arc<Bare>>,
    Json(r): Json<UnwrapRequest>,
) -> HttpResult<UnwrapResponse> {
    unwrap_response(&b, &r).map(Json).map_err(http_err)
}

/// Serve both fronts on loopback; returns (gRPC address, HTTP address).
pub async fn serve(alg: Algorithm) -> Result<(SocketAddr, SocketAddr), String> {
    let bare = Arc::new(Bare::new(alg)?);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addrs = (
        grpc.local_addr().map_err(|e| e.to_string())?,
        http.local_addr().map_err(|e| e.to_string())?,
    );
    let svc = KmsServer::new(Svc(bare.clone())).max_decoding_message_size(16 << 20);
    tokio::spawn(async move {
        use tokio_stream::StreamExt as _;
        // Nagle off on every accepted socket, as ron-kms does: a response
        // bigger than one segment would otherwise wait for a delayed ACK
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc).map(|s| {
            s.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        });
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    let app = Router::new()
        .route("/v1/kms/sign", post(http_sign))
        .route("/v1/kms/verify", post(http_verify))
        .route("/v1/kms/wrap", post(http_wrap))
        .route("/v1/kms/unwrap", post(http_unwrap))
        .route("/v1/kms/batch/sign", post(http_sign_batch))
        .route("/v1/kms/batch/verify", post(http_verify_batch))
        .route("/v1/kms/batch/wrap", post(http_wrap_batch))
        .route("/v1/kms/batch/unwrap", post(http_unwrap_batch))
        .with_state(bare);
    tokio::spawn(async move {
        use axum::serve::ListenerExt as _;
        let http = http.tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
        let _ = axum::serve(http, app).await;
    });
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bare_crypto_round_trips() {
        for alg in [Algorithm::Ed25519, Algorithm::EcdsaP256, Algorithm::MlDsa65] {
            let b = Bare::new(alg).unwrap();
            let sig = b.sign(b"m").unwrap();
            assert!(b.verify(b"m", &sig).unwrap(), "{alg}");
            assert!(!b.verify(b"n", &sig).unwrap(), "{alg}");
        }
        let b = Bare::new(Algorithm::MlKem768).unwrap();
        let ct = b.wrap(b"secret", b"ad").unwrap();
        assert_eq!(b.unwrap(&ct, b"ad").unwrap(), b"secret");
        assert!(b.unwrap(&ct, b"other").is_err());
    }
}
