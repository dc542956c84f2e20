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

/// A unique violation as `conflict()`'s error; any other failure as a
/// database error.
pub(super) fn unique_or(e: postgres::Error, conflict: impl FnOnce() -> StoreError) -> StoreError {
    if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
        conflict()
    } else {
        db_err(e)
    }
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
        return redact_key_values(url);
    }
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match (head.find("://"), head.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &head[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &head[..s + 3], &head[at..]),
                None => head.to_string(),
            }
        }
        _ => head.to_string(),
    };
    if let Some(q) = query {
        out.push('?');
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// Whether a connection parameter holds a secret (libpq's `password`,
/// and `sslpassword` for the client key).
fn is_secret_key(k: &str) -> bool {
    let k = k.trim();
    k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword")
}

/// libpq's `key = value` form: values may be single-quoted (with `\'` and
/// `\\` escapes, spaces inside) and `=` may have spaces around it. Secret
/// values are replaced whole; the rest is kept as written.
fn redact_key_values(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        // whitespace between pairs
        let ws = i;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        out.push_str(&s[ws..i]);
        if i >= b.len() {
            break;
        }
        let k0 = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[k0..i];
        // spaces, '=', spaces
        let sep0 = i;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
        } else {
            // a bare word: not a pair; keep it and go on
            out.push_str(&s[k0..i]);
            continue;
        }
        let sep = &s[sep0..i];
        let v0 = i;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = i.min(b.len());
        }
        out.push_str(key);
        out.push_str(sep);
        if is_secret_key(key) {
            out.push_str("***");
        } else {
            out.push_str(&s[v0..i]);
        }
    }
    out
}
