//! The command line: every subcommand and its arguments (clap). Secrets
//! are never arguments: tokens and PINs come from files or variables.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ron-kms",
    version,
    about = "Key-management service: keys stay in custody; sign, verify, wrap and unwrap over gRPC and HTTP."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
    /// How client commands print: `auto` (the default) is a short human
    /// form on a terminal and JSON otherwise; `json` or `table` always.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub(crate) output: super::output::Output,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Run the service (gRPC and HTTP).
    Serve(ServeArgs),
    /// Manage bearer tokens: through the server (kms:admin), or offline in a
    /// data dir (--data-dir or --config: bootstrap and recovery).
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Work with the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// TPM custody, offline on a data dir (the server stopped).
    #[command(subcommand)]
    Tpm(TpmCmd),
    /// Manage keys (gRPC client).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Sign a message (gRPC client): the kid and the base64 signature.
    Sign {
        #[command(flatten)]
        conn: Conn,
        /// `name` (primary version) or `name#vN`.
        #[arg(long)]
        key: String,
        /// The composite signature's context string (hybrid keys only, at
        /// most 255 bytes).
        #[arg(long, default_value = "")]
        context: String,
        #[command(flatten)]
        input: Input,
        #[command(flatten)]
        digest: DigestArgs,
    },
    /// Verify a signature (gRPC client). Exit status 0 if valid, 1 if not.
    Verify {
        #[command(flatten)]
        conn: Conn,
        /// The `kid` (`name#vN`) returned by sign.
        #[arg(long)]
        key: String,
        /// Base64 signature.
        #[arg(long)]
        signature: String,
        /// The context string the signature was made with (hybrid keys).
        #[arg(long, default_value = "")]
        context: String,
        #[command(flatten)]
        input: Input,
        #[command(flatten)]
        digest: DigestArgs,
    },
    /// The HMAC of a message under an HMAC key (gRPC client): the kid and
    /// the base64 tag.
    Mac {
        #[command(flatten)]
        conn: Conn,
        /// `name` (primary version) or `name#vN`.
        #[arg(long)]
        key: String,
        #[command(flatten)]
        input: Input,
    },
    /// Check an HMAC tag (gRPC client). Exit status 0 if it matches, 1 if
    /// not.
    VerifyMac {
        #[command(flatten)]
        conn: Conn,
        /// The `kid` (`name#vN`) returned by mac.
        #[arg(long)]
        key: String,
        /// Base64 tag.
        #[arg(long)]
        mac: String,
        #[command(flatten)]
        input: Input,
    },
    /// Wrap a plaintext (≤ 8 KiB) read from --in or stdin: the kid and the
    /// base64 ciphertext.
    Wrap {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        key: String,
        /// Associated data (UTF-8) bound to the ciphertext.
        #[arg(long, default_value = "")]
        aad: String,
        #[command(flatten)]
        input: Input,
    },
    /// Unwrap a base64 ciphertext read from --in or stdin; writes the
    /// plaintext bytes to stdout.
    Unwrap {
        #[command(flatten)]
        conn: Conn,
        /// Optional: the key the ciphertext must have been wrapped under.
        #[arg(long, default_value = "")]
        key: String,
        #[arg(long, default_value = "")]
        aad: String,
        #[command(flatten)]
        input: Input,
    },
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// TOML config file (also KMS_CONFIG).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Data directory (default ./ron-kms-data; also KMS_DATA_DIR).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// gRPC listen address (default 127.0.0.1:9445; also KMS_GRPC_ADDR).
    #[arg(long)]
    pub(crate) grpc_addr: Option<String>,
    /// HTTP listen address (default 127.0.0.1:9446; also KMS_HTTP_ADDR).
    #[arg(long)]
    pub(crate) http_addr: Option<String>,
    /// Keep keys, tokens and the master key in memory only; write nothing
    /// (also KMS_AMNESIA=true). Everything is gone when the process exits.
    #[arg(long)]
    pub(crate) amnesia: bool,
    /// Also print a newly created bootstrap token on stdout (development;
    /// by default it goes only to <data dir>/bootstrap-token, mode 0600).
    #[arg(long)]
    pub(crate) print_bootstrap_token: bool,
}

