//! The in-memory `op_id` answers of crypto operations (Sign, Wrap,
//! GenerateDataKey), bounded in bytes.
//!
//! Each tenant has its own cache with its own byte budget, so one tenant's
//! flood of unique `op_id`s evicts only that tenant's older answers. The
//! total is bounded by how many tenant caches may exist at once
//! (`total_bytes / tenant_bytes`); a tenant that finds no room gets
//! `resource_exhausted` for requests carrying an `op_id` (without one they
//! run as usual) until an idle tenant's cache empties and is dropped.
//!
//! An entry remembers who made it: the principal and the operation. The
//! same `op_id` from another principal of the tenant, or for another
//! operation, is `already_exists` and never gets the answer (a data key's
//! plaintext in particular).
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::idempotency::Cached;

/// Default byte budget of one tenant's answers.
pub const DEFAULT_TENANT_BYTES: u64 = 16 * 1024 * 1024;
/// Default byte budget of all tenants' answers together.
pub const DEFAULT_TOTAL_BYTES: u64 = 256 * 1024 * 1024;

type TenantCache = moka::sync::Cache<String, Arc<Cached>>;

pub(super) struct OpCache {
    tenant_bytes: u64,
    max_tenants: usize,
    ttl: Duration,
    tenants: RwLock<HashMap<String, TenantCache>>,
}

/// Why an answer could not be remembered.
#[derive(Debug, PartialEq)]
pub(super) struct Full {
    pub(super) tenants: usize,
    pub(super) total_bytes: u64,
}

impl OpCache {
    pub(super) fn new(tenant_bytes: u64, total_bytes: u64, ttl: Duration) -> Self {
        let tenant_bytes = tenant_bytes.max(1);
        OpCache {
            tenant_bytes,
            max_tenants: (total_bytes / tenant_bytes).max(1) as usize,
            ttl,
            tenants: RwLock::new(HashMap::new()),
        }
    }

    pub(super) fn get(&self, tenant: &str, op_id: &str) -> Option<Arc<Cached>> {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        tenants.get(tenant)?.get(op_id)
    }

    /// The tenant's cache, made if there is room for one more.
    fn tenant(&self, tenant: &str) -> Result<TenantCache, Full> {
        if let Some(c) = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return Ok(c.clone());
        }
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = tenants.get(tenant) {
            return Ok(c.clone());
        }
        if tenants.len() >= self.max_tenants {
            // caches whose answers have all expired give their room back
            tenants.retain(|_, c| {
                c.run_pending_tasks();
                c.entry_count() > 0
            });
        }
        if tenants.len() >= self.max_tenants {
            return Err(Full {
                tenants: tenants.len(),
                total_bytes: self.max_tenants as u64 * self.tenant_bytes,
            });
        }
        let c = moka::sync::Cache::builder()
            .max_capacity(self.tenant_bytes)
            .weigher(|k: &String, v: &Arc<Cached>| {
                u32::try_from(k.len() + v.bytes).unwrap_or(u32::MAX)
            })
            .time_to_live(self.ttl)
            .build();
        tenants.insert(tenant.to_string(), c.clone());
        Ok(c)
    }

    /// Whether an answer for this tenant can be remembered now (checked
    /// before the operation runs, so a request is refused rather than run
    /// without its `op_id` taking effect).
    pub(super) fn room(&self, tenant: &str) -> Result<(), Full> {
        self.tenant(tenant).map(|_| ())
    }

    pub(super) fn insert(&self, tenant: &str, op_id: &str, c: Arc<Cached>) -> Result<(), Full> {
        self.tenant(tenant)?.insert(op_id.to_string(), c);
        Ok(())
    }

    /// Forget every answer remembered for `tenant` (a key of it was
    /// deleted: a remembered answer must not outlive its key, nor be handed
    /// out again for a new key made under the same name).
    pub(super) fn forget_tenant(&self, tenant: &str) {
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
    }

    /// The bytes a tenant's answers hold (after pending evictions ran).
    #[cfg(test)]
    pub(super) fn tenant_bytes_used(&self, tenant: &str) -> u64 {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        tenants.get(tenant).map_or(0, |c| {
            c.run_pending_tasks();
            c.weighted_size()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::idempotency::{Cached, CachedAnswer};
    use super::*;
    use crate::proto;

    fn answer(principal: &str, sig: usize) -> Arc<Cached> {
        Arc::new(Cached::new(
            principal,
            [0u8; 32],
            CachedAnswer::Sign(proto::SignResponse {
                signature: vec![7; sig],
                ..Default::default()
            }),
        ))
    }

    #[test]
    fn a_flood_of_unique_op_ids_stays_under_the_tenant_bound_and_evicts_only_its_own() {
        let c = OpCache::new(64 * 1024, 1024 * 1024, Duration::from_secs(600));
        c.insert("quiet", "keep-me", answer("token:q", 100))
            .unwrap();
        for i in 0..20_000 {
            c.insert("loud", &format!("op-{i}"), answer("token:l", 3309))
                .unwrap();
        }
        let used = c.tenant_bytes_used("loud");
        assert!(used <= 64 * 1024, "loud tenant holds {used} bytes");
        assert!(used > 32 * 1024, "the budget is used, not dropped: {used}");
        assert!(
            c.get("quiet", "keep-me").is_some(),
            "evicted by another tenant"
        );
    }

    #[test]
    fn past_the_total_a_new_tenant_is_refused_until_an_idle_cache_empties() {
        let c = OpCache::new(1024, 2048, Duration::from_millis(200));
        c.insert("a", "x", answer("p", 10)).unwrap();
        c.insert("b", "x", answer("p", 10)).unwrap();
        let full = c.insert("c", "x", answer("p", 10)).unwrap_err();
        assert_eq!(
            full,
            Full {
                tenants: 2,
                total_bytes: 2048
            }
        );
        assert!(c.room("a").is_ok(), "a tenant with a cache keeps it");
        std::thread::sleep(Duration::from_millis(300));
        assert!(c.room("c").is_ok(), "expired caches give their room back");
    }
}
