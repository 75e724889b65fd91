//! Space: which pages are free, and which wait for old versions to go.
//!
//! A page (or overflow run, or extent) written by txn W and replaced by the
//! commit of version F is seen by exactly the versions W..F-1. It waits in
//! F's *deadlist* until no kept version falls in that interval; then it is
//! free. With the kept versions sorted, that is: free once the newest kept
//! version older than F is older than W. A deadlist sorted by W gives up its
//! free ranges from the end, and only deadlists whose predecessor changed
//! need a look when a version goes (ZFS's deadlists work the same way).
//!
//! Free space is a set of page ranges, allocated best-fit (smallest range
//! that fits, then lowest address), then from the tail of the file (the
//! high-water mark). A write transaction asks first for the pages right
//! after its previous allocation (`alloc_at`) and starts a new run where
//! pages to spare follow it (`alloc_with_room`), so what one commit writes
//! is contiguous where the free space allows. Every allocation and free of
//! a transaction is logged so that an aborted transaction can be undone.
//!
//! ## Saved allocator state (a run of pages written at clean close)
//!
//! ```text
//! 32   8 high-water mark
//! 40   8 number of free ranges R
//! 48  16×R  (first page u64, pages u64)
//! ..   8 number of deadlists D
//!      per deadlist: F u64, number of ranges n u64, n × (W u64, first page u64, pages u64)
//! ```
//!
//! After a crash it is absent (the next commit stops pointing at it) and the
//! engine rebuilds the same state by walking every kept version.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::store::error::{StoreError, StoreResult};
use crate::store::format::{FIRST_DATA_PAGE, HEADER_SIZE, get_u64, put_u64};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Undo {
    Alloc { start: u64, len: u64, old_hwm: u64 },
    Free { start: u64, len: u64 },
}

#[derive(Clone, Debug, Default)]
pub struct Allocator {
    by_start: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    /// The sum of the free ranges: asked after every commit (the room
    /// left), so kept, not summed over a set that pinned versions grow.
    free_total: u64,
    hwm: u64,
    undo: Vec<Undo>,
}

impl Allocator {
    pub fn new(hwm: u64) -> Self {
        Allocator {
            hwm,
            ..Default::default()
        }
    }

    pub fn hwm(&self) -> u64 {
        self.hwm
    }

    pub fn free_pages(&self) -> u64 {
        self.free_total
    }

