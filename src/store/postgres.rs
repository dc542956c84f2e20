//! The shared store for scale-out: several replicas on one PostgreSQL
//! database (`KMS_STORE=postgres://…`). Same contract as the SQLite store
//! (one transaction per method, `op_id` under a unique constraint), plus a
//! change feed: every mutation sends a `NOTIFY` in its own transaction, so
//! the notification is delivered exactly when the change is visible, and
//! [`PgStore::subscribe`] runs a listener thread that hands each change to
//! the service, with a periodic full reconciliation for notifications lost
//! while the listener was disconnected.
//!
//! Blocking: the `postgres` client runs its own small runtime, which cannot
//! be entered from inside tokio's. Every call therefore runs on a scoped
//! thread of its own (tens of microseconds on calls that are rare admin
//! mutations and start-up reads), whichever thread the caller is on.
//!
//! Schema: versioned migrations in `schema_migrations`, applied under an
//! advisory lock so replicas starting together migrate once. Migration 1
//! matches SQLite's schema version 1 table for table.
use std::time::Duration;

use postgres::{Client, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Change, ChangeHandler, OpRecord, Store, StoreError, TokenRecord};
use crate::crypto::Algorithm;
use crate::store::{KeyRecord, VersionRecord, VersionState};

/// The channel every replica listens on.
pub const CHANNEL: &str = "ron_kms_changes";

/// Ordered migrations; entry `i` takes the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &["
CREATE TABLE keys (
    tenant          TEXT NOT NULL,
    name            TEXT NOT NULL,
    algorithm       TEXT NOT NULL,
    primary_version INTEGER NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE key_versions (
    tenant        TEXT NOT NULL,
    name          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('enabled', 'disabled', 'destroyed')),
    public_key    BYTEA NOT NULL,
    handle        BYTEA,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, name, version),
    FOREIGN KEY (tenant, name) REFERENCES keys (tenant, name)
);
CREATE TABLE ops (
    tenant        TEXT NOT NULL,
    op_id         TEXT NOT NULL,
    request_hash  BYTEA NOT NULL,
    result        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, op_id)
);
CREATE TABLE tokens (
    hash          BYTEA PRIMARY KEY,
    tenant        TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
"];

/// Advisory lock key of the migration step (any constant; "ronkms" in ASCII).
const MIGRATION_LOCK: i64 = 0x726f_6e6b_6d73;

/// Pool and timeout settings. Short timeouts make mutations fail fast with
/// UNAVAILABLE while the database is away, instead of queueing.
#[derive(Clone, Debug)]
pub struct PgSettings {
    pub pool_size: u32,
    /// How long a call waits for a pooled connection (or a new one).
    pub connect_timeout: Duration,
    /// `statement_timeout` of every session.
    pub statement_timeout: Duration,
    /// How often the listener reconciles in full (missed notifications).
    pub reconcile_interval: Duration,
    /// TLS to the server (`KMS_STORE_CA_FILE`): required, with the server's
    /// certificate checked against these roots and the host name. Plain
    /// TCP when `None` (loopback, a local socket, development).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            pool_size: 4,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// The pool, over plain TCP or TLS.
enum Pool {
    Plain(r2d2::Pool<PostgresConnectionManager<NoTls>>),
    Tls(r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>),
}

/// A pooled connection of either kind.
enum Pooled {
    Plain(r2d2::PooledConnection<PostgresConnectionManager<NoTls>>),
    Tls(r2d2::PooledConnection<PostgresConnectionManager<MakeRustlsConnect>>),
}

impl Pooled {
    fn client(&mut self) -> &mut Client {
        match self {
            Pooled::Plain(c) => c,
            Pooled::Tls(c) => c,
        }
    }
}

impl Pool {
    fn get(&self) -> Result<Pooled, r2d2::Error> {
        Ok(match self {
            Pool::Plain(p) => Pooled::Plain(p.get()?),
            Pool::Tls(p) => Pooled::Tls(p.get()?),
        })
    }
}

fn pool_builder<M: r2d2::ManageConnection<Error = postgres::Error>>(
    s: &PgSettings,
) -> r2d2::Builder<M> {
    r2d2::Pool::builder()
        .error_handler(Box::new(LogErrors))
        .max_size(s.pool_size.max(1))
        .min_idle(Some(1))
        .connection_timeout(s.connect_timeout)
}

/// Connect one client (the listener's), over TLS when configured.
fn connect(
    config: &postgres::Config,
    tls: &Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Client, postgres::Error> {
    match tls {
        Some(t) => config.connect(MakeRustlsConnect::new((**t).clone())),
        None => config.connect(NoTls),
    }
}

pub struct PgStore {
    /// `None` only while dropping.
    pool: Option<Pool>,
    config: postgres::Config,
    settings: PgSettings,
}

/// An error with its causes ("db error: ERROR: …", "error connecting to
/// server: …"). The server's messages name objects, never parameters.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

fn db_err(e: postgres::Error) -> StoreError {
    StoreError::Backend(chain(&e))
}

/// r2d2 keeps only the last connection error's top line; log each one whole
/// (a refused TLS handshake or pg_hba.conf entry shows here).
#[derive(Debug)]
struct LogErrors;

impl r2d2::HandleError<postgres::Error> for LogErrors {
    fn handle_error(&self, e: postgres::Error) {
        tracing::warn!(error = %chain(&e), "store connection failed");
    }
}

fn pool_err(e: r2d2::Error) -> StoreError {
    StoreError::Backend(format!("no database connection: {e}"))
}

fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Run `f` on a thread outside any tokio runtime (see the module docs).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
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

fn notify(tx: &mut postgres::Transaction<'_>, change: &Change) -> Result<(), StoreError> {
    let payload = serde_json::to_string(change).map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .map_err(db_err)?;
    Ok(())
}

fn insert_op(tx: &mut postgres::Transaction<'_>, op: Option<&OpRecord>) -> Result<(), StoreError> {
    let Some(op) = op else { return Ok(()) };
    tx.execute(
        "INSERT INTO ops (tenant, op_id, request_hash, result, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        &[&op.tenant, &op.op_id, &&op.request_hash[..], &op.result, &now_ms()],
    )
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::OpConflict(format!("op_id {:?} was already used", op.op_id))
        } else {
            db_err(e)
        }
    })?;
    Ok(())
}

