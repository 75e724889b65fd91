//! The base of a peer's two trees kept in a store of their own
//! (`<store>/sync.tree/`, the same engine as the filesystem's), read as it
//! is asked for: a peer's memory holds what its trees changed since the
//! last fold, not the volume. A fold ([`TreeStore::fold`]) is a commit:
//! the synced tree's changes go into the store, and both trees are layered
//! over the new version. `sync.state` names the version that holds the
//! synced tree as of the sequence it records; the versions before it are
//! let go at the next fold.
//!
//! Keys (integers big-endian, so that the store's order is the maps'):
//!
//! ```text
//! "N" fid [16]             a node as `wire/state.rs` writes one, then a
//!                          byte: 0 its blocks are in it, 1 its block list
//!                          is empty there and its blocks are under "B"
//! "B" fid [16] chunk [8]   the blocks of indices chunk * 1024 to
//!                          chunk * 1024 + 1023, each (index u64 LE,
//!                          hash [32]), in index order
//! "E" dir [16] name        the file id [16] the entry names
//! "A" fid [16]             the file's names, each (directory [16],
//!                          name length u32 LE, name)
//! "#"                      how many nodes, entries and files with names
//!                          (u64 LE each)
//! ```
//!
//! A read that fails (an I/O error, a damaged page, a value that does not
//! decode) answers "not there" to the tree and is kept: the owner asks
//! [`TreeStore::damage`] before it acts on what it read (a push, an apply,
//! a fold), so a file missing for that reason never becomes a delete.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::layer::Source;
use super::{FileId, Key, Layered, Names, Node, Tree};
use crate::store::{
    FsckReport, Pinned, Retention, Snapshot, Store, StoreOptions, StoreResult, WriteTxn,
};
use crate::sync::SyncError;
use crate::sync::wire::state::{put_node, take_node};

/// The tree store's directory inside the store directory.
pub const TREE_DIR: &str = "sync.tree";

/// The most blocks a node keeps in its own value; a bigger file's go in
/// chunks of their own, so no value grows with a file.
const INLINE_BLOCKS: usize = 1024;
const CHUNK_SHIFT: u32 = 10;

const COUNTS: &[u8] = b"#";

/// Where [`Source`] reads that failed are kept.
type Damage = Arc<Mutex<Option<String>>>;

pub struct TreeStore {
    store: Arc<Store>,
    damage: Damage,
    /// The version the saved state names (kept until a later one is).
    named: AtomicU64,
    /// The version the trees were last built on ([`TreeStore::tree`]): a
    /// fold writes their changes onto it, so if the store has a newer
    /// one (a fold whose state was never written, then a restart from
    /// the state), the fold writes the tree whole.
    current: AtomicU64,
}

fn node_key(fid: FileId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'N');
    k.extend_from_slice(&fid.to_be_bytes());
    k
}

fn chunk_prefix(fid: FileId) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.push(b'B');
    k.extend_from_slice(&fid.to_be_bytes());
    k
}

fn entry_key(k: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + k.1.len());
    out.push(b'E');
    out.extend_from_slice(&k.0.to_be_bytes());
    out.extend_from_slice(&k.1);
    out
}

fn names_key(fid: FileId) -> Vec<u8> {
    let mut k = node_key(fid);
    k[0] = b'A';
    k
}

fn fid_at(b: &[u8]) -> Result<FileId, String> {
    b.get(..16)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(u128::from_be_bytes)
        .ok_or_else(|| "a key too short for a file id".to_string())
}

fn fid_le(b: &[u8]) -> Result<FileId, String> {
    <[u8; 16]>::try_from(b)
        .map(u128::from_le_bytes)
        .map_err(|_| format!("a file id of {} bytes", b.len()))
}

fn node_value(n: &Node) -> Result<(Vec<u8>, bool), SyncError> {
    let chunked = n.blocks.len() > INLINE_BLOCKS;
    let mut v = Vec::with_capacity(96 + if chunked { 0 } else { n.blocks.len() * 40 });
    put_node(&mut v, n, !chunked).map_err(|e| SyncError::Config(e.to_string()))?;
    v.push(chunked as u8);
    Ok((v, chunked))
}

