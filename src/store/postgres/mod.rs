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
//! advisory lock so replicas starting together migrate once. Migration `n`
//! matches SQLite's schema version `n` table for table.
use std::time::Duration;

use postgres::{Client, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Change, ChangeHandler, OpRecord, Store, StoreError, TokenRecord};
use crate::store::{KeyRecord, KeySettings, VersionRecord, VersionState};

mod conn;
mod feed;
mod schema;

pub use conn::redact_url;
use conn::*;
use feed::*;
use schema::*;

/// The channel every replica listens on.
pub const CHANNEL: &str = "ron_kms_changes";

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

pub struct PgStore {
    /// `None` only while dropping.
    pool: Option<Pool>,
    config: postgres::Config,
    settings: PgSettings,
}

fn notify(tx: &mut postgres::Transaction<'_>, change: &Change) -> Result<(), StoreError> {
    let payload = serde_json::to_string(change).map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .map_err(db_err)?;
    Ok(())
}

const TOKEN_COLUMNS: &str = "id, hash, tenant, scopes, key_patterns, expires_at_ms, description, created_by, created_at_ms, last_used_ms, revoked_at_ms";

/// The meta entry [`Store::token_generation`] reads.
const TOKEN_GENERATION: &str = "tokens.generation";

fn token_of(r: &postgres::Row) -> Result<TokenRecord, StoreError> {
    let h: Vec<u8> = r.get(1);
    Ok(TokenRecord {
        id: r.get(0),
        hash: h
            .try_into()
            .map_err(|_| StoreError::Corrupt("token hash length".into()))?,
        tenant: r.get(2),
        scopes: r.get(3),
        key_patterns: r.get(4),
        expires_at_ms: r.get(5),
        description: r.get(6),
        created_by: r.get(7),
        created_at_ms: r.get(8),
        last_used_ms: r.get(9),
        revoked_at_ms: r.get(10),
    })
}

fn insert_token_tx(tx: &mut postgres::Transaction<'_>, t: &TokenRecord) -> Result<(), StoreError> {
    tx.execute(
        &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"),
        &[
            &t.id,
            &&t.hash[..],
            &t.tenant,
            &t.scopes,
            &t.key_patterns,
            &t.expires_at_ms,
            &t.description,
            &t.created_by,
            &t.created_at_ms,
            &t.last_used_ms,
            &t.revoked_at_ms,
        ],
    )
    .map_err(|e| unique_or(e, || StoreError::AlreadyExists(format!("token {} exists", t.id))))?;
    Ok(())
}

/// Move the token generation and announce the change, in the transaction
/// of the token write.
fn tokens_changed(tx: &mut postgres::Transaction<'_>) -> Result<(), StoreError> {
    let mut g = [0u8; 16];
    crate::crypto::random_bytes(&mut g).map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&TOKEN_GENERATION, &&g[..]],
    )
    .map_err(db_err)?;
    notify(tx, &Change::Tokens)
}

fn insert_op(tx: &mut postgres::Transaction<'_>, op: Option<&OpRecord>) -> Result<(), StoreError> {
    let Some(op) = op else { return Ok(()) };
    tx.execute(
        "INSERT INTO ops (tenant, op_id, request_hash, result, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        &[&op.tenant, &op.op_id, &&op.request_hash[..], &op.result, &now_ms()],
    )
    .map_err(|e| unique_or(e, || StoreError::OpConflict(format!("op_id {:?} was already used", op.op_id))))?;
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
        unique_or(e, || {
            StoreError::VersionConflict(format!(
                "version {} of {name} was created concurrently",
                v.version
            ))
        })
    })?;
    Ok(())
}

/// The key columns after tenant and name, as [`decode_key`] reads them.
const KEY_COLUMNS: &str = "algorithm, primary_version, created_at_ms, min_decryption_version, min_encryption_version, deletion_allowed, published";

/// A key from [`KEY_COLUMNS`] starting at column `at` of `row`.
fn decode_key(
    tenant: String,
    name: String,
    row: &postgres::Row,
    at: usize,
) -> Result<KeyRecord, StoreError> {
    let settings = KeySettings {
        min_decryption_version: row.get::<_, i32>(at + 3) as u32,
        min_encryption_version: row.get::<_, i32>(at + 4) as u32,
        deletion_allowed: row.get(at + 5),
        published: row.get(at + 6),
    };
    KeyRecord::decoded(
        tenant,
        name,
        row.get::<_, &str>(at),
        row.get::<_, i32>(at + 1) as u32,
        row.get(at + 2),
        settings,
    )
}

