//! The fence that keeps a page the kernel read before a change from
//! elsewhere from being written back over it (`fs/coherence.rs`).

use super::*;
use crate::fs::remote::{Applied, RemoteChange};

/// Applies an empty change onto the last commit: Done unless refused.
fn apply_nothing(fs: &Fs) -> bool {
    let base = fs.store().latest_version().unwrap();
    let change = RemoteChange {
        base,
        ..Default::default()
    };
    match fs
        .apply_remote(&change, "test", crate::fs::Origin::default())
        .unwrap()
    {
        Applied::Done { .. } => true,
        Applied::Moved => false,
    }
}

#[test]
fn a_fenced_file_read_or_opened_for_writing_before_a_remote_change_refuses_it_once() {
    let (_d, fs) = fresh();
    let (f, fh) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.write(f.ino, 0, b"hello").unwrap();
    fs.commit("test").unwrap();
    assert!(apply_nothing(&fs), "nothing fenced: applied");

    // Open for writing (create): a read or attributes asked for trip it.
    fs.fence(&[f.ino]);
    fs.read(f.ino, 0, 5).unwrap();
    assert!(!apply_nothing(&fs), "a page read while open");
    assert!(apply_nothing(&fs), "the fence is cleared by the refusal");
    fs.fence(&[f.ino]);
    fs.getattr(f.ino).unwrap();
    assert!(!apply_nothing(&fs), "attributes asked for while open");

    // A read of another file does not.
    let (g, gh) = fs.create(ROOT_CTX, ROOT, b"g", 0o644).unwrap();
    fs.commit("test").unwrap();
    fs.fence(&[f.ino]);
    fs.read(g.ino, 0, 5).unwrap();
    assert!(apply_nothing(&fs), "another file read");

    // Closed, or open only to read: reads do not trip it, an open for
    // writing does.
    fs.release_handle(f.ino, fh).unwrap();
    fs.release_handle(g.ino, gh).unwrap();
    fs.commit("test").unwrap();
    fs.fence(&[f.ino]);
    fs.read(f.ino, 0, 5).unwrap();
    fs.getattr(f.ino).unwrap();
    assert!(apply_nothing(&fs), "read while closed");
    fs.fence(&[f.ino]);
    let rh = fs.open(f.ino, false).unwrap();
    fs.read(f.ino, 0, 5).unwrap();
    assert!(apply_nothing(&fs), "read through a handle that only reads");
    fs.fence(&[f.ino]);
    let wh = fs.open(f.ino, true).unwrap();
    assert!(!apply_nothing(&fs), "opened for writing");
    fs.release_handle(f.ino, wh).unwrap();
    fs.fence(&[f.ino]);
    fs.read(f.ino, 0, 5).unwrap();
    assert!(apply_nothing(&fs), "the writer closed");
    fs.release_handle(f.ino, rh).unwrap();
}
