//! The tree store against trees kept in memory, and what it does with
//! a damaged value, a restart from an older state, and a whole write.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::super::Node;
use super::format::INLINE_BLOCKS;
use super::*;
use crate::fs::Kind;

fn file(blocks: u64, salt: u8) -> Node {
    let mut n = Node::clone(
        &Tree::default()
            .nodes
            .get(&super::super::ROOT_ID)
            .expect("a root"),
    );
    n.meta.kind = Kind::File;
    n.meta.size = blocks * 65536;
    n.xattrs.insert(b"user.x".to_vec(), vec![salt]);
    n.blocks = (0..blocks).map(|i| (i * 2, [salt ^ i as u8; 32])).collect();
    n
}

/// A fresh tree store holding a tree of file 5 (of `blocks` blocks)
/// named `name` in the root, saved: the store and its version.
fn saved_with_file(blocks: u64, name: &[u8]) -> (tempfile::TempDir, TreeStore, u64) {
    let dir = tempfile::tempdir().unwrap();
    let ts = TreeStore::open(dir.path()).unwrap();
    let (mut synced, mut local) = (Tree::default(), Tree::default());
    synced.put_node(5, file(blocks, 1));
    synced.link((1, name.to_vec()), 5);
    let v = ts.fold(&mut synced, &mut local, 0, "saved").unwrap();
    (dir, ts, v)
}

#[derive(Clone, Debug)]
enum Step {
    /// Which tree (synced or local), file, blocks, salt.
    Put(bool, u8, u64, u8),
    Link(bool, u8, u8),
    Unlink(bool, u8),
    Remove(bool, u8),
    Fold,
    Reopen,
    /// The local tree's changes out of memory.
    Spill,
}

fn step() -> impl Strategy<Value = Step> {
    let blocks = prop_oneof![Just(0u64), Just(1), Just(3), Just(INLINE_BLOCKS as u64 + 5)];
    prop_oneof![
        (any::<bool>(), 2..12u8, blocks, any::<u8>())
            .prop_map(|(t, f, b, s)| Step::Put(t, f, b, s)),
        (any::<bool>(), 2..12u8, 0..4u8).prop_map(|(t, f, n)| Step::Link(t, f, n)),
        (any::<bool>(), 0..4u8).prop_map(|(t, n)| Step::Unlink(t, n)),
        (any::<bool>(), 2..12u8).prop_map(|(t, f)| Step::Remove(t, f)),
        Just(Step::Fold),
        Just(Step::Reopen),
        Just(Step::Spill),
    ]
}

