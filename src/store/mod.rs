//! Where records persist. The default is one embedded SQLite file under the
//! data dir ([`sqlite::SqliteStore`]); for scale-out, several replicas share
//! one PostgreSQL database ([`postgres::PgStore`], `KMS_STORE=postgres://…`)
//! and learn of each other's changes through [`Store::subscribe`].
//!
//! Contract for every implementation:
//! - each method is one transaction: a rotation adds the version and moves
//!   the primary pointer together, or not at all;
//! - an `op_id` is recorded in the same transaction as the mutation it
//!   names, under a uniqueness constraint on (tenant, op_id);
//! - destroying a version wipes its custody handle so that no copy remains
//!   in the store's files (SQLite: `secure_delete` plus a WAL checkpoint);
//! - a shared store ([`Store::shared`]) notifies every replica of each
//!   committed change ([`Change`]), and the service re-reads the key from the
//!   store before it mutates it, so a stale snapshot never decides a write;
//! - calls block; the service calls them from its blocking pool, and only on
//!   mutations and start-up, never on the crypto hot path.
pub mod postgres;
pub mod records;
pub mod sqlite;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use records::{kid, KeyRecord, KeySettings, VersionRecord, VersionState};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    /// The `op_id` was recorded by a concurrent mutation (another replica)
    /// between the service's check and its write. The service answers with
    /// that mutation's result.
    #[error("{0}")]
    OpConflict(String),
    /// Another replica created the same key version first (two concurrent
    /// rotations). The service re-reads the key and tries again.
    #[error("{0}")]
    VersionConflict(String),
    /// The engine failed (I/O, locked, full disk). Retryable.
    #[error("{0}")]
    Backend(String),
    /// A stored row does not decode. Not retryable.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// How store failures reach callers.
impl From<StoreError> for crate::error::Error {
    fn from(e: StoreError) -> Self {
        use crate::error::Error;
        use StoreError as S;
        match e {
            S::AlreadyExists(m) | S::OpConflict(m) => Error::AlreadyExists(m),
            S::VersionConflict(m) => Error::Unavailable(format!("store: {m}")),
            S::NotFound(m) => Error::NotFound(m),
            S::Backend(m) => Error::Unavailable(format!("store: {m}")),
            S::Corrupt(m) => Error::Internal(format!("store: {m}")),
        }
    }
}

/// The idempotency record of one mutation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRecord {
    pub tenant: String,
    pub op_id: String,
    /// SHA-256 over the operation name and its inputs.
    pub request_hash: [u8; 32],
    /// What the first execution produced (the kid it created or changed).
    pub result: String,
}

/// A bearer token's stored form: its SHA-256 and what it grants, never
/// the secret (docs/tokens.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id: the first 16 hex digits of the hash. Safe to log and show;
    /// unique (the store refuses a second row with the same id).
    pub id: String,
    pub hash: [u8; 32],
    pub tenant: String,
    /// Comma-separated scopes, e.g. `kms:sign,kms:verify`.
    pub scopes: String,
    /// Comma-separated key-name patterns (`payments-*`, `audit-key`); empty
    /// means every key of the tenant.
    pub key_patterns: String,
    pub expires_at_ms: Option<i64>,
    pub description: String,
    /// The principal that created it (`token:<id>`, `cli`, `bootstrap`).
    pub created_by: String,
    pub created_at_ms: i64,
    /// Coarse: written at most once a minute per token, off the hot path.
    pub last_used_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// One committed change, as a shared store announces it to every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A key was created, rotated or had a version's state changed.
    Key { tenant: String, name: String },
    /// A token was added or revoked.
    Tokens,
    /// A meta entry was written (PQ policies live here).
    Meta { key: String },
    /// Notifications may have been missed (periodic, or after the listener
    /// reconnected): compare everything with the store.
    Resync,
}

impl Change {
    pub fn key(tenant: &str, name: &str) -> Self {
        Change::Key {
            tenant: tenant.to_string(),
            name: name.to_string(),
        }
    }
}

/// Called on the store's listener thread for every change.
pub type ChangeHandler = Arc<dyn Fn(Change) + Send + Sync>;

pub trait Store: Send + Sync {
    /// Every key with every version, for the start-up snapshot.
    fn load_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// One key with every version, as committed now.
    fn load_key(&self, tenant: &str, name: &str) -> Result<Option<KeyRecord>, StoreError>;

