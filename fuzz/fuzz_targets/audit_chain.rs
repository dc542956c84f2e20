//! The audit record parser and chain verifier. Raw input is verified as a
//! segment as it is; then the input's lines are treated as record heads and
//! chained with correct hashes, so the fuzzer reaches record parsing,
//! sequence and checkpoint-signature checks behind the hash check.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ron_kms::audit::chain::{verify_bytes, Summary};

/// Any fixed key: checkpoint signatures in fuzz input will not verify under
/// it, which is a checked error path like any other.
const KEY: [u8; 32] = [7u8; 32];

fuzz_target!(|data: &[u8]| {
    let _ = verify_bytes("fuzz", data, &KEY, &mut Summary::default());

    let mut prev = [0u8; 32];
    let mut chained = Vec::new();
    for head in data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .take(64)
    {
        let h = ron_kms::crypto::sha256(&[prev.as_slice(), head].concat());
        chained.extend_from_slice(head);
        chained.extend_from_slice(b",\"hash\":\"");
        chained.extend_from_slice(hex(&h).as_bytes());
        chained.extend_from_slice(b"\"}\n");
        prev = h;
    }
    let _ = verify_bytes("fuzz-chained", &chained, &KEY, &mut Summary::default());
});

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
