//! Reading trees: page access with checksum verification, point lookups and
//! range cursors. The same code serves snapshots (every node a page in the
//! map) and the writer (some nodes its own edited copies).

use std::ops::Bound;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::backend::Backend;
use crate::store::error::{StoreError, StoreResult};
use crate::store::format::{
    FIRST_DATA_PAGE, HEADER_SIZE, KIND_BRANCH, KIND_LEAF, KIND_OVERFLOW, PAGE, PAGE_SIZE, Ptr,
    check_ref, checksum, page_offset, run_span, verify_run,
};
use std::collections::HashMap;

use crate::store::node::{EntryRef, Extent, Node, NodeRef, PageRef, ValRef, validate};

/// Pages whose checksum has been checked since they were last written, one
/// bit each, so a page is hashed once per process and not on every read.
/// Allocated in chunks as the file grows.
pub(crate) struct Verified {
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

const CHUNK_PAGES: u64 = 1 << 15;

impl Verified {
    pub fn new(map_size: u64) -> Self {
        let pages = map_size / PAGE;
        let n = pages.div_ceil(CHUNK_PAGES).max(1) as usize;
        Verified {
            chunks: (0..n).map(|_| OnceLock::new()).collect(),
        }
    }

    fn word(&self, page: u64) -> Option<(&AtomicU64, u64)> {
        let chunk = self.chunks.get((page / CHUNK_PAGES) as usize)?;
        let words =
            chunk.get_or_init(|| (0..CHUNK_PAGES / 64).map(|_| AtomicU64::new(0)).collect());
        let i = page % CHUNK_PAGES;
        Some((&words[(i / 64) as usize], 1u64 << (i % 64)))
    }

    pub fn get(&self, page: u64) -> bool {
        self.word(page)
            .is_some_and(|(w, bit)| w.load(Ordering::Acquire) & bit != 0)
    }

    pub fn set(&self, page: u64, on: bool) {
        if let Some((w, bit)) = self.word(page) {
            if on {
                w.fetch_or(bit, Ordering::AcqRel);
            } else {
                w.fetch_and(!bit, Ordering::AcqRel);
            }
        }
    }
}

/// Read access to committed pages.
#[derive(Clone, Copy)]
pub(crate) struct Pages<'a> {
    pub backend: &'a dyn Backend,
    pub verified: &'a Verified,
}

impl<'a> Pages<'a> {
    /// The node `ptr` refers to, its checksum verified on first use.
    pub fn node(&self, ptr: Ptr) -> StoreResult<PageRef<'a>> {
        self.node_inner(ptr, false)
    }

    /// The node `ptr` refers to, verified now whatever was verified before (for fsck).
    pub fn node_checked(&self, ptr: Ptr) -> StoreResult<PageRef<'a>> {
        self.node_inner(ptr, true)
    }

    fn node_inner(&self, ptr: Ptr, force: bool) -> StoreResult<PageRef<'a>> {
        let id = ptr.page;
        if id < FIRST_DATA_PAGE {
            return Err(StoreError::corrupt(
                id,
                "reference to a commit slot as a node",
            ));
        }
        let bytes = self.backend.read(page_offset(id)?, PAGE_SIZE)?;
        let known =
            !force && self.verified.get(id) && (bytes[0] == KIND_LEAF || bytes[0] == KIND_BRANCH);
        if !known {
            verify_run(bytes, id, &[KIND_LEAF, KIND_BRANCH])?;
            validate(bytes, id)?;
            self.verified.set(id, true);
        }
        check_ref(bytes, &ptr)?;
        Ok(PageRef { bytes })
    }

    /// The bytes of an overflow value of `len` bytes in the run `run` refers to.
    pub fn overflow(&self, run: Ptr, len: u64, force: bool) -> StoreResult<&'a [u8]> {
        let pages = overflow_pages(len);
        if run.page < FIRST_DATA_PAGE {
            return Err(StoreError::corrupt(
                run.page,
                "overflow value in a commit slot",
            ));
        }
        let (off, span) = run_span(run.page, pages)?;
        let bytes = self.backend.read(off, span)?;
        if force || !self.verified.get(run.page) || bytes[0] != KIND_OVERFLOW {
            verify_run(bytes, run.page, &[KIND_OVERFLOW])?;
            self.verified.set(run.page, true);
        }
        check_ref(bytes, &run)?;
        Ok(&bytes[HEADER_SIZE..HEADER_SIZE + len as usize])
    }

    /// An extent's bytes, their checksum verified on first use.
    pub fn extent(&self, e: &Extent, force: bool) -> StoreResult<&'a [u8]> {
        if e.page < FIRST_DATA_PAGE {
            return Err(StoreError::corrupt(e.page, "extent in a commit slot"));
        }
        let len = usize::try_from(e.len)
            .map_err(|_| StoreError::corrupt(e.page, format!("extent of {} bytes", e.len)))?;
        let bytes = self.backend.read(page_offset(e.page)?, len)?;
        if force || !self.verified.get(e.page) {
            if checksum(bytes) != e.sum {
                return Err(StoreError::corrupt(
                    e.page,
                    format!("extent of {} bytes does not match its checksum", e.len),
                ));
            }
            self.verified.set(e.page, true);
        }
        Ok(bytes)
    }
}

