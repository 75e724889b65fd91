//! A file's blocks and its names as a tree holds them: sorted vectors,
//! sized for a peer that holds two trees of the whole volume.

use std::sync::Arc;

use super::{Hash, Key};

/// A file's blocks by index, in index order: a sorted vector for most
/// files (a map's node would cost a one-block file some 460 bytes where
/// this costs 40), and for a big one the same cut into chunks of
/// `CHUNK` consecutive indices, each shared (`Arc`) between the copies
/// of the list: the synced and the local tree's versions of a big file,
/// and a node copied to change it, then share every chunk the change did
/// not touch. So a change of a few blocks copies and compares a chunk or
/// two, not the whole list ([`changes`]), and each copy still
/// costs about 40 bytes a block (`tests/sync_memory.rs`).
#[derive(Clone, Debug)]
pub struct Blocks(Repr);

#[derive(Clone, Debug)]
enum Repr {
    Flat(Vec<(u64, Hash)>),
    /// (index >> `CHUNK_SHIFT`, the blocks in that range); none empty.
    Chunked(Vec<Chunk>),
}

/// A chunk's number and its blocks, shared between copies of the list.
type Chunk = (u64, Arc<Vec<(u64, Hash)>>);

#[cfg(not(test))]
const CHUNK_SHIFT: u32 = 10;
/// Small in tests, so that small lists are chunked too.
#[cfg(test)]
const CHUNK_SHIFT: u32 = 3;
const CHUNK: usize = 1 << CHUNK_SHIFT;

fn chunk_of(idx: u64) -> u64 {
    idx >> CHUNK_SHIFT
}

type Run = [(u64, Hash)];

impl Default for Blocks {
    fn default() -> Blocks {
        Blocks(Repr::Flat(Vec::new()))
    }
}

/// Sets and clears `sorted` (in index order, one change an index) in `v`:
/// in place where each replaces a block or adds one past the last, else
/// in one merge.
fn set_sorted(v: &mut Vec<(u64, Hash)>, sorted: &[(u64, Option<Hash>)]) {
    let last = v.last().map(|(i, _)| *i);
    let at = |v: &Vec<(u64, Hash)>, i: u64| v.binary_search_by_key(&i, |(j, _)| *j);
    let in_place = sorted.iter().all(|(i, h)| match h {
        Some(_) => at(v, *i).is_ok() || last.is_none_or(|l| *i > l),
        None => at(v, *i).is_err(),
    });
    if in_place {
        for &(i, h) in sorted {
            if let Some(h) = h {
                match at(v, i) {
                    Ok(p) => v[p].1 = h,
                    Err(p) => v.insert(p, (i, h)),
                }
            }
        }
        return;
    }
    let old = std::mem::take(v);
    let mut out = Vec::with_capacity(old.len() + sorted.len());
    let mut new = sorted.iter().copied().peekable();
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
    *v = out;
}

/// Lets go of room a cut or a merge left unused.
fn fit(v: &mut Vec<(u64, Hash)>) {
    if v.capacity() > 2 * v.len() + 4 {
        v.shrink_to_fit();
    }
}

impl Blocks {
    /// The runs of blocks in index order: the list, or its chunks.
    fn runs(&self) -> impl DoubleEndedIterator<Item = &Run> {
        let (flat, chunks): (Option<&Run>, &[Chunk]) = match &self.0 {
            Repr::Flat(v) => (Some(v), &[]),
            Repr::Chunked(c) => (None, c),
        };
        flat.into_iter()
            .chain(chunks.iter().map(|(_, c)| c.as_slice()))
    }

    /// The run `idx` is in or would go in.
    fn run_of(&self, idx: u64) -> Option<&Run> {
        match &self.0 {
            Repr::Flat(v) => Some(v),
            Repr::Chunked(c) => {
                let p = c.binary_search_by_key(&chunk_of(idx), |(k, _)| *k).ok()?;
                Some(&c[p].1)
            }
        }
    }

