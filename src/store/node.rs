//! B+Tree nodes: their page layout, validation, in-place reading, and the
//! decoded form the writer edits.
//!
//! ## Node page layout (after the 32-byte header of `format.rs`)
//!
//! ```text
//! 32            count × u16: offset of entry i within the page, entries in key order
//! ...           free space
//! ..4096        the entries, packed from the end of the page downwards
//! ```
//!
//! Leaf entry:
//!
//! ```text
//! off size field
//!   0    2 key length
//!   2    1 flags: 1 = references a data extent, 2 = value is in an overflow run
//!   3    1 zero
//!   4    4 value length in bytes
//!   8    k key
//!   ..  32 if flag 1: extent first page u64, length in bytes u64, birth u64, xxh3-64 of its bytes u64
//!   ..  24 if flag 2: overflow run: first page u64, birth u64, run checksum u64
//!        v else: the value itself
//! ```
//!
//! Branch entry: child pointer (page u64, birth u64, checksum u64), key
//! length u16, key. Entry i's key is the smallest key that may be found under
//! child i; entry 0's key is empty and means "anything below entry 1".
//!
//! Every reference to a page (child, overflow run, root) carries the birth and
//! checksum the page had when it was written, so a read notices a lost or
//! misdirected write even when the page it finds is itself intact: the tree
//! is a Merkle tree. Recovery relies on this (`txn.rs`).
//!
//! Every non-root node holds at least [`MIN_FILL`] bytes; writes rebalance a
//! node that falls under [`UNDERFULL`].

use crate::store::error::{StoreError, StoreResult};
pub use crate::store::format::Ptr;
use crate::store::format::{
    HEADER_SIZE, KIND_BRANCH, KIND_LEAF, PAGE_SIZE, get_u16, get_u32, get_u64, put_u16, put_u64,
};

/// Bytes available for slots and entries in one node page.
pub const CAPACITY: usize = PAGE_SIZE - HEADER_SIZE;
/// A node under this many bytes is merged with or refilled from a sibling.
pub const UNDERFULL: usize = CAPACITY / 4;
/// What `fsck` demands of every non-root node: rebalancing keeps nodes at or
/// above `UNDERFULL`, except for the bytes a split or rotation can lose by
/// promoting one key.
pub const MIN_FILL: usize = CAPACITY / 8;
/// The longest key.
pub const MAX_KEY: usize = 320;
/// Entries larger than this move their value into an overflow run.
pub const MAX_INLINE_ENTRY: usize = CAPACITY / 4;

const SLOT: usize = 2;
const LEAF_ENTRY_HEADER: usize = 8;
const BRANCH_ENTRY_HEADER: usize = 26;
const EXTENT_REF: usize = 32;
const OVERFLOW_REF: usize = 24;
const FLAG_EXTENT: u8 = 1;
const FLAG_OVERFLOW: u8 = 2;

/// A run of data pages written by the engine for its user, referenced from
/// one entry. `len` is in bytes; the run covers `len.div_ceil(4096)` pages;
/// `sum` is the xxh3-64 of the bytes, checked when they are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    pub page: u64,
    pub len: u64,
    pub birth: u64,
    pub sum: u64,
}

impl Extent {
    pub fn pages(&self) -> u64 {
        self.len.div_ceil(PAGE_SIZE as u64).max(1)
    }
}

/// A value as the writer hands it to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewVal<'a> {
    Inline(&'a [u8]),
    Overflow { run: Ptr, len: u64 },
}

/// Size of a leaf entry (with its slot) holding `val`.
pub fn leaf_entry_size(klen: usize, val: NewVal<'_>, extent: bool) -> usize {
    SLOT + LEAF_ENTRY_HEADER
        + klen
        + if extent { EXTENT_REF } else { 0 }
        + match val {
            NewVal::Inline(v) => v.len(),
            NewVal::Overflow { .. } => OVERFLOW_REF,
        }
}