/// Pages an overflow value of `len` bytes takes (a length read from a
/// node is at most `u32::MAX`, so this cannot overflow).
pub(crate) fn overflow_pages(len: u64) -> u64 {
    (HEADER_SIZE as u64).saturating_add(len).div_ceil(PAGE)
}

/// One entry as a user sees it: the value's bytes and the extent it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub value: &'a [u8],
    pub extent: Option<Extent>,
}

/// Where a tree's nodes come from: committed pages, and for the writer its
/// own edited nodes, which shadow the pages they replace.
#[derive(Clone, Copy)]
pub(crate) struct Src<'a> {
    pub pages: Pages<'a>,
    pub dirty: Option<&'a HashMap<u64, Node>>,
}

impl<'a> Src<'a> {
    pub fn node(&self, ptr: Ptr) -> StoreResult<NodeRef<'a>> {
        if let Some(n) = self.dirty.and_then(|d| d.get(&ptr.page)) {
            return Ok(NodeRef::Mem(n));
        }
        Ok(NodeRef::Page(self.pages.node(ptr)?))
    }

    pub fn resolve(&self, e: EntryRef<'a>) -> StoreResult<Entry<'a>> {
        let value = match e.val {
            ValRef::Inline(v) => v,
            ValRef::Overflow { run, len } => self.pages.overflow(run, len, false)?,
        };
        Ok(Entry {
            value,
            extent: e.extent,
        })
    }
}

/// How deep a tree may be before we call it a cycle: a 4 KiB-page tree of
/// this height would hold more entries than a 2^64-byte file.
const MAX_DEPTH: usize = 32;

pub(crate) fn get_entry<'a>(
    src: &Src<'a>,
    root: Ptr,
    key: &[u8],
) -> StoreResult<Option<EntryRef<'a>>> {
    if root.is_none() {
        return Ok(None);
    }
    let mut ptr = root;
    for _ in 0..MAX_DEPTH {
        let n = src.node(ptr)?;
        if n.is_leaf() {
            return Ok(n.search_leaf(key).ok().map(|i| n.entry(i)));
        }
        ptr = n.child(n.search_branch(key));
    }
    Err(StoreError::corrupt(
        ptr.page,
        "tree deeper than any real tree",
    ))
}

/// An iterator over the entries of a tree within key bounds, in key order.
pub struct Range<'a> {
    src: Src<'a>,
    stack: Vec<(NodeRef<'a>, usize)>,
    end: Bound<Vec<u8>>,
    done: bool,
}

impl<'a> Range<'a> {
    pub(crate) fn new(
        src: Src<'a>,
        root: Ptr,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> StoreResult<Self> {
        let mut r = Range {
            src,
            stack: Vec::new(),
            end: end.map(|e| e.to_vec()),
            done: root.is_none(),
        };
        if root.is_none() {
            return Ok(r);
        }
        let mut id = root;
        loop {
            if r.stack.len() > MAX_DEPTH {
                return Err(StoreError::corrupt(
                    id.page,
                    "tree deeper than any real tree",
                ));
            }
            let n = r.src.node(id)?;
            if n.is_leaf() {
                let i = match start {
                    Bound::Unbounded => 0,
                    Bound::Included(k) => n.search_leaf(k).unwrap_or_else(|i| i),
                    Bound::Excluded(k) => match n.search_leaf(k) {
                        Ok(i) => i + 1,
                        Err(i) => i,
                    },
                };
                r.stack.push((n, i));
                return Ok(r);
            }
            let i = match start {
                Bound::Unbounded => 0,
                Bound::Included(k) | Bound::Excluded(k) => n.search_branch(k),
            };
            id = n.child(i);
            r.stack.push((n, i));
        }
    }

    fn next_entry(&mut self) -> StoreResult<Option<EntryRef<'a>>> {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            let node = top.0;
            if node.is_leaf() {
                if top.1 < node.len() {
                    let e = node.entry(top.1);
                    top.1 += 1;
                    return Ok(Some(e));
                }
                self.stack.pop();
                continue;
            }
            // A branch whose child `top.1` is done: on to the next child's leftmost leaf.
            top.1 += 1;
            if top.1 >= node.len() {
                self.stack.pop();
                continue;
            }
            let mut id = node.child(top.1);
            loop {
                if self.stack.len() > MAX_DEPTH {
                    return Err(StoreError::corrupt(
                        id.page,
                        "tree deeper than any real tree",
                    ));
                }
                let n = self.src.node(id)?;
                self.stack.push((n, 0));
                if n.is_leaf() {
                    break;
                }
                id = n.child(0);
            }
        }
    }
}

impl<'a> Iterator for Range<'a> {
    type Item = StoreResult<(&'a [u8], Entry<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let e = match self.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(err) => {
                self.done = true;
                return Some(Err(err));
            }
        };
        let past = match &self.end {
            Bound::Unbounded => false,
            Bound::Included(k) => e.key > k.as_slice(),
            Bound::Excluded(k) => e.key >= k.as_slice(),
        };
        if past {
            self.done = true;
            return None;
        }
        Some(self.src.resolve(e).map(|v| (e.key, v)))
    }
}
