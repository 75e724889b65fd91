//! The reference model test: random sequences of operations applied both to
//! the filesystem core (in process, no mount) and to a plain in-memory
//! model of POSIX semantics, compared after every step: each operation's
//! outcome (success or the errno), then the whole tree (names, kinds, link
//! counts, sizes, contents, modes, xattrs). Commits and remounts are among
//! the operations, so the model also checks that what a commit makes
//! durable is what was there.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// Few names, so that operations collide: replacing, EEXIST, ENOTEMPTY.
const NAMES: [&[u8]; 3] = [b"a", b"b", b"c"];

fn name(n: u8) -> &'static [u8] {
    NAMES[n as usize % NAMES.len()]
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        dir: usize,
        name: u8,
    },
    Mkdir {
        dir: usize,
        name: u8,
    },
    Write {
        file: usize,
        offset: u32,
        len: u32,
        seed: u8,
    },
    Truncate {
        file: usize,
        size: u32,
    },
    Fallocate {
        file: usize,
        offset: u32,
        len: u32,
        keep_size: bool,
    },
    Punch {
        file: usize,
        offset: u32,
        len: u32,
    },
    Unlink {
        dir: usize,
        name: u8,
    },
    Rmdir {
        dir: usize,
        name: u8,
    },
    Rename {
        dir: usize,
        name: u8,
        to_dir: usize,
        to_name: u8,
        mode: u8,
    },
    Link {
        file: usize,
        dir: usize,
        name: u8,
    },
    Chmod {
        file: usize,
        mode: u16,
    },
    SetXattr {
        file: usize,
        name: u8,
        value: u8,
    },
    RemoveXattr {
        file: usize,
        name: u8,
    },
    Commit,
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0usize..16;
    let off = 0u32..20_000;
    let len = 0u32..10_000;
    prop_oneof![
        3 => (i.clone(), any::<u8>()).prop_map(|(dir, name)| Op::Create { dir, name }),
        2 => (i.clone(), any::<u8>()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        4 => (i.clone(), off.clone(), len.clone(), any::<u8>())
            .prop_map(|(file, offset, len, seed)| Op::Write { file, offset, len, seed }),
        1 => (i.clone(), off.clone()).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (i.clone(), off.clone(), len.clone(), any::<bool>())
            .prop_map(|(file, offset, len, keep_size)| Op::Fallocate { file, offset, len, keep_size }),
        1 => (i.clone(), off.clone(), len.clone())
            .prop_map(|(file, offset, len)| Op::Punch { file, offset, len }),
        2 => (i.clone(), any::<u8>()).prop_map(|(dir, name)| Op::Unlink { dir, name }),
        1 => (i.clone(), any::<u8>()).prop_map(|(dir, name)| Op::Rmdir { dir, name }),
        3 => (i.clone(), any::<u8>(), i.clone(), any::<u8>(), 0u8..3).prop_map(
            |(dir, name, to_dir, to_name, mode)| Op::Rename { dir, name, to_dir, to_name, mode }
        ),
        1 => (i.clone(), i.clone(), any::<u8>())
            .prop_map(|(file, dir, name)| Op::Link { file, dir, name }),
        1 => (i.clone(), 0u16..0o1000).prop_map(|(file, mode)| Op::Chmod { file, mode }),
        1 => (i.clone(), any::<u8>(), any::<u8>())
            .prop_map(|(file, name, value)| Op::SetXattr { file, name, value }),
        1 => (i.clone(), any::<u8>()).prop_map(|(file, name)| Op::RemoveXattr { file, name }),
        1 => Just(Op::Commit),
        1 => Just(Op::Remount),
    ]
}

#[derive(Debug, Clone)]
enum Node {
    File {
        data: Vec<u8>,
        nlink: u32,
        perm: u16,
        xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    },
    Dir {
        entries: BTreeMap<Vec<u8>, u64>,
        parent: u64,
    },
}

/// What a program should see, by inode number (the filesystem's numbers:
/// the model takes them from its answers, it need not predict them).
#[derive(Debug, Clone)]
struct Model {
    nodes: BTreeMap<u64, Node>,
}

type Outcome = Result<(), i32>;

