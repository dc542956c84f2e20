//! The gRPC client commands (`keys …`, `sign`, `verify`, `wrap`,
//! `unwrap`): connect (token or client certificate, TLS for `https://`),
//! call, print the answer ([`super::output`]: JSON, or a short form on a
//! terminal). They use only the public gRPC API and never open the data dir.
use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use base64::Engine as _;
use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::*;
use tonic::transport::Channel;

use super::args::{split_list, Cmd, Conn, DigestArgs, Input, KeysCmd, TokensCmd};
use super::output::{print, print_json, KeyList, Output, TokenList};
use super::Failure;

pub(crate) fn read_input(input: &Input) -> Result<Vec<u8>, Failure> {
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

/// What `sign` and `verify` send: the key (a `name#vN` when the digest was
/// computed from that version's public key), and the message or the digest.
struct Signed {
    key: String,
    message: Vec<u8>,
    digest: Vec<u8>,
}

pub(crate) struct Client {
    inner: KmsClient<Channel>,
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Client {
    /// The message from `input`, a `--digest` as given, or the digest of
    /// `--digest-file` computed here for the key's algorithm.
    async fn signed(
        &mut self,
        key: String,
        input: &Input,
        d: &DigestArgs,
        ctx: &[u8],
    ) -> Result<Signed, Failure> {
        if let Some(hex_digest) = &d.digest {
            let digest = hex::decode(hex_digest.trim()).map_err(|_| "--digest is not valid hex")?;
            return Ok(Signed {
                key,
                message: Vec::new(),
                digest,
            });
        }
        let Some(path) = &d.digest_file else {
            return Ok(Signed {
                key,
                message: read_input(input)?,
                digest: Vec::new(),
            });
        };
        let (name, version) = match key.split_once("#v") {
            Some((n, v)) => (
                n.to_string(),
                Some(v.parse::<u32>().map_err(|_| "--key: bad version")?),
            ),
            None => (key.clone(), None),
        };
        let k = self
            .inner
            .get_key(self.req(GetKeyRequest { name, pem: false }))
            .await?
            .into_inner()
            .key
            .ok_or("the server answered GetKey without a key")?;
        let alg = ron_kms::crypto::Algorithm::parse(&k.algorithm)
            .ok_or_else(|| format!("unknown algorithm {:?}", k.algorithm))?;
        let prehash = alg.prehash().ok_or_else(|| {
            format!("{alg} keys sign whole messages, not digests: use --in instead")
        })?;
        let vn = version.unwrap_or(k.primary_version);
        let v = k
            .versions
            .iter()
            .find(|v| v.version == vn)
            .ok_or_else(|| format!("key {} has no version {vn}", k.name))?;
        // only μ depends on the public key: the raw ML-DSA key in the SPKI
        let public = if prehash == ron_kms::crypto::Prehash::Mu {
            let len =
                ron_kms::crypto::prehash::ml_dsa_public_len(alg).ok_or("not an ML-DSA key")?;
            ron_kms::crypto::spki::raw_public(alg, &v.public_key_der, len)
                .ok_or("the key's public key is not an ML-DSA SPKI")?
                .to_vec()
        } else {
            Vec::new()
        };
        let mut h = prehash.hasher(&public, ctx);
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(Signed {
            key: v.kid.clone(),
            message: Vec::new(),
            digest: h.finish(),
        })
    }

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

async fn set_state(
    out: Output,
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
    print(out, &r.into_inner())?;
    Ok(ExitCode::SUCCESS)
}

/// `tokens …` through the server.
pub(crate) async fn tokens(t: TokensCmd, out: Output) -> Result<ExitCode, Failure> {
    match t {
        TokensCmd::Create(a) => {
            let mut c = Client::connect(&a.at.conn).await?;
            let r = c
                .inner
                .create_token(c.req(CreateTokenRequest {
                    tenant: a.tenant.unwrap_or_default(),
                    scopes: split_list(&a.scopes),
                    key_patterns: split_list(&a.key_patterns),
                    ttl_seconds: a.ttl_seconds,
                    description: a.description,
                }))
                .await?
                .into_inner();
            println!("{}", r.secret);
            if let Some(t) = r.token {
                eprintln!("created token {}", t.id);
            }
        }
        TokensCmd::List { at, tenant, all } => {
            let mut c = Client::connect(&at.conn).await?;
            let mut page_token = String::new();
            let mut tokens = Vec::new();
            loop {
                let r = c
                    .inner
                    .list_tokens(c.req(ListTokensRequest {
                        tenant: tenant.clone().unwrap_or_default(),
                        page_size: 1000,
                        page_token,
                        include_inactive: all,
                    }))
                    .await?
                    .into_inner();
                tokens.extend(r.tokens);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            print(out, &TokenList(&tokens))?;
        }
        TokensCmd::Revoke { at, id, tenant } => {
            let mut c = Client::connect(&at.conn).await?;
            let r = c
                .inner
                .revoke_token(c.req(RevokeTokenRequest {
                    id,
                    tenant: tenant.unwrap_or_default(),
                }))
                .await?;
            print(out, &r.into_inner())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `keys …`.
pub(crate) async fn keys(k: KeysCmd, out: Output) -> Result<ExitCode, Failure> {
    match k {
        KeysCmd::Create {
            conn,
            name,
            algorithm,
            op_id,
            published,
        } => {
            let mut c = Client::connect(&conn).await?;
            let r = c
                .inner
                .create_key(c.req(CreateKeyRequest {
                    name,
                    algorithm,
                    purpose: String::new(),
                    op_id,
                    published,
                }))
                .await?;
            print(out, &r.into_inner())?;
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
            print(out, &KeyList(all))?;
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::Get { conn, name, pem } => {
            let mut c = Client::connect(&conn).await?;
            let r = c.inner.get_key(c.req(GetKeyRequest { name, pem })).await?;
            if pem {
                // the PEM is what was asked for, in the JSON as before
                print_json(&r.into_inner())?;
            } else {
                print(out, &r.into_inner())?;
            }
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
            print(out, &r.into_inner())?;
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::Disable {
            conn,
            name,
            version,
        } => set_state(out, &conn, name, version, "disabled").await,
        KeysCmd::Enable {
            conn,
            name,
            version,
        } => set_state(out, &conn, name, version, "enabled").await,
        KeysCmd::Destroy {
            conn,
            name,
            version,
        } => set_state(out, &conn, name, version, "destroyed").await,
        KeysCmd::Settings {
            conn,
            name,
            min_decryption_version,
            min_encryption_version,
            deletion_allowed,
            published,
        } => {
            let mut c = Client::connect(&conn).await?;
            let r = c
                .inner
                .update_key(c.req(UpdateKeyRequest {
                    name,
                    min_decryption_version,
                    min_encryption_version,
                    deletion_allowed,
                    op_id: String::new(),
                    published,
                }))
                .await?;
            print(out, &r.into_inner())?;
            Ok(ExitCode::SUCCESS)
        }
        KeysCmd::Delete { conn, name } => {
            let mut c = Client::connect(&conn).await?;
            let r = c
                .inner
                .delete_key(c.req(DeleteKeyRequest {
                    name,
                    op_id: String::new(),
                }))
                .await?;
            print(out, &r.into_inner())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `sign`, `verify`, `wrap`, `unwrap`.
/// A base64 argument's bytes, or the failure `what`.
fn base64_arg(arg: &str, what: &'static str) -> Result<Vec<u8>, Failure> {
    Ok(base64::engine::general_purpose::STANDARD
        .decode(arg.trim())
        .map_err(|_| what)?)
}

/// A verification's exit status: 0 valid, 1 not.
fn valid_exit(valid: bool) -> ExitCode {
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub(crate) async fn crypto(cmd: Cmd, out: Output) -> Result<ExitCode, Failure> {
    match cmd {
        Cmd::Sign {
            conn,
            key,
            context,
            input,
            digest,
        } => {
            let mut c = Client::connect(&conn).await?;
            let s = c.signed(key, &input, &digest, context.as_bytes()).await?;
            let r = c
                .inner
                .sign(c.req(SignRequest {
                    key: s.key,
                    message: s.message,
                    op_id: String::new(),
                    context: context.into_bytes(),
                    digest: s.digest,
                    digest_algorithm: digest.digest_algorithm,
                }))
                .await?;
            print(out, &r.into_inner())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify {
            conn,
            key,
            signature,
            context,
            input,
            digest,
        } => {
            let signature = base64_arg(&signature, "--signature is not valid base64")?;
            let mut c = Client::connect(&conn).await?;
            let s = c.signed(key, &input, &digest, context.as_bytes()).await?;
            let r = c
                .inner
                .verify(c.req(VerifyRequest {
                    key: s.key,
                    message: s.message,
                    signature,
                    context: context.into_bytes(),
                    digest: s.digest,
                    digest_algorithm: digest.digest_algorithm,
                    jws: String::new(),
                }))
                .await?
                .into_inner();
            print(out, &r)?;
            Ok(valid_exit(r.valid))
        }
        Cmd::Mac { conn, key, input } => {
            let message = read_input(&input)?;
            let mut c = Client::connect(&conn).await?;
            let r = c.inner.mac(c.req(MacRequest { key, message })).await?;
            print(out, &r.into_inner())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::VerifyMac {
            conn,
            key,
            mac,
            input,
        } => {
            let mac = base64_arg(&mac, "--mac is not valid base64")?;
            let message = read_input(&input)?;
            let mut c = Client::connect(&conn).await?;
            let r = c
                .inner
                .verify_mac(c.req(VerifyMacRequest { key, message, mac }))
                .await?
                .into_inner();
            print(out, &r)?;
            Ok(valid_exit(r.valid))
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
            print(out, &r.into_inner())?;
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
        _ => unreachable!("only crypto commands come here"),
    }
}
