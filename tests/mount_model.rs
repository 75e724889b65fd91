//! The same random sequence of file and directory operations, applied to a
//! zippyfs mount and to a directory on ext4, must give the same results, the
//! same errors and the same final tree (contents, sizes, modes, links).
//! Run for both transports in both daemon modes (one shard per core, and
//! `-s`), and without the kernel's writeback cache.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const DIRS: [&str; 4] = ["", "a", "a/b", "c"];
const NAMES: [&str; 4] = ["x", "y", "a", "c"];

#[derive(Clone, Debug)]
enum Op {
    Create(usize),
    Write(usize, u32, u16, u8),
    Truncate(usize, u32),
    Read(usize),
    Mkdir(usize),
    Rmdir(usize),
    Unlink(usize),
    Rename(usize, usize),
    Link(usize, usize),
    Symlink(usize, usize),
    Chmod(usize, u32),
    Stat(usize),
}

/// Every path the operations may name.
fn paths() -> Vec<String> {
    let mut v = Vec::new();
    for d in DIRS {
        for n in NAMES {
            v.push(if d.is_empty() {
                n.to_string()
            } else {
                format!("{d}/{n}")
            });
        }
    }
    v.sort();
    v.dedup();
    v
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..n).prop_map(Op::Create),
        6 => (0..n, 0u32..300_000, 0u16..20_000, any::<u8>()).prop_map(|(p, o, l, b)| Op::Write(p, o, l, b)),
        2 => (0..n, 0u32..300_000).prop_map(|(p, s)| Op::Truncate(p, s)),
        3 => (0..n).prop_map(Op::Read),
        3 => (0..n).prop_map(Op::Mkdir),
        2 => (0..n).prop_map(Op::Rmdir),
        2 => (0..n).prop_map(Op::Unlink),
        3 => (0..n, 0..n).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (0..n, 0..n).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (0..n, 0..n).prop_map(|(a, b)| Op::Symlink(a, b)),
        1 => (0..n, prop_oneof![Just(0o644u32), Just(0o600), Just(0o755), Just(0o4755)]).prop_map(|(p, m)| Op::Chmod(p, m)),
        2 => (0..n).prop_map(Op::Stat),
    ]
}

/// What an operation returned, in a form both filesystems must agree on.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Done,
    Bytes(Vec<u8>),
    Stat {
        kind: &'static str,
        size: Option<u64>,
        perm: u32,
        nlink: u64,
    },
    Errno(i32),
}

fn errno(e: std::io::Error) -> Out {
    Out::Errno(e.raw_os_error().unwrap_or(-1))
}

fn kind(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "file"
    }
}

fn apply(root: &Path, op: &Op, names: &[String]) -> Out {
    let p = |i: usize| root.join(&names[i]);
    let r: std::io::Result<Out> = (|| {
        Ok(match *op {
            Op::Create(i) => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(p(i))?;
                Out::Done
            }
            Op::Write(i, off, len, byte) => {
                let mut f = std::fs::OpenOptions::new().write(true).open(p(i))?;
                f.seek(SeekFrom::Start(off as u64))?;
                f.write_all(&vec![byte; len as usize])?;
                Out::Done
            }
            Op::Truncate(i, size) => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p(i))?
                    .set_len(size as u64)?;
                Out::Done
            }
            Op::Read(i) => {
                let mut v = Vec::new();
                std::fs::File::open(p(i))?.read_to_end(&mut v)?;
                Out::Bytes(v)
            }
            Op::Mkdir(i) => {
                std::fs::create_dir(p(i))?;
                Out::Done
            }
            Op::Rmdir(i) => {
                std::fs::remove_dir(p(i))?;
                Out::Done
            }
            Op::Unlink(i) => {
                std::fs::remove_file(p(i))?;
                Out::Done
            }
            Op::Rename(a, b) => {
                std::fs::rename(p(a), p(b))?;
                Out::Done
            }
            Op::Link(a, b) => {
                std::fs::hard_link(p(a), p(b))?;
                Out::Done
            }
            Op::Symlink(a, b) => {
                std::os::unix::fs::symlink(&names[a], p(b))?;
                Out::Done
            }
            Op::Chmod(i, mode) => {
                std::fs::set_permissions(p(i), std::fs::Permissions::from_mode(mode))?;
                Out::Done
            }
            Op::Stat(i) => {
                let m = std::fs::symlink_metadata(p(i))?;
                Out::Stat {
                    kind: kind(&m),
                    size: (!m.is_dir()).then_some(m.len()),
                    perm: if m.file_type().is_symlink() {
                        0
                    } else {
                        m.mode() & 0o7777
                    },
                    nlink: m.nlink(),
                }
            }
        })
    })();
    r.unwrap_or_else(errno)
}

