//! A map in layers: a shared, frozen `base` and this map's own changes to
//! it (`over`, where `None` is a key removed). A peer's two trees are two
//! such maps over one base: its local tree differs from its synced one
//! only by what it has not pushed (and the synced one from the base only
//! by what it applied since the last fold), so the volume is held once,
//! not twice ([`fold`]). Between the two, a map may have changes moved
//! out of memory (`mid`, [`Layered::spill`]): a local tree's backlog not
//! yet pushed waits there, in the tree store.
//!
//! The base is either in memory (an `Arc`'d map: cloning a layered map
//! copies only its changes) or a [`Source`] outside it, such as a version
//! of the peer's tree store (`tree/stored/`), read as it is asked for.
//! So reads hand out values, not references: a stored base has none to
//! lend. Reads look in `over` first; iteration merges the two in key
//! order.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

/// A frozen map kept outside memory. A read that fails answers as if the
/// key were not there and says so where the source's owner looks
/// (`Tree::damage`): nothing read after such a failure may be acted on.
pub trait Source<K, V>: Send + Sync {
    fn get(&self, k: &K) -> Option<V>;
    /// Whether `k` is there, without reading its value.
    fn contains(&self, k: &K) -> bool;
    fn len(&self) -> usize;
    /// The entries from `lo` to `hi`, in key order.
    fn range(&self, lo: Bound<&K>, hi: Bound<&K>) -> Box<dyn Iterator<Item = (K, V)> + '_>;
}

/// Spilled changes: a key's value, or `None` for a key removed.
pub type Mid<K, V> = Arc<dyn Source<K, Option<V>>>;

enum Base<K, V> {
    Mem(Arc<BTreeMap<K, V>>),
    Source(Arc<dyn Source<K, V>>),
}

impl<K, V> Clone for Base<K, V> {
    fn clone(&self) -> Self {
        match self {
            Base::Mem(m) => Base::Mem(m.clone()),
            Base::Source(s) => Base::Source(s.clone()),
        }
    }
}

impl<K: Ord + Clone, V: Clone> Base<K, V> {
    fn get(&self, k: &K) -> Option<V> {
        match self {
            Base::Mem(m) => m.get(k).cloned(),
            Base::Source(s) => s.get(k),
        }
    }

    fn contains_key(&self, k: &K) -> bool {
        match self {
            Base::Mem(m) => m.contains_key(k),
            Base::Source(s) => s.contains(k),
        }
    }

    fn len(&self) -> usize {
        match self {
            Base::Mem(m) => m.len(),
            Base::Source(s) => s.len(),
        }
    }

    fn range<'a>(&'a self, lo: Bound<&K>, hi: Bound<&K>) -> Box<dyn Iterator<Item = (K, V)> + 'a> {
        match self {
            Base::Mem(m) => Box::new(
                m.range::<K, _>((lo, hi))
                    .map(|(k, v)| (k.clone(), v.clone())),
            ),
            Base::Source(s) => s.range(lo, hi),
        }
    }

    fn ptr_eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Base::Mem(a), Base::Mem(b)) => Arc::ptr_eq(a, b),
            (Base::Source(a), Base::Source(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
            _ => false,
        }
    }

    /// The base as a map of its own to change: copied if shared, read
    /// whole if it is a source (only a tree without a tree store folds in
    /// memory).
    fn make_mut(&mut self) -> &mut BTreeMap<K, V> {
        if let Base::Source(s) = self {
            let whole: BTreeMap<K, V> = s.range(Bound::Unbounded, Bound::Unbounded).collect();
            *self = Base::Mem(Arc::new(whole));
        }
        match self {
            Base::Mem(m) => Arc::make_mut(m),
            Base::Source(_) => unreachable!("made a map just above"),
        }
    }
}

pub struct Layered<K, V> {
    base: Base<K, V>,
    /// Changes of this map moved out of memory ([`Layered::spill`]),
    /// between `base` and `over`: a value, or `None` for a key removed.
    mid: Option<Mid<K, V>>,
    over: BTreeMap<K, Option<V>>,
    /// Keys in the merged map.
    len: usize,
}

