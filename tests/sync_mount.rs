//! Sync on real mounts: a real `zippyfs serve` process on 127.0.0.1 and
//! peers that joined its volume, each a real mount of its own store.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::sync::{Server, eventually, peer, peer_with, tree, two_peers, written_and_seen};
use common::{Mounted, bin, fuse_or_skip};

#[test]
fn a_file_written_and_closed_on_one_peer_is_read_on_the_other() {
    if !fuse_or_skip() {
        return;
    }
    let (_work, server, a, b) = two_peers();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(a.path().join("hello.bin"), &data).unwrap();
    let took = eventually("the file on b", Duration::from_secs(20), || {
        std::fs::read(b.path().join("hello.bin")).is_ok_and(|d| d == data)
    });
    eprintln!("a -> b: {took:?}");
    // The version that brought it records its origin: a's peer id (peers
    // are numbered from 1 as added) and the sequence it applied.
    let versions: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(b.path().join(".zippy/versions.json")).unwrap())
            .unwrap();
    let applied = versions
        .iter()
        .find(|v| {
            v["cause"]
                .as_str()
                .is_some_and(|c| c.starts_with("sync: a "))
        })
        .unwrap_or_else(|| panic!("no version applied from a: {versions:?}"));
    assert_eq!(applied["origin"], 1, "{applied}");
    assert!(applied["synced"].as_u64().unwrap_or(0) >= 1, "{applied}");
    // And back, with a directory, a rename and a symlink.
    std::fs::create_dir(b.path().join("d")).unwrap();
    std::fs::write(b.path().join("d/x.txt"), b"from b").unwrap();
    std::fs::rename(b.path().join("hello.bin"), b.path().join("d/moved.bin")).unwrap();
    std::os::unix::fs::symlink("x.txt", b.path().join("d/link")).unwrap();
    eventually("b's changes on a", Duration::from_secs(20), || {
        std::fs::read(a.path().join("d/x.txt")).is_ok_and(|d| d == b"from b")
            && std::fs::read(a.path().join("d/moved.bin")).is_ok_and(|d| d == data)
            && std::fs::read_link(a.path().join("d/link")).is_ok_and(|t| t == Path::new("x.txt"))
            && !a.path().join("hello.bin").exists()
    });
    // What each peer applied and had acknowledged waits in its journal: the
    // whole state is not rewritten every second (it was, O(files) each
    // time), only once the journal is as large as it, or at the end.
    std::thread::sleep(Duration::from_millis(1500));
    let journal_len =
        |m: &Mounted| std::fs::metadata(m.store.join("sync.journal")).map_or(0, |md| md.len());
    assert!(journal_len(&a) > 0, "a's journal is empty while mounted");
    assert!(journal_len(&b) > 0, "b's journal is empty while mounted");
    let st = server.status();
    assert!(st["pushes"].as_u64().unwrap_or(0) >= 2, "{st}");
    // The sync threads run at the default nice value (`-o sync_nice`).
    let mut sync_threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", a.pid())).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim().starts_with("zippy-sync") {
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // Field 19 (nice), counting from the one after the name's ')'.
            let nice: i32 = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .nth(16)
                .unwrap()
                .parse()
                .unwrap();
            sync_threads.push((comm.trim().to_string(), nice));
        }
    }
    assert!(sync_threads.len() >= 2, "{sync_threads:?}");
    assert!(
        sync_threads.iter().all(|(_, n)| *n == 10),
        "{sync_threads:?}"
    );
    // A live fsck checks the tree store too (the sync thread holds it).
    let out = Command::new(bin())
        .arg("fsck")
        .arg(a.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("sync tree (sync.tree/): ") && l.ends_with(" 0 problems")),
        "{text}"
    );
    let a_store = a.store.clone();
    a.unmount();
    // Unmounted, the store still tells what it synced.
    let b_store = b.store.clone();
    b.unmount();
    for s in [&a_store, &b_store] {
        let len = std::fs::metadata(s.join("sync.journal")).map_or(0, |m| m.len());
        assert_eq!(
            len,
            0,
            "{}: the state saved at the end holds it all",
            s.display()
        );
    }
    let out = Command::new(bin())
        .args(["status", "--json"])
        .arg(&b_store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["state"], "not mounted", "{st}");
    assert_eq!(st["sync"]["server"], server.url("v"), "{st}");
    assert!(st["sync"]["applied"].as_u64().unwrap_or(0) >= 2, "{st}");
    // A clean unmount leaves the block index exact, and fsck checks it,
    // and the tree store.
    for s in [&a_store, &b_store] {
        let out = Command::new(bin()).arg("fsck").arg(s).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("block index: ") && l.ends_with(" 0 wrong")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("sync tree (sync.tree/): ")),
            "{text}"
        );
    }
}