fn apply(t: &mut Tree, s: &Step) {
    match *s {
        Step::Put(_, f, b, salt) => t.put_node(f.into(), file(b, salt)),
        Step::Link(_, f, n) => {
            if t.nodes.contains_key(&f.into()) {
                t.link((1, vec![b'a' + n]), f.into());
            }
        }
        Step::Unlink(_, n) => {
            t.unlink(&(1, vec![b'a' + n]));
        }
        Step::Remove(_, f) => {
            t.remove_file(f.into());
        }
        Step::Fold | Step::Reopen | Step::Spill => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Two trees over a tree store hold what two trees in memory do,
    /// whatever is folded when and however often the store is opened
    /// again from disk (big files' blocks kept apart included), and
    /// the versions before the one named go.
    #[test]
    fn trees_folded_into_the_store_are_the_trees_kept_in_memory(
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut ts = TreeStore::open(dir.path()).unwrap();
        let (mut synced, mut local) = (Tree::default(), Tree::default());
        let (mut ms, mut ml) = (synced.clone(), local.clone());
        for s in &steps {
            match s {
                Step::Put(which, ..) | Step::Link(which, ..) | Step::Unlink(which, ..)
                | Step::Remove(which, ..) => {
                    if *which {
                        apply(&mut synced, s);
                        apply(&mut ms, s);
                    } else {
                        apply(&mut local, s);
                        apply(&mut ml, s);
                    }
                }
                Step::Fold => {
                    let spilled = local.is_spilled();
                    let v = ts.fold(&mut synced, &mut local, ts.named(), "test").unwrap();
                    ts.set_named(v);
                    prop_assert_eq!(synced.changes(), 0);
                    prop_assert!(synced.nodes.shares_base(&local.nodes));
                    let kept: Vec<u64> = ts.store.versions().iter().map(|v| v.id).collect();
                    // The one named, the new one, and the one the spilled
                    // changes were read from (kept until the next fold).
                    prop_assert!(kept.len() <= 2 + usize::from(spilled), "{:?}", kept);
                }
                Step::Reopen => {
                    // What a restart finds: the state saved at the last
                    // fold (the journal brings what came after it).
                    let v = ts.fold(&mut synced, &mut local, ts.named(), "test").unwrap();
                    ts.set_named(v);
                    {
                        // The local tree's own changes, kept across.
                        let own: Vec<FileId> = local
                            .nodes
                            .changed_keys()
                            .copied()
                            .chain(local.nodes.spilled_keys())
                            .collect();
                        drop((synced, local));
                        drop(ts);
                        ts = TreeStore::open(dir.path()).unwrap();
                        ts.set_named(v);
                        synced = ts.tree(v).unwrap();
                        local = ml.rebased_onto(&synced);
                        prop_assert!(own.len() >= local.nodes.changes());
                    }
                }
                Step::Spill => {
                    let went = ts.spill(&mut local).unwrap();
                    prop_assert_eq!(local.changes(), 0);
                    // What differs from the base is named as spilled.
                    let spilled: BTreeSet<FileId> = local.spilled_files().collect();
                    prop_assert!(went.iter().all(|f| spilled.contains(f)));
                    for (f, n) in &ml.nodes {
                        if synced.nodes.get(&f) != Some(n) && !local.nodes.same_at(&synced.nodes, &f) {
                            prop_assert!(spilled.contains(&f), "file {} changed, not spilled", f);
                        }
                    }
                }
            }
            prop_assert_eq!(&synced, &ms);
            prop_assert_eq!(&local, &ml);
            prop_assert!(ts.damage().is_none());
        }
    }
}

/// A fold whose state was never written, then a restart from the state
/// and the journal replayed: the trees are built on the version the
/// state names, the store has a newer one, and the next fold writes the
/// tree whole instead of its changes onto the newer version (where a
/// file made and deleted since would live on).
#[test]
fn a_fold_after_a_restart_from_an_older_version_writes_the_tree_whole() {
    let (dir, ts, v1) = saved_with_file(1, b"kept");
    ts.set_named(v1);
    let mut synced = ts.tree(v1).unwrap();
    let mut local = synced.clone();
    // The journal from here: a file made, folded (the state write
    // fails), then deleted.
    let journal = |t: &mut Tree, step: usize| match step {
        0 => {
            t.put_node(6, file(1, 2));
            t.link((1, b"brief".to_vec()), 6);
        }
        _ => {
            t.remove_file(6);
        }
    };
    journal(&mut synced, 0);
    ts.fold(&mut synced, &mut local, v1, "state not written")
        .unwrap();
    drop((synced, local));
    drop(ts);
    let ts = TreeStore::open(dir.path()).unwrap();
    ts.set_named(v1);
    let mut synced = ts.tree(v1).unwrap();
    let mut local = synced.clone();
    journal(&mut synced, 0);
    journal(&mut synced, 1);
    let v = ts.fold(&mut synced, &mut local, v1, "saved again").unwrap();
    let t = ts.tree(v).unwrap();
    assert_eq!(t.nodes.get(&6), None, "the deleted file lives on");
    assert_eq!(t.entries.get(&(1, b"brief".to_vec())), None);
    assert_eq!((t.nodes.len(), t.entries.len(), t.names.len()), (2, 1, 1));
    assert_eq!(t.nodes.keys().collect::<Vec<_>>(), [1, 5]);
    assert!(ts.damage().is_none());
}

/// A tree written whole clears what the store held, file ids whose
/// first byte is 0xff included.
#[test]
fn a_tree_written_whole_leaves_nothing_of_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let ts = TreeStore::open(dir.path()).unwrap();
    let high: FileId = (0xff << 120) | 5;
    let (mut synced, mut local) = (Tree::default(), Tree::default());
    synced.put_node(high, file(INLINE_BLOCKS as u64 + 3, 1));
    synced.link((1, vec![0xff, 1]), high);
    synced.link((high >> 8 | (0xff << 120), b"x".to_vec()), high);
    ts.fold(&mut synced, &mut local, 0, "first").unwrap();
    let (mut fresh, mut local) = (Tree::default(), Tree::default());
    let v = ts.fold(&mut fresh, &mut local, 0, "whole").unwrap();
    let t = ts.tree(v).unwrap();
    assert_eq!(t.nodes.keys().collect::<Vec<_>>(), [1]);
    assert!(t.entries.is_empty() && t.names.is_empty());
    let snap = ts.store.latest().unwrap();
    let left: Vec<Vec<u8>> = snap
        .range(&b"A"[..]..)
        .unwrap()
        .map(|r| r.unwrap().0.to_vec())
        .filter(|k| k[0] != b'N' && k[0] != b'#')
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A file read twice from the store is decoded once: both reads hand
/// out the same node, so two trees over the base compare it unread.
#[test]
fn a_node_read_again_is_the_same_node() {
    let (_dir, ts, v) = saved_with_file(INLINE_BLOCKS as u64 + 1, b"f");
    let t = ts.tree(v).unwrap();
    let (a, b) = (t.nodes.get(&5).unwrap(), t.nodes.get(&5).unwrap());
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(
        t.nodes.get(&1).map(|n| n.meta.kind),
        Some(crate::fs::Kind::Dir)
    );
    assert_eq!(*t.nodes.get(&5).unwrap(), *a, "read again after another");
}

/// A value that does not decode reads as "not there" and is kept as
/// damage: the owner's check fails, and a fold refuses.
#[test]
fn a_damaged_value_is_kept_as_damage_and_stops_a_fold() {
    let (_dir, ts, v) = saved_with_file(2, b"f");
    let mut txn = ts.store.begin_write().unwrap();
    txn.put(&node_key(5), b"not a node").unwrap();
    let bad = txn.commit("damage").unwrap().id;
    let mut t = ts.tree(bad).unwrap();
    assert!(ts.check().is_ok());
    assert_eq!(t.nodes.get(&5), None);
    let e = ts.check().unwrap_err().to_string();
    assert!(e.contains(TREE_DIR), "{e}");
    let mut l = t.clone();
    assert!(ts.fold(&mut t, &mut l, v, "test").is_err());
}

/// A version the spilled changes are read from is kept by a fold (and
/// let go by the next): one let go while held leaves its pages waiting
/// to be freed with no kept version to free them by, which `fsck` calls
/// a leak once the holder lets go after the last commit.
#[test]
fn a_fold_keeps_the_version_the_spilled_changes_are_read_from() {
    let dir = tempfile::tempdir().unwrap();
    let ts = TreeStore::open(dir.path()).unwrap();
    let v = ts
        .fold(&mut Tree::default(), &mut Tree::default(), 0, "saved")
        .unwrap();
    ts.set_named(v);
    let mut synced = ts.tree(v).unwrap();
    let mut local = synced.clone();
    for f in [5u128, 6] {
        local.put_node(f, file(1, f as u8));
        local.link((1, vec![f as u8]), f);
        ts.spill(&mut local).unwrap();
    }
    let v = ts.fold(&mut synced, &mut local, ts.named(), "t").unwrap();
    ts.set_named(v);
    assert!(local.is_spilled());
    drop((synced, local));
    let (report, problems) = ts.fsck(v).unwrap();
    assert!(
        report.is_clean() && problems.is_empty(),
        "{report:?} {problems:?}"
    );
}
