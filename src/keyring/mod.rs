//! Key names and references, and the in-memory snapshot of the key records
//! (`crate::store::records`) that the hot path reads.
//!
//! The snapshot is an immutable map swapped atomically (arc-swap) after every
//! successful store write, so sign/verify/wrap/unwrap never touch the
//! database and never wait on a lock held by a mutation. Mutations are
//! serialised by the service; this module only holds and answers.
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::error::Error;
use crate::store::KeyRecord;

pub const MAX_NAME_LEN: usize = 128;

/// Key names: `[a-z0-9][a-z0-9._-]{0,127}`.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "key name must match [a-z0-9][a-z0-9._-]{0,127}".into(),
        ))
    }
}

/// A reference to a key from a request: `name` (primary) or `name#vN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRef {
    pub name: String,
    pub version: Option<u32>,
}

impl KeyRef {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (name, version) = match s.split_once("#v") {
            None => (s, None),
            Some((n, v)) => {
                let ok = !v.is_empty()
                    && v.len() <= 10
                    && v.bytes().all(|c| c.is_ascii_digit())
                    && !v.starts_with('0');
                let n_v = if ok { v.parse::<u32>().ok() } else { None };
                match n_v {
                    Some(x) if x >= 1 => (n, Some(x)),
                    _ => {
                        return Err(Error::InvalidArgument(
                            "key reference must be name or name#vN with N >= 1".into(),
                        ))
                    }
                }
            }
        };
        validate_name(name)?;
        Ok(KeyRef {
            name: name.to_string(),
            version,
        })
    }
}

/// Immutable view of every key, ordered by tenant, then name.
///
/// Persistent maps (`imbl::OrdMap`): a new snapshot shares all but the
/// changed path with the old one, so a put costs O(log n) whatever the key
/// count (with a `BTreeMap` cloned per put, key creation in the
/// memory-pressure drill had slowed to ~73 a second at 75,000 keys), and
/// lookups borrow `&str` without building owned keys.
#[derive(Default, Clone)]
pub struct Snapshot {
    tenants: imbl::OrdMap<String, imbl::OrdMap<String, Arc<KeyRecord>>>,
    len: usize,
}

impl Snapshot {
    pub fn get(&self, tenant: &str, name: &str) -> Option<&Arc<KeyRecord>> {
        self.tenants.get(tenant)?.get(name)
    }