fn push_version(key: &mut KeyRecord, row: &postgres::Row, base: usize) -> Result<(), StoreError> {
    let state: String = row.get(base + 1);
    key.push_decoded(
        row.get::<_, i32>(base) as u32,
        &state,
        row.get(base + 2),
        row.get(base + 3),
        row.get(base + 4),
    )
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

/// A read-only transaction that sees one snapshot (REPEATABLE READ).
fn snapshot_read(c: &mut Client) -> Result<postgres::Transaction<'_>, StoreError> {
    c.build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(db_err)
}

impl Store for PgStore {
    fn load_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|c| {
            // Two reads in one snapshot (REPEATABLE READ), joined here: one
            // round trip per table instead of one per key.
            let mut tx = snapshot_read(c)?;
            let mut keys = Vec::new();
            for r in tx
                .query(
                    &format!("SELECT tenant, name, {KEY_COLUMNS} FROM keys ORDER BY tenant, name"),
                    &[],
                )
                .map_err(db_err)?
            {
                keys.push(decode_key(r.get(0), r.get(1), &r, 2)?);
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
                key.check_primary()?;
            }
            Ok(keys)
        })
    }

    fn load_key(&self, tenant: &str, name: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.with(|c| {
            let mut tx = snapshot_read(c)?;
            let Some(r) = tx
                .query_opt(
                    &format!("SELECT {KEY_COLUMNS} FROM keys WHERE tenant = $1 AND name = $2"),
                    &[&tenant, &name],
                )
                .map_err(db_err)?
            else {
                return Ok(None);
            };
            let mut key = decode_key(tenant.to_string(), name.to_string(), &r, 0)?;
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
            key.check_primary()?;
            Ok(Some(key))
        })
    }

    fn create_key(&self, key: &KeyRecord, op: Option<&OpRecord>) -> Result<(), StoreError> {
        self.tx(|tx| {
            insert_op(tx, op)?;
            tx.execute(
                "INSERT INTO keys (tenant, name, algorithm, primary_version, created_at_ms, min_decryption_version, min_encryption_version, deletion_allowed, published) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &key.tenant,
                    &key.name,
                    &key.algorithm.as_str(),
                    &(key.primary_version as i32),
                    &key.created_at_ms,
                    &(key.settings.min_decryption_version as i32),
                    &(key.settings.min_encryption_version as i32),
                    &key.settings.deletion_allowed,
                    &key.settings.published,
                ],
            )
            .map_err(|e| unique_or(e, || StoreError::AlreadyExists(format!("key {} already exists", key.name))))?;
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

    fn set_settings(
        &self,
        tenant: &str,
        name: &str,
        old: &KeySettings,
        settings: &KeySettings,
        op: Option<&OpRecord>,
    ) -> Result<(), StoreError> {
        self.tx(|tx| {
            insert_op(tx, op)?;
            let n = tx
                .execute(
                    "UPDATE keys SET min_decryption_version = $3, min_encryption_version = $4, deletion_allowed = $5, published = $6
                     WHERE tenant = $1 AND name = $2
                       AND min_decryption_version = $7 AND min_encryption_version = $8 AND deletion_allowed = $9 AND published = $10",
                    &[
                        &tenant,
                        &name,
                        &(settings.min_decryption_version as i32),
                        &(settings.min_encryption_version as i32),
                        &settings.deletion_allowed,
                        &settings.published,
                        &(old.min_decryption_version as i32),
                        &(old.min_encryption_version as i32),
                        &old.deletion_allowed,
                        &old.published,
                    ],
                )
                .map_err(db_err)?;
            if n != 1 {
                let exists = tx
                    .query_opt(
                        "SELECT 1 FROM keys WHERE tenant = $1 AND name = $2",
                        &[&tenant, &name],
                    )
                    .map_err(db_err)?
                    .is_some();
                return Err(if exists {
                    StoreError::VersionConflict(format!("key {name} changed since it was read"))
                } else {
                    StoreError::NotFound(format!("key {name}"))
                });
            }
            notify(tx, &Change::key(tenant, name))
        })
    }

    fn delete_key(
        &self,
        tenant: &str,
        name: &str,
        versions: u32,
        op: Option<&OpRecord>,
    ) -> Result<(), StoreError> {
        self.tx(|tx| {
            insert_op(tx, op)?;
            // the key row first, locked: a rotation or a settings change on
            // another replica queues behind this transaction (or this one
            // behind it, and then sees what it wrote)
            let Some(row) = tx
                .query_opt(
                    "SELECT deletion_allowed FROM keys WHERE tenant = $1 AND name = $2 FOR UPDATE",
                    &[&tenant, &name],
                )
                .map_err(db_err)?
            else {
                return Err(StoreError::NotFound(format!("key {name}")));
            };
            let allowed: bool = row.get(0);
            let n: i64 = tx
                .query_one(
                    "SELECT count(*) FROM key_versions WHERE tenant = $1 AND name = $2",
                    &[&tenant, &name],
                )
                .map_err(db_err)?
                .get(0);
            if !allowed || n != i64::from(versions) {
                return Err(StoreError::VersionConflict(format!(
                    "key {name} changed while it was being deleted"
                )));
            }
            tx.execute(
                "DELETE FROM key_versions WHERE tenant = $1 AND name = $2",
                &[&tenant, &name],
            )
            .map_err(db_err)?;
            tx.execute(
                "DELETE FROM keys WHERE tenant = $1 AND name = $2",
                &[&tenant, &name],
            )
            .map_err(db_err)?;
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
        self.insert_tokens(std::slice::from_ref(t))
    }

    fn insert_tokens(&self, tokens: &[TokenRecord]) -> Result<(), StoreError> {
        self.tx(|tx| {
            for t in tokens {
                insert_token_tx(tx, t)?;
            }
            tokens_changed(tx)
        })
    }

    fn load_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = self.with(|c| {
            c.query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens"), &[])
                .map_err(db_err)
        })?;
        rows.iter().map(token_of).collect()
    }

    fn revoke_token(&self, tenant: &str, id: &str, at_ms: i64) -> Result<TokenRecord, StoreError> {
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE tokens SET revoked_at_ms = $3 WHERE tenant = $1 AND id = $2 AND revoked_at_ms IS NULL",
                    &[&tenant, &id, &at_ms],
                )
                .map_err(db_err)?;
            let row = tx
                .query_opt(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE tenant = $1 AND id = $2"),
                    &[&tenant, &id],
                )
                .map_err(db_err)?
                .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
            if n > 0 {
                tokens_changed(tx)?;
            }
            token_of(&row)
        })
    }

    fn touch_tokens(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        self.tx(|tx| {
            for (id, at) in used {
                tx.execute(
                    "UPDATE tokens SET last_used_ms = $2 WHERE id = $1 AND (last_used_ms IS NULL OR last_used_ms < $2)",
                    &[id, at],
                )
                .map_err(db_err)?;
            }
            Ok(())
        })
    }

    fn claim_token_expiry(&self, id: &str) -> Result<bool, StoreError> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE tokens SET expiry_recorded = true WHERE id = $1 AND NOT expiry_recorded",
                &[&id],
            )
            .map_err(db_err)
        })?;
        Ok(n > 0)
    }

    fn insert_bootstrap_token(&self, t: &TokenRecord) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let n = tx
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('tokens.bootstrap', $1) ON CONFLICT (key) DO NOTHING",
                    &[&t.id.as_bytes()],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Ok(false);
            }
            insert_token_tx(tx, t)?;
            tokens_changed(tx)?;
            Ok(true)
        })
    }

    fn token_generation(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.get_meta(TOKEN_GENERATION)?.unwrap_or_default())
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
        // a password in the query string, and quoted values with spaces
        assert_eq!(
            redact_url("postgres://db/kms?user=kms&password=s3cret&sslmode=require"),
            "postgres://db/kms?user=kms&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://kms:a@db/kms?PassWord=b"),
            "postgresql://kms:***@db/kms?PassWord=***"
        );
        assert_eq!(
            redact_url(r"host=db password='two words \' here' user=kms"),
            "host=db password=*** user=kms"
        );
        assert_eq!(
            redact_url("host=db password = 'x y' sslpassword=z"),
            "host=db password = *** sslpassword=***"
        );
        for url in [
            "host=db password='s e c r e t",
            "password=",
            "password",
            "postgres://u:p@h/d?password",
        ] {
            let shown = redact_url(url);
            assert!(
                !shown.contains("s e c") && !shown.contains(":p@"),
                "{url} -> {shown}"
            );
        }
    }
}