impl Model {
    fn new() -> Model {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            ROOT,
            Node::Dir {
                entries: BTreeMap::new(),
                parent: ROOT,
            },
        );
        Model { nodes }
    }

    fn dirs(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| matches!(n, Node::Dir { .. }))
            .map(|(&i, _)| i)
            .collect()
    }

    fn files(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| matches!(n, Node::File { .. }))
            .map(|(&i, _)| i)
            .collect()
    }

    fn entries(&self, dir: u64) -> &BTreeMap<Vec<u8>, u64> {
        match &self.nodes[&dir] {
            Node::Dir { entries, .. } => entries,
            Node::File { .. } => unreachable!("not a directory"),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> &mut BTreeMap<Vec<u8>, u64> {
        match self.nodes.get_mut(&dir) {
            Some(Node::Dir { entries, .. }) => entries,
            _ => unreachable!("not a directory"),
        }
    }

    fn is_dir(&self, ino: u64) -> bool {
        matches!(self.nodes[&ino], Node::Dir { .. })
    }

    fn data(&mut self, ino: u64) -> &mut Vec<u8> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File { data, .. }) => data,
            _ => unreachable!("not a file"),
        }
    }

    /// Whether `dir` is `of` or above it.
    fn is_ancestor(&self, dir: u64, mut of: u64) -> bool {
        loop {
            if of == dir {
                return true;
            }
            if of == ROOT {
                return false;
            }
            of = match &self.nodes[&of] {
                Node::Dir { parent, .. } => *parent,
                Node::File { .. } => return false,
            };
        }
    }

    /// Whether `name` may be made in `dir` (the checks both creates share).
    fn can_make(&self, dir: u64, name: &[u8]) -> Outcome {
        if self.entries(dir).contains_key(name) {
            return Err(libc::EEXIST);
        }
        Ok(())
    }

    fn made(&mut self, dir: u64, name: &[u8], ino: u64, node: Node) {
        self.entries_mut(dir).insert(name.to_vec(), ino);
        self.nodes.insert(ino, node);
    }

    /// A link to `ino` went; a file goes with its last one.
    fn unlinked(&mut self, ino: u64) {
        match self.nodes.get_mut(&ino) {
            Some(Node::File { nlink, .. }) if *nlink > 1 => *nlink -= 1,
            _ => {
                self.nodes.remove(&ino);
            }
        }
    }

    fn remove(&mut self, dir: u64, name: &[u8], rmdir: bool) -> Outcome {
        let Some(&c) = self.entries(dir).get(name) else {
            return Err(libc::ENOENT);
        };
        match (rmdir, self.is_dir(c)) {
            (true, false) => return Err(libc::ENOTDIR),
            (false, true) => return Err(libc::EISDIR),
            (true, true) if !self.entries(c).is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        self.entries_mut(dir).remove(name);
        self.unlinked(c);
        Ok(())
    }

    /// rename(2), with renameat2's modes, and its errors in the order the
    /// checks are made.
    fn rename(&mut self, p: u64, name: &[u8], np: u64, nname: &[u8], mode: RenameMode) -> Outcome {
        let Some(&s) = self.entries(p).get(name) else {
            return Err(libc::ENOENT);
        };
        let d = self.entries(np).get(nname).copied();
        if (p == np && name == nname) || d == Some(s) {
            return Ok(());
        }
        match (mode, d) {
            (RenameMode::NoReplace, Some(_)) => return Err(libc::EEXIST),
            (RenameMode::Exchange, None) => return Err(libc::ENOENT),
            _ => {}
        }
        if self.is_dir(s) && p != np && self.is_ancestor(s, np) {
            return Err(libc::EINVAL);
        }
        if mode == RenameMode::Exchange
            && let Some(d) = d
            && self.is_dir(d)
            && p != np
            && self.is_ancestor(d, p)
        {
            return Err(libc::EINVAL);
        }
        if mode != RenameMode::Exchange
            && let Some(d) = d
        {
            match (self.is_dir(s), self.is_dir(d)) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !self.entries(d).is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        if mode == RenameMode::Exchange {
            let d = d.expect("checked above");
            self.entries_mut(p).insert(name.to_vec(), d);
            self.set_parent(d, p);
        } else {
            self.entries_mut(p).remove(name);
            if let Some(d) = d {
                self.unlinked(d);
            }
        }
        self.entries_mut(np).insert(nname.to_vec(), s);
        self.set_parent(s, np);
        Ok(())
    }

    fn set_parent(&mut self, ino: u64, to: u64) {
        if let Some(Node::Dir { parent, .. }) = self.nodes.get_mut(&ino) {
            *parent = to;
        }
    }
}

/// The filesystem under test, and the directory its store lives in.
struct Real {
    dir: tempfile::TempDir,
    fs: Option<Fs>,
}

impl Real {
    fn fs(&self) -> &Fs {
        self.fs.as_ref().expect("mounted")
    }
}

fn outcome<T>(r: FsResult<T>) -> Outcome {
    r.map(|_| ()).map_err(|e| e.errno())
}

fn pick(v: &[u64], i: usize) -> Option<u64> {
    (!v.is_empty()).then(|| v[i % v.len()])
}

/// Applies `op` to both; returns the two outcomes (None: not applicable,
/// e.g. no file to write to).
fn apply(real: &mut Real, m: &mut Model, op: &Op) -> Option<(Outcome, Outcome)> {
    let r = match *op {
        Op::Commit => (Ok(()), outcome(real.fs().commit("model"))),
        Op::Remount => {
            let fs = real.fs.take().expect("mounted");
            let down = outcome(fs.shutdown());
            drop(fs);
            real.fs = Some(Fs::mount(real.dir.path(), model_opts()).expect("remount"));
            (Ok(()), down)
        }
        Op::Create { .. }
        | Op::Mkdir { .. }
        | Op::Unlink { .. }
        | Op::Rmdir { .. }
        | Op::Rename { .. }
        | Op::Link { .. } => return apply_to_names(real.fs(), m, op),
        _ => return apply_to_files(real.fs(), m, op),
    };
    Some(r)
}

/// Operations on names: create, mkdir, unlink, rmdir, rename, link.
fn apply_to_names(fs: &Fs, m: &mut Model, op: &Op) -> Option<(Outcome, Outcome)> {
    let dirs = m.dirs();
    let files = m.files();
    let r = match *op {
        Op::Create { dir, name: n } => {
            let d = pick(&dirs, dir)?;
            let want = m.can_make(d, name(n));
            let got = fs.create(ROOT_CTX, d, name(n), 0o644).map(|(i, _)| {
                fs.release(i.ino).expect("release");
                i.ino
            });
            if let Ok(ino) = got {
                let node = Node::File {
                    data: Vec::new(),
                    nlink: 1,
                    perm: 0o644,
                    xattrs: BTreeMap::new(),
                };
                m.made(d, name(n), ino, node);
            }
            (want, outcome(got))
        }
        Op::Mkdir { dir, name: n } => {
            let d = pick(&dirs, dir)?;
            let want = m.can_make(d, name(n));
            let got = fs.mkdir(ROOT_CTX, d, name(n), 0o755);
            if let Ok(i) = &got {
                let node = Node::Dir {
                    entries: BTreeMap::new(),
                    parent: d,
                };
                m.made(d, name(n), i.ino, node);
            }
            (want, outcome(got))
        }
        Op::Unlink { dir, name: n } => {
            let d = pick(&dirs, dir)?;
            (m.remove(d, name(n), false), outcome(fs.unlink(d, name(n))))
        }
        Op::Rmdir { dir, name: n } => {
            let d = pick(&dirs, dir)?;
            (m.remove(d, name(n), true), outcome(fs.rmdir(d, name(n))))
        }
        Op::Rename {
            dir,
            name: n,
            to_dir,
            to_name,
            mode,
        } => {
            let (d, nd) = (pick(&dirs, dir)?, pick(&dirs, to_dir)?);
            let mode = [
                RenameMode::Replace,
                RenameMode::NoReplace,
                RenameMode::Exchange,
            ][mode as usize % 3];
            let want = m.rename(d, name(n), nd, name(to_name), mode);
            let got = fs.rename(d, name(n), nd, name(to_name), mode);
            (want, outcome(got))
        }
        Op::Link { file, dir, name: n } => {
            let (f, d) = (pick(&files, file)?, pick(&dirs, dir)?);
            let want = m.can_make(d, name(n));
            if want.is_ok() {
                m.entries_mut(d).insert(name(n).to_vec(), f);
                if let Some(Node::File { nlink, .. }) = m.nodes.get_mut(&f) {
                    *nlink += 1;
                }
            }
            (want, outcome(fs.link(f, d, name(n))))
        }
        _ => return None,
    };
    Some(r)
}

/// Operations on a file: data, size, mode, xattrs.
fn apply_to_files(fs: &Fs, m: &mut Model, op: &Op) -> Option<(Outcome, Outcome)> {
    let files = m.files();
    let r = match *op {
        Op::Write {
            file,
            offset,
            len,
            seed,
        } => {
            let f = pick(&files, file)?;
            let bytes: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8) | 1).collect();
            let (off, end) = (offset as usize, offset as usize + len as usize);
            let data = m.data(f);
            if !bytes.is_empty() {
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[off..end].copy_from_slice(&bytes);
            }
            (Ok(()), outcome(fs.write(f, offset as u64, &bytes)))
        }
        Op::Truncate { file, size } => {
            let f = pick(&files, file)?;
            m.data(f).resize(size as usize, 0);
            let set = SetAttr {
                size: Some(size as u64),
                ..SetAttr::default()
            };
            (Ok(()), outcome(fs.setattr(f, set)))
        }
        Op::Fallocate {
            file,
            offset,
            len,
            keep_size,
        } => {
            let f = pick(&files, file)?;
            let len = len.max(1);
            let end = (offset + len) as usize;
            let data = m.data(f);
            if !keep_size && data.len() < end {
                data.resize(end, 0);
            }
            let mode = if keep_size {
                libc::FALLOC_FL_KEEP_SIZE
            } else {
                0
            };
            let got = fs.fallocate(f, offset as u64, len as u64, mode);
            (Ok(()), outcome(got))
        }
        Op::Punch { file, offset, len } => {
            let f = pick(&files, file)?;
            let len = len.max(1);
            let data = m.data(f);
            let end = ((offset + len) as usize).min(data.len());
            if (offset as usize) < end {
                data[offset as usize..end].fill(0);
            }
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            let got = fs.fallocate(f, offset as u64, len as u64, mode);
            (Ok(()), outcome(got))
        }
        Op::Chmod { file, mode } => {
            let f = pick(&files, file)?;
            if let Some(Node::File { perm, .. }) = m.nodes.get_mut(&f) {
                *perm = mode;
            }
            let set = SetAttr {
                mode: Some(mode as u32),
                ..SetAttr::default()
            };
            (Ok(()), outcome(fs.setattr(f, set)))
        }
        Op::SetXattr {
            file,
            name: n,
            value,
        } => {
            let f = pick(&files, file)?;
            let key = [b"user.".as_slice(), name(n)].concat();
            let v = vec![value; value as usize % 5];
            if let Some(Node::File { xattrs, .. }) = m.nodes.get_mut(&f) {
                xattrs.insert(key.clone(), v.clone());
            }
            (Ok(()), outcome(fs.setxattr(f, &key, &v, false, false)))
        }
        Op::RemoveXattr { file, name: n } => {
            let f = pick(&files, file)?;
            let key = [b"user.".as_slice(), name(n)].concat();
            let want = match m.nodes.get_mut(&f) {
                Some(Node::File { xattrs, .. }) => {
                    xattrs.remove(&key).map(|_| ()).ok_or(libc::ENODATA)
                }
                _ => unreachable!("a file"),
            };
            (want, outcome(fs.removexattr(f, &key)))
        }
        _ => return None,
    };
    Some(r)
}