fn read_node(snap: &Snapshot<'_>, fid: FileId, v: &[u8]) -> Result<Node, String> {
    let (mut n, rest) = take_node(v, "stored node").map_err(|e| e.to_string())?;
    match rest {
        [0] => Ok(n),
        [1] => {
            let mut blocks = Vec::new();
            let range = snap
                .range(as_slices(&prefix_range(&chunk_prefix(fid))))
                .map_err(|e| e.to_string())?;
            for item in range {
                let (_, e) = item.map_err(|e| e.to_string())?;
                if e.value.len() % 40 != 0 {
                    return Err(format!("a block chunk of {} bytes", e.value.len()));
                }
                for b in e.value.chunks_exact(40) {
                    let (i, h) = b.split_at(8);
                    let i = u64::from_le_bytes(i.try_into().map_err(|_| "an index")?);
                    blocks.push((i, h.try_into().map_err(|_| "a hash")?));
                }
            }
            n.blocks = blocks.into_iter().collect();
            Ok(n)
        }
        _ => Err(format!("{} bytes after a node", rest.len())),
    }
}

fn names_value(names: &Names) -> Vec<u8> {
    let mut v = Vec::new();
    for (dir, name) in names {
        v.extend_from_slice(&dir.to_le_bytes());
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(name);
    }
    v
}

fn read_names(mut b: &[u8]) -> Result<Names, String> {
    let mut names = Names::default();
    while !b.is_empty() {
        let (dir, rest) = b.split_at_checked(16).ok_or("a name cut short")?;
        let (len, rest) = rest.split_at_checked(4).ok_or("a name cut short")?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| "a length")?) as usize;
        let (name, rest) = rest.split_at_checked(len).ok_or("a name cut short")?;
        names.insert((fid_le(dir)?, name.to_vec()));
        b = rest;
    }
    Ok(names)
}

