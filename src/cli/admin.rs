//! The commands that work on a data dir or files directly, without a
//! server: `tokens create` (bootstrap and recovery) and `audit verify`.
use std::path::PathBuf;
use std::process::ExitCode;

use ron_kms::config::{self, Flags, ProcessEnv};

use super::Failure;

/// `tokens create`: writes the store of the data dir; a running server
/// picks the token up on first use.
pub(crate) fn tokens_create(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    tenant: String,
    scopes: String,
) -> Result<ExitCode, Failure> {
    let cfg = config::load(
        &Flags {
            config,
            data_dir,
            ..Default::default()
        },
        &ProcessEnv,
    )?;
    let scopes = ron_kms::auth::Scopes::parse(&scopes).map_err(|e| format!("--scopes: {e}"))?;
    if cfg.amnesia {
        return Err("tokens create: amnesia mode keeps tokens in the server's memory; use the bootstrap token it printed".into());
    }
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&cfg.data_dir)?;
    let store = ron_kms::server::open_store(&cfg)?;
    let token = ron_kms::auth::create_token(store.as_ref(), &tenant, scopes)?;
    println!("{token}");
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
            }
            Err(e) => {
                eprintln!("{prefix}audit chain broken: {e}");
                code = ExitCode::from(1);
            }
        }
    }
    Ok(code)
}
