//! Walking every kept version: to check the store (`fsck`) and to rebuild
//! the allocator's state after a crash.
//!
//! Versions share subtrees (copy-on-write), and a shared subtree is the same
//! pages in every version that sees it. So the walk goes from the newest
//! version to the oldest and skips any node it has already reached: each
//! distinct page is read once. A page first reached while walking version v
//! (and not from any newer kept version) was replaced after v; it waits in
//! the deadlist of the next newer kept version, exactly as if the allocator
//! had tracked it all along.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;

use crate::store::alloc::{Allocator, Dead, Deadlists};
use crate::store::error::{StoreError, StoreResult};
use crate::store::format::{FIRST_DATA_PAGE, Ptr, Slot};
use crate::store::node::{MIN_FILL, NodeRef, ValRef};
use crate::store::read::{Pages, Range, Src, overflow_pages};
use crate::store::txn::decode_version;
use crate::store::{VersionMeta, WriterState};

/// One thing `fsck` found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The page it concerns, where there is one.
    pub page: Option<u64>,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.page {
            Some(p) => write!(f, "page {p}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    pub versions: usize,
    /// Distinct node pages and overflow runs read and checked.
    pub pages_checked: u64,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for FsckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} versions, {} pages checked, {} problems",
            self.versions,
            self.pages_checked,
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// Reads the version table from the system tree.
pub(crate) fn load_versions(
    pages: Pages<'_>,
    system_root: Ptr,
) -> StoreResult<BTreeMap<u64, VersionMeta>> {
    let src = Src { pages, dirty: None };
    let mut out = BTreeMap::new();
    for item in Range::new(
        src,
        system_root,
        Bound::Included(b"v"),
        Bound::Excluded(b"w"),
    )? {
        let (k, e) = item?;
        let id: [u8; 8] = k
            .get(1..)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| StoreError::corrupt(system_root.page, "malformed version key"))?;
        let id = u64::from_be_bytes(id);
        out.insert(id, decode_version(id, e.value, system_root.page)?);
    }
    Ok(out)
}

/// Something a walk reached for the first time.
enum Found {
    Node { page: u64, birth: u64 },
    Run { page: u64, pages: u64, birth: u64 },
}

/// Told (pages checked, pages in the store) as a walk goes.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

struct Walker<'a> {
    pages: Pages<'a>,
    progress: Option<Progress<'a>>,
    hwm: u64,
    max_birth: u64,
    /// Verify every page even if this process verified it before.
    force: bool,
    marks: Vec<u64>,
    problems: Vec<Problem>,
    checked: u64,
}

impl<'a> Walker<'a> {
    fn new(pages: Pages<'a>, hwm: u64, max_birth: u64, force: bool) -> Self {
        Walker {
            pages,
            progress: None,
            hwm,
            max_birth,
            force,
            marks: vec![0; (hwm as usize).div_ceil(64)],
            problems: Vec::new(),
            checked: 0,
        }
    }

    fn marked(&self, p: u64) -> bool {
        self.marks[(p / 64) as usize] & (1 << (p % 64)) != 0
    }

    fn set(&mut self, p: u64) {
        self.marks[(p / 64) as usize] |= 1 << (p % 64);
    }

    fn problem(&mut self, page: Option<u64>, what: impl Into<String>) {
        self.problems.push(Problem {
            page,
            what: what.into(),
        });
    }

    fn in_bounds(&mut self, page: u64, pages: u64, what: &str) -> bool {
        let ok = page >= FIRST_DATA_PAGE && page.checked_add(pages).is_some_and(|e| e <= self.hwm);
        if !ok {
            self.problem(
                Some(page),
                format!("{what} of {pages} pages lies outside the store"),
            );
        }
        ok
    }