/// An entry from its key (without the prefix) and value.
type Decode<K, V> = fn(&Snapshot<'_>, &[u8], &[u8]) -> Result<(K, V), String>;

/// One of a tree's three maps as a version of the store holds it.
struct Map<K, V> {
    pin: Arc<Pinned>,
    damage: Damage,
    len: usize,
    prefix: u8,
    key: fn(&K) -> Vec<u8>,
    decode: Decode<K, V>,
    /// The last value read: one asked for again (both trees read a file
    /// in turn, an apply reads it more than once) is not decoded again,
    /// and is the same `Arc` both times, which compares without reading.
    /// One value: a big file's node is held while it is in use anyway.
    last: Mutex<Option<(K, V)>>,
}

impl<K, V> Map<K, V> {
    fn failed(&self, e: impl std::fmt::Display) {
        let mut d = self.damage.lock();
        if d.is_none() {
            tracing::error!("sync: the tree store cannot be read: {e}");
            *d = Some(format!(
                "the synced tree cannot be read from {TREE_DIR}: {e}"
            ));
        }
    }

    fn bound(&self, b: Bound<&K>) -> Bound<Vec<u8>> {
        match b {
            Bound::Included(k) => Bound::Included((self.key)(k)),
            Bound::Excluded(k) => Bound::Excluded((self.key)(k)),
            Bound::Unbounded => Bound::Unbounded,
        }
    }
}

impl<K: Send + Sync + Clone + PartialEq, V: Send + Sync + Clone> Source<K, V> for Map<K, V> {
    fn get(&self, k: &K) -> Option<V> {
        if let Some((lk, lv)) = &*self.last.lock()
            && lk == k
        {
            return Some(lv.clone());
        }
        let snap = self.pin.snapshot();
        let key = (self.key)(k);
        match snap.get(&key) {
            Ok(Some(v)) => match (self.decode)(&snap, &key[1..], v) {
                Ok((_, v)) => {
                    *self.last.lock() = Some((k.clone(), v.clone()));
                    Some(v)
                }
                Err(e) => {
                    self.failed(e);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                self.failed(e);
                None
            }
        }
    }

    fn contains(&self, k: &K) -> bool {
        match self.pin.snapshot().get(&(self.key)(k)) {
            Ok(v) => v.is_some(),
            Err(e) => {
                self.failed(e);
                false
            }
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn range(&self, lo: Bound<&K>, hi: Bound<&K>) -> Box<dyn Iterator<Item = (K, V)> + '_> {
        let snap = self.pin.snapshot();
        let lo = match self.bound(lo) {
            Bound::Unbounded => Bound::Included(vec![self.prefix]),
            b => b,
        };
        let hi = match self.bound(hi) {
            Bound::Unbounded => Bound::Excluded(vec![self.prefix + 1]),
            b => b,
        };
        let range = snap.range((lo.as_ref().map(|v| &v[..]), hi.as_ref().map(|v| &v[..])));
        let range = match range {
            Ok(r) => r,
            Err(e) => {
                self.failed(e);
                return Box::new(std::iter::empty());
            }
        };
        Box::new(Walk {
            map: self,
            snap,
            range,
            done: false,
        })
    }
}

/// A range of a [`Map`]: stops at the first failure, which it keeps.
struct Walk<'a, K, V> {
    map: &'a Map<K, V>,
    snap: Snapshot<'a>,
    range: crate::store::Range<'a>,
    done: bool,
}

impl<K, V> Iterator for Walk<'_, K, V> {
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        if self.done {
            return None;
        }
        let r = match self.range.next()? {
            Ok((k, e)) => (self.map.decode)(&self.snap, k.get(1..).unwrap_or_default(), e.value),
            Err(e) => Err(e.to_string()),
        };
        match r {
            Ok(kv) => Some(kv),
            Err(e) => {
                self.done = true;
                self.map.failed(e);
                None
            }
        }
    }
}

fn decode_node(snap: &Snapshot<'_>, k: &[u8], v: &[u8]) -> Result<(FileId, Arc<Node>), String> {
    let fid = fid_at(k)?;
    Ok((fid, Arc::new(read_node(snap, fid, v)?)))
}

fn decode_entry(_: &Snapshot<'_>, k: &[u8], v: &[u8]) -> Result<(Key, FileId), String> {
    let dir = fid_at(k)?;
    Ok(((dir, k[16..].to_vec()), fid_le(v)?))
}

fn decode_names(_: &Snapshot<'_>, k: &[u8], v: &[u8]) -> Result<(FileId, Names), String> {
    Ok((fid_at(k)?, read_names(v)?))
}

impl TreeStore {
    /// Opens (or makes) the tree store of the store in `store_dir`.
    pub fn open(store_dir: &Path) -> Result<TreeStore, SyncError> {
        let opts = StoreOptions {
            // Every version is kept until a fold lets it go: the one the
            // saved state names must stay.
            retention: Retention::all(),
            reserve: 1 << 20,
            ..Default::default()
        };
        let store = Store::open(&store_dir.join(TREE_DIR), opts)
            .map_err(|e| SyncError::Config(format!("the synced tree in {TREE_DIR}: {e}")))?;
        Ok(TreeStore {
            store: Arc::new(store),
            damage: Arc::default(),
            named: AtomicU64::new(0),
            current: AtomicU64::new(0),
        })
    }

    /// The version the saved state names.
    pub fn named(&self) -> u64 {
        self.named.load(Ordering::Relaxed)
    }

    /// The saved state names `version` now: the versions before it may go.
    pub fn set_named(&self, version: u64) {
        self.named.store(version, Ordering::Relaxed);
    }

    /// The first read of the store that failed, if one did: what the trees
    /// read since may be wrong, and must not be pushed, applied or folded.
    pub fn damage(&self) -> Option<String> {
        self.damage.lock().clone()
    }