#[test]
fn a_wrong_fingerprint_or_a_revoked_credential_is_refused() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    // A store pinned to another certificate never connects.
    let store = work.path().join("pinned-wrong");
    let cred = server.add_peer("w", "v", work.path());
    let st = Command::new(bin())
        .arg("join")
        .arg(&store)
        .arg(server.url("v"))
        .args(["--fingerprint", &"ab".repeat(32)])
        .arg("--credential")
        .arg(&cred)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let m = Mounted::start_logged(&store, &[], &work.path().join("w.log"));
    let why = eventually(
        "the refusal in daemon.json",
        Duration::from_secs(20),
        || {
            let s = common::daemon_json(m.path());
            s["sync"]["why"]
                .as_str()
                .is_some_and(|w| w.contains("fingerprint"))
        },
    );
    let _ = why;
    m.unmount();

    // A revoked credential is refused with the reason.
    let r = peer(&server, "r", "v", work.path());
    eventually("connected", Duration::from_secs(20), || {
        common::daemon_json(r.path())["sync"]["connected"] == true
    });
    r.unmount();
    let out = Command::new(bin())
        .arg("serve")
        .arg(server.dir.path())
        .args(["remove-peer", "r"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = Mounted::start_logged(
        &work.path().join("r-store"),
        &[],
        &work.path().join("r2.log"),
    );
    eventually("the revoked peer refused", Duration::from_secs(20), || {
        let s = common::daemon_json(r.path());
        s["sync"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("unknown or revoked credential"))
    });
    r.unmount();
}

#[test]
fn a_change_to_a_file_the_other_peer_has_open_and_cached_is_read_there() {
    if !fuse_or_skip() {
        return;
    }
    let (_work, _server, a, b) = two_peers();
    std::fs::write(a.path().join("f"), vec![b'1'; 10_000]).unwrap();
    eventually("v1 on b", Duration::from_secs(20), || {
        std::fs::read(b.path().join("f")).is_ok_and(|d| d == vec![b'1'; 10_000])
    });
    // b holds the file open with its pages cached; a rewrites the middle.
    use std::os::unix::fs::FileExt;
    let open = std::fs::File::open(b.path().join("f")).unwrap();
    let mut buf = vec![0u8; 10_000];
    open.read_exact_at(&mut buf, 0).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(a.path().join("f"))
        .unwrap();
    f.write_all_at(b"22222", 4096).unwrap();
    drop(f);
    let mut want = vec![b'1'; 10_000];
    want[4096..4101].copy_from_slice(b"22222");
    let took = eventually(
        "the change through b's open file",
        Duration::from_secs(20),
        || open.read_exact_at(&mut buf, 0).is_ok() && buf == want,
    );
    eprintln!("a -> b (open, cached): {took:?}");
    assert_eq!(std::fs::metadata(b.path().join("f")).unwrap().len(), 10_000);
    a.unmount();
    b.unmount();
}

#[test]
fn concurrent_edits_offline_keep_both_and_every_peer_converges() {
    if !fuse_or_skip() {
        return;
    }
    let (_work, server, a, b) = two_peers();
    std::fs::write(a.path().join("doc.txt"), b"base").unwrap();
    std::fs::write(a.path().join("gone.txt"), b"to delete").unwrap();
    eventually("the base on b", Duration::from_secs(20), || {
        std::fs::read(b.path().join("doc.txt")).is_ok_and(|d| d == b"base")
            && b.path().join("gone.txt").exists()
    });
    // The server goes; both peers work offline.
    let mut server = server;
    server.kill();
    std::fs::write(a.path().join("doc.txt"), b"edit from a").unwrap();
    std::fs::write(b.path().join("doc.txt"), b"edit from b").unwrap();
    std::fs::remove_file(a.path().join("gone.txt")).unwrap();
    std::fs::write(b.path().join("gone.txt"), b"modified on b").unwrap();
    for i in 0..20 {
        std::fs::write(a.path().join(format!("a{i}")), format!("{i}")).unwrap();
    }
    common::fsync_root(a.path());
    common::fsync_root(b.path());
    server.restart();
    let took = eventually("the same tree on both", Duration::from_secs(30), || {
        let (ta, tb) = (tree(a.path()), tree(b.path()));
        ta == tb && ta.keys().any(|k| k.contains(".conflict-"))
    });
    eprintln!("converged {took:?} after the server came back");
    let t = tree(a.path());
    let copies: Vec<&String> = t.keys().filter(|k| k.contains(".conflict-")).collect();
    assert_eq!(
        copies.len(),
        1,
        "one conflict copy: {:?}",
        t.keys().collect::<Vec<_>>()
    );
    let copy = copies[0];
    assert!(
        copy.starts_with("doc.conflict-a-") || copy.starts_with("doc.conflict-b-"),
        "{copy}"
    );
    assert!(copy.ends_with(".txt"), "{copy}");
    // Both edits are there, one under the name, one in the copy.
    let mut both = vec![t["doc.txt"].clone(), t[copy].clone()];
    both.sort();
    assert_eq!(both, vec![b"edit from a".to_vec(), b"edit from b".to_vec()]);
    // Modified on b, deleted on a: the modification survives.
    assert_eq!(
        t.get("gone.txt").map(Vec::as_slice),
        Some(&b"modified on b"[..])
    );
    assert_eq!(
        (0..20).filter(|i| t.contains_key(&format!("a{i}"))).count(),
        20
    );
    drop(server);
    a.unmount();
    b.unmount();
}

/// A peer that holds little of its backlog in memory (`-o sync_spill=8`:
/// its changes not yet pushed go into its tree store past 8) makes
/// hundreds of files, renames, deletes and links offline, is mounted
/// again offline (the spilled changes of the mount before are scratch),
/// and catches up: every change arrives, a concurrent edit keeps both,
/// and its stores check clean.
#[test]
fn a_backlog_spilled_out_of_memory_arrives_whole() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut server = Server::start();
    let spill = ["-o", "sync_spill=8"];
    let a = common::sync::peer_with(&server, &server.url("v"), "a", "v", work.path(), &spill);
    let b = peer(&server, "b", "v", work.path());
    for i in 0..20 {
        std::fs::write(a.path().join(format!("old{i}")), format!("old {i}")).unwrap();
    }
    eventually("the first files on b", Duration::from_secs(20), || {
        tree(a.path()) == tree(b.path())
    });
    server.kill();
    for d in 0..3 {
        let dir = a.path().join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..100 {
            std::fs::write(dir.join(format!("f{i}")), format!("{d}/{i}")).unwrap();
        }
    }
    std::fs::rename(a.path().join("d2"), a.path().join("d0/moved")).unwrap();
    for i in 0..10 {
        std::fs::remove_file(a.path().join(format!("old{i}"))).unwrap();
        std::fs::rename(
            a.path().join(format!("old{}", i + 10)),
            a.path().join(format!("d1/renamed{i}")),
        )
        .unwrap();
    }
    std::fs::hard_link(a.path().join("d1/f0"), a.path().join("linked")).unwrap();
    std::os::unix::fs::symlink("d1/f1", a.path().join("pointer")).unwrap();
    std::fs::write(a.path().join("d1/renamed0"), b"edit from a").unwrap();
    std::fs::write(b.path().join("old10"), b"edit from b").unwrap();
    common::fsync_root(a.path());
    common::fsync_root(b.path());
    let a_store = a.store.clone();
    a.unmount();
    let a = Mounted::start_logged(&a_store, &spill, &work.path().join("a2.log"));
    std::fs::write(a.path().join("d1/f99"), b"after the remount").unwrap();
    common::fsync_root(a.path());
    server.restart();
    let took = eventually("the same tree on both", Duration::from_secs(60), || {
        let (ta, tb) = (tree(a.path()), tree(b.path()));
        ta == tb && ta.keys().any(|k| k.contains(".conflict-"))
    });
    eprintln!("converged {took:?} after the server came back");
    let st = common::daemon_json(a.path());
    assert!(
        st["sync"]["spills"].as_u64().unwrap_or(0) >= 2,
        "the backlog was not spilled: {st}"
    );
    let t = tree(b.path());
    for d in 0..2 {
        for i in 0..100 {
            let want = if (d, i) == (1, 99) {
                b"after the remount".to_vec()
            } else {
                format!("{d}/{i}").into_bytes()
            };
            assert_eq!(t.get(&format!("d{d}/f{i}")), Some(&want), "d{d}/f{i}");
        }
    }
    for i in 0..100 {
        assert_eq!(
            t.get(&format!("d0/moved/f{i}")),
            Some(&format!("2/{i}").into_bytes()),
            "d0/moved/f{i}"
        );
    }
    assert!(!t.contains_key("d2"));
    for i in 0..10 {
        assert!(!t.contains_key(&format!("old{i}")), "old{i} deleted");
        assert!(
            !t.contains_key(&format!("old{}", i + 10)) || i == 0,
            "old{} renamed",
            i + 10
        );
    }
    for i in 1..10 {
        assert_eq!(
            t.get(&format!("d1/renamed{i}")),
            Some(&format!("old {}", i + 10).into_bytes())
        );
    }
    // Renamed and edited on a, edited on b: both edits are kept.
    let mut both: Vec<Vec<u8>> = t
        .iter()
        .filter(|(k, _)| k.contains("renamed0") || k.starts_with("old10"))
        .map(|(_, v)| v.clone())
        .collect();
    both.sort();
    assert_eq!(
        both,
        [b"edit from a".to_vec(), b"edit from b".to_vec()],
        "{:?}",
        t.keys()
    );
    assert_eq!(t.get("linked"), Some(&b"1/0".to_vec()));
    let ino =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    assert_eq!(
        ino(&b.path().join("linked")),
        ino(&b.path().join("d1/f0")),
        "a hard link"
    );
    assert_eq!(
        std::fs::read_link(b.path().join("pointer")).unwrap(),
        std::path::Path::new("d1/f1")
    );
    let b_store = b.store.clone();
    drop(server);
    a.unmount();
    b.unmount();
    common::fsck_clean(&a_store);
    common::fsck_clean(&b_store);
}

