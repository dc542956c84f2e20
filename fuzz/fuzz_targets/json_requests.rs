//! The HTTP JSON request decoders: the serde derives (with the base64 field
//! codec and deny_unknown_fields) that `/v1/kms` uses for every request
//! message. The first byte picks the message. Whatever decodes must encode
//! and decode to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ron_kms::proto::*;

fn round_trip<T>(bytes: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(m) = serde_json::from_slice::<T>(bytes) {
        let again = serde_json::to_vec(&m).expect("a decoded message encodes");
        let back: T = serde_json::from_slice(&again).expect("our own encoding decodes");
        assert_eq!(m, back);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 17 {
        0 => round_trip::<CreateKeyRequest>(rest),
        1 => round_trip::<GetKeyRequest>(rest),
        2 => round_trip::<ListKeysRequest>(rest),
        3 => round_trip::<RotateKeyRequest>(rest),
        4 => round_trip::<SetKeyVersionStateRequest>(rest),
        5 => round_trip::<SignRequest>(rest),
        6 => round_trip::<VerifyRequest>(rest),
        7 => round_trip::<WrapRequest>(rest),
        8 => round_trip::<UnwrapRequest>(rest),
        9 => round_trip::<GenerateDataKeyRequest>(rest),
        10 => round_trip::<SetPqPolicyRequest>(rest),
        11 => round_trip::<MacRequest>(rest),
        12 => round_trip::<VerifyMacRequest>(rest),
        13 => round_trip::<UpdateKeyRequest>(rest),
        14 => round_trip::<DeleteKeyRequest>(rest),
        15 => round_trip::<SignJwsRequest>(rest),
        _ => round_trip::<GetPqPolicyRequest>(rest),
    }
});