impl<K, V> Default for Layered<K, V> {
    fn default() -> Self {
        Layered {
            base: Base::Mem(Arc::default()),
            mid: None,
            over: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<K: Clone, V: Clone> Clone for Layered<K, V> {
    fn clone(&self) -> Self {
        Layered {
            base: self.base.clone(),
            mid: self.mid.clone(),
            over: self.over.clone(),
            len: self.len,
        }
    }
}

impl<K: Ord + Clone, V: Clone> Layered<K, V> {
    /// A map with `source` as its base and no changes of its own.
    pub fn over_source(source: Arc<dyn Source<K, V>>) -> Self {
        Layered {
            len: source.len(),
            base: Base::Source(source),
            mid: None,
            over: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, k: &K) -> Option<V> {
        match self.over.get(k) {
            Some(v) => v.clone(),
            None => self.below(k),
        }
    }

    pub fn contains_key(&self, k: &K) -> bool {
        match self.over.get(k) {
            Some(v) => v.is_some(),
            None => self.below_contains(k),
        }
    }

    /// The value of `k` under `over`: spilled, or the base's.
    fn below(&self, k: &K) -> Option<V> {
        match self.mid.as_ref().and_then(|m| m.get(k)) {
            Some(v) => v,
            None => self.base.get(k),
        }
    }

    fn below_contains(&self, k: &K) -> bool {
        match self.mid.as_ref().and_then(|m| m.get(k)) {
            Some(v) => v.is_some(),
            None => self.base.contains_key(k),
        }
    }

    /// Whether a spilled change holds `k`.
    pub fn mid_has(&self, k: &K) -> bool {
        self.mid.as_ref().is_some_and(|m| m.contains(k))
    }

    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let old = self.take_value(&k);
        if old.is_none() {
            self.len += 1;
        }
        self.over.insert(k, Some(v));
        old
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let old = self.take_value(k);
        if old.is_some() {
            self.len -= 1;
            if self.below_contains(k) {
                self.over.insert(k.clone(), None);
            } else {
                self.over.remove(k);
            }
        }
        old
    }

    /// The value of `k` as this map has it, moved out of `over` when it is
    /// there (the caller puts something in its place).
    fn take_value(&mut self, k: &K) -> Option<V> {
        match self.over.get_mut(k) {
            Some(v) => v.take(),
            None => self.below(k),
        }
    }

    /// The value of `k` to change in place: copied into `over` first if it
    /// is the base's.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        if !self.over.contains_key(k) {
            let v = self.below(k)?;
            self.over.insert(k.clone(), Some(v));
        }
        self.over.get_mut(k)?.as_mut()
    }

    /// The value of `k` to change in place, made `V::default()` first if
    /// there is none.
    pub fn get_or_default(&mut self, k: &K) -> &mut V
    where
        V: Default,
    {
        if !self.contains_key(k) {
            self.insert(k.clone(), V::default());
        }
        let v = self.get_mut(k);
        // Just put there.
        v.expect("a value was just inserted")
    }

    pub fn iter(&self) -> Merge<'_, K, V> {
        self.range(..)
    }