    /// Fails if a read failed (see [`TreeStore::damage`]).
    pub fn check(&self) -> Result<(), SyncError> {
        match self.damage() {
            Some(d) => Err(SyncError::Config(d)),
            None => Ok(()),
        }
    }

    /// The tree kept as version `version` (0: an empty store's), its maps
    /// read from the store as they are asked for.
    pub fn tree(&self, version: u64) -> Result<Tree, SyncError> {
        let pin = Arc::new(self.store.pin(version)?);
        let (nodes, entries, names) = {
            let snap = pin.snapshot();
            match snap.get(COUNTS)? {
                Some(c) if c.len() == 24 => {
                    let at = |i: usize| {
                        let b: [u8; 8] = c[i * 8..i * 8 + 8].try_into().unwrap_or_default();
                        u64::from_le_bytes(b) as usize
                    };
                    (at(0), at(1), at(2))
                }
                Some(c) => {
                    return Err(SyncError::Config(format!(
                        "{TREE_DIR}: version {version}'s counts are {} bytes, not 24",
                        c.len()
                    )));
                }
                None if version == 0 => (0, 0, 0),
                None => {
                    return Err(SyncError::Config(format!(
                        "{TREE_DIR}: version {version} has no counts: not a tree"
                    )));
                }
            }
        };
        self.current.store(version, Ordering::Relaxed);
        let mut t = Tree::empty();
        t.nodes = Layered::over_source(Arc::new(Map {
            pin: pin.clone(),
            damage: self.damage.clone(),
            len: nodes,
            prefix: b'N',
            key: |f| node_key(*f),
            decode: decode_node,
            last: Mutex::new(None),
        }));
        t.entries = Layered::over_source(Arc::new(Map {
            pin: pin.clone(),
            damage: self.damage.clone(),
            len: entries,
            prefix: b'E',
            key: entry_key,
            decode: decode_entry,
            last: Mutex::new(None),
        }));
        t.names = Layered::over_source(Arc::new(Map {
            pin,
            damage: self.damage.clone(),
            len: names,
            prefix: b'A',
            key: |f| names_key(*f),
            decode: decode_names,
            last: Mutex::new(None),
        }));
        Ok(t)
    }

    /// Checks every page of every kept version (the store's `fsck`), and
    /// then the tree of `version` (0: none): every value reads, its counts
    /// are what it holds, and it is a tree (`snapshot::check`). Returns
    /// the store's report and what is wrong with the tree.
    pub fn fsck(&self, version: u64) -> Result<(FsckReport, Vec<String>), SyncError> {
        let report = self.store.fsck()?;
        let mut problems = Vec::new();
        if !report.is_clean() || version == 0 {
            return Ok((report, problems));
        }
        let t = self.tree(version)?;
        let held = [
            t.nodes.iter().count(),
            t.entries.iter().count(),
            t.names.iter().count(),
        ];
        let counted = [t.nodes.len(), t.entries.len(), t.names.len()];
        if let Some(d) = self.damage() {
            problems.push(d);
        } else if held != counted {
            problems.push(format!(
                "version {version} counts {counted:?} nodes, entries and names, and holds {held:?}"
            ));
        } else if let Err(e) = crate::sync::snapshot::check(&t) {
            problems.push(format!("version {version} is not a tree: {e}"));
        }
        Ok((report, problems))
    }

