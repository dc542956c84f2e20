//! The embedded SQLite store: one file (`kms.sqlite3`) in WAL mode with
//! `synchronous=FULL`, so an acknowledged mutation survives power loss, and
//! `secure_delete=ON`, so wiped handles do not linger in free pages.
//!
//! One connection behind a std mutex: mutations are rare admin operations and
//! SQLite serialises writers anyway; the hot path never comes here.
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{OpRecord, Store, StoreError, TokenRecord};
use crate::store::{KeyRecord, KeySettings, VersionRecord, VersionState};

const SCHEMA_VERSION: i64 = 4;

const SCHEMA_V1: &str = "
CREATE TABLE keys (
    tenant          TEXT NOT NULL,
    name            TEXT NOT NULL,
    algorithm       TEXT NOT NULL,
    primary_version INTEGER NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE key_versions (
    tenant        TEXT NOT NULL,
    name          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('enabled', 'disabled', 'destroyed')),
    public_key    BLOB NOT NULL,
    handle        BLOB,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, name, version),
    FOREIGN KEY (tenant, name) REFERENCES keys (tenant, name)
);
CREATE TABLE ops (
    tenant        TEXT NOT NULL,
    op_id         TEXT NOT NULL,
    request_hash  BLOB NOT NULL,
    result        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, op_id)
);
CREATE TABLE tokens (
    hash          BLOB PRIMARY KEY,
    tenant        TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
";

/// Version 3: key settings (docs/api.md, "Key settings"); existing keys get
/// the defaults.
const SCHEMA_V3: &str = "
ALTER TABLE keys ADD COLUMN min_decryption_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN min_encryption_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN deletion_allowed INTEGER NOT NULL DEFAULT 0;
";

/// Version 4: the `published` key setting (the tenant's JWKS).
const SCHEMA_V4: &str = "
ALTER TABLE keys ADD COLUMN published INTEGER NOT NULL DEFAULT 0;
";

/// Version 2: tokens as a managed resource (docs/tokens.md). Rows written
/// by version 1 get their id from their hash and no restriction.
const SCHEMA_V2: &str = "
ALTER TABLE tokens ADD COLUMN id TEXT;
UPDATE tokens SET id = lower(hex(substr(hash, 1, 8)));
ALTER TABLE tokens ADD COLUMN key_patterns TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN expires_at_ms INTEGER;
ALTER TABLE tokens ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN last_used_ms INTEGER;
ALTER TABLE tokens ADD COLUMN revoked_at_ms INTEGER;
ALTER TABLE tokens ADD COLUMN expiry_recorded INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX tokens_id ON tokens (id);
";

const TOKEN_COLUMNS: &str = "id, hash, tenant, scopes, key_patterns, expires_at_ms, description, created_by, created_at_ms, last_used_ms, revoked_at_ms";

/// The meta entry [`Store::token_generation`] reads.
const TOKEN_GENERATION: &str = "tokens.generation";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRecord, Vec<u8>)> {
    Ok((
        TokenRecord {
            id: r.get(0)?,
            hash: [0; 32],
            tenant: r.get(2)?,
            scopes: r.get(3)?,
            key_patterns: r.get(4)?,
            expires_at_ms: r.get(5)?,
            description: r.get(6)?,
            created_by: r.get(7)?,
            created_at_ms: r.get(8)?,
            last_used_ms: r.get(9)?,
            revoked_at_ms: r.get(10)?,
        },
        r.get(1)?,
    ))
}

fn with_hash((mut t, h): (TokenRecord, Vec<u8>)) -> Result<TokenRecord, StoreError> {
    t.hash = h
        .try_into()
        .map_err(|_| StoreError::Corrupt("token hash length".into()))?;
    Ok(t)
}

fn insert_token_tx(tx: &rusqlite::Transaction<'_>, t: &TokenRecord) -> Result<(), StoreError> {
    tx.execute(
        &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            t.id,
            &t.hash[..],
            t.tenant,
            t.scopes,
            t.key_patterns,
            t.expires_at_ms,
            t.description,
            t.created_by,
            t.created_at_ms,
            t.last_used_ms,
            t.revoked_at_ms
        ],
    )
    .map_err(|e| unique_or(e, || StoreError::AlreadyExists(format!("token {} exists", t.id))))?;
    Ok(())
}

