//! The raw algorithms, with no service around them: the limits the service
//! figures (`benches/service.rs`, `benches/verify_cache.rs`) are compared
//! with. Every call goes through [`Provider::default`] exactly as the
//! service's crypto layer makes it, on one thread, with keys generated once
//! before measuring.
//!
//! - `sign/<alg>` and `verify/<alg>`: one signature / one verification of a
//!   32-byte message per signature algorithm the provider has (Ed25519,
//!   ECDSA P-256, ML-DSA-44/65/87, and the composite Ed25519 + ML-DSA-65,
//!   which signs and verifies both components over the 32 bytes as its
//!   message representative M′; the service adds M′'s SHA-512 pre-hash). The provider's sign takes the private
//!   key as stored (Ed25519: the seed, so each sign derives the key pair
//!   again; ECDSA: the PKCS#8 document, parsed on every call).
//!   `sign/ed25519-prepared` is an Ed25519 sign with an already expanded
//!   `ed25519_dalek::SigningKey`, which is what the sealed-file custody
//!   signs with once the key is in its `KeyCache` (backend/soft.rs).
//! - `sign-digest/<alg>` and `verify-digest/<alg>`: the same over the
//!   digest each algorithm takes in place of the message (ECDSA P-256: the
//!   message's SHA-256, through aws-lc-rs; ML-DSA: its external μ,
//!   through RustCrypto's `ml-dsa`). Each signature is checked once as an
//!   ordinary signature over the message.
//! - `kem/encapsulate/<alg>` and `kem/decapsulate/<alg>`: per KEM in
//!   `ron_kms::crypto::Algorithm` (ML-KEM-768, ML-KEM-1024 and the hybrid
//!   X25519 + ML-KEM-768; there is no ML-KEM-512 algorithm).
//! - `aead/seal/<size>` and `aead/open/<size>`: AES-256-GCM
//!   (`ron_kms::crypto::aead`, which builds the ring key on each call, as the
//!   envelope does) on 32 B, 1 KiB and 8 KiB with 32 bytes of associated data.
//!
//! - `hmac/<alg>/<size>`: one HMAC-SHA256 / -SHA512 tag
//!   (`ron_kms::crypto::mac`, ring, which builds the key on each call as
//!   the sealed custody does) of 64 B and 8 KiB with a 32- / 64-byte key.
//!
//! Throughput is in operations (`Throughput::Elements(1)`), so Criterion
//! prints ops/s next to the time per operation.
//!
//! ```sh
//! cargo bench --bench crypto
//! ```
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use ron_kms::crypto::{aead, Algorithm, Provider};

mod common;
use common::SIGN_ALGS;

const MSG: &[u8; 32] = b"a 32-byte message digest to sign";

fn quick(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.sample_size(15)
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
}