fn push_leaf_entry(out: &mut Vec<u8>, key: &[u8], val: NewVal<'_>, extent: Option<Extent>) {
    let mut flags = 0;
    if extent.is_some() {
        flags |= FLAG_EXTENT;
    }
    let vlen = match val {
        NewVal::Inline(v) => v.len() as u32,
        NewVal::Overflow { len, .. } => {
            flags |= FLAG_OVERFLOW;
            len as u32
        }
    };
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.push(flags);
    out.push(0);
    out.extend_from_slice(&vlen.to_le_bytes());
    out.extend_from_slice(key);
    if let Some(x) = extent {
        for v in [x.page, x.len, x.birth, x.sum] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    match val {
        NewVal::Inline(v) => out.extend_from_slice(v),
        NewVal::Overflow { run, .. } => push_ptr(out, &run),
    }
}

fn push_branch_entry(out: &mut Vec<u8>, key: &[u8], child: Ptr) {
    push_ptr(out, &child);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
}

fn push_ptr(out: &mut Vec<u8>, p: &Ptr) {
    for v in [p.page, p.birth, p.sum] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_ptr(b: &mut [u8], at: usize, p: &Ptr) {
    put_u64(b, at, p.page);
    put_u64(b, at + 8, p.birth);
    put_u64(b, at + 16, p.sum);
}

fn get_ptr(b: &[u8], at: usize) -> Ptr {
    Ptr {
        page: get_u64(b, at),
        birth: get_u64(b, at + 8),
        sum: get_u64(b, at + 16),
    }
}

/// The length of the entry at the start of `b` (a validated node's entry).
fn entry_len(kind: u8, b: &[u8]) -> usize {
    if kind == KIND_LEAF {
        let kl = get_u16(b, 0) as usize;
        let flags = b[2];
        let mut len = LEAF_ENTRY_HEADER + kl;
        if flags & FLAG_EXTENT != 0 {
            len += EXTENT_REF;
        }
        len + if flags & FLAG_OVERFLOW != 0 {
            OVERFLOW_REF
        } else {
            get_u32(b, 4) as usize
        }
    } else {
        BRANCH_ENTRY_HEADER + get_u16(b, 24) as usize
    }
}

fn entry_key(kind: u8, b: &[u8]) -> &[u8] {
    if kind == KIND_LEAF {
        let kl = get_u16(b, 0) as usize;
        &b[LEAF_ENTRY_HEADER..LEAF_ENTRY_HEADER + kl]
    } else {
        let kl = get_u16(b, 24) as usize;
        &b[BRANCH_ENTRY_HEADER..BRANCH_ENTRY_HEADER + kl]
    }
}

fn parse_leaf_entry(b: &[u8]) -> EntryRef<'_> {
    let kl = get_u16(b, 0) as usize;
    let flags = b[2];
    let vlen = get_u32(b, 4) as usize;
    let key = &b[LEAF_ENTRY_HEADER..LEAF_ENTRY_HEADER + kl];
    let mut p = LEAF_ENTRY_HEADER + kl;
    let extent = if flags & FLAG_EXTENT != 0 {
        let x = Extent {
            page: get_u64(b, p),
            len: get_u64(b, p + 8),
            birth: get_u64(b, p + 16),
            sum: get_u64(b, p + 24),
        };
        p += EXTENT_REF;
        Some(x)
    } else {
        None
    };
    let val = if flags & FLAG_OVERFLOW != 0 {
        ValRef::Overflow {
            run: get_ptr(b, p),
            len: vlen as u64,
        }
    } else {
        ValRef::Inline(&b[p..p + vlen])
    };
    EntryRef { key, val, extent }
}

/// A node the writer edits: its entries in their on-page encoding, appended
/// to one buffer in any order, and a slot list in key order. Edits append
/// and re-point slots; the buffer is compacted when dead bytes pile up, and
/// at commit the live entries are packed into a page.
#[derive(Clone, Debug)]
pub struct Node {
    kind: u8,
    buf: Vec<u8>,
    /// (offset in `buf`, length) of each entry, in key order.
    slots: Vec<(u32, u32)>,
    /// Bytes of live entries.
    live: usize,
}

impl Node {
    pub fn new(leaf: bool) -> Self {
        Node {
            kind: if leaf { KIND_LEAF } else { KIND_BRANCH },
            buf: Vec::new(),
            slots: Vec::new(),
            live: 0,
        }
    }

    /// Copies a page's entries for editing (one copy of the entry area).
    pub fn from_page(p: PageRef<'_>) -> Self {
        let kind = p.bytes[0];
        let n = p.len();
        let low = (0..n).map(|i| p.entry_at(i)).min().unwrap_or(PAGE_SIZE);
        let buf = p.bytes[low..PAGE_SIZE].to_vec();
        let mut live = 0;
        let slots = (0..n)
            .map(|i| {
                let at = p.entry_at(i);
                let len = entry_len(kind, &p.bytes[at..]);
                live += len;
                ((at - low) as u32, len as u32)
            })
            .collect();
        Node {
            kind,
            buf,
            slots,
            live,
        }
    }

    pub fn is_leaf(&self) -> bool {
        self.kind == KIND_LEAF
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Bytes this node takes in a page: slots and entries.
    pub fn size(&self) -> usize {
        self.live + SLOT * self.slots.len()
    }

    fn bytes(&self, i: usize) -> &[u8] {
        let (off, len) = self.slots[i];
        &self.buf[off as usize..(off + len) as usize]
    }

    /// Size of entry i with its slot.
    pub fn entry_size(&self, i: usize) -> usize {
        self.slots[i].1 as usize + SLOT
    }

    pub fn key(&self, i: usize) -> &[u8] {
        entry_key(self.kind, self.bytes(i))
    }

    pub fn entry(&self, i: usize) -> EntryRef<'_> {
        parse_leaf_entry(self.bytes(i))
    }

    pub fn child(&self, i: usize) -> Ptr {
        get_ptr(self.bytes(i), 0)
    }

    pub fn set_child(&mut self, i: usize, p: Ptr) {
        let off = self.slots[i].0 as usize;
        put_ptr(&mut self.buf, off, &p);
    }

    /// In a leaf: `Ok(i)` if key i equals `key`, else `Err(where it would go)`.
    pub fn search(&self, key: &[u8]) -> Result<usize, usize> {
        self.slots.binary_search_by(|&(off, len)| {
            entry_key(self.kind, &self.buf[off as usize..(off + len) as usize]).cmp(key)
        })
    }

    /// In a branch: the child whose range holds `key`.
    pub fn child_index(&self, key: &[u8]) -> usize {
        self.slots[1..].partition_point(|&(off, len)| {
            entry_key(self.kind, &self.buf[off as usize..(off + len) as usize]) <= key
        })
    }

    fn append(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> (u32, u32) {
        let off = self.buf.len();
        write(&mut self.buf);
        let len = self.buf.len() - off;
        self.live += len;
        (off as u32, len as u32)
    }

    pub fn insert_leaf(&mut self, i: usize, key: &[u8], val: NewVal<'_>, extent: Option<Extent>) {
        let slot = self.append(|b| push_leaf_entry(b, key, val, extent));
        self.slots.insert(i, slot);
    }

    pub fn replace_leaf(&mut self, i: usize, key: &[u8], val: NewVal<'_>, extent: Option<Extent>) {
        let slot = self.append(|b| push_leaf_entry(b, key, val, extent));
        self.live -= self.slots[i].1 as usize;
        self.slots[i] = slot;
        self.compact_if_sparse();
    }

    pub fn insert_branch(&mut self, i: usize, key: &[u8], child: Ptr) {
        let slot = self.append(|b| push_branch_entry(b, key, child));
        self.slots.insert(i, slot);
    }

    /// A branch entry's key changes, its child stays.
    pub fn set_key(&mut self, i: usize, key: &[u8]) {
        let child = self.child(i);
        let slot = self.append(|b| push_branch_entry(b, key, child));
        self.live -= self.slots[i].1 as usize;
        self.slots[i] = slot;
        self.compact_if_sparse();
    }

    pub fn remove(&mut self, i: usize) {
        let (_, len) = self.slots.remove(i);
        self.live -= len as usize;
        self.compact_if_sparse();
    }

    /// Appends all of `other`'s entries (which sort after this node's).
    pub fn extend(&mut self, other: &Node) {
        for i in 0..other.len() {
            let b = other.bytes(i);
            let slot = self.append(|out| out.extend_from_slice(b));
            self.slots.push(slot);
        }
    }

    /// Moves entries `k..` into a new node.
    pub fn split_off(&mut self, k: usize) -> Node {
        let mut right = Node::new(self.is_leaf());
        for i in k..self.len() {
            let b = self.bytes(i);
            let off = right.buf.len();
            right.buf.extend_from_slice(b);
            right.slots.push((off as u32, b.len() as u32));
            right.live += b.len();
        }
        for (_, len) in self.slots.drain(k..) {
            self.live -= len as usize;
        }
        self.compact_if_sparse();
        right
    }

    /// Keeps the buffer from growing with edits: dead bytes are dropped once
    /// they outweigh a page.
    fn compact_if_sparse(&mut self) {
        if self.buf.len() <= self.live + PAGE_SIZE {
            return;
        }
        let mut buf = Vec::with_capacity(self.live);
        for slot in &mut self.slots {
            let (off, len) = *slot;
            let new = buf.len() as u32;
            buf.extend_from_slice(&self.buf[off as usize..(off + len) as usize]);
            *slot = (new, len);
        }
        self.buf = buf;
    }

    /// Writes the node into a page (header left for `format::seal`); returns
    /// the kind and entry count for the header.
    pub fn encode(&self, page: &mut [u8]) -> (u8, u16) {
        debug_assert!(self.size() <= CAPACITY, "node of {} bytes", self.size());
        let mut end = PAGE_SIZE;
        for i in 0..self.len() {
            let b = self.bytes(i);
            end -= b.len();
            put_u16(page, HEADER_SIZE + SLOT * i, end as u16);
            page[end..end + b.len()].copy_from_slice(b);
        }
        (self.kind, self.len() as u16)
    }
}

/// A value as a reader finds it: in the page, or a reference to an overflow run.
#[derive(Clone, Copy, Debug)]
pub enum ValRef<'a> {
    Inline(&'a [u8]),
    Overflow { run: Ptr, len: u64 },
}

#[derive(Clone, Copy, Debug)]
pub struct EntryRef<'a> {
    pub key: &'a [u8],
    pub val: ValRef<'a>,
    pub extent: Option<Extent>,
}

/// A node page that passed [`validate`]: its accessors cannot go out of bounds.
#[derive(Clone, Copy)]
pub struct PageRef<'a> {
    pub bytes: &'a [u8],
}

