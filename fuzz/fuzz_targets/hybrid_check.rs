//! Verification of hybrid-ed25519-ml-dsa-65 signatures (docs/hybrid.md):
//! whatever bytes arrive as signature, message and context, classifying
//! and checking them never panics, and nothing made of arbitrary bytes is a
//! valid composite under a fixed key. The same bytes as a digest (the
//! composite's pre-hash, an ML-DSA μ, an ECDSA SHA-256; docs/api.md,
//! "Signing a digest") never panic verification either, and never verify.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ron_kms::crypto::hybrid::Presented;
use ron_kms::crypto::scheme::SignatureScheme as _;
use ron_kms::crypto::{Algorithm, KeyPair, Provider};

fn key() -> &'static (Provider, KeyPair) {
    static K: OnceLock<(Provider, KeyPair)> = OnceLock::new();
    K.get_or_init(|| {
        let p = Provider::default();
        let kp = p.hybrid_signer().unwrap().generate().unwrap();
        (p, kp)
    })
}

/// An ML-DSA-44 and an ECDSA P-256 key, for digest verification.
fn digest_keys() -> &'static [(Algorithm, KeyPair); 2] {
    static K: OnceLock<[(Algorithm, KeyPair); 2]> = OnceLock::new();
    K.get_or_init(|| {
        let p = &key().0;
        [Algorithm::MlDsa44, Algorithm::EcdsaP256].map(|a| (a, p.generate(a).unwrap()))
    })
}

fuzz_target!(|data: &[u8]| {
    let (p, kp) = key();
    let h = p.hybrid_signer().unwrap();
    // [ctx_len][ctx][msg_len: 2][msg][signature…]
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (ctx, rest) = rest.split_at((n as usize).min(rest.len()));
    let (m, sig) = match rest {
        [a, b, tail @ ..] => {
            let len = (u16::from_be_bytes([*a, *b]) as usize).min(tail.len());
            tail.split_at(len)
        }
        _ => (rest, &[][..]),
    };
    let r = h.check(&kp.public, m, ctx, sig);
    assert_ne!(
        r,
        Presented::Composite {
            classical: true,
            pq: true
        }
    );
    // and a public key of any length is refused, never a panic
    let _ = h.check(sig, m, ctx, sig);
    // the message bytes as a pre-hash of any length
    let r = h.check_prehashed(&kp.public, m, ctx, sig);
    assert_ne!(
        r,
        Presented::Composite {
            classical: true,
            pq: true
        }
    );
    for (alg, k) in digest_keys() {
        let s = p.signer(*alg).unwrap();
        assert!(!s.verify_prehashed(&k.public, m, sig), "{alg}");
        let _ = s.verify_prehashed(sig, m, sig);
    }
});
