//! Where records persist (`KMS_STORE` and its PostgreSQL companions) and
//! this replica's name (`KMS_NODE_ID`).
use std::time::Duration;

use super::source::{Amnesia, Raw, Src};
use super::{
    err, ConfigError, FileConfig, PgConfig, StoreKind, DEFAULT_STORE_POOL_SIZE,
    DEFAULT_STORE_RECONCILE_SECS,
};

/// The store, and where `KMS_STORE` came from (for later cross-checks).
pub(super) fn load(
    file: &mut FileConfig,
    src: &Src<'_>,
    amnesia: &Amnesia,
) -> Result<(StoreKind, Raw<String>), ConfigError> {
    let store_p = src.text("KMS_STORE", "store", file.store.take());
    amnesia.refuse(
        store_p.is_set(),
        &store_p.origin,
        "a configured store would persist keys",
    )?;
    let store = match store_p.value.as_deref() {
        None | Some("sqlite") => StoreKind::Sqlite,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let password_file = src
                .path(
                    "KMS_STORE_PASSWORD_FILE",
                    "store_password_file",
                    file.store_password_file.take(),
                )
                .value;
            let pool_size = src.number(
                "KMS_STORE_POOL_SIZE",
                "store_pool_size",
                file.store_pool_size.take(),
                1..=64,
                DEFAULT_STORE_POOL_SIZE,
                "must be a whole number from 1 to 64",
            )?;
            let reconcile = src.number(
                "KMS_STORE_RECONCILE_SECS",
                "store_reconcile_secs",
                file.store_reconcile_secs.take(),
                1..=3600,
                DEFAULT_STORE_RECONCILE_SECS,
                "must be 1 to 3600 seconds",
            )?;
            let ca_file = src
                .path(
                    "KMS_STORE_CA_FILE",
                    "store_ca_file",
                    file.store_ca_file.take(),
                )
                .value;
            StoreKind::Postgres(PgConfig {
                url: url.to_string(),
                password_file,
                ca_file,
                pool_size,
                reconcile_interval: Duration::from_secs(reconcile),
            })
        }
        Some(other) => {
            let shown = crate::store::postgres::redact_url(other);
            return Err(err(
                &store_p.origin,
                format!(
                    "{shown:?} is not a store: use \"sqlite\" (the default) or a postgres:// URL"
                ),
            ));
        }
    };
    Ok((store, store_p))
}

/// This replica's name in audit records and logs; the host name by default.
pub(super) fn node_id(file: &mut FileConfig, src: &Src<'_>) -> Result<String, ConfigError> {
    let node_p = src.text("KMS_NODE_ID", "node_id", file.node_id.take());
    match node_p.value {
        None => Ok(host_name()),
        Some(n) if valid_node_id(&n) => Ok(n),
        Some(_) => Err(err(
            node_p.origin,
            "must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
        )),
    }
}

/// The host name, for the default node id.
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| valid_node_id(s))
        .unwrap_or_else(|| "node".into())
}

pub(super) fn valid_node_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}