    /// Flat while short, chunked past twice a chunk, flat again below
    /// one: each list has one form for its length range, and equal
    /// chunked lists have the same chunks.
    fn settle(&mut self) {
        match &mut self.0 {
            Repr::Flat(v) if v.len() > 2 * CHUNK => {
                let v = std::mem::take(v);
                let mut chunks: Vec<Chunk> = Vec::new();
                for (i, h) in v {
                    match chunks.last_mut() {
                        Some((k, c)) if *k == chunk_of(i) => Arc::make_mut(c).push((i, h)),
                        _ => chunks.push((chunk_of(i), Arc::new(vec![(i, h)]))),
                    }
                }
                for (_, c) in &mut chunks {
                    Arc::make_mut(c).shrink_to_fit();
                }
                self.0 = Repr::Chunked(chunks);
            }
            Repr::Flat(v) => fit(v),
            Repr::Chunked(c) => {
                c.retain(|(_, run)| !run.is_empty());
                if c.iter().map(|(_, run)| run.len()).sum::<usize>() < CHUNK {
                    let v: Vec<(u64, Hash)> =
                        c.iter().flat_map(|(_, run)| run.iter().copied()).collect();
                    self.0 = Repr::Flat(v);
                }
            }
        }
    }

    pub fn get(&self, idx: &u64) -> Option<&Hash> {
        let run = self.run_of(*idx)?;
        let p = run.binary_search_by_key(idx, |(i, _)| *i).ok()?;
        Some(&run[p].1)
    }

    pub fn contains_key(&self, idx: &u64) -> bool {
        self.get(idx).is_some()
    }

    /// Sets block `idx`, returning the hash it had.
    pub fn insert(&mut self, idx: u64, h: Hash) -> Option<Hash> {
        let was = self.get(&idx).copied();
        if let Repr::Flat(v) = &mut self.0
            && was.is_none()
            && v.len() < 4
        {
            // Most files have a block or two: no room for four.
            v.reserve_exact(1);
        }
        self.set_many(&[(idx, Some(h))]);
        was
    }

    /// Makes block `idx` a hole, returning the hash it had.
    pub fn remove(&mut self, idx: &u64) -> Option<Hash> {
        let was = self.get(idx).copied();
        if was.is_some() {
            self.set_many(&[(*idx, None)]);
        }
        was
    }

    /// Takes off the blocks at or past `idx`.
    pub fn split_off(&mut self, idx: &u64) -> Blocks {
        let rest: Blocks = self.range(idx..).map(|(i, h)| (*i, *h)).collect();
        self.truncate(*idx);
        rest
    }

    /// Drops the blocks at or past `idx`.
    pub fn truncate(&mut self, idx: u64) {
        match &mut self.0 {
            Repr::Flat(v) => {
                let p = v.partition_point(|(i, _)| *i < idx);
                v.truncate(p);
            }
            Repr::Chunked(c) => {
                let k = chunk_of(idx);
                c.retain(|(ck, _)| *ck <= k);
                if let Some((ck, run)) = c.last_mut()
                    && *ck == k
                {
                    let p = run.partition_point(|(i, _)| *i < idx);
                    if p < run.len() {
                        let run = Arc::make_mut(run);
                        run.truncate(p);
                        fit(run);
                    }
                }
            }
        }
        self.settle();
    }