    pub fn free_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_start.iter().map(|(&s, &l)| (s, l))
    }

    pub fn alloc(&mut self, len: u64) -> u64 {
        self.alloc_with_room(len, 0)
    }

    /// Like `alloc`, but prefers a free range with `room` more pages after
    /// the allocation (left free), so that a caller can continue it with
    /// `alloc_at`; takes the best fit when no range has that room.
    pub fn alloc_with_room(&mut self, len: u64, room: u64) -> u64 {
        debug_assert!(len > 0);
        let old_hwm = self.hwm;
        let roomy = self.by_size.range((len + room, 0)..).next().copied();
        let start = if let Some((flen, fstart)) =
            roomy.or_else(|| self.by_size.range((len, 0)..).next().copied())
        {
            self.remove_free(fstart, flen);
            if flen > len {
                self.insert_free(fstart + len, flen - len);
            }
            fstart
        } else {
            let s = self.hwm;
            self.hwm += len;
            s
        };
        self.undo.push(Undo::Alloc {
            start,
            len,
            old_hwm,
        });
        start
    }

    /// Allocates exactly `[start, start+len)` if it is free, or if it is the
    /// tail and either `grow` or no free range could take `len` pages
    /// (growing the file while free space is left leaves that space unused,
    /// so callers allow it only for a little); false, and nothing changes,
    /// otherwise.
    pub fn alloc_at(&mut self, start: u64, len: u64, grow: bool) -> bool {
        debug_assert!(len > 0);
        let old_hwm = self.hwm;
        if start == self.hwm {
            if !grow && self.by_size.range((len, 0)..).next().is_some() {
                return false;
            }
            self.hwm += len;
        } else {
            match self.by_start.range(..=start).next_back() {
                Some((&fs, &fl)) if fs + fl >= start + len => self.carve(start, len),
                _ => return false,
            }
        }
        self.undo.push(Undo::Alloc {
            start,
            len,
            old_hwm,
        });
        true
    }

    pub fn free(&mut self, start: u64, len: u64) {
        debug_assert!(len > 0 && start + len <= self.hwm);
        debug_assert!(
            !self.any_free(start, len),
            "double free of pages {start}+{len}"
        );
        self.undo.push(Undo::Free { start, len });
        self.free_coalescing(start, len);
    }

    fn free_coalescing(&mut self, mut start: u64, mut len: u64) {
        if let Some((&ps, &pl)) = self.by_start.range(..start).next_back()
            && ps + pl == start
        {
            self.remove_free(ps, pl);
            start = ps;
            len += pl;
        }
        if let Some(&nl) = self.by_start.get(&(start + len)) {
            self.remove_free(start + len, nl);
            len += nl;
        }
        self.insert_free(start, len);
    }

    fn insert_free(&mut self, start: u64, len: u64) {
        self.by_start.insert(start, len);
        self.by_size.insert((len, start));
        self.free_total += len;
    }

    fn remove_free(&mut self, start: u64, len: u64) {
        if self.by_start.remove(&start).is_some() {
            self.free_total -= len;
        }
        self.by_size.remove(&(len, start));
    }

    /// Takes `[start, start+len)` out of the free set; it must be free.
    fn carve(&mut self, start: u64, len: u64) {
        let (fs, fl) = match self.by_start.range(..=start).next_back() {
            Some((&fs, &fl)) if fs + fl >= start + len => (fs, fl),
            _ => {
                debug_assert!(false, "carving pages {start}+{len} that are not free");
                return;
            }
        };
        self.remove_free(fs, fl);
        if fs < start {
            self.insert_free(fs, start - fs);
        }
        if fs + fl > start + len {
            self.insert_free(start + len, fs + fl - start - len);
        }
    }

    /// Whether any page of `[start, start+len)` is free.
    pub fn any_free(&self, start: u64, len: u64) -> bool {
        self.by_start
            .range(..start.saturating_add(len))
            .next_back()
            .is_some_and(|(&s, &l)| s + l > start)
    }

    /// Forgets the undo log: the transaction committed.
    pub fn settle(&mut self) {
        self.undo.clear();
    }

    /// Undoes every allocation and free since the last `settle`.
    pub fn rollback(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Alloc {
                    start,
                    len,
                    old_hwm,
                } => {
                    if start >= old_hwm {
                        self.hwm = old_hwm;
                    } else {
                        self.free_coalescing(start, len);
                    }
                }
                Undo::Free { start, len } => self.carve(start, len),
            }
        }
    }

    /// Gives free space at the end of the file back to the tail; returns the
    /// new high-water mark.
    pub fn trim_tail(&mut self) -> u64 {
        if let Some((&s, &l)) = self.by_start.iter().next_back()
            && s + l == self.hwm
        {
            self.remove_free(s, l);
            self.hwm = s;
        }
        self.hwm
    }
}

/// One range waiting in a deadlist: born in txn `birth`, pages `[start, start+len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dead {
    pub birth: u64,
    pub start: u64,
    pub len: u64,
}

/// Deadlists keyed by the version whose commit replaced their ranges.
#[derive(Clone, Debug, Default)]
pub struct Deadlists {
    lists: BTreeMap<u64, Vec<Dead>>,
    /// The sum of every range's pages (see `Allocator::free_total`).
    total: u64,
}