fn insert_version(
    tx: &mut postgres::Transaction<'_>,
    tenant: &str,
    name: &str,
    v: &VersionRecord,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO key_versions (tenant, name, version, state, public_key, handle, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &tenant,
            &name,
            &(v.version as i32),
            &v.state.as_str(),
            &v.public_key,
            &v.handle,
            &v.created_at_ms,
        ],
    )
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::VersionConflict(format!(
                "version {} of {name} was created concurrently",
                v.version
            ))
        } else {
            db_err(e)
        }
    })?;
    Ok(())
}

fn decode_key(
    tenant: String,
    name: String,
    alg: &str,
    primary_version: i32,
    created_at_ms: i64,
) -> Result<KeyRecord, StoreError> {
    let algorithm = Algorithm::parse(alg)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown algorithm {alg:?}")))?;
    Ok(KeyRecord {
        tenant,
        name,
        algorithm,
        primary_version: primary_version as u32,
        created_at_ms,
        versions: Vec::new(),
    })
}

fn push_version(key: &mut KeyRecord, row: &postgres::Row, base: usize) -> Result<(), StoreError> {
    let version = row.get::<_, i32>(base) as u32;
    let state: String = row.get(base + 1);
    let state = VersionState::parse(&state)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown state {state:?}")))?;
    if version as usize != key.versions.len() + 1 {
        return Err(StoreError::Corrupt(format!(
            "key {}/{} has a gap before version {version}",
            key.tenant, key.name
        )));
    }
    key.versions.push(VersionRecord {
        version,
        state,
        public_key: row.get(base + 2),
        handle: row.get(base + 3),
        created_at_ms: row.get(base + 4),
    });
    Ok(())
}

fn check_primary(key: &KeyRecord) -> Result<(), StoreError> {
    if key.version(key.primary_version).is_none() {
        return Err(StoreError::Corrupt(format!(
            "key {}/{} names a missing primary version",
            key.tenant, key.name
        )));
    }
    Ok(())
}