    /// Sets blocks (`Some`) and makes holes (`None`), the last change of an
    /// index winning; a chunked list copies only the chunks they touch.
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
        match &mut self.0 {
            Repr::Flat(v) => set_sorted(v, &sorted),
            Repr::Chunked(c) => {
                for group in sorted.chunk_by(|a, b| chunk_of(a.0) == chunk_of(b.0)) {
                    let k = chunk_of(group[0].0);
                    match c.binary_search_by_key(&k, |(ck, _)| *ck) {
                        Ok(p) => {
                            let run = Arc::make_mut(&mut c[p].1);
                            set_sorted(run, group);
                            fit(run);
                        }
                        Err(p) => {
                            let mut run = Vec::new();
                            set_sorted(&mut run, group);
                            c.insert(p, (k, Arc::new(run)));
                        }
                    }
                }
            }
        }
        self.settle();
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&u64, &Hash)> {
        self.runs().flat_map(|r| r.iter()).map(|(i, h)| (i, h))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &u64> {
        self.iter().map(|(i, _)| i)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Hash> {
        self.iter().map(|(_, h)| h)
    }

    /// The blocks whose index is in `r`.
    pub fn range(
        &self,
        r: impl std::ops::RangeBounds<u64> + Clone,
    ) -> impl DoubleEndedIterator<Item = (&u64, &Hash)> {
        self.runs()
            .flat_map(move |run| {
                use std::ops::Bound;
                let from = match r.start_bound() {
                    Bound::Included(s) => run.partition_point(|(i, _)| i < s),
                    Bound::Excluded(s) => run.partition_point(|(i, _)| i <= s),
                    Bound::Unbounded => 0,
                };
                let to = match r.end_bound() {
                    Bound::Included(e) => run.partition_point(|(i, _)| i <= e),
                    Bound::Excluded(e) => run.partition_point(|(i, _)| i < e),
                    Bound::Unbounded => run.len(),
                };
                run[from..to.max(from)].iter()
            })
            .map(|(i, h)| (i, h))
    }

    pub fn len(&self) -> usize {
        self.runs().map(<[_]>::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs().all(<[_]>::is_empty)
    }

    pub fn clear(&mut self) {
        self.0 = Repr::Flat(Vec::new());
    }
}

/// What turns `old`'s blocks below `end` into `new`'s (all of which are
/// below `end`): the blocks set, in index order, then the holes made.
/// Chunks the two lists share (or hold equal) are skipped unread, so a
/// change of a few blocks of a big file costs a chunk or two.
pub fn changes(old: &Blocks, new: &Blocks, end: u64) -> Vec<(u64, Option<Hash>)> {
    let mut sets = Vec::new();
    let mut holes = Vec::new();
    let mut walk = |was: &Run, now: &Run| {
        let mut was = was.iter().filter(|(i, _)| *i < end).peekable();
        for (i, h) in now {
            while let Some((gone, _)) = was.next_if(|(j, _)| j < i) {
                holes.push((*gone, None));
            }
            match was.next_if(|(j, _)| j == i) {
                Some((_, o)) if o == h => {}
                _ => sets.push((*i, Some(*h))),
            }
        }
        holes.extend(was.map(|(gone, _)| (*gone, None)));
    };
    match (&old.0, &new.0) {
        (Repr::Chunked(o), Repr::Chunked(n)) => {
            let (mut i, mut j) = (0, 0);
            while i < o.len() || j < n.len() {
                match (o.get(i), n.get(j)) {
                    (Some((a, ca)), Some((b, cb))) if a == b => {
                        if !Arc::ptr_eq(ca, cb) && ca != cb {
                            walk(ca, cb);
                        }
                        i += 1;
                        j += 1;
                    }
                    (Some((a, ca)), Some((b, _))) if a < b => {
                        walk(ca, &[]);
                        i += 1;
                    }
                    (Some((_, ca)), None) => {
                        walk(ca, &[]);
                        i += 1;
                    }
                    (_, Some((_, cb))) => {
                        walk(&[], cb);
                        j += 1;
                    }
                    (None, None) => break,
                }
            }
        }
        (Repr::Flat(o), Repr::Flat(n)) => walk(o, n),
        _ => {
            let was: Vec<(u64, Hash)> = old.range(..end).map(|(i, h)| (*i, *h)).collect();
            let now: Vec<(u64, Hash)> = new.iter().map(|(i, h)| (*i, *h)).collect();
            walk(&was, &now);
        }
    }
    sets.extend(holes);
    sets
}

impl PartialEq for Blocks {
    fn eq(&self, other: &Blocks) -> bool {
        match (&self.0, &other.0) {
            (Repr::Chunked(a), Repr::Chunked(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, ca), (kb, cb))| ka == kb && (Arc::ptr_eq(ca, cb) || ca == cb))
            }
            _ => self.iter().eq(other.iter()),
        }
    }
}

impl Eq for Blocks {}

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
        let mut b = Blocks(Repr::Flat(out));
        b.settle();
        b
    }
}

impl<const N: usize> From<[(u64, Hash); N]> for Blocks {
    fn from(a: [(u64, Hash); N]) -> Blocks {
        a.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Blocks {
    type Item = (&'a u64, &'a Hash);
    type IntoIter = Box<dyn Iterator<Item = (&'a u64, &'a Hash)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
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
            start in proptest::collection::vec((0u64..64, any::<u8>()), 0..60),
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
            // A copy changed shares what it did not change, and compares
            // and diffs as the lists it holds.
            let copy = blocks.clone();
            let mut changed = copy.clone();
            let more: Vec<(u64, Option<Hash>)> = changes.iter().rev().map(|&(i, c)| (i + 3, c)).collect();
            changed.set_many(&more);
            let end = changed.keys().next_back().map_or(0, |i| i + 1);
            let mut back = copy.clone();
            back.truncate(end);
            back.set_many(&super::changes(&copy, &changed, end));
            prop_assert_eq!(flat(&back), flat(&changed));
            prop_assert_eq!(back == changed, true);
            prop_assert_eq!(copy == changed, flat(&copy) == flat(&changed));
            let rest = blocks.split_off(&cut);
            let model_rest = model.split_off(&cut);
            prop_assert_eq!(flat(&blocks), model.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(flat(&rest), model_rest.into_iter().collect::<Vec<_>>());
        }
    }
}