impl Deadlists {
    pub fn add(&mut self, freed_by: u64, mut ranges: Vec<Dead>) {
        if ranges.is_empty() {
            return;
        }
        ranges.sort_unstable();
        self.total += ranges.iter().map(|d| d.len).sum::<u64>();
        let list = self.lists.entry(freed_by).or_default();
        list.extend(ranges);
        list.sort_unstable();
    }

    pub fn pages(&self) -> u64 {
        self.total
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Dead)> + '_ {
        self.lists
            .iter()
            .flat_map(|(&f, l)| l.iter().map(move |d| (f, d)))
    }

    /// Takes out every range no kept version can see, looking only at the
    /// deadlists whose freeing version lies in one of `touched` (half-open
    /// intervals `(a, b]`), or at all of them when `touched` is `None`.
    pub fn release(
        &mut self,
        kept: &BTreeSet<u64>,
        touched: Option<&[(u64, u64)]>,
        out: &mut Vec<(u64, u64)>,
    ) {
        let mut fs: Vec<u64> = match touched {
            None => self.lists.keys().copied().collect(),
            Some(iv) => iv
                .iter()
                .flat_map(|&(a, b)| {
                    self.lists
                        .range((Bound::Excluded(a), Bound::Included(b)))
                        .map(|(&f, _)| f)
                })
                .collect(),
        };
        fs.sort_unstable();
        fs.dedup();
        for f in fs {
            let pred = kept.range(..f).next_back().copied();
            let Some(list) = self.lists.get_mut(&f) else {
                continue;
            };
            while let Some(d) = list.last() {
                if pred.is_some_and(|p| p >= d.birth) {
                    break;
                }
                out.push((d.start, d.len));
                self.total -= d.len;
                list.pop();
            }
            if list.is_empty() {
                self.lists.remove(&f);
            }
        }
    }
}

/// Bytes the saved state needs (header included).
pub fn state_size(alloc: &Allocator, dead: &Deadlists) -> usize {
    HEADER_SIZE
        + 8
        + 8
        + 16 * alloc.by_start.len()
        + 8
        + 16 * dead.lists.len()
        + 24 * dead.iter().count()
}

/// Writes the state after the header of `buf` (which is `state_size` or larger).
pub fn encode_state(alloc: &Allocator, dead: &Deadlists, buf: &mut [u8]) {
    let mut at = HEADER_SIZE;
    let mut put = |v: u64| {
        put_u64(buf, at, v);
        at += 8;
    };
    put(alloc.hwm);
    put(alloc.by_start.len() as u64);
    for (&s, &l) in &alloc.by_start {
        put(s);
        put(l);
    }
    put(dead.lists.len() as u64);
    for (&f, list) in &dead.lists {
        put(f);
        put(list.len() as u64);
        for d in list {
            put(d.birth);
            put(d.start);
            put(d.len);
        }
    }
}

/// Reads the saved state held in pages `[page, page+pages)` and gives
/// those pages back: the state after the open that loads it.
///
/// Every page the state names, free or waiting in a deadlist, must be
/// named once, past the commit slots and outside the state's own run: a
/// hostile or stale state that broke this would hand out pages in use (a
/// double free, or a deadlist released over live data). Such a state is
/// corrupt; the caller rebuilds it by walking the versions.
pub fn load_state(buf: &[u8], page: u64, pages: u64) -> StoreResult<(Allocator, Deadlists)> {
    let (mut alloc, dead) = decode_state(buf, page)?;
    let bad = |what: &str| Err(StoreError::corrupt(page, format!("allocator state {what}")));
    if pages == 0 || page.checked_add(pages).is_none_or(|e| e > alloc.hwm) {
        return bad("lies outside the file");
    }
    if alloc.any_free(page, pages) {
        return bad("lists its own pages as free");
    }
    let mut waiting: Vec<(u64, u64)> = dead.iter().map(|(_, d)| (d.start, d.len)).collect();
    waiting.sort_unstable();
    let mut end = FIRST_DATA_PAGE;
    for &(s, l) in &waiting {
        if s < end {
            return bad("has a deadlist range over the slots or another range");
        }
        if alloc.any_free(s, l) {
            return bad("has a deadlist range that is also free");
        }
        if s < page + pages && page < s + l {
            return bad("has a deadlist range over its own pages");
        }
        end = s + l;
    }
    alloc.free(page, pages);
    alloc.settle();
    Ok((alloc, dead))
}