/// The whole tree under `root`: path → (kind, perm, nlink, contents or target).
fn tree(root: &Path) -> BTreeMap<PathBuf, (String, u32, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let path = e.expect("dir entry").path();
            let m = std::fs::symlink_metadata(&path).expect("stat");
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            let k = kind(&m);
            let body = match k {
                "dir" => {
                    stack.push(path.clone());
                    Vec::new()
                }
                "symlink" => std::fs::read_link(&path)
                    .expect("readlink")
                    .into_os_string()
                    .into_encoded_bytes(),
                _ => std::fs::read(&path).expect("read"),
            };
            let perm = if k == "symlink" { 0 } else { m.mode() & 0o7777 };
            out.insert(rel, (k.to_string(), perm, m.nlink(), body));
        }
    }
    out
}

fn clear(root: &Path) {
    for e in std::fs::read_dir(root).expect("read_dir") {
        let p = e.expect("entry").path();
        let m = std::fs::symlink_metadata(&p).expect("stat");
        if m.is_dir() {
            std::fs::remove_dir_all(&p).expect("clear dir");
        } else {
            std::fs::remove_file(&p).expect("clear file");
        }
    }
}

fn run_model(mode: Option<&[&str]>) {
    if !common::fuse_or_skip() {
        return;
    }
    let Some(mode) = mode else { return };
    let store = tempfile::tempdir().expect("store dir");
    let m = common::Mounted::start(store.path(), mode);
    // The reference is ext4 itself (a loop-mounted image where the
    // temporary directory is not on ext4, as on a tmpfs /tmp).
    let ext4 = common::Ext4::new();
    let names = paths();
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = prop::collection::vec(op(names.len()), 1..120);
    let counts = std::cell::Cell::new((0usize, 0usize));
    let result = runner.run(&strategy, |ops| {
        clear(m.path());
        clear(ext4.path());
        // A starting tree, so that most paths lead somewhere.
        for root in [m.path(), ext4.path()] {
            std::fs::create_dir_all(root.join("a/b")).expect("setup");
            std::fs::create_dir(root.join("c")).expect("setup");
            std::fs::write(root.join("x"), b"top").expect("setup");
            std::fs::write(root.join("a/y"), b"nested").expect("setup");
        }
        for (i, o) in ops.iter().enumerate() {
            let ours = apply(m.path(), o, &names);
            let theirs = apply(ext4.path(), o, &names);
            prop_assert_eq!(&ours, &theirs, "op {} {:?} (ours first, ext4 second)", i, o);
            let (ok, errs) = counts.get();
            counts.set(match ours {
                Out::Errno(_) => (ok, errs + 1),
                _ => (ok + 1, errs),
            });
        }
        let (a, b) = (tree(m.path()), tree(ext4.path()));
        prop_assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, v) in &a {
            prop_assert!(
                v == &b[k],
                "{:?} differs: ours {:?}, ext4 {:?}",
                k,
                (&v.0, v.1, v.2, v.3.len()),
                {
                    let w = &b[k];
                    (&w.0, w.1, w.2, w.3.len())
                }
            );
        }
        Ok(())
    });
    m.unmount();
    if let Err(e) = result {
        panic!("{e}");
    }
    let (ok, errs) = counts.get();
    println!("{ok} operations succeeded and {errs} failed alike on zippyfs and ext4");
    assert!(
        ok > 800 && errs > 100,
        "the random operations exercised too little"
    );
}

#[test]
fn random_operations_match_ext4_classic_transport() {
    run_model(common::mode(0));
}

#[test]
fn random_operations_match_ext4_classic_transport_single_threaded() {
    run_model(common::mode(1));
}

#[test]
fn random_operations_match_ext4_uring_transport() {
    run_model(common::mode(2));
}

#[test]
fn random_operations_match_ext4_uring_transport_single_threaded() {
    run_model(common::mode(3));
}

#[test]
fn random_operations_match_ext4_without_the_writeback_cache() {
    run_model(Some(&[
        "--transport",
        "classic",
        "-o",
        "writeback_cache=off",
    ]));
}
