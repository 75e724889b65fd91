//! The store against a model: random puts, deletes, extents, commits, aborts
//! and reopenings are applied to the store and to a `BTreeMap`; every kept
//! version, read back (also after reopening), must equal the model's
//! snapshot of that version, and `fsck` must stay clean.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use zippyfs::store::{Retention, SimBackend, Store, StoreOptions, WritePath};

/// What a key holds in the model: its value and the bytes of its extent.
type Model = BTreeMap<Vec<u8>, (Vec<u8>, Option<Vec<u8>>)>;

#[derive(Clone, Debug)]
enum Op {
    Put { key: u16, len: usize, seed: u8 },
    PutExtent { key: u16, len: usize, seed: u8 },
    Delete { key: u16 },
    Commit,
    Abort,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (0u16..2000, prop_oneof![8 => 0usize..200, 1 => 900usize..12_000], any::<u8>())
            .prop_map(|(key, len, seed)| Op::Put { key, len, seed }),
        6 => (0u16..2000, 1usize..10_000, any::<u8>()).prop_map(|(key, len, seed)| Op::PutExtent { key, len, seed }),
        12 => (0u16..2000).prop_map(|key| Op::Delete { key }),
        6 => Just(Op::Commit),
        1 => Just(Op::Abort),
        1 => Just(Op::Reopen),
    ]
}

/// Keys of varied lengths so nodes hold varied numbers of entries.
fn key(k: u16) -> Vec<u8> {
    let mut v = format!("k{k:05}").into_bytes();
    v.extend(std::iter::repeat_n(b'.', (k as usize * 7) % 60));
    v
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Every kept version must read back as the model saw it at its commit.
fn check_versions(store: &Store, history: &BTreeMap<u64, Model>, keep: usize) {
    let versions: Vec<u64> = store.versions().iter().map(|v| v.id).collect();
    let expected: Vec<u64> = history.keys().rev().take(keep).rev().copied().collect();
    assert_eq!(versions, expected, "kept versions");
    for &v in &versions {
        let snap = store.snapshot(v).unwrap();
        let want = &history[&v];
        let mut got = Model::new();
        for item in snap.range::<std::ops::RangeFull>(..).unwrap() {
            let (k, e) = item.unwrap();
            let ext = e.extent.map(|x| snap.read_extent(&x).unwrap().to_vec());
            got.insert(k.to_vec(), (e.value.to_vec(), ext));
        }
        assert_eq!(got.len(), want.len(), "version {v}: number of keys");
        assert!(got == *want, "version {v} differs from the model");
        for (k, (val, _)) in want.iter().take(20) {
            assert_eq!(snap.get(k).unwrap(), Some(val.as_slice()));
        }
        let missing = key(9999);
        assert_eq!(snap.get(&missing).unwrap(), None);
    }
}

fn fsck_clean(store: &Store) {
    let report = store.fsck().unwrap();
    assert!(report.is_clean(), "fsck: {report}");
}

fn run(ops: Vec<Op>, keep: usize, mut open: impl FnMut() -> Store) {
    let mut store = open();
    let mut model = Model::new();
    let mut committed = Model::new();
    let mut history: BTreeMap<u64, Model> = BTreeMap::new();
    let mut ops = ops.into_iter();
    loop {
        let mut t = store.begin_write().unwrap();
        let mut end = None;
        for op in ops.by_ref() {
            match op {
                Op::Put { key: k, len, seed } => {
                    let v = bytes(len, seed);
                    t.put(&key(k), &v).unwrap();
                    model.insert(key(k), (v, None));
                }
                Op::PutExtent { key: k, len, seed } => {
                    let data = bytes(len, seed ^ 0x5a);
                    let e = t.write_extent(&data).unwrap();
                    let v = bytes(len % 40, seed);
                    t.put_with_extent(&key(k), &v, e).unwrap();
                    model.insert(key(k), (v, Some(data)));
                }
                Op::Delete { key: k } => {
                    let was = t.delete(&key(k)).unwrap();
                    assert_eq!(was, model.remove(&key(k)).is_some());
                }
                other => {
                    end = Some(other);
                    break;
                }
            }
            // What the writer sees is the model, uncommitted changes included.
            let n = t.range::<std::ops::RangeFull>(..).unwrap().count();
            assert_eq!(n, model.len());
        }
        match end {
            Some(Op::Commit) => {
                let info = t.commit("test").unwrap();
                committed = model.clone();
                history.insert(info.id, committed.clone());
            }
            Some(Op::Abort) => {
                t.abort();
                model = committed.clone();
            }
            Some(_) => {
                drop(t);
                model = committed.clone();
                drop(store);
                store = open();
                check_versions(&store, &history, keep);
                fsck_clean(&store);
            }
            None => {
                let info = t.commit("last").unwrap();
                history.insert(info.id, model.clone());
                break;
            }
        }
    }
    check_versions(&store, &history, keep);
    fsck_clean(&store);
    drop(store);
    let store = open();
    check_versions(&store, &history, keep);
    fsck_clean(&store);
}

const KEEP: usize = 6;

fn opts() -> StoreOptions {
    StoreOptions {
        map_size: 1 << 30,
        retention: Retention::last(KEEP),
        ..StoreOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_kept_version_matches_the_model_in_memory(ops in prop::collection::vec(op(), 1..600)) {
        let dev = Arc::new(SimBackend::new(1 << 30).unwrap());
        run(ops, KEEP, || Store::open_backend(Box::new(dev.clone()), opts()).unwrap());
    }

    #[test]
    fn every_kept_version_matches_the_model_on_a_file(ops in prop::collection::vec(op(), 1..300)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(ops, KEEP, || Store::open(Path::new(&path), opts()).unwrap());
    }

    #[test]
    fn every_kept_version_matches_the_model_on_a_file_written_through_io_uring(
        ops in prop::collection::vec(op(), 1..300)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let opts = StoreOptions { write_path: WritePath::IoUring, ..opts() };
        run(ops, KEEP, || Store::open(Path::new(&path), opts.clone()).unwrap());
    }
}

#[test]
fn large_sequential_and_random_workload_keeps_every_version() {
    // Enough keys for a tree three levels deep, with deletes that empty whole
    // subtrees, so merges and root collapses happen.
    let dev = Arc::new(SimBackend::new(1 << 30).unwrap());
    let store = Store::open_backend(Box::new(dev.clone()), opts()).unwrap();
    let mut model = Model::new();
    let mut history = BTreeMap::new();
    let mut rng = zippyfs::store::SplitMix64(7);
    for round in 0..12u64 {
        let mut t = store.begin_write().unwrap();
        for _ in 0..4000 {
            let k = rng.below(20_000).to_be_bytes().to_vec();
            if round % 4 == 3 || rng.below(3) == 0 {
                t.delete(&k).unwrap();
                model.remove(&k);
            } else {
                let v = bytes(rng.below(120) as usize, round as u8);
                t.put(&k, &v).unwrap();
                model.insert(k, (v, None));
            }
        }
        let info = t.commit("round").unwrap();
        history.insert(info.id, model.clone());
    }
    check_versions(&store, &history, KEEP);
    fsck_clean(&store);
    // Delete everything: the tree must shrink back to nothing.
    let mut t = store.begin_write().unwrap();
    for k in model.keys() {
        assert!(t.delete(k).unwrap());
    }
    let info = t.commit("empty").unwrap();
    history.insert(info.id, Model::new());
    check_versions(&store, &history, KEEP);
    fsck_clean(&store);
}