/// Move the token generation, in the transaction of the token write.
fn bump_token_generation(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let mut g = [0u8; 16];
    crate::crypto::random_bytes(&mut g).map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![TOKEN_GENERATION, &g[..]],
    )
    .map_err(db_err)?;
    Ok(())
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A primary-key or unique violation as `conflict()`'s error; any other
/// failure as a database error.
fn unique_or(e: rusqlite::Error, conflict: impl FnOnce() -> StoreError) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            conflict()
        }
        e => db_err(e),
    }
}

/// A write transaction, IMMEDIATE (the write lock taken at once), with the
/// mutation's op record in it when there is one.
fn write_tx<'c>(
    conn: &'c mut Connection,
    op: Option<&OpRecord>,
) -> Result<rusqlite::Transaction<'c>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    insert_op(&tx, op)?;
    Ok(tx)
}

fn insert_op(tx: &rusqlite::Transaction<'_>, op: Option<&OpRecord>) -> Result<(), StoreError> {
    let Some(op) = op else { return Ok(()) };
    tx.execute(
        "INSERT INTO ops (tenant, op_id, request_hash, result, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![op.tenant, op.op_id, &op.request_hash[..], op.result, now_ms()],
    )
    .map_err(|e| unique_or(e, || StoreError::OpConflict(format!("op_id {:?} was already used", op.op_id))))?;
    Ok(())
}

fn insert_version(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    name: &str,
    v: &VersionRecord,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO key_versions (tenant, name, version, state, public_key, handle, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            tenant,
            name,
            v.version,
            v.state.as_str(),
            v.public_key,
            v.handle,
            v.created_at_ms
        ],
    )
    .map_err(|e| {
        unique_or(e, || {
            StoreError::VersionConflict(format!("version {} of {name} exists", v.version))
        })
    })?;
    Ok(())
}

const VERSIONS_OF_KEY: &str =
    "SELECT version, state, public_key, handle, created_at_ms FROM key_versions
     WHERE tenant = ?1 AND name = ?2 ORDER BY version";

/// Read `key`'s versions (in order, without gaps) and check its primary.
fn fill_versions(
    stmt: &mut rusqlite::Statement<'_>,
    key: &mut KeyRecord,
) -> Result<(), StoreError> {
    let rows = stmt
        .query_map(params![key.tenant, key.name], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        let (version, state, public_key, handle, created_at_ms) = row.map_err(db_err)?;
        key.push_decoded(version, &state, public_key, handle, created_at_ms)?;
    }
    key.check_primary()
}

impl SqliteStore {
    /// Open (creating if needed) the database file and migrate it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Create the file owner-only; SQLite gives the -wal and -shm files
        // the database file's permissions.
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        }
        let conn = Connection::open(path).map_err(db_err)?;
        Self::init(conn)
    }

    /// A private in-memory database (amnesia mode, tests). Temporary
    /// tables and sort spills stay in memory too, so nothing reaches disk.
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(db_err)?;
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(db_err)?;
        Self::init(conn)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(db_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err)?;
        // each version's migration, in order: a database at version v
        // gets the ones after it, in one transaction
        const MIGRATIONS: [&str; SCHEMA_VERSION as usize] =
            [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4];
        match usize::try_from(version) {
            Ok(v) if v < MIGRATIONS.len() => {
                conn.execute_batch(&format!(
                    "BEGIN; {} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;",
                    MIGRATIONS[v..].join(" ")
                ))
                .map_err(db_err)?;
            }
            Ok(v) if v == MIGRATIONS.len() => {}
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "database schema version {version} is newer than this binary understands ({SCHEMA_VERSION})"
                )))
            }
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-written
        // transaction behind (rusqlite rolls back on drop), so a poisoned
        // lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// After a conditional update matched no row: the key is gone, or it
/// changed since it was read.
fn missing_or_changed(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    name: &str,
) -> Result<StoreError, StoreError> {
    let exists = tx
        .query_row(
            "SELECT 1 FROM keys WHERE tenant = ?1 AND name = ?2",
            params![tenant, name],
            |_| Ok(()),
        )
        .optional()
        .map_err(db_err)?
        .is_some();
    Ok(if exists {
        StoreError::VersionConflict(format!("key {name} changed since it was read"))
    } else {
        StoreError::NotFound(format!("key {name}"))
    })
}

/// The key columns after tenant and name, as [`key_row`] reads them.
const KEY_COLUMNS: &str = "algorithm, primary_version, created_at_ms, min_decryption_version, min_encryption_version, deletion_allowed, published";

/// [`KEY_COLUMNS`] from column `at` on.
fn key_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<(String, u32, i64, KeySettings)> {
    Ok((
        r.get(at)?,
        r.get(at + 1)?,
        r.get(at + 2)?,
        KeySettings {
            min_decryption_version: r.get(at + 3)?,
            min_encryption_version: r.get(at + 4)?,
            deletion_allowed: r.get(at + 5)?,
            published: r.get(at + 6)?,
        },
    ))
}

