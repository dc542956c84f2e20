//! The `ron-kms` command: `serve`, `tokens`, and gRPC client commands
//! (`keys`, `sign`, `verify`, `wrap`, `unwrap`).
#![forbid(unsafe_code)]

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use ron_kms::config::{self, Flags, ProcessEnv};
use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::*;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "ron-kms",
    version,
    about = "Key-management service: keys stay in custody; sign, verify, wrap and unwrap over gRPC and HTTP."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service (gRPC and HTTP).
    Serve(ServeArgs),
    /// Manage bearer tokens in a data dir.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Work with the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Manage keys (gRPC client).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Sign a message (gRPC client). Prints JSON with a base64 signature.
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
    },
    /// Wrap a plaintext (≤ 8 KiB) read from --in or stdin. Prints JSON.
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
struct ServeArgs {
    /// TOML config file (also KMS_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (default ./ron-kms-data; also KMS_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address (default 127.0.0.1:9445; also KMS_GRPC_ADDR).
    #[arg(long)]
    grpc_addr: Option<String>,
    /// HTTP listen address (default 127.0.0.1:9446; also KMS_HTTP_ADDR).
    #[arg(long)]
    http_addr: Option<String>,
    /// Keep keys, tokens and the master key in memory only; write nothing
    /// (also KMS_AMNESIA=true). Everything is gone when the process exits.
    #[arg(long)]
    amnesia: bool,
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Create a token; prints only the token on stdout.
    Create {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        tenant: String,
        /// Comma-separated: kms:admin,kms:read,kms:sign,kms:verify,kms:wrap,kms:unwrap
        #[arg(long)]
        scopes: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
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
struct Conn {
    /// gRPC address of the service.
    #[arg(
        long,
        env = "KMS_ADDR",
        default_value = "http://127.0.0.1:9445",
        global = true
    )]
    addr: String,
    /// Bearer token. Prefer KMS_TOKEN or --token-file: arguments are visible
    /// to other users in the process list.
    #[arg(long, env = "KMS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// CA bundle (PEM) that signed the server's certificate; needed for an
    /// `https://` address.
    #[arg(long, env = "KMS_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; with --key-file it can stand in
    /// for a token.
    #[arg(long, env = "KMS_CLIENT_CERT_FILE", global = true)]
    cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "KMS_CLIENT_KEY_FILE", global = true)]
    key_file: Option<PathBuf>,
}

#[derive(Args)]
struct Input {
    /// The input as a UTF-8 string.
    #[arg(long, conflicts_with = "in_file")]
    message: Option<String>,
    /// Read the input from this file ("-" for stdin, the default).
    #[arg(long = "in")]
    in_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysCmd {
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
}

type Failure = Box<dyn std::error::Error>;

fn read_input(input: &Input) -> Result<Vec<u8>, Failure> {
    if let Some(m) = &input.message {
        return Ok(m.as_bytes().to_vec());
    }
    match &input.in_file {
        Some(p) if p.as_os_str() != "-" => Ok(std::fs::read(p)?),
        _ => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            Ok(buf)
        }
    }
}

