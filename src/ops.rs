//! The op table: every operation of `ron.kms.v1.Kms` once, with its gRPC
//! method, its HTTP routes, the scope it needs, the admission gate it is
//! charged to, its name in the audit log and metrics, and whether it uses a
//! private key or changes state. The gRPC front's early shedding, the HTTP
//! router and the service's admission and audit all read this table, so a
//! new operation is added here and nowhere else is a second list.
//!
//! Also the two small vocabularies the table is written in, which layers
//! from admission up to the fronts share: [`Gate`] (admission's per-op
//! gates) and [`Scope`] (what a token may do).
use std::fmt;

/// The admission gates: each has its own fair share of capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gate {
    Sign,
    Verify,
    Wrap,
    Unwrap,
    Admin,
}

impl Gate {
    /// Every gate, in the order of `AdmissionConfig::inflight`.
    pub const ALL: [Gate; 5] = [
        Gate::Sign,
        Gate::Verify,
        Gate::Wrap,
        Gate::Unwrap,
        Gate::Admin,
    ];

    /// The name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::Sign => "sign",
            Gate::Verify => "verify",
            Gate::Wrap => "wrap",
            Gate::Unwrap => "unwrap",
            Gate::Admin => "admin",
        }
    }

    /// Position in [`Gate::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a token (or certificate) may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Read,
    Sign,
    Verify,
    Wrap,
    Unwrap,
    /// Manage every tenant's tokens (docs/tokens.md). Held by the bootstrap
    /// token; only a holder can grant it.
    Operator,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::Admin,
        Scope::Read,
        Scope::Sign,
        Scope::Verify,
        Scope::Wrap,
        Scope::Unwrap,
        Scope::Operator,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "kms:admin",
            Scope::Read => "kms:read",
            Scope::Sign => "kms:sign",
            Scope::Verify => "kms:verify",
            Scope::Wrap => "kms:wrap",
            Scope::Unwrap => "kms:unwrap",
            Scope::Operator => "kms:operator",
        }
    }
    /// Its bit in a scope set.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Every operation of `ron.kms.v1.Kms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    CreateKey,
    GetKey,
    ListKeys,
    RotateKey,
    SetKeyVersionState,
    UpdateKey,
    DeleteKey,
    Sign,
    Verify,
    SignJws,
    Wrap,
    Unwrap,
    GenerateDataKey,
    Mac,
    VerifyMac,
    GetPqPolicy,
    SetPqPolicy,
    SignBatch,
    VerifyBatch,
    WrapBatch,
    UnwrapBatch,
    CreateToken,
    ListTokens,
    RevokeToken,
    HashAuditInput,
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct OpSpec {
    pub method: Method,
    /// The gRPC method name in `ron.kms.v1.Kms`.
    pub grpc: &'static str,
    /// Its HTTP routes: (verb, path under the HTTP port).
    pub http: &'static [(&'static str, &'static str)],
    /// The scope the caller needs (for a batch: each item's).
    pub scope: Scope,
    /// The admission gate it is charged to (a batch: per item).
    pub gate: Gate,
    /// The op in audit records and the `op` metric label (a batch's items
    /// are audited under the single op's name).
    pub audit: &'static str,
    /// What it does to keys and state ([`Effect`]).
    pub effect: Effect,
}

/// What an operation does, for the audit log's sake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Reads only (get, list, verify): answered even while the audit log
    /// cannot be written.
    Read,
    /// Uses a private or secret key (sign, wrap, unwrap, data keys):
    /// refused while the audit log is broken; its result is answered only
    /// once its record is durable.
    Crypto,
    /// Changes keys, policy or tokens: refused while the audit log is
    /// broken, and its *intent* record is durable before the change
    /// commits, its outcome record after (docs/audit.md).
    Mutation,
}

impl OpSpec {
    /// Uses a private key or changes state: refused while the audit chain
    /// is broken.
    pub fn writes(&self) -> bool {
        self.effect != Effect::Read
    }
}

const fn row(
    method: Method,
    grpc: &'static str,
    http: &'static [(&'static str, &'static str)],
    scope: Scope,
    gate: Gate,
    audit: &'static str,
    effect: Effect,
) -> OpSpec {
    OpSpec {
        method,
        grpc,
        http,
        scope,
        gate,
        audit,
        effect,
    }
}

