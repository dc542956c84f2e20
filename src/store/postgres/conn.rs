//! Connections: the r2d2 pool (plain or TLS), one-off clients, the
//! error chains and their translation to `StoreError`, running a blocking
//! client off tokio's runtime, and redacting a URL for messages.
use super::*;

/// The pool, over plain TCP or TLS.
pub(super) enum Pool {
    Plain(r2d2::Pool<PostgresConnectionManager<NoTls>>),
    Tls(r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>),
}

/// A pooled connection of either kind.
pub(super) enum Pooled {
    Plain(r2d2::PooledConnection<PostgresConnectionManager<NoTls>>),
    Tls(r2d2::PooledConnection<PostgresConnectionManager<MakeRustlsConnect>>),
}

impl Pooled {
    pub(super) fn client(&mut self) -> &mut Client {
        match self {
            Pooled::Plain(c) => c,
            Pooled::Tls(c) => c,
        }
    }
}

impl Pool {
    pub(super) fn get(&self) -> Result<Pooled, r2d2::Error> {
        Ok(match self {
            Pool::Plain(p) => Pooled::Plain(p.get()?),
            Pool::Tls(p) => Pooled::Tls(p.get()?),
        })
    }
}

pub(super) fn pool_builder<M: r2d2::ManageConnection<Error = postgres::Error>>(
    s: &PgSettings,
) -> r2d2::Builder<M> {
    r2d2::Pool::builder()
        .error_handler(Box::new(LogErrors))
        .max_size(s.pool_size.max(1))
        .min_idle(Some(1))
        .connection_timeout(s.connect_timeout)
}

/// Connect one client (the listener's), over TLS when configured.
pub(super) fn connect(
    config: &postgres::Config,
    tls: &Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Client, postgres::Error> {
    match tls {
        Some(t) => config.connect(MakeRustlsConnect::new((**t).clone())),
        None => config.connect(NoTls),
    }
}

/// An error with its causes ("db error: ERROR: …", "error connecting to
/// server: …"). The server's messages name objects, never parameters.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

pub(super) fn db_err(e: postgres::Error) -> StoreError {
    StoreError::Backend(chain(&e))
}

/// r2d2 keeps only the last connection error's top line; log each one whole
/// (a refused TLS handshake or pg_hba.conf entry shows here).
#[derive(Debug)]
pub(super) struct LogErrors;

impl r2d2::HandleError<postgres::Error> for LogErrors {
    fn handle_error(&self, e: postgres::Error) {
        tracing::warn!(error = %chain(&e), "store connection failed");
    }
}

pub(super) fn pool_err(e: r2d2::Error) -> StoreError {
    StoreError::Backend(format!("no database connection: {e}"))
}

pub(super) fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Run `f` on a thread outside any tokio runtime (see the module docs).
pub(super) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    })
}

/// The URL without its password, for logs and errors.
pub fn redact_url(url: &str) -> String {
    if !url.contains("://") {
        // key=value form
        return url
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