    /// Insert a new key (with its versions). `AlreadyExists` if the name is
    /// taken in the tenant, or if `op` reuses an op_id.
    fn create_key(&self, key: &KeyRecord, op: Option<&OpRecord>) -> Result<(), StoreError>;

    /// Append a version and make it primary.
    fn add_version(
        &self,
        tenant: &str,
        name: &str,
        version: &VersionRecord,
        op: Option<&OpRecord>,
    ) -> Result<(), StoreError>;

    /// Change a version's state; `Destroyed` also wipes its handle.
    fn set_state(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
        state: VersionState,
        op: Option<&OpRecord>,
    ) -> Result<(), StoreError>;

    /// Replace a key's settings if they are still `old` (what the caller
    /// read): `VersionConflict` when another writer changed them meanwhile,
    /// `NotFound` if there is no such key.
    fn set_settings(
        &self,
        tenant: &str,
        name: &str,
        old: &KeySettings,
        settings: &KeySettings,
        op: Option<&OpRecord>,
    ) -> Result<(), StoreError>;

    /// Remove a key and all its version records (custody has destroyed its
    /// material first), if it still has `versions` versions and allows
    /// deletion: otherwise `VersionConflict` (a version was added, or the
    /// setting changed, since custody was emptied). `NotFound` if there is
    /// no such key.
    fn delete_key(
        &self,
        tenant: &str,
        name: &str,
        versions: u32,
        op: Option<&OpRecord>,
    ) -> Result<(), StoreError>;

    fn find_op(&self, tenant: &str, op_id: &str) -> Result<Option<OpRecord>, StoreError>;

    /// Add a token. `AlreadyExists` if its id or hash is taken. Every token
    /// write (this, [`Store::insert_tokens`], [`Store::revoke_token`], the
    /// bootstrap) moves [`Store::token_generation`] in the same transaction
    /// and, in a shared store, announces [`Change::Tokens`].
    fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// Add many tokens in one transaction (seeding, benchmarks).
    fn insert_tokens(&self, tokens: &[TokenRecord]) -> Result<(), StoreError> {
        tokens.iter().try_for_each(|t| self.insert_token(t))
    }
    /// Every token, revoked ones included.
    fn load_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Mark a token revoked at `at_ms`; the record as stored afterwards
    /// (an already revoked token keeps its first revocation time). `NotFound`
    /// if no token has this id in `tenant`.
    fn revoke_token(&self, tenant: &str, id: &str, at_ms: i64) -> Result<TokenRecord, StoreError>;
    /// Record last-used times (coarse; announces nothing).
    fn touch_tokens(&self, used: &[(String, i64)]) -> Result<(), StoreError>;
    /// Claim the recording of a token's expiry: true for exactly one caller
    /// across every replica, so each expiry is audited once.
    fn claim_token_expiry(&self, id: &str) -> Result<bool, StoreError>;
    /// Insert the bootstrap token unless one was ever created, in one
    /// transaction: replicas starting together on an empty store end with
    /// exactly one. True if this call created it.
    fn insert_bootstrap_token(&self, token: &TokenRecord) -> Result<bool, StoreError>;
    /// Changes whenever any process commits a token write: a running server
    /// polls it to learn of tokens written by `ron-kms tokens` offline (or by
    /// a replica whose notification was lost).
    fn token_generation(&self) -> Result<Vec<u8>, StoreError>;

    /// Replace a version's custody handle with `new` if it is still `old`
    /// (`ron-kms tpm reseal`: the same key, sealed again). `false` when the
    /// row changed meanwhile. Only the stores TPM custody runs on (SQLite).
    fn replace_handle(
        &self,
        _tenant: &str,
        _name: &str,
        _version: u32,
        _old: &[u8],
        _new: &[u8],
    ) -> Result<bool, StoreError> {
        Err(StoreError::Backend(
            "this store does not replace key handles (TPM custody needs the SQLite store)".into(),
        ))
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Write `value` under `key` unless the key exists; return the value
    /// that is stored afterwards (the first writer's when replicas race).
    fn insert_meta(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// Every meta entry whose key starts with `prefix`, in key order.
    fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// A cheap liveness probe for `/readyz`.
    fn health(&self) -> Result<(), StoreError>;

    /// Whether other replicas write to this store too.
    fn shared(&self) -> bool {
        false
    }

    /// Call `on_change` for every change committed by any replica, from a
    /// thread of the store's. A store only this process writes has nothing
    /// to announce.
    fn subscribe(&self, _on_change: ChangeHandler) -> Result<(), StoreError> {
        Ok(())
    }
}