/// Compares the whole tree, from the root.
fn compare(fs: &Fs, m: &Model) -> Result<(), String> {
    let mut todo = vec![ROOT];
    while let Some(dir) = todo.pop() {
        let fh = fs.opendir(dir).map_err(|e| format!("opendir {dir}: {e}"))?;
        let listed = fs
            .readdir(fh, dir, 0)
            .map_err(|e| format!("readdir {dir}: {e}"));
        fs.releasedir(fh);
        let got: BTreeMap<Vec<u8>, u64> = listed?
            .iter()
            .filter(|e| e.name != b"." && e.name != b"..")
            .map(|e| (e.name.clone(), e.ino))
            .collect();
        if &got != m.entries(dir) {
            return Err(format!(
                "directory {dir} lists {got:?}, the model {:?}",
                m.entries(dir)
            ));
        }
        let subdirs = got.values().filter(|&&i| m.is_dir(i)).count() as u32;
        let attr = fs.getattr(dir).map_err(|e| format!("getattr {dir}: {e}"))?;
        if attr.nlink != 2 + subdirs {
            return Err(format!(
                "directory {dir} has nlink {}, {subdirs} subdirectories",
                attr.nlink
            ));
        }
        for (n, &ino) in &got {
            let i = fs
                .lookup(dir, n)
                .map_err(|e| format!("lookup {dir}/{n:?}: {e}"))?;
            if i.ino != ino {
                return Err(format!("lookup {dir}/{n:?} gives {}, readdir {ino}", i.ino));
            }
            match &m.nodes[&ino] {
                Node::Dir { .. } => {
                    if i.kind != Kind::Dir {
                        return Err(format!("{ino} is a {:?}, not a directory", i.kind));
                    }
                    todo.push(ino);
                }
                Node::File {
                    data,
                    nlink,
                    perm,
                    xattrs,
                } => compare_file(fs, &i, data, *nlink, *perm, xattrs)?,
            }
        }
    }
    Ok(())
}

