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
use zippyfs::sync::conf::DEFAULT_SPILL_AT;
use zippyfs::sync::peer::Peer;
use zippyfs::sync::tree::{FileId, Node, ROOT_ID, Tree, TreeStore};

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

/// The bytes a peer keeps whose synced tree is the tree `build` makes,
/// saved into its tree store (`sync::tree::TreeStore`), and whose local
/// tree was read whole from its store, then layered over the synced one
/// as a whole read does (`local::tree_like`). The trees' base is read
/// from the tree store as it is asked for: what stays in memory is what
/// the two trees changed since, and the store's own handles.
fn peer_bytes(build: impl Fn() -> Tree) -> i64 {
    let dir = tempfile::tempdir().unwrap();
    let before = live();
    let trees = TreeStore::open(dir.path()).unwrap();
    let mut peer = Peer::new(2, "p2", build());
    peer.folds_in_store();
    let v = trees
        .fold(&mut peer.synced, &mut peer.local, 0, "saved")
        .unwrap();
    trees.set_named(v);
    let read = build();
    peer.local = read.rebased_onto(&peer.synced);
    drop(read);
    let bytes = live() - before;
    assert!(peer.synced.same_as(&peer.local));
    assert_eq!(
        peer.local.changes() + peer.synced.changes(),
        0,
        "the trees hold nothing of their own"
    );
    assert!(trees.damage().is_none());
    drop(peer);
    bytes
}

/// A volume of `files` one-block files, 100 a directory.
fn volume(files: u64) -> Tree {
    let mut t = Tree::default();
    for d in 0..files / 100 {
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
}

/// Ten times the files cost a peer at most a few bytes a file more: what
/// grows is the tree store's bookkeeping of its pages (a bit a page, and
/// its free space), not the trees.
#[test]
fn a_peers_trees_do_not_grow_with_the_files_of_its_volume() {
    let small = peer_bytes(|| volume(10_000));
    let big = peer_bytes(|| volume(100_000));
    let per_file = (big - small) / 90_000;
    eprintln!(
        "a peer of 10,000 one-block files: {small} bytes; of 100,000: {big} ({per_file} a file more)"
    );
    assert!(per_file <= 16, "{per_file} bytes a file");
    assert!(big <= 4 << 20, "{big} bytes for 100,000 files");
}

#[test]
fn a_peers_trees_do_not_grow_with_the_blocks_of_a_big_file() {
    let file_of = |blocks: u64| {
        move || {
            let mut t = Tree::default();
            t.put_node(10, file(blocks));
            t.link((ROOT_ID, b"disk.img".to_vec()), 10);
            t
        }
    };
    let small = peer_bytes(file_of(100_003));
    let big = peer_bytes(file_of(1_000_003));
    let per_block = (big - small) / 900_000;
    eprintln!(
        "a peer of one file of 100,003 blocks: {small} bytes; of 1,000,003: {big} ({per_block} a block more)"
    );
    assert!(per_block <= 1, "{per_block} bytes a block");
    assert!(big <= 4 << 20, "{big} bytes for 1,000,003 blocks");
}

/// The bytes a peer keeps after it made `files` one-block files it has
/// not pushed (100 a directory, marked as a read marks them), spilling its
/// local tree's changes into its tree store whenever it holds
/// `DEFAULT_SPILL_AT` of them, as a mount does (`-o sync_spill`).
fn backlog_bytes(files: u64) -> i64 {
    let dir = tempfile::tempdir().unwrap();
    let before = live();
    let trees = TreeStore::open(dir.path()).unwrap();
    let mut peer = Peer::new(2, "p2", Tree::default());
    peer.folds_in_store();
    let v = trees
        .fold(&mut peer.synced, &mut peer.local, 0, "saved")
        .unwrap();
    trees.set_named(v);
    peer.mark_read(Default::default());
    let mut spills = 0;
    for d in 0..files / 100 {
        let dir = 1_000_000 + FileId::from(d);
        let mut n = file(0);
        n.meta.kind = Kind::Dir;
        peer.local.put_node(dir, n);
        peer.local
            .link((ROOT_ID, format!("dir-{d:05}").into_bytes()), dir);
        peer.mark([dir]);
        for f in 0..100 {
            let fid = 10 + FileId::from(d * 100 + f);
            peer.local.put_node(fid, file(1));
            peer.local
                .link((dir, format!("file-{f:03}.txt").into_bytes()), fid);
            peer.mark([fid]);
        }
        if peer.local.changes() >= DEFAULT_SPILL_AT {
            let went = trees.spill(&mut peer.local).unwrap();
            peer.spilled(&went);
            spills += 1;
        }
    }
    let bytes = live() - before;
    assert!(spills >= 1, "nothing spilled");
    assert!(peer.has_waiting());
    assert_eq!(peer.local.nodes.len() as u64, files + files / 100 + 1);
    assert!(trees.damage().is_none());
    drop(peer);
    bytes
}

/// Ten times the files made and not yet pushed cost a peer at most a few
/// bytes a file more: past the spill bound they are in its tree store.
#[test]
fn a_backlog_not_yet_pushed_does_not_grow_a_peers_memory() {
    let small = backlog_bytes(20_000);
    let big = backlog_bytes(200_000);
    let per_file = (big - small) / 180_000;
    eprintln!(
        "a backlog of 20,000 new files: {small} bytes; of 200,000: {big} ({per_file} a file more)"
    );
    assert!(per_file <= 16, "{per_file} bytes a file");
    assert!(
        big <= 16 << 20,
        "{big} bytes for a backlog of 200,000 files"
    );
}
