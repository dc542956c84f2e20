//! Several replicas on one shared store (docs/scale-out.md). What another
//! replica commits reaches this one through the store's change feed
//! ([`KmsService::follow_store`]); before a mutation, the key is re-read
//! from the store, so a snapshot that has not caught up yet never decides a
//! write; and a write that loses a race to another replica is settled here
//! (the same `op_id`: answer with the winner's result; the same new
//! version: try again on the fresh record).
use std::time::Instant;

use super::*;
use crate::store::{Change, StoreError};

/// How a store write ended, once races with other replicas are settled.
pub(super) enum Settled {
    Written,
    /// Another replica recorded this `op_id` first; its result.
    Prior(String),
    /// Another replica wrote the same version first: re-read and retry.
    Retry,
}

/// Attempts at a rotation that keeps losing its version number to other
/// replicas' rotations of the same key.
pub(super) const ROTATE_ATTEMPTS: usize = 3;

/// Two records of one key say the same (versions only grow; a version's
/// state, the primary pointer and the settings are what change; a key
/// deleted and made again has another creation time).
fn same(a: &KeyRecord, b: &KeyRecord) -> bool {
    a.primary_version == b.primary_version
        && a.created_at_ms == b.created_at_ms
        && a.settings == b.settings
        && a.versions.len() == b.versions.len()
        && a.versions
            .iter()
            .zip(&b.versions)
            .all(|(x, y)| x.state == y.state)
}

