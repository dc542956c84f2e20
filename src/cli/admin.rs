//! The commands that work on a data dir or files directly, without a
//! server: `tokens …` on a data dir (bootstrap and recovery) and `audit
//! verify`.
use std::path::PathBuf;
use std::process::ExitCode;

use ron_kms::config::{self, Flags, ProcessEnv};

use ron_kms::auth::{KeyPatterns, NewToken, Scopes};

use super::args::{split_list, TokensCmd};
use super::output::{print, Output, TokenList};
use super::Failure;

/// `tpm reseal`: re-seal the data dir's TPM-sealed keys (server stopped).
pub(crate) fn tpm_reseal(
    data_dir: Option<std::path::PathBuf>,
    config: Option<std::path::PathBuf>,
    pcr_digest: Option<String>,
) -> Result<ExitCode, Failure> {
    let cfg = config::load(
        &Flags {
            config,
            data_dir,
            ..Default::default()
        },
        &ProcessEnv,
    )?;
    let target = match pcr_digest {
        Some(h) => Some(
            hex::decode(h.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or("--pcr-digest must be 64 hex digits (a SHA-256 digest)")?,
        ),
        None => None,
    };
    let r = ron_kms::server::reseal_tpm(&cfg, target)?;
    match r.sealed_to {
        Some((sel, digest)) => println!(
            "re-sealed {} TPM-sealed keys to PCRs {sel} with digest {digest}",
            r.keys
        ),
        None => println!(
            "re-sealed {} TPM-sealed keys with no PCR policy (KMS_TPM_SEAL_PCRS is unset)",
            r.keys
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `tokens …` on a data dir's store directly, without a server (bootstrap
/// and recovery): nobody is authenticated, so nothing is checked against a
/// caller's grants; whoever can open the data dir holds every key anyway.
/// A running server sees the change through the store's token generation.
pub(crate) fn tokens(t: TokensCmd, out: Output) -> Result<ExitCode, Failure> {
    let at = t.at().clone();
    let cfg = config::load(
        &Flags {
            config: at.config,
            data_dir: at.data_dir,
            ..Default::default()
        },
        &ProcessEnv,
    )?;
    if cfg.amnesia {
        return Err("tokens: amnesia mode keeps tokens in the server's memory; use the bootstrap token it printed".into());
    }
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&cfg.data_dir)?;
    let store = ron_kms::server::open_store(&cfg)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    match t {
        TokensCmd::Create(a) => {
            let tenant = a
                .tenant
                .ok_or("tokens create --data-dir: --tenant is required")?;
            let scopes = Scopes::parse(&a.scopes).map_err(|e| format!("--scopes: {e}"))?;
            let keys = KeyPatterns::parse(&split_list(&a.key_patterns))
                .map_err(|e| format!("--key-patterns: {e}"))?;
            let ttl_seconds = a.ttl_seconds;
            let (secret, rec) = ron_kms::auth::create_token(
                store.as_ref(),
                &NewToken {
                    tenant,
                    scopes,
                    keys,
                    expires_at_ms: (ttl_seconds > 0).then(|| now + ttl_seconds as i64 * 1000),
                    description: a.description,
                    created_by: "cli".into(),
                },
            )?;
            println!("{secret}");
            eprintln!("created token {}", rec.id);
        }
        TokensCmd::List { tenant, all, .. } => {
            let mut rows: Vec<_> = store
                .load_tokens()?
                .into_iter()
                .filter(|r| tenant.as_ref().is_none_or(|t| &r.tenant == t))
                .filter(|r| {
                    all || (r.revoked_at_ms.is_none() && r.expires_at_ms.is_none_or(|at| now < at))
                })
                .map(|r| {
                    serde_json::json!({
                        "id": r.id,
                        "tenant": r.tenant,
                        "scopes": split_list(&r.scopes),
                        "key_patterns": split_list(&r.key_patterns),
                        "expires_at_ms": r.expires_at_ms,
                        "description": r.description,
                        "created_by": r.created_by,
                        "created_at_ms": r.created_at_ms,
                        "last_used_ms": r.last_used_ms,
                        "revoked_at_ms": r.revoked_at_ms,
                    })
                })
                .collect();
            rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
            print(out, &TokenList(&rows))?;
        }
        TokensCmd::Revoke { id, tenant, .. } => {
            let tenant = match tenant {
                Some(t) => t,
                None => store
                    .load_tokens()?
                    .into_iter()
                    .find(|r| r.id == id)
                    .map(|r| r.tenant)
                    .ok_or_else(|| format!("no token {id}"))?,
            };
            let rec = store.revoke_token(&tenant, &id, now)?;
            eprintln!("revoked token {} of tenant {}", rec.id, rec.tenant);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit verify`.
pub(crate) fn audit_verify(paths: Vec<PathBuf>, key: Option<PathBuf>) -> Result<ExitCode, Failure> {
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
            let r = ron_kms::audit::chain::verify_files(&paths, &key).map_err(|e| e.to_string());
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
                if !s.dangling_intents.is_empty() {
                    println!(
                        "{prefix}{} intents without an outcome (the process stopped between a change's intent and its outcome; check the store for whether it committed):",
                        s.dangling_intents.len()
                    );
                    for (seq, i) in &s.dangling_intents {
                        println!(
                            "{prefix}  intent {seq}: {} tenant={} kid={} principal={} request_id={} ts_ms={}",
                            i.op, i.tenant, i.kid, i.principal, i.request_id, i.ts_ms
                        );
                    }
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