struct Client {
    inner: KmsClient<Channel>,
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Client {
    async fn connect(conn: &Conn) -> Result<Self, Failure> {
        let identity = match (&conn.cert_file, &conn.key_file) {
            (Some(c), Some(k)) => Some(tonic::transport::Identity::from_pem(
                std::fs::read(c)?,
                std::fs::read(k)?,
            )),
            (None, None) => None,
            _ => return Err("--cert-file and --key-file go together".into()),
        };
        let token = match (&conn.token, &conn.token_file) {
            (_, Some(f)) => Some(std::fs::read_to_string(f)?.trim().to_string()),
            (Some(t), None) => Some(t.clone()),
            (None, None) if identity.is_some() => None,
            (None, None) => {
                return Err("no token: set KMS_TOKEN, pass --token-file, or use a client certificate (--cert-file, --key-file)".into())
            }
        };
        let mut endpoint = Channel::from_shared(conn.addr.clone())?;
        if conn.addr.starts_with("https://") {
            let ca = conn
                .ca_file
                .as_ref()
                .ok_or("an https:// address needs --ca-file (or KMS_CA_FILE)")?;
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(ca)?));
            if let Some(id) = identity {
                tls = tls.identity(id);
            }
            endpoint = endpoint.tls_config(tls)?;
        } else if identity.is_some() || conn.ca_file.is_some() {
            return Err("--ca-file and client certificates need an https:// address".into());
        }
        let inner = KmsClient::new(endpoint.connect().await?);
        Ok(Client {
            inner,
            auth: match token {
                Some(t) => Some(format!("Bearer {t}").parse()?),
                None => None,
            },
        })
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(a) = &self.auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn set_state(
    conn: &Conn,
    name: String,
    version: u32,
    state: &str,
) -> Result<ExitCode, Failure> {
    let mut c = Client::connect(conn).await?;
    let r = c
        .inner
        .set_key_version_state(c.req(SetKeyVersionStateRequest {
            name,
            version,
            state: state.into(),
            op_id: String::new(),
        }))
        .await?;
    print_json(&r.into_inner())?;
    Ok(ExitCode::SUCCESS)
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.cmd {
        Cmd::Serve(a) => serve(a).await,
        Cmd::Tokens(TokensCmd::Create {
            config,
            data_dir,
            tenant,
            scopes,
        }) => {
            let cfg = config::load(
                &Flags {
                    config,
                    data_dir,
                    ..Default::default()
                },
                &ProcessEnv,
            )?;
            let scopes =
                ron_kms::auth::Scopes::parse(&scopes).map_err(|e| format!("--scopes: {e}"))?;
            if cfg.amnesia {
                return Err("tokens create: amnesia mode keeps tokens in the server's memory; use the bootstrap token it printed".into());
            }
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(&cfg.data_dir)?;
            let store = ron_kms::server::open_store(&cfg)?;
            let token = ron_kms::auth::create_token(store.as_ref(), &tenant, scopes)?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit(AuditCmd::Verify { paths, key }) => {
            let key = key.map(|k| ron_kms::audit::read_key_file(&k)).transpose()?;
            let chains: Vec<(String, Result<ron_kms::audit::chain::Summary, String>)> =
                if paths.iter().all(|p| p.is_dir()) {
                    paths
                        .iter()
                        .map(|d| {
                            (
                                d.display().to_string(),
                                ron_kms::audit::verify_dir_explained(d, key.as_deref()),
                            )
                        })
                        .collect()
                } else {
                    let key = match key {
                        Some(k) => k,
                        None => {
                            let dir = paths[0].parent().unwrap_or(std::path::Path::new("."));
                            ron_kms::audit::read_key_file(&dir.join(ron_kms::audit::KEY_FILE))?
                        }
                    };
                    let r = ron_kms::audit::chain::verify_files(&paths, &key)
                        .map_err(|e| e.to_string());
                    vec![(paths[0].display().to_string(), r)]
                };
            let several = chains.len() > 1;
            let mut code = ExitCode::SUCCESS;
            for (name, result) in chains {
                let prefix = if several {
                    format!("{name}: ")
                } else {
                    String::new()
                };
                match result {
                    Ok(s) => {
                        let nodes = if s.nodes.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " (node {})",
                                s.nodes.iter().cloned().collect::<Vec<_>>().join(", ")
                            )
                        };
                        println!(
                            "{prefix}audit chain ok: {} records ({} checkpoints), last record {}{}{nodes}",
                            s.records,
                            s.checkpoints,
                            s.last_seq,
                            if s.unsealed_tail > 0 {
                                format!(
                                    ", {} records after the last checkpoint (unsealed)",
                                    s.unsealed_tail
                                )
                            } else {
                                String::new()
                            }
                        );
                        if s.unsealed_tail > 0 {
                            code = ExitCode::from(1);
                        }
                    }
                    Err(e) => {
                        eprintln!("{prefix}audit chain broken: {e}");
                        code = ExitCode::from(1);
                    }
                }
            }
            Ok(code)
        }
        Cmd::Keys(k) => match k {
            KeysCmd::Create {
                conn,
                name,
                algorithm,
                op_id,
            } => {
                let mut c = Client::connect(&conn).await?;
                let r = c
                    .inner
                    .create_key(c.req(CreateKeyRequest {
                        name,
                        algorithm,
                        purpose: String::new(),
                        op_id,
                    }))
                    .await?;
                print_json(&r.into_inner())?;
                Ok(ExitCode::SUCCESS)
            }
            KeysCmd::List { conn } => {
                let mut c = Client::connect(&conn).await?;
                let mut token = String::new();
                let mut all = Vec::new();
                loop {
                    let r = c
                        .inner
                        .list_keys(c.req(ListKeysRequest {
                            page_size: 1000,
                            page_token: token,
                        }))
                        .await?
                        .into_inner();
                    all.extend(r.keys);
                    if r.next_page_token.is_empty() {
                        break;
                    }
                    token = r.next_page_token;
                }
                print_json(&all)?;
                Ok(ExitCode::SUCCESS)
            }
            KeysCmd::Get { conn, name, pem } => {
                let mut c = Client::connect(&conn).await?;
                let r = c.inner.get_key(c.req(GetKeyRequest { name, pem })).await?;
                print_json(&r.into_inner())?;
                Ok(ExitCode::SUCCESS)
            }
            KeysCmd::Rotate { conn, name } => {
                let mut c = Client::connect(&conn).await?;
                let r = c
                    .inner
                    .rotate_key(c.req(RotateKeyRequest {
                        name,
                        op_id: String::new(),
                    }))
                    .await?;
                print_json(&r.into_inner())?;
                Ok(ExitCode::SUCCESS)
            }
            KeysCmd::Disable {
                conn,
                name,
                version,
            } => set_state(&conn, name, version, "disabled").await,
            KeysCmd::Enable {
                conn,
                name,
                version,
            } => set_state(&conn, name, version, "enabled").await,
            KeysCmd::Destroy {
                conn,
                name,
                version,
            } => set_state(&conn, name, version, "destroyed").await,
        },
        Cmd::Sign {
            conn,
            key,
            context,
            input,
        } => {
            let message = read_input(&input)?;
            let mut c = Client::connect(&conn).await?;
            let r = c
                .inner
                .sign(c.req(SignRequest {
                    key,
                    message,
                    op_id: String::new(),
                    context: context.into_bytes(),
                }))
                .await?;
            print_json(&r.into_inner())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify {
            conn,
            key,
            signature,
            context,
            input,
        } => {
            let message = read_input(&input)?;
            let signature = base64::engine::general_purpose::STANDARD
                .decode(signature.trim())
                .map_err(|_| "--signature is not valid base64")?;
            let mut c = Client::connect(&conn).await?;
            let r = c
                .inner
                .verify(c.req(VerifyRequest {
                    key,
                    message,
                    signature,
                    context: context.into_bytes(),
                }))
                .await?
                .into_inner();
            print_json(&r)?;
            Ok(if r.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Wrap {
            conn,
            key,
            aad,
            input,
        } => {
            let plaintext = read_input(&input)?;
            let mut c = Client::connect(&conn).await?;
            let r = c
                .inner
                .wrap(c.req(WrapRequest {
                    key,
                    plaintext,
                    aad: aad.into_bytes(),
                    op_id: String::new(),
                }))
                .await?;
            print_json(&r.into_inner())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Unwrap {
            conn,
            key,
            aad,
            input,
        } => {
            let text = read_input(&input)?;
            let ciphertext = base64::engine::general_purpose::STANDARD
                .decode(String::from_utf8_lossy(&text).trim())
                .map_err(|_| "ciphertext input is not valid base64")?;
            let mut c = Client::connect(&conn).await?;
            let r = c
                .inner
                .unwrap(c.req(UnwrapRequest {
                    key,
                    ciphertext,
                    aad: aad.into_bytes(),
                }))
                .await?
                .into_inner();
            std::io::stdout().write_all(&r.plaintext)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logs to stderr (text or JSON, filtered by `KMS_LOG`), plus the
/// tokio-console layer when `KMS_CONSOLE_ADDR` is set. The log filter is
/// attached to the log layer only, so the console still sees the runtime's
/// task events.
fn init_tracing(cfg: &config::Config) -> Result<(), Failure> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.filter)
        .map_err(|e| format!("config: KMS_LOG: {e}"))?;
    let logs = match cfg.log.format {
        config::LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        config::LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(logs);
    #[cfg(feature = "console")]
    if let Some(addr) = cfg.log.console_addr {
        let console = console_subscriber::ConsoleLayer::builder()
            .server_addr(addr)
            .spawn();
        registry.with(console).init();
        tracing::info!(%addr, "tokio-console instrumentation served");
        return Ok(());
    }
    registry.init();
    Ok(())
}

async fn serve(a: ServeArgs) -> Result<ExitCode, Failure> {
    let flags = Flags {
        config: a.config,
        data_dir: a.data_dir,
        grpc_addr: a.grpc_addr,
        http_addr: a.http_addr,
        amnesia: a.amnesia,
    };
    let cfg = config::load(&flags, &ProcessEnv)?;
    init_tracing(&cfg)?;
    let running = ron_kms::server::start(&cfg).await?;
    if let Some(t) = &running.bootstrap_token {
        // Printed once, on stdout, and never logged; only its hash is stored.
        println!(
            "bootstrap: created tenant {:?} with an admin token (shown once, store it now):\n{t}",
            cfg.bootstrap_tenant
        );
        if cfg.amnesia {
            eprintln!("amnesia mode: keys, tokens and the master key live in memory only and vanish on exit");
        }
        let _ = std::io::stdout().flush();
    }
    if ron_kms::runtime::LIFO_SLOT_DISABLED {
        tracing::debug!("runtime: tokio's LIFO slot is disabled");
    } else {
        tracing::warn!("runtime: built without --cfg tokio_unstable, so tokio's LIFO slot stays on and audited throughput is lower (PERFORMANCE.md)");
    }
    // On stdout, after the bootstrap banner, so a supervisor (or a test)
    // reading stdout knows both the token and the bound addresses.
    println!(
        "ron-kms {} serving gRPC on {} and HTTP on {} ({})",
        env!("CARGO_PKG_VERSION"),
        running.grpc_addr,
        running.http_addr,
        if cfg.amnesia {
            "amnesia: in memory only".to_string()
        } else {
            format!("data dir {}", cfg.data_dir.display())
        }
    );
    let _ = std::io::stdout().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match ron_kms::runtime::builder().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(st) = e.downcast_ref::<tonic::Status>() {
                let code = st
                    .metadata()
                    .get("kms-error-code")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                eprintln!("error: {:?} ({code}): {}", st.code(), st.message());
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::from(2)
        }
    }
}