impl PgStore {
    /// Connect, build the pool and migrate. `password`, when given, is used
    /// instead of one in the URL (it comes from a file, never a flag).
    pub fn open(
        url: &str,
        password: Option<&[u8]>,
        settings: PgSettings,
    ) -> Result<Self, StoreError> {
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            StoreError::Backend(format!("{}: {e}", redact_url(url)))
        })?;
        if let Some(p) = password {
            config.password(p);
        }
        if settings.tls.is_some() {
            // TLS or nothing: never fall back to plain text.
            config.ssl_mode(postgres::config::SslMode::Require);
        }
        config
            .connect_timeout(settings.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("ron-kms")
            .options(&format!(
                "-c client_min_messages=warning -c statement_timeout={}",
                settings.statement_timeout.as_millis()
            ));
        let pool = off_runtime(|| match &settings.tls {
            Some(t) => pool_builder(&settings)
                .build(PostgresConnectionManager::new(
                    config.clone(),
                    MakeRustlsConnect::new((**t).clone()),
                ))
                .map(Pool::Tls),
            None => pool_builder(&settings)
                .build(PostgresConnectionManager::new(config.clone(), NoTls))
                .map(Pool::Plain),
        })
        .map_err(pool_err)?;
        let store = PgStore {
            pool: Some(pool),
            config,
            settings,
        };
        store.with(migrate)?;
        Ok(store)
    }

    /// Run `f` with a pooled connection, off the runtime.
    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        off_runtime(|| {
            let pool = self
                .pool
                .as_ref()
                .ok_or_else(|| StoreError::Backend("store closed".into()))?;
            let mut c = pool.get().map_err(pool_err)?;
            f(c.client())
        })
    }

    /// Run `f` inside one transaction, off the runtime.
    fn tx<T: Send>(
        &self,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(db_err)?;
            let v = f(&mut tx)?;
            tx.commit().map_err(db_err)?;
            Ok(v)
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing a pooled client blocks on its own runtime, which panics on
        // a tokio worker (the server drops its store there): close them on a
        // thread of their own.
        if let Some(pool) = self.pool.take() {
            off_runtime(move || drop(pool));
        }
    }
}

fn migrate(c: &mut Client) -> Result<(), StoreError> {
    let mut tx = c.transaction().map_err(db_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version       INTEGER PRIMARY KEY,
             applied_at_ms BIGINT NOT NULL
         )",
    )
    .map_err(db_err)?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .map_err(db_err)?
        .get(0);
    if current as usize > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this binary understands ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql).map_err(db_err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)",
            &[&(i as i32 + 1), &now_ms()],
        )
        .map_err(db_err)?;
        tracing::info!(version = i + 1, "database migrated");
    }
    tx.commit().map_err(db_err)
}

