//! One of a tree's three maps as a version of the tree store holds it,
//! read as it is asked for: a [`Source`] under a `Layered` map.

use std::ops::Bound;
use std::sync::Arc;

use parking_lot::Mutex;

use super::super::layer::Source;
use super::TREE_DIR;
use crate::fs::inode::prefix_end;
use crate::store::{Pinned, Snapshot};

/// Where [`Source`] reads that failed are kept.
pub(super) type Damage = Arc<Mutex<Option<String>>>;

/// An entry from its key (without the prefix) and value.
pub(super) type Decode<K, V> = fn(&Snapshot<'_>, &[u8], &[u8]) -> Result<(K, V), String>;

/// One of a tree's three maps as a version of the store holds it.
pub(super) struct Map<K, V> {
    pin: Arc<Pinned>,
    damage: Damage,
    len: usize,
    prefix: &'static [u8],
    key: fn(&K) -> Vec<u8>,
    decode: Decode<K, V>,
    /// The last value read: one asked for again (both trees read a file
    /// in turn, an apply reads it more than once) is not decoded again,
    /// and is the same `Arc` both times, which compares without reading.
    /// One value: a big file's node is held while it is in use anyway.
    last: Mutex<Option<(K, V)>>,
}

impl<K, V> Map<K, V> {
    /// Keys of `prefix`, `len` of them, in the version `pin` holds.
    pub(super) fn new(
        pin: Arc<Pinned>,
        damage: Damage,
        len: usize,
        prefix: &'static [u8],
        key: fn(&K) -> Vec<u8>,
        decode: Decode<K, V>,
    ) -> Map<K, V> {
        Map {
            pin,
            damage,
            len,
            prefix,
            key,
            decode,
            last: Mutex::new(None),
        }
    }

    fn failed(&self, e: impl std::fmt::Display) {
        let mut d = self.damage.lock();
        if d.is_none() {
            tracing::error!("sync: the tree store cannot be read: {e}");
            *d = Some(format!(
                "the synced tree cannot be read from {TREE_DIR}: {e}"
            ));
        }
    }

    fn bound(&self, b: Bound<&K>) -> Bound<Vec<u8>> {
        match b {
            Bound::Included(k) => Bound::Included((self.key)(k)),
            Bound::Excluded(k) => Bound::Excluded((self.key)(k)),
            Bound::Unbounded => Bound::Unbounded,
        }
    }
}

impl<K: Send + Sync + Clone + PartialEq, V: Send + Sync + Clone> Source<K, V> for Map<K, V> {
    fn get(&self, k: &K) -> Option<V> {
        if let Some((lk, lv)) = &*self.last.lock()
            && lk == k
        {
            return Some(lv.clone());
        }
        let snap = self.pin.snapshot();
        let key = (self.key)(k);
        match snap.get(&key) {
            Ok(Some(v)) => match (self.decode)(&snap, &key[self.prefix.len()..], v) {
                Ok((_, v)) => {
                    *self.last.lock() = Some((k.clone(), v.clone()));
                    Some(v)
                }
                Err(e) => {
                    self.failed(e);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                self.failed(e);
                None
            }
        }
    }

    fn contains(&self, k: &K) -> bool {
        match self.pin.snapshot().get(&(self.key)(k)) {
            Ok(v) => v.is_some(),
            Err(e) => {
                self.failed(e);
                false
            }
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn range(&self, lo: Bound<&K>, hi: Bound<&K>) -> Box<dyn Iterator<Item = (K, V)> + '_> {
        let snap = self.pin.snapshot();
        let lo = match self.bound(lo) {
            Bound::Unbounded => Bound::Included(self.prefix.to_vec()),
            b => b,
        };
        let hi = match self.bound(hi) {
            Bound::Unbounded => Bound::Excluded(prefix_end(self.prefix)),
            b => b,
        };
        let range = snap.range((lo.as_ref().map(|v| &v[..]), hi.as_ref().map(|v| &v[..])));
        let range = match range {
            Ok(r) => r,
            Err(e) => {
                self.failed(e);
                return Box::new(std::iter::empty());
            }
        };
        Box::new(Walk {
            map: self,
            snap,
            range,
            done: false,
        })
    }
}

/// A range of a [`Map`]: stops at the first failure, which it keeps.
struct Walk<'a, K, V> {
    map: &'a Map<K, V>,
    snap: Snapshot<'a>,
    range: crate::store::Range<'a>,
    done: bool,
}

impl<K, V> Iterator for Walk<'_, K, V> {
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        if self.done {
            return None;
        }
        let r = match self.range.next()? {
            Ok((k, e)) => (self.map.decode)(
                &self.snap,
                k.get(self.map.prefix.len()..).unwrap_or_default(),
                e.value,
            ),
            Err(e) => Err(e.to_string()),
        };
        match r {
            Ok(kv) => Some(kv),
            Err(e) => {
                self.done = true;
                self.map.failed(e);
                None
            }
        }
    }
}