fn compare_file(
    fs: &Fs,
    i: &Inode,
    data: &[u8],
    nlink: u32,
    perm: u16,
    xattrs: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), String> {
    let ino = i.ino;
    if (i.kind, i.size, i.nlink, i.perm) != (Kind::File, data.len() as u64, nlink, perm) {
        return Err(format!(
            "file {ino}: {:?}, size {}, nlink {}, mode {:o}; the model: size {}, nlink {nlink}, mode {perm:o}",
            i.kind,
            i.size,
            i.nlink,
            i.perm,
            data.len()
        ));
    }
    let back = fs
        .read(ino, 0, data.len() as u32 + 10)
        .map_err(|e| format!("read {ino}: {e}"))?;
    if back != data {
        let at = back.iter().zip(data).position(|(a, b)| a != b);
        return Err(format!(
            "file {ino}: contents differ (first at {at:?}, {} bytes read, {} in the model)",
            back.len(),
            data.len()
        ));
    }
    let mut names = fs
        .listxattr(ino)
        .map_err(|e| format!("listxattr {ino}: {e}"))?;
    names.sort();
    let want: Vec<Vec<u8>> = xattrs.keys().cloned().collect();
    if names != want {
        return Err(format!("file {ino}: xattrs {names:?}, the model {want:?}"));
    }
    for (k, v) in xattrs {
        let got = fs
            .getxattr(ino, k)
            .map_err(|e| format!("getxattr {ino}: {e}"))?;
        if &got != v {
            return Err(format!(
                "file {ino}: xattr {k:?} is {got:?}, the model {v:?}"
            ));
        }
    }
    Ok(())
}

