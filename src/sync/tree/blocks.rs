//! A file's blocks and its names as a tree holds them: sorted vectors,
//! sized for a peer that holds two trees of the whole volume.

use super::{Hash, Key};

/// A file's blocks by index, in index order. A sorted vector rather than
/// a map: a peer holds two trees of the whole volume, and a map's node
/// costs a one-block file some 460 bytes where this costs 40, and a big
/// file about twice its 40 bytes a block (`tests/sync_memory.rs`).
/// Inserting inside moves what follows, so many changes go in together
/// ([`Blocks::set_many`]): O(blocks) for an op at most, as the
/// comparisons a changed file's push makes already are, whatever order
/// the op lists them in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blocks(Vec<(u64, Hash)>);

impl Blocks {
    fn at(&self, idx: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&idx, |(i, _)| *i)
    }

    pub fn get(&self, idx: &u64) -> Option<&Hash> {
        self.at(*idx).ok().map(|p| &self.0[p].1)
    }

    pub fn contains_key(&self, idx: &u64) -> bool {
        self.at(*idx).is_ok()
    }

    /// Sets block `idx`, returning the hash it had.
    pub fn insert(&mut self, idx: u64, h: Hash) -> Option<Hash> {
        match self.at(idx) {
            Ok(p) => Some(std::mem::replace(&mut self.0[p].1, h)),
            Err(p) => {
                // Most files have a block or two: no room for four.
                if self.0.len() < 4 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(p, (idx, h));
                None
            }
        }
    }

    /// Makes block `idx` a hole, returning the hash it had.
    pub fn remove(&mut self, idx: &u64) -> Option<Hash> {
        self.at(*idx).ok().map(|p| self.0.remove(p).1)
    }

    /// Takes off the blocks at or past `idx`.
    pub fn split_off(&mut self, idx: &u64) -> Blocks {
        let p = self.0.partition_point(|(i, _)| i < idx);
        let rest = Blocks(self.0.split_off(p));
        self.fit();
        rest
    }

    /// Drops the blocks at or past `idx`.
    pub fn truncate(&mut self, idx: u64) {
        let p = self.0.partition_point(|(i, _)| *i < idx);
        self.0.truncate(p);
        self.fit();
    }

    /// Sets blocks (`Some`) and makes holes (`None`), the last change of an
    /// index winning: each in place where it replaces a block or adds one
    /// past the last, else all in one merge.
    pub fn set_many(&mut self, changes: &[(u64, Option<Hash>)]) {
        let mut sorted: Vec<(u64, Option<Hash>)> = changes.to_vec();
        sorted.sort_by_key(|(i, _)| *i);
        // The last of equal indices wins (the sort is stable).
        sorted.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                earlier.1 = later.1;
                true
            } else {
                false
            }
        });
        let last = self.0.last().map(|(i, _)| *i);
        let in_place = sorted.iter().all(|(i, h)| match h {
            Some(_) => self.at(*i).is_ok() || last.is_none_or(|l| *i > l),
            None => self.at(*i).is_err(),
        });
        if in_place {
            for (i, h) in sorted {
                if let Some(h) = h {
                    self.insert(i, h);
                }
            }
            return;
        }
        let old = std::mem::take(&mut self.0);
        let mut out = Vec::with_capacity(old.len() + sorted.len());
        let mut new = sorted.into_iter().peekable();
        for (i, h) in old {
            while let Some((j, c)) = new.next_if(|(j, _)| *j < i) {
                out.extend(c.map(|c| (j, c)));
            }
            match new.next_if(|(j, _)| *j == i) {
                Some((_, c)) => out.extend(c.map(|c| (i, c))),
                None => out.push((i, h)),
            }
        }
        out.extend(new.filter_map(|(j, c)| c.map(|c| (j, c))));
        self.0 = out;
        self.fit();
    }

    /// Lets go of room a cut or a merge left unused.
    fn fit(&mut self) {
        if self.0.capacity() > 2 * self.0.len() + 4 {
            self.0.shrink_to_fit();
        }
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&u64, &Hash)> {
        self.0.iter().map(|(i, h)| (i, h))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &u64> {
        self.0.iter().map(|(i, _)| i)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Hash> {
        self.0.iter().map(|(_, h)| h)
    }

    /// The blocks whose index is in `r`.
    pub fn range(
        &self,
        r: impl std::ops::RangeBounds<u64>,
    ) -> impl DoubleEndedIterator<Item = (&u64, &Hash)> {
        use std::ops::Bound;
        let from = match r.start_bound() {
            Bound::Included(s) => self.0.partition_point(|(i, _)| i < s),
            Bound::Excluded(s) => self.0.partition_point(|(i, _)| i <= s),
            Bound::Unbounded => 0,
        };
        let to = match r.end_bound() {
            Bound::Included(e) => self.0.partition_point(|(i, _)| i <= e),
            Bound::Excluded(e) => self.0.partition_point(|(i, _)| i < e),
            Bound::Unbounded => self.0.len(),
        };
        self.0[from..to.max(from)].iter().map(|(i, h)| (i, h))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl Extend<(u64, Hash)> for Blocks {
    fn extend<I: IntoIterator<Item = (u64, Hash)>>(&mut self, it: I) {
        let changes: Vec<(u64, Option<Hash>)> = it.into_iter().map(|(i, h)| (i, Some(h))).collect();
        self.set_many(&changes);
    }
}

impl FromIterator<(u64, Hash)> for Blocks {
    /// The last hash given for an index wins, as with a map.
    fn from_iter<I: IntoIterator<Item = (u64, Hash)>>(it: I) -> Blocks {
        let mut v: Vec<(u64, Hash)> = it.into_iter().collect();
        // Stable, so that equal indices keep their order and the last wins.
        v.sort_by_key(|(i, _)| *i);
        let mut out: Vec<(u64, Hash)> = Vec::with_capacity(v.len());
        for (i, h) in v {
            match out.last_mut() {
                Some(last) if last.0 == i => last.1 = h,
                _ => out.push((i, h)),
            }
        }
        out.shrink_to_fit();
        Blocks(out)
    }
}

impl<const N: usize> From<[(u64, Hash); N]> for Blocks {
    fn from(a: [(u64, Hash); N]) -> Blocks {
        a.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Blocks {
    type Item = (&'a u64, &'a Hash);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (u64, Hash)>,
        fn(&'a (u64, Hash)) -> (&'a u64, &'a Hash),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(i, h)| (i, h))
    }
}

#[cfg(test)]
impl std::ops::Index<&u64> for Blocks {
    type Output = Hash;
    fn index(&self, idx: &u64) -> &Hash {
        match self.get(idx) {
            Some(h) => h,
            None => panic!("no block {idx}"),
        }
    }
}

/// A file's names, in order: most files have one, so a vector (one small
/// allocation) rather than a set (a whole node of one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names(Vec<Key>);

impl Names {
    pub(super) fn insert(&mut self, key: Key) {
        if let Err(p) = self.0.binary_search(&key) {
            self.0.reserve_exact(1);
            self.0.insert(p, key);
        }
    }

    pub(super) fn remove(&mut self, key: &Key) {
        if let Ok(p) = self.0.binary_search(key) {
            self.0.remove(p);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Names {
    type Item = &'a Key;
    type IntoIter = std::slice::Iter<'a, Key>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Names {
    type Item = Key;
    type IntoIter = std::vec::IntoIter<Key>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn h(b: u8) -> Hash {
        [b; 32]
    }

    proptest! {
        /// `Blocks` does what the map it replaced did: changes in any
        /// order (repeats, holes, inside and past the end), cuts, ranges.
        #[test]
        fn blocks_are_the_map_they_replaced(
            start in proptest::collection::vec((0u64..64, any::<u8>()), 0..40),
            changes in proptest::collection::vec((0u64..80, proptest::option::of(any::<u8>())), 0..40),
            cut in 0u64..90,
            from in 0u64..90,
        ) {
            let mut model: BTreeMap<u64, Hash> = start.iter().map(|&(i, b)| (i, h(b))).collect();
            let mut blocks: Blocks = start.iter().map(|&(i, b)| (i, h(b))).collect();
            let changes: Vec<(u64, Option<Hash>)> =
                changes.iter().map(|&(i, b)| (i, b.map(h))).collect();
            for (i, c) in &changes {
                match c {
                    Some(c) => model.insert(*i, *c),
                    None => model.remove(i),
                };
            }
            blocks.set_many(&changes);
            let flat = |b: &Blocks| b.iter().map(|(i, h)| (*i, *h)).collect::<Vec<_>>();
            prop_assert_eq!(flat(&blocks), model.clone().into_iter().collect::<Vec<_>>());
            prop_assert_eq!(
                blocks.range(from..).map(|(i, _)| *i).collect::<Vec<_>>(),
                model.range(from..).map(|(i, _)| *i).collect::<Vec<_>>()
            );
            prop_assert_eq!(
                blocks.range(..from).map(|(i, _)| *i).collect::<Vec<_>>(),
                model.range(..from).map(|(i, _)| *i).collect::<Vec<_>>()
            );
            let rest = blocks.split_off(&cut);
            let model_rest = model.split_off(&cut);
            prop_assert_eq!(flat(&blocks), model.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(flat(&rest), model_rest.into_iter().collect::<Vec<_>>());
        }
    }
}
