//! The legacy RKS v1 hybrid signature bundle parser (docs/hybrid.md): never panics, and a
//! bundle it accepts is the canonical encoding of its components.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ron_kms::crypto::hybrid::legacy::{encode_bundle, parse_bundle};

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = parse_bundle(data) {
        assert_eq!(encode_bundle(b.classical, b.pq), data);
    }
});
