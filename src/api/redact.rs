//! Debug for messages that carry caller input or secrets: lengths only.
//! (build.rs tells prost not to derive Debug for exactly these.)
use std::fmt;

use crate::proto::*;

macro_rules! redacted_debug {
    ($ty:ident { $($plain:ident),* } [ $($secret:ident),* ]) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut d = f.debug_struct(stringify!($ty));
                $( d.field(stringify!($plain), &self.$plain); )*
                $( d.field(concat!(stringify!($secret), "_len"), &self.$secret.len()); )*
                d.finish()
            }
        }
    };
}

redacted_debug!(SignRequest { key, op_id, digest_algorithm }[message, context, digest]);
redacted_debug!(VerifyRequest { key, digest_algorithm } [message, signature, context, digest, jws]);
redacted_debug!(WrapRequest { key, op_id } [plaintext, aad]);
redacted_debug!(UnwrapRequest { key } [ciphertext, aad]);
redacted_debug!(UnwrapResponse { kid }[plaintext]);
redacted_debug!(GenerateDataKeyResponse { kid } [plaintext, ciphertext]);
redacted_debug!(MacRequest { key }[message]);
redacted_debug!(VerifyMacRequest { key } [message, mac]);
redacted_debug!(SignJwsRequest { key, op_id } [header, payload]);
redacted_debug!(SignJwsResponse { kid, alg }[jws]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_debug_output() {
        let r = UnwrapResponse {
            kid: "k#v1".into(),
            plaintext: b"TOP-SECRET".to_vec(),
        };
        let s = format!("{r:?}");
        assert!(
            s.contains("plaintext_len: 10") && !s.contains("TOP") && !s.contains("84"),
            "{s}"
        );
        let w = WrapRequest {
            key: "k".into(),
            plaintext: b"TOP-SECRET".to_vec(),
            aad: vec![],
            op_id: String::new(),
        };
        assert!(!format!("{w:?}").contains("TOP"));
    }
}