/// The table, in the order of `kms.proto`.
pub const OPS: [OpSpec; 25] = {
    use Effect as E;
    use Gate as G;
    use Method as M;
    use Scope as S;
    [
        row(
            M::CreateKey,
            "CreateKey",
            &[("POST", "/v1/kms/keys")],
            S::Admin,
            G::Admin,
            "create_key",
            E::Mutation,
        ),
        row(
            M::GetKey,
            "GetKey",
            &[("GET", "/v1/kms/keys/{name}")],
            S::Read,
            G::Admin,
            "get_key",
            E::Read,
        ),
        row(
            M::ListKeys,
            "ListKeys",
            &[("GET", "/v1/kms/keys")],
            S::Read,
            G::Admin,
            "list_keys",
            E::Read,
        ),
        row(
            M::RotateKey,
            "RotateKey",
            &[
                ("POST", "/v1/kms/keys/{name}/rotate"),
                ("POST", "/v1/kms/rotate"),
            ],
            S::Admin,
            G::Admin,
            "rotate_key",
            E::Mutation,
        ),
        row(
            M::SetKeyVersionState,
            "SetKeyVersionState",
            &[("POST", "/v1/kms/keys/{name}/versions/{version}/state")],
            S::Admin,
            G::Admin,
            "set_version_state",
            E::Mutation,
        ),
        row(
            M::UpdateKey,
            "UpdateKey",
            &[("PATCH", "/v1/kms/keys/{name}")],
            S::Admin,
            G::Admin,
            "update_key",
            E::Mutation,
        ),
        row(
            M::DeleteKey,
            "DeleteKey",
            &[("DELETE", "/v1/kms/keys/{name}")],
            S::Admin,
            G::Admin,
            "delete_key",
            E::Mutation,
        ),
        row(
            M::Sign,
            "Sign",
            &[("POST", "/v1/kms/sign")],
            S::Sign,
            G::Sign,
            "sign",
            E::Crypto,
        ),
        row(
            M::Verify,
            "Verify",
            &[("POST", "/v1/kms/verify")],
            S::Verify,
            G::Verify,
            "verify",
            E::Read,
        ),
        row(
            M::SignJws,
            "SignJws",
            &[("POST", "/v1/kms/sign-jws")],
            S::Sign,
            G::Sign,
            "sign_jws",
            E::Crypto,
        ),
        row(
            M::Wrap,
            "Wrap",
            &[("POST", "/v1/kms/wrap")],
            S::Wrap,
            G::Wrap,
            "wrap",
            E::Crypto,
        ),
        row(
            M::Unwrap,
            "Unwrap",
            &[("POST", "/v1/kms/unwrap")],
            S::Unwrap,
            G::Unwrap,
            "unwrap",
            E::Crypto,
        ),
        row(
            M::GenerateDataKey,
            "GenerateDataKey",
            &[("POST", "/v1/kms/datakey")],
            S::Wrap,
            G::Wrap,
            "generate_data_key",
            E::Crypto,
        ),
        row(
            M::Mac,
            "Mac",
            &[("POST", "/v1/kms/mac")],
            S::Sign,
            G::Sign,
            "mac",
            E::Crypto,
        ),
        // uses the secret key, like Mac: refused while the audit log is
        // broken (a verify of a signature needs only a public key)
        row(
            M::VerifyMac,
            "VerifyMac",
            &[("POST", "/v1/kms/verify-mac")],
            S::Verify,
            G::Verify,
            "verify_mac",
            E::Crypto,
        ),
        row(
            M::GetPqPolicy,
            "GetPqPolicy",
            &[("GET", "/v1/kms/policy/pq")],
            S::Admin,
            G::Admin,
            "get_pq_policy",
            E::Read,
        ),
        row(
            M::SetPqPolicy,
            "SetPqPolicy",
            &[("PUT", "/v1/kms/policy/pq")],
            S::Admin,
            G::Admin,
            "set_pq_policy",
            E::Mutation,
        ),
        row(
            M::SignBatch,
            "SignBatch",
            &[("POST", "/v1/kms/batch/sign")],
            S::Sign,
            G::Sign,
            "sign",
            E::Crypto,
        ),
        row(
            M::VerifyBatch,
            "VerifyBatch",
            &[("POST", "/v1/kms/batch/verify")],
            S::Verify,
            G::Verify,
            "verify",
            E::Read,
        ),
        row(
            M::WrapBatch,
            "WrapBatch",
            &[("POST", "/v1/kms/batch/wrap")],
            S::Wrap,
            G::Wrap,
            "wrap",
            E::Crypto,
        ),
        row(
            M::UnwrapBatch,
            "UnwrapBatch",
            &[("POST", "/v1/kms/batch/unwrap")],
            S::Unwrap,
            G::Unwrap,
            "unwrap",
            E::Crypto,
        ),
        row(
            M::CreateToken,
            "CreateToken",
            &[("POST", "/v1/kms/tokens")],
            S::Admin,
            G::Admin,
            "create_token",
            E::Mutation,
        ),
        row(
            M::ListTokens,
            "ListTokens",
            &[("GET", "/v1/kms/tokens")],
            S::Admin,
            G::Admin,
            "list_tokens",
            E::Read,
        ),
        row(
            M::RevokeToken,
            "RevokeToken",
            &[("POST", "/v1/kms/tokens/{id}/revoke")],
            S::Admin,
            G::Admin,
            "revoke_token",
            E::Mutation,
        ),
        row(
            M::HashAuditInput,
            "HashAuditInput",
            &[("POST", "/v1/kms/audit/input-hmac")],
            S::Operator,
            G::Admin,
            "hash_audit_input",
            E::Read,
        ),
    ]
};

/// The gRPC service name every method path starts with.
pub const GRPC_SERVICE: &str = "ron.kms.v1.Kms";

/// The row of `m`.
pub fn spec(m: Method) -> &'static OpSpec {
    OPS.iter()
        .find(|o| o.method == m)
        .expect("every method has a row")
}

/// The row of a gRPC request path (`/ron.kms.v1.Kms/Sign`), if it names one.
pub fn by_grpc_path(path: &str) -> Option<&'static OpSpec> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(GRPC_SERVICE)?
        .strip_prefix('/')?;
    OPS.iter().find(|o| o.grpc == method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_one_row_and_the_paths_resolve() {
        for (i, o) in OPS.iter().enumerate() {
            assert_eq!(OPS.iter().filter(|p| p.method == o.method).count(), 1);
            assert_eq!(spec(o.method).grpc, o.grpc);
            let path = format!("/{GRPC_SERVICE}/{}", o.grpc);
            assert_eq!(by_grpc_path(&path).map(|p| p.method), Some(o.method), "{i}");
            assert!(!o.http.is_empty());
        }
        assert!(by_grpc_path("/grpc.health.v1.Health/Check").is_none());
        assert!(by_grpc_path("/ron.kms.v1.Kms/Nope").is_none());
    }
}
