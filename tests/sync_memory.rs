//! What a syncing peer's trees cost in memory, counted by the allocator
//! (per thread, so other tests cannot disturb it): a peer holds two trees
//! of the whole volume (`sync::peer`), layered over one base, so their
//! bytes per file and per block bound what a volume of so many files
//! costs it. The budgets are
//! the design's (ARCHITECTURE.md, "Sync"), with room for the allocator's
//! rounding; a change that makes a tree grow past them fails here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use zippyfs::fs::Kind;
use zippyfs::sync::peer::Peer;
use zippyfs::sync::tree::{FileId, Node, ROOT_ID, Tree};

struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

// SAFETY: every call is passed to `System` unchanged; the counter is a
// thread-local `Cell` with a const initialiser, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + l.size() as i64));
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = LIVE.try_with(|c| c.set(c.get() - l.size() as i64));
        // SAFETY: `p` came from `System.alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + new as i64 - l.size() as i64));
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> i64 {
    LIVE.with(Cell::get)
}

fn file(blocks: u64) -> Node {
    let mut n = Node::clone(&Tree::default().nodes.get(&ROOT_ID).expect("a root"));
    n.meta.kind = Kind::File;
    n.meta.size = blocks * 65536;
    // Collected, as a file read from the store is (`local::node_of`).
    n.blocks = (0..blocks)
        .map(|i| {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&i.to_le_bytes());
            (i, h)
        })
        .collect();
    n
}

/// The same tree built again, sharing nothing with `t`.
fn copy(t: &Tree) -> Tree {
    let mut c = Tree::empty();
    for (fid, n) in &t.nodes {
        c.put_node(fid, Node::clone(&n));
    }
    for (k, fid) in &t.entries {
        c.link(k, fid);
    }
    c
}

/// The bytes a peer keeps whose synced tree is the tree `build` makes,
/// and whose local tree was read whole from its store, then layered over
/// the synced one as a whole read does (`local::tree_like`).
fn peer_bytes(build: impl FnOnce() -> Tree) -> i64 {
    let before = live();
    let tree = build();
    let read = copy(&tree);
    let mut peer = Peer::new(2, "p2", tree);
    peer.local = read.rebased_onto(&peer.synced);
    drop(read);
    let bytes = live() - before;
    assert!(peer.synced.same_as(&peer.local));
    assert_eq!(
        peer.local.changes(),
        0,
        "the local tree holds nothing of its own"
    );
    drop(peer);
    bytes
}

#[test]
fn a_peer_holds_a_volume_of_small_files_in_at_most_600_bytes_a_file() {
    const FILES: u64 = 100_000;
    let bytes = peer_bytes(|| {
        let mut t = Tree::default();
        // A directory of 100 files each, as a volume has them.
        for d in 0..FILES / 100 {
            let dir = 1_000_000 + FileId::from(d);
            let mut n = file(0);
            n.meta.kind = Kind::Dir;
            t.put_node(dir, n);
            t.link((ROOT_ID, format!("dir-{d:05}").into_bytes()), dir);
            for f in 0..100 {
                let fid = 10 + FileId::from(d * 100 + f);
                t.put_node(fid, file(1));
                t.link((dir, format!("file-{f:03}.txt").into_bytes()), fid);
            }
        }
        t
    });
    let per_file = bytes / (FILES + FILES / 100) as i64;
    eprintln!("a peer of {FILES} one-block files: {bytes} bytes, {per_file} a file");
    assert!(per_file <= 600, "{per_file} bytes a file");
}

#[test]
fn a_peer_holds_a_big_files_blocks_in_at_most_48_bytes_a_block() {
    const BLOCKS: u64 = 1_000_003;
    let bytes = peer_bytes(|| {
        let mut t = Tree::default();
        t.put_node(10, file(BLOCKS));
        t.link((ROOT_ID, b"disk.img".to_vec()), 10);
        t
    });
    let per_block = bytes / BLOCKS as i64;
    eprintln!("a peer of one file of {BLOCKS} blocks: {bytes} bytes, {per_block} a block");
    assert!(per_block <= 48, "{per_block} bytes a block");
}