/// After sealed material was wiped: move the page images out of the WAL
/// into the main file (where secure_delete has zeroed the old cells) and
/// truncate the WAL, so no copy of the material remains on disk. The wipe
/// is committed whatever happens here; a checkpoint that is busy or fails
/// is retried by SQLite's next automatic checkpoint, so it is logged
/// rather than reported.
fn checkpoint_after_wipe(conn: &Connection) {
    match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
        Ok(0) => {}
        Ok(_) => tracing::warn!("WAL checkpoint after destroy was busy; old pages stay in the WAL until the next checkpoint"),
        Err(e) => tracing::warn!(error = %e, "WAL checkpoint after destroy failed"),
    }
}

impl Store for SqliteStore {
    fn load_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let conn = self.conn();
        let mut keys: Vec<KeyRecord> = Vec::new();
        {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT tenant, name, {KEY_COLUMNS} FROM keys ORDER BY tenant, name"
                ))
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        key_row(r, 2)?,
                    ))
                })
                .map_err(db_err)?;
            for row in rows {
                let (tenant, name, (alg, primary_version, created_at_ms, settings)) =
                    row.map_err(db_err)?;
                keys.push(KeyRecord::decoded(
                    tenant,
                    name,
                    &alg,
                    primary_version,
                    created_at_ms,
                    settings,
                )?);
            }
        }
        let mut stmt = conn.prepare(VERSIONS_OF_KEY).map_err(db_err)?;
        for key in &mut keys {
            fill_versions(&mut stmt, key)?;
        }
        Ok(keys)
    }

    fn load_key(&self, tenant: &str, name: &str) -> Result<Option<KeyRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("SELECT {KEY_COLUMNS} FROM keys WHERE tenant = ?1 AND name = ?2"),
                params![tenant, name],
                |r| key_row(r, 0),
            )
            .optional()
            .map_err(db_err)?;
        let Some((alg, primary_version, created_at_ms, settings)) = row else {
            return Ok(None);
        };
        let mut key = KeyRecord::decoded(
            tenant.to_string(),
            name.to_string(),
            &alg,
            primary_version,
            created_at_ms,
            settings,
        )?;
        let mut stmt = conn.prepare(VERSIONS_OF_KEY).map_err(db_err)?;
        fill_versions(&mut stmt, &mut key)?;
        Ok(Some(key))
    }

    fn create_key(&self, key: &KeyRecord, op: Option<&OpRecord>) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, op)?;
        tx.execute(
            "INSERT INTO keys (tenant, name, algorithm, primary_version, created_at_ms, min_decryption_version, min_encryption_version, deletion_allowed, published) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                key.tenant,
                key.name,
                key.algorithm.as_str(),
                key.primary_version,
                key.created_at_ms,
                key.settings.min_decryption_version,
                key.settings.min_encryption_version,
                key.settings.deletion_allowed,
                key.settings.published,
            ],
        )
        .map_err(|e| unique_or(e, || StoreError::AlreadyExists(format!("key {} already exists", key.name))))?;
        for v in &key.versions {
            insert_version(&tx, &key.tenant, &key.name, v)?;
        }
        tx.commit().map_err(db_err)
    }

    fn add_version(
        &self,
        tenant: &str,
        name: &str,
        version: &VersionRecord,
        op: Option<&OpRecord>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, op)?;
        let n = tx
            .execute(
                "UPDATE keys SET primary_version = ?3 WHERE tenant = ?1 AND name = ?2",
                params![tenant, name, version.version],
            )
            .map_err(db_err)?;
        if n != 1 {
            return Err(StoreError::NotFound(format!("key {name}")));
        }
        insert_version(&tx, tenant, name, version)?;
        tx.commit().map_err(db_err)
    }

    fn set_settings(
        &self,
        tenant: &str,
        name: &str,
        old: &KeySettings,
        settings: &KeySettings,
        op: Option<&OpRecord>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, op)?;
        let n = tx
            .execute(
                "UPDATE keys SET min_decryption_version = ?3, min_encryption_version = ?4, deletion_allowed = ?5, published = ?6
                 WHERE tenant = ?1 AND name = ?2
                   AND min_decryption_version = ?7 AND min_encryption_version = ?8 AND deletion_allowed = ?9 AND published = ?10",
                params![
                    tenant,
                    name,
                    settings.min_decryption_version,
                    settings.min_encryption_version,
                    settings.deletion_allowed,
                    settings.published,
                    old.min_decryption_version,
                    old.min_encryption_version,
                    old.deletion_allowed,
                    old.published
                ],
            )
            .map_err(db_err)?;
        if n != 1 {
            return Err(missing_or_changed(&tx, tenant, name)?);
        }
        tx.commit().map_err(db_err)
    }

    fn delete_key(
        &self,
        tenant: &str,
        name: &str,
        versions: u32,
        op: Option<&OpRecord>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, op)?;
        let now: Option<(bool, u32)> = tx
            .query_row(
                "SELECT deletion_allowed, (SELECT count(*) FROM key_versions WHERE tenant = ?1 AND name = ?2) FROM keys WHERE tenant = ?1 AND name = ?2",
                params![tenant, name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        match now {
            None => return Err(StoreError::NotFound(format!("key {name}"))),
            Some((true, n)) if n == versions => {}
            Some(_) => {
                return Err(StoreError::VersionConflict(format!(
                    "key {name} changed while it was being deleted"
                )))
            }
        }
        tx.execute(
            "DELETE FROM key_versions WHERE tenant = ?1 AND name = ?2",
            params![tenant, name],
        )
        .map_err(db_err)?;
        tx.execute(
            "DELETE FROM keys WHERE tenant = ?1 AND name = ?2",
            params![tenant, name],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        checkpoint_after_wipe(&conn);
        Ok(())
    }

    fn replace_handle(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "UPDATE key_versions SET handle = ?5 WHERE tenant = ?1 AND name = ?2 AND version = ?3 AND handle = ?4",
                params![tenant, name, version, old, new],
            )
            .map_err(db_err)?;
        Ok(n == 1)
    }

    fn set_state(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
        state: VersionState,
        op: Option<&OpRecord>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, op)?;
        let sql = if state == VersionState::Destroyed {
            "UPDATE key_versions SET state = ?4, handle = NULL WHERE tenant = ?1 AND name = ?2 AND version = ?3"
        } else {
            "UPDATE key_versions SET state = ?4 WHERE tenant = ?1 AND name = ?2 AND version = ?3"
        };
        let n = tx
            .execute(sql, params![tenant, name, version, state.as_str()])
            .map_err(db_err)?;
        if n != 1 {
            return Err(StoreError::NotFound(format!(
                "key version {name}#v{version}"
            )));
        }
        tx.commit().map_err(db_err)?;
        if state == VersionState::Destroyed {
            checkpoint_after_wipe(&conn);
        }
        Ok(())
    }

    fn find_op(&self, tenant: &str, op_id: &str) -> Result<Option<OpRecord>, StoreError> {
        self.conn()
            .query_row(
                "SELECT request_hash, result FROM ops WHERE tenant = ?1 AND op_id = ?2",
                params![tenant, op_id],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(db_err)?
            .map(|(h, result)| {
                let request_hash: [u8; 32] = h
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("op request hash length".into()))?;
                Ok(OpRecord {
                    tenant: tenant.to_string(),
                    op_id: op_id.to_string(),
                    request_hash,
                    result,
                })
            })
            .transpose()
    }

    fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        self.insert_tokens(std::slice::from_ref(t))
    }

    fn insert_tokens(&self, tokens: &[TokenRecord]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, None)?;
        for t in tokens {
            insert_token_tx(&tx, t)?;
        }
        bump_token_generation(&tx)?;
        tx.commit().map_err(db_err)
    }

    fn load_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("SELECT {TOKEN_COLUMNS} FROM tokens"))
            .map_err(db_err)?;
        let rows = stmt.query_map([], token_row).map_err(db_err)?;
        rows.map(|row| with_hash(row.map_err(db_err)?)).collect()
    }

    fn revoke_token(&self, tenant: &str, id: &str, at_ms: i64) -> Result<TokenRecord, StoreError> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, None)?;
        let n = tx
            .execute(
                "UPDATE tokens SET revoked_at_ms = ?3 WHERE tenant = ?1 AND id = ?2 AND revoked_at_ms IS NULL",
                params![tenant, id, at_ms],
            )
            .map_err(db_err)?;
        let row = tx
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE tenant = ?1 AND id = ?2"),
                params![tenant, id],
                token_row,
            )
            .optional()
            .map_err(db_err)?
            .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
        if n > 0 {
            bump_token_generation(&tx)?;
        }
        tx.commit().map_err(db_err)?;
        with_hash(row)
    }

    fn touch_tokens(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
        for (id, at) in used {
            tx.execute(
                "UPDATE tokens SET last_used_ms = ?2 WHERE id = ?1 AND (last_used_ms IS NULL OR last_used_ms < ?2)",
                params![id, at],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    fn claim_token_expiry(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "UPDATE tokens SET expiry_recorded = 1 WHERE id = ?1 AND expiry_recorded = 0",
                [id],
            )
            .map_err(db_err)?;
        Ok(n > 0)
    }

    fn insert_bootstrap_token(&self, t: &TokenRecord) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, None)?;
        let n = tx
            .execute(
                "INSERT INTO meta (key, value) VALUES ('tokens.bootstrap', ?1) ON CONFLICT (key) DO NOTHING",
                [t.id.as_bytes()],
            )
            .map_err(db_err)?;
        if n == 0 {
            return Ok(false);
        }
        insert_token_tx(&tx, t)?;
        bump_token_generation(&tx)?;
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    fn token_generation(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.get_meta(TOKEN_GENERATION)?.unwrap_or_default())
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(db_err)
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn insert_meta(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
            params![key, value],
        )
        .map_err(db_err)?;
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .map_err(db_err)
    }

    fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT key, value FROM meta WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map([prefix], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    fn health(&self) -> Result<(), StoreError> {
        self.conn()
            .query_row("SELECT 1", [], |_| Ok(()))
            .map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;

    fn version(v: u32) -> VersionRecord {
        VersionRecord {
            version: v,
            state: VersionState::Enabled,
            public_key: vec![v as u8; 4],
            handle: Some(vec![0xAB; 64]),
            created_at_ms: 1,
        }
    }

    fn key() -> KeyRecord {
        KeyRecord {
            tenant: "t".into(),
            name: "k".into(),
            algorithm: Algorithm::Ed25519,
            primary_version: 1,
            created_at_ms: 1,
            settings: crate::store::KeySettings::default(),
            versions: vec![version(1)],
        }
    }

    fn op(id: &str) -> OpRecord {
        OpRecord {
            tenant: "t".into(),
            op_id: id.into(),
            request_hash: [1; 32],
            result: "k#v2".into(),
        }
    }

    #[test]
    fn create_rotate_state_round_trip() {
        let s = SqliteStore::in_memory().unwrap();
        s.create_key(&key(), None).unwrap();
        assert!(matches!(
            s.create_key(&key(), None),
            Err(StoreError::AlreadyExists(_))
        ));
        s.add_version("t", "k", &version(2), Some(&op("o1")))
            .unwrap();
        s.set_state("t", "k", 1, VersionState::Disabled, None)
            .unwrap();
        s.set_state("t", "k", 1, VersionState::Destroyed, None)
            .unwrap();
        let keys = s.load_keys().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].primary_version, 2);
        assert_eq!(keys[0].versions[0].state, VersionState::Destroyed);
        assert!(keys[0].versions[0].handle.is_none());
        assert_eq!(s.find_op("t", "o1").unwrap(), Some(op("o1")));
        assert_eq!(s.find_op("u", "o1").unwrap(), None);
    }

    #[test]
    fn a_reused_op_id_rolls_the_whole_mutation_back() {
        let s = SqliteStore::in_memory().unwrap();
        s.create_key(&key(), None).unwrap();
        s.add_version("t", "k", &version(2), Some(&op("o1")))
            .unwrap();
        let err = s
            .add_version("t", "k", &version(3), Some(&op("o1")))
            .unwrap_err();
        assert!(matches!(err, StoreError::OpConflict(_)));
        assert_eq!(s.load_keys().unwrap()[0].versions.len(), 2);
        assert_eq!(s.load_keys().unwrap()[0].primary_version, 2);
    }

    #[test]
    fn a_version_2_database_gains_key_settings_with_their_defaults_at_version_4() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA_V1} {SCHEMA_V2} PRAGMA user_version = 2; COMMIT;"
        ))
        .unwrap();
        conn.execute(
            "INSERT INTO keys (tenant, name, algorithm, primary_version, created_at_ms) VALUES ('t', 'k', 'ed25519', 1, 1)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO key_versions (tenant, name, version, state, public_key, handle, created_at_ms) VALUES ('t', 'k', 1, 'enabled', x'01', x'02', 1)",
            [],
        )
        .unwrap();
        let s = SqliteStore::init(conn).unwrap();
        let v: i64 = s
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let k = s.load_key("t", "k").unwrap().unwrap();
        assert_eq!(k.settings, KeySettings::default());
        assert_eq!(k.versions.len(), 1);
    }
}
