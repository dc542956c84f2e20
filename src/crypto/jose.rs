//! JOSE forms of ron-kms's signing keys (docs/jose.md): a public key's JWK
//! (RFC 7517) — Ed25519 as `OKP` (RFC 8037), P-256 as `EC` (RFC 7518
//! §6.2), ML-DSA as `AKP` (RFC 9964) — and a key's JWS `alg`.
use base64::Engine as _;
use serde_json::{json, Value};

use super::Algorithm;

/// The JWS algorithm of signatures a key of `alg` makes; `None` for keys
/// JOSE has no algorithm for (hybrid, SLH-DSA) or that do not sign.
pub fn jws_alg(alg: Algorithm) -> Option<&'static str> {
    Some(match alg {
        Algorithm::Ed25519 => "EdDSA",
        Algorithm::EcdsaP256 => "ES256",
        Algorithm::MlDsa44 => "ML-DSA-44",
        Algorithm::MlDsa65 => "ML-DSA-65",
        Algorithm::MlDsa87 => "ML-DSA-87",
        _ => return None,
    })
}

/// The ron-kms algorithm whose JWS algorithm is `jws` (the inverse of
/// [`jws_alg`]).
pub fn algorithm_of(jws: &str) -> Option<Algorithm> {
    [
        Algorithm::Ed25519,
        Algorithm::EcdsaP256,
        Algorithm::MlDsa44,
        Algorithm::MlDsa65,
        Algorithm::MlDsa87,
    ]
    .into_iter()
    .find(|a| jws_alg(*a) == Some(jws))
}

/// base64url without padding, as JOSE encodes bytes.
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWK of a public key (`raw_public` as the key record holds it: the
/// 32-byte Ed25519 key, the 65-byte uncompressed P-256 point, the ML-DSA
/// public key), with its `kid`, `alg` and `use: sig`; `None` when `alg`
/// has no JWK form here or the key is malformed.
pub fn jwk(alg: Algorithm, raw_public: &[u8], kid: &str) -> Option<Value> {
    let jws = jws_alg(alg)?;
    let mut k = match alg {
        Algorithm::Ed25519 if raw_public.len() == 32 => json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(raw_public),
        }),
        Algorithm::EcdsaP256 if raw_public.len() == 65 && raw_public[0] == 0x04 => json!({
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(&raw_public[1..33]),
            "y": b64url(&raw_public[33..]),
        }),
        Algorithm::MlDsa44 | Algorithm::MlDsa65 | Algorithm::MlDsa87 => json!({
            "kty": "AKP",
            "pub": b64url(raw_public),
        }),
        _ => return None,
    };
    k["kid"] = json!(kid);
    k["alg"] = json!(jws);
    k["use"] = json!("sig");
    Some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8037 appendix A.2's public key, as a JWK.
    #[test]
    fn ed25519_matches_rfc_8037() {
        let x = hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
            .unwrap();
        let k = jwk(Algorithm::Ed25519, &x, "k#v1").unwrap();
        assert_eq!(k["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(
            (k["kty"].as_str(), k["crv"].as_str()),
            (Some("OKP"), Some("Ed25519"))
        );
        assert_eq!(k["alg"], "EdDSA");
    }

    #[test]
    fn p256_splits_the_point_and_others_have_no_jwk() {
        let mut p = vec![0x04];
        p.extend((0..64).map(|i| i as u8));
        let k = jwk(Algorithm::EcdsaP256, &p, "k#v2").unwrap();
        assert_eq!(k["x"], b64url(&p[1..33]));
        assert_eq!(k["y"], b64url(&p[33..]));
        assert!(jwk(Algorithm::EcdsaP256, &p[..64], "k").is_none());
        assert!(jwk(Algorithm::Aes256Gcm, &[], "k").is_none());
        assert!(jwk(Algorithm::HybridEd25519MlDsa65, &[0; 64], "k").is_none());
        assert_eq!(
            jwk(Algorithm::MlDsa65, &[7; 1952], "k").unwrap()["alg"],
            "ML-DSA-65"
        );
        for a in Algorithm::ALL {
            if let Some(j) = jws_alg(a) {
                assert_eq!(algorithm_of(j), Some(a));
            }
        }
        assert_eq!(algorithm_of("none"), None);
    }
}