    pub fn keys(&self) -> impl Iterator<Item = K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    pub fn range<R: RangeBounds<K>>(&self, r: R) -> Merge<'_, K, V> {
        let (lo, hi) = (r.start_bound(), r.end_bound());
        let base = match &self.mid {
            None => self.base.range(lo, hi),
            Some(mid) => Box::new(Merge {
                base: self.base.range(lo, hi).peekable(),
                over: mid.range(lo, hi).peekable(),
            }),
        };
        Merge {
            base: base.peekable(),
            over: (Box::new(
                self.over
                    .range::<K, _>((lo, hi))
                    .map(|(k, v)| (k.clone(), v.clone())),
            ) as Box<dyn Iterator<Item = _>>)
                .peekable(),
        }
    }

    /// The keys this map has changed in memory, since its last fold or
    /// spill (possibly back
    /// to what the base has).
    pub fn changed_keys(&self) -> impl Iterator<Item = &K> {
        self.over.keys()
    }

    /// This map's changes in memory: a value, or `None` for a
    /// key removed.
    pub fn changed(&self) -> impl Iterator<Item = (&K, Option<&V>)> {
        self.over.iter().map(|(k, v)| (k, v.as_ref()))
    }

    /// How many keys this map has changed in memory.
    pub fn changes(&self) -> usize {
        self.over.len()
    }

    /// Whether the two maps have the same value of `k` without reading it:
    /// over one base, with neither changing `k` (`false` says nothing).
    pub fn same_at(&self, other: &Self, k: &K) -> bool {
        self.shares_base(other)
            && !self.over.contains_key(k)
            && !other.over.contains_key(k)
            && !self.mid_has(k)
            && !other.mid_has(k)
    }

    /// Whether the two maps are layered over the same base and the same
    /// spilled changes, so that they differ only in their changed keys.
    pub fn same_base(&self, other: &Self) -> bool {
        self.shares_base(other)
            && match (&self.mid, &other.mid) {
                (None, None) => true,
                (Some(a), Some(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
                _ => false,
            }
    }

    /// Whether the two maps are layered over the same base (their spilled
    /// changes aside).
    pub fn shares_base(&self, other: &Self) -> bool {
        self.base.ptr_eq(&other.base)
    }

    /// Whether some of this map's changes are spilled.
    pub fn is_spilled(&self) -> bool {
        self.mid.is_some()
    }

    /// What [`Layered::spill`] is to move out of memory: each change, and
    /// whether it is the base's value again (then a spilled change of it
    /// is dropped, not kept).
    pub fn to_spill(&self) -> impl Iterator<Item = (&K, Option<&V>, bool)>
    where
        V: PartialEq,
    {
        self.over
            .iter()
            .map(|(k, v)| (k, v.as_ref(), self.base.get(k).as_ref() == v.as_ref()))
    }

    /// Moves this map's changes out of memory: `mid` holds the spilled
    /// changes as they were with these ([`Layered::to_spill`]) over them
    /// (`None`: there are none, every one went back to the base's value).
    /// What the map holds is the same.
    pub fn spill(&mut self, mid: Option<Mid<K, V>>) {
        self.mid = mid;
        self.over.clear();
    }

    /// The keys of the spilled changes, in order.
    pub fn spilled_keys(&self) -> Box<dyn Iterator<Item = K> + '_> {
        match &self.mid {
            Some(m) => Box::new(m.range(Bound::Unbounded, Bound::Unbounded).map(|(k, _)| k)),
            None => Box::new(std::iter::empty()),
        }
    }

    /// Whether the base is kept outside memory.
    pub fn is_sourced(&self) -> bool {
        matches!(self.base, Base::Source(_))
    }

    /// Makes this map's value of `k` what `other` has: by dropping its
    /// own change where `other` has none over the same base, so that the
    /// two hold it once.
    pub fn take_from(&mut self, other: &Self, k: &K) {
        if self.shares_base(other) && !other.over.contains_key(k) && !other.mid_has(k) {
            let was = self.contains_key(k);
            if self.mid_has(k) {
                // The base's value, over the spilled one.
                self.over.insert(k.clone(), self.base.get(k));
            } else {
                self.over.remove(k);
            }
            match (was, self.base.contains_key(k)) {
                (false, true) => self.len += 1,
                (true, false) => self.len -= 1,
                _ => {}
            }
            return;
        }
        match other.get(k) {
            Some(v) => {
                self.insert(k.clone(), v);
            }
            None => {
                self.remove(k);
            }
        }
    }

    /// Moves this map's changes into its base (copied first if another
    /// map shares it; read whole into memory if it is a source).
    pub fn freeze(&mut self) {
        if let Some(mid) = self.mid.take() {
            let base = self.base.make_mut();
            for (k, v) in mid.range(Bound::Unbounded, Bound::Unbounded) {
                match v {
                    Some(v) => base.insert(k, v),
                    None => base.remove(&k),
                };
            }
        }
        if self.over.is_empty() {
            return;
        }
        let base = self.base.make_mut();
        for (k, v) in std::mem::take(&mut self.over) {
            match v {
                Some(v) => base.insert(k, v),
                None => base.remove(&k),
            };
        }
    }

    /// Makes `like`'s base this map's, which must hold what this map
    /// holds but for the keys in `keep` (a fold wrote it), and `mid` its
    /// spilled changes, which must hold what this map's do but for keys in
    /// `keep` (a fold drops those back to the new base's value): the keys
    /// in `keep` stay as this map has them (dropped where the layers below
    /// have the same), every other change in memory goes.
    pub fn rebase_on(&mut self, like: &Self, keep: &[K], mid: Option<Mid<K, V>>)
    where
        V: PartialEq,
    {
        let kept: Vec<(K, Option<V>)> = keep.iter().map(|k| (k.clone(), self.get(k))).collect();
        self.base = like.base.clone();
        self.over.clear();
        if mid.is_some() || self.mid.is_some() {
            // What the map holds is the same: so is its length.
            self.mid = mid;
            for (k, v) in kept {
                if self.below(&k) != v {
                    self.over.insert(k, v);
                }
            }
            return;
        }
        self.len = self.base.len();
        for (k, v) in kept {
            if self.base.get(&k) != v {
                match v {
                    Some(v) => {
                        self.insert(k, v);
                    }
                    None => {
                        self.remove(&k);
                    }
                }
            }
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> Layered<K, V> {
    /// A map equal to this one, layered over `like`'s base: its own
    /// changes are `like`'s and where the two differ. One walk of both.
    pub fn rebased_onto(&self, like: &Self) -> Self {
        let mut out = like.clone();
        let mut a = self.iter().peekable();
        let mut b = like.iter().peekable();
        loop {
            let order = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some((k, v)) = a.next() {
                        out.insert(k, v);
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some((k, _)) = b.next() {
                        out.remove(&k);
                    }
                }
                std::cmp::Ordering::Equal => {
                    if let (Some((k, va)), Some((_, vb))) = (a.next(), b.next())
                        && va != vb
                    {
                        out.insert(k, va);
                    }
                }
            }
        }
        out
    }
}

/// Folds `first`'s changes into the base it shares with `second`, which
/// keeps its own view of every key: what `first` holds only for itself
/// becomes shared, what `second` changed stays changed, and what it changed
/// back to the base's is dropped. Costs what the two changed, unless a
/// third map holds the base too (then the base is copied once). Maps over
/// different bases, or different spilled changes: `first` alone is frozen.
/// In memory: a peer with a tree store folds into it instead
/// (`TreeStore::fold`).
pub fn fold<K: Ord + Clone, V: Clone + PartialEq>(
    first: &mut Layered<K, V>,
    second: &mut Layered<K, V>,
) {
    if !first.same_base(second) {
        first.freeze();
        return;
    }
    let keys: Vec<K> = first.over.keys().cloned().collect();
    let views: Vec<Option<V>> = keys.iter().map(|k| second.get(k)).collect();
    // `second` lets go of the base so that `first` may own it.
    second.base = Base::Mem(Arc::default());
    first.freeze();
    second.base = first.base.clone();
    for (k, view) in keys.into_iter().zip(views) {
        second.over.insert(k, view);
    }
    // And whatever `second` changed back to what the base has.
    let base = &second.base;
    second.over.retain(|k, v| *v != base.get(k));
}

/// Two layers of a [`Layered`] in key order, the upper first.
pub struct Merge<'a, K, V> {
    base: Peekable<Box<dyn Iterator<Item = (K, V)> + 'a>>,
    over: Peekable<Box<dyn Iterator<Item = (K, Option<V>)> + 'a>>,
}

impl<K: Ord, V> Iterator for Merge<'_, K, V> {
    type Item = (K, V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.base.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((b, _)), Some((o, _))) => b.cmp(o),
            };
            if order == std::cmp::Ordering::Equal {
                // The change hides the base's value.
                self.base.next();
            }
            if order != std::cmp::Ordering::Less {
                match self.over.next() {
                    Some((k, Some(v))) => return Some((k, v)),
                    Some((_, None)) => continue,
                    None => return None,
                }
            }
            return self.base.next();
        }
    }
}

