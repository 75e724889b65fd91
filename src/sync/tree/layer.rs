//! A map in two layers: a shared, frozen `base` and this map's own
//! changes to it (`over`, where `None` is a key removed). A peer's two
//! trees are two such maps over one base: its local tree differs from its
//! synced one only by what it has not pushed (and the synced one from the
//! base only by what it applied since the last fold), so the volume is
//! held once, not twice ([`fold`]).
//!
//! The base is an `Arc`: cloning a layered map copies only its changes.
//! Reads look in `over` first; iteration merges the two in key order.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::collections::btree_map;
use std::iter::Peekable;
use std::ops::RangeBounds;
use std::sync::Arc;

pub struct Layered<K, V> {
    base: Arc<BTreeMap<K, V>>,
    over: BTreeMap<K, Option<V>>,
    /// Keys in the merged map.
    len: usize,
}

impl<K, V> Default for Layered<K, V> {
    fn default() -> Self {
        Layered {
            base: Arc::default(),
            over: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<K: Clone, V: Clone> Clone for Layered<K, V> {
    fn clone(&self) -> Self {
        Layered {
            base: self.base.clone(),
            over: self.over.clone(),
            len: self.len,
        }
    }
}

impl<K: Ord + Clone, V: Clone> Layered<K, V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.over.get(k) {
            Some(v) => v.as_ref(),
            None => self.base.get(k),
        }
    }

    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get(k).is_some()
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
            if self.base.contains_key(k) {
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
            None => self.base.get(k).cloned(),
        }
    }

    /// The value of `k` to change in place: copied into `over` first if it
    /// is the base's.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        if !self.over.contains_key(k) {
            let v = self.base.get(k)?.clone();
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

    pub fn iter(
        &self,
    ) -> Merge<'_, K, V, btree_map::Iter<'_, K, V>, btree_map::Iter<'_, K, Option<V>>> {
        Merge {
            base: self.base.iter().peekable(),
            over: self.over.iter().peekable(),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    pub fn range<R: RangeBounds<K> + Clone>(
        &self,
        r: R,
    ) -> Merge<'_, K, V, btree_map::Range<'_, K, V>, btree_map::Range<'_, K, Option<V>>> {
        Merge {
            base: self.base.range(r.clone()).peekable(),
            over: self.over.range(r).peekable(),
        }
    }

    /// The keys this map has changed since its last fold (possibly back
    /// to what the base has).
    #[cfg(test)]
    pub fn changed_keys(&self) -> impl Iterator<Item = &K> {
        self.over.keys()
    }

    /// How many keys this map has changed since its last fold.
    pub fn changes(&self) -> usize {
        self.over.len()
    }

    /// Whether the two maps are layered over the same base, so that they
    /// can differ only in their changed keys.
    pub fn same_base(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.base, &other.base)
    }

    /// Makes this map's value of `k` what `other` has: by dropping its
    /// own change where `other` has none over the same base, so that the
    /// two hold it once.
    pub fn take_from(&mut self, other: &Self, k: &K) {
        if self.same_base(other) && !other.over.contains_key(k) {
            let was = self.contains_key(k);
            self.over.remove(k);
            match (was, self.base.contains_key(k)) {
                (false, true) => self.len += 1,
                (true, false) => self.len -= 1,
                _ => {}
            }
            return;
        }
        match other.get(k) {
            Some(v) => {
                self.insert(k.clone(), v.clone());
            }
            None => {
                self.remove(k);
            }
        }
    }

    /// Moves this map's changes into its base (copied first if another
    /// map shares it).
    pub fn freeze(&mut self) {
        if self.over.is_empty() {
            return;
        }
        let base = Arc::make_mut(&mut self.base);
        for (k, v) in std::mem::take(&mut self.over) {
            match v {
                Some(v) => base.insert(k, v),
                None => base.remove(&k),
            };
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
                        out.insert(k.clone(), v.clone());
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some((k, _)) = b.next() {
                        out.remove(k);
                    }
                }
                std::cmp::Ordering::Equal => {
                    if let (Some((k, va)), Some((_, vb))) = (a.next(), b.next())
                        && va != vb
                    {
                        out.insert(k.clone(), va.clone());
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
/// different bases: `first` alone is frozen.
pub fn fold<K: Ord + Clone, V: Clone + PartialEq>(
    first: &mut Layered<K, V>,
    second: &mut Layered<K, V>,
) {
    if !first.same_base(second) {
        first.freeze();
        return;
    }
    let keys: Vec<K> = first.over.keys().cloned().collect();
    let views: Vec<Option<V>> = keys.iter().map(|k| second.get(k).cloned()).collect();
    // `second` lets go of the base so that `first` may own it.
    second.base = Arc::default();
    first.freeze();
    second.base = first.base.clone();
    for (k, view) in keys.into_iter().zip(views) {
        second.over.insert(k, view);
    }
    // And whatever `second` changed back to what the base has.
    let base = &second.base;
    second.over.retain(|k, v| v.as_ref() != base.get(k));
}

/// The two layers of a [`Layered`] in key order, `over` first.
pub struct Merge<'a, K, V, I, J>
where
    I: Iterator<Item = (&'a K, &'a V)>,
    J: Iterator<Item = (&'a K, &'a Option<V>)>,
    K: 'a,
    V: 'a,
{
    base: Peekable<I>,
    over: Peekable<J>,
}

impl<'a, K: Ord + 'a, V: 'a, I, J> Iterator for Merge<'a, K, V, I, J>
where
    I: Iterator<Item = (&'a K, &'a V)>,
    J: Iterator<Item = (&'a K, &'a Option<V>)>,
{
    type Item = (&'a K, &'a V);

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
    type Item = (&'a K, &'a V);
    type IntoIter = Merge<'a, K, V, btree_map::Iter<'a, K, V>, btree_map::Iter<'a, K, Option<V>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for Layered<K, V> {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let base: BTreeMap<K, V> = iter.into_iter().collect();
        Layered {
            len: base.len(),
            base: Arc::new(base),
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

impl<K: Ord + Clone + Borrow<Q>, V: Clone, Q: Ord + ?Sized> std::ops::Index<&Q> for Layered<K, V> {
    type Output = V;

    fn index(&self, k: &Q) -> &V {
        self.get(k).expect("no such key in the map")
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
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<bool>(), 0..32u8, any::<u8>()).prop_map(|(s, k, v)| Step::Insert(s, k, v)),
            (any::<bool>(), 0..32u8).prop_map(|(s, k)| Step::Remove(s, k)),
            (any::<bool>(), 0..32u8).prop_map(|(s, k)| Step::Mutate(s, k)),
            (any::<bool>(), 0..32u8).prop_map(|(s, k)| Step::TakeFrom(s, k)),
            any::<bool>().prop_map(Step::Fold),
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
                }
                for i in 0..2 {
                    let got: Vec<(u8, u8)> = maps[i].iter().map(|(k, v)| (*k, *v)).collect();
                    let want: Vec<(u8, u8)> = models[i].iter().map(|(k, v)| (*k, *v)).collect();
                    prop_assert_eq!(got, want);
                    prop_assert_eq!(maps[i].len(), models[i].len());
                    let got: Vec<u8> = maps[i].range(8..20).map(|(k, _)| *k).collect();
                    let want: Vec<u8> = models[i].range(8..20).map(|(k, _)| *k).collect();
                    prop_assert_eq!(got, want);
                }
                prop_assert_eq!(maps[0] == maps[1], models[0] == models[1]);
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
