//! The schema: versioned migrations in `schema_migrations`, applied under
//! an advisory lock so replicas starting together migrate once.
use super::*;

/// Ordered migrations; entry `i` takes the schema to version `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    "
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
",
    "
ALTER TABLE tokens ADD COLUMN id TEXT;
UPDATE tokens SET id = encode(substring(hash from 1 for 8), 'hex');
ALTER TABLE tokens ADD COLUMN key_patterns TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN expires_at_ms BIGINT;
ALTER TABLE tokens ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN last_used_ms BIGINT;
ALTER TABLE tokens ADD COLUMN revoked_at_ms BIGINT;
ALTER TABLE tokens ADD COLUMN expiry_recorded BOOLEAN NOT NULL DEFAULT false;
CREATE UNIQUE INDEX tokens_id ON tokens (id);
",
    "
ALTER TABLE keys ADD COLUMN min_decryption_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN min_encryption_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN deletion_allowed BOOLEAN NOT NULL DEFAULT false;
",
    "
ALTER TABLE keys ADD COLUMN published BOOLEAN NOT NULL DEFAULT false;
",
];

/// Advisory lock key of the migration step (any constant; "ronkms" in ASCII).
pub(super) const MIGRATION_LOCK: i64 = 0x726f_6e6b_6d73;

pub(super) fn migrate(c: &mut Client) -> Result<(), StoreError> {
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