    /// Walks a tree. `strict`: every page must be new (the newest version and
    /// the system tree share nothing, and nothing within them is reached
    /// twice); otherwise reached pages are shared and skipped.
    fn tree(&mut self, root: Ptr, strict: bool, found: &mut dyn FnMut(Found)) {
        if !root.is_none() {
            self.node(root, None, None, 0, true, strict, found);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        ptr: Ptr,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        depth: usize,
        is_root: bool,
        strict: bool,
        found: &mut dyn FnMut(Found),
    ) -> Option<usize> {
        let id = ptr.page;
        if depth > 32 {
            self.problem(Some(id), "tree deeper than any real tree (a cycle?)");
            return None;
        }
        if !self.in_bounds(id, 1, "node") {
            return None;
        }
        if self.marked(id) {
            if strict {
                self.problem(Some(id), "node reached twice");
            }
            return None;
        }
        self.set(id);
        let page = match if self.force {
            self.pages.node_checked(ptr)
        } else {
            self.pages.node(ptr)
        } {
            Ok(p) => p,
            Err(e) => {
                self.problems.push(problem_of(e, id));
                return None;
            }
        };
        self.checked += 1;
        if self.checked.is_multiple_of(1024)
            && let Some(p) = self.progress
        {
            p(self.checked, self.hwm);
        }
        let birth = ptr.birth;
        if birth > self.max_birth {
            self.problem(
                Some(id),
                format!("born in txn {birth}, after the last commit"),
            );
        }
        found(Found::Node { page: id, birth });
        let n = NodeRef::Page(page);
        if !is_root && page.used() < MIN_FILL {
            self.problem(
                Some(id),
                format!(
                    "node holds {} bytes, under the minimum {MIN_FILL}",
                    page.used()
                ),
            );
        }
        self.check_keys(id, n, lo, hi);
        if n.is_leaf() {
            self.leaf_runs(n, strict, found);
            return Some(depth);
        }
        let mut leaf_depth = None;
        for i in 0..n.len() {
            let clo = if i == 0 { lo } else { Some(n.key(i)) };
            let chi = if i + 1 < n.len() {
                Some(n.key(i + 1))
            } else {
                hi
            };
            if let Some(d) = self.node(n.child(i), clo, chi, depth + 1, false, strict, found) {
                if leaf_depth.is_some_and(|l| l != d) {
                    self.problem(Some(id), "leaves at different depths");
                }
                leaf_depth = Some(d);
            }
        }
        leaf_depth
    }

    /// Keys in order, and inside the range the parent gives.
    fn check_keys(&mut self, id: u64, n: NodeRef<'_>, lo: Option<&[u8]>, hi: Option<&[u8]>) {
        let first = if n.is_leaf() { 0 } else { 1 };
        for i in first..n.len() {
            let k = n.key(i);
            if i > first && n.key(i - 1) >= k {
                self.problem(Some(id), format!("keys {} and {i} out of order", i - 1));
            }
            let below = lo.is_some_and(|lo| if n.is_leaf() { k < lo } else { k <= lo });
            if below || hi.is_some_and(|hi| k >= hi) {
                self.problem(
                    Some(id),
                    format!("key {i} outside the range its parent gives"),
                );
            }
        }
    }

    /// A leaf's overflow runs and extents: in bounds, claimed once, checked.
    fn leaf_runs(&mut self, n: NodeRef<'_>, strict: bool, found: &mut dyn FnMut(Found)) {
        for i in 0..n.len() {
            let e = n.entry(i);
            if let ValRef::Overflow { run, len } = e.val {
                let (p, pages) = (run.page, overflow_pages(len));
                if self.in_bounds(p, pages, "overflow value") && self.claim(p, pages, strict) {
                    match self.pages.overflow(run, len, self.force) {
                        Ok(_) => {
                            self.checked += 1;
                            found(Found::Run {
                                page: p,
                                pages,
                                birth: run.birth,
                            });
                        }
                        Err(e) => self.problems.push(problem_of(e, p)),
                    }
                }
            }
            if let Some(x) = e.extent
                && self.in_bounds(x.page, x.pages(), "extent")
                && self.claim(x.page, x.pages(), strict)
            {
                // Extent bytes are read by fsck, not by the rebuild.
                if self.force
                    && let Err(e) = self.pages.extent(&x, true)
                {
                    self.problems.push(problem_of(e, x.page));
                }
                found(Found::Run {
                    page: x.page,
                    pages: x.pages(),
                    birth: x.birth,
                });
            }
        }
    }

    /// Marks a run; false if it was reached before (shared, or a problem).
    fn claim(&mut self, page: u64, pages: u64, strict: bool) -> bool {
        let seen = (page..page + pages).filter(|&p| self.marked(p)).count() as u64;
        if seen == pages && !strict {
            return false;
        }
        if seen > 0 {
            self.problem(
                Some(page),
                format!("run of {pages} pages overlaps pages reached before"),
            );
            return false;
        }
        for p in page..page + pages {
            self.set(p);
        }
        true
    }
}

fn problem_of(e: StoreError, page: u64) -> Problem {
    match e {
        StoreError::Corrupt { page, reason } => Problem {
            page: Some(page),
            what: reason,
        },
        other => Problem {
            page: Some(page),
            what: other.to_string(),
        },
    }
}

/// Walks the newest commit's trees strictly, then older kept versions from
/// newest to oldest, calling `found` with the version whose deadlist a page
/// first reached there belongs to.
fn walk_all(
    w: &mut Walker<'_>,
    slot: &Slot,
    roots: &[(u64, Ptr)],
    found: &mut dyn FnMut(u64, Found),
) {
    w.tree(slot.system_root, true, &mut |_| {});
    w.tree(slot.data_root, true, &mut |_| {});
    let mut next = slot.version;
    for &(id, root) in roots.iter().rev() {
        if id >= slot.version {
            continue;
        }
        w.tree(root, false, &mut |f| found(next, f));
        next = id;
    }
}

/// Rebuilds the free space and deadlists of a store opened after a crash.
pub(crate) fn rebuild<'a>(
    pages: Pages<'a>,
    slot: &Slot,
    versions: &BTreeMap<u64, VersionMeta>,
    progress: Progress<'a>,
) -> StoreResult<(Allocator, Deadlists)> {
    let roots: Vec<(u64, Ptr)> = versions
        .values()
        .map(|m| (m.info.id, m.data_root))
        .collect();
    let mut w = Walker::new(pages, slot.hwm, slot.txn, false);
    w.progress = Some(progress);
    let mut lists: BTreeMap<u64, Vec<Dead>> = BTreeMap::new();
    walk_all(&mut w, slot, &roots, &mut |f, found| {
        let d = match found {
            Found::Node { page, birth } => Dead {
                birth,
                start: page,
                len: 1,
            },
            Found::Run { page, pages, birth } => Dead {
                birth,
                start: page,
                len: pages,
            },
        };
        lists.entry(f).or_default().push(d);
    });
    if let Some(p) = w.problems.first() {
        return Err(StoreError::corrupt(p.page.unwrap_or(0), p.what.clone()));
    }
    let mut alloc = Allocator::new(slot.hwm);
    let mut p = FIRST_DATA_PAGE;
    while p < slot.hwm {
        if w.marked(p) {
            p += 1;
            continue;
        }
        let start = p;
        while p < slot.hwm && !w.marked(p) {
            p += 1;
        }
        alloc.free(start, p - start);
    }
    alloc.settle();
    let mut dead = Deadlists::default();
    for (f, list) in lists {
        dead.add(f, list);
    }
    Ok((alloc, dead))
}