    /// Up to `limit` keys of `tenant` whose names sort after `after` and
    /// pass `visible` (a key-restricted caller sees only its own).
    pub fn page(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
        visible: impl Fn(&str) -> bool,
    ) -> Vec<Arc<KeyRecord>> {
        use std::ops::Bound;
        let Some(keys) = self.tenants.get(tenant) else {
            return Vec::new();
        };
        let start: Bound<&str> = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        keys.range::<_, str>((start, Bound::Unbounded))
            .filter(|(name, _)| visible(name))
            .take(limit)
            .map(|(_, k)| k.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// How many keys `tenant` holds (O(1)).
    pub fn tenant_len(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |k| k.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn remove(&mut self, tenant: &str, name: &str) -> bool {
        let Some(keys) = self.tenants.get_mut(tenant) else {
            return false;
        };
        let gone = keys.remove(name).is_some();
        if keys.is_empty() {
            self.tenants.remove(tenant);
        }
        if gone {
            self.len -= 1;
        }
        gone
    }

    fn insert(&mut self, r: Arc<KeyRecord>) {
        let keys = self.tenants.entry(r.tenant.clone()).or_default();
        if keys.insert(r.name.clone(), r).is_none() {
            self.len += 1;
        }
    }
}

/// The swap-on-write holder of the current [`Snapshot`].
pub struct Keyring {
    current: ArcSwap<Snapshot>,
    /// Moves after every swap (answers built from a snapshot, such as the
    /// JWKS, are reused while it stands still).
    generation: std::sync::atomic::AtomicU64,
}

impl Keyring {
    pub fn new(records: Vec<KeyRecord>) -> Self {
        let mut snap = Snapshot::default();
        for r in records {
            snap.insert(Arc::new(r));
        }
        Keyring {
            current: ArcSwap::from_pointee(snap),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Look up a key of `tenant`. Another tenant's key is simply absent.
    pub fn get(&self, tenant: &str, name: &str) -> Option<Arc<KeyRecord>> {
        self.current.load().get(tenant, name).cloned()
    }

    /// Replace (or insert) one record. Readers see either the old or the
    /// new map, never a mix.
    pub fn put(&self, record: KeyRecord) -> Arc<KeyRecord> {
        let record = Arc::new(record);
        self.put_arcs(std::slice::from_ref(&record));
        record
    }

    /// Replace (or insert) several records in one swap. Safe against a
    /// concurrent writer (the store listener and a mutation): the swap is a
    /// compare-and-swap loop, so neither write is lost.
    pub fn put_many(&self, records: Vec<KeyRecord>) {
        let records: Vec<_> = records.into_iter().map(Arc::new).collect();
        self.put_arcs(&records);
    }

    /// The generation: read it before taking a snapshot, and an answer
    /// built from that snapshot is current while the generation is the same
    /// (it moves only after a swap).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn swapped(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Drop deleted keys, in one swap.
    pub fn remove_many(&self, keys: &[(String, String)]) {
        if keys.is_empty() {
            return;
        }
        self.current.rcu(|old| {
            let mut snap = Snapshot::clone(old);
            for (tenant, name) in keys {
                snap.remove(tenant, name);
            }
            snap
        });
        self.swapped();
    }

    /// The (tenant, name) of every key in the snapshot.
    pub fn names(&self) -> Vec<(String, String)> {
        let snap = self.snapshot();
        snap.tenants
            .iter()
            .flat_map(|(t, keys)| keys.keys().map(move |n| (t.clone(), n.clone())))
            .collect()
    }

    fn put_arcs(&self, records: &[Arc<KeyRecord>]) {
        if records.is_empty() {
            return;
        }
        self.current.rcu(|old| {
            let mut snap = Snapshot::clone(old);
            for r in records {
                snap.insert(r.clone());
            }
            snap
        });
        self.swapped();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;

    #[test]
    fn key_refs_parse_strictly() {
        assert_eq!(
            KeyRef::parse("a.b-c_1").unwrap(),
            KeyRef {
                name: "a.b-c_1".into(),
                version: None
            }
        );
        assert_eq!(KeyRef::parse("k#v12").unwrap().version, Some(12));
        for bad in [
            "",
            "K",
            "-k",
            "k#v",
            "k#v0",
            "k#v01",
            "k#vx",
            "k#v1#v2",
            "k v",
            "k#v99999999999",
        ] {
            assert!(KeyRef::parse(bad).is_err(), "{bad:?}");
        }
        assert!(KeyRef::parse(&"a".repeat(128)).is_ok());
        assert!(KeyRef::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn pages_stay_inside_the_tenant() {
        let rec = |t: &str, n: &str| KeyRecord {
            tenant: t.into(),
            name: n.into(),
            algorithm: Algorithm::Ed25519,
            primary_version: 1,
            created_at_ms: 0,
            settings: crate::store::KeySettings::default(),
            versions: vec![],
        };
        let ring = Keyring::new(vec![
            rec("a", "x"),
            rec("b", "k1"),
            rec("b", "k2"),
            rec("b", "k3"),
            rec("c", "a"),
        ]);
        let s = ring.snapshot();
        let names = |v: Vec<Arc<KeyRecord>>| v.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(s.page("b", None, 2, |_| true)), ["k1", "k2"]);
        assert_eq!(names(s.page("b", Some("k2"), 2, |_| true)), ["k3"]);
        assert!(s.page("b", Some("k3"), 2, |_| true).is_empty());
        assert!(s
            .page("b", Some("a"), 1, |_| true)
            .iter()
            .all(|k| k.name == "k1"));
        assert!(s.page("nobody", None, 10, |_| true).is_empty());
        assert!(ring.get("a", "k1").is_none());
    }

    #[test]
    fn puts_leave_older_snapshots_alone_and_count_each_key_once() {
        let rec = |t: &str, n: &str, primary: u32| KeyRecord {
            tenant: t.into(),
            name: n.into(),
            algorithm: Algorithm::Ed25519,
            primary_version: primary,
            created_at_ms: 0,
            settings: crate::store::KeySettings::default(),
            versions: vec![],
        };
        let ring = Keyring::new(vec![rec("a", "k", 1)]);
        let before = ring.snapshot();
        ring.put(rec("a", "k", 2));
        ring.put_many(vec![rec("b", "k", 1), rec("a", "j", 1)]);
        let after = ring.snapshot();
        assert_eq!(before.len(), 1);
        assert_eq!(before.get("a", "k").unwrap().primary_version, 1);
        assert!(before.get("b", "k").is_none());
        // a replaced record is still one key
        assert_eq!(after.len(), 3);
        assert_eq!(after.get("a", "k").unwrap().primary_version, 2);
        assert_eq!(after.get("b", "k").unwrap().tenant, "b");
        let names: Vec<_> = after
            .page("a", None, 10, |_| true)
            .iter()
            .map(|k| k.name.clone())
            .collect();
        assert_eq!(names, ["j", "k"]);
        // many keys: every one readable, pages in name order
        let many: Vec<_> = (0..5000)
            .map(|i| rec("m", &format!("k{i:05}"), 1))
            .collect();
        ring.put_many(many);
        let s = ring.snapshot();
        assert_eq!(s.len(), 5003);
        assert!((0..5000).all(|i| s.get("m", &format!("k{i:05}")).is_some()));
        let page = s.page("m", Some("k04997"), 10, |_| true);
        let names: Vec<_> = page.iter().map(|k| k.name.clone()).collect();
        assert_eq!(names, ["k04998", "k04999"]);
    }
}