impl<'a, K: Ord + Clone, V: Clone> IntoIterator for &'a Layered<K, V> {
    type Item = (K, V);
    type IntoIter = Merge<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for Layered<K, V> {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let base: BTreeMap<K, V> = iter.into_iter().collect();
        Layered {
            len: base.len(),
            base: Base::Mem(Arc::new(base)),
            mid: None,
            over: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> PartialEq for Layered<K, V> {
    fn eq(&self, other: &Self) -> bool {
        if self.len != other.len {
            return false;
        }
        if self.same_base(other) {
            return self
                .over
                .keys()
                .chain(other.over.keys())
                .all(|k| self.get(k) == other.get(k));
        }
        self.iter().eq(other.iter())
    }
}

impl<K: Ord + Clone, V: Clone + Eq> Eq for Layered<K, V> {}

impl<K: Ord + Clone + std::fmt::Debug, V: Clone + std::fmt::Debug> std::fmt::Debug
    for Layered<K, V>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Insert(bool, u8, u8),
        Remove(bool, u8),
        Mutate(bool, u8),
        TakeFrom(bool, u8),
        Fold(bool),
        /// The second map's changes out of memory.
        Spill,
        /// The first map's changes written as a new base, as a tree
        /// store's fold does, and the second map put over it.
        StoreFold,
    }

    /// A map outside memory, for the tests: a copy.
    struct Held<K, V>(BTreeMap<K, V>);

    impl<K: Ord + Clone + Send + Sync, V: Clone + Send + Sync> Source<K, V> for Held<K, V> {
        fn get(&self, k: &K) -> Option<V> {
            self.0.get(k).cloned()
        }
        fn contains(&self, k: &K) -> bool {
            self.0.contains_key(k)
        }
        fn len(&self) -> usize {
            self.0.len()
        }
        fn range(&self, lo: Bound<&K>, hi: Bound<&K>) -> Box<dyn Iterator<Item = (K, V)> + '_> {
            Box::new(self.0.range((lo, hi)).map(|(k, v)| (k.clone(), v.clone())))
        }
    }