/// Checks every reachable page of every kept version, and that every page
/// below the high-water mark is exactly one of: reachable, free.
pub(crate) fn check<'a>(
    pages: Pages<'a>,
    ws: &WriterState,
    roots: &[(u64, Ptr)],
    progress: Option<Progress<'a>>,
) -> FsckReport {
    let slot = ws.slot;
    let hwm = ws.alloc.hwm();
    let mut w = Walker::new(pages, hwm, slot.txn, true);
    w.progress = progress;
    // The marks once the newest commit's trees are walked tell pages the
    // newest version uses from those only older ones see.
    w.tree(slot.system_root, true, &mut |_| {});
    w.tree(slot.data_root, true, &mut |_| {});
    let newest = w.marks.clone();
    for &(id, root) in roots.iter().rev() {
        if id < slot.version {
            w.tree(root, false, &mut |_| {});
        }
    }
    let in_newest = |p: u64| newest[(p / 64) as usize] & (1 << (p % 64)) != 0;

    let mut free = vec![0u64; (hwm as usize).div_ceil(64)];
    for (s, l) in ws.alloc.free_ranges() {
        if s < FIRST_DATA_PAGE || s + l > hwm {
            w.problem(
                Some(s),
                format!("free range of {l} pages lies outside the store"),
            );
            continue;
        }
        for p in s..s + l {
            free[(p / 64) as usize] |= 1 << (p % 64);
        }
    }
    let is_free = |p: u64| free[(p / 64) as usize] & (1 << (p % 64)) != 0;
    let mut bad = Ranges::default();
    for p in FIRST_DATA_PAGE..hwm {
        if is_free(p) && w.marked(p) {
            bad.add("free but reachable", p);
        }
    }
    for (f, d) in ws.dead.iter() {
        for p in d.start..(d.start + d.len).min(hwm) {
            if !w.marked(p) {
                bad.add("waits to be freed but no kept version reaches it (leak)", p);
            } else if in_newest(p) {
                bad.add("waits to be freed but the newest version uses it", p);
            }
            if is_free(p) {
                bad.add("both free and waiting to be freed", p);
            }
        }
        if f > slot.version {
            w.problem(
                Some(d.start),
                format!("deadlist of version {f}, after the last commit"),
            );
        }
    }
    for p in FIRST_DATA_PAGE..hwm {
        if !is_free(p) && !w.marked(p) {
            bad.add("neither reachable nor free (leak)", p);
        }
    }
    w.problems.extend(bad.into_problems());
    FsckReport {
        versions: roots.len(),
        pages_checked: w.checked,
        problems: w.problems,
    }
}