/// A store whose sync state an older version wrote (version 2: the
/// synced tree inside `sync.state`, no `sync.tree/`) mounts, takes what
/// came meanwhile without fetching again what it had, moves its tree into
/// a tree store, and saves a state of version 3.
#[test]
fn a_sync_state_of_version_2_is_taken_up_and_moved_into_a_tree_store() {
    use zippyfs::sync::tree::{TREE_DIR, TreeStore};
    use zippyfs::sync::wire::state;
    if !fuse_or_skip() {
        return;
    }
    let (work, server, a, b) = two_peers();
    // Each file's bytes its own: fetched again, any one would show.
    let old = |i: u8| vec![i; 200_000];
    for i in 0..30u8 {
        std::fs::write(a.path().join(format!("f{i}")), old(i)).unwrap();
    }
    eventually("the files on b", Duration::from_secs(30), || {
        tree(a.path()) == tree(b.path())
    });
    let b_store = b.store.clone();
    b.unmount();
    // What version 2 wrote: the same peer, counters and synced tree.
    let path = b_store.join("sync.state");
    let saved = state::decode(&std::fs::read(&path).unwrap()).unwrap();
    let state::Synced::Stored(v) = saved.synced else {
        panic!("this version wrote a state with the tree inline");
    };
    let v2 = {
        let trees = TreeStore::open(&b_store).unwrap();
        let synced = trees.tree(v).unwrap();
        state::encode_v2(saved.id, saved.applied, saved.counter, &synced).unwrap()
    };
    std::fs::write(&path, v2).unwrap();
    std::fs::remove_dir_all(b_store.join(TREE_DIR)).unwrap();
    std::fs::write(a.path().join("new"), b"made while b was away").unwrap();
    let b = Mounted::start_logged(&b_store, &[], &work.path().join("b2.log"));
    eventually("the same tree on both", Duration::from_secs(30), || {
        tree(a.path()) == tree(b.path())
    });
    let st = common::daemon_json(b.path());
    let fetched = st["sync"]["bytes_in"].as_u64().unwrap_or(u64::MAX);
    eprintln!("b fetched {fetched} bytes after its state was of version 2");
    assert!(fetched < 200_000, "b fetched {fetched} bytes again: {st}");
    drop(server);
    b.unmount();
    a.unmount();
    let saved = state::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert!(
        matches!(saved.synced, state::Synced::Stored(v) if v > 0),
        "the state is not of version 3 naming a tree store version"
    );
    common::fsck_clean(&b_store);
}