    /// Commits `synced` into the store and layers both trees over the
    /// version it made, `local` keeping its own view of every file; lets
    /// go of the versions before `named` (the one the saved state names,
    /// which stays). A tree whose base is not this store's (read from a
    /// state of an older version, or a snapshot taken whole) is written
    /// whole. Returns the new version.
    pub fn fold(
        &self,
        synced: &mut Tree,
        local: &mut Tree,
        named: u64,
        cause: &str,
    ) -> Result<u64, SyncError> {
        self.check()?;
        let latest = self.store.latest_version().unwrap_or(0);
        let whole = !synced.nodes.is_sourced() || self.current.load(Ordering::Relaxed) != latest;
        let mut txn = self.store.begin_write()?;
        // Every version but the one the state names goes (the trees' own
        // base stays readable while they hold it): a state that cannot be
        // written leaves one more, not one more per try.
        let old: Vec<u64> = self
            .store
            .versions()
            .iter()
            .map(|v| v.id)
            .filter(|&v| v != named)
            .collect();
        txn.let_go_of(old);
        if whole {
            for p in [b'N', b'B', b'E', b'A'] {
                delete_prefix(&mut txn, &[p])?;
            }
            for (fid, n) in &synced.nodes {
                put_file_node(&mut txn, fid, Some(&n))?;
            }
            for (k, fid) in &synced.entries {
                txn.put(&entry_key(&k), &fid.to_le_bytes())?;
            }
            for (fid, names) in &synced.names {
                txn.put(&names_key(fid), &names_value(&names))?;
            }
        } else {
            for (&fid, n) in synced.nodes.changed() {
                put_file_node(&mut txn, fid, n.map(|n| &**n))?;
            }
            for (k, fid) in synced.entries.changed() {
                match fid {
                    Some(fid) => txn.put(&entry_key(k), &fid.to_le_bytes())?,
                    None => {
                        txn.delete(&entry_key(k))?;
                    }
                }
            }
            for (&fid, names) in synced.names.changed() {
                match names {
                    Some(n) => txn.put(&names_key(fid), &names_value(n))?,
                    None => {
                        txn.delete(&names_key(fid))?;
                    }
                }
            }
        }
        let mut counts = Vec::with_capacity(24);
        for n in [synced.nodes.len(), synced.entries.len(), synced.names.len()] {
            counts.extend_from_slice(&(n as u64).to_le_bytes());
        }
        txn.put(COUNTS, &counts)?;
        // The changes of both trees, read before either moves.
        let nodes: Vec<FileId> = keys(&synced.nodes, &local.nodes);
        let entries: Vec<Key> = keys(&synced.entries, &local.entries);
        let names: Vec<FileId> = keys(&synced.names, &local.names);
        let same = local.nodes.same_base(&synced.nodes);
        let info = txn.commit(cause)?;
        let new = self.tree(info.id)?;
        if same {
            local.nodes.rebase_on(&new.nodes, &nodes);
            local.entries.rebase_on(&new.entries, &entries);
            local.names.rebase_on(&new.names, &names);
        } else {
            *local = local.rebased_onto(&new);
        }
        let journal = std::mem::take(&mut synced.journal);
        *synced = new;
        synced.journal = journal;
        self.check()?;
        Ok(info.id)
    }
}

/// The keys either map changed since its last fold, in order, once.
fn keys<K: Ord + Clone, V: Clone>(a: &Layered<K, V>, b: &Layered<K, V>) -> Vec<K> {
    let mut k: Vec<K> = a.changed_keys().chain(b.changed_keys()).cloned().collect();
    k.sort();
    k.dedup();
    k
}

/// The first key past every key that starts with `prefix` (`None`: no
/// key is, the prefix being all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The keys that start with `prefix`, as a range's bounds.
fn prefix_range(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (
        Bound::Included(prefix.to_vec()),
        prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded),
    )
}

fn as_slices(r: &(Bound<Vec<u8>>, Bound<Vec<u8>>)) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (r.0.as_ref().map(|v| &v[..]), r.1.as_ref().map(|v| &v[..]))
}

fn delete_prefix(txn: &mut WriteTxn<'_>, prefix: &[u8]) -> StoreResult<()> {
    let keys: Vec<Vec<u8>> = txn
        .range(as_slices(&prefix_range(prefix)))?
        .map(|r| r.map(|(k, _)| k.to_vec()))
        .collect::<StoreResult<_>>()?;
    for k in keys {
        txn.delete(&k)?;
    }
    Ok(())
}

