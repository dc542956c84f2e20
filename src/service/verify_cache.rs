//! The verify cache: public keys prepared for verification, keyed by tenant
//! and `kid#vN` (moka, bounded by `KMS_VERIFY_CACHE_MAX`). An entry older than
//! `KMS_VERIFY_CACHE_TTL_MS` is *stale*: while custody is up it is reloaded;
//! while custody is unavailable verify answers from entries within the TTL
//! and refuses with UNAVAILABLE after it. Disable, destroy and rotate
//! invalidate a key's entries in the same call.
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crypto::Algorithm;

/// One prepared public key.
pub struct Prepared {
    pub algorithm: Algorithm,
    pub public: Vec<u8>,
    pub loaded: Instant,
}

pub enum Lookup {
    Hit(Arc<Prepared>),
    Stale(Arc<Prepared>),
    Miss,
}

pub struct VerifyCache {
    cache: Option<moka::sync::Cache<(String, String), Arc<Prepared>>>,
    ttl: Duration,
}

impl VerifyCache {
    /// `max == 0` turns caching off (every lookup is a miss).
    pub fn new(max: u64, ttl: Duration) -> Self {
        metrics::gauge!("verify_cache_ttl_ms").set(ttl.as_millis() as f64);
        VerifyCache {
            cache: (max > 0).then(|| moka::sync::Cache::builder().max_capacity(max).build()),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn get(&self, tenant: &str, kid: &str) -> Lookup {
        let found = self
            .cache
            .as_ref()
            .and_then(|c| c.get(&(tenant.to_string(), kid.to_string())));
        match found {
            Some(p) if p.loaded.elapsed() <= self.ttl => {
                metrics::counter!("verify_cache_hit_total").increment(1);
                Lookup::Hit(p)
            }
            Some(p) => {
                metrics::counter!("verify_cache_stale_total").increment(1);
                Lookup::Stale(p)
            }
            None => {
                metrics::counter!("verify_cache_miss_total").increment(1);
                Lookup::Miss
            }
        }
    }

    pub fn insert(
        &self,
        tenant: &str,
        kid: &str,
        algorithm: Algorithm,
        public: &[u8],
    ) -> Arc<Prepared> {
        let p = Arc::new(Prepared {
            algorithm,
            public: public.to_vec(),
            loaded: Instant::now(),
        });
        if let Some(c) = &self.cache {
            c.insert((tenant.to_string(), kid.to_string()), p.clone());
        }
        p
    }

    /// Drop every cached version of one key.
    pub fn invalidate(&self, tenant: &str, kids: impl IntoIterator<Item = String>) {
        if let Some(c) = &self.cache {
            for kid in kids {
                c.invalidate(&(tenant.to_string(), kid));
            }
        }
    }
}