impl KmsService {
    /// Subscribe to the shared store's change feed. A no-op for a store
    /// only this process writes.
    pub fn follow_store(self: &Arc<Self>) -> Result<()> {
        if !self.store.shared() {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        self.store.subscribe(Arc::new(move |change| {
            if let Some(kms) = weak.upgrade() {
                kms.apply_change(change);
            }
        }))?;
        Ok(())
    }

    /// Apply one change another replica (or this one) committed. Runs on the
    /// store's listener thread, serialised with this replica's mutations.
    fn apply_change(&self, change: Change) {
        let started = Instant::now();
        let _g = self.admin_lock.blocking_lock();
        let (kind, outcome) = match &change {
            Change::Key { tenant, name } => ("key", self.refresh_key(tenant, name).map(|_| ())),
            Change::Tokens => ("tokens", self.tokens.reload()),
            Change::Meta { key: k } if crate::policy::Policies::is_policy_key(k) => {
                ("policy", self.policies.reload().map_err(Error::Internal))
            }
            Change::Meta { .. } => ("meta", Ok(())),
            Change::Resync => ("resync", self.resync()),
        };
        metrics::counter!("kms_store_changes_applied_total", "kind" => kind).increment(1);
        metrics::histogram!("kms_store_change_apply_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = outcome {
            // The next notification or the periodic resync tries again.
            tracing::warn!(kind, error = %e, "could not apply a change from the shared store");
        }
    }

    /// Swap `fresh` into the snapshot when it differs from what is there,
    /// dropping the key's cached public keys.
    fn adopt(&self, fresh: KeyRecord) -> Arc<KeyRecord> {
        let changed = match self.keyring.get(&fresh.tenant, &fresh.name) {
            Some(cur) if same(&cur, &fresh) => return cur,
            Some(_) => true,
            None => false,
        };
        if changed {
            self.verify_cache.invalidate(
                &fresh.tenant,
                fresh.versions.iter().map(|v| fresh.kid(v.version)),
            );
        }
        self.keyring.put(fresh)
    }

    /// Re-read one key from the store into the snapshot (a key the store
    /// no longer has was deleted: it leaves the snapshot).
    fn refresh_key(&self, tenant: &str, name: &str) -> Result<Option<Arc<KeyRecord>>> {
        match self.store.load_key(tenant, name)? {
            Some(k) => Ok(Some(self.adopt(k))),
            None => {
                self.forget(tenant, name);
                Ok(None)
            }
        }
    }

    /// Drop a deleted key from the snapshot and its public keys from the
    /// verify cache.
    pub(super) fn forget(&self, tenant: &str, name: &str) {
        self.op_cache.forget_tenant(tenant);
        if let Some(cur) = self.keyring.get(tenant, name) {
            self.verify_cache
                .invalidate(tenant, cur.versions.iter().map(|v| cur.kid(v.version)));
            self.keyring
                .remove_many(&[(tenant.to_string(), name.to_string())]);
        }
    }

    /// The key as a mutation must see it: on a shared store, as committed
    /// now (another replica may have changed it a moment ago); otherwise the
    /// snapshot, which this process alone writes.
    pub(super) fn fresh(&self, tenant: &str, name: &str) -> Result<Option<Arc<KeyRecord>>> {
        if self.store.shared() {
            self.refresh_key(tenant, name)
        } else {
            Ok(self.keyring.get(tenant, name))
        }
    }

    /// Compare every key, the tokens and the policies with the store
    /// (notifications may have been lost while the listener was away).
    fn resync(&self) -> Result<()> {
        let stored = self.store.load_keys()?;
        let snap = self.keyring.snapshot();
        let in_store: std::collections::HashSet<(&str, &str)> = stored
            .iter()
            .map(|k| (k.tenant.as_str(), k.name.as_str()))
            .collect();
        let deleted: Vec<(String, String)> = self
            .keyring
            .names()
            .into_iter()
            .filter(|(t, n)| !in_store.contains(&(t.as_str(), n.as_str())))
            .collect();
        for (t, n) in &deleted {
            self.forget(t, n);
        }
        let mut changed = Vec::new();
        for k in stored {
            match snap.get(&k.tenant, &k.name) {
                Some(cur) if same(cur, &k) => {}
                Some(_) => {
                    self.verify_cache
                        .invalidate(&k.tenant, k.versions.iter().map(|v| k.kid(v.version)));
                    changed.push(k);
                }
                None => changed.push(k),
            }
        }
        if !changed.is_empty() {
            tracing::info!(
                keys = changed.len(),
                "resync found changes notifications missed"
            );
            metrics::counter!("kms_store_resync_changed_keys_total")
                .increment(changed.len() as u64);
        }
        self.keyring.put_many(changed);
        self.tokens.reload()?;
        self.policies.reload().map_err(Error::Internal)
    }

    /// Settle a store write: on failure undo custody's side (`undo`), and
    /// when another replica won a race, say how to go on.
    pub(super) fn settle(
        &self,
        written: std::result::Result<(), StoreError>,
        op: &Option<OpRecord>,
        tenant: &str,
        name: &str,
        undo: impl FnOnce(),
    ) -> Result<Settled> {
        let e = match written {
            Ok(()) => return Ok(Settled::Written),
            Err(e) => e,
        };
        undo();
        if self.store.shared() {
            // Whatever happened, the snapshot should show what won.
            let _ = self.refresh_key(tenant, name);
        }
        match e {
            StoreError::OpConflict(m) => match self.prior_op(op)? {
                Some(result) => {
                    metrics::counter!("kms_store_races_total", "kind" => "op_id").increment(1);
                    Ok(Settled::Prior(result))
                }
                None => Err(Error::AlreadyExists(m)),
            },
            StoreError::VersionConflict(_) => {
                metrics::counter!("kms_store_races_total", "kind" => "version").increment(1);
                Ok(Settled::Retry)
            }
            e => Err(e.into()),
        }
    }

    /// Best-effort removal of custody material a lost write left behind.
    pub(super) fn discard(&self, rec_tenant: &str, kid: &str, alg: Algorithm, handle: &[u8]) {
        let label = KeyLabel {
            tenant: rec_tenant,
            kid,
            algorithm: alg,
        };
        if let Err(e) = self.backend.destroy(label, handle) {
            tracing::warn!(kid, error = %e, "could not remove custody material of a write that lost a race");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(states: &[VersionState], primary: u32) -> KeyRecord {
        KeyRecord {
            tenant: "t".into(),
            name: "k".into(),
            algorithm: Algorithm::Ed25519,
            primary_version: primary,
            created_at_ms: 0,
            settings: crate::store::KeySettings::default(),
            versions: states
                .iter()
                .enumerate()
                .map(|(i, s)| VersionRecord {
                    version: i as u32 + 1,
                    state: *s,
                    public_key: vec![],
                    handle: None,
                    created_at_ms: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn records_differ_by_state_versions_or_primary() {
        use VersionState::*;
        assert!(same(&rec(&[Enabled], 1), &rec(&[Enabled], 1)));
        assert!(!same(&rec(&[Enabled], 1), &rec(&[Disabled], 1)));
        assert!(!same(&rec(&[Enabled], 1), &rec(&[Enabled, Enabled], 2)));
        assert!(!same(
            &rec(&[Enabled, Enabled], 1),
            &rec(&[Enabled, Enabled], 2)
        ));
    }
}