fn model_opts() -> FsOptions {
    FsOptions {
        shards: 3,
        // Small blocks and dirty limit: writes cross blocks, commits happen
        // on their own.
        block_size: 4096,
        dirty_limit: 64 << 10,
        ..opts()
    }
}

/// Runs `ops` on a fresh filesystem and the model; the first difference.
fn run(ops: &[Op]) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let fs = Fs::mount(dir.path(), model_opts()).map_err(|e| e.to_string())?;
    // Half the runs keep a block index (as a syncing store does): every
    // commit must keep it exact, through remounts too.
    let index = ops.len().is_multiple_of(2);
    if index {
        fs.keep_block_index().map_err(|e| e.to_string())?;
    }
    let check_index = |fs: &Fs| -> Result<(), String> {
        if !index {
            return Ok(());
        }
        match fs
            .check_block_index()
            .map_err(|e| e.to_string())?
            .as_slice()
        {
            [] => Ok(()),
            wrong => Err(format!("block index: {wrong:?}")),
        }
    };
    let mut real = Real { dir, fs: Some(fs) };
    let mut m = Model::new();
    for (n, op) in ops.iter().enumerate() {
        let Some((want, got)) = apply(&mut real, &mut m, op) else {
            continue;
        };
        if want != got {
            return Err(format!(
                "step {n}, {op:?}: the model says {want:?}, the filesystem {got:?}"
            ));
        }
        compare(real.fs(), &m).map_err(|e| format!("after step {n}, {op:?}: {e}"))?;
        check_index(real.fs()).map_err(|e| format!("after step {n}, {op:?}: {e}"))?;
    }
    // Everything survives a last remount.
    apply(&mut real, &mut m, &Op::Remount);
    compare(real.fs(), &m).map_err(|e| format!("after the final remount: {e}"))?;
    check_index(real.fs()).map_err(|e| format!("after the final remount: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_core_behaves_as_the_model_of_posix_says(ops in prop::collection::vec(op(), 1..80)) {
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}