    fn spilled(m: &Layered<u8, u8>) -> BTreeMap<u8, Option<u8>> {
        m.mid
            .as_ref()
            .map(|m| m.range(Bound::Unbounded, Bound::Unbounded).collect())
            .unwrap_or_default()
    }

    /// What `TreeStore::spill` does, in memory.
    fn spill(m: &mut Layered<u8, u8>) {
        let mut mid = spilled(m);
        for (k, v, back) in m.to_spill() {
            if back {
                mid.remove(k);
            } else {
                mid.insert(*k, v.copied());
            }
        }
        m.spill((!mid.is_empty()).then(|| Arc::new(Held(mid)) as Mid<u8, u8>));
    }

    /// What `TreeStore::fold` does, in memory: `synced`'s changes become
    /// a new base; `local` goes over it, its spilled changes that are now
    /// the base's value dropped.
    fn store_fold(synced: &mut Layered<u8, u8>, local: &mut Layered<u8, u8>) {
        assert!(!synced.is_spilled());
        let whole: BTreeMap<u8, u8> = synced.iter().collect();
        let new: Layered<u8, u8> = Layered::over_source(Arc::new(Held(whole)));
        if !local.shares_base(synced) {
            *local = local.rebased_onto(&new);
        } else {
            let mut keys: Vec<u8> = synced
                .over
                .keys()
                .chain(local.over.keys())
                .copied()
                .collect();
            keys.sort();
            keys.dedup();
            let mid = local
                .mid
                .is_some()
                .then(|| {
                    let mut mid = spilled(local);
                    for k in &keys {
                        if mid.contains_key(k) && local.get(k) == synced.get(k) {
                            mid.remove(k);
                        }
                    }
                    (!mid.is_empty()).then(|| Arc::new(Held(mid)) as Mid<u8, u8>)
                })
                .flatten();
            local.rebase_on(&new, &keys, mid);
        }
        *synced = new;
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<bool>(), 0..32u8, any::<u8>()).prop_map(|(s, k, v)| Step::Insert(s, k, v)),
            (any::<bool>(), 0..32u8).prop_map(|(s, k)| Step::Remove(s, k)),
            (any::<bool>(), 0..32u8).prop_map(|(s, k)| Step::Mutate(s, k)),
            (any::<bool>(), 0..32u8).prop_map(|(s, k)| Step::TakeFrom(s, k)),
            any::<bool>().prop_map(Step::Fold),
            Just(Step::Spill),
            Just(Step::StoreFold),
        ]
    }

    proptest! {
        /// Two maps over one base behave as two plain maps whatever is
        /// folded when, and iterate, range and count as they do.
        #[test]
        fn two_layered_maps_behave_as_two_plain_maps(
            start in proptest::collection::btree_map(0..32u8, any::<u8>(), 0..16),
            steps in proptest::collection::vec(step(), 0..64),
        ) {
            let base: Layered<u8, u8> = start.clone().into_iter().collect();
            let mut maps = [base.clone(), base];
            let mut models = [start.clone(), start];
            for s in steps {
                match s {
                    Step::Insert(i, k, v) => {
                        let i = i as usize;
                        prop_assert_eq!(maps[i].insert(k, v), models[i].insert(k, v));
                    }
                    Step::Remove(i, k) => {
                        let i = i as usize;
                        prop_assert_eq!(maps[i].remove(&k), models[i].remove(&k));
                    }
                    Step::Mutate(i, k) => {
                        let i = i as usize;
                        if let Some(v) = maps[i].get_mut(&k) {
                            *v = v.wrapping_add(1);
                        }
                        if let Some(v) = models[i].get_mut(&k) {
                            *v = v.wrapping_add(1);
                        }
                    }
                    Step::TakeFrom(i, k) => {
                        let [a, b] = &mut maps;
                        let (to, from) = if i { (a, &*b) } else { (b, &*a) };
                        to.take_from(from, &k);
                        let (mt, mf) = if i { (0, 1) } else { (1, 0) };
                        match models[mf].get(&k).copied() {
                            Some(v) => models[mt].insert(k, v),
                            None => models[mt].remove(&k),
                        };
                    }
                    Step::Fold(first) => {
                        let [a, b] = &mut maps;
                        if first { fold(a, b) } else { fold(b, a) }
                    }
                    Step::Spill => spill(&mut maps[1]),
                    Step::StoreFold => {
                        let [a, b] = &mut maps;
                        if !a.is_spilled() {
                            store_fold(a, b);
                        }
                    }
                }
                for i in 0..2 {
                    let got: Vec<(u8, u8)> = maps[i].iter().collect();
                    let want: Vec<(u8, u8)> = models[i].iter().map(|(k, v)| (*k, *v)).collect();
                    prop_assert_eq!(got, want);
                    prop_assert_eq!(maps[i].len(), models[i].len());
                    let got: Vec<u8> = maps[i].range(8..20).map(|(k, _)| k).collect();
                    let want: Vec<u8> = models[i].range(8..20).map(|(k, _)| *k).collect();
                    prop_assert_eq!(got, want);
                }
                prop_assert_eq!(maps[0] == maps[1], models[0] == models[1]);
                // What the two hold alike without reading is alike.
                for k in 0..32u8 {
                    if maps[0].same_at(&maps[1], &k) {
                        prop_assert_eq!(models[0].get(&k), models[1].get(&k));
                    }
                }
                let moved = maps[0].rebased_onto(&maps[1]);
                prop_assert!(moved.same_base(&maps[1]));
                prop_assert_eq!(&moved, &maps[0]);
            }
        }
    }

    #[test]
    fn a_fold_leaves_the_second_map_only_its_own_changes() {
        let base: Layered<u8, u8> = [(1, 1), (2, 2)].into_iter().collect();
        let (mut synced, mut local) = (base.clone(), base);
        synced.insert(3, 3);
        local.insert(3, 3);
        local.insert(4, 4);
        local.insert(1, 1);
        fold(&mut synced, &mut local);
        assert_eq!(synced.changes(), 0);
        assert_eq!(
            local.changed_keys().copied().collect::<Vec<_>>(),
            [4],
            "1 is the base's"
        );
        assert!(synced.same_base(&local));
    }
}