impl Store for PgStore {
    fn load_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|c| {
            // Two reads in one snapshot (REPEATABLE READ), joined here: one
            // round trip per table instead of one per key.
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(db_err)?;
            let mut keys = Vec::new();
            for r in tx
                .query(
                    "SELECT tenant, name, algorithm, primary_version, created_at_ms FROM keys ORDER BY tenant, name",
                    &[],
                )
                .map_err(db_err)?
            {
                keys.push(decode_key(r.get(0), r.get(1), r.get::<_, &str>(2), r.get(3), r.get(4))?);
            }
            let rows = tx
                .query(
                    "SELECT tenant, name, version, state, public_key, handle, created_at_ms FROM key_versions
                     ORDER BY tenant, name, version",
                    &[],
                )
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            let mut i = 0;
            for key in &mut keys {
                while i < rows.len()
                    && (rows[i].get::<_, &str>(0), rows[i].get::<_, &str>(1))
                        <= (key.tenant.as_str(), key.name.as_str())
                {
                    if (rows[i].get::<_, &str>(0), rows[i].get::<_, &str>(1))
                        == (key.tenant.as_str(), key.name.as_str())
                    {
                        push_version(key, &rows[i], 2)?;
                    }
                    i += 1;
                }
                check_primary(key)?;
            }
            Ok(keys)
        })
    }

    fn load_key(&self, tenant: &str, name: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.with(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(db_err)?;
            let Some(r) = tx
                .query_opt(
                    "SELECT algorithm, primary_version, created_at_ms FROM keys WHERE tenant = $1 AND name = $2",
                    &[&tenant, &name],
                )
                .map_err(db_err)?
            else {
                return Ok(None);
            };
            let mut key = decode_key(
                tenant.to_string(),
                name.to_string(),
                r.get::<_, &str>(0),
                r.get(1),
                r.get(2),
            )?;
            for row in tx
                .query(
                    "SELECT version, state, public_key, handle, created_at_ms FROM key_versions
                     WHERE tenant = $1 AND name = $2 ORDER BY version",
                    &[&tenant, &name],
                )
                .map_err(db_err)?
            {
                push_version(&mut key, &row, 0)?;
            }
            tx.commit().map_err(db_err)?;
            check_primary(&key)?;
            Ok(Some(key))
        })
    }

    fn create_key(&self, key: &KeyRecord, op: Option<&OpRecord>) -> Result<(), StoreError> {
        self.tx(|tx| {
            insert_op(tx, op)?;
            tx.execute(
                "INSERT INTO keys (tenant, name, algorithm, primary_version, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &key.tenant,
                    &key.name,
                    &key.algorithm.as_str(),
                    &(key.primary_version as i32),
                    &key.created_at_ms,
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::AlreadyExists(format!("key {} already exists", key.name))
                } else {
                    db_err(e)
                }
            })?;
            for v in &key.versions {
                insert_version(tx, &key.tenant, &key.name, v)?;
            }
            notify(tx, &Change::key(&key.tenant, &key.name))
        })
    }

    fn add_version(
        &self,
        tenant: &str,
        name: &str,
        version: &VersionRecord,
        op: Option<&OpRecord>,
    ) -> Result<(), StoreError> {
        self.tx(|tx| {
            insert_op(tx, op)?;
            // The key row first: it is the row two rotations of one key
            // queue on, and a missing key is NotFound, not a foreign-key error.
            let n = tx
                .execute(
                    "UPDATE keys SET primary_version = $3 WHERE tenant = $1 AND name = $2",
                    &[&tenant, &name, &(version.version as i32)],
                )
                .map_err(db_err)?;
            if n != 1 {
                return Err(StoreError::NotFound(format!("key {name}")));
            }
            insert_version(tx, tenant, name, version)?;
            notify(tx, &Change::key(tenant, name))
        })
    }

    fn set_state(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
        state: VersionState,
        op: Option<&OpRecord>,
    ) -> Result<(), StoreError> {
        self.tx(|tx| {
            insert_op(tx, op)?;
            // Destroy wipes the handle. PostgreSQL keeps the old tuple until
            // VACUUM reclaims it; docs/scale-out.md says what that means.
            let sql = if state == VersionState::Destroyed {
                "UPDATE key_versions SET state = $4, handle = NULL WHERE tenant = $1 AND name = $2 AND version = $3"
            } else {
                "UPDATE key_versions SET state = $4 WHERE tenant = $1 AND name = $2 AND version = $3"
            };
            let n = tx
                .execute(sql, &[&tenant, &name, &(version as i32), &state.as_str()])
                .map_err(db_err)?;
            if n != 1 {
                return Err(StoreError::NotFound(format!(
                    "key version {name}#v{version}"
                )));
            }
            notify(tx, &Change::key(tenant, name))
        })
    }

    fn find_op(&self, tenant: &str, op_id: &str) -> Result<Option<OpRecord>, StoreError> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT request_hash, result FROM ops WHERE tenant = $1 AND op_id = $2",
                &[&tenant, &op_id],
            )
            .map_err(db_err)
        })?;
        row.map(|r| {
            let h: Vec<u8> = r.get(0);
            let request_hash: [u8; 32] = h
                .try_into()
                .map_err(|_| StoreError::Corrupt("op request hash length".into()))?;
            Ok(OpRecord {
                tenant: tenant.to_string(),
                op_id: op_id.to_string(),
                request_hash,
                result: r.get(1),
            })
        })
        .transpose()
    }

    fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO tokens (hash, tenant, scopes, created_at_ms) VALUES ($1, $2, $3, $4)",
                &[&&t.hash[..], &t.tenant, &t.scopes, &t.created_at_ms],
            )
            .map_err(db_err)?;
            notify(tx, &Change::Tokens)
        })
    }

    fn load_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = self.with(|c| {
            c.query(
                "SELECT hash, tenant, scopes, created_at_ms FROM tokens",
                &[],
            )
            .map_err(db_err)
        })?;
        rows.iter()
            .map(|r| {
                let h: Vec<u8> = r.get(0);
                let hash: [u8; 32] = h
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("token hash length".into()))?;
                Ok(TokenRecord {
                    hash,
                    tenant: r.get(1),
                    scopes: r.get(2),
                    created_at_ms: r.get(3),
                })
            })
            .collect()
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| {
            Ok(
                c.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
                    .map_err(db_err)?
                    .map(|r| r.get(0)),
            )
        })
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .map_err(db_err)?;
            notify(tx, &Change::Meta {
                key: key.to_string(),
            })
        })
    }

    fn insert_meta(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &value],
            )
            .map_err(db_err)?;
            let r = tx
                .query_one("SELECT value FROM meta WHERE key = $1", &[&key])
                .map_err(db_err)?;
            Ok(r.get(0))
        })
    }

    fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self.with(|c| {
            c.query(
                "SELECT key, value FROM meta WHERE left(key, length($1)) = $1 ORDER BY key",
                &[&prefix],
            )
            .map_err(db_err)
        })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn health(&self) -> Result<(), StoreError> {
        self.with(|c| c.simple_query("SELECT 1").map(|_| ()).map_err(db_err))
    }

    fn shared(&self) -> bool {
        true
    }

    fn subscribe(&self, on_change: ChangeHandler) -> Result<(), StoreError> {
        let config = self.config.clone();
        let interval = self.settings.reconcile_interval;
        let tls = self.settings.tls.clone();
        std::thread::Builder::new()
            .name("kms-store-listen".into())
            .spawn(move || listen_forever(config, tls, interval, on_change))
            .map_err(|e| StoreError::Backend(format!("listener thread: {e}")))?;
        Ok(())
    }
}