fn signatures(c: &mut Criterion) {
    let provider = Provider::default();
    let keys: Vec<_> = SIGN_ALGS
        .iter()
        .filter(|a| provider.signer(**a).is_ok())
        .map(|&a| (a, provider.generate(a).unwrap()))
        .collect();

    let mut g = c.benchmark_group("sign");
    quick(&mut g);
    for (alg, kp) in &keys {
        let signer = provider.signer(*alg).unwrap();
        g.bench_function(BenchmarkId::from_parameter(alg), |b| {
            b.iter(|| signer.sign(black_box(&kp.private), black_box(MSG)).unwrap())
        });
        if *alg == Algorithm::Ed25519 {
            use ed25519_dalek::Signer as _;
            let seed: &[u8; 32] = kp.private.as_slice().try_into().unwrap();
            let prepared = ed25519_dalek::SigningKey::from_bytes(seed);
            // same key, same signature (Ed25519 is deterministic)
            assert_eq!(
                prepared.sign(MSG).to_bytes().to_vec(),
                signer.sign(&kp.private, MSG).unwrap()
            );
            g.bench_function(BenchmarkId::from_parameter("ed25519-prepared"), |b| {
                b.iter(|| prepared.sign(black_box(MSG)).to_bytes())
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("verify");
    quick(&mut g);
    for (alg, kp) in &keys {
        let signer = provider.signer(*alg).unwrap();
        let sig = signer.sign(&kp.private, MSG).unwrap();
        g.bench_function(BenchmarkId::from_parameter(alg), |b| {
            b.iter(|| assert!(signer.verify(black_box(&kp.public), black_box(MSG), &sig)))
        });
    }
    g.finish();

    // digest signing: the same keys over the digest each algorithm takes
    // (ECDSA P-256: SHA-256 through aws-lc-rs; ML-DSA: external μ
    // through RustCrypto's ml-dsa)
    let digests: Vec<_> = keys
        .iter()
        .filter(|(a, _)| !a.is_hybrid())
        .filter_map(|(a, kp)| Some((*a, kp, a.prehash()?.of(&kp.public, &[], MSG))))
        .collect();
    let mut g = c.benchmark_group("sign-digest");
    quick(&mut g);
    for (alg, kp, d) in &digests {
        let signer = provider.signer(*alg).unwrap();
        g.bench_function(BenchmarkId::from_parameter(alg), |b| {
            b.iter(|| {
                signer
                    .sign_prehashed(black_box(&kp.private), black_box(d))
                    .unwrap()
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("verify-digest");
    quick(&mut g);
    for (alg, kp, d) in &digests {
        let signer = provider.signer(*alg).unwrap();
        let sig = signer.sign_prehashed(&kp.private, d).unwrap();
        assert!(
            signer.verify(&kp.public, MSG, &sig),
            "{alg}: a digest signature is a message signature"
        );
        g.bench_function(BenchmarkId::from_parameter(alg), |b| {
            b.iter(|| assert!(signer.verify_prehashed(black_box(&kp.public), black_box(d), &sig)))
        });
    }
    g.finish();
}

fn kems(c: &mut Criterion) {
    let provider = Provider::default();
    let algs: Vec<Algorithm> = Algorithm::ALL
        .into_iter()
        .filter(|a| a.is_kem() && provider.kem(*a).is_ok())
        .collect();
    let mut g = c.benchmark_group("kem");
    quick(&mut g);
    for alg in algs {
        let kem = provider.kem(alg).unwrap();
        let kp = provider.generate(alg).unwrap();
        g.bench_function(BenchmarkId::new("encapsulate", alg), |b| {
            b.iter(|| kem.encapsulate(black_box(&kp.public)).unwrap())
        });
        let (ct, ss) = kem.encapsulate(&kp.public).unwrap();
        assert_eq!(*kem.decapsulate(&kp.private, &ct).unwrap(), *ss);
        g.bench_function(BenchmarkId::new("decapsulate", alg), |b| {
            b.iter(|| {
                kem.decapsulate(black_box(&kp.private), black_box(&ct))
                    .unwrap()
            })
        });
    }
    g.finish();
}

fn aead_seal_open(c: &mut Criterion) {
    let mut key = [0u8; aead::KEY_LEN];
    ron_kms::crypto::random_bytes(&mut key).unwrap();
    let mut nonce = [0u8; aead::AEAD_NONCE_LEN];
    ron_kms::crypto::random_bytes(&mut nonce).unwrap();
    let ad = [7u8; 32];
    let mut g = c.benchmark_group("aead");
    quick(&mut g);
    for (label, size) in [("32B", 32usize), ("1KiB", 1024), ("8KiB", 8192)] {
        let plaintext = vec![0x5au8; size];
        g.bench_function(BenchmarkId::new("seal", label), |b| {
            b.iter(|| aead::seal(&key, &nonce, &ad, black_box(&plaintext)).unwrap())
        });
        let sealed = aead::seal(&key, &nonce, &ad, &plaintext).unwrap();
        assert_eq!(sealed.len(), size + aead::TAG_LEN);
        g.bench_function(BenchmarkId::new("open", label), |b| {
            b.iter(|| {
                let p = aead::open(&key, &nonce, &ad, black_box(&sealed)).unwrap();
                assert_eq!(p.len(), size);
            })
        });
    }
    g.finish();
}

fn hmac(c: &mut Criterion) {
    let mut g = c.benchmark_group("hmac");
    quick(&mut g);
    for alg in [Algorithm::HmacSha256, Algorithm::HmacSha512] {
        let mut key = vec![0u8; ron_kms::crypto::mac::key_len(alg).unwrap()];
        ron_kms::crypto::random_bytes(&mut key).unwrap();
        for (label, size) in [("64B", 64usize), ("8KiB", 8192)] {
            let message = vec![0x5au8; size];
            g.bench_function(BenchmarkId::new(alg.as_str(), label), |b| {
                b.iter(|| ron_kms::crypto::mac::compute(alg, &key, black_box(&message)).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, signatures, kems, aead_seal_open, hmac);
criterion_main!(benches);