/// Collapses page-by-page findings into ranges.
#[derive(Default)]
struct Ranges {
    by_what: BTreeMap<&'static str, Vec<(u64, u64)>>,
}

impl Ranges {
    fn add(&mut self, what: &'static str, p: u64) {
        let v = self.by_what.entry(what).or_default();
        match v.last_mut() {
            Some((s, l)) if *s + *l == p => *l += 1,
            _ => v.push((p, 1)),
        }
    }

    fn into_problems(self) -> Vec<Problem> {
        const MAX_PER_KIND: usize = 50;
        let mut out = Vec::new();
        for (what, ranges) in self.by_what {
            for &(s, l) in ranges.iter().take(MAX_PER_KIND) {
                out.push(Problem {
                    page: Some(s),
                    what: if l == 1 {
                        what.to_string()
                    } else {
                        format!("{l} pages from here: {what}")
                    },
                });
            }
            if ranges.len() > MAX_PER_KIND {
                out.push(Problem {
                    page: None,
                    what: format!("{} more ranges: {what}", ranges.len() - MAX_PER_KIND),
                });
            }
        }
        out
    }
}

/// Checks that everything the commit in `slot` wrote reached the disk: every
/// node, overflow run and extent born in its txn, found from the roots
/// through references that name their checksum. A commit is written with a
/// single `fdatasync`, so after a crash its slot may be on disk while some of
/// its pages are not; such a commit is not used.
pub(crate) fn verify_commit(pages: Pages<'_>, slot: &Slot) -> StoreResult<()> {
    fn node(pages: Pages<'_>, ptr: Ptr, txn: u64, depth: usize) -> StoreResult<()> {
        if depth > 32 {
            return Err(StoreError::corrupt(
                ptr.page,
                "tree deeper than any real tree",
            ));
        }
        let n = NodeRef::Page(pages.node_checked(ptr)?);
        for i in 0..n.len() {
            if !n.is_leaf() {
                let c = n.child(i);
                if c.birth == txn {
                    node(pages, c, txn, depth + 1)?;
                }
                continue;
            }
            let e = n.entry(i);
            if let ValRef::Overflow { run, len } = e.val
                && run.birth == txn
            {
                pages.overflow(run, len, true)?;
            }
            if let Some(x) = e.extent
                && x.birth == txn
            {
                pages.extent(&x, true)?;
            }
        }
        Ok(())
    }
    for root in [slot.system_root, slot.data_root] {
        if !root.is_none() && root.birth == slot.txn {
            node(pages, root, slot.txn, 0)?;
        }
    }
    Ok(())
}