/// Where a token command works: a running server (the default), or a data
/// dir directly when --data-dir or --config is given.
#[derive(Args, Clone)]
pub(crate) struct Where {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// Work on this data dir's store directly (no server needed; a running
    /// server sees the change within a second).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Work on the store this config file names directly.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

impl TokensCmd {
    /// Where the command works.
    pub(crate) fn at(&self) -> &Where {
        match self {
            TokensCmd::Create(a) => &a.at,
            TokensCmd::List { at, .. } | TokensCmd::Revoke { at, .. } => at,
        }
    }
}

/// A comma-separated list's items, trimmed, without empty ones.
pub(crate) fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

impl Where {
    pub(crate) fn offline(&self) -> bool {
        self.data_dir.is_some() || self.config.is_some()
    }
}

/// `tokens create`'s arguments, for either place it runs.
#[derive(Args)]
pub(crate) struct NewTokenArgs {
    #[command(flatten)]
    pub(crate) at: Where,
    /// The token's tenant (default: the caller's; offline: required).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// Comma-separated: kms:admin,kms:read,kms:sign,kms:verify,kms:wrap,kms:unwrap,kms:operator
    #[arg(long)]
    pub(crate) scopes: String,
    /// Comma-separated key-name patterns (`payments-*,audit-signer`): the
    /// token sees no other key.
    #[arg(long, default_value = "")]
    pub(crate) key_patterns: String,
    /// Lifetime in seconds (default: no expiry).
    #[arg(long, default_value_t = 0)]
    pub(crate) ttl_seconds: u64,
    #[arg(long, default_value = "")]
    pub(crate) description: String,
}

#[derive(Subcommand)]
pub(crate) enum TokensCmd {
    /// Create a token; prints only the secret on stdout (its id on stderr).
    Create(NewTokenArgs),
    /// List a tenant's tokens (never their secrets).
    List {
        #[command(flatten)]
        at: Where,
        #[arg(long)]
        tenant: Option<String>,
        /// Include revoked and expired tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by its id: refused from the next request on.
    Revoke {
        #[command(flatten)]
        at: Where,
        id: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum TpmCmd {
    /// Seal every TPM-sealed key again, under KMS_TPM_SEAL_PCRS, to the PCR
    /// values whose digest is --pcr-digest (default: their current values).
    /// The PCRs must still be in the state the keys are sealed to. Run it
    /// with the server stopped, before a PCR change you expect
    /// (docs/tpm.md, "Sealing to PCRs").
    Reseal {
        /// The data dir (default: the config's, or ./ron-kms-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The config file (the same as the server's).
        #[arg(long)]
        config: Option<PathBuf>,
        /// SHA-256 over the target PCR values in slot order, 64 hex digits.
        #[arg(long)]
        pcr_digest: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCmd {
    /// Check the hash chain and checkpoint signatures. PATH is an audit dir
    /// (with its audit-key.pub and audit.head) or segment files in order;
    /// several audit dirs (one per replica) are checked one chain each.
    /// Exits 1 naming the first bad record.
    Verify {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The audit public key (hex), instead of audit-key.pub beside the log.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
pub(crate) struct Conn {
    /// gRPC address of the service.
    #[arg(
        long,
        env = "KMS_ADDR",
        default_value = "http://127.0.0.1:9445",
        global = true
    )]
    pub(crate) addr: String,
    /// Bearer token. Prefer KMS_TOKEN or --token-file: arguments are visible
    /// to other users in the process list.
    #[arg(long, env = "KMS_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, global = true)]
    pub(crate) token_file: Option<PathBuf>,
    /// CA bundle (PEM) that signed the server's certificate; needed for an
    /// `https://` address.
    #[arg(long, env = "KMS_CA_FILE", global = true)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; with --key-file it can stand in
    /// for a token.
    #[arg(long, env = "KMS_CLIENT_CERT_FILE", global = true)]
    pub(crate) cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "KMS_CLIENT_KEY_FILE", global = true)]
    pub(crate) key_file: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct Input {
    /// The input as a UTF-8 string.
    #[arg(long, conflicts_with = "in_file")]
    pub(crate) message: Option<String>,
    /// Read the input from this file ("-" for stdin, the default).
    #[arg(long = "in")]
    pub(crate) in_file: Option<PathBuf>,
}

/// A digest in place of the message (docs/api.md, "Signing a digest").
#[derive(Args)]
pub(crate) struct DigestArgs {
    /// Send this digest (hex) instead of a message: a SHA-256 for
    /// ecdsa-p256, the external mu for ml-dsa-*, a SHA-512 for the hybrid.
    #[arg(long, conflicts_with_all = ["digest_file", "message", "in_file"])]
    pub(crate) digest: Option<String>,
    /// Hash this file here with the digest the key takes and send only the
    /// digest (large artifacts; mu needs the key's public key, fetched
    /// first, and the signature is then made by that version).
    #[arg(long, conflicts_with_all = ["message", "in_file"])]
    pub(crate) digest_file: Option<PathBuf>,
    /// The digest's kind: sha256, mu or sha512 (default: the key's).
    #[arg(long, default_value = "")]
    pub(crate) digest_algorithm: String,
}

#[derive(Subcommand)]
pub(crate) enum KeysCmd {
    /// Create a key.
    Create {
        #[command(flatten)]
        conn: Conn,
        name: String,
        /// ed25519, ecdsa-p256, ml-dsa-44/65/87, aes-256-gcm, ml-kem-768/1024
        #[arg(long)]
        algorithm: String,
        #[arg(long, default_value = "")]
        op_id: String,
        /// Publish the key in the tenant's JWKS (docs/jose.md).
        #[arg(long)]
        published: bool,
    },
    /// List keys.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a key with its versions and public keys.
    Get {
        #[command(flatten)]
        conn: Conn,
        name: String,
        /// Include PEM public keys.
        #[arg(long)]
        pem: bool,
    },
    /// Add a version and make it primary.
    Rotate {
        #[command(flatten)]
        conn: Conn,
        name: String,
    },
    /// Disable a version.
    Disable {
        #[command(flatten)]
        conn: Conn,
        name: String,
        #[arg(long)]
        version: u32,
    },
    /// Re-enable a disabled version.
    Enable {
        #[command(flatten)]
        conn: Conn,
        name: String,
        #[arg(long)]
        version: u32,
    },
    /// Destroy a disabled version's material (irreversible).
    Destroy {
        #[command(flatten)]
        conn: Conn,
        name: String,
        #[arg(long)]
        version: u32,
    },
    /// Change a key's settings; what is left out keeps its value
    /// (docs/api.md, "Key settings").
    Settings {
        #[command(flatten)]
        conn: Conn,
        name: String,
        /// Refuse every operation on older versions (0: no floor).
        #[arg(long)]
        min_decryption_version: Option<u32>,
        /// Refuse sign, wrap, MAC and data keys naming older versions (0: no floor).
        #[arg(long)]
        min_encryption_version: Option<u32>,
        /// Whether `keys delete` may remove the key.
        #[arg(long)]
        deletion_allowed: Option<bool>,
        /// Whether the key is in the tenant's JWKS.
        #[arg(long)]
        published: Option<bool>,
    },
    /// Destroy every version and remove the key (irreversible; needs
    /// `--deletion-allowed true` set first with `keys settings`).
    Delete {
        #[command(flatten)]
        conn: Conn,
        name: String,
    },
}