/// The listener: `LISTEN`, hand every notification to `on_change`, and a
/// `Change::Resync` every `interval` and after every reconnect (whatever
/// was sent while disconnected is lost). Reconnects with capped backoff.
fn listen_forever(
    config: postgres::Config,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    interval: Duration,
    on_change: ChangeHandler,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        match connect(&config, &tls) {
            Ok(mut c) => {
                if let Err(e) = c.batch_execute(&format!("LISTEN {CHANNEL}")) {
                    tracing::warn!(error = %chain(&e), "store listener: LISTEN failed");
                } else {
                    backoff = Duration::from_millis(100);
                    metrics::gauge!("kms_store_listener_up").set(1.0);
                    if !first {
                        tracing::info!("store listener reconnected; reconciling");
                        on_change(Change::Resync);
                    }
                    first = false;
                    let err = pump(&mut c, interval, &on_change);
                    tracing::warn!(error = %chain(&err), "store listener lost its connection");
                }
            }
            Err(e) => tracing::warn!(error = %chain(&e), "store listener cannot connect"),
        }
        metrics::gauge!("kms_store_listener_up").set(0.0);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

fn pump(c: &mut Client, interval: Duration, on_change: &ChangeHandler) -> postgres::Error {
    let mut next_resync = std::time::Instant::now() + interval;
    loop {
        let wait = next_resync.saturating_duration_since(std::time::Instant::now());
        {
            let mut n = c.notifications();
            let mut it = n.timeout_iter(wait.max(Duration::from_millis(1)));
            loop {
                use postgres::fallible_iterator::FallibleIterator;
                match it.next() {
                    Ok(Some(note)) => {
                        metrics::counter!("kms_store_notifications_total").increment(1);
                        let due = std::time::Instant::now() >= next_resync;
                        match serde_json::from_str::<Change>(note.payload()) {
                            Ok(ch) => on_change(ch),
                            Err(_) => {
                                tracing::warn!(
                                    payload_len = note.payload().len(),
                                    "store listener: unreadable notification; reconciling"
                                );
                                on_change(Change::Resync);
                            }
                        }
                        if due {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return e,
                }
            }
        }
        if std::time::Instant::now() >= next_resync {
            on_change(Change::Resync);
            next_resync = std::time::Instant::now() + interval;
        }
        // A cheap round trip notices a dead server even when idle.
        if let Err(e) = c.simple_query("SELECT 1") {
            return e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://kms:s3cret@db:5432/kms"),
            "postgres://kms:***@db:5432/kms"
        );
        assert_eq!(redact_url("postgres://kms@db/kms"), "postgres://kms@db/kms");
        assert_eq!(
            redact_url("host=db password=x user=kms"),
            "host=db password=*** user=kms"
        );
    }
}
