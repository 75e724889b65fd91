//! The base of a peer's two trees kept in a store of their own
//! (`<store>/sync.tree/`, the same engine as the filesystem's), read as it
//! is asked for: a peer's memory holds what its trees changed since the
//! last fold (of its local tree's changes not yet pushed, those since the
//! last spill), not the volume. A fold ([`TreeStore::fold`]) is a commit:
//! the synced tree's changes go into the store, and both trees are layered
//! over the new version. `sync.state` names the version that holds the
//! synced tree as of the sequence it records; the versions before it are
//! let go at the next fold. A spill ([`TreeStore::spill`]) is a commit of
//! the local tree's changes under keys of their own, read back as a layer
//! of that tree; they are scratch, dropped by the next mount.
//!
//! A read that fails (an I/O error, a damaged page, a value that does not
//! decode) answers "not there" to the tree and is kept: the owner asks
//! [`TreeStore::damage`] before it acts on what it read (a push, an apply,
//! a fold), so a file missing for that reason never becomes a delete.

mod format;
mod map;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::layer::Mid;
use super::{FileId, Key, Layered, Names, Node, Tree};
use crate::store::{FsckReport, Pinned, Retention, Store, StoreOptions};
use crate::sync::SyncError;
use format::{
    COUNTS, SPILLED, decode_entry, decode_names, decode_node, decode_spilled_entry,
    decode_spilled_names, decode_spilled_node, delete_prefix, entry_key, names_key, names_value,
    node_key, put_file_node, put_spilled_node, spilled, spilled_value,
};
use map::{Damage, Decode, Map};