impl<'a> PageRef<'a> {
    pub fn is_leaf(&self) -> bool {
        self.bytes[0] == KIND_LEAF
    }
    pub fn len(&self) -> usize {
        get_u16(self.bytes, 2) as usize
    }
    fn entry_at(&self, i: usize) -> usize {
        get_u16(self.bytes, HEADER_SIZE + SLOT * i) as usize
    }
    pub fn key(&self, i: usize) -> &'a [u8] {
        entry_key(self.bytes[0], &self.bytes[self.entry_at(i)..])
    }
    pub fn child(&self, i: usize) -> Ptr {
        get_ptr(self.bytes, self.entry_at(i))
    }
    pub fn entry(&self, i: usize) -> EntryRef<'a> {
        parse_leaf_entry(&self.bytes[self.entry_at(i)..])
    }

    /// A leaf's search, specialised: one kind check, no dispatch per probe.
    pub fn search_leaf(&self, key: &[u8]) -> Result<usize, usize> {
        let b = self.bytes;
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let at = get_u16(b, HEADER_SIZE + SLOT * mid) as usize;
            let kl = get_u16(b, at) as usize;
            let k = &b[at + LEAF_ENTRY_HEADER..at + LEAF_ENTRY_HEADER + kl];
            match k.cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// A branch's search, specialised likewise.
    pub fn search_branch(&self, key: &[u8]) -> usize {
        let b = self.bytes;
        let (mut lo, mut hi) = (1, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let at = get_u16(b, HEADER_SIZE + SLOT * mid) as usize;
            let kl = get_u16(b, at + 24) as usize;
            let k = &b[at + BRANCH_ENTRY_HEADER..at + BRANCH_ENTRY_HEADER + kl];
            if k <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo - 1
    }

    /// Bytes used by slots and entries.
    pub fn used(&self) -> usize {
        let n = self.len();
        let low = (0..n).map(|i| self.entry_at(i)).min().unwrap_or(PAGE_SIZE);
        SLOT * n + (PAGE_SIZE - low)
    }
}

/// Checks that a node page's slots and entries lie inside the page and are
/// well-formed, so that the accessors of [`PageRef`] cannot panic. The
/// checksum has been checked already; this guards against our own bugs and
/// against damage that happens to keep the checksum.
pub fn validate(bytes: &[u8], id: u64) -> StoreResult<()> {
    let bad = |why: String| Err(StoreError::corrupt(id, why));
    if bytes.len() != PAGE_SIZE {
        return bad("node is not one page".into());
    }
    let kind = bytes[0];
    if kind != KIND_LEAF && kind != KIND_BRANCH {
        return bad(format!("page of kind {kind} where a node was expected"));
    }
    let n = get_u16(bytes, 2) as usize;
    let slots_end = HEADER_SIZE + SLOT * n;
    if slots_end > PAGE_SIZE {
        return bad(format!("{n} entries cannot fit"));
    }
    for i in 0..n {
        let at = get_u16(bytes, HEADER_SIZE + SLOT * i) as usize;
        if at < slots_end {
            return bad(format!("entry {i} overlaps the slot array"));
        }
        let fits = |len: usize| at.checked_add(len).is_some_and(|e| e <= PAGE_SIZE);
        if kind == KIND_LEAF {
            if !fits(LEAF_ENTRY_HEADER) {
                return bad(format!("entry {i} out of bounds"));
            }
            let kl = get_u16(bytes, at) as usize;
            let flags = bytes[at + 2];
            let vlen = get_u32(bytes, at + 4) as usize;
            if kl > MAX_KEY || flags & !(FLAG_EXTENT | FLAG_OVERFLOW) != 0 {
                return bad(format!("entry {i} malformed"));
            }
            let mut len = LEAF_ENTRY_HEADER + kl;
            if flags & FLAG_EXTENT != 0 {
                len += EXTENT_REF;
            }
            len += if flags & FLAG_OVERFLOW != 0 {
                OVERFLOW_REF
            } else {
                vlen
            };
            if !fits(len) {
                return bad(format!("entry {i} out of bounds"));
            }
        } else {
            if !fits(BRANCH_ENTRY_HEADER) {
                return bad(format!("entry {i} out of bounds"));
            }
            let kl = get_u16(bytes, at + 24) as usize;
            if kl > MAX_KEY || !fits(BRANCH_ENTRY_HEADER + kl) {
                return bad(format!("entry {i} out of bounds"));
            }
        }
    }
    if kind == KIND_BRANCH && n == 0 {
        return bad("branch without children".into());
    }
    Ok(())
}

/// A node as the writer sees it: a clean page or its own edited copy.
#[derive(Clone, Copy)]
pub enum NodeRef<'a> {
    Page(PageRef<'a>),
    Mem(&'a Node),
}

impl<'a> NodeRef<'a> {
    pub fn is_leaf(&self) -> bool {
        match self {
            NodeRef::Page(p) => p.is_leaf(),
            NodeRef::Mem(n) => n.is_leaf(),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            NodeRef::Page(p) => p.len(),
            NodeRef::Mem(n) => n.len(),
        }
    }
    pub fn key(&self, i: usize) -> &'a [u8] {
        match self {
            NodeRef::Page(p) => p.key(i),
            NodeRef::Mem(n) => n.key(i),
        }
    }
    pub fn child(&self, i: usize) -> Ptr {
        match self {
            NodeRef::Page(p) => p.child(i),
            NodeRef::Mem(n) => n.child(i),
        }
    }
    pub fn entry(&self, i: usize) -> EntryRef<'a> {
        match self {
            NodeRef::Page(p) => p.entry(i),
            NodeRef::Mem(n) => n.entry(i),
        }
    }

    /// In a leaf: `Ok(i)` if key i equals `key`, else `Err(where it would go)`.
    pub fn search_leaf(&self, key: &[u8]) -> Result<usize, usize> {
        if let NodeRef::Page(p) = self {
            return p.search_leaf(key);
        }
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// In a branch: the child whose range holds `key`.
    pub fn search_branch(&self, key: &[u8]) -> usize {
        if let NodeRef::Page(p) = self {
            return p.search_branch(key);
        }
        // The last entry i >= 1 whose key is <= `key`, or 0.
        let (mut lo, mut hi) = (1, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::{seal, verify_run};

    fn leaf(n: usize) -> Node {
        let mut node = Node::new(true);
        for i in 0..n {
            let key = format!("key{i:04}").into_bytes();
            let inline = vec![i as u8; i];
            let val = if i % 3 == 0 {
                NewVal::Overflow {
                    run: Ptr {
                        page: 100 + i as u64,
                        birth: 2,
                        sum: 77,
                    },
                    len: 5000,
                }
            } else {
                NewVal::Inline(&inline)
            };
            let extent = (i % 2 == 0).then_some(Extent {
                page: 7,
                len: 4096,
                birth: 1,
                sum: 99,
            });
            node.insert_leaf(i, &key, val, extent);
        }
        node
    }

    fn entries(n: NodeRef<'_>) -> Vec<String> {
        (0..n.len()).map(|i| format!("{:?}", n.entry(i))).collect()
    }

    #[test]
    fn leaf_round_trips_through_a_page_and_back() {
        let node = leaf(30);
        let mut page = vec![0u8; PAGE_SIZE];
        let (kind, count) = node.encode(&mut page);
        seal(&mut page, kind, count, 9, 4);
        verify_run(&page, 9, &[KIND_LEAF]).unwrap();
        validate(&page, 9).unwrap();
        let p = PageRef { bytes: &page };
        assert_eq!(entries(NodeRef::Page(p)), entries(NodeRef::Mem(&node)));
        assert_eq!(p.used(), node.size());
        let back = Node::from_page(p);
        assert_eq!(entries(NodeRef::Mem(&back)), entries(NodeRef::Mem(&node)));
        assert_eq!(back.size(), node.size());
        assert_eq!(NodeRef::Page(p).search_leaf(b"key0010"), Ok(10));
        assert_eq!(NodeRef::Page(p).search_leaf(b"key00105"), Err(11));
        assert_eq!(back.search(b"key0010"), Ok(10));
    }

    #[test]
    fn edits_keep_sizes_and_order_and_compact_dead_bytes() {
        let mut node = leaf(10);
        for round in 0..200u8 {
            let v = vec![round; 50];
            node.replace_leaf(3, b"key0003", NewVal::Inline(&v), None);
        }
        assert!(
            node.buf.len() <= node.live + PAGE_SIZE,
            "buffer grew with edits"
        );
        let right = node.split_off(6);
        assert_eq!(node.len(), 6);
        assert_eq!(right.key(0), b"key0006");
        let total: usize = (0..node.len()).map(|i| node.entry_size(i)).sum();
        assert_eq!(total, node.size());
        node.extend(&right);
        assert_eq!(node.len(), 10);
        node.remove(0);
        assert_eq!(node.key(0), b"key0001");
    }

    #[test]
    fn branch_search_finds_the_child_covering_a_key() {
        let mut node = Node::new(false);
        let ptr = |page| Ptr {
            page,
            birth: 1,
            sum: 1,
        };
        node.insert_branch(0, b"", ptr(10));
        node.insert_branch(1, b"m", ptr(11));
        node.insert_branch(2, b"t", ptr(12));
        let r = NodeRef::Mem(&node);
        assert_eq!(r.search_branch(b"a"), 0);
        assert_eq!(r.search_branch(b"m"), 1);
        assert_eq!(r.search_branch(b"s"), 1);
        assert_eq!(r.search_branch(b"z"), 2);
        assert_eq!(node.child_index(b"s"), 1);
        node.set_child(1, ptr(20));
        node.set_key(2, b"u");
        assert_eq!(node.child(1).page, 20);
        assert_eq!(node.key(2), b"u");
        assert_eq!(node.child(2).page, 12);
    }

    #[test]
    fn validate_rejects_garbage_without_panicking() {
        let mut rng = crate::store::backend::SplitMix64(5);
        for _ in 0..20_000 {
            let mut page = vec![0u8; PAGE_SIZE];
            let (kind, count) = leaf(12).encode(&mut page);
            page[0] = kind;
            put_u16(&mut page, 2, count);
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(PAGE_SIZE as u64) as usize;
                page[at] = rng.next_u64() as u8;
            }
            if validate(&page, 1).is_ok() {
                let p = PageRef { bytes: &page };
                for i in 0..p.len() {
                    if p.is_leaf() {
                        let _ = p.entry(i);
                    } else {
                        let _ = p.child(i);
                    }
                    let _ = p.key(i);
                }
                let _ = p.used();
                let _ = Node::from_page(p);
            }
        }
    }
}
