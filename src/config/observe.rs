//! The audit log's settings (`KMS_AUDIT_*`) and the process's own logs and
//! instrumentation (`KMS_LOG`, `KMS_LOG_FORMAT`, `KMS_CONSOLE_ADDR`).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::source::{Amnesia, Src};
use super::{err, ConfigError, FileConfig};

/// The audit log.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// Audit segments; default `<data dir>/audit`. Ignored in amnesia mode
    /// (the log is kept in memory).
    pub dir: PathBuf,
    pub checkpoint_interval: u64,
    pub max_file_bytes: u64,
    /// `KMS_AUDIT_MIN_FREE_BYTES`: the free-space floor (0: none).
    pub min_free_bytes: u64,
    /// `KMS_AUDIT_SYNC` (`fsync`, the default, or `write`) with
    /// `KMS_AUDIT_SYNC_INTERVAL_MS` (docs/audit.md, "Durability").
    pub sync: crate::audit::AuditSync,
    /// Benchmarks only (library API, never from a file, env or flag): run
    /// without an audit log to measure what it costs.
    pub off_for_benchmarks: bool,
}

impl AuditConfig {
    pub fn for_data_dir(data_dir: &Path) -> Self {
        AuditConfig {
            dir: data_dir.join("audit"),
            checkpoint_interval: crate::audit::DEFAULT_CHECKPOINT_INTERVAL,
            max_file_bytes: crate::audit::DEFAULT_MAX_FILE_BYTES,
            min_free_bytes: crate::audit::DEFAULT_MIN_FREE_BYTES,
            sync: crate::audit::AuditSync::Fsync,
            off_for_benchmarks: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The process's logs and instrumentation.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// The `tracing` filter (`KMS_LOG`, default `info`).
    pub filter: String,
    /// `text` (default) or `json` (one JSON object per line).
    pub format: LogFormat,
    /// Serve the tokio-console instrumentation API here (builds with the
    /// `console` feature and `--cfg tokio_unstable` only). Off when `None`.
    pub console_addr: Option<SocketAddr>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
            format: LogFormat::Text,
            console_addr: None,
        }
    }
}

pub(super) fn audit(
    file: &mut FileConfig,
    src: &Src<'_>,
    amnesia: &Amnesia,
    data_dir: &Path,
) -> Result<AuditConfig, ConfigError> {
    let dir_p = src.path("KMS_AUDIT_DIR", "audit_dir", file.audit_dir.take());
    amnesia.refuse(
        dir_p.is_set(),
        &dir_p.origin,
        "its audit log is kept in memory",
    )?;
    let sync_p = src.text("KMS_AUDIT_SYNC", "audit_sync", file.audit_sync.take());
    let interval_ms = src.number(
        "KMS_AUDIT_SYNC_INTERVAL_MS",
        "audit_sync_interval_ms",
        file.audit_sync_interval_ms.take(),
        1..=60_000,
        crate::audit::DEFAULT_SYNC_INTERVAL.as_millis() as u64,
        "must be a whole number of milliseconds from 1 to 60000",
    )?;
    let sync = match sync_p.value.as_deref().map(str::trim) {
        None | Some("") | Some("fsync") => crate::audit::AuditSync::Fsync,
        Some("write") => crate::audit::AuditSync::Write {
            interval: std::time::Duration::from_millis(interval_ms),
        },
        Some(other) => {
            return Err(err(
                sync_p.origin,
                format!("{other:?} is not fsync or write"),
            ))
        }
    };
    Ok(AuditConfig {
        sync,
        dir: dir_p.value.unwrap_or_else(|| data_dir.join("audit")),
        checkpoint_interval: src.number(
            "KMS_AUDIT_CHECKPOINT_INTERVAL",
            "audit_checkpoint_interval",
            file.audit_checkpoint_interval.take(),
            1..=10_000_000,
            crate::audit::DEFAULT_CHECKPOINT_INTERVAL,
            "must be a whole number from 1 to 10000000",
        )?,
        max_file_bytes: src.number(
            "KMS_AUDIT_MAX_FILE_BYTES",
            "audit_max_file_bytes",
            file.audit_max_file_bytes.take(),
            4096..=u64::MAX,
            crate::audit::DEFAULT_MAX_FILE_BYTES,
            "must be at least 4096",
        )?,
        min_free_bytes: src.number(
            "KMS_AUDIT_MIN_FREE_BYTES",
            "audit_min_free_bytes",
            file.audit_min_free_bytes.take(),
            0..=u64::MAX,
            crate::audit::DEFAULT_MIN_FREE_BYTES,
            "must be a whole number of bytes (0: no floor)",
        )?,
        off_for_benchmarks: false,
    })
}

pub(super) fn log(file: &mut FileConfig, src: &Src<'_>) -> Result<LogConfig, ConfigError> {
    let filter = src
        .text("KMS_LOG", "log", file.log.take())
        .value
        .unwrap_or_else(|| "info".to_string());
    let fmt_p = src.text("KMS_LOG_FORMAT", "log_format", file.log_format.take());
    let format = match fmt_p.value.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => return Err(err(fmt_p.origin, format!("{other:?} is not text or json"))),
    };
    let console_p = src.text("KMS_CONSOLE_ADDR", "console_addr", file.console_addr.take());
    let console_addr = match console_p.value.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(_) if !cfg!(feature = "console") => {
            return Err(err(
                console_p.origin,
                "this build has no tokio-console support; build with RUSTFLAGS=\"--cfg tokio_unstable\" cargo build --release --features console",
            ))
        }
        Some(a) => Some(a.parse().map_err(|_| {
            err(
                &console_p.origin,
                format!("{a:?} is not a socket address like 127.0.0.1:6669"),
            )
        })?),
    };
    Ok(LogConfig {
        filter,
        format,
        console_addr,
    })
}