/// Puts file `fid`'s node (`None`: deletes it), its blocks apart if many.
fn put_file_node(txn: &mut WriteTxn<'_>, fid: FileId, n: Option<&Node>) -> Result<(), SyncError> {
    delete_prefix(txn, &chunk_prefix(fid))?;
    let Some(n) = n else {
        txn.delete(&node_key(fid))?;
        return Ok(());
    };
    let (v, chunked) = node_value(n)?;
    txn.put(&node_key(fid), &v)?;
    if chunked {
        let mut chunk: Vec<u8> = Vec::new();
        let mut at = None;
        let flush = |txn: &mut WriteTxn<'_>, at: u64, chunk: &mut Vec<u8>| {
            let mut k = chunk_prefix(fid);
            k.extend_from_slice(&at.to_be_bytes());
            let r = txn.put(&k, chunk);
            chunk.clear();
            r
        };
        for (i, h) in &n.blocks {
            let c = i >> CHUNK_SHIFT;
            if let Some(a) = at
                && a != c
            {
                flush(txn, a, &mut chunk)?;
            }
            at = Some(c);
            chunk.extend_from_slice(&i.to_le_bytes());
            chunk.extend_from_slice(h);
        }
        if let Some(a) = at {
            flush(txn, a, &mut chunk)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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

    #[derive(Clone, Debug)]
    enum Step {
        /// Which tree (synced or local), file, blocks, salt.
        Put(bool, u8, u64, u8),
        Link(bool, u8, u8),
        Unlink(bool, u8),
        Remove(bool, u8),
        Fold,
        Reopen,
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
            Step::Fold | Step::Reopen => {}
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
                        let v = ts.fold(&mut synced, &mut local, ts.named(), "test").unwrap();
                        ts.set_named(v);
                        prop_assert_eq!(synced.changes(), 0);
                        prop_assert!(synced.nodes.same_base(&local.nodes));
                        let kept: Vec<u64> = ts.store.versions().iter().map(|v| v.id).collect();
                        prop_assert!(kept.len() <= 2, "{:?}", kept);
                    }
                    Step::Reopen => {
                        // What a restart finds: the state saved at the last
                        // fold (the journal brings what came after it).
                        let v = ts.fold(&mut synced, &mut local, ts.named(), "test").unwrap();
                        ts.set_named(v);
                        {
                            // The local tree's own changes, kept across.
                            let own: Vec<(FileId, Option<Arc<Node>>)> =
                                local.nodes.changed().map(|(k, v)| (*k, v.cloned())).collect();
                            drop((synced, local));
                            drop(ts);
                            ts = TreeStore::open(dir.path()).unwrap();
                            ts.set_named(v);
                            synced = ts.tree(v).unwrap();
                            local = ml.rebased_onto(&synced);
                            prop_assert!(own.len() >= local.nodes.changes());
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
        let dir = tempfile::tempdir().unwrap();
        let ts = TreeStore::open(dir.path()).unwrap();
        let (mut synced, mut local) = (Tree::default(), Tree::default());
        synced.put_node(5, file(1, 1));
        synced.link((1, b"kept".to_vec()), 5);
        let v1 = ts.fold(&mut synced, &mut local, 0, "saved").unwrap();
        ts.set_named(v1);
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
        let dir = tempfile::tempdir().unwrap();
        let ts = TreeStore::open(dir.path()).unwrap();
        let (mut synced, mut local) = (Tree::default(), Tree::default());
        synced.put_node(5, file(INLINE_BLOCKS as u64 + 1, 1));
        synced.link((1, b"f".to_vec()), 5);
        let v = ts.fold(&mut synced, &mut local, 0, "test").unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let ts = TreeStore::open(dir.path()).unwrap();
        let (mut synced, mut local) = (Tree::default(), Tree::default());
        synced.put_node(5, file(2, 1));
        synced.link((1, b"f".to_vec()), 5);
        let v = ts.fold(&mut synced, &mut local, 0, "test").unwrap();
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
}
