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
    HEADER_SIZE, KIND_BRANCH, KIND_LEAF, PAGE_SIZE, get_u16, get_u32, get_u64, put_u16, put_u32,
    put_u64,
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

/// Where an entry's value lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    Inline(Box<[u8]>),
    Overflow { run: Ptr, len: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafEntry {
    pub key: Box<[u8]>,
    pub val: Val,
    pub extent: Option<Extent>,
}

impl LeafEntry {
    pub fn size(&self) -> usize {
        SLOT + LEAF_ENTRY_HEADER
            + self.key.len()
            + if self.extent.is_some() { EXTENT_REF } else { 0 }
            + match &self.val {
                Val::Inline(v) => v.len(),
                Val::Overflow { .. } => OVERFLOW_REF,
            }
    }
}

/// Size of a leaf entry with an inline value of `vlen` bytes.
pub fn inline_entry_size(klen: usize, vlen: usize, extent: bool) -> usize {
    SLOT + LEAF_ENTRY_HEADER + klen + vlen + if extent { EXTENT_REF } else { 0 }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchEntry {
    pub key: Box<[u8]>,
    pub child: Ptr,
}

impl BranchEntry {
    pub fn size(&self) -> usize {
        SLOT + BRANCH_ENTRY_HEADER + self.key.len()
    }
}

/// A node decoded for editing by the writer.
#[derive(Clone, Debug)]
pub enum Node {
    Leaf(Vec<LeafEntry>),
    Branch(Vec<BranchEntry>),
}

impl Node {
    pub fn size(&self) -> usize {
        match self {
            Node::Leaf(es) => es.iter().map(LeafEntry::size).sum(),
            Node::Branch(es) => es.iter().map(BranchEntry::size).sum(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Node::Leaf(es) => es.len(),
            Node::Branch(es) => es.len(),
        }
    }

    /// Writes the node into a page (header left for `format::seal`); returns
    /// the kind and entry count for the header.
    pub fn encode(&self, page: &mut [u8]) -> (u8, u16) {
        debug_assert!(self.size() <= CAPACITY, "node of {} bytes", self.size());
        let mut end = PAGE_SIZE;
        match self {
            Node::Leaf(es) => {
                for (i, e) in es.iter().enumerate() {
                    let sz = e.size() - SLOT;
                    end -= sz;
                    put_u16(page, HEADER_SIZE + SLOT * i, end as u16);
                    let b = &mut page[end..end + sz];
                    put_u16(b, 0, e.key.len() as u16);
                    let mut flags = 0;
                    if e.extent.is_some() {
                        flags |= FLAG_EXTENT;
                    }
                    if matches!(e.val, Val::Overflow { .. }) {
                        flags |= FLAG_OVERFLOW;
                    }
                    b[2] = flags;
                    b[3] = 0;
                    let vlen = match &e.val {
                        Val::Inline(v) => v.len() as u64,
                        Val::Overflow { len, .. } => *len,
                    };
                    put_u32(b, 4, vlen as u32);
                    let mut at = LEAF_ENTRY_HEADER;
                    b[at..at + e.key.len()].copy_from_slice(&e.key);
                    at += e.key.len();
                    if let Some(x) = e.extent {
                        put_u64(b, at, x.page);
                        put_u64(b, at + 8, x.len);
                        put_u64(b, at + 16, x.birth);
                        put_u64(b, at + 24, x.sum);
                        at += EXTENT_REF;
                    }
                    match &e.val {
                        Val::Inline(v) => b[at..at + v.len()].copy_from_slice(v),
                        Val::Overflow { run, .. } => put_ptr(b, at, run),
                    }
                }
                (KIND_LEAF, es.len() as u16)
            }
            Node::Branch(es) => {
                for (i, e) in es.iter().enumerate() {
                    let sz = e.size() - SLOT;
                    end -= sz;
                    put_u16(page, HEADER_SIZE + SLOT * i, end as u16);
                    let b = &mut page[end..end + sz];
                    put_ptr(b, 0, &e.child);
                    put_u16(b, 24, e.key.len() as u16);
                    b[BRANCH_ENTRY_HEADER..].copy_from_slice(&e.key);
                }
                (KIND_BRANCH, es.len() as u16)
            }
        }
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

impl EntryRef<'_> {
    pub fn to_owned_entry(self) -> LeafEntry {
        LeafEntry {
            key: self.key.into(),
            val: match self.val {
                ValRef::Inline(v) => Val::Inline(v.into()),
                ValRef::Overflow { run, len } => Val::Overflow { run, len },
            },
            extent: self.extent,
        }
    }
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
        let at = self.entry_at(i);
        if self.is_leaf() {
            let kl = get_u16(self.bytes, at) as usize;
            &self.bytes[at + LEAF_ENTRY_HEADER..at + LEAF_ENTRY_HEADER + kl]
        } else {
            let kl = get_u16(self.bytes, at + 24) as usize;
            &self.bytes[at + BRANCH_ENTRY_HEADER..at + BRANCH_ENTRY_HEADER + kl]
        }
    }
    pub fn child(&self, i: usize) -> Ptr {
        get_ptr(self.bytes, self.entry_at(i))
    }
    pub fn entry(&self, i: usize) -> EntryRef<'a> {
        let b = self.bytes;
        let at = self.entry_at(i);
        let kl = get_u16(b, at) as usize;
        let flags = b[at + 2];
        let vlen = get_u32(b, at + 4) as usize;
        let key = &b[at + LEAF_ENTRY_HEADER..at + LEAF_ENTRY_HEADER + kl];
        let mut p = at + LEAF_ENTRY_HEADER + kl;
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

    pub fn decode(&self) -> Node {
        if self.is_leaf() {
            Node::Leaf(
                (0..self.len())
                    .map(|i| self.entry(i).to_owned_entry())
                    .collect(),
            )
        } else {
            Node::Branch(
                (0..self.len())
                    .map(|i| BranchEntry {
                        key: self.key(i).into(),
                        child: self.child(i),
                    })
                    .collect(),
            )
        }
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
            NodeRef::Mem(n) => matches!(n, Node::Leaf(_)),
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
            NodeRef::Mem(Node::Leaf(es)) => &es[i].key,
            NodeRef::Mem(Node::Branch(es)) => &es[i].key,
        }
    }
    pub fn child(&self, i: usize) -> Ptr {
        match self {
            NodeRef::Page(p) => p.child(i),
            NodeRef::Mem(Node::Branch(es)) => es[i].child,
            NodeRef::Mem(Node::Leaf(_)) => Ptr::NONE,
        }
    }
    pub fn entry(&self, i: usize) -> EntryRef<'a> {
        match self {
            NodeRef::Page(p) => p.entry(i),
            NodeRef::Mem(Node::Leaf(es)) => {
                let e = &es[i];
                EntryRef {
                    key: &e.key,
                    val: match &e.val {
                        Val::Inline(v) => ValRef::Inline(v),
                        Val::Overflow { run, len } => ValRef::Overflow {
                            run: *run,
                            len: *len,
                        },
                    },
                    extent: e.extent,
                }
            }
            NodeRef::Mem(Node::Branch(_)) => unreachable!("entry() of a branch"),
        }
    }

    /// In a leaf: `Ok(i)` if key i equals `key`, else `Err(where it would go)`.
    pub fn search_leaf(&self, key: &[u8]) -> Result<usize, usize> {
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
        Node::Leaf(
            (0..n)
                .map(|i| LeafEntry {
                    key: format!("key{i:04}").into_bytes().into(),
                    val: if i % 3 == 0 {
                        Val::Overflow {
                            run: Ptr {
                                page: 100 + i as u64,
                                birth: 2,
                                sum: 77,
                            },
                            len: 5000,
                        }
                    } else {
                        Val::Inline(vec![i as u8; i].into())
                    },
                    extent: (i % 2 == 0).then_some(Extent {
                        page: 7,
                        len: 4096,
                        birth: 1,
                        sum: 99,
                    }),
                })
                .collect(),
        )
    }

    #[test]
    fn leaf_page_round_trips_through_encode_and_validate() {
        let node = leaf(30);
        let mut page = vec![0u8; PAGE_SIZE];
        let (kind, count) = node.encode(&mut page);
        seal(&mut page, kind, count, 9, 4);
        verify_run(&page, 9, &[KIND_LEAF]).unwrap();
        validate(&page, 9).unwrap();
        let p = PageRef { bytes: &page };
        let back = p.decode();
        match (back, node.clone()) {
            (Node::Leaf(a), Node::Leaf(b)) => assert_eq!(a, b),
            _ => panic!("kind changed"),
        }
        assert_eq!(p.used(), node.size());
        assert_eq!(NodeRef::Page(p).search_leaf(b"key0010"), Ok(10));
        assert_eq!(NodeRef::Page(p).search_leaf(b"key00105"), Err(11));
    }

    #[test]
    fn branch_search_finds_the_child_covering_a_key() {
        let node = Node::Branch(vec![
            BranchEntry {
                key: Box::new([]),
                child: Ptr {
                    page: 10,
                    birth: 1,
                    sum: 1,
                },
            },
            BranchEntry {
                key: b"m".to_vec().into(),
                child: Ptr {
                    page: 11,
                    birth: 1,
                    sum: 1,
                },
            },
            BranchEntry {
                key: b"t".to_vec().into(),
                child: Ptr {
                    page: 12,
                    birth: 1,
                    sum: 1,
                },
            },
        ]);
        let r = NodeRef::Mem(&node);
        assert_eq!(r.search_branch(b"a"), 0);
        assert_eq!(r.search_branch(b"m"), 1);
        assert_eq!(r.search_branch(b"s"), 1);
        assert_eq!(r.search_branch(b"z"), 2);
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
            }
        }
    }
}