/// The tree store's directory inside the store directory.
pub const TREE_DIR: &str = "sync.tree";

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
    /// The version the local tree's spilled changes are read from (0:
    /// none): a fold keeps it, since letting a version go that a reader
    /// holds until after the last commit would leave its pages waiting
    /// to be freed with no kept version to free them by.
    spilled_at: AtomicU64,
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
            spilled_at: AtomicU64::new(0),
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
    /// read from the store as they are asked for; the trees are built on
    /// it from now on (a fold writes onto it).
    pub fn tree(&self, version: u64) -> Result<Tree, SyncError> {
        let t = self.read_tree(version)?;
        self.current.store(version, Ordering::Relaxed);
        Ok(t)
    }

    /// [`TreeStore::tree`], to look at only.
    fn read_tree(&self, version: u64) -> Result<Tree, SyncError> {
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
        let mut t = Tree::empty();
        t.nodes = Layered::over_source(Arc::new(Map::new(
            pin.clone(),
            self.damage.clone(),
            nodes,
            b"N",
            |f| node_key(*f),
            decode_node,
        )));
        t.entries = Layered::over_source(Arc::new(Map::new(
            pin.clone(),
            self.damage.clone(),
            entries,
            b"E",
            entry_key,
            decode_entry,
        )));
        t.names = Layered::over_source(Arc::new(Map::new(
            pin,
            self.damage.clone(),
            names,
            b"A",
            |f| names_key(*f),
            decode_names,
        )));
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
        let t = self.read_tree(version)?;
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
        let spilled_at = if local.is_spilled() {
            self.spilled_at.load(Ordering::Relaxed)
        } else {
            0
        };
        let old: Vec<u64> = self
            .store
            .versions()
            .iter()
            .map(|v| v.id)
            .filter(|&v| v != named && v != spilled_at)
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
        let same = local.nodes.shares_base(&synced.nodes);
        if same && local.is_spilled() {
            // A spilled change the synced tree now has too goes.
            for f in caught_up(&local.nodes, &synced.nodes, &nodes) {
                put_spilled_node(&mut txn, *f, None)?;
            }
            for k in caught_up(&local.entries, &synced.entries, &entries) {
                txn.delete(&spilled(entry_key(k)))?;
            }
            for f in caught_up(&local.names, &synced.names, &names) {
                txn.delete(&spilled(names_key(*f)))?;
            }
        } else {
            // Left by a mount before, or by a local tree now whole in
            // memory (`rebased_onto`).
            delete_prefix(&mut txn, SPILLED)?;
        }
        let info = txn.commit(cause)?;
        let new = self.tree(info.id)?;
        if same {
            let (n, e, a) = self.spilled_maps(info.id, local.is_spilled())?;
            let any = n.is_some() || e.is_some() || a.is_some();
            self.spilled_at
                .store(if any { info.id } else { 0 }, Ordering::Relaxed);
            local.nodes.rebase_on(&new.nodes, &nodes, n);
            local.entries.rebase_on(&new.entries, &entries, e);
            local.names.rebase_on(&new.names, &names, a);
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

impl TreeStore {
    /// Moves the local tree's changes out of memory, into the store (as
    /// `"L"` keys, beside the synced tree's base, which stays as it is):
    /// a backlog of changes not yet pushed (a peer that made a million
    /// files offline, or writes faster than it pushes) is held here, not
    /// in memory. Returns the files whose changes went, which the local
    /// tree yields again as [`Tree::spilled_files`].
    pub fn spill(&self, local: &mut Tree) -> Result<Vec<FileId>, SyncError> {
        self.check()?;
        let latest = self.store.latest_version().unwrap_or(0);
        let mut txn = self.store.begin_write()?;
        if !local.is_spilled() {
            // Left by a mount before: the local tree is read anew.
            delete_prefix(&mut txn, SPILLED)?;
        }
        let mut went = Vec::new();
        for (fid, n, back) in local.nodes.to_spill() {
            put_spilled_node(&mut txn, *fid, (!back).then_some(n.map(|n| &**n)))?;
            if !back {
                went.push(*fid);
            }
        }
        for (k, fid, back) in local.entries.to_spill() {
            let key = spilled(entry_key(k));
            if back {
                txn.delete(&key)?;
            } else {
                let v = fid.map(|f| f.to_le_bytes());
                txn.put(&key, &spilled_value(v.as_ref().map(|v| &v[..])))?;
            }
        }
        for (fid, names, back) in local.names.to_spill() {
            let key = spilled(names_key(*fid));
            if back {
                txn.delete(&key)?;
            } else {
                let v = names.map(names_value);
                txn.put(&key, &spilled_value(v.as_deref()))?;
                went.push(*fid);
            }
        }
        // What was compared with the base was read (a failed read would
        // make a change look like the base's and drop it).
        self.check()?;
        let info = txn.commit("sync: the local tree's changes spilled")?;
        // The synced tree's keys did not change: a fold writes onto this
        // version as onto the one before.
        let _ =
            self.current
                .compare_exchange(latest, info.id, Ordering::Relaxed, Ordering::Relaxed);
        let (n, e, a) = self.spilled_maps(info.id, true)?;
        let any = n.is_some() || e.is_some() || a.is_some();
        self.spilled_at
            .store(if any { info.id } else { 0 }, Ordering::Relaxed);
        local.nodes.spill(n);
        local.entries.spill(e);
        local.names.spill(a);
        went.sort_unstable();
        went.dedup();
        Ok(went)
    }

    /// The local tree's spilled changes as version `version` holds them
    /// (`None` for a map with none, or for all of them unless `any`).
    fn spilled_maps(&self, version: u64, any: bool) -> Result<SpilledMaps, SyncError> {
        if !any {
            return Ok((None, None, None));
        }
        let pin = Arc::new(self.store.pin(version)?);
        Ok((
            self.spilled_map(&pin, b"LN", |f| spilled(node_key(*f)), decode_spilled_node)?,
            self.spilled_map(&pin, b"LE", |k| spilled(entry_key(k)), decode_spilled_entry)?,
            self.spilled_map(
                &pin,
                b"LA",
                |f| spilled(names_key(*f)),
                decode_spilled_names,
            )?,
        ))
    }

    /// One map's spilled changes, under `prefix` in the version `pin`
    /// holds, if it has any.
    fn spilled_map<K, V>(
        &self,
        pin: &Arc<Pinned>,
        prefix: &'static [u8],
        key: fn(&K) -> Vec<u8>,
        decode: Decode<K, Option<V>>,
    ) -> Result<Option<Mid<K, V>>, SyncError>
    where
        K: Send + Sync + Clone + PartialEq + 'static,
        V: Send + Sync + Clone + 'static,
    {
        let any = {
            let snap = pin.snapshot();
            let mut r = snap.range(prefix..&crate::fs::inode::prefix_end(prefix)[..])?;
            r.next().is_some()
        };
        Ok(any.then(|| {
            Arc::new(Map::new(
                pin.clone(),
                self.damage.clone(),
                0,
                prefix,
                key,
                decode,
            )) as Mid<K, V>
        }))
    }
}

/// The local tree's three maps' spilled changes.
type SpilledMaps = (
    Option<Mid<FileId, Arc<Node>>>,
    Option<Mid<Key, FileId>>,
    Option<Mid<FileId, Names>>,
);

/// Of `keys`, those `local` holds a spilled change of that `synced` now
/// has too.
fn caught_up<'a, K: Ord + Clone, V: Clone + PartialEq>(
    local: &'a Layered<K, V>,
    synced: &'a Layered<K, V>,
    keys: &'a [K],
) -> impl Iterator<Item = &'a K> {
    keys.iter()
        .filter(move |k| local.mid_has(k) && local.get(k) == synced.get(k))
}

/// The keys either map changed since its last fold, in order, once.
fn keys<K: Ord + Clone, V: Clone>(a: &Layered<K, V>, b: &Layered<K, V>) -> Vec<K> {
    super::union(a.changed_keys(), b.changed_keys())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
