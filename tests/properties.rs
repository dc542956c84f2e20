//! Property tests (proptest) for the formats and parsers: the wrap envelope
//! and the hybrid bundle round-trip and never panic on arbitrary bytes;
//! `name#vN` references round-trip; config values merge flag > env > file >
//! default for every combination.
use std::collections::HashMap;

use proptest::prelude::*;
use ron_kms::config::{load, Flags};
use ron_kms::crypto::hybrid::legacy::{encode_bundle, parse_bundle};
use ron_kms::crypto::{envelope, Algorithm};
use ron_kms::keyring::KeyRef;
use ron_kms::store::kid;

fn wrap_alg() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(vec![
        Algorithm::Aes256Gcm,
        Algorithm::MlKem768,
        Algorithm::MlKem1024,
        Algorithm::HybridX25519MlKem768,
    ])
}

fn key_name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,40}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn envelopes_round_trip(
        alg in wrap_alg(),
        name in key_name(),
        version in 1u32..1_000_000,
        nonce in any::<[u8; 12]>(),
        sealed in prop::collection::vec(any::<u8>(), 16..200),
        kem_byte in any::<u8>(),
    ) {
        let k = kid(&name, version);
        let kem_ct = vec![kem_byte; envelope::kem_ciphertext_len(alg).unwrap()];
        let h = envelope::header(alg, &k, &kem_ct);
        let bytes = envelope::assemble(&h, &nonce, &sealed);
        let p = envelope::parse(&bytes).unwrap();
        prop_assert_eq!(p.algorithm, alg);
        prop_assert_eq!(p.kid, k.as_str());
        prop_assert_eq!(p.kem_ciphertext, &kem_ct[..]);
        prop_assert_eq!(p.nonce, nonce);
        prop_assert_eq!(p.sealed, &sealed[..]);
        prop_assert_eq!(p.header, &h[..]);
    }

    #[test]
    fn envelope_parser_never_panics_or_overreads(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        if let Ok(p) = envelope::parse(&bytes) {
            // whatever parses lies inside the input
            prop_assert!(p.header.len() + 12 + p.sealed.len() == bytes.len());
        }
    }

    #[test]
    fn bundles_round_trip(
        ed in prop::option::of(any::<[u8; 32]>()),
        ml in prop::option::of(any::<u8>()),
    ) {
        prop_assume!(ed.is_some() || ml.is_some());
        let ed = ed.map(|e| [e, e].concat());
        let ml = ml.map(|b| vec![b; 3309]);
        let bytes = encode_bundle(ed.as_deref(), ml.as_deref());
        let b = parse_bundle(&bytes).unwrap();
        prop_assert_eq!(b.classical, ed.as_deref());
        prop_assert_eq!(b.pq, ml.as_deref());
    }

    #[test]
    fn bundle_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4000)) {
        let _ = parse_bundle(&bytes);
        // and with a valid magic in front, to get past the first check
        let mut framed = b"RKS\x01".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = parse_bundle(&framed);
    }

    #[test]
    fn key_references_round_trip(name in key_name(), version in prop::option::of(1u32..=u32::MAX)) {
        let s = match version {
            Some(v) => kid(&name, v),
            None => name.clone(),
        };
        let r = KeyRef::parse(&s).unwrap();
        prop_assert_eq!(r.name, name);
        prop_assert_eq!(r.version, version);
    }

    #[test]
    fn key_reference_parser_never_panics(s in "\\PC{0,200}") {
        if let Ok(r) = KeyRef::parse(&s) {
            // what parses is canonical
            let again = match r.version { Some(v) => kid(&r.name, v), None => r.name.clone() };
            prop_assert_eq!(again, s);
        }
    }

    /// For every combination of a file, an environment variable and a flag
    /// setting the gRPC address, the flag wins, then the env, then the file,
    /// then the default.
    #[test]
    fn config_merges_flag_over_env_over_file(
        file in prop::option::of(1u16..60000),
        env in prop::option::of(1u16..60000),
        flag in prop::option::of(1u16..60000),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let mut flags = Flags::default();
        if let Some(p) = file {
            std::fs::write(&path, format!("grpc_addr = \"127.0.0.1:{p}\"\n")).unwrap();
            flags.config = Some(path.clone());
        }
        let mut vars = HashMap::new();
        if let Some(p) = env {
            vars.insert("KMS_GRPC_ADDR".to_string(), format!("127.0.0.1:{p}"));
        }
        if let Some(p) = flag {
            flags.grpc_addr = Some(format!("127.0.0.1:{p}"));
        }
        // the HTTP address must differ from the gRPC one: put it out of range
        vars.insert("KMS_HTTP_ADDR".to_string(), "127.0.0.1:65001".to_string());
        let c = load(&flags, &vars).unwrap();
        let want = flag.or(env).or(file).unwrap_or(9445);
        prop_assert_eq!(c.grpc_addr.port(), want);
    }
}