#[test]
fn a_push_whose_version_retention_lets_go_still_sends_its_blocks() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    let a = peer(&server, "a", "v", work.path());
    // Keep only the newest version: every commit lets the one before go,
    // while a push read from it may still be sending its blocks.
    let st = Command::new(common::bin())
        .arg("retention")
        .arg(&a.store)
        .args(["--keep-last", "1"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let b = peer(&server, "b", "v", work.path());
    let mut want = Vec::new();
    for i in 0..300u32 {
        let data: Vec<u8> = (0..200_000u32)
            .map(|j| (j.wrapping_mul(i + 7) >> 3) as u8)
            .collect();
        std::fs::write(a.path().join(format!("f{i}")), &data).unwrap();
        want.push(data);
    }
    eventually("every file on b", Duration::from_secs(60), || {
        want.iter()
            .enumerate()
            .all(|(i, d)| std::fs::read(b.path().join(format!("f{i}"))).is_ok_and(|r| &r == d))
    });
    let log = std::fs::read_to_string(work.path().join("a.log")).unwrap_or_default();
    assert!(
        !log.contains("is not kept"),
        "a push lost its version:\n{log}"
    );
    a.unmount();
    b.unmount();
}

/// Peer b, with the kernel's writeback cache on (the default) or off,
/// holds a file open while peer a grows it and then cuts it; b's kernel
/// must show the grown size at once, and the cut at once with the cache
/// off, and after the last close with it on (SEMANTICS.md, "Sync").
fn grow_and_cut_while_held(writeback: bool) {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    let a = peer(&server, "a", "v", work.path());
    let opt = if writeback {
        "writeback_cache=on"
    } else {
        "writeback_cache=off"
    };
    let b = peer_with(
        &server,
        &server.url("v"),
        "b",
        "v",
        work.path(),
        &["-o", opt],
    );
    std::fs::write(a.path().join("f"), vec![7u8; 100_000]).unwrap();
    std::fs::write(a.path().join("g"), vec![7u8; 100_000]).unwrap();
    let on_b = b.path().join("f");
    eventually("f and g on b", Duration::from_secs(20), || {
        std::fs::read(&on_b).is_ok_and(|d| d == vec![7u8; 100_000])
            && std::fs::read(b.path().join("g")).is_ok_and(|d| d == vec![7u8; 100_000])
    });
    // b holds f open and cached (g only cached); a grows f, then cuts both.
    let held = std::fs::File::open(&on_b).unwrap();
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(a.path().join("f"))
        .unwrap();
    f.write_all(&[8u8; 50_000]).unwrap();
    drop(f);
    eventually("the grown size on b", Duration::from_secs(20), || {
        held.metadata().is_ok_and(|m| m.len() == 150_000)
            && std::fs::read(&on_b).is_ok_and(|d| d[100_000..] == [8u8; 50_000])
    });
    for name in ["f", "g"] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(a.path().join(name))
            .unwrap();
        f.set_len(1000).unwrap();
    }
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let want = mtime(&a.path().join("g"));
    eventually(
        "the cut size and time of g on b",
        Duration::from_secs(20),
        || {
            std::fs::metadata(b.path().join("g")).is_ok_and(|m| m.len() == 1000)
                && mtime(&b.path().join("g")) == want
        },
    );
    if writeback {
        // Held open, f keeps the kernel's size; read past the cut, it is
        // zeros, never the old bytes.
        let mut rest = Vec::new();
        use std::io::Read;
        (&held).read_to_end(&mut rest).unwrap();
        assert!(
            rest[1000..].iter().all(|&b| b == 0),
            "old bytes past the cut"
        );
        drop(held);
        eventually(
            "the cut size of f on b after its close",
            Duration::from_secs(20),
            || std::fs::metadata(&on_b).is_ok_and(|m| m.len() == 1000),
        );
    } else {
        eventually(
            "the cut size through the file b holds",
            Duration::from_secs(20),
            || {
                std::fs::metadata(&on_b).is_ok_and(|m| m.len() == 1000)
                    && held.metadata().is_ok_and(|m| m.len() == 1000)
            },
        );
    }
    assert_eq!(std::fs::read(&on_b).unwrap(), vec![7u8; 1000]);
    a.unmount();
    b.unmount();
}