/// Reads a saved state; `page` names the run in errors. Each range is
/// checked on its own and free ranges against each other; `load_state`
/// checks the rest.
fn decode_state(buf: &[u8], page: u64) -> StoreResult<(Allocator, Deadlists)> {
    let mut at = HEADER_SIZE;
    let mut get = || -> StoreResult<u64> {
        if at + 8 > buf.len() {
            return Err(StoreError::corrupt(page, "allocator state truncated"));
        }
        let v = get_u64(buf, at);
        at += 8;
        Ok(v)
    };
    let hwm = get()?;
    let mut alloc = Allocator::new(hwm);
    let n = get()?;
    // Free ranges were written in order of start, never overlap and never
    // take the commit slots; one that starts before the last one ended
    // would make the free set (and its running total) disagree with the
    // file.
    let mut free_end = FIRST_DATA_PAGE;
    for _ in 0..n {
        let (s, l) = (get()?, get()?);
        if l == 0 || s < free_end || s.checked_add(l).is_none_or(|e| e > hwm) {
            return Err(StoreError::corrupt(
                page,
                "allocator state has a bad free range",
            ));
        }
        free_end = s + l;
        alloc.insert_free(s, l);
    }
    let mut dead = Deadlists::default();
    let mut dead_pages: u64 = 0;
    let d = get()?;
    for _ in 0..d {
        let f = get()?;
        let n = get()?;
        let mut list = Vec::new();
        for _ in 0..n {
            let (birth, start, len) = (get()?, get()?, get()?);
            dead_pages = match dead_pages.checked_add(len) {
                Some(t) if len > 0 && start.checked_add(len).is_some_and(|e| e <= hwm) => t,
                _ => {
                    return Err(StoreError::corrupt(
                        page,
                        "allocator state has a bad deadlist range",
                    ));
                }
            };
            list.push(Dead { birth, start, len });
        }
        dead.add(f, list);
    }
    Ok((alloc, dead))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_best_fit_then_from_the_tail_and_coalesces_frees() {
        let mut a = Allocator::new(2);
        let x = a.alloc(4);
        let y = a.alloc(1);
        let z = a.alloc(2);
        assert_eq!((x, y, z), (2, 6, 7));
        a.free(2, 4);
        a.free(7, 2);
        assert_eq!(a.alloc(2), 7, "best fit takes the 2-page hole");
        a.free(7, 2);
        a.free(6, 1);
        assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![(2, 7)]);
        assert_eq!(a.trim_tail(), 2);
    }

    #[test]
    fn alloc_at_continues_into_free_space_and_grows_the_tail_only_when_allowed() {
        let mut a = Allocator::new(2);
        a.alloc(20); // pages 2..22
        a.free(5, 4); // hole 5..9
        a.free(12, 2); // hole 12..14
        assert!(a.alloc_at(5, 3, false), "inside a hole");
        assert!(!a.alloc_at(8, 2, false), "runs past the hole");
        assert!(!a.alloc_at(15, 1, false), "not free");
        assert!(
            !a.alloc_at(22, 1, false),
            "the tail while a hole could take it"
        );
        assert!(a.alloc_at(22, 1, true), "the tail when growing is allowed");
        assert!(a.alloc_at(23, 3, false), "no hole takes 3: the tail");
        assert_eq!(a.hwm(), 26);
        assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![(8, 1), (12, 2)]);
        a.rollback();
        assert_eq!(a.hwm(), 2);
        assert_eq!(a.free_pages(), 0);
    }

    #[test]
    fn the_kept_totals_match_the_ranges_through_allocs_frees_rollbacks_and_releases() {
        let mut a = Allocator::new(0);
        let mut d = Deadlists::default();
        // Settled allocations, and this transaction's allocs and frees.
        let (mut held, mut allocs, mut frees): (Vec<(u64, u64)>, Vec<_>, Vec<_>) =
            (Vec::new(), Vec::new(), Vec::new());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for step in 1..=3000u64 {
            match rand(6) {
                0 | 1 => {
                    let len = 1 + rand(8);
                    allocs.push((a.alloc_with_room(len, rand(4)), len));
                }
                2 | 3 if !held.is_empty() => {
                    let r = held.swap_remove(rand(held.len() as u64) as usize);
                    if rand(2) == 0 {
                        a.free(r.0, r.1);
                        frees.push(r);
                    } else {
                        let dead = Dead {
                            birth: step - 1,
                            start: r.0,
                            len: r.1,
                        };
                        d.add(step, vec![dead]);
                    }
                }
                4 => {
                    let kept: BTreeSet<u64> = [rand(step + 1)].into();
                    let mut out = Vec::new();
                    d.release(&kept, None, &mut out);
                    for (s, l) in out {
                        a.free(s, l);
                    }
                }
                _ => {
                    if rand(3) == 0 {
                        a.rollback();
                        allocs.clear();
                        held.append(&mut frees);
                    } else {
                        a.settle();
                        held.append(&mut allocs);
                        frees.clear();
                    }
                    a.trim_tail();
                }
            }
            assert_eq!(a.free_pages(), a.free_ranges().map(|r| r.1).sum::<u64>());
            assert_eq!(d.pages(), d.iter().map(|(_, r)| r.len).sum::<u64>());
        }
    }

    #[test]
    fn alloc_with_room_prefers_a_hole_with_pages_to_spare() {
        let mut a = Allocator::new(0);
        a.alloc(40);
        a.free(2, 3); // exact fit for 3
        a.free(10, 10); // room for 3 + 7
        assert_eq!(a.alloc_with_room(3, 5), 10, "the hole with room");
        assert_eq!(a.alloc_with_room(3, 50), 2, "no room anywhere: best fit");
        assert_eq!(a.alloc_with_room(8, 0), 40, "nothing fits: the tail");
    }

    #[test]
    fn rollback_restores_the_free_set_and_tail() {
        let mut a = Allocator::new(2);
        a.alloc(10);
        a.free(4, 3);
        a.settle();
        let before: Vec<_> = a.free_ranges().collect();
        let p = a.alloc(2);
        a.free(p, 2);
        a.alloc(5);
        a.free(2, 2);
        a.rollback();
        assert_eq!(a.free_ranges().collect::<Vec<_>>(), before);
        assert_eq!(a.hwm(), 12);
    }

    #[test]
    fn deadlist_range_is_released_once_no_kept_version_sees_it() {
        let mut d = Deadlists::default();
        // Born in 3, replaced by 8: visible to versions 3..=7.
        d.add(
            8,
            vec![
                Dead {
                    birth: 3,
                    start: 100,
                    len: 1,
                },
                Dead {
                    birth: 7,
                    start: 101,
                    len: 1,
                },
            ],
        );
        let mut out = Vec::new();
        let kept: BTreeSet<u64> = [2, 5, 8].into();
        d.release(&kept, None, &mut out);
        assert_eq!(
            out,
            vec![(101, 1)],
            "version 5 still sees the page born in 3"
        );
        out.clear();
        let kept: BTreeSet<u64> = [2, 8].into();
        d.release(&kept, Some(&[(5, 8)]), &mut out);
        assert_eq!(out, vec![(100, 1)]);
        assert_eq!(d.pages(), 0);
    }

    #[test]
    fn saved_state_round_trips() {
        let mut a = Allocator::new(2);
        a.alloc(20);
        a.free(5, 2);
        a.free(10, 1);
        let mut d = Deadlists::default();
        d.add(
            9,
            vec![Dead {
                birth: 4,
                start: 12,
                len: 3,
            }],
        );
        let mut buf = vec![0u8; state_size(&a, &d)];
        encode_state(&a, &d, &mut buf);
        let (a2, d2) = decode_state(&buf, 1).unwrap();
        assert_eq!(
            a2.free_ranges().collect::<Vec<_>>(),
            a.free_ranges().collect::<Vec<_>>()
        );
        assert_eq!(a2.hwm(), a.hwm());
        assert_eq!(d2.iter().collect::<Vec<_>>(), d.iter().collect::<Vec<_>>());
    }

    /// A saved state of these words, after the header.
    fn state(words: &[u64]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_SIZE + 8 * words.len()];
        for (i, w) in words.iter().enumerate() {
            put_u64(&mut buf, HEADER_SIZE + 8 * i, *w);
        }
        buf
    }

    #[test]
    fn a_saved_state_with_overlapping_free_ranges_or_huge_deadlists_is_corrupt() {
        // hwm 100; free 10+20 then 15+5, which lies inside the first.
        assert!(decode_state(&state(&[100, 2, 10, 20, 15, 5, 0]), 1).is_err());
        // The same ranges in order decode.
        let (a, _) = decode_state(&state(&[100, 2, 10, 5, 15, 5, 0]), 1).unwrap();
        assert!(!a.any_free(5, 5) && a.any_free(9, 2) && a.any_free(19, 10));
        assert!(!a.any_free(20, 80));
        // A free range over the commit slots (pages 0 and 1).
        assert!(decode_state(&state(&[100, 1, 1, 5, 0]), 1).is_err());
        // Two deadlist ranges whose lengths add past u64::MAX.
        let big = u64::MAX / 2 + 1;
        let hwm = u64::MAX;
        let words = [hwm, 0, 1, 7, 2, 1, 0, big, 1, 0, big];
        assert!(decode_state(&state(&words), 1).is_err());
    }

    #[test]
    fn a_saved_state_naming_a_page_twice_or_its_own_pages_is_corrupt() {
        // hwm 100, free 10+5; deadlist of version 9: (birth 4, pages 30+3);
        // the state itself in pages 50+2.
        let good = [100, 1, 10, 5, 1, 9, 1, 4, 30, 3];
        let (a, d) = load_state(&state(&good), 50, 2).unwrap();
        assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![(10, 5), (50, 2)]);
        assert_eq!((a.free_pages(), d.pages()), (7, 3));
        let corrupt = |words: &[u64], page, pages| {
            let err = load_state(&state(words), page, pages).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        };
        // Its own pages listed as free.
        corrupt(&good, 12, 2);
        // Its own pages waiting in a deadlist.
        corrupt(&good, 31, 1);
        // Its own run past the end of the file.
        corrupt(&good, 99, 2);
        // A deadlist range that is also free.
        corrupt(&[100, 1, 10, 5, 1, 9, 1, 4, 14, 3], 50, 2);
        // Two deadlist ranges over each other, in different deadlists.
        corrupt(&[100, 0, 2, 9, 1, 4, 30, 3, 11, 1, 8, 32, 1], 50, 2);
        // A deadlist range over the commit slots.
        corrupt(&[100, 0, 1, 9, 1, 4, 1, 3], 50, 2);
        // Released, the good state's ranges free without overlap.
        let (mut a, mut d) = load_state(&state(&good), 50, 2).unwrap();
        let mut out = Vec::new();
        d.release(&BTreeSet::new(), None, &mut out);
        for (s, l) in out {
            a.free(s, l);
        }
        assert_eq!(a.free_pages(), 10);
    }
}