#[test]
fn with_the_writeback_cache_a_grown_file_shows_at_once_and_a_cut_one_at_its_last_close() {
    if !fuse_or_skip() {
        return;
    }
    grow_and_cut_while_held(true);
}

#[test]
fn without_the_writeback_cache_a_cut_shows_through_a_file_held_open() {
    if !fuse_or_skip() {
        return;
    }
    grow_and_cut_while_held(false);
}

/// A peer of a fresh server given 50 small files, unmounted once the
/// server has them all: the working directory, the server, the store.
fn a_store_with_50_files_pushed() -> (tempfile::TempDir, Server, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    let a = peer(&server, "a", "v", work.path());
    for i in 0..50 {
        std::fs::write(a.path().join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    eventually("a's files taken", Duration::from_secs(20), || {
        let s = common::daemon_json(a.path());
        s["sync"]["pushed"].as_u64().unwrap_or(0) >= 1
            && s["sync"]["in_flight"] == false
            && s["sync"]["queued_versions"] == 0
    });
    let store = a.store.clone();
    a.unmount();
    (work, server, store)
}

/// `store` mounted again, once its daemon.json says why sync is off as
/// `why` expects; its 50 files read as they were written, and it takes
/// a new one.
fn mounted_with_sync_off(store: &Path, work: &Path, why: impl Fn(&str) -> bool) -> Mounted {
    let m = Mounted::start_logged(store, &[], &work.join("a2.log"));
    eventually("the reason in daemon.json", Duration::from_secs(20), || {
        common::daemon_json(m.path())["sync"]["why"]
            .as_str()
            .is_some_and(&why)
    });
    for i in 0..50 {
        assert_eq!(
            std::fs::read_to_string(m.path().join(format!("f{i}"))).unwrap(),
            format!("file {i}")
        );
    }
    std::fs::write(m.path().join("after"), b"still a filesystem").unwrap();
    assert_eq!(
        std::fs::read(m.path().join("after")).unwrap(),
        b"still a filesystem"
    );
    m
}

/// A sync state damaged on disk (a flipped bit) is found by its hash: the
/// mount serves its files as they are and says why sync is off, instead
/// of syncing from a wrong idea of what the volume holds.
#[test]
fn a_damaged_sync_state_turns_sync_off_with_the_reason_and_loses_no_file() {
    if !fuse_or_skip() {
        return;
    }
    let (work, _server, store) = a_store_with_50_files_pushed();
    let state = store.join("sync.state");
    let mut b = std::fs::read(&state).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x04;
    std::fs::write(&state, &b).unwrap();
    let m = mounted_with_sync_off(&store, work.path(), |w| w.contains("damaged"));
    assert_eq!(
        std::fs::read(&state).unwrap(),
        b,
        "the damaged state was overwritten"
    );
    m.unmount();
}

/// A tree store (`sync.tree/`) damaged on disk: the mount serves its
/// files as they are and says why sync is off, instead of pushing or
/// applying from a tree it cannot read (a file it cannot read must never
/// look deleted).
#[test]
fn a_damaged_tree_store_turns_sync_off_with_the_reason_and_loses_no_file() {
    if !fuse_or_skip() {
        return;
    }
    let (work, server, store) = a_store_with_50_files_pushed();
    // Every page but the two commit slots made garbage: the tree's pages,
    // and the free space's record.
    let file = store.join("sync.tree").join("zippy.store");
    let mut b = std::fs::read(&file).unwrap();
    assert!(b.len() > 8192, "{} bytes", b.len());
    for (i, x) in b[8192..].iter_mut().enumerate() {
        *x ^= 0x5a ^ (i as u8);
    }
    std::fs::write(&file, &b).unwrap();
    let pushes = server.status()["pushes"].as_u64().unwrap_or(0);
    let m = mounted_with_sync_off(&store, work.path(), |w| {
        w.starts_with("off:") && w.contains("sync.tree")
    });
    assert_eq!(
        server.status()["pushes"].as_u64().unwrap_or(0),
        pushes,
        "a push went from a tree that could not be read"
    );
    m.unmount();
    // fsck says so too.
    let out = Command::new(bin())
        .arg("fsck")
        .arg(&store)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("sync tree (sync.tree/): "), "{said}");
}

/// The way back from a damaged sync state: remove it (and the journal),
/// and the store joins its volume again. Files the same on both sides
/// stay as they are (no conflict copies), and its pushes are taken again
/// (numbered past the last the server took, not ignored as stale).
#[test]
fn a_store_whose_sync_state_was_removed_joins_again_without_copies() {
    if !fuse_or_skip() {
        return;
    }
    let (work, _server, a, b) = two_peers();
    for i in 0..20 {
        std::fs::write(a.path().join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    eventually("a's files on b", Duration::from_secs(20), || {
        (0..20).all(|i| b.path().join(format!("f{i}")).exists())
    });
    let store = a.store.clone();
    a.unmount();
    std::fs::remove_file(store.join("sync.state")).unwrap();
    let _ = std::fs::remove_file(store.join("sync.journal"));
    let a = Mounted::start_logged(&store, &[], &work.path().join("a2.log"));
    std::fs::write(a.path().join("after"), b"written after joining again").unwrap();
    std::fs::write(b.path().join("from-b"), b"and from b").unwrap();
    eventually("both new files on both", Duration::from_secs(20), || {
        std::fs::read(b.path().join("after")).is_ok_and(|d| d == b"written after joining again")
            && std::fs::read(a.path().join("from-b")).is_ok_and(|d| d == b"and from b")
    });
    assert_eq!(tree(a.path()), tree(b.path()));
    let copies: Vec<String> = tree(a.path())
        .keys()
        .filter(|n| n.contains(".conflict-"))
        .cloned()
        .collect();
    assert!(copies.is_empty(), "{copies:?}");
    a.unmount();
    b.unmount();
}

/// Joining again after the sync state was removed, while the volume moved
/// on: the store reads the log from the start, knows its own pushes in it
/// (by its credential's peer), and takes up where it left off: the other
/// peer's edit and delete apply as they would have, and nothing it had
/// pushed becomes a conflict copy.
#[test]
fn a_store_joining_again_takes_up_where_its_pushes_left_off() {
    if !fuse_or_skip() {
        return;
    }
    let (work, _server, a, b) = two_peers();
    std::fs::write(a.path().join("same.txt"), b"unchanged").unwrap();
    std::fs::write(a.path().join("edited.txt"), b"as a had it").unwrap();
    std::fs::write(a.path().join("deleted.txt"), b"deleted on b").unwrap();
    eventually("a's files on b", Duration::from_secs(20), || {
        std::fs::read(b.path().join("deleted.txt")).is_ok()
            && std::fs::read(b.path().join("edited.txt")).is_ok()
            && std::fs::read(b.path().join("same.txt")).is_ok()
    });
    let store = a.store.clone();
    a.unmount();
    std::fs::write(b.path().join("edited.txt"), b"as b made it").unwrap();
    std::fs::remove_file(b.path().join("deleted.txt")).unwrap();
    std::fs::remove_file(store.join("sync.state")).unwrap();
    let _ = std::fs::remove_file(store.join("sync.journal"));
    let a = Mounted::start_logged(&store, &[], &work.path().join("a2.log"));
    eventually("b's edit and delete on a", Duration::from_secs(20), || {
        std::fs::read(a.path().join("edited.txt")).is_ok_and(|d| d == b"as b made it")
            && !a.path().join("deleted.txt").exists()
    });
    std::thread::sleep(Duration::from_millis(500));
    let (ta, tb) = (tree(a.path()), tree(b.path()));
    assert_eq!(ta, tb);
    assert_eq!(
        ta.keys().collect::<Vec<_>>(),
        ["edited.txt", "same.txt"],
        "a conflict copy, or a file back"
    );
    a.unmount();
    b.unmount();
}

/// Small writes, cuts and growth inside a big file, with an fsync each,
/// on one peer and then the other: each commit is read in part (only the
/// blocks it changed, `Changed::data`) over the file as the peer's tree
/// had it, also after a change from the other peer was written into it,
/// and every peer ends with the bytes the writes made.
#[test]
fn small_writes_and_cuts_inside_a_big_file_reach_the_other_peer_exactly() {
    use std::os::unix::fs::FileExt;
    if !fuse_or_skip() {
        return;
    }
    let (_work, _server, a, b) = two_peers();
    let mut model: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(a.path().join("big.img"), &model).unwrap();
    eventually("the big file on b", Duration::from_secs(30), || {
        std::fs::read(b.path().join("big.img")).is_ok_and(|d| d == model)
    });
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for (round, (from, to)) in [(&a, &b), (&b, &a), (&a, &b)].into_iter().enumerate() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(from.path().join("big.img"))
            .unwrap();
        for i in 0..30u64 {
            match next(10) {
                // A cut, or growth past the end.
                0 => {
                    let len = next(6 << 20);
                    f.set_len(len).unwrap();
                    model.resize(len as usize, 0);
                }
                _ => {
                    let at = next(model.len() as u64 + 8192);
                    let data = vec![(round as u8) << 5 | (i as u8 & 31); 4096];
                    f.write_all_at(&data, at).unwrap();
                    let end = at as usize + data.len();
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[at as usize..end].copy_from_slice(&data);
                }
            }
            f.sync_all().unwrap();
        }
        drop(f);
        let here = std::fs::read(from.path().join("big.img")).unwrap();
        assert!(
            here == model,
            "round {round}: the writer reads {} bytes, first wrong at {:?}, the writes made {}",
            here.len(),
            here.iter().zip(&model).position(|(a, b)| a != b),
            model.len()
        );
        eventually(
            &format!("round {round}'s writes on the other peer"),
            Duration::from_secs(30),
            || std::fs::read(to.path().join("big.img")).is_ok_and(|d| d == model),
        );
    }
    a.unmount();
    b.unmount();
}

/// A peer whose newest version changed no file (a gc) still applies
/// what comes: the sync thread reads at the last version it was told of,
/// and a gc's version is told too.
#[test]
fn a_peer_that_just_ran_gc_still_takes_the_next_change() {
    if !fuse_or_skip() {
        return;
    }
    let (_work, _server, a, b) = two_peers();
    written_and_seen(&a, &b, "first", b"1");
    let out = Command::new(bin())
        .arg("gc")
        .arg(b.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(a.path().join("second"), b"2").unwrap();
    eventually(
        "the second file on b, after its gc",
        Duration::from_secs(20),
        || std::fs::read(b.path().join("second")).is_ok_and(|d| d == b"2"),
    );
    a.unmount();
    b.unmount();
}
